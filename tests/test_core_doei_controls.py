"""Issue #24: Eq. 17 as written (``hfa_target="additive"``) and the controls (``select="random"``,
``weights="uniform"``, ``last_block=False``): hand-computed cases, off switches bit-identical, the same k_i,
determinism under a seed, batch independence."""
from __future__ import annotations

import pytest
import torch

from doei.core import DOEIConfig, doei_update
from doei.core.hfa import attention_additive
from doei.core.ppdo import ppdo_delta
from doei.core.selection import image_keys, num_selected, random_ranks
from doei.models.mctformer import MCTformerV2
from doei.models.vit import Attention
from test_core_doei import _toy  # the hand-computed toy (1 image, C = 2, P = 4, D = 2)


def test_additive_blend_hand_computed():
    # C = 1, P = 2. Class row [0.2, 0.6, 0.2] unchanged; patch rows (α = 0.5, Ĝ = [[0.5, 0.5], [0, 1]]):
    # p0 0.5·[0.1, 0.5, 0.4] + [0, 0.25, 0.25] = [0.05, 0.5, 0.45]; p1 0.5·[0.3, 0.3, 0.4] + [0, 0, 0.5] = [0.15, 0.15, 0.7]
    attn = torch.tensor([[0.2, 0.6, 0.2], [0.1, 0.5, 0.4], [0.3, 0.3, 0.4]]).view(1, 1, 3, 3)
    g = torch.tensor([[[0.5, 0.5], [0.0, 1.0]]])
    want = torch.tensor([[0.2, 0.6, 0.2], [0.05, 0.5, 0.45], [0.15, 0.15, 0.7]]).view(1, 1, 3, 3)
    torch.testing.assert_close(attention_additive(attn, g, 0.5, 1), want, atol=1e-7, rtol=0)
    assert attention_additive(attn, g, 0.0, 1) is attn
    torch.manual_seed(1)
    a = torch.softmax(torch.randn(2, 3, 7, 7), -1)
    gg = torch.rand(2, 5, 5)
    gg = gg / gg.sum(-1, keepdim=True)
    torch.testing.assert_close(attention_additive(a, gg, 0.35, 2).sum(-1), torch.ones(2, 3, 7))   # distributions


def test_additive_in_the_block_and_full_attention_property():
    torch.manual_seed(0)
    att = Attention(8, num_heads=2).eval()
    x = torch.randn(1, 5, 8)
    g = torch.softmax(torch.randn(1, 4, 4), -1)
    qkv = att.qkv(x).reshape(1, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    a = ((qkv[0] @ qkv[1].transpose(-2, -1)) * att.scale).softmax(-1)
    blended = attention_additive(a, g, 0.35, 1)
    out, mean, scores = att(x, (g, 0.35, 1, "softmax", "mean", "additive"))
    torch.testing.assert_close(mean, blended.mean(1), atol=1e-6, rtol=0)
    want = att.proj((blended @ qkv[2]).transpose(1, 2).reshape(1, 5, 8))
    torch.testing.assert_close(out, want, atol=1e-6, rtol=0)
    on = dict(enabled=True)
    assert DOEIConfig(**on, hfa_target="additive").needs_full_attention
    assert DOEIConfig(**on, hfa_target="attention").needs_full_attention
    assert not DOEIConfig(**on, hfa_target="additive", alpha=0.0).needs_full_attention
    assert not DOEIConfig(hfa_target="additive").needs_full_attention           # DOEI off
    assert not DOEIConfig(**on).needs_full_attention
    for c in ({"select": "random"}, {"weights": "uniform"}, {"last_block": False}):
        assert not DOEIConfig(**on, **c).needs_full_attention, c
    assert DOEIConfig(**on, hfa_target="additive", ppdo=False).uses_hfa        # acts with CPDO alone


def _tiny(doei=None, depth=3):
    torch.manual_seed(0)
    return MCTformerV2(num_classes=3, img_size=32, patch_size=8, embed_dim=32, depth=depth, num_heads=2,
                       doei=doei).eval()


def _outputs(model, x):
    out = model.forward_cams(x, n_layers=2)
    return torch.cat([out.cls_logits.flatten(), out.patch_logits.flatten(), out.cams.flatten()])


CONTROLS = [{"hfa_target": "additive"}, {"select": "random"}, {"weights": "uniform"}, {"last_block": False}]


def test_off_switches_bitwise_and_each_control_acts():
    x = torch.randn(2, 3, 32, 32)
    base = _outputs(_tiny(), x)
    on = dict(enabled=True, st_p2c=0.2, st_c2c=0.5)
    default_on = _outputs(_tiny(DOEIConfig(**on)), x)
    for v in CONTROLS:
        assert torch.equal(_outputs(_tiny(DOEIConfig(enabled=False, **v)), x), base), v      # DOEI off
        assert not torch.equal(_outputs(_tiny(DOEIConfig(**on, **v)), x), default_on), v      # it acts
    # Eq. 17 as written is off with alpha 0; and it makes "CPDO + HFA" differ from "CPDO"
    assert torch.equal(_outputs(_tiny(DOEIConfig(**on, alpha=0.0, hfa_target="additive")), x),
                       _outputs(_tiny(DOEIConfig(**on, alpha=0.0)), x))
    cpdo = dict(enabled=True, ppdo=False, st_c2c=0.5)
    assert not torch.equal(_outputs(_tiny(DOEIConfig(**cpdo, hfa_target="additive")), x),
                           _outputs(_tiny(DOEIConfig(**cpdo, hfa=False)), x))
    # no last block = DOEI on blocks 1..L-1
    assert torch.equal(_outputs(_tiny(DOEIConfig(**on, last_block=False)), x),
                       _outputs(_tiny(DOEIConfig(**on, layers=[1, 2])), x))
    with pytest.raises(ValueError, match="last_block"):
        _tiny(DOEIConfig(**on, last_block=False, layers=[3]))
    with pytest.raises(ValueError, match="select must be one of"):
        DOEIConfig(select="top")
    with pytest.raises(ValueError, match="control_seed"):
        DOEIConfig(control_seed=-1)


def test_uniform_weights_hand_computed():
    # S_p: class 0 [0.5, 0.1, 0.3, 0.0] (mean 0.225), class 1 [0.0, 0.4, 0.2, 0.4] (mean 0.25); k = 2 keeps
    # {0, 2} and {1, 3} as today; W = mean * (1·M_cs − 0.5·M_ns): class 0 [.225, −.1125, .225, −.1125],
    # class 1 [−.125, .25, −.125, .25]; Δ_p = Wᵀ X_c (X_c = identity)
    x, a = _toy()
    cfg = DOEIConfig(enabled=True, cpdo=False, hfa=False, st_p2c=0.5, af_p2c=1.0, sf_p2c=-0.5, weights="uniform")
    want = x.clone()
    want[0, 2:] += torch.tensor([[0.225, -0.125], [-0.1125, 0.25], [0.225, -0.125], [-0.1125, 0.25]])
    torch.testing.assert_close(doei_update(x, a, 2, 1, 2, cfg), want, atol=1e-6, rtol=0)


def test_given_ranks_hand_computed():
    # ranks class 0 [3, 0, 1, 2] -> confident {1, 2}; class 1 [0, 1, 2, 3] -> {0, 1} (k = 2)
    # W class 0 = S·[−.5, 1, 1, −.5] = [−.25, .1, .3, 0]; class 1 = S·[1, 1, −.5, −.5] = [0, .4, −.1, −.2]
    x, a = _toy()
    ranks = torch.tensor([[[3, 0, 1, 2], [0, 1, 2, 3]]])
    d, k = ppdo_delta(x, a, 2, 1, 2, 0.5, 1.0, -0.5, "rest", None, 0.0, ranks=ranks)
    assert k == 2
    torch.testing.assert_close(d, torch.tensor([[[-0.25, 0.0], [0.1, 0.4], [0.3, -0.1], [0.0, -0.2]]]),
                               atol=1e-6, rtol=0)


def test_random_ranks_are_permutations_seeded_and_per_image():
    keys = torch.tensor([5, 5, 6])
    r = random_ranks(keys, 0, 1, 3, 10)
    assert r.shape == (3, 3, 10)
    assert torch.equal(r.sort(-1).values, torch.arange(10).expand(3, 3, 10))                   # permutations
    assert torch.equal(r[0], r[1]) and not torch.equal(r[0], r[2])                             # per image
    assert torch.equal(r, random_ranks(keys, 0, 1, 3, 10))                                     # deterministic
    assert not torch.equal(r, random_ranks(keys, 1, 1, 3, 10))                                 # the seed acts
    assert not torch.equal(r, random_ranks(keys, 0, 2, 3, 10))                                 # per block
    d = random_ranks(keys, 0, -1, 4, 4, exclude_diagonal=True)
    assert (d.diagonal(dim1=-2, dim2=-1) == 3).all()                                           # CPDO: diagonal last
    # the draws are spread: over many images each patch is in the top 2 about 2/10 of the time
    top = (random_ranks(torch.arange(2000), 0, 1, 1, 10) < 2).float().mean(0)
    assert ((top - 0.2).abs() < 0.04).all()


def test_image_keys_batch_independent():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16)
    k = image_keys(x)
    assert k.dtype == torch.int64 and len(set(k.tolist())) == 4
    assert torch.equal(image_keys(x[2:3]), k[2:3]) and torch.equal(image_keys(x.flip(0)), k.flip(0))
    with pytest.raises(TypeError, match="image"):
        image_keys([1, 2])


def test_random_select_same_k_deterministic_batch_independent():
    x = torch.randn(3, 3, 32, 32)
    on = dict(enabled=True, st_p2c=0.2, st_c2c=0.5)
    m = _tiny(DOEIConfig(**on, select="random"))
    ref = _tiny(DOEIConfig(**on))
    m.doei_stats, ref.doei_stats = [], []
    y = _outputs(m, x)
    _outputs(ref, x)
    assert [(s["k_p2c"], s["k_c2c"]) for s in m.doei_stats] == [(s["k_p2c"], s["k_c2c"]) for s in ref.doei_stats]
    assert [s["k_p2c"] for s in m.doei_stats] == [num_selected(i, 3, 0.2, 16) for i in (1, 2, 3)]
    assert torch.equal(_outputs(_tiny(DOEIConfig(**on, select="random")), x), y)               # same seed: same
    assert not torch.equal(_outputs(_tiny(DOEIConfig(**on, select="random", control_seed=1)), x), y)
    one = m.forward_cams(x[1:2], n_layers=2).cams
    torch.testing.assert_close(one, m.forward_cams(x, n_layers=2).cams[1:2], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="needs keys"):
        doei_update(*_toy(), 2, 1, 2, DOEIConfig(enabled=True, select="random"))


def test_controls_gradients_finite_and_plugin_refuses_random():
    import timm

    from doei.errors import DoeiError
    from doei.models.timm_plugin import plug

    x = torch.randn(2, 3, 32, 32)
    for v in CONTROLS:
        m = _tiny(DOEIConfig(enabled=True, st_p2c=0.2, st_c2c=0.5, **v)).train()
        cls, patch = m(x)
        (cls.sum() + patch.sum()).backward()
        assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None), v
    t = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                          depth=2, num_heads=2, num_classes=3)
    with pytest.raises(DoeiError, match="does not implement"):
        plug(t, DOEIConfig(enabled=True, select="random"))
    plug(t, DOEIConfig(enabled=True, weights="uniform"))    # core-only controls are supported


def test_control_rows_have_their_own_run_keys_and_todays_are_unchanged():
    from doei.study.grid import CONTROL_ROWS, row_doei, run_key, select_rows

    assert run_key({"enabled": True}, 0) == "d74054d34f5a-s0"                      # the key before the controls
    assert run_key({"enabled": True, "select": "attention", "last_block": True, "control_seed": 3}, 0) == \
        "d74054d34f5a-s0"
    keys = {run_key(row_doei(r, {}), 0) for r in CONTROL_ROWS}
    assert len(keys) == len(CONTROL_ROWS) and "d74054d34f5a-s0" not in keys
    assert run_key({"enabled": True, "select": "random", "control_seed": 1}, 0) != \
        run_key({"enabled": True, "select": "random"}, 0)
    assert [r.name for r in select_rows(["random_select", "baseline"], "t")] == ["baseline", "random_select"]
