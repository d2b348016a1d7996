"""Regression (#21 smoke run at real size): the MCTformer RandAugment's posterize op at its magnitude cap keeps 0
bits, which Pillow >= 11 refuses; a batch of 64 hit it about once in six steps."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from doei.data.transforms import mctformer_train_transform, posterize_any_bits


def _posterize_ops(t):
    return [op for sub in t.transforms for op in getattr(sub, "ops", []) if "posterize" in op.name.lower()]


def test_every_posterize_op_of_the_mctformer_transform_accepts_zero_bits():
    t = mctformer_train_transform(32)
    ops = _posterize_ops(t)
    assert ops, "the RandAugment of rand-m9-mstd0.5-inc1 has a posterize op"
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    for op in ops:
        out = op.aug_fn(img, 0)
        assert np.asarray(out).max() == 0 and out.size == img.size and out.mode == img.mode


def test_posterize_any_bits_matches_pillow_where_pillow_accepts():
    from PIL import ImageOps

    img = Image.fromarray(np.arange(192, dtype=np.uint8).reshape(8, 8, 3))
    for bits in (1, 3, 4, 7):
        assert np.array_equal(np.asarray(posterize_any_bits(img, bits)), np.asarray(ImageOps.posterize(img, bits)))
    assert posterize_any_bits(img, 8) is img


def test_transform_survives_the_capped_magnitude():
    t = mctformer_train_transform(32)
    for op in _posterize_ops(t):
        op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0          # always posterize, always at the cap
    ra = next(sub for sub in t.transforms if getattr(sub, "ops", None))
    ra.ops = _posterize_ops(t)
    img = Image.fromarray(np.full((40, 40, 3), 200, dtype=np.uint8))
    x = t(img)
    assert x.shape == (3, 32, 32)


