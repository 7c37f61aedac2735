"""Parsers and Source: small files in tmp_path, a local HTTP server for downloads, and the real
shared data when it is present (never the network)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import logging
import os
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from genrec.data.datamodule import SequenceDataModule
from genrec.data.download import DOWNLOADS, Download, fetch
from genrec.data.formats import (
    FORMATS,
    read_csv,
    read_grouped,
    read_movielens_dat,
    read_movielens_udata,
    read_recbole_inter,
    read_sasrec_pairs,
)
from genrec.data.interactions import DataError
from genrec.data.sources import Source

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GENREC_SHARED_DATA", REPO.parent / "shared" / "data"))


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def error_of(fn, *args, **kw) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kw)
    return str(info.value)


# ---- sasrec pairs ----------------------------------------------------------------------------

def test_pairs_good(tmp_path):
    p = write(tmp_path, "ml.txt", "1 10\n1 11 \n2 10\n\n")  # trailing space and blank line are fine
    log = read_sasrec_pairs(p)
    assert log.users.tolist() == [1, 1, 2]
    assert log.items.tolist() == [10, 11, 10]
    assert log.timestamps is None
    assert log.source == str(p)
    assert log.users.dtype == np.int64


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1 2\n1 3\n2 4\n2 5\n3 6\n3 7\n4 8\n4 9\n5 10\n5 11\n6 12\n6 13\n7 14\n7 15\n8 16\n8 17\n9 abc\n",
         "line 17: item id 'abc' is not an integer"),
        ("1 2\n1 3\n1 2 3\n", "line 3: expected 2 fields (user item), got 3"),
        ("1 2\n1\n", "line 2: expected 2 fields (user item), got 1"),
        ("1 2\n-4 3\n", "line 2: user id '-4' is negative"),
        ("1 2\n4 2.5\n", "line 2: item id '2.5' is not an integer"),
        ("1 2\n4 99999999999999999999999\n", "line 2: item id '99999999999999999999999' is too large"),
    ],
)
def test_pairs_bad_names_file_line_field(tmp_path, text, expected):
    p = write(tmp_path, "ml-1m.txt", text)
    msg = error_of(read_sasrec_pairs, p)
    assert msg.startswith(f"{p} {expected}")


def test_pairs_reports_first_bad_line(tmp_path):
    p = write(tmp_path, "ml.txt", "1 2\n1 x\n1 y\n")
    assert "line 2: item id 'x'" in error_of(read_sasrec_pairs, p)


def test_pairs_empty_and_missing(tmp_path):
    p = write(tmp_path, "empty.txt", "")
    assert str(p) in error_of(read_sasrec_pairs, p)
    missing = tmp_path / "nope.txt"
    assert error_of(read_sasrec_pairs, missing) == f"file not found: {missing}"


def test_pairs_bad_line_found_in_a_million(tmp_path):
    lines = [f"{u} {u % 977}\n" for u in range(1_000_000)]
    lines[999_998] = "5 oops\n"
    p = tmp_path / "big.txt"
    p.write_text("".join(lines))
    assert "big.txt line 999999: item id 'oops' is not an integer" in error_of(read_sasrec_pairs, p)


# ---- MovieLens -------------------------------------------------------------------------------

def test_movielens_dat(tmp_path):
    p = write(tmp_path, "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    log = read_movielens_dat(p)
    assert log.users.tolist() == [1, 1, 2]
    assert log.items.tolist() == [1193, 661, 1193]
    assert log.timestamps.tolist() == [978300760, 978302109, 978298413]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1::1193::5::978300760\n1::661::3\n",
         "line 2: expected 4 fields (UserID::MovieID::Rating::Timestamp), got 3"),
        ("1::1193::5::978300760\n1::x::3::978302109\n", "line 2: item id 'x' is not an integer"),
        ("1::1193::five::978300760\n", "line 1: rating 'five' is not a number"),
        ("1::1193::5::97830o760\n", "line 1: timestamp '97830o760' is not an integer"),
        ("1:1193:5:978300760\n", "line 1: expected 4 fields"),
    ],
)
def test_movielens_dat_bad(tmp_path, text, expected):
    p = write(tmp_path, "ratings.dat", text)
    assert error_of(read_movielens_dat, p).startswith(f"{p} {expected}")


def test_movielens_udata(tmp_path):
    p = write(tmp_path, "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    log = read_movielens_udata(p)
    assert log.users.tolist() == [196, 186]
    assert log.timestamps.tolist() == [881250949, 891717742]
    bad = write(tmp_path, "u2.data", "196\t242\t3\t881250949\n186\t-302\t3\t891717742\n")
    assert error_of(read_movielens_udata, bad) == f"{bad} line 2: item id '-302' is negative"


# ---- grouped ---------------------------------------------------------------------------------

def test_grouped(tmp_path):
    p = write(tmp_path, "Beauty.txt", "1 5 6 7\n2 6\n\n3 7 5\n")
    log = read_grouped(p)
    assert log.users.tolist() == [1, 1, 1, 2, 3, 3]
    assert log.items.tolist() == [5, 6, 7, 6, 7, 5]
    assert log.timestamps is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1 5 6\n2 6 x 7\n", "line 2: item id 'x' is not an integer"),
        ("1 5 6\nu2 6\n", "line 2: user id 'u2' is not an integer"),
        ("1 5 6\n2 6 -7\n", "line 2: item id '-7' is negative"),
        ("1 5 6\n2\n", "line 2: expected a user id and at least one item id, got 1 field"),
    ],
)
def test_grouped_bad(tmp_path, text, expected):
    p = write(tmp_path, "Beauty.txt", text)
    assert error_of(read_grouped, p) == f"{p} {expected}"


def test_grouped_with_times(tmp_path):
    items = write(tmp_path, "items.txt", "1 5 6 7\n2 6\n")
    times = write(tmp_path, "times.txt", "1 100 100 200\n2 50\n")
    log = read_grouped(items, times_path=times)
    assert log.items.tolist() == [5, 6, 7, 6]
    assert log.timestamps.tolist() == [100, 100, 200, 50]


@pytest.mark.parametrize(
    "times_text, expected",
    [
        ("1 100 100\n2 50\n", "line 1: 2 timestamps but {items} line 1 has 3 items"),
        ("1 100 100 200\n3 50\n", "line 2: user 3 but {items} line 2 has user 2"),
        ("1 100 100 200\n", ": 1 non-blank lines but {items} has 2"),
        ("1 100 1e5 200\n2 50\n", "line 1: timestamp '1e5' is not an integer"),
    ],
)
def test_grouped_times_mismatch_names_times_file(tmp_path, times_text, expected):
    items = write(tmp_path, "items.txt", "1 5 6 7\n2 6\n")
    times = write(tmp_path, "times.txt", times_text)
    sep = "" if expected.startswith(":") else " "
    assert error_of(read_grouped, items, times_path=times) == f"{times}{sep}" + expected.format(items=items)


# ---- RecBole ---------------------------------------------------------------------------------

RECBOLE = ("timestamp:float\titem_id:token\tuser_id:token\ttitle:token_seq\n"
           "881250949.7\t242\t196\tA \"quoted\" title\n"
           "891717742\t302\t186\tOther\n")


def test_recbole_header_by_name(tmp_path):
    p = write(tmp_path, "x.inter", RECBOLE)
    log = read_recbole_inter(p)
    assert log.users.tolist() == [196, 186]
    assert log.items.tolist() == [242, 302]
    assert log.timestamps.tolist() == [881250949, 891717742]  # floats floored to int64 seconds


def test_recbole_without_time_and_string_tokens(tmp_path):
    p = write(tmp_path, "x.inter", "user_id:token\titem_id:token\nalice\tB00X\nbob\tB00Y\nalice\tB00Y\n")
    log = read_recbole_inter(p)
    assert log.timestamps is None
    assert log.users.tolist() == [0, 1, 0]
    assert log.items.tolist() == [0, 1, 1]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("user_id:token\trating:float\n1\t3\n",
         "line 1: no 'item_id' column in header (columns: user_id, rating)"),
        ("user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n4\t5\tsoon\n",
         "line 3: timestamp 'soon' is not a number"),
        ("user_id:token\titem_id:token\n1\t2\n\t5\n", "line 3: user id '' is empty"),
        ("user_id:token\titem_id:token\n1\t2\n4\t5\t6\n",
         "line 3: expected 2 fields (user_id item_id), got 3"),
        ("user_id:token\titem_id:token\n1\t2\n4\n", "line 3: expected 2 fields (user_id item_id), got 1"),
    ],
)
def test_recbole_bad(tmp_path, text, expected):
    p = write(tmp_path, "x.inter", text)
    assert error_of(read_recbole_inter, p) == f"{p} {expected}"


def test_recbole_empty(tmp_path):
    p = write(tmp_path, "x.inter", "")
    assert error_of(read_recbole_inter, p).startswith(f"{p}: empty file")
    header_only = write(tmp_path, "y.inter", "user_id:token\titem_id:token\n")
    assert str(header_only) in error_of(read_recbole_inter, header_only)


# ---- CSV -------------------------------------------------------------------------------------

def test_csv_header_mapping_and_string_ids(tmp_path):
    p = write(tmp_path, "r.csv", 'ts,asin,reviewer,text\n100,B01,"ann",hi\n50,B02,bob,"a, b"\n70,B01,bob,x\n')
    log = read_csv(p, user_col="reviewer", item_col="asin", time_col="ts")
    assert log.users.tolist() == [0, 1, 1]
    assert log.items.tolist() == [0, 1, 0]
    assert log.timestamps.tolist() == [100, 50, 70]


def test_csv_positions_without_header(tmp_path):
    p = write(tmp_path, "r.tsv", "7\t3\t1.5\n8\t4\t2.0\n")
    log = read_csv(p, user_col=0, item_col=1, sep="\t", header=False)
    assert log.users.tolist() == [7, 8]  # all-numeric ids stay as they are
    assert log.items.tolist() == [3, 4]
    assert log.timestamps is None


def test_csv_bad(tmp_path):
    p = write(tmp_path, "r.csv", "user,item\n1,2\n")
    expected = f"{p} line 1: no column 'movie' in header (columns: user, item)"
    assert error_of(read_csv, p, "user", "movie") == expected
    p = write(tmp_path, "r2.csv", "user,item,ts\n1,2,3\n4,,5\n")
    assert error_of(read_csv, p, "user", "item", "ts") == f"{p} line 3: item id '' is empty"
    p = write(tmp_path, "r3.csv", "user,item,ts\n1,2,3\n4,5,later\n")
    assert error_of(read_csv, p, "user", "item", "ts") == f"{p} line 3: timestamp 'later' is not a number"
    p = write(tmp_path, "r4.csv", "")
    assert error_of(read_csv, p, "user", "item") == f"{p}: empty file"
    assert "integer column positions" in error_of(read_csv, write(tmp_path, "r5.csv", "1,2\n"), "u", "i",
                                                  header=False)


def test_formats_registry():
    assert set(FORMATS) == {"sasrec_pairs", "grouped", "movielens_dat", "movielens_udata", "recbole_inter",
                            "csv"}


# ---- column counts, BOM, ratings (issue 13: no parser misreads a column) ---------------------

@pytest.mark.parametrize(
    "reader, name, text, expected",
    [
        # three columns everywhere: pandas would have taken column 0 as an index (users -> items)
        (read_sasrec_pairs, "p.txt", "1 10 5\n1 11 4\n2 10 3\n",
         "line 1: expected 2 fields (user item), got 3"),
        (read_movielens_dat, "r.dat", "1::10::5::100::x\n2::10::3::150::y\n",
         "line 1: expected 4 fields (UserID::MovieID::Rating::Timestamp), got 5"),
        (read_movielens_udata, "u.data", "1\t10\t5\t100\t7\n2\t10\t3\t150\t8\n",
         "line 1: expected 4 fields (user item rating timestamp), got 5"),
        (read_movielens_udata, "u.data", "1\t10\t5\n2\t10\t3\n",
         "line 1: expected 4 fields (user item rating timestamp), got 3"),
        (read_recbole_inter, "x.inter", "user_id:token\titem_id:token\n1\t2\t9\n4\t5\t9\n",
         "line 2: expected 2 fields (user_id item_id), got 3"),
        # a short line whose missing field is not an id: pandas pads it with ""
        (read_recbole_inter, "x.inter", "user_id:token\titem_id:token\tnote:token\n1\t2\tok\n4\t5\n",
         "line 3: expected 3 fields (user_id item_id note), got 2"),
    ],
)
def test_every_parser_rejects_an_unexpected_column_count(tmp_path, reader, name, text, expected):
    p = write(tmp_path, name, text)
    assert error_of(reader, p) == f"{p} {expected}"


def test_csv_rejects_lines_longer_or_shorter_than_the_first(tmp_path):
    expected = "line 3: expected 3 fields (3 columns as on line 1), got"
    p = write(tmp_path, "r.csv", "user,item,note\n1,2,a\n3,4,b,extra\n")
    assert error_of(read_csv, p, "user", "item") == f"{p} {expected} 4"
    p = write(tmp_path, "r2.csv", "user,item,note\n1,2,a\n3,4\n")
    assert error_of(read_csv, p, "user", "item") == f"{p} {expected} 2"
    p = write(tmp_path, "r3.csv", "1,2\n3,4\n")
    assert "column 2 asked for but the line has 2 fields" in error_of(read_csv, p, 0, 1, 2, header=False)
    ok = write(tmp_path, "r4.csv", "user,item,note\n1,2,\n3,4,b\n")  # an empty last field is still a field
    assert read_csv(ok, "user", "item").users.tolist() == [1, 3]


@pytest.mark.parametrize(
    "reader, name, text",
    [
        (read_grouped, "g.txt", "1 5 6\n2 6\n"),
        (read_sasrec_pairs, "p.txt", "1 5\n1 6\n2 6\n"),
        (read_movielens_dat, "r.dat", "1::5::3::10\n1::6::4::11\n2::6::5::12\n"),
        (read_recbole_inter, "x.inter", "user_id:token\titem_id:token\n1\t5\n1\t6\n2\t6\n"),
    ],
)
def test_a_utf8_bom_is_read_like_no_bom(tmp_path, reader, name, text):
    plain = reader(write(tmp_path, name, text))
    bom = tmp_path / f"bom-{name}"
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode())
    got = reader(bom)
    assert got.users.tolist() == plain.users.tolist() == [1, 1, 2]
    assert got.items.tolist() == plain.items.tolist()


def test_grouped_bom_in_times_file(tmp_path):
    items = write(tmp_path, "items.txt", "1 5 6\n")
    times = tmp_path / "times.txt"
    times.write_bytes(b"\xef\xbb\xbf1 100 200\n")
    assert read_grouped(items, times_path=times).timestamps.tolist() == [100, 200]


def test_ratings_are_kept(tmp_path):
    dat = write(tmp_path, "r.dat", "1::5::3::10\n2::6::4.5::11\n")
    assert read_movielens_dat(dat).ratings.tolist() == [3, 4.5]
    assert read_movielens_udata(write(tmp_path, "u.data", "1\t5\t2\t10\n")).ratings.tolist() == [2]
    inter = write(tmp_path, "x.inter", "user_id:token\titem_id:token\trating:float\n1\t5\t4\n2\t6\t1.5\n")
    assert read_recbole_inter(inter).ratings.tolist() == [4, 1.5]
    bad = write(tmp_path, "y.inter", "user_id:token\titem_id:token\trating:float\n1\t5\t4\n2\t6\tgood\n")
    assert error_of(read_recbole_inter, bad) == f"{bad} line 3: rating 'good' is not a number"
    csv_file = write(tmp_path, "r.csv", "u,i,stars\n1,5,2\n2,6,5\n")
    assert read_csv(csv_file, "u", "i", rating_col="stars").ratings.tolist() == [2, 5]
    assert read_sasrec_pairs(write(tmp_path, "p.txt", "1 5\n")).ratings is None


# ---- Source ----------------------------------------------------------------------------------

def test_source_validates_config_at_once(tmp_path):
    msg = error_of(Source, "x", str(tmp_path / "a.txt"), "sasrec_pair")
    assert "unknown format 'sasrec_pair'" in msg and "sasrec_pairs" in msg
    assert "bad format_kwargs" in error_of(Source, "x", "a.txt", "grouped", {"time_path": "t.txt"})
    assert "download needs url" in error_of(Source, "x", None, "sasrec_pairs", None, {"url": "http://x/a.zip"})
    dl = {"url": "u", "sha256": "0", "member": "m", "format": "dat"}
    assert "unknown download format" in error_of(Source, "x", None, "sasrec_pairs", None, dl)
    dl = {"url": "u", "sha256": "0", "member": "../m", "format": "grouped"}
    assert "relative path" in error_of(Source, "x", None, "sasrec_pairs", None, dl)


def test_source_local_path(tmp_path):
    p = write(tmp_path, "items.txt", "1 5 6 7\n2 6\n")
    t = write(tmp_path, "times.txt", "1 1 2 3\n2 4\n")
    src = Source("beauty", str(p), "grouped", {"times_path": str(t)})
    src.prepare(tmp_path / "cache")  # nothing to do
    assert not (tmp_path / "cache").exists()
    assert src.load(tmp_path / "cache").timestamps.tolist() == [1, 2, 3, 4]
    fp = src.fingerprint()
    assert fp == Source("beauty", str(p), "grouped", {"times_path": str(t)}).fingerprint()
    t.write_text("1 1 2 3\n2 40\n")  # side file changed: the cache key must change
    assert src.fingerprint() != fp
    other = Source("other", str(p), "grouped")
    assert other.fingerprint() != Source("beauty", str(p), "grouped").fingerprint()


class _Server:
    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args) -> None:  # keep test output quiet
                logging.getLogger("test_http").debug(*args)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                     functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served_zip(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    archive = root / "ml-tiny.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-tiny/ratings.dat", "1::10::5::100\n1::11::4::200\n2::10::3::150\n")
        zf.writestr("ml-tiny/README", "not this one")
    server = _Server(root)
    yield server, f"{server.url}/ml-tiny.zip", hashlib.sha256(archive.read_bytes()).hexdigest()
    server.close()


def _download_source(url: str, sha: str, path: str | None = None) -> Source:
    download = {"url": url, "sha256": sha, "member": "ml-tiny/ratings.dat", "format": "movielens_dat"}
    return Source("tiny", path, "sasrec_pairs", download=download)


def test_source_download_then_cached(tmp_path, served_zip):
    server, url, sha = served_zip
    cache = tmp_path / "data"
    src = _download_source(url, sha)
    fp_before = src.fingerprint()  # a download is identified by its sha256: no file needed yet
    src.prepare(cache)
    raw = cache / "raw" / "tiny"
    assert (raw / "ml-tiny.zip").is_file()
    assert (raw / "ml-tiny" / "ratings.dat").is_file()
    assert server.requests == ["/ml-tiny.zip"]
    src.prepare(cache)  # archive present with the right sha256: no request
    log = src.load(cache)
    assert server.requests == ["/ml-tiny.zip"]
    assert log.users.tolist() == [1, 1, 2] and log.timestamps.tolist() == [100, 200, 150]
    assert log.ratings.tolist() == [5, 4, 3]
    assert log.origin == {"name": "tiny", "format": "movielens_dat", "url": url, "sha256": sha,
                          "member": "ml-tiny/ratings.dat"}
    assert src.fingerprint() == fp_before
    assert sorted(p.name for p in raw.iterdir()) == ["ml-tiny", "ml-tiny.zip"]  # no temp files left


def test_source_load_prepares_when_needed(tmp_path, served_zip):
    _, url, sha = served_zip
    assert len(_download_source(url, sha).load(tmp_path / "data")) == 3


def test_source_wrong_sha256_leaves_nothing(tmp_path, served_zip):
    _, url, sha = served_zip
    src = _download_source(url, "0" * 64)
    msg = error_of(src.prepare, tmp_path / "data")
    assert url in msg and "0" * 64 in msg and sha in msg
    raw = tmp_path / "data" / "raw" / "tiny"
    assert not raw.exists() or list(raw.iterdir()) == []


def test_source_download_failure_is_data_error(tmp_path, served_zip):
    server, url, sha = served_zip
    msg = error_of(_download_source(f"{server.url}/missing.zip", sha).prepare, tmp_path / "data")
    assert "missing.zip: download failed" in msg and "data.source.path" in msg
    assert list((tmp_path / "data" / "raw" / "tiny").iterdir()) == []


def test_file_url_download_checks_sha256(tmp_path):
    """The same code path with a file:// URL: a match extracts the member, a mismatch keeps nothing."""
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("d/u.data", "1\t2\t3\t4\n")
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    dl = Download(archive.as_uri(), sha, "d/u.data", "movielens_udata")
    member = fetch(dl, tmp_path / "raw")
    assert member == tmp_path / "raw" / "d" / "u.data" and member.read_text() == "1\t2\t3\t4\n"
    bad = Download(archive.as_uri(), "f" * 64, "d/u.data", "movielens_udata")
    assert "sha256 mismatch" in error_of(fetch, bad, tmp_path / "raw2")
    assert list((tmp_path / "raw2").iterdir()) == []


GROUPLENS_LINES = {  # what each official archive's member looks like (format of the real files)
    "ml-1m": "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n",
    "ml-100k": "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t302\t4\t881250950\n",
}


@pytest.mark.parametrize("name", sorted(DOWNLOADS))
def test_named_download_member_and_format_read_a_grouplens_layout(tmp_path, name):
    """Each named download's member path and parser fit an archive laid out like GroupLens's
    (served on 127.0.0.1), and the pinned sha256 is what gets checked: the stand-in archive,
    which is not the real one, is refused under the pinned hash."""
    spec = DOWNLOADS[name]
    root = tmp_path / "www"
    root.mkdir()
    archive = root / Path(spec["url"]).name
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(spec["member"], GROUPLENS_LINES[name])
        zf.writestr(f"{name}/README", "side file")
    server = _Server(root)
    try:
        url = f"{server.url}/{archive.name}"
        sha = hashlib.sha256(archive.read_bytes()).hexdigest()
        src = Source(name, None, spec["format"], download={**spec, "url": url, "sha256": sha})
        log = src.load(tmp_path / "a")
        assert (len(log), log.timestamps is not None, log.ratings is not None) == (3, True, True)
        pinned = Source(name, None, spec["format"], download={**spec, "url": url})
        msg = error_of(pinned.prepare, tmp_path / "b")
        assert f"expected {spec['sha256']}, got {sha}" in msg
    finally:
        server.close()


# ---- data identity: a path never turns into a download --------------------------------------

def test_missing_path_is_file_not_found_and_never_downloads(tmp_path, served_zip):
    server, url, sha = served_zip
    missing = tmp_path / "ml-1m.txt"
    download = {"url": url, "sha256": sha, "member": "ml-tiny/ratings.dat", "format": "movielens_dat"}
    src = Source("ml-1m", str(missing), "sasrec_pairs", download=download, hint="get it from X")
    expected = f"file not found: {missing}; get it from X"
    assert error_of(src.prepare, tmp_path / "data") == expected
    assert error_of(src.load, tmp_path / "data") == expected
    assert error_of(src.fingerprint) == expected
    assert server.requests == []  # asked for a path: no download, not even as a fallback
    assert error_of(Source, "x", None, "sasrec_pairs").startswith("data 'x': set data.source.path")


def test_ml1m_config_names_only_the_sasrec_file(tmp_path):
    from conftest import compose_config
    from hydra.utils import instantiate

    cfg = compose_config(tmp_path, ["data=ml-1m", f"data.source.path={tmp_path / 'gone.txt'}"])
    src = instantiate(cfg.data.source)
    assert src.download is None and src.format == "sasrec_pairs"
    msg = error_of(src.prepare, tmp_path / "data")
    assert msg.startswith(f"file not found: {tmp_path / 'gone.txt'}; ") and "data=ml-1m-raw" in msg
    raw = instantiate(compose_config(tmp_path, ["data=ml-1m-raw"]).data.source)
    assert (raw.name, raw.path, raw.format) == ("ml-1m-raw", None, "movielens_dat")
    assert raw.download.url == DOWNLOADS["ml-1m"]["url"] and raw.download.member == "ml-1m/ratings.dat"
    assert compose_config(tmp_path, ["data=ml-1m-raw"]).data.kcore == 0  # raw: no 5-core


def test_describe_reports_name_origin_counts_and_survives_the_cache(tmp_path, caplog):
    p = write(tmp_path, "x.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
              "1\t10\t5\t100\n1\t11\t3\t101\n1\t12\t4\t102\n2\t10\t1\t50\n2\t12\t2\t60\n2\t11\t2.5\t70\n")
    make = lambda: SequenceDataModule(Source("toy", str(p), "recbole_inter"),  # noqa: E731
                                      cache_dir=str(tmp_path / "data"), sampled_negatives=0)
    with caplog.at_level(logging.INFO):
        first = make().sequences.describe()
    assert first == {"name": "toy", "format": "recbole_inter", "path": str(p.resolve()),
                     "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "n_users": 2, "n_items": 3,
                     "n_interactions": 6, "has_time": True, "has_ratings": True}
    assert '"name": "toy"' in caplog.text and '"n_interactions": 6' in caplog.text
    again = make()
    assert again.processed_path.exists() and again.sequences.describe() == first  # read from the .npz
    assert again.sequences.user_ratings(1).tolist() == [1, 2, 2.5]  # user 2's ratings in time order


def test_cache_key_covers_every_preprocessing_parameter(tmp_path, monkeypatch):
    import genrec.data.interactions as interactions
    import genrec.data.synthetic as synthetic
    from genrec.data.synthetic import SyntheticSource

    def path(kcore=0, min_length=3, **settings):
        return SequenceDataModule(SyntheticSource(**settings), kcore=kcore, min_length=min_length,
                                  cache_dir=str(tmp_path)).processed_path

    base = path(n_users=10)
    assert path(n_users=10) == base
    assert path(n_users=10, p_follow=0.75) == base  # the default, written out: same data, same key
    changed = [path(n_users=11), path(n_users=10, p_follow=0.7), path(n_users=10, zipf_a=1.3),
               path(n_users=10, kcore=2), path(n_users=10, min_length=4)]
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    changed.append(path(n_users=10))
    monkeypatch.undo()
    monkeypatch.setattr(interactions, "PREPROCESS_VERSION", interactions.PREPROCESS_VERSION + 1)
    changed.append(path(n_users=10))
    assert len({base, *changed}) == len(changed) + 1
    assert "bad synthetic setting" in error_of(SyntheticSource, n_user=10)

# ---- real shared data (read-only, skipped when absent) ---------------------------------------

def shared(rel: str) -> Path:
    p = SHARED / rel
    if not p.is_file():
        pytest.skip(f"shared data file {p} not present (set GENREC_SHARED_DATA)")
    return p


def counts(log) -> tuple[int, int, int]:
    return len(np.unique(log.users)), len(np.unique(log.items)), len(log)


def test_real_ml1m_sasrec():
    log = read_sasrec_pairs(shared("ml-1m-sasrec/ml-1m.txt"))
    assert counts(log) == (6040, 3416, 999611)
    assert log.timestamps is None


def test_real_beauty_s3rec():
    assert counts(read_grouped(shared("beauty-5core-s3rec/Beauty.txt"))) == (22363, 12101, 198502)


def test_real_ml100k_recbole():
    log = read_recbole_inter(shared("ml-100k-recbole/ml-100k.inter"))
    assert counts(log) == (943, 1682, 100000)
    assert (log.timestamps.min(), log.timestamps.max()) == (874724710, 893286638)


def test_real_beauty_with_time():
    items = shared("beauty-5core-time-ticoserec/Beauty_item_org_rank.txt")
    log = read_grouped(items, times_path=shared("beauty-5core-time-ticoserec/Beauty_time_org_rank.txt"))
    assert counts(log) == (22363, 12101, 198502)
    assert (log.timestamps.min(), log.timestamps.max()) == (1023840000, 1406073600)
    seqs = log.to_sequences()
    assert all((np.diff(seqs.user_times(u)) >= 0).all() for u in range(0, seqs.n_users, 997))
