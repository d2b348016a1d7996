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
