"""Official archives: pinned URLs and sha256s, and an atomic, checked download + zip extraction.

Nothing here runs unless a data config asks for a download (`Source(path=None, download=...)`).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genrec.data.interactions import DataError
from genrec.rank_zero_log import get_logger

log = get_logger(__name__)

# Official GroupLens archives. sha256 from tensorflow/datasets
# tensorflow_datasets/url_checksums/movielens.txt (which also pins the sizes: 5,917,549 and
# 4,924,029 bytes); the same values are pinned independently in several other public repos.
# GroupLens itself publishes only MD5s (ml-1m c4d9eecfca2ab87c1945afe126590906,
# ml-100k 0e33842e24a9c977be4e0107933c0723).
ML1M_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
ML1M_ZIP_SHA256 = "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"
ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
ML100K_ZIP_SHA256 = "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"

# Named downloads, so a config can say `download: ml-1m` instead of repeating url and sha256.
DOWNLOADS: dict[str, dict[str, Any]] = {
    "ml-1m": {"url": ML1M_URL, "sha256": ML1M_ZIP_SHA256, "member": "ml-1m/ratings.dat",
              "format": "movielens_dat"},
    "ml-100k": {"url": ML100K_URL, "sha256": ML100K_ZIP_SHA256, "member": "ml-100k/u.data",
                "format": "movielens_udata"},
}

DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation: fail fast on a dead network, not after minutes
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Download:
    """One archive member to fetch: where, its pinned sha256, and how to parse the member."""

    url: str
    sha256: str
    member: str
    format: str
    format_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def archive_name(self) -> str:
        return Path(urllib.parse.urlparse(self.url).path).name or "download"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _progress():
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), transient=True)


def download_file(url: str, dest: Path, sha256: str, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Stream `url` to `dest`, checking sha256. Atomic: `dest` is never a partial or bad file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    log.info("downloading %s -> %s", url, dest)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = resp.headers.get("Content-Length")
            with _progress() as progress:
                task = progress.add_task(dest.name, total=int(total) if total else None)
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    progress.advance(task, len(chunk))
        got = digest.hexdigest()
        if got != sha256.lower():
            raise DataError(f"{url}: sha256 mismatch: expected {sha256}, got {got} (file deleted)")
        os.replace(tmp, dest)
    except (OSError, http.client.HTTPException) as exc:  # URLError, HTTPError, timeouts: OSErrors
        if isinstance(exc, urllib.error.HTTPError):
            exc.close()  # an HTTPError holds the response open
        raise DataError(f"{url}: download failed ({exc}); without network, fetch it elsewhere and "
                        "set data.source.path to the extracted file") from exc
    finally:
        tmp.unlink(missing_ok=True)


def extract_member(archive: Path, member: str, dest: Path) -> None:
    """Copy one zip member to `dest` atomically."""
    try:
        with zipfile.ZipFile(archive) as zf:
            if member not in zf.namelist():
                raise DataError(f"{archive}: no member '{member}' (members: {', '.join(zf.namelist()[:20])})")
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out, zf.open(member) as src:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
                os.replace(tmp_name, dest)
            finally:
                Path(tmp_name).unlink(missing_ok=True)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{archive}: not a valid zip file ({exc})") from exc


def fetch(dl: Download, raw_dir: Path) -> Path:
    """The extracted member under raw_dir, downloading and extracting only what is missing.

    A cached archive is reused only when its sha256 still matches the pinned one.
    """
    archive, member = raw_dir / dl.archive_name, raw_dir / dl.member
    if archive.is_file() and sha256_file(archive) == dl.sha256:
        log.debug("%s: cached archive has the right sha256", archive)
    else:
        if archive.exists():
            log.warning("%s: sha256 differs from the pinned one; downloading again", archive)
        download_file(dl.url, archive, dl.sha256)
        member.unlink(missing_ok=True)  # extracted from an older archive
    if not member.is_file():
        extract_member(archive, dl.member, member)
    return member
