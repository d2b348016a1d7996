"""The named readings of docs/doei-method.md ("Named variants", issue #15): hand-computed small cases,
today's reading as the default, off switches bit-identical, and one-line refusals where not implemented."""
from __future__ import annotations

import pytest
import torch

from doei.core import DOEIConfig, doei_update
from doei.core.config import READINGS
from doei.core.hfa import IMAGENET_MEAN, IMAGENET_STD, attention_hfa, raw_rgb
from doei.models.mctformer import MCTformerV2
from doei.models.vit import Attention
from test_core_doei import _toy  # the hand-computed toy (1 image, C = 2, P = 4, D = 2)


def test_defaults_are_todays_reading():
    cfg = DOEIConfig()
    assert {k: getattr(cfg, k) for k in READINGS} == {k: v[0] for k, v in READINGS.items()}
    assert cfg.nondefault_readings() == {}
    with pytest.raises(ValueError, match="heads must be one of"):
        DOEIConfig(heads="all")
    with pytest.raises(ValueError, match="hfa_target"):
        DOEIConfig(hfa_target="tokens")


def test_suppress_on_patch_tokens_hand_computed():
    # S_p: class 0 [0.5, 0.1, 0.3, 0.0], class 1 [0.0, 0.4, 0.2, 0.4]; k = 2: class 0 keeps {0, 2}, class 1 {1, 3}
    # amplification (AF 1) along the class tokens: p0 0.5*X_c0, p1 0.4*X_c1, p2 0.3*X_c0, p3 0.4*X_c1
    # suppression (SF -0.5) on the patch token itself: p1 -0.5*0.1*X_p1 = [-0.1, 0], p2 -0.5*0.2*X_p2 = [0, -0.2]
    x, a = _toy()
    cfg = DOEIConfig(enabled=True, cpdo=False, hfa=False, st_p2c=0.5, af_p2c=1.0, sf_p2c=-0.5, suppress_target="patch")
    y = doei_update(x, a, 2, 1, 2, cfg)
    want = x.clone()
    want[0, 2:] += torch.tensor([[0.5, 0.0], [-0.1, 0.4], [0.3, -0.2], [0.0, 0.4]])
    torch.testing.assert_close(y, want, atol=1e-6, rtol=0)
    # SF = 0: both readings are the same update
    c0 = DOEIConfig(enabled=True, cpdo=False, hfa=False, st_p2c=0.5, sf_p2c=0.0)
    torch.testing.assert_close(doei_update(x, a, 2, 1, 2, DOEIConfig(**{**c0.__dict__, "suppress_target": "patch"})),
                               doei_update(x, a, 2, 1, 2, c0), atol=1e-7, rtol=0)


def test_per_head_selection_is_the_mean_of_single_head_updates():
    torch.manual_seed(0)
    b, h, c, p, d = 2, 3, 3, 8, 4
    x = torch.randn(b, c + p, d)
    a = torch.softmax(torch.randn(b, h, c + p, c + p), -1)
    cfg = DOEIConfig(enabled=True, hfa=False, st_p2c=0.3, st_c2c=0.5, sf_c2c=-0.2, heads="each")
    y = doei_update(x, a, c, 1, 3, cfg)
    # by linearity: the per-head reading = the mean over heads of the head-mean reading run on each head alone
    single = DOEIConfig(**{**cfg.__dict__, "heads": "mean"})
    want = x + torch.stack([doei_update(x, a[:, i], c, 1, 3, single) - x for i in range(h)]).mean(0)
    torch.testing.assert_close(y, want, atol=1e-6, rtol=1e-6)
    # identical heads: the same as the head-mean reading
    same = a[:, :1].expand(b, h, c + p, c + p)
    torch.testing.assert_close(doei_update(x, same, c, 1, 3, cfg), doei_update(x, a[:, 0], c, 1, 3, single),
                               atol=1e-6, rtol=1e-6)


def test_attention_hfa_hand_computed():
    # C = 1, P = 2; one query row [0.2, 0.6, 0.2]; Ĝ = [[0.5, 0.5], [0, 1]], α = 0.5
    # A_p Ĝ = [0.3, 0.5]; mixed = 0.5 [0.6, 0.2] + 0.5 [0.3, 0.5] = [0.45, 0.35]; class column unchanged
    attn = torch.tensor([0.2, 0.6, 0.2]).view(1, 1, 1, 3)
    g = torch.tensor([[[0.5, 0.5], [0.0, 1.0]]])
    out = attention_hfa(attn, g, 0.5, 1)
    torch.testing.assert_close(out, torch.tensor([0.2, 0.45, 0.35]).view(1, 1, 1, 3), atol=1e-7, rtol=0)
    assert attention_hfa(attn, g, 0.0, 1) is attn
    # rows stay distributions for a random case
    torch.manual_seed(1)
    a = torch.softmax(torch.randn(2, 3, 7, 7), -1)
    gg = torch.rand(2, 5, 5)
    gg = gg / gg.sum(-1, keepdim=True)
    torch.testing.assert_close(attention_hfa(a, gg, 0.35, 2).sum(-1), torch.ones(2, 3, 7))


def test_raw_rgb_inverts_the_normalisation():
    from doei.data.transforms import IMAGENET_MEAN as M, IMAGENET_STD as S

    assert (IMAGENET_MEAN, IMAGENET_STD) == (M, S)
    pix = torch.tensor([0.0, 128.0, 255.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    norm = (pix / 255 - torch.tensor(M).view(1, 3, 1, 1)) / torch.tensor(S).view(1, 3, 1, 1)
    torch.testing.assert_close(raw_rgb(norm), pix, atol=1e-4, rtol=0)


def test_attention_views_logits_and_heads():
    torch.manual_seed(0)
    att = Attention(8, num_heads=2).eval()
    x = torch.randn(1, 5, 8)
    out0, mean0 = att(x)
    qkv = att.qkv(x).reshape(1, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    logits = (qkv[0] @ qkv[1].transpose(-2, -1)) * att.scale
    for source, heads, want in [("softmax", "mean", mean0), ("logits", "mean", logits.mean(1)),
                                ("softmax", "each", logits.softmax(-1)), ("logits", "each", logits)]:
        out, mean, scores = att(x, (None, 0.35, 1, source, heads))
        assert torch.equal(out, out0) and torch.equal(mean, mean0)     # no HFA: the block is unchanged
        torch.testing.assert_close(scores, want, atol=1e-6, rtol=0)


def _tiny(doei=None):
    torch.manual_seed(0)
    return MCTformerV2(num_classes=3, img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, doei=doei).eval()


def _outputs(model, x):
    out = model.forward_cams(x, n_layers=2)
    return torch.cat([out.cls_logits.flatten(), out.patch_logits.flatten(), out.cams.flatten()])


VARIANTS = [{"hfa_target": "attention"}, {"score_source": "logits"}, {"heads": "each"},
            {"suppress_target": "patch"}, {"rgb": "raw"}]


def test_readings_off_switches_bitwise_and_each_reading_acts():
    x = torch.randn(2, 3, 32, 32)
    base = _outputs(_tiny(), x)
    on = dict(enabled=True, st_p2c=0.2, st_c2c=0.5)
    default_on = _outputs(_tiny(DOEIConfig(**on)), x)
    for v in VARIANTS:
        assert torch.equal(_outputs(_tiny(DOEIConfig(enabled=False, **v)), x), base), v        # DOEI off
        assert not torch.equal(_outputs(_tiny(DOEIConfig(**on, **v)), x), default_on), v        # the reading acts
    # readings that only touch HFA are today's network when HFA is off (alpha 0)
    a0 = _outputs(_tiny(DOEIConfig(**on, alpha=0.0)), x)
    for v in ({"hfa_target": "attention"}, {"rgb": "raw"}):
        assert torch.equal(_outputs(_tiny(DOEIConfig(**on, alpha=0.0, **v)), x), a0), v
    # HFA on the attention makes "CPDO + HFA" a different network from "CPDO" (HFA on the scores does not)
    cpdo = dict(enabled=True, ppdo=False, st_c2c=0.5)
    only = _outputs(_tiny(DOEIConfig(**cpdo, hfa=False)), x)
    assert torch.equal(_outputs(_tiny(DOEIConfig(**cpdo, hfa=True)), x), only)
    assert not torch.equal(_outputs(_tiny(DOEIConfig(**cpdo, hfa=True, hfa_target="attention")), x), only)


def test_readings_gradients_finite():
    x = torch.randn(2, 3, 32, 32)
    for v in VARIANTS:
        m = _tiny(DOEIConfig(enabled=True, st_p2c=0.2, st_c2c=0.5, **v)).train()
        cls, patch = m(x)
        (cls.sum() + patch.sum()).backward()
        assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None), v


def test_plugin_and_conformer_refuse_readings_they_do_not_implement():
    import timm

    from doei.errors import DoeiError
    from doei.models.timm_plugin import plug

    m = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                          depth=2, num_heads=2, num_classes=3)
    with pytest.raises(DoeiError, match="does not implement the DOEI reading"):
        plug(m, DOEIConfig(enabled=True, heads="each"))
    plug(m, DOEIConfig(enabled=True, suppress_target="patch"))   # core-only: supported
    with pytest.raises(ValueError, match="Conformer"):
        DOEIConfig(enabled=True, rgb="raw").refuse_readings("the Conformer (TransCAM)")
