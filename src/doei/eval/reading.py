"""Reading evaluation inputs: id lists, label PNGs and CAM files, each checked with one-line errors.

Layout (the official script's): ground truth ``<gt_dir>/<id>.png`` and predictions
``<pred_dir>/<id>.<ext>`` where ``ext`` is

* ``png``: a label map (0 background, k foreground class, 255 allowed = no prediction), single
  channel; palette PNGs give their indices;
* ``npz``: this project's CAM format (:func:`doei.cam.io.load_cam`);
* ``npy``: the official pickled dict ``{class: [H, W]}``, read only with ``trust_pickle``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from doei.cam.io import load_cam, load_official_npy
from doei.data.common import IGNORE_INDEX as IGNORE
from doei.data.common import read_id_list  # noqa: F401 - eval's id lists are the datasets' (one reader)
from doei.errors import DoeiError

PRED_EXT = {"png": ".png", "cam": ".npz", "npy": ".npy"}
LABEL_MODES = ("P", "L", "1", "I", "I;16", "I;16B", "I;16L")


def detect_pred_type(pred_dir: str | os.PathLike, first_id: str) -> str:
    """``png`` / ``cam`` / ``npy`` from which ``<pred_dir>/<first_id>.{png,npz,npy}`` exists (exactly one)."""
    pred_dir = Path(pred_dir)
    found = [t for t, ext in PRED_EXT.items() if (pred_dir / f"{first_id}{ext}").is_file()]
    if len(found) == 1:
        return found[0]
    if not found:
        raise DoeiError(f"{pred_dir / first_id}.{{png,npz,npy}}: prediction file not found")
    raise DoeiError(f"{pred_dir / first_id}: several prediction files ({', '.join(PRED_EXT[t] for t in found)}); "
                    "choose one with --pred-type")


def check_files_exist(paths: list[Path], what: str) -> None:
    """Raise naming the first missing file (checked before any work, so errors come early)."""
    for p in paths:
        if not p.is_file():
            raise DoeiError(f"{p}: {what} file not found")


def check_label_values(arr: np.ndarray, path: Path, num_classes: int, what: str) -> None:
    """Every value must be in 0..num_classes-1 or 255."""
    if arr.size == 0:
        raise DoeiError(f"{path}: empty {what} image")
    if int(arr.min()) >= 0 and int(arr.max()) < num_classes:
        return  # fast path: no ignore label, all in range
    bad = arr[(arr < 0) | ((arr >= num_classes) & (arr != IGNORE))]
    if bad.size == 0:
        return
    vals = np.unique(bad)
    shown = ", ".join(str(int(v)) for v in vals[:5]) + (", ..." if vals.size > 5 else "")
    raise DoeiError(f"{path}: {what} label {shown} outside 0..{num_classes - 1} (or 255)")


def read_label_png(path: str | os.PathLike, num_classes: int, what: str = "ground truth") -> np.ndarray:
    """A single-channel label PNG as an integer array [H, W] (palette PNGs give indices), checked.

    Unreadable/truncated files, non-PNG content, multi-channel images and labels outside
    0..num_classes-1 (other than 255) raise DoeiError naming the file.
    """
    from doei.data.common import open_image

    path = Path(path)
    try:
        with open_image(path, what) as im:
            fmt, mode = im.format, im.mode
            if fmt != "PNG":
                raise DoeiError(f"{path}: {what} is not a PNG (found {fmt or 'unknown format'})")
            if mode not in LABEL_MODES:
                raise DoeiError(f"{path}: {what} must be a single-channel label PNG (mode P or L), got mode {mode}")
            im.load()
            arr = np.array(im)
    except DoeiError:
        raise
    except FileNotFoundError:
        raise DoeiError(f"{path}: {what} file not found") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
        raise DoeiError(f"{path}: unreadable or truncated {what} PNG ({e.__class__.__name__}: {e})") from None
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.ndim != 2:
        raise DoeiError(f"{path}: {what} must be 2-D [H, W], got shape {arr.shape}")
    check_label_values(arr, path, num_classes, what)
    return arr


def read_cams(path: Path, pred_type: str, num_classes: int, trust_pickle: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(classes int64 [K], cams float32 [K, H, W])`` from ``.npz`` (``cam``) or official ``.npy``.

    Checks (besides the loaders' NaN/Inf/shape checks): class ids distinct and < num_classes-1.
    """
    if pred_type == "cam":
        classes, cams = load_cam(path)
    elif pred_type == "npy":
        classes, cams = load_official_npy(path, trust_pickle=trust_pickle)
    else:  # pragma: no cover - programming error
        raise ValueError(pred_type)
    if classes.size:
        if int(classes.max()) >= num_classes - 1:
            raise DoeiError(f"{path}: CAM class id {int(classes.max())} >= num_classes-1 = {num_classes - 1} "
                            "(ids are 0-based foreground classes)")
        if np.unique(classes).size != classes.size:
            raise DoeiError(f"{path}: duplicate CAM class ids {classes.tolist()}")
    return classes, cams


def check_same_size(pred_shape: tuple[int, ...], gt_shape: tuple[int, ...], pred_path: Path, gt_path: Path) -> None:
    if tuple(pred_shape) != tuple(gt_shape):
        raise DoeiError(f"{pred_path}: prediction size {tuple(pred_shape)} (H, W) differs from ground truth "
                        f"{gt_path} size {tuple(gt_shape)}")
