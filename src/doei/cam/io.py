"""The project's CAM file format: one ``.npz`` per image, no pickle.

Arrays in ``<dir>/<image_id>.npz``:

* ``classes`` int64 [K]: 0-based FOREGROUND class ids (VOC: 0 = aeroplane ... 19 = tvmonitor), the
  same keys the official ``.npy`` dicts use; label maps use ``class + 1`` (0 is background).
* ``cams`` float16 or float32 [K, H, W]: per-class maps in [0, 1] at the image's full resolution.

K may be 0 (an image with no labelled class), in which case ``cams`` has shape [0, H, W].

Reading checks the near misses in one line each: a ``.npz`` that is really a plain ``.npy`` array (or
the reverse), classes on the last axis (``[H, W, K]``), and values outside [0, 1] by more than
:data:`RANGE_TOL` (e.g. 0-255 maps). Out-of-range CAMs are refused, never rescaled silently: the β
threshold of the evaluation and the seeds mean "fraction of the class's peak", so the user rescales
each class map (divide by its maximum, as every doei writer does) and says so.
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

RANGE_TOL = 1e-2     # float16 storage rounds 1.0 to within 5e-4; anything further out is another convention
_NPY_MAGIC, _ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"


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
    head = _head(path)
    if head.startswith(_NPY_MAGIC):
        raise DoeiError(f"{path}: a plain .npy array, not this project's .npz CAM format (arrays 'classes' and "
                        "'cams'); official .npy CAM dicts are read with --pred-type npy --trust-pickle")
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
    if _head(path).startswith(_ZIP_MAGIC):
        raise DoeiError(f"{path}: a .npz archive, not an official .npy CAM dict; read it as --pred-type cam")
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


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(8)
    except OSError as e:
        from doei.utils.io import os_error_line

        raise DoeiError(os_error_line(path, e, "CAM file")) from None


def _check(path: Path, classes: np.ndarray, cams: np.ndarray) -> None:
    k = classes.shape[0]
    if cams.ndim == 3 and cams.shape[0] != k and cams.shape[2] == k:
        raise DoeiError(f"{path}: cams shape {cams.shape} has the {k} classes on the last axis ([H, W, K]); "
                        "expected [K, H, W] (np.moveaxis(cams, -1, 0))")
    if cams.ndim != 3 or cams.shape[0] != k:
        raise DoeiError(f"{path}: cams shape {cams.shape} does not match {classes.shape[0]} classes")
    if not np.isfinite(cams).all():
        raise DoeiError(f"{path}: CAM contains NaN or Inf")
    if classes.size and classes.min() < 0:
        raise DoeiError(f"{path}: negative class id {int(classes.min())}")
    if cams.size:
        lo, hi = float(cams.min()), float(cams.max())
        if lo < -RANGE_TOL or hi > 1 + RANGE_TOL:
            raise DoeiError(f"{path}: CAM values span [{lo:.4g}, {hi:.4g}], expected [0, 1] (each class map "
                            "divided by its maximum); rescale them, doei does not guess the convention")
