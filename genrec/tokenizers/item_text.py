"""Item text for the text embedding source, from the side files in shared/data (see its README.md).

Each function takes the dataset's raw item ids in genrec item-id order (`Sequences.raw_item_ids`:
entry i is the raw id of item i + 1) and returns one string per item, in that order.

- Beauty (raw id = S3-Rec id of beauty-5core-s3rec/Beauty.txt): "title. Brand and categories: a, b".
  S3-Rec id -> ASIN (datamaps.json id2item) -> global_product_id (item_id_to_int.json) -> title
  (products_lookup.csv); attribute j of Beauty_item2attributes.json is the j-th datamaps attribute,
  in id order, among those occurring >= 5 times.
- MovieLens-1M (raw id = SASRec id of ml-1m-sasrec/ml-1m.txt): "title. Genres: a, b", through
  sas_to_original_items.txt to movies.dat (read as latin-1).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from genrec.data.interactions import DataError


def _lookup(table: dict[int, str], raw_item_ids: Sequence[int], what: str) -> list[str]:
    missing = [int(r) for r in raw_item_ids if int(r) not in table]
    if missing:
        raise DataError(f"{what}: no text for {len(missing)} items, e.g. raw ids {missing[:5]}")
    return [table[int(r)] for r in raw_item_ids]


def beauty_item_texts(meta_dir: str | Path, attributes_json: str | Path | None,
                      raw_item_ids: Sequence[int]) -> list[str]:
    meta = Path(meta_dir)
    maps = json.loads((meta / "datamaps.json").read_text())
    asin_to_gid = json.loads((meta / "item_id_to_int.json").read_text())
    with open(meta / "products_lookup.csv", newline="", encoding="utf-8") as f:
        titles = {int(row["global_product_id"]): row["name"] for row in csv.DictReader(f)}
    names: dict[int, list[str]] = {}
    if attributes_json is not None:
        ids = sorted(maps["id2attribute"], key=int)
        kept = [maps["id2attribute"][i] for i in ids if maps["attributeid2num"][i] >= 5]
        item_attrs = json.loads(Path(attributes_json).read_text())
        names = {int(item): [kept[j - 1] for j in attrs] for item, attrs in item_attrs.items()}
    table = {}
    for sid, asin in maps["id2item"].items():
        title = titles.get(asin_to_gid[asin], "").strip()
        attrs = names.get(int(sid), [])
        table[int(sid)] = f"{title}. Brand and categories: {', '.join(attrs)}" if attrs else title
    return _lookup(table, raw_item_ids, str(meta))


def movielens_item_texts(movies_dat: str | Path, sas_to_original: str | Path | None,
                         raw_item_ids: Sequence[int]) -> list[str]:
    """`sas_to_original` None: raw ids are GroupLens MovieIDs already."""
    movies = {}
    for line in Path(movies_dat).read_text(encoding="latin-1").splitlines():
        if line.strip():
            movie_id, title, genres = line.split("::")
            movies[int(movie_id)] = f"{title}. Genres: {', '.join(genres.split('|'))}"
    if sas_to_original is None:
        return _lookup(movies, raw_item_ids, str(movies_dat))
    table = {}
    for line in Path(sas_to_original).read_text().splitlines():
        if line.strip():
            sas_id, original = line.split()
            if int(original) in movies:
                table[int(sas_id)] = movies[int(original)]
    return _lookup(table, raw_item_ids, str(sas_to_original))
