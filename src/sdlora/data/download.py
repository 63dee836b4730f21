"""Fetch one public file into the data root: streamed to a temporary file, hash-checked, then renamed.

The rename is atomic (same folder), so an interrupted or corrupt download never leaves a partial file
where a benchmark would read it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

CHUNK = 1 << 20


class DownloadError(OSError):
    """The file could not be fetched (offline, HTTP error) or its sha256 did not match."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download_file(url: str, dest: str | Path, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Download `url` to `dest` atomically; with `sha256`, a mismatch raises and leaves `dest` untouched."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                out.write(chunk)
                h.update(chunk)
        if sha256 is not None and h.hexdigest() != sha256.lower():
            raise DownloadError(
                f"download of {url} has sha256 {h.hexdigest()}, expected {sha256}; {dest} was not written"
            )
        os.replace(tmp, dest)
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as err:
        raise DownloadError(f"could not download {url}: {err}") from err
    finally:
        tmp.unlink(missing_ok=True)
    return dest


__all__ = ["DownloadError", "download_file", "sha256_file"]
