"""Our ViT is timm's DeiT: same parameter names and, with the same weights, the same features."""
from __future__ import annotations

import pytest
import timm
import torch

from doei.models.vit import VisionTransformer, interpolate_pos_embed


@pytest.fixture(scope="module")
def deit_pair():
    torch.manual_seed(0)
    ref = timm.create_model("deit_small_patch16_224", pretrained=False, num_classes=1000).eval()
    ours = VisionTransformer(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, num_cls_tokens=1)
    sd = {k: v for k, v in ref.state_dict().items() if not k.startswith("head.")}
    result = ours.load_state_dict(sd, strict=True)
    return ref, ours.eval(), result


def test_deit_keys_load_strictly(deit_pair):
    ref, ours, result = deit_pair
    assert not result.missing_keys and not result.unexpected_keys
    assert set(ours.state_dict()) == {k for k in ref.state_dict() if not k.startswith("head.")}


def test_same_features_as_timm(deit_pair):
    ref, ours, _ = deit_pair
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        want = ref.forward_features(x)                    # timm applies the final norm
        got = ours.norm(ours.forward_features(x).tokens)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_attention_rows_are_probabilities(deit_pair):
    _, ours, _ = deit_pair
    with torch.no_grad():
        feats = ours.forward_features(torch.randn(1, 3, 96, 128))
    assert feats.grid == (6, 8) and len(feats.attn) == 12
    for a in feats.attn:
        assert a.shape == (1, 49, 49)
        torch.testing.assert_close(a.sum(-1), torch.ones(1, 49))


def test_pos_interpolation_identity_and_shapes():
    pos = torch.randn(1, 3 + 16, 8)
    assert interpolate_pos_embed(pos, 3, (4, 4), (4, 4)) is pos
    out = interpolate_pos_embed(pos, 3, (4, 4), (4, 6))
    assert out.shape == (1, 3 + 24, 8)
    assert torch.equal(out[:, :3], pos[:, :3])          # class positions untouched
    # scale_factor (h + 0.1) / gh (the official quirk), which differs from resizing with size=
    grid = pos[:, 3:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    by_size = torch.nn.functional.interpolate(grid, size=(4, 6), mode="bicubic", align_corners=False)
    by_scale = torch.nn.functional.interpolate(grid, scale_factor=(4.1 / 4, 6.1 / 4), mode="bicubic",
                                               align_corners=False)
    assert torch.equal(out[:, 3:], by_scale.permute(0, 2, 3, 1).reshape(1, 24, 8))
    assert not torch.allclose(by_size, by_scale)


@pytest.mark.parametrize("name", ["mctformer_v2_tiny_conv", "tscam_tiny_conv"])
def test_training_forward_keeps_no_attention(name):
    """A training forward asks for no CAM: each block's head-mean attention [B, T, T] is freed once
    DOEI has read it (at block i, nothing of blocks < i - 1 is alive), not held for all L blocks
    until the forward returns; ``forward_features`` (the CAM path) still returns all of them."""
    import weakref

    from doei.core import DOEIConfig
    from doei.models.registry import create_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=3, doei=DOEIConfig(enabled=True, st_p2c=0.2, st_c2c=0.5)).train()
    refs: list[weakref.ref] = []
    alive_at: list[int] = []
    for blk in model.blocks:
        blk.register_forward_pre_hook(lambda m, a: alive_at.append(sum(r() is not None for r in refs[:-1])))
        # training: DOEI blocks hand over their class rows/columns (ClassAttention), full forwards [B, T, T]
        blk.register_forward_hook(lambda m, a, out: refs.append(weakref.ref(getattr(out[1], "rows", out[1]))))
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert alive_at == [0] * len(model.blocks) and all(r() is None for r in refs)
    refs.clear(), alive_at.clear()
    feats = model.forward_features(x)
    assert len(feats.attn) == len(model.blocks) and alive_at == [max(i - 1, 0) for i in range(len(model.blocks))]
    torch.manual_seed(0)
    again = model(x)
    for a, b in zip(out if isinstance(out, tuple) else (out,), again if isinstance(again, tuple) else (again,)):
        assert torch.equal(a, b)
