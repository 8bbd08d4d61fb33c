"""The one atomic write: checkpoints, token bins, downloads and evaluation output all go through it, so a
kill or a full disk never leaves a half-written file under a final name."""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from lmzoo.errors import UserError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, fix: str = "free disk space or choose a writable folder") -> Iterator[BinaryIO]:
    """A binary file that becomes `path` only when the block completes.

    It is written beside `path` as `.NAME.partial`, fsynced, then renamed over `path`; when the block
    raises, the partial file is removed and `path` keeps what it held. Nesting two blocks publishes
    both files only once both are complete. A failure to write is a UserError naming the path and `fix`.
    """
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
        sync_folder(path.parent)
    except BaseException as error:
        with contextlib.suppress(OSError):
            partial.unlink()
        # An OSError about another file (a source being read, say) is not a failure to write this one.
        if isinstance(error, OSError) and error.filename in (None, str(partial), str(path), str(path.parent)):
            raise UserError(f"cannot write {path} ({error.strerror or error}); {fix}") from None
        raise


def write_atomically(path: str | os.PathLike, payload: bytes, fix: str = "free disk space or choose a writable folder") -> None:
    with atomic_write(path, fix) as file:
        file.write(payload)


def sync_folder(folder: Path) -> None:
    """Makes a rename in `folder` survive a power cut, where the platform allows it."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
