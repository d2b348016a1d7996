"""DOEI core: the tests docs/doei-method.md asks for (bit-for-bit off switches, k_i, a hand-computed
example, batch independence, finite gradients) plus dtype and selection-rule checks."""
from __future__ import annotations

import math

import pytest
import torch

from doei.config import from_dict
from doei.core import DOEIConfig, doei_update, hfa_affinity, hybrid_scores, num_selected
from doei.core.selection import rank_desc, selection_weights
from doei.errors import DoeiError
from doei.models.mctformer import MCTformerV2


# ---------------------------------------------------------------- k_i (Eq. 9/14)
@pytest.mark.parametrize("n", [1, 4, 9, 54, 144, 196, 300])
@pytest.mark.parametrize("depth", [1, 6, 12])
@pytest.mark.parametrize("step", [0.0, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0])
def test_num_selected_follows_formula(n, depth, step):
    for block in range(1, depth + 1):
        r = min(max((depth - block) * step, 0.0), 1.0)
        want = math.floor(r * n + 1e-6)
        k = num_selected(block, depth, step, n)
        assert k == want
        assert 0 <= k <= n
    assert num_selected(depth, depth, step, n) == 0            # the last block selects none


def test_num_selected_edge_cases():
    assert num_selected(1, 12, 1.0, 196) == 196                # k = n (ratio clamped to 1)
    assert num_selected(1, 12, 0.0, 196) == 0                  # k = 0
    assert num_selected(7, 12, 0.06, 180) == 54                # 0.3 * 180 = 54 despite float error
    # with few classes CPDO selects nothing unless st_c2c >= 1 / ((L-1)(C-1))
    assert num_selected(1, 6, 0.022, 9) == 0 and num_selected(1, 6, 1 / 45 + 1e-9, 9) == 1


def test_rank_ties_go_to_lower_index():
    s = torch.tensor([[0.2, 0.5, 0.5, 0.1, 0.5]])
    assert rank_desc(s).tolist() == [[3, 0, 1, 4, 2]]


def test_bottom_equals_rest_when_k_over_half():
    ranks = torch.arange(10).unsqueeze(0)
    rest = selection_weights(ranks, 10, 7, 1.0, -1.0, "rest")
    bottom = selection_weights(ranks, 10, 7, 1.0, -1.0, "bottom")
    assert torch.equal(rest, bottom)
    b = selection_weights(ranks, 10, 3, 1.0, -1.0, "bottom")
    assert b.tolist() == [[1, 1, 1, 0, 0, 0, 0, -1, -1, -1]]
    r = selection_weights(ranks, 10, 3, 1.0, -1.0, "rest")
    assert r.tolist() == [[1, 1, 1, -1, -1, -1, -1, -1, -1, -1]]


# ---------------------------------------------------------------- hand-computed example
def _toy():
    """1 image, C = 2 class tokens, P = 4 patches, D = 2 (see the comments for the hand computation)."""
    a = torch.zeros(1, 6, 6)
    a[0, 0, 2:] = torch.tensor([0.4, 0.1, 0.2, 0.0])   # class 0 -> patches
    a[0, 1, 2:] = torch.tensor([0.0, 0.3, 0.1, 0.2])   # class 1 -> patches
    a[0, 2:, :2] = torch.tensor([[0.1, 0.0], [0.0, 0.1], [0.1, 0.1], [0.0, 0.2]])  # patches -> classes
    a[0, :2, :2] = torch.tensor([[0.3, 0.2], [0.1, 0.5]])
    x = torch.zeros(1, 6, 2)
    x[0, 0] = torch.tensor([1.0, 0.0])
    x[0, 1] = torch.tensor([0.0, 1.0])
    x[0, 2:] = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 2.0], [-1.0, 1.0]])
    return x, a


def test_ppdo_hand_computed():
    # S_p = A_cp + A_pc^T: class 0 [0.5, 0.1, 0.3, 0.0], class 1 [0.0, 0.4, 0.2, 0.4]
    # L = 2, block 1, st = 0.5 -> k = 2: class 0 keeps patches {0, 2}, class 1 {1, 3}
    # W = S * (1 * M_cs - 0.5 * M_ns): class 0 [0.5, -0.05, 0.3, 0], class 1 [0, 0.4, -0.1, 0.4]
    # delta_p = W^T @ X_c = [[0.5, 0], [-0.05, 0.4], [0.3, -0.1], [0, 0.4]]
    x, a = _toy()
    cfg = DOEIConfig(enabled=True, ppdo=True, cpdo=False, hfa=False, st_p2c=0.5, af_p2c=1.0, sf_p2c=-0.5)
    y = doei_update(x, a, 2, 1, 2, cfg)
    want = x.clone()
    want[0, 2:] += torch.tensor([[0.5, 0.0], [-0.05, 0.4], [0.3, -0.1], [0.0, 0.4]])
    torch.testing.assert_close(y, want, atol=1e-6, rtol=0)


def test_ppdo_bottom_hand_computed():
    # k = 1 (st = 0.25): class 0 top {0}, bottom-1 among the rest {3}; class 1 top {1}, bottom {0}
    # W: class 0 [0.5, 0, 0, 0*(-1)], class 1 [0*(-1), 0.4, 0, 0] -> only zero-score suppressions
    x, a = _toy()
    cfg = DOEIConfig(enabled=True, cpdo=False, hfa=False, st_p2c=0.25, af_p2c=2.0, sf_p2c=-1.0, suppress="bottom")
    y = doei_update(x, a, 2, 1, 2, cfg)
    want = x.clone()
    want[0, 2] += torch.tensor([1.0, 0.0])
    want[0, 3] += torch.tensor([0.0, 0.8])
    torch.testing.assert_close(y, want, atol=1e-6, rtol=0)


def test_cpdo_hand_computed():
    # S_c = A_cc + A_cc^T = [[0.6, 0.3], [0.3, 1.0]]; the diagonal is not a candidate, n = 1
    # st_c2c = 1 -> k = 1: each class amplifies the other: delta_c0 = 0.3 * X_c1, delta_c1 = 0.3 * X_c0
    x, a = _toy()
    cfg = DOEIConfig(enabled=True, ppdo=False, cpdo=True, st_c2c=1.0, af_c2c=1.0, sf_c2c=-0.5)
    y = doei_update(x, a, 2, 1, 2, cfg)
    want = x.clone()
    want[0, 0] += torch.tensor([0.0, 0.3])
    want[0, 1] += torch.tensor([0.3, 0.0])
    torch.testing.assert_close(y, want, atol=1e-6, rtol=0)
    # st_c2c = 0 -> k = 0: everything is suppressed with SF = -0.5
    y0 = doei_update(x, a, 2, 1, 2, DOEIConfig(enabled=True, ppdo=False, st_c2c=0.0, sf_c2c=-0.5))
    want0 = x.clone()
    want0[0, 0] += torch.tensor([0.0, -0.15])
    want0[0, 1] += torch.tensor([-0.15, 0.0])
    torch.testing.assert_close(y0, want0, atol=1e-6, rtol=0)


def test_hfa_hand_computed():
    # 2x2 image, patch 1: pixels p0 = p1 = [1,0,0], p2 = [0,1,0], p3 = [1,1,0]; embeddings = pixels
    # R = F -> G = R^2 rows: [1,1,0,.5], [1,1,0,.5], [0,0,1,.5], [.5,.5,.5,1]; row sums 2.5, 2.5, 1.5, 2.5
    img = torch.tensor([[[1.0, 1.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])[None]
    emb = img.flatten(2).transpose(1, 2)
    g = hfa_affinity(img, emb, (2, 2), 1)
    want = torch.tensor([[0.4, 0.4, 0.0, 0.2], [0.4, 0.4, 0.0, 0.2], [0.0, 0.0, 2 / 3, 1 / 3], [0.2, 0.2, 0.2, 0.4]])
    torch.testing.assert_close(g[0], want, atol=1e-6, rtol=0)
    # hybrid scores, alpha 0.5, class-0 scores [0.5, 0.1, 0.3, 0.0]: S G^T = [0.24, 0.24, 0.2, 0.18]
    s = torch.tensor([[[0.5, 0.1, 0.3, 0.0]]])
    torch.testing.assert_close(hybrid_scores(s, g, 0.5), torch.tensor([[[0.37, 0.17, 0.25, 0.09]]]), atol=1e-6, rtol=0)
    # an all-zero patch gives a zero row, not NaN
    img2 = img.clone()
    img2[..., 0, 0] = 0
    g2 = hfa_affinity(img2, img2.flatten(2).transpose(1, 2), (2, 2), 1)
    assert torch.isfinite(g2).all() and g2[0, 0].abs().sum() == 0


def test_doei_with_hfa_matches_explicit_formula():
    torch.manual_seed(0)
    b, c, p, d = 3, 4, 9, 5
    x = torch.randn(b, c + p, d)
    a = torch.softmax(torch.randn(b, c + p, c + p), -1)
    img, emb = torch.randn(b, 3, 6, 6), torch.randn(b, p, 7)
    g = hfa_affinity(img, emb, (3, 3), 2)
    cfg = DOEIConfig(enabled=True, st_p2c=0.2, st_c2c=0.4, af_p2c=0.7, sf_p2c=-0.3, af_c2c=0.5, sf_c2c=-0.2,
                     alpha=0.35)
    y = doei_update(x, a, c, 2, 4, cfg, g)
    # literal per-element reference
    want = x.clone()
    kp = math.floor(min(2 * 0.2, 1) * p + 1e-6)
    kc = math.floor(min(2 * 0.4, 1) * (c - 1) + 1e-6)
    for i in range(b):
        sp = a[i, :c, c:] + a[i, c:, :c].T
        sp = 0.65 * sp + 0.35 * sp @ g[i].T
        for cls in range(c):
            order = sorted(range(p), key=lambda j: (-float(sp[cls, j]), j))
            for r, j in enumerate(order):
                f = 0.7 if r < kp else -0.3
                want[i, c + j] += f * sp[cls, j] * x[i, cls]
        sc = a[i, :c, :c] + a[i, :c, :c].T
        for cls in range(c):
            others = sorted((o for o in range(c) if o != cls), key=lambda o: (-float(sc[cls, o]), o))
            for r, o in enumerate(others):
                f = 0.5 if r < kc else -0.2
                want[i, cls] += f * sc[cls, o] * x[i, o]
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- model-level properties
def _tiny(doei=None, num_classes=3, **kw):
    torch.manual_seed(0)
    return MCTformerV2(num_classes=num_classes, img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2,
                       doei=doei, **kw).eval()


def _outputs(model, x):
    out = model.forward_cams(x, n_layers=2)
    return torch.cat([out.cls_logits.flatten(), out.patch_logits.flatten(), out.cams.flatten()])


def test_off_switches_reproduce_baseline_bitwise():
    x = torch.randn(2, 3, 32, 40)
    base = _outputs(_tiny(), x)
    sd = _tiny().state_dict()
    for cfg in [DOEIConfig(enabled=False), DOEIConfig(enabled=True, af_p2c=0, sf_p2c=0, af_c2c=0, sf_c2c=0),
                DOEIConfig(enabled=True, ppdo=False, cpdo=False), DOEIConfig(enabled=True, layers=[])]:
        m = _tiny(cfg)
        m.load_state_dict(sd)
        assert torch.equal(_outputs(m, x), base), cfg
    # alpha = 0 switches HFA off exactly
    on = DOEIConfig(enabled=True, st_p2c=0.2, st_c2c=0.5)
    m_a0 = _tiny(DOEIConfig(**{**on.__dict__, "alpha": 0.0}))
    m_nohfa = _tiny(DOEIConfig(**{**on.__dict__, "hfa": False}))
    m_on = _tiny(on)
    assert torch.equal(_outputs(m_a0, x), _outputs(m_nohfa, x))
    assert not torch.equal(_outputs(m_on, x), base)
    assert not torch.equal(_outputs(m_on, x), _outputs(m_nohfa, x))


def test_layers_select_blocks():
    m = _tiny(DOEIConfig(enabled=True, layers=[1, 3], st_p2c=0.2))
    m.doei_stats = []
    m.forward_cams(torch.randn(1, 3, 32, 32))
    assert [s["block"] for s in m.doei_stats] == [1, 3]
    assert [s["k_p2c"] for s in m.doei_stats] == [num_selected(1, 3, 0.2, 16), 0]
    assert all(s["delta_ratio_patch"] > 0 for s in m.doei_stats)
    with pytest.raises(ValueError):
        _tiny(DOEIConfig(enabled=True, layers=[4]))


def test_batch_independence():
    m = _tiny(DOEIConfig(enabled=True, st_p2c=0.2, st_c2c=0.5, af_p2c=2.0, sf_p2c=-1.0))
    x = torch.randn(4, 3, 32, 32)
    batched = m.forward_cams(x, n_layers=2)
    for i in range(4):
        single = m.forward_cams(x[i:i + 1], n_layers=2)
        torch.testing.assert_close(single.cams, batched.cams[i:i + 1], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(single.cls_logits, batched.cls_logits[i:i + 1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("num_classes", [1, 2, 5])
@pytest.mark.parametrize("suppress", ["rest", "bottom"])
def test_gradients_finite(num_classes, suppress):
    cfg = DOEIConfig(enabled=True, st_p2c=0.3, st_c2c=0.5, af_p2c=3.0, sf_p2c=-1.0, suppress=suppress)
    m = _tiny(cfg, num_classes=num_classes).train()
    for x in [torch.randn(2, 3, 32, 32), torch.zeros(2, 3, 32, 32), torch.ones(2, 3, 40, 24) * 3]:
        m.zero_grad()
        cls_logits, patch_logits = m(x)
        (cls_logits.sum() + patch_logits.sum()).backward()
        grads = [p.grad for p in m.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert torch.isfinite(cls_logits).all()


def test_c1_skips_cpdo():
    x, a = torch.randn(2, 1 + 9, 4), torch.softmax(torch.randn(2, 10, 10), -1)
    cfg = DOEIConfig(enabled=True, ppdo=False, cpdo=True)
    assert doei_update(x, a, 1, 1, 4, cfg) is x


def test_bfloat16_matches_float32():
    torch.manual_seed(1)
    x = torch.randn(2, 3 + 16, 8)
    a = torch.softmax(torch.randn(2, 19, 19), -1)
    cfg = DOEIConfig(enabled=True, st_p2c=0.25, st_c2c=0.5)
    y32 = doei_update(x, a, 3, 1, 4, cfg)
    y16 = doei_update(x.bfloat16(), a.bfloat16(), 3, 1, 4, cfg)
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y32, atol=0.05, rtol=0.02)
    # and a model forward under CPU autocast
    m = _tiny(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cl, pl = m(torch.randn(2, 3, 32, 32))
    assert torch.isfinite(cl.float()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu():
    m = _tiny(DOEIConfig(enabled=True, st_p2c=0.2, st_c2c=0.5))
    x = torch.randn(2, 3, 32, 32)
    cpu = _outputs(m, x)
    gpu = _outputs(m.cuda(), x.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)


def test_config_strict_keys():
    cfg = from_dict(DOEIConfig, {"enabled": True, "layers": [1, 2], "suppress": "bottom", "af_p2c": 1})
    assert cfg.layers == [1, 2] and cfg.af_p2c == 1.0
    with pytest.raises(DoeiError, match="af_pc2"):
        from_dict(DOEIConfig, {"af_pc2": 1.0})
    with pytest.raises(DoeiError, match="suppress"):
        from_dict(DOEIConfig, {"suppress": "top"})
    with pytest.raises(DoeiError, match="alpha"):
        from_dict(DOEIConfig, {"alpha": 2.0})


# ---------------------------------------------------------------- memory (issue #13)
def _saved_bytes(model, x) -> int:
    """Bytes of the unique storages one training forward saves for backward (parameters, input excluded)."""
    skip = {p.untyped_storage().data_ptr() for p in model.parameters()} | {x.untyped_storage().data_ptr()}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(seen.values())


def test_doei_saves_no_copy_of_the_tokens_for_backward():
    """DOEI adds only its own small tensors to what a training forward saves: per DOEI block and image
    the class tokens (C·D), the PPDO factor and weights (2·C·P) and the CPDO ones (2·C²), the per-head
    class rows and columns of the attention (H·C·(T + P), doei.core.attention.class_attention), plus Ĝ
    (P² per image) once. It used to save a view of the block's whole output [B, T, D] (a no-op
    ``.float()``), i.e. one more copy of the tokens per block."""
    c, d, depth, b = 3, 64, 3, 2
    cfg = DOEIConfig(enabled=True, ppdo=True, cpdo=True, hfa=True, st_p2c=0.2, st_c2c=0.5)

    def make(doei):
        torch.manual_seed(0)
        return MCTformerV2(num_classes=c, img_size=32, patch_size=8, embed_dim=d, depth=depth, num_heads=2,
                           doei=doei).train()

    x = torch.randn(b, 3, 32, 32)
    p, t = 16, c + 16
    extra = _saved_bytes(make(cfg), x) - _saved_bytes(make(None), x)
    heads = 2
    bound = 4 * b * (depth * (c * d + 2 * c * p + 2 * c * c + heads * c * (t + p)) + p * p)
    assert 0 < extra <= bound, (extra, bound)
    assert bound < 4 * b * depth * t * d      # the old copy of the tokens alone would not fit


def test_class_tokens_f32_owns_its_storage():
    from doei.core.ppdo import class_tokens_f32

    for b in (1, 2):
        x = torch.randn(b, 5, 4)
        got = class_tokens_f32(x, 2)
        assert got.dtype == torch.float32 and torch.equal(got, x[:, :2])
        assert got.untyped_storage().nbytes() == b * 2 * 4 * 4    # not a view of x's [B, T, D]
    xb = x.bfloat16()
    assert torch.equal(class_tokens_f32(xb, 2), xb[:, :2].float())
