"""Regression (#21 smoke run of the TransCAM paper configs): the cam stage fed the Conformer views at the image's own
size (scales [1.0, 0.5, 1.5, 2.0]), which it refuses unless both sides are multiples of its stride — most VOC images
are 500 x 3xx. ``cam.square_sizes`` gives TransCAM's official square views (infer_TransCAM.py: 256/512/768 + flips)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from doei.cam.config import CamConfig
from doei.cam.generate import generate_cams, open_dataset
from doei.cam.io import load_cam
from doei.config import from_dict
from doei.errors import DoeiError
from doei.models.conformer import transcam_conformer_synth


def _voc(root, size=(50, 70)):
    rng = np.random.default_rng(0)
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    h, w = size
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / "a.jpg")
    m = np.zeros((h, w), np.uint8)
    m[10:30, 20:50] = 8                                         # class 7 (cat)
    Image.fromarray(m).save(root / "SegmentationClass" / "a.png")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("a\n")
    return root


def _cfg(root, **kw):
    d = {"model": "transcam_conformer_synth", "num_classes": 20, "dataset": "voc", "data_root": str(root),
         "split": "train", "flip": True, "normalize": "relu_minmax", "cam_dtype": "float32", "device": "cpu", **kw}
    return from_dict(CamConfig, d, where="cam").validate()


def _run(tmp_path, cfg):
    torch.manual_seed(0)
    model = transcam_conformer_synth(num_classes=20).eval()
    ckpt = tmp_path / "w.pt"
    torch.save(model.state_dict(), ckpt)
    return generate_cams(model, cfg, tmp_path / "cams", ckpt, ds=open_dataset(cfg), progress=False)


def test_square_views_let_the_conformer_make_cams_of_any_image_size(tmp_path):
    root = _voc(tmp_path / "voc")
    s = _run(tmp_path, _cfg(root, square_sizes=[32, 48]))
    assert s["computed"] == 1
    keys, cams = load_cam(tmp_path / "cams" / "a.npz")
    assert list(keys) == [7] and cams.shape == (1, 50, 70) and np.isfinite(cams).all()


def test_image_sized_views_are_refused_by_the_conformer_in_one_line(tmp_path):
    root = _voc(tmp_path / "voc")
    with pytest.raises(DoeiError, match="multiples of"):
        _run(tmp_path, _cfg(root, scales=[1.0]))


def test_square_sizes_are_checked(tmp_path):
    with pytest.raises(DoeiError, match="square_sizes"):
        _cfg(tmp_path, square_sizes=[8])
