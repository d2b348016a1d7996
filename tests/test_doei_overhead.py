"""benchmarks/doei_overhead.py: its official-code contender (q, k, v indexed from a permuted qkv) computes what
this project's eager path computes, bit for bit, so the ratios against it time the split alone; every ratio
below 1.00 comes with its reason."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import doei_overhead  # noqa: E402

from doei.models.registry import create_model  # noqa: E402
from doei.models.vit import set_attention_impl  # noqa: E402


@pytest.mark.parametrize("name", ["mctformer_v2_tiny_conv", "tscam_tiny_conv", "transcam_conformer_synth"])
def test_official_contender_equals_the_eager_path_bit_for_bit(name):
    torch.manual_seed(0)
    base = create_model(name, num_classes=4).train()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0]])
    grads = []
    for model in (set_attention_impl(copy.deepcopy(base), "eager"), doei_overhead.official_attention(copy.deepcopy(base))):
        out = model(x)
        outs = out if isinstance(out, tuple) else (out,)
        loss = sum(torch.nn.functional.multilabel_soft_margin_loss(o, y) for o in outs)
        loss.backward()
        grads.append([loss.detach()] + [p.grad for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 10
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_official_contender_refuses_a_doei_view():
    attn = doei_overhead.official_attention(create_model("tscam_tiny_conv", num_classes=3)).blocks[0].attn
    with pytest.raises(ValueError, match="DOEI-off"):
        attn(torch.zeros(1, 5, attn.qkv.in_features), (None, 0.0, 1, "softmax", "mean"))


def test_every_ratio_below_one_is_explained():
    r = {"median": 0.95}
    for num, den, _, _ in doei_overhead.RATIOS:
        assert doei_overhead.explain(num, den, r, floor=0.01) not in ("", "below 1.00"), (num, den)
    assert "bit for bit" in doei_overhead.explain("off_eager", "off_official", r, 0.01)
