"""Per-family classification objectives (doei.engine.losses) and their use by the training loop."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from doei.engine.losses import classification_loss, prediction_logits
from doei.models.registry import create_model


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {
        "mctformer": create_model("mctformer_v2_tiny_conv", num_classes=4, img_size=32, depth=1, embed_dim=32,
                                  num_heads=2),
        "tscam": create_model("tscam_tiny_conv", num_classes=4, img_size=32, depth=1, embed_dim=32, num_heads=2),
        "transcam": create_model("transcam_conformer_synth", num_classes=4),
    }


def _target() -> torch.Tensor:
    return torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0]])


def test_families_and_wrappers(models):
    assert {k: m.family for k, m in models.items()} == {k: k for k in models}
    wrapped = nn.Module()
    wrapped.module = models["transcam"]  # a DDP-like wrapper is looked through
    a, b = torch.randn(2, 4), torch.randn(2, 4)
    assert torch.equal(classification_loss(wrapped, (a, b), _target())[0],
                       classification_loss(models["transcam"], (a, b), _target())[0])


def test_mctformer_sums_class_token_and_patch_terms(models):
    a, b = torch.randn(2, 4), torch.randn(2, 4)
    total, cls, pat = classification_loss(models["mctformer"], (a, b), _target())
    assert torch.allclose(cls, F.multilabel_soft_margin_loss(a, _target()))
    assert torch.allclose(pat, F.multilabel_soft_margin_loss(b, _target()))
    assert torch.allclose(total, cls + pat)


def test_tscam_single_term(models):
    x = torch.randn(2, 3, 32, 32)
    out = models["tscam"](x)
    total, first, second = classification_loss(models["tscam"], out, _target())
    assert torch.allclose(total, F.multilabel_soft_margin_loss(out, _target())) and second.item() == 0
    assert torch.equal(prediction_logits(models["tscam"], out), out)


def test_transcam_soft_margin_on_the_sum_not_sum_of_losses(models):
    a, b = torch.randn(2, 4) * 3, torch.randn(2, 4) * 3
    total, _, second = classification_loss(models["transcam"], (a, b), _target())
    assert torch.allclose(total, F.multilabel_soft_margin_loss(a + b, _target()))
    per_branch = F.multilabel_soft_margin_loss(a, _target()) + F.multilabel_soft_margin_loss(b, _target())
    assert not torch.allclose(total, per_branch) and second.item() == 0
    assert torch.allclose(prediction_logits(models["transcam"], (a, b)), a + b)
    assert torch.equal(prediction_logits(models["mctformer"], (a, b)), a)


def test_losses_backpropagate_through_each_family(models):
    x = torch.randn(2, 3, 64, 64)
    for name, m in models.items():
        m.train()
        m.zero_grad()
        xi = x if name == "transcam" else x[..., :32, :32]
        loss = classification_loss(m, m(xi), _target())[0]
        loss.backward()
        grads = [p.grad for p in m.parameters() if p.requires_grad]
        assert loss.isfinite() and any(g is not None and g.abs().sum() > 0 for g in grads), name
