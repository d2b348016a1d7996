"""AttentionCAM in pytorch-grad-cam's conventions (targets=None, one class per image, numpy [B, H, W]),
the overlay helper on the network's input, and readable reprs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from doei.cam.api import AttentionCAM, predicted_targets, targets_to_multihot
from doei.cam.visualize import IMAGENET, cam_overlay, to_rgb_uint8
from doei.core import DOEIConfig
from doei.models.registry import create_model
from doei.models.timm_plugin import plug

from test_plugin_timm import image, tiny


def test_targets_none_are_the_predicted_classes():
    m = tiny("deit_tiny_patch16_224").eval()
    x = image()
    with AttentionCAM(m, threshold=0.5) as cam:
        maps = cam(x)
        scores = torch.sigmoid(m(x)).detach()
        assert torch.allclose(cam.scores, scores, atol=1e-6)
        assert torch.equal(cam.targets, predicted_targets(scores, 0.5))
        assert (cam.targets.sum(1) >= 1).all()                          # at least the top class
        assert torch.equal(maps, cam(x, cam.targets))


def test_flat_list_is_one_class_per_image_and_numpy_output():
    m = tiny("deit_tiny_patch16_224").eval()
    x = image()
    with AttentionCAM(m) as cam:
        full = cam(x, [[3], [1]])
        assert torch.equal(cam(x, [3, 1]), full) and torch.equal(cam(x, torch.tensor([3, 1])), full)
        gray = cam(x, [3, 1], output="numpy")
        assert isinstance(gray, np.ndarray) and gray.shape == (2, 32, 32) and gray.dtype == np.float32
        np.testing.assert_allclose(gray[0], full[0, 3].numpy()) and np.testing.assert_allclose(gray[1], full[1, 1])
        with pytest.raises(ValueError, match="output='png'"):
            cam(x, [3, 1], output="png")
    assert targets_to_multihot(np.array([0, 2]), 2, 3).tolist() == [[1, 0, 0], [0, 0, 1]]
    with pytest.raises(Exception, match="3 class indices for 2 images"):
        targets_to_multihot([0, 1, 2], 2, 5)


def test_project_model_targets_none():
    torch.manual_seed(0)
    m = create_model("mctformer_v2_tiny_conv", num_classes=4, img_size=32, depth=2, embed_dim=32,
                     num_heads=2).eval()
    x = torch.randn(2, 3, 32, 32)
    with AttentionCAM(m, n_layers=1) as cam:
        maps = cam(x)
        assert maps.shape == (2, 4, 32, 32) and cam.targets.shape == (2, 4)
        assert "AttentionCAM(" in repr(cam) and "open" in repr(cam)


def test_overlay_takes_the_network_input_or_unnormalised_images():
    rgb = np.random.default_rng(0).integers(0, 256, (8, 10, 3), dtype=np.uint8)
    mean, std = (np.asarray(v, np.float32).reshape(3, 1, 1) for v in IMAGENET)
    net_input = torch.from_numpy((rgb.transpose(2, 0, 1) / 255.0 - mean) / std)
    assert np.abs(to_rgb_uint8(net_input, "imagenet").astype(int) - rgb).max() <= 1
    assert np.abs(to_rgb_uint8(rgb / 255.0).astype(int) - rgb).max() <= 1          # grad-cam's float [0, 1]
    cam = np.linspace(0, 1, 80, dtype=np.float32).reshape(8, 10)
    a = cam_overlay(rgb, cam)
    assert np.abs(cam_overlay(net_input, cam, normalization="imagenet").astype(int) - a).max() <= 1
    with pytest.raises(ValueError, match="normalization"):
        cam_overlay(rgb, cam, normalization="imagenet")


def test_plug_repr_is_readable():
    m = tiny("deit_tiny_patch16_224")
    plug(m, DOEIConfig(enabled=True, cpdo=False))
    r = repr(m.doei_plug)
    assert r.startswith("DoeiPlug(VisionTransformer") and "DOEI on (PPDO+HFA after blocks 1..3" in r
    m.doei_plug.cfg.enabled = False
    assert "DOEI off" in repr(m.doei_plug)
