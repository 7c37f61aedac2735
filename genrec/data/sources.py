"""`Source`: the data set a Hydra data config names, and where its file comes from.

A source reads exactly one thing, so `data=<name>` never silently becomes another data set:

- `path` set: that local file, parsed with `format`. Missing: `file not found: <path>` plus the
  config's `hint` (where to get it). Nothing is downloaded.
- `path` null and `download` set: the pinned official archive, downloaded once into
  data/raw/<name>/ and checked against its sha256 (`download.py`). Configs that do this carry the
  word in their name (e.g. `data=ml-1m-raw`).

Parsers live in `formats.py`, their line-by-line checks in `validation.py`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from genrec.data.download import DOWNLOADS, Download, fetch, sha256_file
from genrec.data.formats import FORMATS
from genrec.data.interactions import DataError, InteractionLog, processed_key
from genrec.data.validation import PathLike
from genrec.rank_zero_log import get_logger

log = get_logger(__name__)

_DOWNLOAD_KEYS = {"url", "sha256", "member", "format", "format_kwargs"}


def _plain(obj: Any) -> Any:
    """Hydra hands us DictConfig/ListConfig: make them plain for json and ** calls."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _check_format(name: str, fmt: str, kwargs: Mapping[str, Any], what: str) -> None:
    """Fail at construction on a format or keyword typo, not after a download."""
    if fmt not in FORMATS:
        raise DataError(f"data '{name}': unknown {what} '{fmt}' (known: {', '.join(sorted(FORMATS))})")
    try:
        inspect.signature(FORMATS[fmt]).bind("path", **kwargs)
    except TypeError as exc:
        raise DataError(f"data '{name}': bad {what}_kwargs for '{fmt}': {exc}") from exc


def _parse_download(name: str, download: Mapping[str, Any] | str, default_format: str) -> Download:
    if isinstance(download, str):
        if download not in DOWNLOADS:
            raise DataError(f"data '{name}': unknown download '{download}' (known: {', '.join(DOWNLOADS)})")
        download = DOWNLOADS[download]
    spec = _plain(download)
    unknown = set(spec) - _DOWNLOAD_KEYS
    missing = {"url", "sha256", "member"} - set(spec)
    if unknown or missing:
        raise DataError(f"data '{name}': download needs url, sha256, member (and optional format, "
                        f"format_kwargs); missing {sorted(missing)}, unknown {sorted(unknown)}")
    member = str(spec["member"])
    if Path(member).is_absolute() or ".." in Path(member).parts:
        raise DataError(f"data '{name}': download member '{member}' must be a relative path inside the zip")
    dl = Download(str(spec["url"]), str(spec["sha256"]).lower(), member,
                  str(spec.get("format", default_format)), dict(spec.get("format_kwargs") or {}))
    _check_format(name, dl.format, dl.format_kwargs, "download format")
    return dl


def _stat_key(path: Path) -> list[Any]:
    path = path.expanduser()
    if not path.exists():
        return [str(path), None, None]
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


class Source:
    """One data set: a local file (`path`), or, only when `path` is null, a pinned download.

    name:          data set name, logged and stored; cache folder data/{raw,processed}/<name>/
    path:          local file; null means "use `download`"
    format:        a key of FORMATS, for `path`
    format_kwargs: extra keyword arguments for that parser (e.g. times_path for `grouped`)
    download:      {url, sha256, member, format, format_kwargs?}, or a key of DOWNLOADS
    hint:          how to get the file, appended to `file not found: <path>`
    sha256:        the published file's sha256; another file at `path` is used with a warning
    """

    def __init__(self, name: str, path: str | None = None, format: str = "sasrec_pairs",
                 format_kwargs: dict | None = None, download: dict | str | None = None,
                 hint: str | None = None, sha256: str | None = None) -> None:
        self.name = name
        self.path = None if path is None else str(path)
        self.format = format
        self.format_kwargs = _plain(format_kwargs or {})
        _check_format(name, format, self.format_kwargs, "format")
        self.download = None if download is None else _parse_download(name, download, format)
        if self.path is None and self.download is None:
            raise DataError(f"data '{name}': set data.source.path to the data file (no download configured)")
        self.hint = hint
        self.sha256 = None if sha256 is None else str(sha256).lower()

    def __repr__(self) -> str:
        where = self.path if self.path is not None else self.download.url  # type: ignore[union-attr]
        return f"Source(name={self.name!r}, {where!r}, format={self.format!r})"

    # ---- where the file is ----
    def _local(self) -> Path:
        """The existing local file; `file not found: <path>` (and the hint) when it is missing."""
        p = Path(self.path).expanduser()  # type: ignore[arg-type]
        if not p.is_file():
            what = "file not found" if not p.exists() else "not a file"
            hint = f"; {self.hint}" if self.hint else ""
            raise DataError(f"{what}: {self.path}{hint}")
        return p

    def _raw_dir(self, cache_dir: PathLike) -> Path:
        return Path(cache_dir) / "raw" / self.name

    # ---- API ----
    def prepare(self, cache_dir: PathLike) -> None:
        """Make the data available locally: check `path`, or download + extract when path is null."""
        if self.path is not None:
            self._local()
        else:
            fetch(self.download, self._raw_dir(cache_dir))  # type: ignore[arg-type]

    def load(self, cache_dir: PathLike) -> InteractionLog:
        """Parse the file, recording its origin (name, path or url, sha256) on the log."""
        if self.path is not None:
            local = self._local()
            interactions = FORMATS[self.format](local, **self.format_kwargs)
            origin = {"name": self.name, "format": self.format, "path": str(local.resolve()),
                      "sha256": sha256_file(local)}
            origin.update({k: str(Path(v).expanduser().resolve()) for k, v in self.format_kwargs.items()
                           if k.endswith("_path") and v is not None})
            if self.sha256 is not None and origin["sha256"] != self.sha256:
                log.warning("data '%s': %s has sha256 %s, not the published %s; using it anyway",
                            self.name, local, origin["sha256"], self.sha256)
        else:
            dl = self.download
            member = fetch(dl, self._raw_dir(cache_dir))  # type: ignore[arg-type]
            interactions = FORMATS[dl.format](member, **dl.format_kwargs)  # type: ignore[union-attr]
            origin = {"name": self.name, "format": dl.format, "url": dl.url,  # type: ignore[union-attr]
                      "sha256": dl.sha256, "member": dl.member}  # type: ignore[union-attr]
        interactions.origin = origin
        log.info("data '%s': read %d interactions from %s", self.name, len(interactions),
                 origin.get("path", origin.get("url")))
        return interactions

    def fingerprint(self) -> str:
        """Short hash identifying the parsed data, without parsing it.

        A local file is identified by path, size and mtime (plus those of any *_path kwargs,
        e.g. a times file); a download by its pinned url, sha256 and member.
        """
        if self.path is not None:
            key: dict[str, Any] = {"file": _stat_key(self._local()), "format": self.format,
                                   "kwargs": self.format_kwargs,
                                   "side_files": {k: _stat_key(Path(v)) for k, v in self.format_kwargs.items()
                                                  if k.endswith("_path") and v is not None}}
        else:
            dl = self.download
            key = {"url": dl.url, "sha256": dl.sha256, "member": dl.member,  # type: ignore[union-attr]
                   "format": dl.format, "kwargs": dl.format_kwargs}  # type: ignore[union-attr]
        key["name"] = self.name
        blob = json.dumps(key, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def cache_key(self, **preprocessing: Any) -> str:
        """Key of the processed cache: this source plus every preprocessing parameter."""
        return processed_key(self.fingerprint(), **preprocessing)
