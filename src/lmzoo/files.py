"""The one atomic write: checkpoints, token bins, downloads and evaluation output all go through it, so a
kill or a full disk never leaves a half-written file under a final name. The one folder lock, so that
two processes never write into one data or run folder at the same time. The one checksum of a file, which
sources, downloads and checkpoints record. And the one reading of a YAML file a user may have edited."""

import contextlib
import hashlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import yaml
from filelock import FileLock, Timeout
from omegaconf import DictConfig, ListConfig, OmegaConf

from lmzoo.errors import UserError

LOCK = ".lmzoo.lock"


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
        cause = os_error_behind(error)
        if cause is not None and is_on_path(cause.filename, partial, path):
            raise UserError(f"cannot write {path} ({cause.strerror or cause}); {fix}") from None
        raise


def os_error_behind(error: BaseException | None) -> OSError | None:
    """The OSError that `error` is or was raised from or while handling: torch.save, for one, re-raises a full
    disk as a RuntimeError ("unexpected pos ...") while handling the OSError."""
    while error is not None and not isinstance(error, UserError):
        if isinstance(error, OSError):
            return error
        error = error.__cause__ if error.__cause__ is not None or error.__suppress_context__ else error.__context__
    return None


def is_on_path(filename, *paths: Path) -> bool:
    """Whether an OSError's filename is one of `paths` or a folder above them (None: unknown, so yes)."""
    if filename is None:
        return True
    return any(str(filename) in (str(path), *map(str, path.parents)) for path in paths)


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


@contextlib.contextmanager
def hold_folder(folder: str | os.PathLike, doing: str, wait: bool, fix: str) -> Iterator[Path]:
    """Hold `folder` for this process while the block runs; `doing` says what for ("preparing", "training in").

    A second process waits for the holder when `wait`, else stops with a UserError naming the holder's PID
    and `fix`. The holder removes the `.NAME.partial` files a killed holder left in it. Where no other process
    waits (not `wait`: a run's folder), a folder made here (and the parents it lacked) that still holds nothing but
    the lock when the block ends is removed: a command refused after it took its folder leaves no trace of itself.
    (A process waiting for the lock would hold a lock file so removed.)
    The lock is the operating system's (flock, through filelock), so it dies with its process, even on kill -9.
    """
    folder = Path(folder).expanduser()
    made = [] if wait else [path for path in (folder, *folder.parents) if not path.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot use {folder} as a folder ({error.strerror or error}); {fix}") from None
    lock = FileLock(folder / LOCK)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        pid = lock_holder(folder)
        holder = f"PID {pid}" if pid else "another process"
        if not wait:
            raise UserError(f"{holder} is {doing} {folder}; wait for it to end, or {fix}") from None
        print(f"waiting for {holder}, which is {doing} {folder}", file=sys.stderr)
        lock.acquire()
    except OSError as error:
        raise UserError(f"cannot lock {folder} ({error.strerror or error}); {fix}") from None
    try:
        (folder / LOCK).write_text(str(os.getpid()))
        # Only here and one folder down (a run's checkpoints/): other processes may be writing deeper below.
        for partial in [*folder.glob(".*.partial"), *folder.glob("*/.*.partial")]:
            partial.unlink(missing_ok=True)
        yield folder
    finally:
        unused = made and all(path.is_dir() or path == folder / LOCK for path in made[-1].rglob("*"))
        if unused:
            (folder / LOCK).unlink(missing_ok=True)
        lock.release()
        if unused:
            # Deepest first; rmdir leaves a folder another process has written into since.
            with contextlib.suppress(OSError):
                for path in [*sorted((path for path in made[-1].rglob("*") if path.is_dir()), reverse=True), made[-1]]:
                    path.rmdir()


def lock_holder(folder: Path) -> str | None:
    """The PID the holder of `folder` wrote into its lock file, if it did yet."""
    with contextlib.suppress(OSError):
        return (folder / LOCK).read_text().strip() or None
    return None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_yaml(path: Path, fix: str) -> DictConfig | ListConfig:
    """The YAML file `path` as OmegaConf loads it (unresolved); one that does not parse, or cannot be read, is a
    UserError naming where it fails and `fix`."""
    try:
        return OmegaConf.load(path)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(error, "problem", None) or str(error).strip().splitlines()[0]
        raise UserError(f"{path} is not valid YAML ({reason}{where}); {fix}") from None
    except (OSError, ValueError) as error:
        # OmegaConf raises OSError for a file holding a lone value; bytes that are not UTF-8 are a ValueError.
        raise UserError(f"{path} cannot be read as YAML ({getattr(error, 'strerror', None) or error}); {fix}") from None
