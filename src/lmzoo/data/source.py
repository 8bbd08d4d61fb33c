"""Where the text comes from: local files, a URL downloaded once (checksum-verified and cached), or a
Hugging Face dataset exported once to a text file."""

import glob
import hashlib
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from lmzoo.errors import UserError
from lmzoo.files import atomic_write, sha256_of


def sha256_of_files(files: list[Path]) -> str:
    if len(files) == 1:
        return sha256_of(files[0])
    return hashlib.sha256("\n".join(f"{path.name} {sha256_of(path)}" for path in files).encode()).hexdigest()


def resolve_files(path: str, key: str = "data.path") -> list[Path]:
    """The text files `path` (the config's `key`) names: a file, a folder (its .txt files) or a glob, sorted."""
    local = Path(path).expanduser()
    if local.is_file():
        return [local]
    if local.is_dir():
        files = sorted(p for p in local.rglob("*.txt") if p.is_file())
        if not files:
            raise UserError(f"folder {str(local)!r} holds no .txt files; point {key} at text files")
        return files
    if glob.has_magic(str(local)):
        files = sorted(Path(p) for p in glob.glob(str(local), recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(f"{key} {path!r} matches no file; check the pattern")
        return files
    if local.exists():
        raise UserError(f"data file {str(local)!r} is not a regular file; point {key} at a text file")
    raise UserError(f"data file {str(local)!r} does not exist; point {key} at a text file")


def resolve_source(path: str | None, url: str | None, sha256: str | None, cache_dir: Path) -> list[Path]:
    """The local files holding the source text, downloading the URL into `cache_dir` if needed."""
    if path:
        return resolve_files(path)
    if not url:
        raise UserError("the data config names no source; set data.path to a local text file")
    cached = cache_dir / urllib.parse.unquote(Path(urllib.parse.urlparse(url).path).name)
    if not cached.is_file():
        download(url, cached)
    if sha256 and sha256_of(cached) != sha256:
        raise UserError(
            f"{cached} does not match the expected sha256 {sha256}; delete it to download again, "
            "or set data.path to a local copy"
        )
    return [cached]


def download(url: str, destination: Path) -> None:
    with atomic_write(destination, "free disk space or choose a writable data folder with paths.data_dir=DIR") as file:
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                while chunk := response.read(1 << 20):
                    file.write(chunk)
        except urllib.error.URLError as error:
            raise UserError(
                f"could not download {url} ({error.reason}); offline, set data.path to a local copy of the text"
            ) from None


def export_dataset(name: str, config: str | None, split: str, text_column: str, separator: str | None,
                   cache_dir: Path) -> list[Path]:
    """A Hugging Face dataset split as one text file in `cache_dir`, its rows joined by `separator`."""
    joiner = separator or "\n"
    # The file depends on the separator that joins the rows, so it is part of the name.
    tag = hashlib.sha256(joiner.encode()).hexdigest()[:8]
    destination = cache_dir / f"{name.replace('/', '--')}--{config or 'default'}--{split}--{text_column}--{tag}.txt"
    if destination.is_file():
        return [destination]
    import datasets

    if not Path(name).expanduser().exists() and not datasets.config.HF_DATASETS_OFFLINE:
        check_hub_reachable(name, datasets.config.HF_ENDPOINT)
    try:
        rows = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as error:
        raise UserError(
            f"could not load the Hugging Face dataset {name!r} ({type(error).__name__}); "
            "offline, set data.path to local text files"
        ) from None
    columns = rows.column_names or list(next(iter(rows)).keys())
    if text_column not in columns:
        raise UserError(f"dataset {name!r} has no column {text_column!r}; set data.dataset.text_column to one of {columns}")
    with atomic_write(destination, "free disk space or choose a writable data folder with paths.data_dir=DIR") as file:
        try:
            for index, row in enumerate(tqdm(rows, desc=f"export {name}:{split}", unit=" rows")):
                file.write(((joiner if index else "") + row[text_column]).encode("utf-8"))
        except Exception as error:
            raise UserError(f"reading the dataset {name!r} failed ({type(error).__name__}: {error}); try again, "
                            "or set data.path to local text files") from None
    return [destination]


def check_hub_reachable(name: str, endpoint: str) -> None:
    """Fail at once when the Hub cannot be reached, rather than after `datasets` has retried for a minute."""
    address = urllib.parse.urlparse(endpoint)
    try:
        socket.create_connection((address.hostname, address.port or 443), timeout=5).close()
    except OSError as error:
        raise UserError(
            f"could not reach {address.hostname} for the dataset {name!r} ({error.strerror or error}); "
            "offline, set data.path to local text files"
        ) from None
