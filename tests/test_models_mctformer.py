"""MCTformer-V2 parity with the official implementation (../shared/reference/mctformer_v2.npz, README §5.1).

Tolerances (README §4's suggestion): network outputs rtol 1e-4 and atol 1e-5·max|ref|; attention
maps atol 1e-6. Observed here: logits and fused CAMs within ~1e-6 absolute, attention within 5e-8.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from doei.core import DOEIConfig
from doei.models.mctformer import mctformer_cams, mctformer_v2_deit_small, refine_with_patch_affinity
from doei.models.registry import create_model, list_models
from recipe_weights import fill_state_dict_

CASES = ["s224_", "s224x320_", "s250x333_", "b2_"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return fill_state_dict_(mctformer_v2_deit_small(num_classes=20)).eval()


@pytest.fixture(scope="module")
def fixture(reference):
    return reference("mctformer_v2.npz")


def close(actual: torch.Tensor, ref: np.ndarray, rtol=1e-4, atol_rel=1e-5):
    ref_t = torch.from_numpy(np.asarray(ref))
    assert actual.shape == ref_t.shape
    torch.testing.assert_close(actual.float(), ref_t, rtol=rtol, atol=atol_rel * float(ref_t.abs().max()) + 1e-12)


def test_state_dict_matches_official_keys(shared_dir):
    keys = json.loads((shared_dir / "reference" / "keys_mctformer_v2_deit_small.json").read_text())["keys"]
    sd = mctformer_v2_deit_small(num_classes=20).state_dict()
    assert set(sd) == set(keys)
    assert all(list(sd[k].shape) == shape for k, shape in keys.items())


@pytest.mark.parametrize("case", CASES)
def test_parity_per_case(model, fixture, case):
    x = torch.from_numpy(fixture[case + "input"])
    with torch.no_grad():
        feats, cls_logits, patch_logits, head_out = model._heads(x)
        attn = torch.stack(feats.attn)
        fused3 = mctformer_cams(attn, head_out, 3, "fused")
        pos = model.pos_embed_for((x.shape[2] // 16, x.shape[3] // 16))
        out = model.forward_cams(x, n_layers=3, kind="fused")  # the public path gives the same
    torch.testing.assert_close(out.cams, fused3, atol=0, rtol=0)
    close(cls_logits, fixture[case + "x_cls_logits"])
    close(patch_logits, fixture[case + "x_patch_logits"])
    close(fused3, fixture[case + "cams_fused_n3"])
    close(mctformer_cams(attn, head_out, 12, "fused"), fixture[case + "cams_fused_n12"])
    close(mctformer_cams(attn, head_out, 3, "patchcam"), fixture[case + "cams_patchcam"])
    close(mctformer_cams(attn, head_out, 3, "mtatt"), fixture[case + "cams_mtatt_n3"])
    torch.testing.assert_close(out.patch_attn.sum(0), torch.from_numpy(fixture[case + "patch_attn_sum12"]),
                               atol=1e-6, rtol=0)
    # the +0.1 scale-factor bicubic interpolation (gotcha 2), identity only at 224x224
    torch.testing.assert_close(pos, torch.from_numpy(fixture[case + "pos_embed_used"]), atol=1e-7, rtol=0)


def test_parity_internals_224(model, fixture):
    x = torch.from_numpy(fixture["s224_input"])
    with torch.no_grad():
        feats, _, _, head = model._heads(x)
    attn = torch.stack(feats.attn)
    torch.testing.assert_close(attn, torch.from_numpy(fixture["s224_attn_headmean_all_layers"]), atol=1e-6, rtol=0)
    torch.testing.assert_close(attn[:, :, 20:, 20:], torch.from_numpy(fixture["s224_patch_attn"]), atol=1e-6, rtol=0)
    close(feats.tokens, fixture["s224_tokens_after_block12"])  # no final LayerNorm (gotcha 1)
    close(head, fixture["s224_head_out"])


def test_size_not_multiple_of_patch_drops_remainder(model, fixture):
    x = torch.from_numpy(fixture["s250x333_input"])
    with torch.no_grad():
        out = model.forward_cams(x)
        cropped = model.forward_cams(x[:, :, :240, :320])
    assert out.cams.shape == (1, 20, 15, 20)
    torch.testing.assert_close(out.cams, cropped.cams, atol=0, rtol=0)


def test_patch_affinity_refinement_definition():
    torch.manual_seed(0)
    cams = torch.rand(2, 3, 2, 3)
    attn = torch.rand(4, 2, 6, 6)
    out = refine_with_patch_affinity(cams, attn)
    a = attn.sum(0)
    want = torch.einsum("bij,bcj->bci", a, cams.flatten(2)).reshape(2, 3, 2, 3)
    torch.testing.assert_close(out, want)


@pytest.mark.parametrize("b", [1, 2, 3])
def test_patch_affinity_refinement_is_the_official_product_without_its_copy(b):
    """Bit for bit the official ``A.unsqueeze(1) @ cams[..., None]``, whose broadcast materialises
    A as [B, C, P, P] when B > 1 (the view and its flip); nothing that large is allocated now."""
    from torch.utils._python_dispatch import TorchDispatchMode

    c, h, w = 8, 6, 7
    p = h * w
    g = torch.Generator().manual_seed(b)
    cams, attn = torch.rand(b, c, h, w, generator=g), torch.rand(4, b, p, p, generator=g).softmax(-1)
    official = (attn.sum(0).unsqueeze(1) @ cams.reshape(b, c, p, 1)).reshape(b, c, h, w)
    largest = []

    class Largest(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                largest.append(out.untyped_storage().nbytes())
            return out

    with Largest():
        out = refine_with_patch_affinity(cams, attn)
    assert torch.equal(out, official)
    assert max(largest) <= 4 * b * p * p             # A summed over blocks; never [B, C, P, P]


def test_doei_on_changes_outputs_but_keeps_shapes(model, fixture):
    x = torch.from_numpy(fixture["s224x320_input"])
    m = mctformer_v2_deit_small(num_classes=20, doei=DOEIConfig(enabled=True))
    m.load_state_dict(model.state_dict())
    m.eval()
    with torch.no_grad():
        base = model.forward_cams(x)
        on = m.forward_cams(x)
    assert on.cams.shape == base.cams.shape
    assert not torch.allclose(on.cams, base.cams)
    assert torch.isfinite(on.cams).all()


def test_registry():
    assert "mctformer_v2_deit_small" in list_models()
    m = create_model("mctformer_v2_tiny_conv", num_classes=4, img_size=32)
    cl, pl = m(torch.randn(2, 3, 32, 48))
    assert cl.shape == pl.shape == (2, 4)
    from doei.errors import DoeiError
    with pytest.raises(DoeiError, match="unknown model"):
        create_model("mctformer_v9")
