"""The one home for writing files safely: temporary sibling, then rename.

Every output (vectors, ids, adaptor folders, reports) is written to a hidden temporary
file or folder next to its target and renamed into place only when complete, so an
interrupted job never leaves a truncated file under the final name and never damages
what was there before. Temporary names carry the writer's process id
(``.NAME.PID.RANDOM.tmp[.SUFFIX]``), so the next run can remove what a killed run left behind
without touching a temporary that a live process is still writing.

Files and folders get the permissions the user's umask gives (``open``'s 0666 and
``mkdir``'s 0777 minus the umask), or keep those of the file they replace:
``tempfile`` would otherwise force 0600 / 0700 and hide outputs from other accounts.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from glob import escape as glob_escape
from pathlib import Path

from .errors import InputError

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask (read by setting and restoring it; serialised for threads)."""
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def pid_alive(pid: int) -> bool:
    """Whether a process with this id is running (a process of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove temporary siblings of ``path`` left by writers that are no longer running.

    Returns what was removed. Temporaries of live processes (including this one) are kept.
    """
    path = Path(path)
    removed = []
    try:
        siblings = list(path.parent.glob(f".{glob_escape(path.name)}.*.tmp*"))
    except OSError:
        return removed
    for tmp in siblings:
        parts = tmp.name[len(path.name) + 2 :].split(".")
        if len(parts) < 3 or not parts[0].isdigit() or "tmp" not in parts[2:]:
            continue  # not one of ours
        pid = int(parts[0])
        if pid == os.getpid() or pid_alive(pid):
            continue
        try:
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def _default_mode(path: Path, *, folder: bool) -> int:
    try:
        return path.stat().st_mode & 0o7777  # keep the permissions of what is replaced
    except OSError:
        return (0o777 if folder else 0o666) & ~current_umask()


def check_writable(path: str | Path, *, folder: bool = False) -> Path:
    """Raise :class:`InputError` now if ``path`` cannot be written, before any expensive work.

    Checks that the path is not a folder (or, with ``folder=True``, not a file), that the nearest
    existing parent is a writable folder, and that a file can actually be created there.
    """
    path = Path(path)
    if not folder and path.is_dir():
        raise InputError(f"output {path} is a folder; give a file path such as {path / 'vectors.npy'}.")
    if folder and path.exists() and not path.is_dir():
        raise InputError(f"{path} exists and is a file; give a folder path to save an adaptor into.")
    parent = path.parent
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"cannot write {path}: {parent} is a file, not a folder.")
    probe_dir = path if folder and path.is_dir() else parent
    try:
        fd, probe = tempfile.mkstemp(dir=probe_dir, prefix=_temp_prefix(path), suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {probe_dir} is not writable ({exc.strerror}); "
                         "choose another output path or fix the folder's permissions.") from exc
    return path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it to ``path`` only on success."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"output {path} is a folder; give a file path such as {path / ('out' + path.suffix)}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    mode = _default_mode(path, folder=False)
    # The target's suffix stays last: np.save and plotting libraries choose by it.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp" + path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


@contextmanager
def staging_folder(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path`` (umask permissions); removed afterwards if still there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp"))
    try:
        os.chmod(staging, (0o777 & ~current_umask()))
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system error: what failed, on which path, and what to do."""
    where = f" {exc.filename}" if exc.filename else ""
    hints = {
        errno.ENOSPC: "the disk is full; free space or write somewhere else.",
        errno.EDQUOT: "the disk quota is exceeded; free space or write somewhere else.",
        errno.EACCES: "permission denied; choose a path you can write to or fix its permissions.",
        errno.EPERM: "operation not permitted; choose a path you can write to or fix its permissions.",
        errno.EISDIR: "that is a folder; give a file path.",
        errno.ENOTDIR: "a part of that path is a file, not a folder.",
        errno.ENOENT: "no such file or folder; check the path.",
        errno.EROFS: "the file system is read-only; write somewhere else.",
        errno.ENAMETOOLONG: "the path is too long.",
    }
    hint = hints.get(exc.errno, exc.strerror or str(exc))
    return f"cannot access{where}: {hint}"
