"""The open registry of dynamic-axis names an exported graph may use.

Each axis has a size the exporter traces with (at least 2, and distinct from the other axes',
so the tracer can neither specialise it to 0/1 nor tie it to another axis), the smallest size a
graph accepts (0: an empty cache is valid), and a default TensorRT optimization profile
(min, opt, max) sized for one A100 (80 GB). conf/export.yaml `tensorrt.profiles` overrides the
profile per axis; parity shapes are configured per axis name too. A model family that needs a
new axis registers it here (or calls `register_axis` from its builder module).
"""

from __future__ import annotations

from dataclasses import dataclass

from genrec.validation import ConfigError


@dataclass(frozen=True)
class Axis:
    name: str
    example: int  # traced size
    profile: tuple[int, int, int]  # TensorRT (min, opt, max)
    min_size: int = 1  # 0 when an empty tensor is a valid input (parity then checks size 0)
    doc: str = ""

    def __post_init__(self) -> None:
        lo, opt, hi = self.profile
        if self.example < 2:
            raise ValueError(f"axis {self.name}: example size {self.example} < 2 "
                             "(the tracer would specialise it)")
        if not self.min_size <= lo <= opt <= hi:
            raise ValueError(f"axis {self.name}: profile {self.profile} must satisfy "
                             f"{self.min_size} <= min <= opt <= max")


AXES: dict[str, Axis] = {}


def register_axis(name: str, example: int, profile: tuple[int, int, int], min_size: int = 1,
                  doc: str = "") -> Axis:
    """Add an axis name (registering the same definition twice is a no-op)."""
    axis = Axis(name, example, tuple(profile), min_size, doc)
    if name in AXES and AXES[name] != axis:
        raise ValueError(f"axis {name} is already registered as {AXES[name]}")
    taken = {a.example: a.name for a in AXES.values() if a.name != name}
    if example in taken:
        raise ValueError(f"axis {name}: example size {example} is already axis {taken[example]}'s")
    AXES[name] = axis
    return axis


def get_axis(name: str) -> Axis:
    if name not in AXES:
        raise ValueError(f"unknown dynamic axis {name!r}; registered: {sorted(AXES)} "
                         "(genrec/export/axes.py register_axis)")
    return AXES[name]


def profiles(overrides: dict[str, list[int]] | None = None) -> dict[str, list[int]]:
    """[min, opt, max] per registered axis: the registry's defaults, then `overrides` (conf/export.yaml
    tensorrt.profiles), each checked against the axis (unknown names and bad orders raise)."""
    out = {name: list(a.profile) for name, a in AXES.items()}
    for name, value in (overrides or {}).items():
        if name not in AXES:
            raise ConfigError(f"tensorrt.profiles.{name}: unknown dynamic axis {name!r}; registered: "
                              f"{sorted(AXES)}")
        axis = AXES[name]
        lo, opt, hi = (int(v) for v in value)
        if not axis.min_size <= lo <= opt <= hi:
            raise ConfigError(f"tensorrt.profiles.{name}={list(value)}: need "
                             f"{axis.min_size} <= min <= opt <= max")
        out[name] = [lo, opt, hi]
    return out


register_axis("batch", 3, (1, 64, 1024), doc="users (requests) in a call")
register_axis("seq", 5, (1, 200, 200), doc="input sequence length T (score, prefill); SASRec's maxlen")
register_axis("past", 4, (0, 100, 200), min_size=0, doc="cached positions P of a decode step (0 = empty)")
register_axis("beam", 6, (1, 10, 16), doc="beams per user in a beam-search step (rows = batch * beam)")
register_axis("enc_seq", 7, (1, 51, 256), doc="encoder length S of an encoder-decoder (RPG_ED: 1 + history)")
register_axis("cand", 9, (1, 100, 2000), doc="candidate items per user scored by a ranker")
