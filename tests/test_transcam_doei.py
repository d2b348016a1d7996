"""The Conformer's structure, DOEI hook, non-square inputs and loading, on the small CPU variant."""
from __future__ import annotations

import argparse
import math

import pytest
import torch
from torch import nn

from doei.core.config import DOEIConfig
from doei.errors import DoeiError
from doei.models.conformer import (Conformer, load_transcam_weights, transcam_conformer_synth, transcam_loss,
                                   transcam_maps)

DEPTH = 6


def synth(doei: DOEIConfig | None = None, seed: int = 0) -> Conformer:
    torch.manual_seed(seed)
    return transcam_conformer_synth(num_classes=10, doei=doei).eval()


@pytest.fixture(scope="module")
def base() -> Conformer:
    return synth()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def run(model: Conformer, x: torch.Tensor):
    with torch.no_grad():
        return model.forward_all(x, need_attn=True, all_attn=True)


def with_doei(base: Conformer, cfg: DOEIConfig) -> Conformer:
    m = transcam_conformer_synth(num_classes=10, doei=cfg).eval()
    m.load_state_dict(base.state_dict())
    return m


def test_norm_eps_follow_the_official_code(base):
    assert base.trans_norm.eps == 1e-5 and base.bn1.eps == 1e-5
    assert base.trans_1.norm1.eps == 1e-6 and base.conv_trans_2.squeeze_block.ln.eps == 1e-6
    assert base.conv_1.bn1.eps == 1e-6 and base.conv_trans_3.expand_block.bn.eps == 1e-6
    assert isinstance(base.conv_trans_6.fusion_block.residual_conv, nn.Conv2d)   # last fusion: 1×1 projection
    assert base.conv_trans_6.fusion_block.conv2.stride == (1, 1)                   # ... at stride 1 (TransCAM)


def test_outputs_shapes_and_forward_variants(base, images):
    out = run(base, images)
    assert out.grid == (8, 8) and out.x_conv.shape == (2, 11, 8, 8) and out.tokens.shape == (2, 65, 128)
    assert len(out.attn_layers) == DEPTH and out.attn_sum.shape == (2, 65, 65)
    torch.testing.assert_close(out.attn_layers[0].sum(-1), torch.ones(2, 65))
    torch.testing.assert_close(torch.stack(out.attn_layers).sum(0), out.attn_sum)
    with torch.no_grad():
        lc, lt = base(images)
        c_conv, c_trans, cams = base.cam_forward(images, "transcam")
    # the training forward runs fused attention, forward_all(need_attn) eager: equal to float rounding
    torch.testing.assert_close(lc, out.logits_conv[:, 1:], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(lt, out.logits_trans[:, 1:], rtol=1e-5, atol=1e-3)
    assert torch.equal(c_conv, out.logits_conv) and torch.equal(cams, transcam_maps(out.x_conv, out.attn_sum))
    # transcam refines each class map with the patch-to-patch attention: hand-check one entry
    a = out.attn_sum[0, 1:, 1:]
    want = (a[5] * out.x_conv[0, 3].flatten()).sum()
    torch.testing.assert_close(cams[0, 3].flatten()[5], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(DoeiError, match="gradcam"):
        transcam_maps(out.x_conv, out.attn_sum, "gradcam")


def test_non_square_input_and_bad_sizes(base):
    x = torch.randn(1, 3, 64, 96)
    out = run(base, x)
    assert out.grid == (8, 12) and out.x_conv.shape == (1, 11, 8, 12) and out.attn_sum.shape == (1, 97, 97)
    assert transcam_maps(out.x_conv, out.attn_sum, "clsattn").shape == (1, 11, 8, 12)
    for bad in ((1, 3, 60, 64), (1, 1, 64, 64)):
        with pytest.raises(DoeiError, match="Conformer input"):
            base.forward_all(torch.randn(*bad))


def test_doei_off_is_bit_identical_to_no_hook(base, images):
    want = run(base, images)
    for cfg in (DOEIConfig(enabled=False),
                DOEIConfig(enabled=True, af_p2c=0.0, sf_p2c=0.0),
                DOEIConfig(enabled=True, ppdo=False, cpdo=True)):       # CPDO alone is a no-op at C = 1
        got = run(with_doei(base, cfg), images)
        for name in ("logits_conv", "logits_trans", "x_conv", "tokens", "attn_sum"):
            assert torch.equal(getattr(got, name), getattr(want, name)), (cfg, name)


def test_doei_acts_after_the_block_before_next_block_and_fcu(base, images):
    want = run(base, images)
    last = run(with_doei(base, DOEIConfig(enabled=True, layers=[DEPTH])), images)
    # after the last block: no attention changes; PPDO moves only patch tokens (C = 1, no CPDO), so
    # the cls-token classifier is unchanged while the CNN head sees them through the last FCUUp
    assert all(torch.equal(a, b) for a, b in zip(last.attn_layers, want.attn_layers))
    assert torch.equal(last.tokens[:, 0], want.tokens[:, 0]) and torch.equal(last.logits_trans, want.logits_trans)
    assert not torch.equal(last.tokens[:, 1:], want.tokens[:, 1:])
    assert not torch.equal(last.x_conv, want.x_conv)
    first = run(with_doei(base, DOEIConfig(enabled=True, layers=[1])), images)
    assert torch.equal(first.attn_layers[0], want.attn_layers[0])
    assert not torch.equal(first.attn_layers[1], want.attn_layers[1])


def test_doei_stats_ppdo_only_and_hfa_matters(base, images):
    m = with_doei(base, DOEIConfig(enabled=True))
    out = run(m, images)
    assert [s["block"] for s in out.doei_stats] == list(range(1, DEPTH + 1))
    # k_i = floor((L - i) · st · P) with P = 64 patches, st 0.02; CPDO never runs (C = 1)
    assert [s["k_p2c"] for s in out.doei_stats] == [math.floor((DEPTH - i) * 0.02 * 64 + 1e-6)
                                                   for i in range(1, DEPTH + 1)]
    assert all(s["k_c2c"] is None and s["delta_ratio_patch"] > 0 for s in out.doei_stats)
    no_hfa = run(with_doei(base, DOEIConfig(enabled=True, hfa=False)), images)
    assert not torch.equal(no_hfa.logits_trans, out.logits_trans)


def test_doei_batch_independence(base, images):
    m = with_doei(base, DOEIConfig(enabled=True))
    both = run(m, images)
    one = run(m, images[1:])
    # float noise only (conv kernels differ by batch size): README §4 tolerances
    for name in ("logits_conv", "logits_trans", "x_conv", "tokens"):
        a, b = getattr(both, name)[1:], getattr(one, name)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_doei_gradients_are_finite(images):
    m = synth(DOEIConfig(enabled=True, af_p2c=3.0, sf_p2c=-1.0)).train()
    labels = torch.tensor([[1.0] + [0.0] * 9, [0.0, 1.0, 1.0] + [0.0] * 7])
    loss = transcam_loss(*m(images), labels)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_loading_official_layouts_from_files(base, images, tmp_path):
    sd = base.state_dict()
    want = run(base, images).logits_trans
    layouts = {"plain": sd, "model": {"model": sd}, "module": {"state_dict": {f"module.{k}": v for k, v in sd.items()}}}
    for name, layout in layouts.items():
        torch.save(layout, tmp_path / f"{name}.pth")
        target = load_transcam_weights(synth(seed=7), tmp_path / f"{name}.pth").eval()
        assert torch.equal(run(target, images).logits_trans, want), name
    with pytest.raises(DoeiError, match="not found"):
        load_transcam_weights(synth(), tmp_path / "missing.pth")
    torch.save({"model": sd, "args": argparse.Namespace(lr=1.0)}, tmp_path / "pickle.pth")
    with pytest.raises(DoeiError, match="weights-only"):     # never unpickles arbitrary objects
        load_transcam_weights(synth(), tmp_path / "pickle.pth")


def test_doei_stats_attribute_records_as_the_vit_does(base, images):
    """``model.doei_stats = []`` then ``model(x)`` collects the per-block statistics (the protocol the
    study's block_stats uses for every family); ``None`` (the default) records nothing."""
    m = with_doei(base, DOEIConfig(enabled=True)).eval()
    assert m.doei_stats is None
    with torch.no_grad():
        want = m.forward_all(images).doei_stats
        m.doei_stats = []
        m(images)
    assert [s["block"] for s in m.doei_stats] == list(range(1, DEPTH + 1))
    assert [s["k_p2c"] for s in m.doei_stats] == [s["k_p2c"] for s in want]
    assert all(s["delta_ratio_patch"] > 0 for s in m.doei_stats)


def test_training_forward_computes_no_statistics_unless_asked(base, images, monkeypatch):
    """The training forward does not compute DOEI's per-block norms (a host sync each) unless
    ``model.doei_stats`` is set; the numbers are the same either way."""
    import doei.core.doei as core

    m = with_doei(base, DOEIConfig(enabled=True)).eval()
    with torch.no_grad():
        want = m(images)
    monkeypatch.setattr(core, "_ratio", lambda *a: (_ for _ in ()).throw(AssertionError("statistics computed")))
    with torch.no_grad():
        got = m(images)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
