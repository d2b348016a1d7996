"""The context-managed CAM API (doei.cam.api.AttentionCAM) on plugged timm ViTs and on our models."""
from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F

from doei.cam.api import AttentionCAM, targets_to_multihot
from doei.cam.extractor import CamExtractor, minmax_labelled
from doei.core import DOEIConfig
from doei.errors import DoeiError
from doei.models.registry import create_model
from doei.models.timm_plugin import get_plug, plug

from test_plugin_timm import hooks, image, ours_like, tiny

TARGETS = [[0, 2], [4]]


def test_timm_maps_shape_range_and_labels():
    m = tiny("deit_tiny_patch16_224").eval()
    with AttentionCAM(m, n_layers=2, flip=True) as cam:
        maps = cam(image(), TARGETS)
    assert maps.shape == (2, 5, 32, 32) and maps.dtype == torch.float32
    assert maps.min() >= 0 and maps.max() <= 1
    assert maps[0, 0].max() > 0.99 and maps[0, 1].abs().sum() == 0 and maps[1, :4].abs().sum() == 0


def test_timm_attention_cam_is_the_class_to_patch_attention_of_the_last_blocks():
    """Against our own ViT with the same weights: Σ of the last n blocks' cls→patch attention, upsampled,
    min-max per labelled class (TS-CAM's attention term), with DOEI on in both."""
    m = tiny("deit_tiny_patch16_224").eval()
    cfg = DOEIConfig(enabled=True, cpdo=False, st_p2c=0.2)
    ours = ours_like(m, copy.deepcopy(cfg), 1)
    plug(m, cfg)
    x = image()
    with AttentionCAM(m, n_layers=2) as cam:
        got = cam(x, TARGETS)
    with torch.no_grad():
        attn = torch.stack(ours.forward_features(x).attn[-2:]).sum(0)[:, 0, 1:].reshape(2, 1, 4, 4)
    up = F.interpolate(attn.expand(2, 5, 4, 4), size=(32, 32), mode="bilinear", align_corners=False)
    labels = targets_to_multihot(TARGETS, 2, 5)
    torch.testing.assert_close(got, minmax_labelled(up * labels[..., None, None], labels), atol=1e-5, rtol=1e-5)
    assert get_plug(m).cfg.enabled                                    # the user's plug stays


def test_hooks_and_recorded_tensors_are_released_without_growth():
    m = tiny("deit_tiny_patch16_224").train()
    before = hooks(m)
    for _ in range(3):
        with AttentionCAM(m, patch_refine=True) as cam:
            inside = hooks(m)
            for _ in range(3):
                cam(image(), TARGETS)
            p = get_plug(m)
            assert len(p.recorded) == 3 and hooks(m) == inside        # one pass kept, no new hooks
            ref = weakref.ref(p.recorded[3])
        assert hooks(m) == before == 0 and get_plug(m) is None and m.training
        gc.collect()
        assert ref() is None                                          # recorded attention freed
    plug(m)
    n = hooks(m)
    with AttentionCAM(m) as cam:
        cam(image(), TARGETS)
    assert hooks(m) == n and get_plug(m) is not None and get_plug(m).recorded == {}


def test_semantic_kind_and_distilled_and_register_models():
    for name in ("deit_tiny_distilled_patch16_224", "vit_small_patch14_reg4_dinov2", "eva02_tiny_patch14_224"):
        m = tiny(name).eval()
        for kind in ("attention", "semantic"):
            with AttentionCAM(m, kind=kind) as cam:
                maps = cam(image(), TARGETS)
            assert maps.shape == (2, 5, 32, 32) and torch.isfinite(maps).all(), (name, kind)
    headless = tiny("deit_tiny_patch16_224", num_classes=0)
    with pytest.raises(DoeiError, match="num_classes"):
        AttentionCAM(headless).__enter__()
    with AttentionCAM(headless, num_classes=3) as cam:
        assert cam(image(), [[0], [2]]).shape == (2, 3, 32, 32)
    with pytest.raises(DoeiError, match="semantic"):
        AttentionCAM(headless, kind="semantic", num_classes=3).__enter__()
    assert hooks(headless) == 0


def test_our_models_go_through_their_own_cam_source():
    torch.manual_seed(0)
    mct = create_model("mctformer_v2_tiny_conv", num_classes=5, img_size=32, depth=2, embed_dim=32, num_heads=2)
    x, labels = image(), targets_to_multihot(TARGETS, 2, 5)
    with AttentionCAM(mct, n_layers=2, flip=True) as cam:
        got = cam(x, TARGETS)
    want = CamExtractor(mct, flip=True, n_layers=2)(x, labels)
    torch.testing.assert_close(got, want)
    tscam = create_model("tscam_tiny_conv", num_classes=5, img_size=32, depth=2, embed_dim=32, num_heads=2)
    with AttentionCAM(tscam) as cam:
        assert cam(x, labels).shape == (2, 5, 32, 32)


def test_model_dtype_and_list_input():
    m = tiny("deit_tiny_patch16_224", dynamic_img_size=True).double().eval()
    plug(m, DOEIConfig(enabled=True))
    with AttentionCAM(m) as cam:
        maps = cam(image(), TARGETS)
        listed = cam([image(1)[0], image(1, 40, 48)[0]], [[1], [3]])
    assert maps.dtype == torch.float64 and [t.shape for t in listed] == [(5, 32, 32), (5, 40, 48)]


def test_targets_forms_and_misuse():
    hot = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 1]]).float()
    assert torch.equal(targets_to_multihot(TARGETS, 2, 5), hot)
    assert torch.equal(targets_to_multihot(hot.numpy(), 2, 5), hot)
    for bad, match in [([[7], [0]], "outside 0..4"), ([[0]], "1 per-image class lists for 2"),
                       (torch.ones(2, 4), r"\[2, 5\]"), (hot * 2, "only 0 and 1")]:
        with pytest.raises(DoeiError, match=match):
            targets_to_multihot(bad, 2, 5)
    m = tiny("deit_tiny_patch16_224")
    with pytest.raises(DoeiError, match="context manager"):
        AttentionCAM(m)(image(), TARGETS)
    with pytest.raises(DoeiError, match="n_layers"):
        AttentionCAM(m, n_layers=9).__enter__()
    assert hooks(m) == 0 and get_plug(m) is None                      # a failed enter leaves nothing behind
