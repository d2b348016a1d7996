"""Engine parts: lr schedule, AdamW groups, RNG-state round trip, DeiT weight adaptation, metrics."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from doei.engine.checkpoint import rng_state, set_rng_state
from doei.engine.optim import lr_at, param_groups
from doei.models.pretrained import adapt_deit_state_dict, load_pretrained
from doei.engine.seed import epoch_seed
from doei.eval.classification import average_precision, classification_metrics
from doei.errors import DoeiError
from doei.models.mctformer import MCTformerV2


def test_lr_schedule_warmup_then_cosine():
    kw = dict(peak_lr=1e-3, epochs=10, warmup_epochs=2, warmup_lr=1e-6, min_lr=1e-5)
    assert lr_at(0.0, **kw) == pytest.approx(1e-6)
    assert lr_at(1.0, **kw) == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2)
    assert lr_at(2.0, **kw) == pytest.approx(1e-3)
    assert lr_at(6.0, **kw) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert lr_at(10.0, **kw) == pytest.approx(1e-5) and lr_at(12.0, **kw) == pytest.approx(1e-5)
    after = [lr_at(2 + 8 * i / 50, **kw) for i in range(51)]
    assert all(a > b for a, b in zip(after, after[1:]))
    # min_lr above the peak never makes the lr rise after warm-up; no warm-up starts at the peak
    assert lr_at(5.0, 1e-6, 10, 0, 0.0, 1e-5) == pytest.approx(1e-6)
    assert lr_at(0.0, 1e-3, 10, 0, 0.0, 0.0) == pytest.approx(1e-3)


def test_param_groups_skip_decay_like_deit():
    model = MCTformerV2(num_classes=3, img_size=32, patch_size=16, embed_dim=16, depth=1, num_heads=2)
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids = {id(p): n for n, p in model.named_parameters()}
    nd = {ids[id(p)] for p in no_decay["params"]}
    d = {ids[id(p)] for p in decay["params"]}
    assert {"pos_embed", "cls_token", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias", "head.bias"} <= nd
    assert {"blocks.0.attn.qkv.weight", "head.weight", "patch_embed.proj.weight"} <= d
    assert len(nd) + len(d) == len(list(model.parameters()))


def test_rng_state_round_trip():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    np.random.standard_normal()
    state = rng_state()
    a = (random.random(), random.gauss(0, 1), np.random.rand(3), np.random.standard_normal(), torch.rand(3))
    set_rng_state(state)
    b = (random.random(), random.gauss(0, 1), np.random.rand(3), np.random.standard_normal(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and np.array_equal(a[2], b[2]) and a[3] == b[3]
    assert torch.equal(a[4], b[4])
    assert all(isinstance(v, torch.Tensor) for k, v in state.items() if k != "cuda")


def test_epoch_seeds_are_distinct_and_stable():
    seeds = {epoch_seed(s, e, st) for s in range(3) for e in range(-1, 20) for st in ("global", "loader-order")}
    assert len(seeds) == 3 * 21 * 2
    assert epoch_seed(0, 0, "global") == epoch_seed(0, 0, "global")


def _fake_deit(dim=16, grid=14, distilled=False, seed=0):
    """A DeiT-shaped state dict (timm key names) built from a 1-class-token ViT + a 1000-way head."""
    g = torch.Generator().manual_seed(seed)
    src = MCTformerV2(num_classes=1, img_size=16 * grid, patch_size=16, embed_dim=dim, depth=2, num_heads=2)
    sd = {k: torch.randn(v.shape, generator=g) for k, v in src.state_dict().items() if not k.startswith("head.")}
    sd["head.weight"] = torch.randn(1000, dim, generator=g)
    sd["head.bias"] = torch.randn(1000, generator=g)
    if distilled:
        sd["dist_token"] = torch.randn(1, 1, dim, generator=g)
        sd["head_dist.weight"] = torch.randn(1000, dim, generator=g)
        sd["pos_embed"] = torch.randn(1, 2 + grid * grid, dim, generator=g)
    return sd


@pytest.mark.parametrize("distilled", [False, True])
def test_adapt_deit_to_mctformer(tmp_path, distilled):
    sd = _fake_deit(distilled=distilled)
    path = tmp_path / "deit.pth"
    torch.save({"model": sd}, path)
    model = MCTformerV2(num_classes=5, img_size=64, patch_size=16, embed_dim=16, depth=2, num_heads=2)
    head_before = model.head.weight.detach().clone()
    missing = load_pretrained(model, path)
    assert sorted(missing) == ["head.bias", "head.weight"]
    assert torch.equal(model.head.weight, head_before)                          # kept its own init
    assert torch.equal(model.cls_token[0], sd["cls_token"][0].expand(5, -1))   # 1 -> 5 by repetition
    n_extra = 2 if distilled else 1
    assert torch.equal(model.pos_embed[0, :5], sd["pos_embed"][0, :1].expand(5, -1))
    patch = sd["pos_embed"][:, n_extra:].reshape(1, 14, 14, 16).permute(0, 3, 1, 2)
    want = F.interpolate(patch, size=(4, 4), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 16, 16)
    assert torch.allclose(model.pos_embed[:, 5:], want, atol=0, rtol=0)
    assert torch.equal(model.blocks[1].mlp.fc2.weight, sd["blocks.1.mlp.fc2.weight"])
    assert torch.equal(model.patch_embed.proj.weight, sd["patch_embed.proj.weight"])


def test_adapt_keeps_mctformer_tokens_and_same_grid():
    sd = _fake_deit(grid=4)
    sd["cls_token"] = torch.randn(1, 5, 16)
    sd["pos_embed"] = torch.randn(1, 5 + 16, 16)
    out = adapt_deit_state_dict(sd, num_classes=5, grid=(4, 4))
    assert torch.equal(out["cls_token"], sd["cls_token"]) and torch.equal(out["pos_embed"], sd["pos_embed"])
    assert "head.weight" not in out
    with pytest.raises(DoeiError, match="cls_token has 5 tokens"):
        adapt_deit_state_dict(sd, num_classes=7, grid=(4, 4))


def test_pretrained_shape_mismatch_is_one_line(tmp_path):
    path = tmp_path / "deit.pth"
    torch.save(_fake_deit(dim=16), path)
    model = MCTformerV2(num_classes=5, img_size=64, patch_size=16, embed_dim=24, depth=2, num_heads=2)
    with pytest.raises(DoeiError, match="shape mismatch") as e:
        load_pretrained(model, path)
    assert "\n" not in str(e.value)


def test_average_precision_by_hand():
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.3, 0.2], [0.1, 0.6]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    ap = average_precision(scores, targets)
    # class 0: ranks 1 (pos), 2 (neg), 3 (pos) -> (1 + 2/3) / 2 ; class 1: ranks 0.7 (pos) first -> 1
    assert ap[0].item() == pytest.approx((1 + 2 / 3) / 2) and ap[1].item() == pytest.approx(1.0)
    assert math.isnan(average_precision(scores, torch.zeros(4, 2))[0].item())
    m = classification_metrics(torch.logit(scores), targets)
    # predicted (>= 0.5): (0,0), (1,0), (1,1), (3,1); true: (0,0), (1,1), (2,0) -> tp 2, p 4, t 3
    assert m["F1"] == pytest.approx(100 * 4 / 7) and m["precision"] == pytest.approx(50.0)
    assert m["mAP"] == pytest.approx(100 * ((1 + 2 / 3) / 2 + 1) / 2)


def test_loss_is_sum_of_both_soft_margin_terms():
    torch.manual_seed(0)
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    y = (torch.rand(3, 4) > 0.5).float()
    def mctformer_loss(out, target):            # the family's objective (it uses no model state)
        return MCTformerV2.classification_loss(None, out, target)

    total, c, p = mctformer_loss((a, b), y)
    assert total.item() == pytest.approx(F.multilabel_soft_margin_loss(a, y).item()
                                         + F.multilabel_soft_margin_loss(b, y).item())
    assert mctformer_loss(a, y)[2].item() == 0.0


@pytest.mark.parametrize("name", ["demo.yaml", "demo_quick.yaml", "voc_mctformer_v2.yaml", "voc_mctformer_v2_doei.yaml"])
def test_shipped_train_configs_load(name):
    from pathlib import Path

    from doei.train_config import load_train_config

    cfg = load_train_config(Path(__file__).resolve().parents[1] / "configs" / name)
    if name.startswith("voc"):
        # the official recipe: 5e-4 x 64 / 512, 60 epochs, 5 warm-up epochs, DeiT-S at 224
        assert cfg.peak_lr() == pytest.approx(6.25e-5) and cfg.train.epochs == 60
        assert cfg.optim.warmup_epochs == 5 and cfg.model.name == "mctformer_v2_deit_small"
        assert cfg.doei.enabled == name.endswith("_doei.yaml")
    else:
        assert cfg.model.name == "mctformer_v2_tiny_conv" and cfg.data.kind == "synth"
