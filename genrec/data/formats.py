"""Parsers for the published interaction-file formats, each returning an `InteractionLog`.

Every parser validates at the edge: the fast path is one pandas C-engine read; when that
fails, finds a negative id or a column count the format does not have, the file is re-read
line by line (`validation.py`) so the error names the first bad line and field. Ratings are
kept when the format has them (MovieLens, RecBole `rating`, a CSV `rating_col`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from genrec.data.interactions import DataError, InteractionLog
from genrec.data.validation import (
    ITEM,
    RATING,
    TIME,
    USER,
    Field,
    PathLike,
    csv_rows,
    existing_file,
    find_bad_line,
    raise_first_bad,
    raise_first_bad_grouped,
    split_lines,
)
from genrec.rank_zero_log import get_logger

log = get_logger(__name__)


# ---------------------------------------------------------------------------------------------
# Integer tables: pairs, MovieLens .dat and u.data
# ---------------------------------------------------------------------------------------------

def _read_int_table(
    path: Path,
    fields: Sequence[Field],
    sep: str,
    split: Callable[[str], list[str]],
    names: str,
    data: Any = None,
) -> pd.DataFrame:
    """Fast pandas read of an all-numeric table with exactly len(fields) columns.

    header=None without names: pandas would otherwise take surplus leading columns as an index.
    """
    dtypes = {i: (np.float64 if f.kind == "number" else np.int64) for i, f in enumerate(fields)}
    scan = lambda cause: raise_first_bad(  # noqa: E731
        path, split_lines(path, split), dict(enumerate(fields)), len(fields), names, cause)
    try:
        df = pd.read_csv(path if data is None else data, sep=sep, header=None, dtype=dtypes, engine="c")
    except (ValueError, OverflowError) as exc:  # ParserError and EmptyDataError are ValueErrors
        scan(exc)
    if df.shape[1] != len(fields):
        scan(f"{df.shape[1]} columns")
    for i, f in enumerate(fields):
        if f.kind == "id" and (df[i].to_numpy() < 0).any():
            scan(f"negative {f.label}")
    df.columns = [f.label for f in fields]
    return df


def _log_from(df: pd.DataFrame, path: Path, with_time: bool, with_rating: bool = False) -> InteractionLog:
    ts = df[TIME.label].to_numpy(np.int64) if with_time else None
    ratings = df[RATING.label].to_numpy(np.float32) if with_rating else None
    return InteractionLog(df[USER.label].to_numpy(np.int64), df[ITEM.label].to_numpy(np.int64),
                          ts, source=str(path), ratings=ratings)


def read_sasrec_pairs(path: PathLike) -> InteractionLog:
    """`user item` per line (SASRec / BERT4Rec style), chronological per user, no time."""
    p = existing_file(path)
    df = _read_int_table(p, [USER, ITEM], r"\s+", str.split, "user item")
    return _log_from(df, p, with_time=False)


def read_movielens_dat(path: PathLike) -> InteractionLog:
    """MovieLens-1M ratings.dat: `UserID::MovieID::Rating::Timestamp`."""
    p = existing_file(path)
    # The C engine takes only one-character separators; rewriting '::' keeps line numbers.
    data = io.BytesIO(p.read_bytes().replace(b"::", b"\t"))
    df = _read_int_table(p, [USER, ITEM, RATING, TIME], "\t", lambda s: s.split("::"),
                         "UserID::MovieID::Rating::Timestamp", data=data)
    return _log_from(df, p, with_time=True, with_rating=True)


def read_movielens_udata(path: PathLike) -> InteractionLog:
    """MovieLens-100K u.data: tab-separated `user item rating timestamp`."""
    p = existing_file(path)
    df = _read_int_table(p, [USER, ITEM, RATING, TIME], "\t", lambda s: s.split("\t"),
                         "user item rating timestamp")
    return _log_from(df, p, with_time=True, with_rating=True)


# ---------------------------------------------------------------------------------------------
# Grouped: `user item1 item2 ...` per line, optionally with an aligned times file
# ---------------------------------------------------------------------------------------------

@dataclass
class _Grouped:
    linenos: list[int]
    heads: np.ndarray    # int64 [n_lines]: the user id of each line
    lengths: np.ndarray  # int64 [n_lines]: values after the user id
    values: np.ndarray   # int64 [sum(lengths)]


def _parse_grouped(path: Path, value: Field) -> _Grouped:
    """Variable-length lines: too ragged for pandas, but one numpy conversion of all tokens is fast."""
    linenos, rows = [], []
    for lineno, parts in split_lines(path, str.split):  # utf-8-sig: a BOM is dropped, as pandas does
        if len(parts) < 2:
            raise DataError(f"{path} line {lineno}: expected a user id and at least one {value.label}, "
                            f"got {len(parts)} field")
        linenos.append(lineno)
        rows.append(parts)
    lengths = np.array([len(r) for r in rows], dtype=np.int64)  # [n_lines]
    try:
        flat = np.array([t for parts in rows for t in parts], dtype=str).astype(np.int64)  # [n_tokens]
    except (ValueError, OverflowError) as exc:
        raise_first_bad_grouped(path, zip(linenos, rows, strict=True), value, exc)
    is_head = np.zeros(len(flat), dtype=bool)
    is_head[np.cumsum(lengths) - lengths] = True
    if (flat[is_head] < 0).any() or (value.kind == "id" and (flat < 0).any()):
        raise_first_bad_grouped(path, zip(linenos, rows, strict=True), value, "negative id")
    return _Grouped(linenos, flat[is_head], lengths - 1, flat[~is_head])


def _check_aligned(items: _Grouped, times: _Grouped, items_path: Path, times_path: Path) -> None:
    """The times file must have the same users, in the same order, with one time per item."""
    if len(times.heads) != len(items.heads):
        raise DataError(f"{times_path}: {len(times.heads)} non-blank lines but {items_path} has "
                        f"{len(items.heads)}")
    bad_user = np.flatnonzero(times.heads != items.heads)
    bad_len = np.flatnonzero(times.lengths != items.lengths)
    if len(bad_user) and (not len(bad_len) or bad_user[0] <= bad_len[0]):
        k = bad_user[0]
        raise DataError(f"{times_path} line {times.linenos[k]}: user {times.heads[k]} but {items_path} "
                        f"line {items.linenos[k]} has user {items.heads[k]}")
    if len(bad_len):
        k = bad_len[0]
        raise DataError(f"{times_path} line {times.linenos[k]}: {times.lengths[k]} timestamps but "
                        f"{items_path} line {items.linenos[k]} has {items.lengths[k]} items")


def read_grouped(path: PathLike, times_path: PathLike | None = None) -> InteractionLog:
    """`user item1 item2 ...` per line (S3-Rec / P5 style), items in time order.

    times_path: an optional second file `user t1 t2 ...` aligned line by line (TiCoSeRec style).
    """
    p = existing_file(path)
    items = _parse_grouped(p, ITEM)
    users = np.repeat(items.heads, items.lengths)  # [n_interactions]
    ts = None
    if times_path is not None:
        tp = existing_file(times_path)
        times = _parse_grouped(tp, TIME)
        _check_aligned(items, times, p, tp)
        ts = times.values
    return InteractionLog(users, items.values, ts, source=str(p))


# ---------------------------------------------------------------------------------------------
# Token tables: RecBole atomic files and generic CSV (ids may be strings)
# ---------------------------------------------------------------------------------------------

def _token_ids(values: pd.Series, path: Path, label: str) -> np.ndarray | None:
    """Integer ids when every value is a non-negative integer, else factorized codes.

    None when some id is empty: the caller scans for the line to name it.
    """
    if (values == "").any():
        return None
    nums = pd.to_numeric(values, errors="coerce")
    if pd.api.types.is_integer_dtype(nums.dtype) and (nums.to_numpy() >= 0).all():
        return nums.to_numpy(np.int64)
    bad = nums.isna() | (nums < 0)
    if not bad.all():  # a mostly numeric column with a stray string is often a typo: say so
        log.warning("%s: %s column is not all non-negative integers (e.g. %r); treating ids as strings",
                    path, label, values[bad].iloc[0])
    codes, uniques = pd.factorize(values)
    log.info("%s: factorized %d distinct %s strings to integers", path, len(uniques), label)
    return codes.astype(np.int64)


def _numbers(values: pd.Series) -> np.ndarray | None:
    """float64 values, or None when some value is not a finite number."""
    arr = pd.to_numeric(values, errors="coerce").to_numpy(np.float64, na_value=np.nan)
    return arr if np.isfinite(arr).all() else None


def _numeric_times(values: pd.Series) -> np.ndarray | None:
    """int64 seconds (floats floored), or None when some value is not a finite number."""
    nums = pd.to_numeric(values, errors="coerce")
    if pd.api.types.is_integer_dtype(nums.dtype):
        return nums.to_numpy(np.int64)  # no float round trip: exact for any int64
    arr = _numbers(values)
    return None if arr is None else np.floor(arr).astype(np.int64)


@dataclass(frozen=True)
class _Columns:
    """Positions of the columns a token table maps (time and rating optional)."""

    user: int
    item: int
    time: int | None = None
    rating: int | None = None

    def fields(self) -> dict[int, Field]:
        out = {self.user: Field(USER.label, "token"), self.item: Field(ITEM.label, "token")}
        if self.time is not None:
            out[self.time] = Field(TIME.label, "number")
        if self.rating is not None:
            out[self.rating] = RATING
        return out


def _token_log(df: pd.DataFrame, path: Path, cols: _Columns,
               rows: Callable[[], Iterable[tuple[int, list[str]]]], n_fields: int | None,
               names: str) -> InteractionLog:
    """Build the log from string columns (labelled by position); on an empty id or bad number, scan."""
    users = _token_ids(df[cols.user], path, USER.label)
    items = _token_ids(df[cols.item], path, ITEM.label)
    ts = None if cols.time is None else _numeric_times(df[cols.time])
    ratings = None if cols.rating is None else _numbers(df[cols.rating])
    if (users is None or items is None or (cols.time is not None and ts is None)
            or (cols.rating is not None and ratings is None)):
        raise_first_bad(path, rows(), cols.fields(), n_fields, names, "empty id or non-numeric value")
    return InteractionLog(users, items, ts, source=str(path), ratings=ratings)


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        return f.readline().rstrip("\r\n")


def _read_text_table(path: Path, sep: str, skip: int, n_fields: int, quoting: int,
                     rows: Callable[[], Iterable[tuple[int, list[str]]]], fields: dict[int, Field],
                     names: str) -> pd.DataFrame:
    """Every column as strings; a line with another field count is named, not padded or indexed."""
    try:
        df = pd.read_csv(path, sep=sep, header=None, skiprows=skip, dtype=str, na_filter=False,
                         quoting=quoting, engine="c")
    except ValueError as exc:  # ParserError (a long line), EmptyDataError
        raise_first_bad(path, rows(), fields, n_fields, names, exc)
    if df.shape[1] != n_fields:
        raise_first_bad(path, rows(), fields, n_fields, names, f"{df.shape[1]} columns")
    if (df[n_fields - 1] == "").any():  # pandas pads a short line with "": count its fields
        err = find_bad_line(path, rows(), fields, n_fields, names)
        if err is not None:
            raise err
    return df


def read_recbole_inter(path: PathLike, user_field: str = "user_id", item_field: str = "item_id",
                       time_field: str = "timestamp", rating_field: str = "rating") -> InteractionLog:
    """RecBole atomic `.inter`: tab-separated, typed header `user_id:token\\titem_id:token...`.

    Columns are found by name; the time and rating columns are optional and may hold floats.
    """
    p = existing_file(path)
    header = _first_line(p)
    if not header.strip():
        raise DataError(f"{p}: empty file, expected a typed header like 'user_id:token\\titem_id:token'")
    names = [h.split(":", 1)[0].strip() for h in header.split("\t")]
    for need in (user_field, item_field):
        if need not in names:
            raise DataError(f"{p} line 1: no '{need}' column in header (columns: {', '.join(names)})")
    optional = lambda name: names.index(name) if name in names else None  # noqa: E731
    cols = _Columns(names.index(user_field), names.index(item_field), optional(time_field),
                    optional(rating_field))
    rows = lambda: csv_rows(p, "\t", csv.QUOTE_NONE, skip=1)  # noqa: E731
    label = " ".join(names)
    df = _read_text_table(p, "\t", 1, len(names), csv.QUOTE_NONE, rows, cols.fields(), label)
    return _token_log(df, p, cols, rows, len(names), label)


def read_csv(path: PathLike, user_col: str | int, item_col: str | int, time_col: str | int | None = None,
             sep: str = ",", header: bool = True, rating_col: str | int | None = None) -> InteractionLog:
    """Generic delimited file with a column mapping: names when `header`, 0-based positions otherwise.

    Every line must have as many fields as the first. String ids are factorized to ints; the
    time column must be numeric (seconds), the rating column any finite number.
    """
    p = existing_file(path)
    wanted = [user_col, item_col, time_col, rating_col]
    head = csv_rows(p, sep, csv.QUOTE_MINIMAL)
    first = next(head, None)
    head.close()  # closes the file now, not at garbage collection
    if first is None:
        raise DataError(f"{p}: empty file")
    if header:
        columns = [c.strip() for c in first[1]]
        missing = [c for c in wanted if c is not None and c not in columns]
        if missing:
            raise DataError(f"{p} line {first[0]}: no column {missing[0]!r} in header "
                            f"(columns: {', '.join(columns)})")
        positions = [None if c is None else columns.index(c) for c in wanted]  # type: ignore[arg-type]
    else:
        given = [c for c in wanted if c is not None]
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in given):
            raise DataError(f"{p}: header=False needs integer column positions, got {given}")
        if max(given) >= len(first[1]):
            raise DataError(f"{p} line {first[0]}: column {max(given)} asked for but the line has "
                            f"{len(first[1])} fields")
        positions = list(wanted)
    cols = _Columns(*positions)  # type: ignore[arg-type]
    skip = first[0] if header else 0
    names = f"{len(first[1])} columns as on line {first[0]}"
    rows = lambda: csv_rows(p, sep, csv.QUOTE_MINIMAL, skip=skip)  # noqa: E731
    df = _read_text_table(p, sep, skip, len(first[1]), csv.QUOTE_MINIMAL, rows, cols.fields(), names)
    return _token_log(df, p, cols, rows, len(first[1]), names)


FORMATS: dict[str, Callable[..., InteractionLog]] = {
    "sasrec_pairs": read_sasrec_pairs,
    "grouped": read_grouped,
    "movielens_dat": read_movielens_dat,
    "movielens_udata": read_movielens_udata,
    "recbole_inter": read_recbole_inter,
    "csv": read_csv,
}
