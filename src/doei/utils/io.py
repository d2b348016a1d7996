"""Atomic file writing: nothing half-written is ever left at a final path.

Every writer here writes to a temporary file in the destination folder, flushes it, and renames it
over the destination (``os.replace`` is atomic on POSIX), so a killed process leaves either the old
file, the new file, or a stray ``.tmp-*`` file that readers ignore.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from doei.errors import DoeiError


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (read by setting and restoring it; serialised, as os.umask has no getter)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``, else delete it.

    The file ends with the mode an ordinary ``open(path, "w")`` would give (0666 less the umask):
    ``mkstemp`` creates it 0600, which would make every result unreadable to the user's group."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (fsync before rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` to ``path`` atomically; arrays only (no object dtype, no pickle)."""
    for k, v in arrays.items():
        if np.asarray(v).dtype == object:
            raise TypeError(f"{path}: array {k!r} has object dtype; refusing to pickle")
    # np.savez_compressed's layout, but with a fixed zip timestamp so that the same arrays always give
    # the same bytes (reruns, resumed and multi-process runs are byte-identical).
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for k, v in arrays.items():
            info = zipfile.ZipInfo(f"{k}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(v), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def atomic_save_png(path: str | os.PathLike, image: Any) -> None:
    """Save a PIL image (or uint8 array) as PNG atomically."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON record as a line (a metrics log; a torn last line is skipped by readers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def truncate_jsonl_epochs(path: str | os.PathLike, first_epoch: int) -> None:
    """Drop the records with ``epoch >= first_epoch`` (and any torn line) from a JSONL log, atomically.

    A run killed mid-epoch logged part of that epoch; resuming replays it, so its records go first.
    """
    path = Path(path)
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("epoch", -1) < first_epoch:
            keep.append(line)
    atomic_write_text(path, "".join(f"{ln}\n" for ln in keep))


BOM = "\ufeff"


def os_error_line(path: str | os.PathLike, e: OSError, what: str = "") -> str:
    """One line for an OS refusal of ``path``: name too long, dangling or looping symlink, permission, ..."""
    import errno

    label = f"{what} {path}" if what else str(path)
    reason = {errno.ENAMETOOLONG: "the name is longer than the file system allows",
              errno.ELOOP: "a symbolic link loop",
              errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
              errno.EISDIR: "is a folder, expected a file", errno.ENOTDIR: "a part of the path is a file, not a folder",
              errno.ENOENT: "not found", errno.EROFS: "read-only file system",
              errno.ENOSPC: "no space left on the device"}.get(e.errno, e.strerror or type(e).__name__)
    return f"{label}: {reason}"


def read_text(path: str | os.PathLike, what: str = "") -> str:
    """A text file as ``str``, the way every doei reader takes text: UTF-8, a leading byte-order mark dropped,
    CRLF/CR line ends read as LF. Not UTF-8 is one DoeiError naming the file and the byte offset; an OS
    refusal (missing, a folder, permission, a name too long, a symlink loop) one naming the path."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DoeiError(os_error_line(path, e, what)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        label = f"{what} {path}" if what else str(path)
        raise DoeiError(f"{label}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                        "save it as UTF-8") from None
    if text.startswith(BOM):
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_lines(path: str | os.PathLike, what: str = "") -> list[str]:
    """The non-blank lines of a text list (ids, class names), stripped; see :func:`read_text`."""
    return [ln.strip() for ln in read_text(path, what).split("\n") if ln.strip()]
