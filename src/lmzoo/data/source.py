"""Where the text comes from: a local file, or a URL downloaded once, checksum-verified and cached."""

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from lmzoo.errors import UserError


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_source(path: str | None, url: str | None, sha256: str | None, cache_dir: Path) -> Path:
    """Return a local file holding the source text, downloading it into `cache_dir` if needed."""
    if path:
        local = Path(path).expanduser()
        if not local.is_file():
            raise UserError(f"data file {str(local)!r} does not exist; point data.path at a text file")
        return local
    if not url:
        raise UserError("the data config names no source; set data.path to a local text file")
    cached = cache_dir / Path(url).name
    if not cached.is_file():
        download(url, cached)
    if sha256 and sha256_of(cached) != sha256:
        raise UserError(
            f"{cached} does not match the expected sha256 {sha256}; delete it to download again, "
            "or set data.path to a local copy"
        )
    return cached


def download(url: str, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(partial, "wb") as file:
            while chunk := response.read(1 << 20):
                file.write(chunk)
    except (urllib.error.URLError, OSError) as error:
        partial.unlink(missing_ok=True)
        reason = getattr(error, "reason", error)
        raise UserError(
            f"could not download {url} ({reason}); offline, set data.path to a local copy of the text"
        ) from None
    os.replace(partial, destination)
