"""Fused attention and DOEI without the T×T matrix (doei.core.attention, models.vit.Attention): the same
values and gradients as the eager path, to float rounding.

Tolerances: float64 1e-8 relative (the paths are the same mathematics; only the summation order
differs); float32 rtol 1e-4 / atol 1e-5 on outputs and gradients (atol relative to each tensor's largest
entry where that exceeds 1; the Conformer's measured worst is 1e-5 of it, the ViTs' ~1e-6).
"""
from __future__ import annotations

import pytest
import torch

from doei.core import DOEIConfig
from doei.core import attention
from doei.core.attention import ClassAttention, class_attention, eager_attention
from doei.models.registry import create_model
from doei.models.vit import Attention, merge_reads, set_attention_impl


def _qkv(dtype, b=2, h=3, t=23, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, t, d, generator=g, dtype=dtype).requires_grad_(True) for _ in range(3)]


def _loss_terms(dtype, c, t, d, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 3, t, d, generator=g, dtype=dtype), torch.randn(2, c, t, generator=g, dtype=dtype),
            torch.randn(2, t - c, c, generator=g, dtype=dtype))


@pytest.mark.parametrize("kernel", ["cpu", "generic"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-6)])
# out_rows: rows whose output gets a gradient (the others none: class rows only, class and patch rows, or
# every row of the first image, as MCTformer-V2's head gives at initialisation; "entry0": the first entry of
# every output row of the first image gets none, the entry the CPU backward's fold uses)
@pytest.mark.parametrize("out_rows", [None, slice(0, 4), slice(0, 11), "image", "entry0"])
@pytest.mark.parametrize("block_diag", [True, False])     # the two ways of forming the class products
def test_class_attention_equals_eager_values_and_gradients(kernel, dtype, tol, out_rows, block_diag, monkeypatch):
    monkeypatch.setattr(attention, "BLOCK_DIAG_MAX_ROWS", 10 ** 6 if block_diag else 0)
    c, t, d = 4, 23, 8
    q, k, v = _qkv(dtype, t=t, d=d)
    w_out, w_rows, w_cols = _loss_terms(dtype, c, t, d)
    if out_rows == "image":
        w_out[0] = 0
    if out_rows == "entry0":
        w_out[0, ..., 0] = 0
    keep = out_rows if isinstance(out_rows, slice) else slice(None)
    out, attn = eager_attention(q, k, v, d ** -0.5)
    mean = attn.mean(dim=1)
    ref = (out[:, :, keep] * w_out[:, :, keep]).sum() + (mean[:, :c] * w_rows).sum() + (mean[:, c:, :c] * w_cols).sum()
    g_ref = torch.autograd.grad(ref, (q, k, v))
    out2, part = class_attention(q, k, v, d ** -0.5, c, kernel=kernel, chunk=7)
    assert isinstance(part, ClassAttention) and part.rows.shape == (2, c, t) and part.cols.shape == (2, t - c, c)
    got = (out2[:, :, keep] * w_out[:, :, keep]).sum() + (part.rows * w_rows).sum() + (part.cols * w_cols).sum()
    g_got = torch.autograd.grad(got, (q, k, v))
    torch.testing.assert_close(out2, out, rtol=0, atol=tol)
    torch.testing.assert_close(part.rows, mean[:, :c], rtol=0, atol=tol)
    torch.testing.assert_close(part.cols, mean[:, c:, :c], rtol=0, atol=tol)
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=tol * 5)


def test_class_attention_backward_leaves_its_output_untouched():
    """The CPU backward hands the kernel a modified output in O's own storage and restores it: O is bit for bit
    the same afterwards, autograd's version of it unchanged, and a second backward (retain_graph) gives the
    same gradients."""
    q, k, v = _qkv(torch.float32, t=30, d=8)
    out, part = class_attention(q, k, v, 0.35, 3, kernel="cpu")
    before, version = out.detach().clone(), out._version
    w = [torch.randn(x.shape, generator=torch.Generator().manual_seed(i)) for i, x in enumerate((out, part.rows, part.cols))]
    loss = sum((x * wi).sum() for x, wi in zip((out, part.rows, part.cols), w))
    g1 = torch.autograd.grad(loss, (q, k, v), retain_graph=True)
    assert torch.equal(out.detach(), before) and out._version == version
    g2 = torch.autograd.grad(loss, (q, k, v), retain_graph=True)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)
    g3 = torch.autograd.grad(loss, q, create_graph=True)[0]     # its backward is not differentiable: refused
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        torch.autograd.grad(g3.sum(), q)


def test_class_attention_rows_only_and_argument_checks():
    q, k, v = _qkv(torch.float64)
    out, part = class_attention(q, k, v, 0.3, 2, cols=False)
    _, attn = eager_attention(q, k, v, 0.3)
    assert part.cols is None
    torch.testing.assert_close(part.rows, attn.mean(1)[:, :2])
    g = torch.autograd.grad(part.rows.sum() + out.sum(), q)[0]
    g_ref = torch.autograd.grad(attn.mean(1)[:, :2].sum() + (attn @ v).sum(), q)[0]
    torch.testing.assert_close(g, g_ref)
    with pytest.raises(ValueError, match="num_cls"):
        class_attention(q, k, v, 0.3, 0)
    with pytest.raises(ValueError, match="kernel"):
        class_attention(q, k, v, 0.3, 1, kernel="flash")
    with pytest.raises(ValueError, match="read"):
        Attention(16, 2)(torch.randn(1, 5, 16), read="some")
    with pytest.raises(ValueError, match="impl"):
        set_attention_impl(torch.nn.Linear(2, 2), "fast")
    assert merge_reads("none", "class", "rows") == "class" and merge_reads("rows", "full") == "full"


def test_class_attention_under_bfloat16_autocast_is_close():
    q, k, v = (t.detach().bfloat16().requires_grad_(True) for t in _qkv(torch.float32, t=40, d=16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, part = class_attention(q, k, v, 0.25, 3)
    _, attn = eager_attention(q.float(), k.float(), v.float(), 0.25)
    assert out.dtype == torch.bfloat16 and part.rows.dtype == torch.float32
    torch.testing.assert_close(part.cols, attn.mean(1)[:, 3:, :3], rtol=0, atol=2e-2)
    (out.float().sum() + part.rows.sum() + part.cols.sum()).backward()
    assert q.grad.dtype == torch.bfloat16 and torch.isfinite(q.grad.float()).all()


MODELS = [
    ("mctformer_v2_tiny_conv", dict(enabled=True, st_p2c=0.2, st_c2c=0.5)),
    ("tscam_tiny_conv", dict(enabled=True, cpdo=False, st_p2c=0.2)),
    ("transcam_conformer_synth", dict(enabled=True, cpdo=False, st_p2c=0.2)),
]
SMALL = dict(depth=3, embed_dim=32, num_heads=2, img_size=32)   # the ViT models, shrunk (fast tests)


def _model(name, doei=None):
    torch.manual_seed(0)
    kw = {} if name.startswith("transcam") else SMALL
    return create_model(name, num_classes=4, doei=doei, **kw)


def _step(model, x):
    torch.manual_seed(0)
    out = model(x)
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum((o * torch.linspace(-1, 1, o.shape[-1], dtype=o.dtype)).sum() for o in outs)
    loss.backward()
    return [o.detach() for o in outs], {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name,doei,on", [(n, d, on) for n, d in MODELS for on in (False, True)
                                          if on or not n.startswith("transcam")])   # the Conformer is slow
def test_training_step_fused_equals_eager(name, doei, on):
    """The default path (fused where nobody reads the attention, class rows/columns for DOEI) against
    the eager path pinned with set_attention_impl: outputs and every parameter gradient (float64)."""
    dtype = torch.float32 if name.startswith("transcam") else torch.float64   # float64 convolutions are slow
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-8, atol=1e-10)
    model = _model(name, DOEIConfig(**doei) if on else None).to(dtype).train()
    x = torch.randn(2, 3, 32, 32, dtype=dtype, generator=torch.Generator().manual_seed(3))
    out_auto, g_auto = _step(model, x)
    model.zero_grad(set_to_none=True)
    out_eager, g_eager = _step(set_attention_impl(model, "eager"), x)
    assert g_auto.keys() == g_eager.keys() and len(g_auto) > 10
    for a, b in zip(out_auto, out_eager):   # atol scaled by the output's magnitude (Conformer logits reach ~5)
        torch.testing.assert_close(a, b, rtol=tol["rtol"], atol=tol["atol"] * max(1.0, float(b.abs().max())))
    for n in g_auto:   # relative to the tensor's largest entry (BatchNorm-cancelled biases have ~0 gradients)
        err = float((g_auto[n] - g_eager[n]).abs().max())
        assert err <= tol["rtol"] * float(g_eager[n].abs().max()) + tol["atol"], (n, err)


def test_training_step_float32_tolerance():
    model = _model("mctformer_v2_tiny_conv", DOEIConfig(**MODELS[0][1])).train()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    out_auto, g_auto = _step(model, x)
    model.zero_grad(set_to_none=True)
    out_eager, g_eager = _step(set_attention_impl(model, "eager"), x)
    for a, b in zip(out_auto, out_eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for n in g_auto:
        torch.testing.assert_close(g_auto[n], g_eager[n], rtol=1e-4, atol=1e-5, msg=n)


def test_cams_reading_rows_only_equal_the_full_reading():
    """MCTformer without patch refinement and TS-CAM read only class rows: fused blocks + rows give
    the CAMs of the all-eager forward."""
    x = torch.randn(2, 3, 32, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    mct = _model("mctformer_v2_tiny_conv").double().eval()
    ts = _model("tscam_tiny_conv").double().eval()
    with torch.no_grad():
        for kind in ("fused", "mtatt", "patchcam"):
            full = mct.forward_cams(x, n_layers=2, kind=kind)
            rows = mct.forward_cams(x, n_layers=2, kind=kind, patch_attn=False)
            assert rows.patch_attn is None and full.patch_attn.shape[0] == mct.depth
            torch.testing.assert_close(rows.cams, full.cams, rtol=1e-10, atol=1e-12)
        full, rows = ts.forward_cams(x), ts.forward_cams(x, patch_attn=False)
        torch.testing.assert_close(rows.cams, full.cams, rtol=1e-10, atol=1e-12)
        assert rows.patch_attn is None
        src = ts.cam_source()(x)
        torch.testing.assert_close(src.cams, torch.relu(full.cams), rtol=1e-10, atol=1e-12)
