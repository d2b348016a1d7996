"""Transforms: CAM-time normalisation equals torchvision's, training transforms give fixed-size tensors."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from doei.data.transforms import (build_transform, cam_transform, denormalize_uint8, mctformer_train_transform,
                                  simple_train_transform)

IMG = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8))


def test_cam_transform_matches_torchvision_and_roundtrips():
    from torchvision import transforms as T

    x = cam_transform()(IMG)
    ref = T.Compose([T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])(IMG)
    assert x.shape == (3, 37, 53) and x.dtype == torch.float32
    torch.testing.assert_close(x, ref, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(denormalize_uint8(x), np.asarray(IMG))


def test_training_transforms_shapes_and_randomness():
    torch.manual_seed(0)
    t = mctformer_train_transform(64)
    names = [type(s).__name__ for s in t.transforms]
    assert names[0] == "RandomResizedCropAndInterpolation" and "RandAugment" in names and names[-1] == "RandomErasing"
    assert t.transforms[0].scale == (0.08, 1.0)
    a, b = t(IMG), t(IMG)
    assert a.shape == b.shape == (3, 64, 64) and not torch.equal(a, b)
    s = simple_train_transform(32, scale=(0.5, 1.0), color_jitter=0.2)
    assert s(IMG).shape == (3, 32, 32)
    assert build_transform("eval", 48)(IMG).shape == (3, 48, 48)
    assert build_transform("resize", 40)(IMG).shape == (3, 40, 40)
