"""Output locations: checked before any work, and written by one process at a time.

* :func:`check_out_dir` / :func:`check_out_file` — cheap checks that an output folder/file can be
  created and written (not an existing file where a folder is wanted, not under a file, the nearest
  existing parent writable). They write nothing, so a command can call them before any expensive
  work and fail with one line instead of a traceback at the end.
* :func:`folder_lock` — one writer per output folder. The lock is an ``flock`` on ``<folder>/.doei.lock``,
  so the kernel releases it when the process exits or is killed (no stale lock after a crash); a second
  process that asks for it is refused at once with a one-line error naming the holder's pid. The lock
  is re-entrant within one process (``doei run`` holds its run folder while its stages take their own
  sub-folders), and under ``torchrun`` only rank 0 takes it (the ranks of one job share their folders).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator

from doei.errors import DoeiError

LOCK_NAME = ".doei.lock"
_HELD: dict[str, int] = {}     # resolved folder -> nesting depth, in this process


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    return p


TMP_EXTRA = len(".tmp-") + 9     # doei.utils.io.atomic_path writes ".tmp-<name>.<8 random>" first


def check_path(path: str | os.PathLike, what: str = "--out", file: bool = False) -> Path:
    """Refuse, in one line naming ``path``, what the OS would refuse later: a name longer than the file
    system allows (a ``file``'s name with room for its temporary name), a dangling symbolic link, a
    symbolic link loop, an unreadable parent (permission)."""
    from doei.utils.io import os_error_line

    p = Path(path)
    if str(path) == "":
        raise DoeiError(f"{what}: empty path")
    base = _nearest_existing_quiet(p)
    try:
        name_max = os.pathconf(base if base.is_dir() else base.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    parts = list(p.parts)
    long = next((part for i, part in enumerate(parts) if len(os.fsencode(part))
                 + (TMP_EXTRA if file and i == len(parts) - 1 else 0) > name_max), None)
    if long is not None:
        n = len(os.fsencode(long))
        room = f" (with the {TMP_EXTRA} of its temporary name)" if n <= name_max else ""
        raise DoeiError(f"{what} {p}: the name {long[:24]}... is {n} bytes{room}, longer than the "
                        f"{name_max} the file system allows")
    for q in [p, *p.parents]:
        if q.is_symlink():
            try:
                q.stat()
            except OSError as e:
                import errno

                if e.errno == errno.ENOENT:
                    raise DoeiError(f"{what} {p}: {q} is a symbolic link to {os.readlink(q)}, which does not exist "
                                    "(a dangling link)") from None
                raise DoeiError(os_error_line(p, e, what)) from None
    try:
        os.stat(p)
    except (FileNotFoundError, NotADirectoryError):
        pass                    # absent, or under a file: the callers name which part is a file
    except OSError as e:
        raise DoeiError(os_error_line(p, e, what)) from None
    return p


def _nearest_existing_quiet(path: Path) -> Path:
    p = path
    while True:
        try:
            os.lstat(p)
            return p
        except OSError:
            if p.parent == p:
                return p
            p = p.parent


def check_out_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """``path`` as a Path if it is (or can be created as) a writable folder; else a one-line DoeiError
    (:func:`check_path` first: names too long, dangling or looping links)."""
    p = check_path(path, what)
    if p.exists() and not p.is_dir():
        raise DoeiError(f"{what} {p}: exists and is a file, expected a folder")
    base = _nearest_existing(p)
    if not base.is_dir():
        raise DoeiError(f"{what} {p}: lies under {base}, which is a file, expected a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise DoeiError(f"{what} {p}: {base} is not writable")
    return p


def check_out_file(path: str | os.PathLike, what: str = "--out") -> Path:
    """``path`` as a Path if a file can be written there (atomically: its folder must be writable)."""
    p = check_path(path, what, file=True)
    if p.is_dir():
        raise DoeiError(f"{what} {p}: is a folder, expected a file path")
    check_out_dir(p.parent, what=f"{what} {p}: folder")
    return p


def _is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def folder_lock(path: str | os.PathLike, what: str = "output folder", sibling: bool = False) -> Iterator[Path]:
    """Hold the one-writer lock of folder ``path`` (created if needed) for the ``with`` block.

    ``sibling``: the lock file is ``.<name>.doei.lock`` beside the folder instead of inside it, for writers
    that build the folder elsewhere and rename it into place (``doei synth``)."""
    folder = check_out_dir(path, what)
    if not _is_rank_zero():
        yield folder
        return
    home = folder.parent if sibling else folder
    lock = home / (f".{folder.name}{LOCK_NAME}" if sibling else LOCK_NAME)
    created = not home.exists()
    home.mkdir(parents=True, exist_ok=True)
    key = str(lock.resolve())
    if key in _HELD:                       # re-entrant within this process
        _HELD[key] += 1
        try:
            yield folder
        finally:
            _HELD[key] -= 1
        return
    fd = _acquire(lock, folder, what)
    _HELD[key] = 1
    failed = True
    try:
        yield folder
        failed = False
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            os.unlink(lock)                # while still holding it: a waiter re-checks the inode
        os.close(fd)
        if failed and created:             # a start that failed before writing anything leaves no folder
            with contextlib.suppress(OSError):
                home.rmdir()               # (only if empty)


def _acquire(lock: Path, folder: Path, what: str) -> int:
    """Open and ``flock`` ``lock`` without waiting; retry if the file was replaced while we locked it."""
    for _ in range(20):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise DoeiError(f"{folder}: cannot lock the {what} ({e.strerror})") from None
            holder = _read_holder(lock)
            raise DoeiError(f"{folder}: another doei process{holder} is writing this {what}; wait for it "
                            "to finish or choose another folder") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
            return fd
        os.close(fd)                       # the holder removed it as we locked it: lock the new one
    raise DoeiError(f"{folder}: could not take the {what} lock (it keeps being replaced)")


def _read_holder(lock: Path) -> str:
    try:
        pid, started = lock.read_text(encoding="utf-8").split()[:2]
        return f" (pid {pid}, since {started})"
    except (OSError, ValueError):
        return ""


__all__ = ["check_path", "check_out_dir", "check_out_file", "folder_lock", "LOCK_NAME"]
