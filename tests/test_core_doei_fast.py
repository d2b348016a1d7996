"""DOEI's fast token update (doei.core.fused, issue #26) against today's formula written out plainly:
values and gradients (tokens, attention, Ĝ) in float64 for every path `doei_update` takes, the selection
without sorting against the stable sort (ties, NaN, k = 0 and n), bfloat16 under autocast, and the
incoming gradient left untouched."""
from __future__ import annotations

import pytest
import torch

from doei.core import ClassAttention, DOEIConfig, doei_update, num_selected
from doei.core.cpdo import class_factor
from doei.core.selection import image_keys, random_ranks, rank_below, rank_desc, selection_factor, selection_weights


# ---------------------------------------------------------------- the plain formula (docs/doei-method.md)
def _ranks(s: torch.Tensor) -> torch.Tensor:
    order = torch.sort(s, dim=-1, descending=True, stable=True).indices
    return torch.argsort(order, dim=-1)


def _factor(ranks, n, k, af, sf, mode):
    low = k if mode == "rest" else max(k, n - k)
    return af * (ranks < k).double() + sf * ((ranks >= low) & (ranks < n)).double()


def reference(x, a, c, block, depth, cfg, g=None, keys=None):
    """X' for x [B, T, D], head-mean attention a [B, T, T], as today's DOEI defines it (float64)."""
    p = x.shape[1] - c
    out_c, out_p = x[:, :c], x[:, c:]
    xc = x[:, :c]
    if cfg.ppdo:
        s = a[:, :c, c:] + a[:, c:, :c].transpose(1, 2)
        if cfg.hfa and g is not None and cfg.alpha:
            s = (1 - cfg.alpha) * s + cfg.alpha * s @ g.transpose(1, 2)
        k = num_selected(block, depth, cfg.st_p2c, p)
        r = (random_ranks(keys, cfg.control_seed, block, c, p) if cfg.select == "random"
             else _ranks(s.detach()))
        if cfg.weights == "uniform":
            s = s.mean(-1, keepdim=True).expand_as(s)
        if cfg.suppress_target == "class":
            w = s * _factor(r, p, k, cfg.af_p2c, cfg.sf_p2c, cfg.suppress)
            out_p = out_p + w.transpose(1, 2) @ xc
        else:
            w = s * _factor(r, p, k, cfg.af_p2c, 0.0, cfg.suppress)
            w_sup = (s * _factor(r, p, k, 0.0, cfg.sf_p2c, cfg.suppress)).sum(1)
            out_p = out_p + w.transpose(1, 2) @ xc + w_sup.unsqueeze(-1) * x[:, c:]
    if cfg.cpdo and c > 1:
        s = a[:, :c, :c] + a[:, :c, :c].transpose(1, 2)
        eye = torch.eye(c, dtype=torch.bool)
        k = num_selected(block, depth, cfg.st_c2c, c - 1)
        r = (random_ranks(keys, cfg.control_seed, -block, c, c, True) if cfg.select == "random"
             else _ranks(s.detach().masked_fill(eye, float("-inf"))))
        if cfg.weights == "uniform":
            s = (s.masked_fill(eye, 0).sum(-1, keepdim=True) / (c - 1)).expand_as(s)
        out_c = out_c + (s * _factor(r, c - 1, k, cfg.af_c2c, cfg.sf_c2c, cfg.suppress)) @ xc
    return torch.cat([out_c, out_p], 1)


def _inputs(c, b=3, p=12, d=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c + p, d, generator=gen, dtype=torch.float64)
    a = torch.softmax(torch.randn(b, c + p, c + p, generator=gen, dtype=torch.float64), -1)
    g = torch.softmax(torch.randn(b, p, p, generator=gen, dtype=torch.float64), -1)
    return x, a, g


def _run(fn, x, a, g, c, class_rows):
    """Values and gradients w.r.t. x, a and g of ``fn(x, attn, g)`` against a fixed random output gradient;
    ``attn``: a itself, or (``class_rows``) its class rows/columns as :class:`ClassAttention`."""
    x, a, g = (t.clone().requires_grad_(True) for t in (x, a, g))
    y = fn(x, ClassAttention(a[:, :c], a[:, c:, :c]) if class_rows else a, g)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype))
    return [y.detach()] + [t.grad if t.grad is not None else torch.zeros_like(t) for t in (x, a, g)]


CASES = [dict(), dict(suppress="bottom"), dict(hfa=False), dict(sf_c2c=-0.3, st_c2c=0.4), dict(cpdo=False),
         dict(ppdo=False, sf_c2c=-0.2), dict(st_p2c=0.4, suppress="bottom", sf_c2c=-0.1, st_c2c=0.6),
         dict(st_p2c=0.0), dict(st_p2c=1.0, st_c2c=1.0), dict(suppress_target="patch"),
         dict(suppress_target="patch", suppress="bottom", st_p2c=0.3), dict(weights="uniform"),
         dict(weights="uniform", suppress="bottom", sf_c2c=-0.2), dict(select="random"),
         dict(select="random", suppress="bottom", sf_c2c=-0.2)]


@pytest.mark.parametrize("c", [1, 4])
@pytest.mark.parametrize("class_rows", [False, True])
@pytest.mark.parametrize("kw", CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_matches_plain_formula_float64(c, class_rows, kw):
    x, a, g = _inputs(c)
    cfg = DOEIConfig(enabled=True, **kw)
    keys = image_keys(torch.arange(x.shape[0], dtype=torch.float64).view(-1, 1, 1, 1).expand(-1, 3, 2, 2))
    got = _run(lambda x, at, g: doei_update(x, at, c, 2, 6, cfg, g, keys=keys), x, a, g, c, class_rows)
    want = _run(lambda x, at, g: reference(x, at, c, 2, 6, cfg, g, keys), x, a, g, c, False)
    for name, u, v in zip(("value", "d x", "d attention", "d g_hat"), got, want):
        torch.testing.assert_close(u, v, atol=1e-12, rtol=1e-12, msg=lambda m: f"{name}: {m}")
    assert got[0].dtype == torch.float64


def test_heavy_ties_and_stats():
    """Quantised attention (many exactly equal scores) selects as the stable sort does; stats agree."""
    c, p = 3, 16
    gen = torch.Generator().manual_seed(5)
    a = torch.randint(0, 3, (2, c + p, c + p), generator=gen).double() / 8
    x = torch.randn(2, c + p, 4, generator=gen, dtype=torch.float64)
    for kw in (dict(hfa=False, st_p2c=0.1, st_c2c=0.3), dict(hfa=False, suppress="bottom", st_p2c=0.05)):
        cfg = DOEIConfig(enabled=True, sf_c2c=-0.5, **kw)
        stats: dict = {}
        got = doei_update(x, ClassAttention(a[:, :c], a[:, c:, :c]), c, 1, 4, cfg, None, stats)
        torch.testing.assert_close(got, reference(x, a, c, 1, 4, cfg), atol=1e-12, rtol=0)
        d = reference(x, a, c, 1, 4, cfg) - x
        want = (d[:, c:].norm(dim=(1, 2)) / x[:, c:].norm(dim=(1, 2))).mean()
        assert stats["delta_ratio_patch"] == pytest.approx(float(want), rel=1e-6)   # _ratio: float32 norms
        assert stats["k_p2c"] == num_selected(1, 4, cfg.st_p2c, p)
        assert stats["k_c2c"] == num_selected(1, 4, cfg.st_c2c, c - 1)


# ---------------------------------------------------------------- selection without sorting
def _score_sets():
    gen = torch.Generator().manual_seed(0)
    yield torch.rand(4, 3, 17, generator=gen)
    yield torch.randint(0, 4, (4, 3, 17), generator=gen).float() / 4          # heavy ties
    yield torch.zeros(2, 2, 9)                                               # all tied
    z = torch.randint(0, 3, (3, 2, 11), generator=gen).double() - 1
    yield torch.where(z == 0, torch.tensor(-0.0, dtype=torch.float64), z)    # -0.0 and 0.0 tie
    w = torch.rand(2, 3, 10, generator=gen)
    w[0, 0, [1, 4]] = float("nan")
    w[1, 2, 3] = float("inf")
    w[1, 1, [0, 7]] = float("-inf")
    yield w                                                                  # NaN ranks first, ±inf


@pytest.mark.parametrize("case", range(5))
def test_rank_below_equals_stable_sort(case):
    s = list(_score_sets())[case]
    n = s.shape[-1]
    want = rank_desc(s)
    for m in range(n + 1):
        got = rank_below(s, m)
        assert got.dtype == s.dtype
        assert torch.equal(got.bool(), want < m), m


@pytest.mark.parametrize("case", range(5))
@pytest.mark.parametrize("mode", ["rest", "bottom"])
def test_selection_factor_equals_weights_of_ranks(case, mode):
    s = list(_score_sets())[case]
    n = s.shape[-1]
    ranks = rank_desc(s)
    for cand in (n, n - 1, n - 3):
        for k in sorted({0, 1, cand // 2, cand - 1, cand}):
            for af, sf in ((0.7, -0.3), (1.0, 0.0), (0.0, -0.5), (0.3, -0.7)):   # float64: (0.3 + 0.7) - 0.7 != 0.3
                got = selection_factor(s, cand, k, af, sf, mode)
                torch.testing.assert_close(got, selection_weights(ranks, cand, k, af, sf, mode, s.dtype),
                                           atol=0, rtol=0)


def test_class_factor_diagonal_last_even_with_infinite_scores():
    gen = torch.Generator().manual_seed(2)
    s = torch.rand(2, 5, 5, generator=gen)
    s = s + s.transpose(1, 2)
    s_inf = s.clone()
    s_inf[0, 3, 1] = s_inf[0, 1, 3] = float("-inf")      # an off-diagonal -inf ties with the masked diagonal
    eye = torch.eye(5, dtype=torch.bool)
    for t in (s, s_inf):
        for k in range(5):
            want = selection_weights(rank_desc(t.masked_fill(eye, float("-inf"))), 4, k, 1.0, -0.5, "rest")
            torch.testing.assert_close(class_factor(t, k, 1.0, -0.5, "rest"), want, atol=0, rtol=0)


# ---------------------------------------------------------------- dtypes and gradients
def test_bfloat16_autocast_close_and_finite():
    torch.manual_seed(3)
    c, p, d = 4, 16, 8
    x = torch.randn(2, c + p, d, requires_grad=True)
    a = torch.softmax(torch.randn(2, c + p, c + p), -1).requires_grad_(True)
    g = torch.softmax(torch.randn(2, p, p), -1)
    cfg = DOEIConfig(enabled=True, st_p2c=0.25, st_c2c=0.5, sf_c2c=-0.2)
    want = doei_update(x, ClassAttention(a[:, :c], a[:, c:, :c]), c, 1, 4, cfg, g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xb = (x * 1).bfloat16()
        got = doei_update(xb, ClassAttention(a[:, :c], a[:, c:, :c]), c, 1, 4, cfg, g)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=0.05, rtol=0.02)
    got.float().square().sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(a.grad).all()
    # a backward called inside the autocast region computes as outside it
    x2, a2 = (t.detach().clone().requires_grad_(True) for t in (x, a))
    y = doei_update(x2, ClassAttention(a2[:, :c], a2[:, c:, :c]), c, 1, 4, cfg, g)
    dy = torch.randn_like(y)
    y.backward(dy)
    want_grads = x2.grad.clone(), a2.grad.clone()
    x2.grad = a2.grad = None
    y = doei_update(x2, ClassAttention(a2[:, :c], a2[:, c:, :c]), c, 1, 4, cfg, g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y.backward(dy)
    torch.testing.assert_close((x2.grad, a2.grad), want_grads, atol=1e-6, rtol=1e-6)


def test_incoming_gradient_not_modified():
    x, a, g = _inputs(3)
    x.requires_grad_(True)
    for cfg in (DOEIConfig(enabled=True), DOEIConfig(enabled=True, suppress_target="patch")):
        y = doei_update(x, a, 3, 1, 4, cfg, g)
        dy = torch.randn_like(y)
        keep = dy.clone()
        y.backward(dy)
        assert torch.equal(dy, keep)
        x.grad = None


def test_double_backward_refused():
    x, a, g = _inputs(2)
    x.requires_grad_(True)
    y = doei_update(x, a, 2, 1, 4, DOEIConfig(enabled=True), g)
    (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|double backward|does not require grad"):
        gx.sum().backward()


def test_mixed_dtypes_keep_each_input_dtype():
    """float64 tokens with float32 attention and Ĝ: computed in float64, each gradient in its input's dtype."""
    x, a, g = _inputs(3)
    x = x.requires_grad_(True)
    a32, g32 = (t.float().requires_grad_(True) for t in (a, g))
    y = doei_update(x, ClassAttention(a32[:, :3], a32[:, 3:, :3]), 3, 1, 4, DOEIConfig(enabled=True), g32)
    y.sum().backward()
    assert y.dtype == x.grad.dtype == torch.float64
    assert a32.grad.dtype == g32.grad.dtype == torch.float32


@pytest.mark.parametrize("hfa", [False, True])
def test_per_part_deltas_equal_the_update_doei_applies(hfa):
    """doei.core.ppdo.ppdo_delta / doei.core.cpdo.cpdo_delta (each part's Δ written as its own tensor) give the
    patch and class parts of what doei_update adds, float64."""
    from doei.core.cpdo import cpdo_delta
    from doei.core.ppdo import ppdo_delta

    gen = torch.Generator().manual_seed(7)
    c, p, depth, block = 4, 9, 6, 2
    x = torch.randn(2, c + p, 5, generator=gen, dtype=torch.float64)
    a = torch.softmax(torch.randn(2, c + p, c + p, generator=gen, dtype=torch.float64), dim=-1)
    g = torch.softmax(torch.randn(2, p, p, generator=gen, dtype=torch.float64), dim=-1) if hfa else None
    cfg = DOEIConfig(enabled=True, ppdo=True, cpdo=True, hfa=hfa, st_c2c=0.1, sf_c2c=-0.3)    # CPDO acts at block 2
    moved = doei_update(x, a, c, block, depth, cfg, g) - x
    d_p, k_p = ppdo_delta(x, a, c, block, depth, cfg.st_p2c, cfg.af_p2c, cfg.sf_p2c, cfg.suppress, g,
                          cfg.alpha if hfa else 0.0)
    d_c, k_c = cpdo_delta(x, a, c, block, depth, cfg.st_c2c, cfg.af_c2c, cfg.sf_c2c, cfg.suppress)
    assert (k_p, k_c) == (num_selected(block, depth, cfg.st_p2c, p), num_selected(block, depth, cfg.st_c2c, c - 1))
    assert d_p.dtype == d_c.dtype == torch.float64
    torch.testing.assert_close(d_p, moved[:, c:], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d_c, moved[:, :c], rtol=1e-12, atol=1e-12)
    assert d_p.abs().max() > 1e-3 and d_c.abs().max() > 1e-3     # both parts act
