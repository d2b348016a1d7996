"""TS-CAM parity with the official implementation (../shared/reference/tscam.npz, README §5.6).

Tolerances: logits/head map/CAMs rtol 1e-4, atol 1e-5·max|ref| (README §4); attention atol 1e-6.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from doei.core import DOEIConfig
from doei.models.weights import load_model_weights
from doei.models.tscam import tscam_cams, tscam_deit_small
from recipe_weights import fill_state_dict_


@pytest.fixture(scope="module")
def model():
    return fill_state_dict_(tscam_deit_small(num_classes=20)).eval()


def close(actual, ref, rtol=1e-4, atol_rel=1e-5):
    ref_t = torch.from_numpy(np.asarray(ref))
    assert actual.shape == ref_t.shape
    torch.testing.assert_close(actual.float(), ref_t, rtol=rtol, atol=atol_rel * float(ref_t.abs().max()))


def test_state_dict_matches_official_keys(shared_dir):
    keys = json.loads((shared_dir / "reference" / "keys_tscam_deit_small.json").read_text())["keys"]
    sd = tscam_deit_small(num_classes=20).state_dict()
    assert set(sd) == set(keys)
    assert all(list(sd[k].shape) == shape for k, shape in keys.items())


@pytest.mark.parametrize("case", ["s224_", "b2_"])
def test_parity(model, reference, case):
    z = reference("tscam.npz")
    x = torch.from_numpy(z[case + "input"])
    with torch.no_grad():
        out = model.forward_cams(x)
        feats = model.forward_features(x)
    close(out.logits, z[case + "logits"])
    close(out.head_out, z[case + "head_out"])
    close(out.cams, z[case + "cams"])
    cls_attn = torch.stack(feats.attn).sum(0)[:, 0, 1:]
    torch.testing.assert_close(cls_attn, torch.from_numpy(z[case + "cls_to_patch_attn_sum12"]), atol=1e-6, rtol=0)
    assert (out.head_out < 0).any() and (out.cams < 0).any()  # no ReLU on the head map (gotcha 7)


def test_official_checkpoint_layout_loads(model, tmp_path):
    """Official TS-CAM checkpoints hold {'state_dict': {'module.' + key: tensor}}."""
    path = tmp_path / "tscam_official.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}, "epoch": 3}, path)
    m = load_model_weights(tscam_deit_small(num_classes=20), path).eval()
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), model.state_dict().values()))


def test_any_input_size_and_doei(model):
    m = tscam_deit_small(num_classes=20, doei=DOEIConfig(enabled=True, cpdo=False))
    m.load_state_dict(model.state_dict())
    m.eval()
    x = torch.randn(1, 3, 160, 208)
    with torch.no_grad():
        base = model.forward_cams(x)
        on = m.forward_cams(x)
    assert base.cams.shape == on.cams.shape == (1, 20, 10, 13)
    assert torch.isfinite(on.cams).all() and not torch.allclose(on.cams, base.cams)


def test_cams_definition():
    attn = torch.softmax(torch.randn(3, 2, 5, 5), -1)
    head = torch.randn(2, 4, 2, 2)
    want = attn.sum(0)[:, 0, 1:].reshape(2, 1, 2, 2) * head
    torch.testing.assert_close(tscam_cams(attn, head), want)


def test_plugs_into_cam_extractor():
    from doei.cam.extractor import CamExtractor
    from doei.models.tscam import tscam_tiny_conv

    m = tscam_tiny_conv(num_classes=3, img_size=32).eval()
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    cams = CamExtractor(m, scales=(1.0, 0.5), flip=True)(torch.randn(1, 3, 32, 48), labels)
    assert cams.shape == (1, 3, 32, 48)
    assert cams[:, 1].abs().max() == 0 and 0 <= float(cams.min()) and float(cams.max()) <= 1
