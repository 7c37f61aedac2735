"""Checks that name the first bad line of an input file: file, line number and field.

The parsers in `formats.py` read with one fast pandas call; only when that fails (or finds a
negative id or a wrong column count) do they re-read the file here, line by line, so the error
is one sentence such as `ml-1m.txt line 17: item id 'abc' is not an integer`.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np

from genrec.data.interactions import DataError

PathLike = str | Path


@dataclass(frozen=True)
class Field:
    label: str  # as it appears in messages: "user id", "timestamp", ...
    kind: str   # "id" | "int" | "number" | "token"


USER = Field("user id", "id")
ITEM = Field("item id", "id")
TIME = Field("timestamp", "int")
RATING = Field("rating", "number")

_UNSIGNED = re.compile(r"\+?[0-9]+")
_NEGATIVE = re.compile(r"-[0-9]+")
_SIGNED = re.compile(r"[+-]?[0-9]+")
_INT64_MAX = np.iinfo(np.int64).max


def problem(kind: str, value: str) -> str | None:
    """Why `value` is not a valid `kind`, or None when it is."""
    s = value.strip()
    if kind in ("id", "int") and len(s) < 19 and s.isdigit() and s.isascii():
        return None  # the common case, checked first: the scan of a 1M-line file stays ~1 s
    if kind == "token":
        return "is empty" if not s else None
    if kind == "number":
        try:
            ok = math.isfinite(float(s))
        except ValueError:
            ok = False
        return None if ok else "is not a number"
    if kind == "id" and _NEGATIVE.fullmatch(s):
        return "is negative"
    if not (_UNSIGNED if kind == "id" else _SIGNED).fullmatch(s):
        return "is not an integer"
    if abs(int(s)) > _INT64_MAX:
        return "is too large for int64"
    return None


def find_bad_line(
    path: Path,
    rows: Iterable[tuple[int, list[str]]],
    fields: Mapping[int, Field],
    n_fields: int | None,
    names: str,
) -> DataError | None:
    """The error for the first bad row, or None. n_fields None: at least max(fields) + 1."""
    need = max(fields) + 1
    for lineno, parts in rows:
        if n_fields is not None and len(parts) != n_fields:
            return DataError(f"{path} line {lineno}: expected {n_fields} fields ({names}), got {len(parts)}")
        if len(parts) < need:
            return DataError(f"{path} line {lineno}: expected at least {need} fields ({names}), "
                             f"got {len(parts)}")
        for i, f in fields.items():
            why = problem(f.kind, parts[i])
            if why:
                return DataError(f"{path} line {lineno}: {f.label} {parts[i]!r} {why}")
    return None


def split_lines(path: Path, split: Callable[[str], list[str]],
                skip: int = 0) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, fields) of every non-blank line, like pandas' skip_blank_lines.

    utf-8-sig: a leading byte-order mark is dropped, as pandas drops it on the fast path.
    """
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if lineno > skip and line.strip():
                yield lineno, split(line.rstrip("\r\n"))


def csv_rows(path: Path, sep: str, quoting: int, skip: int = 0) -> Iterator[tuple[int, list[str]]]:
    """Like split_lines but honours CSV quoting, as pandas does."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:  # -sig: Excel's BOM
        reader = csv.reader(f, delimiter=sep, quoting=quoting)
        for row in reader:
            if reader.line_num > skip and row:
                yield reader.line_num, row


def raise_first_bad(path: Path, rows: Iterable[tuple[int, list[str]]], fields: Mapping[int, Field],
                    n_fields: int | None, names: str, cause: BaseException | str) -> NoReturn:
    err = find_bad_line(path, rows, fields, n_fields, names)
    if err is not None:
        raise err from (cause if isinstance(cause, BaseException) else None)
    # The fast path saw something the line scan did not: still fail, with pandas' reason.
    raise DataError(f"{path}: could not parse as ({names}): {cause}")


def raise_first_bad_grouped(path: Path, rows: Iterable[tuple[int, list[str]]], value: Field,
                            cause: BaseException | str) -> NoReturn:
    """Grouped lines: the first token is a user id, every later one a `value`."""
    for lineno, parts in rows:
        for i, token in enumerate(parts):
            f = USER if i == 0 else value
            why = problem(f.kind, token)
            if why:
                raise DataError(f"{path} line {lineno}: {f.label} {token!r} {why}")
    raise DataError(f"{path}: could not parse: {cause}")


def existing_file(path: PathLike) -> Path:
    """The path, or a one-sentence error: `file not found: <path>`."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"file not found: {path}")
    if not p.is_file():
        raise DataError(f"not a file: {path}")
    return p
