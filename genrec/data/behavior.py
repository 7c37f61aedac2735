"""Behaviour logs: the schema (re-exported from `behavior_schema.py`) and `BehaviorSource`.

A behaviour log is an `InteractionLog` whose `columns` carry the optional per-interaction
fields of `FIELDS` (feedback flags, watch time, context, user attributes, item category and
author) that
its source really has; `column(seqs, u, name)` reads one back default-filled, `has` tells
whether the data has it, `record(seqs, u, t)` returns one event as a `BehaviorRecord`.
Readers live in `behavior_formats.py`; the embedded generator in `behavior_synthetic.py`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from genrec.data.behavior_formats import BEHAVIOR_FORMATS, READER_VERSION
from genrec.data.behavior_schema import (
    FIELD,
    FIELDS,
    RATING_FLAGS,
    BehaviorField,
    BehaviorRecord,
    as_columns,
    column,
    has,
    rating_flags,
    record,
    time_context,
)
from genrec.data.download import sha256_file
from genrec.data.interactions import DataError, InteractionLog, processed_key
from genrec.data.sources import _plain, _stat_key
from genrec.data.validation import PathLike
from genrec.rank_zero_log import get_logger

__all__ = ["FIELD", "FIELDS", "RATING_FLAGS", "BehaviorField", "BehaviorRecord", "BehaviorSource",
           "as_columns", "column", "has", "rating_flags", "record", "time_context"]

log = get_logger(__name__)


class BehaviorSource:
    """A behaviour data set read from local files; same interface as `genrec.data.sources.Source`.

    name:   data set name (cache folder data/processed/<name>/)
    format: a key of BEHAVIOR_FORMATS: "ml-100k" (path = folder with ml-100k.inter/.user/.item),
            "ml-1m" (path = the ml-1m-sasrec folder; meta_path = the GroupLens folder),
            "kuairand" (path = a KuaiRand log csv; optional utc_offset_hours),
            "beauty" (path = the beauty-5core-s3rec folder; author = the brand)
    sha256: published sha256 of the files: one string for the first (main) file, or a mapping
            {file name: sha256}; a different file is used with a warning
    hint:   how to get the data, appended to `file not found: <path>`
    format_kwargs: the reader's other arguments (e.g. meta_path)
    """

    def __init__(self, name: str, format: str, path: str, sha256: str | Mapping[str, str] | None = None,
                 hint: str = "", **format_kwargs: Any) -> None:
        if format not in BEHAVIOR_FORMATS:
            raise DataError(f"data '{name}': unknown behaviour format '{format}' "
                            f"(known: {', '.join(sorted(BEHAVIOR_FORMATS))})")
        self.name, self.format, self.path, self.hint = name, format, str(path), hint or ""
        self.format_kwargs: dict[str, Any] = _plain(format_kwargs)
        try:
            inspect.signature(BEHAVIOR_FORMATS[format].read).bind(self.path, **self.format_kwargs)
        except TypeError as exc:
            raise DataError(f"data '{name}': bad arguments for behaviour format '{format}': {exc}") from exc
        self.sha256 = _plain(sha256)

    def __repr__(self) -> str:
        return f"BehaviorSource(name={self.name!r}, {self.path!r}, format={self.format!r})"

    def files(self) -> list[Path]:
        """Every file the reader reads, the main one first."""
        kwargs = {k: v for k, v in self.format_kwargs.items() if k.endswith("_path")}
        return BEHAVIOR_FORMATS[self.format].files(self.path, **kwargs)

    def _local(self) -> list[Path]:
        """The files, or `file not found: <path>` (and the hint) for the first missing one."""
        for p in self.files():
            if not p.is_file():
                what = "file not found" if not p.exists() else "not a file"
                raise DataError(f"{what}: {p}" + (f"; {self.hint}" if self.hint else ""))
        return self.files()

    def _expected_sha(self, i: int, p: Path) -> str | None:
        if isinstance(self.sha256, Mapping):
            return self.sha256.get(p.name)
        return self.sha256 if i == 0 and self.sha256 is not None else None

    # ---- API ----
    def prepare(self, cache_dir: PathLike) -> None:
        """Nothing is downloaded: check the files are there."""
        self._local()

    def load(self, cache_dir: PathLike) -> InteractionLog:
        """Parse the files, recording the origin (name, format, paths, sha256 of each file)."""
        paths = self._local()
        interactions = BEHAVIOR_FORMATS[self.format].read(self.path, **self.format_kwargs)
        shas = {str(p.resolve()): sha256_file(p) for p in paths}
        for i, p in enumerate(paths):
            want = self._expected_sha(i, p)
            got = shas[str(p.resolve())]
            if want is not None and got != str(want).lower():
                log.warning("data '%s': %s has sha256 %s, not the published %s; using it anyway",
                            self.name, p, got, want)
        interactions.origin = {"name": self.name, "format": self.format, "path": str(paths[0].resolve()),
                               "sha256": shas[str(paths[0].resolve())], "files": shas,
                               "columns": sorted(interactions.columns)}
        log.info("data '%s': read %d interactions with columns %s from %s", self.name, len(interactions),
                 sorted(interactions.columns), self.path)
        return interactions

    def fingerprint(self) -> str:
        """Short hash of the files (path, size, mtime), format and arguments, without parsing."""
        key = {"name": self.name, "format": self.format, "kwargs": self.format_kwargs,
               "reader_version": READER_VERSION, "files": [_stat_key(p) for p in self._local()]}
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def cache_key(self, **preprocessing: Any) -> str:
        """Key of the processed cache: this source plus every preprocessing parameter."""
        return processed_key(self.fingerprint(), **preprocessing)
