"""Affinity labels from CAM seeds and the AffinityNet loss (no official fixture exists for these:
README §8; semantics are checked against a direct per-pair enumeration)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from doei.errors import DoeiError
from doei.refine.labels import (affinity_labels_from_label, affinity_labels_from_seeds, block_mean,
                                seed_label_from_scores)
from doei.refine.loss import affinity_loss
from doei.models.pairs import pair_offsets


def enumerate_pairs(label: np.ndarray, radius: int = 5):
    """Independent reference: walk every from-position and offset explicitly."""
    h, w = label.shape
    r1 = radius - 1
    froms = [(y, x) for y in range(h - r1) for x in range(r1, w - r1)]
    out = np.zeros((3, len(pair_offsets(radius)), len(froms)), np.float32)
    for d, (dy, dx) in enumerate(pair_offsets(radius)):
        for i, (y, x) in enumerate(froms):
            a, b = int(label[y, x]), int(label[y + dy, x + dx])
            ok = a != 255 and b != 255
            out[0, d, i] = a == b == 0
            out[1, d, i] = a == b and a != 0 and ok
            out[2, d, i] = a != b and ok
    return out


def test_pair_labels_match_enumeration():
    g = np.random.default_rng(0)
    label = g.choice(np.array([0, 3, 15, 255], np.uint8), size=(9, 13), p=[0.4, 0.25, 0.2, 0.15])
    got = affinity_labels_from_label(label)
    ref = enumerate_pairs(label)
    for k in range(3):
        assert np.array_equal(got[k].numpy(), ref[k])
    assert got[0].sum() > 0 and got[1].sum() > 0 and got[2].sum() > 0


def test_seed_rule_confident_fg_bg_and_ignore():
    # 1 bg row + 1 class (id 6 -> label 7); 4 pixels:
    #   p0 fg wins even against the high bg score -> 7
    #   p1 fg loses to the high bg score but wins against the low one -> ignore
    #   p2 bg wins even against the low bg score -> 0
    #   p3 no score at all -> ignore
    la = np.array([[[0.2, 0.6, 0.9, 0.0]], [[0.8, 0.5, 0.1, 0.0]]], np.float32)
    ha = np.array([[[0.01, 0.2, 0.7, 0.0]], [[0.8, 0.5, 0.1, 0.0]]], np.float32)
    assert seed_label_from_scores(la, ha, [6]).tolist() == [[7, 255, 0, 255]]


def test_block_mean_zero_pads_like_block_reduce():
    x = np.arange(2 * 10 * 9, dtype=np.float32).reshape(2, 10, 9)
    out = block_mean(x, 8)
    assert out.shape == (2, 2, 2)
    assert out[1, 1, 1] == pytest.approx(x[1, 8:, 8:].sum() / 64)
    assert out[0, 0, 0] == pytest.approx(x[0, :8, :8].mean())


def test_affinity_labels_from_seeds_end_to_end():
    h, w = 80, 120
    yy, xx = np.mgrid[0:h, 0:w]
    cam = np.exp(-((yy - 40) ** 2 + (xx - 60) ** 2) / (2 * 15.0 ** 2)).astype(np.float32)[None]
    label, (bg, fg, neg) = affinity_labels_from_seeds(cam, [11], low_alpha=4, high_alpha=32)
    assert label.shape == (10, 15)
    assert label[5, 7] == 12 and label[0, 0] == 0 and (label == 255).any()
    assert bg.shape == fg.shape == neg.shape == (34, 6 * 7)
    assert torch.all(bg * fg == 0) and torch.all(bg * neg == 0) and torch.all(fg * neg == 0)
    with pytest.raises(DoeiError, match="K = len"):
        affinity_labels_from_seeds(cam, [1, 2])


def test_affinity_labels_with_crf_run():
    g = np.random.default_rng(1)
    cam = np.zeros((1, 48, 96), np.float32)
    cam[0, 10:38, 30:70] = 0.9
    img = (g.random((48, 96, 3)) * 40).astype(np.uint8)
    img[10:38, 30:70] += 150
    label, _ = affinity_labels_from_seeds(cam, [0], image=img)
    assert label.shape == (6, 12) and 1 in label and 0 in label


def test_affinity_loss_values_and_gradient():
    aff = torch.tensor([[[0.9, 0.2, 0.5]]], requires_grad=True)
    bg = torch.tensor([[[1.0, 0.0, 0.0]]])
    fg = torch.tensor([[[0.0, 0.0, 1.0]]])
    neg = torch.tensor([[[0.0, 1.0, 0.0]]])
    loss, parts = affinity_loss(aff, bg, fg, neg)
    eps = 1e-5
    expect = (-np.log(0.9 + eps) / (1 + eps)) / 4 + (-np.log(0.5 + eps) / (1 + eps)) / 4 + (-np.log(1 + eps - 0.2) / (1 + eps)) / 2
    assert float(loss.detach()) == pytest.approx(expect, rel=1e-6)
    assert parts["neg_cnt"] == pytest.approx(1 + eps)
    loss.backward()
    assert aff.grad[0, 0, 0] < 0 and aff.grad[0, 0, 1] > 0
