"""``doei cam`` with the TS-CAM and TransCAM families (registry names, their own CAM sources)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from doei.cam.io import load_cam
from doei.cli import main
from doei.models.registry import create_model


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = []
    for i in range(2):
        iid = f"2099_{i:06d}"
        m = np.zeros((64, 64), np.uint8)
        m[8:30, 8:40] = 1 + i
        m[36:60, 20:50] = 4
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{iid}.png")
        Image.fromarray(m).save(root / "SegmentationClass" / f"{iid}.png")
        ids.append(iid)
    (root / "ImageSets/Segmentation/train.txt").write_text("".join(f"{i}\n" for i in ids))
    return root, ids


@pytest.mark.parametrize("name", ["tscam_tiny_conv", "transcam_conformer_synth"])
def test_cam_command_runs_new_families(voc, tmp_path, name):
    torch.set_num_threads(1)
    root, ids = voc
    torch.manual_seed(0)
    ckpt = tmp_path / "ckpt.pth"
    torch.save({"model": create_model(name, num_classes=20).state_dict()}, ckpt)
    out = tmp_path / "cams"
    rc = main(["cam", "--model", name, "--num-classes", "20", "--dataset", "voc", "--data-root", str(root),
               "--split", "train", "--checkpoint", str(ckpt), "--out", str(out), "--no-progress"])
    assert rc == 0
    for i, iid in enumerate(ids):
        cls, cams = load_cam(out / f"{iid}.npz")
        assert list(cls) == [i, 3] and cams.shape == (2, 64, 64)
        c = np.asarray(cams, np.float32)
        assert np.isfinite(c).all() and c.min() >= 0 and c.max() <= 1 + 1e-3 and c.max() > 0.5


@pytest.mark.parametrize("name, flags, message", [
    ("tscam_tiny_conv", ["--kind", "mtatt"], "CAM kind 'mtatt': TSCAM \\(family 'tscam'\\) has semantic"),
    ("tscam_tiny_conv", ["--n-layers", "2"], "CAM option n_layers = 2: TSCAM .* does not read it"),
    ("transcam_conformer_synth", ["--n-layers", "2"], "its CAM options: patch_refine"),
])
def test_cam_options_a_family_does_not_read_are_refused(voc, tmp_path, capsys, name, flags, message):
    """The choices come from the model: one line, exit 2, nothing written (not even cam_settings.json)."""
    root, _ = voc
    ckpt = tmp_path / "ckpt.pth"
    torch.save({"model": create_model(name, num_classes=20).state_dict()}, ckpt)
    out = tmp_path / "cams"
    rc = main(["cam", "--model", name, "--num-classes", "20", "--dataset", "voc", "--data-root", str(root),
               "--split", "train", "--checkpoint", str(ckpt), "--out", str(out), "--no-progress", *flags])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    import re

    assert re.search(message, err), err
    assert not out.exists() or not any(out.iterdir())


def test_settings_record_the_resolved_options(voc, tmp_path):
    """TS-CAM's settings say kind 'semantic' and no n_layers/patch_refine (never recorded as used)."""
    import json

    root, _ = voc
    ckpt = tmp_path / "ckpt.pth"
    torch.save({"model": create_model("tscam_tiny_conv", num_classes=20).state_dict()}, ckpt)
    out = tmp_path / "cams"
    assert main(["cam", "--model", "tscam_tiny_conv", "--num-classes", "20", "--dataset", "voc", "--data-root",
                 str(root), "--split", "train", "--checkpoint", str(ckpt), "--out", str(out), "--no-progress",
                 "--limit", "1"]) == 0
    st = json.loads((out / "cam_settings.json").read_text())
    assert (st["kind"], st["n_layers"], st["patch_refine"]) == ("semantic", None, None)
