"""Files genbench writes: the cache root and atomic writes (a temporary file in the same directory, then
``os.replace``), so a crash or a concurrent writer never leaves a half-written file and never destroys the
previous one."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    """``$GENBENCH_CACHE`` (default ``~/.cache/genbench``): converted datasets, weights, reference features."""
    return Path(os.environ.get("GENBENCH_CACHE", Path.home() / ".cache" / "genbench")).expanduser()


class DiskFullError(OSError):
    """No space left for a file: the message names it and the space it needs."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _disk_full(path: Path, size: int | None) -> DiskFullError:
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    need = f"about {size / 1e6:.1f} MB" if size is not None else "more space"
    have = f", {free / 1e6:.1f} MB free" if free is not None else ""
    return DiskFullError(errno.ENOSPC, f"no space left on the device of {path}: writing it needs {need}{have}; "
                                       "free some space there (the previous file, if any, is kept)")


def atomic_write(path: Path, write: Callable[[str], None], size: int | None = None) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, fsync it, then move it into place.

    The file gets the permissions of an ordinary new file (0666 less the umask): ``mkstemp``'s 0600 would
    hide records and checkpoints from the other users of a shared results directory. ``size`` (bytes, when
    known) goes into the message of a full disk.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise _disk_full(path, size) from err
        raise OSError(f"cannot write {path}: {err.strerror or err}; choose a writable directory") from err
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise _disk_full(path, size) from err
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically; a clear error when the directory is not writable."""
    if not isinstance(text, str):
        raise TypeError(f"atomic_write_text takes a str, got {type(text).__name__}")

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, write, size=len(text.encode()))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically.

    The object is serialised in memory first: saved to a file, torch names the archive's root folder after
    the (temporary, random) file name, so the same object would give different bytes and sha256 each time.
    """
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())

    atomic_write(path, write, size=buffer.getbuffer().nbytes)


@contextmanager
def file_lock(path: Path, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created, with its directory, if needed).

    ``wait=True`` waits for other holders (e.g. two bench runs rebuilding the leaderboard at the same
    moment); ``wait=False`` raises ``BlockingIOError`` at once when another process holds it (a run
    directory in use).
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
