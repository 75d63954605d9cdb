"""Files and folders: where mlx-reptilora keeps what it builds once (converted models, parsed
corpora), writes that a kill or a full disk cannot leave half-done, and output folders that two runs
cannot share."""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

LOCK = ".lock"


def cache_dir() -> Path:
    root = os.environ.get("MLX_REPTILORA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mlx-reptilora")
    return Path(root)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write) -> Path:
    """`write(tmp_path)` into a temporary file beside `path`, then rename it into place: readers see
    the old file or the new one, never a part. The temporary keeps `path`'s suffix (mx.save_safetensors
    appends ".safetensors" to any other name) and gets the usual file mode (mkstemp's is 0600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise UserError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: Path(p).write_text(text))


def writable_folder(path: str | Path, flag: str = "--out") -> Path:
    """`path` as a folder that can be written, created if needed; one line if it cannot be, before any
    work starts (a file in the way, a read-only parent, ...)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test.")
        probe.close()
    except OSError as e:
        reason = "a file is in the way" if e.errno in (errno.ENOTDIR, errno.EEXIST) else (e.strerror or str(e))
        raise UserError(f"{flag} {path} cannot be written ({reason})") from None
    return path


@contextmanager
def claimed(folder: str | Path, flag: str = "--out"):
    """Hold `folder` for this process: a second run into the same folder stops with one line instead
    of silently overwriting the first. The lock (flock on `.lock`) goes with the process, even after
    kill -9. A folder this call created is removed again if nothing was written into it (a run
    refused early)."""
    folder = Path(folder)
    created = not folder.exists()
    writable_folder(folder, flag)
    fd = os.open(folder / LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="ignore").strip() or "?"
        os.close(fd)
        raise UserError(f"{flag} {folder} is in use by another run (pid {holder}); wait for it, or choose another "
                        f"{flag}") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    try:
        yield folder
    finally:
        os.close(fd)  # the file stays: removing it would let a third run lock a fresh one beside a second
        if created and [p.name for p in folder.iterdir()] == [LOCK]:
            os.unlink(folder / LOCK)
            folder.rmdir()
