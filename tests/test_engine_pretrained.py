"""DeiT/timm pretrained weights for TS-CAM (one class token) and MCTformer, incl. ``timm:<name>`` sources.

``timm.create_model`` is monkeypatched to return a randomly initialised timm ViT: no network, no download."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from doei.models.pretrained import load_pretrained
from doei.errors import DoeiError
from doei.models.mctformer import MCTformerV2
from doei.models.tscam import TSCAM

DIM, DEPTH, HEADS = 16, 2, 2


def _timm_vit(img_size: int = 64):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(1)
    return VisionTransformer(img_size=img_size, patch_size=16, embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
                             num_classes=1000)


def _tscam(img_size: int = 64) -> TSCAM:
    return TSCAM(num_classes=3, img_size=img_size, patch_size=16, embed_dim=DIM, depth=DEPTH, num_heads=HEADS)


def test_tscam_loads_deit_state_dict_with_one_class_token(tmp_path):
    sd = _timm_vit(img_size=96).state_dict()                     # 6x6 grid -> resized to the model's 4x4
    path = tmp_path / "deit.pth"
    torch.save({"model": sd}, path)
    model = _tscam()
    head_before = model.head.weight.detach().clone()
    missing = load_pretrained(model, path)
    assert sorted(missing) == ["head.bias", "head.weight"] and torch.equal(model.head.weight, head_before)
    assert model.cls_token.shape == (1, 1, DIM) and torch.equal(model.cls_token, sd["cls_token"])
    assert torch.equal(model.pos_embed[:, :1], sd["pos_embed"][:, :1])
    patch = sd["pos_embed"][:, 1:].reshape(1, 6, 6, DIM).permute(0, 3, 1, 2)
    want = F.interpolate(patch, size=(4, 4), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 16, DIM)
    assert torch.equal(model.pos_embed[:, 1:], want)
    assert torch.equal(model.blocks[1].attn.qkv.weight, sd["blocks.1.attn.qkv.weight"])
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_tscam_loads_official_module_prefixed_state_dict(tmp_path):
    sd = _timm_vit().state_dict()
    path = tmp_path / "tscam.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    model = _tscam()
    load_pretrained(model, path)
    assert torch.equal(model.norm.weight, sd["norm.weight"]) and torch.equal(model.pos_embed, sd["pos_embed"])


@pytest.fixture
def fake_timm(monkeypatch):
    import timm

    calls = []

    def create_model(name, pretrained=False, **kw):
        calls.append((name, pretrained))
        if name != "deit_small_patch16_224":
            raise RuntimeError(f"Unknown model ({name})\nsecond line")
        return _timm_vit()

    monkeypatch.setattr(timm, "create_model", create_model)
    return calls


@pytest.mark.parametrize("family", ["mctformer", "tscam"])
def test_timm_source_goes_through_timm_pretrained(fake_timm, family):
    model = (MCTformerV2(num_classes=3, img_size=64, patch_size=16, embed_dim=DIM, depth=DEPTH, num_heads=HEADS)
             if family == "mctformer" else _tscam())
    missing = load_pretrained(model, "timm:deit_small_patch16_224")
    assert fake_timm == [("deit_small_patch16_224", True)] and sorted(missing) == ["head.bias", "head.weight"]
    sd = _timm_vit().state_dict()
    n_tok = 3 if family == "mctformer" else 1
    assert torch.equal(model.cls_token, sd["cls_token"].expand(1, n_tok, DIM))
    assert torch.equal(model.blocks[0].mlp.fc1.weight, sd["blocks.0.mlp.fc1.weight"])


def test_timm_failures_are_one_line_errors(fake_timm):
    with pytest.raises(DoeiError, match="timm could not provide") as e:
        load_pretrained(_tscam(), "timm:nope")
    assert "\n" not in str(e.value)
    with pytest.raises(DoeiError, match="timm:<model name>"):
        load_pretrained(_tscam(), "timm:")


def test_train_config_pretrained_timm_reaches_build_model(fake_timm, tmp_path):
    from doei.engine.classifier import build_classifier as build_model
    from doei.train_config import train_config_from_dict

    cfg = train_config_from_dict({"model": {"name": "tscam_tiny_conv", "num_classes": 3, "img_size": 64,
                                            "pretrained": "timm:deit_small_patch16_224",
                                            "options": {"depth": DEPTH, "embed_dim": DIM, "num_heads": HEADS,
                                                        "patch_size": 16}},
                                  "data": {"kind": "synth", "root": str(tmp_path)}})
    # the tiny TS-CAM has a conv stem: DeiT's linear patch embedding does not fit -> one-line error
    with pytest.raises(DoeiError, match="patch_embed"):
        build_model(cfg)
    assert fake_timm == [("deit_small_patch16_224", True)]


def test_conformer_refuses_timm_source():
    from doei.models.registry import create_model

    with pytest.raises(DoeiError, match="ImageNet Conformer"):
        load_pretrained(create_model("transcam_conformer_synth", num_classes=3), "timm:deit_small_patch16_224")
