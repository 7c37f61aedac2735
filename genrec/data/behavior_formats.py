"""Readers of behaviour logs: MovieLens-100K (RecBole atomic files), MovieLens-1M (SASRec ids
joined to the GroupLens side files), KuaiRand log CSVs and Amazon Beauty (S3Rec ids with the
brand as author), each an `InteractionLog` whose
`columns` hold only the behaviour fields (behavior_schema.FIELDS) the source really has.

As in `formats.py`, the interactions are read with one fast call and a failure is re-scanned
line by line (`validation.py`), so an error names the file, line and field. The small side
files (users, items, id maps) are read line by line directly.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd

from genrec.data.behavior_schema import as_columns, rating_flags, time_context
from genrec.data.formats import read_grouped, read_recbole_inter, read_sasrec_pairs
from genrec.data.interactions import DataError, InteractionLog
from genrec.data.validation import (
    Field,
    PathLike,
    csv_rows,
    existing_file,
    problem,
    raise_first_bad,
    split_lines,
)

# MovieLens genres in the GroupLens order; category = 1-based position, 0 for "unknown"/none.
ML_GENRES: tuple[str, ...] = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
    "Western")
# Bump when a reader's output for the same files changes: behaviour cache keys include it.
READER_VERSION = 2  # 2: KuaiRand author_id -> author

_GENRE_ID = {g: i + 1 for i, g in enumerate(ML_GENRES)} | {"unknown": 0}
# ML-100K occupations (its u.occupation list), sorted: occupation = 1-based position.
ML100K_OCCUPATIONS: tuple[str, ...] = (
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
    "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer",
    "retired", "salesman", "scientist", "student", "technician", "writer")
_OCCUPATION_ID = {o: i + 1 for i, o in enumerate(ML100K_OCCUPATIONS)}
_GENDER_ID = {"F": 1, "M": 2}


# ---------------------------------------------------------------------------------------------
# Side tables: one row per user or item, keyed by id
# ---------------------------------------------------------------------------------------------

def _int(path: Path, lineno: int, label: str, value: str, kind: str = "int") -> int:
    why = problem(kind, value)
    if why:
        raise DataError(f"{path} line {lineno}: {label} {value!r} {why}")
    return int(value)


def _code(path: Path, lineno: int, label: str, value: str, table: dict[str, int]) -> int:
    if value.strip() not in table:
        raise DataError(f"{path} line {lineno}: {label} {value!r} is not one of {sorted(table)}")
    return table[value.strip()]


@dataclass
class _Table:
    """Attribute columns of a side file, by id: ids int64 [K] sorted, values name -> [K]."""

    path: Path
    ids: np.ndarray
    values: dict[str, np.ndarray]

    @classmethod
    def build(cls, path: Path, rows: list[tuple[int, int, dict[str, int]]]) -> _Table:
        """rows: (line number, id, {name: value}); a repeated id is an error."""
        if not rows:
            raise DataError(f"{path}: no rows")
        ids = np.array([r[1] for r in rows], dtype=np.int64)  # [K]
        order = np.argsort(ids, kind="stable")
        dup = np.flatnonzero(np.diff(ids[order]) == 0)
        if len(dup):
            first, again = sorted((rows[order[dup[0]]][0], rows[order[dup[0] + 1]][0]))
            raise DataError(f"{path} line {again}: id {ids[order[dup[0]]]} already on line {first}")
        values = {k: np.array([r[2][k] for r in rows], dtype=np.int64)[order] for k in rows[0][2]}
        return cls(path, ids[order], values)

    def lookup(self, keys: np.ndarray, what: str, used_in: Path) -> dict[str, np.ndarray]:
        """Each key's values, [N] per name; a key with no row fails naming both files."""
        pos = np.clip(np.searchsorted(self.ids, keys), 0, len(self.ids) - 1)  # [N]
        missing = np.flatnonzero(self.ids[pos] != keys)
        if len(missing):
            raise DataError(f"{self.path}: no row for {what} {keys[missing[0]]} (used in {used_in}, "
                            f"{len(missing)} rows in all)")
        return {k: v[pos] for k, v in self.values.items()}


def _header_index(path: Path, header: list[str], need: tuple[str, ...]) -> list[int]:
    names = [h.split(":", 1)[0].strip() for h in header]
    missing = [n for n in need if n not in names]
    if missing:
        raise DataError(f"{path} line 1: no '{missing[0]}' column in header (columns: {', '.join(names)})")
    return [names.index(n) for n in need]


def _recbole_rows(path: Path, need: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    """(line, the `need` fields) of a RecBole atomic side file (typed header on line 1)."""
    rows = split_lines(path, lambda s: s.split("\t"))
    first = next(rows, None)
    if first is None:
        raise DataError(f"{path}: empty file, expected a typed header")
    index = _header_index(path, first[1], need)
    for lineno, parts in rows:
        if len(parts) != len(first[1]):
            raise DataError(f"{path} line {lineno}: expected {len(first[1])} fields, got {len(parts)}")
        yield lineno, [parts[i] for i in index]


def _first_genre(path: Path, lineno: int, genres: list[str]) -> int:
    genres = [g for g in genres if g]
    return _code(path, lineno, "genre", genres[0], _GENRE_ID) if genres else 0


# ---------------------------------------------------------------------------------------------
# MovieLens-100K, RecBole atomic files
# ---------------------------------------------------------------------------------------------

def ml100k_files(path: PathLike) -> list[Path]:
    folder = Path(path).expanduser()
    return [folder / f"ml-100k.{ext}" for ext in ("inter", "user", "item")]


def read_ml100k(path: PathLike) -> InteractionLog:
    """`path`: the folder with ml-100k.inter (rating, timestamp), .user (age, gender, occupation)
    and .item (`class` genres: category = the first genre). hour/weekday in UTC."""
    inter_p, user_p, item_p = (existing_file(p) for p in ml100k_files(path))
    log = read_recbole_inter(inter_p)
    if log.timestamps is None or log.ratings is None:
        raise DataError(f"{inter_p} line 1: the header needs rating and timestamp columns")
    users = _Table.build(user_p, [
        (n, _int(user_p, n, "user id", u, "id"),
         {"age": _int(user_p, n, "age", a, "id"), "gender": _code(user_p, n, "gender", g, _GENDER_ID),
          "occupation": _code(user_p, n, "occupation", o, _OCCUPATION_ID)})
        for n, (u, a, g, o) in _recbole_rows(user_p, ("user_id", "age", "gender", "occupation"))])
    items = _Table.build(item_p, [
        (n, _int(item_p, n, "item id", i, "id"), {"category": _first_genre(item_p, n, c.split(" "))})
        for n, (i, c) in _recbole_rows(item_p, ("item_id", "class"))])
    values = {"rating": log.ratings, **rating_flags(log.ratings), **time_context(log.timestamps),
              **users.lookup(log.users, "user id", inter_p), **items.lookup(log.items, "item id", inter_p)}
    return InteractionLog(log.users, log.items, log.timestamps, str(inter_p), log.ratings,
                          columns=as_columns(values))


# ---------------------------------------------------------------------------------------------
# MovieLens-1M: SASRec ids joined to the GroupLens users.dat / movies.dat
# ---------------------------------------------------------------------------------------------

def ml1m_files(path: PathLike, meta_path: PathLike) -> list[Path]:
    folder, meta = Path(path).expanduser(), Path(meta_path).expanduser()
    return [folder / "ml-1m.txt", folder / "sas_to_original_users.txt", folder / "sas_to_original_items.txt",
            meta / "users.dat", meta / "movies.dat"]


def _id_map(path: Path, what: str) -> _Table:
    """`sas_id original_id` per line."""
    rows = []
    for n, parts in split_lines(path, str.split):
        if len(parts) != 2:
            raise DataError(f"{path} line {n}: expected 2 fields (sas_id original_id), got {len(parts)}")
        rows.append((n, _int(path, n, f"sas {what} id", parts[0], "id"),
                     {"original": _int(path, n, f"original {what} id", parts[1], "id")}))
    return _Table.build(path, rows)


def _dat_rows(path: PathLike, n_fields: int, names: str) -> Iterator[tuple[int, list[str]]]:
    for n, parts in split_lines(Path(path), lambda s: s.split("::")):
        if len(parts) != n_fields:
            raise DataError(f"{path} line {n}: expected {n_fields} fields ({names}), got {len(parts)}")
        yield n, parts


def read_ml1m(path: PathLike, meta_path: PathLike) -> InteractionLog:
    """`path`: the ml-1m-sasrec folder (ml-1m.txt in SASRec ids, chronological, no time or rating,
    and the sas_to_original maps); `meta_path`: the GroupLens folder (users.dat, movies.dat).
    Columns: age (the age-group code), gender, occupation (+1: 0 = unknown), category."""
    txt, umap_p, imap_p, users_p, movies_p = (existing_file(p) for p in ml1m_files(path, meta_path))
    log = read_sasrec_pairs(txt)
    original_user = _id_map(umap_p, "user").lookup(log.users, "sas user id", txt)["original"]  # [N]
    original_item = _id_map(imap_p, "item").lookup(log.items, "sas item id", txt)["original"]  # [N]
    users = _Table.build(users_p, [
        (n, _int(users_p, n, "UserID", u, "id"),
         {"gender": _code(users_p, n, "Gender", g, _GENDER_ID), "age": _int(users_p, n, "Age", a, "id"),
          "occupation": _int(users_p, n, "Occupation", o, "id") + 1})
        for n, (u, g, a, o, _zip) in _dat_rows(users_p, 5, "UserID::Gender::Age::Occupation::Zip-code")])
    movies = _Table.build(movies_p, [
        (n, _int(movies_p, n, "MovieID", m, "id"), {"category": _first_genre(movies_p, n, g.split("|"))})
        for n, (m, _title, g) in _dat_rows(movies_p, 3, "MovieID::Title::Genres")])
    values = {**users.lookup(original_user, "UserID", umap_p),
              **movies.lookup(original_item, "MovieID", imap_p)}
    return InteractionLog(log.users, log.items, None, str(txt), columns=as_columns(values))


# ---------------------------------------------------------------------------------------------
# KuaiRand log CSV
# ---------------------------------------------------------------------------------------------

# KuaiRand column -> (behaviour field, validation kind); ids and time are required, the rest optional.
KUAIRAND_FLAGS = {"is_click": "click", "is_like": "like", "is_follow": "follow", "is_comment": "comment",
                  "is_forward": "share", "is_hate": "not_interested"}
_KUAIRAND_NUMBERS = {"play_time_ms": "number", "duration_ms": "number", "tab": "id", "author_id": "id"}
_KUAIRAND_REQUIRED = ("user_id", "video_id", "time_ms")


def kuairand_files(path: PathLike) -> list[Path]:
    return [Path(path).expanduser()]


def _kuairand_table(p: Path) -> pd.DataFrame:
    """The mapped columns, numeric; a bad value fails naming the first bad line and field."""
    rows = lambda: csv_rows(p, ",", csv.QUOTE_MINIMAL, skip=1)  # noqa: E731
    with open(p, encoding="utf-8-sig", newline="") as f:
        header = [h.strip() for h in next(csv.reader(f), [])]
    if not header:
        raise DataError(f"{p}: empty file, expected a header with {', '.join(_KUAIRAND_REQUIRED)}")
    kinds = {"user_id": "id", "video_id": "id", "time_ms": "int"} | {k: "int" for k in KUAIRAND_FLAGS}
    kinds |= _KUAIRAND_NUMBERS
    used = [c for c in header if c in kinds]
    missing = [c for c in _KUAIRAND_REQUIRED if c not in used]
    if missing:
        raise DataError(f"{p} line 1: no '{missing[0]}' column in header (columns: {', '.join(header)})")
    fields = {header.index(c): Field(c, kinds[c]) for c in used}
    names = f"{len(header)} columns as in the header"

    def fail(cause: BaseException | str) -> NoReturn:
        raise_first_bad(p, rows(), fields, len(header), names, cause)

    try:
        raw = pd.read_csv(p, dtype=str, na_filter=False, engine="c")
    except ValueError as exc:  # a line with too many fields
        fail(exc)
    if raw.shape[1] != len(header):
        fail(f"{raw.shape[1]} columns")
    df = pd.DataFrame({c: pd.to_numeric(raw[c].str.strip(), errors="coerce") for c in used})
    if df.isna().to_numpy().any():
        fail("empty or non-numeric value")
    return df


def _check_range(p: Path, df: pd.DataFrame, column: str, ok: np.ndarray, what: str) -> None:
    """Fail naming the first row where `ok` is False, with the value as the file has it."""
    bad = np.flatnonzero(~ok)
    if len(bad):
        rows = csv_rows(p, ",", csv.QUOTE_MINIMAL)
        header = [h.strip() for h in next(rows)[1]]
        lineno, parts = next(row for k, row in enumerate(rows) if k == bad[0])
        raise DataError(f"{p} line {lineno}: {column} {parts[header.index(column)]!r} {what}")


def read_kuairand(path: PathLike, utc_offset_hours: float = 8.0) -> InteractionLog:
    """A KuaiRand log CSV (log_standard_*.csv / log_random_*.csv): header with user_id, video_id,
    time_ms and any of is_click, is_like, is_follow, is_comment, is_forward (-> share), is_hate
    (-> not_interested), play_time_ms, duration_ms, tab (-> source + 1), author_id (-> author + 1,
    as in KuaiRand's video features; 0 stays "unknown"). watch_time and duration
    in seconds, watch_ratio = play / duration (0 when duration is 0). hour/weekday: time_ms in
    local time, UTC+8 by default (KuaiRand's own date/hourmin columns are Beijing time)."""
    p = existing_file(path)
    df = _kuairand_table(p)
    for c in ("user_id", "video_id", "tab", "author_id", *KUAIRAND_FLAGS):
        if c in df:
            v = df[c].to_numpy()
            _check_range(p, df, c, (v >= 0) & (v == np.floor(v)), "is not a non-negative integer")
    for c in KUAIRAND_FLAGS:
        if c in df:
            _check_range(p, df, c, df[c].isin((0, 1)).to_numpy(), "is not 0 or 1")
    for c in ("play_time_ms", "duration_ms"):
        if c in df:
            _check_range(p, df, c, (df[c] >= 0).to_numpy(), "is negative")
    seconds = np.floor_divide(df["time_ms"].to_numpy(np.int64), 1000)  # [N]
    values = {field: df[c].to_numpy() for c, field in KUAIRAND_FLAGS.items() if c in df}
    values |= time_context(seconds, utc_offset_hours)
    if "tab" in df:
        values["source"] = df["tab"].to_numpy() + 1
    if "author_id" in df:
        values["author"] = df["author_id"].to_numpy() + 1
    if "play_time_ms" in df:
        values["watch_time"] = df["play_time_ms"].to_numpy() / 1000.0
    if "duration_ms" in df:
        values["duration"] = df["duration_ms"].to_numpy() / 1000.0
    if "play_time_ms" in df and "duration_ms" in df:
        play, dur = values["watch_time"], values["duration"]
        values["watch_ratio"] = np.divide(play, dur, out=np.zeros_like(play), where=dur > 0)
    return InteractionLog(df["user_id"].to_numpy(np.int64), df["video_id"].to_numpy(np.int64), seconds,
                          str(p), columns=as_columns(values))


# ---------------------------------------------------------------------------------------------
# Amazon Beauty 5-core, S3Rec ids: the brand as author
# ---------------------------------------------------------------------------------------------

def beauty_files(path: PathLike) -> list[Path]:
    folder = Path(path).expanduser()
    return [folder / "Beauty.txt", folder / "Beauty_item2attributes.json"]


def _item_attributes(path: Path) -> dict[int, list[int]]:
    """`{"item_id": [attribute_id, ...]}` with every id checked."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected an object {{item_id: [attribute ids]}}, got {type(raw).__name__}")
    out = {}
    for key, attrs in raw.items():
        if problem("id", key) or not isinstance(attrs, list) or not all(
                isinstance(a, int) and not isinstance(a, bool) and a >= 1 for a in attrs):
            raise DataError(f"{path}: item {key!r}: expected a positive integer id -> a list of positive "
                            f"integer attribute ids, got {attrs!r}")
        out[int(key)] = attrs
    return out


def brand_of_items(attributes: dict[int, list[int]]) -> dict[int, int]:
    """Each item's brand attribute id, 0 for none. S3Rec's data_process.py writes an item's
    attributes as [brand (if kept), category, subcategory, ...], so a brand only ever comes
    first: an attribute that appears AFTER another one in some item's list is a category, and
    an item's brand is its first attribute unless that is a category."""
    categories = {a for attrs in attributes.values() for a in attrs[1:]}
    return {item: attrs[0] if attrs and attrs[0] not in categories else 0
            for item, attrs in attributes.items()}


def read_beauty(path: PathLike) -> InteractionLog:
    """`path`: the beauty-5core-s3rec folder (Beauty.txt grouped, file order = time order, no
    time or rating; Beauty_item2attributes.json). Columns: author = the item's brand
    (`brand_of_items`), renumbered 1..n_brands in attribute-id order, 0 = no brand or no entry;
    click = 1 for every event (each is a review: the ranker's sampled negatives give the 0s)."""
    txt, attr_p = (existing_file(p) for p in beauty_files(path))
    log = read_grouped(txt)
    brands = brand_of_items(_item_attributes(attr_p))
    ids = np.unique([b for b in brands.values() if b])  # [n_brands] attribute ids
    table = np.zeros(max([*brands, int(log.items.max())]) + 1, dtype=np.int64)  # raw item -> author
    for item, b in brands.items():
        table[item] = 0 if b == 0 else int(np.searchsorted(ids, b)) + 1
    values = {"author": table[log.items], "click": np.ones(len(log), dtype=np.int8)}
    return InteractionLog(log.users, log.items, None, str(txt), columns=as_columns(values))


@dataclass(frozen=True)
class BehaviorFormat:
    """A reader and the files it reads (for existence checks, fingerprints and origin)."""

    read: Callable[..., InteractionLog]
    files: Callable[..., list[Path]]


BEHAVIOR_FORMATS: dict[str, BehaviorFormat] = {
    "ml-100k": BehaviorFormat(read_ml100k, ml100k_files),
    "ml-1m": BehaviorFormat(read_ml1m, ml1m_files),
    "kuairand": BehaviorFormat(read_kuairand, kuairand_files),
    "beauty": BehaviorFormat(read_beauty, beauty_files),
}
