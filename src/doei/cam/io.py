"""The project's CAM file format: one ``.npz`` per image, no pickle.

Arrays in ``<dir>/<image_id>.npz``:

* ``classes`` int64 [K]: 0-based FOREGROUND class ids (VOC: 0 = aeroplane ... 19 = tvmonitor), the
  same keys the official ``.npy`` dicts use; label maps use ``class + 1`` (0 is background).
* ``cams`` float16 or float32 [K, H, W]: per-class maps in [0, 1] at the image's full resolution.

K may be 0 (an image with no labelled class), in which case ``cams`` has shape [0, H, W].
The official MCTformer format (``np.save`` of a Python dict ``{class: [H, W] float32}``) is read by
:func:`load_official_npy` only with ``trust_pickle=True``, because loading it unpickles.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from doei.errors import DoeiError
from doei.utils.io import atomic_save_npz


def save_cam(path: str | os.PathLike, classes: np.ndarray, cams: np.ndarray, dtype=np.float16) -> None:
    """Write one image's CAMs atomically. ``classes`` [K] 0-based fg ids, ``cams`` [K, H, W]."""
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    cams = np.asarray(cams)
    if cams.ndim != 3 or cams.shape[0] != classes.shape[0]:
        raise DoeiError(f"{path}: cams shape {cams.shape} does not match {classes.shape[0]} classes")
    if not np.isfinite(cams).all():
        raise DoeiError(f"{path}: refusing to write CAMs containing NaN or Inf")
    atomic_save_npz(path, classes=classes, cams=cams.astype(dtype))


def load_cam(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(classes int64 [K], cams float32 [K, H, W])``; validates shapes and finiteness."""
    path = Path(path)
    if not path.is_file():
        raise DoeiError(f"{path}: CAM file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "classes" not in z.files or "cams" not in z.files:
                raise DoeiError(f"{path}: CAM file must hold arrays 'classes' and 'cams', found {z.files}")
            classes = z["classes"].astype(np.int64)
            cams = z["cams"].astype(np.float32)
    except DoeiError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DoeiError(f"{path}: unreadable CAM file ({e})") from None
    _check(path, classes, cams)
    return classes, cams


def load_official_npy(path: str | os.PathLike, trust_pickle: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read the official ``.npy``-of-dict CAM format; requires ``trust_pickle`` (it unpickles).

    Keys keep the dict's insertion order, as the official evaluation iterates them.
    """
    path = Path(path)
    if not trust_pickle:
        raise DoeiError(f"{path}: official .npy CAM dicts are pickles; pass --trust-pickle to read them")
    if not path.is_file():
        raise DoeiError(f"{path}: CAM file not found")
    try:
        d = np.load(path, allow_pickle=True).item()
    except Exception as e:  # noqa: BLE001 - any failure of an untrusted file is bad input
        raise DoeiError(f"{path}: unreadable .npy CAM dict ({e})") from None
    if not isinstance(d, dict) or not d:
        raise DoeiError(f"{path}: expected a non-empty dict {{class: [H, W] array}}")
    classes = np.array([int(k) for k in d.keys()], dtype=np.int64)
    cams = np.stack([np.asarray(v, dtype=np.float32) for v in d.values()])
    _check(path, classes, cams)
    return classes, cams


def _check(path: Path, classes: np.ndarray, cams: np.ndarray) -> None:
    if cams.ndim != 3 or cams.shape[0] != classes.shape[0]:
        raise DoeiError(f"{path}: cams shape {cams.shape} does not match {classes.shape[0]} classes")
    if not np.isfinite(cams).all():
        raise DoeiError(f"{path}: CAM contains NaN or Inf")
    if classes.size and classes.min() < 0:
        raise DoeiError(f"{path}: negative class id {int(classes.min())}")
