"""TransCAM's CAM pipeline pieces: views, both normalisations, CRF seeds (fixture-exact where the
official arithmetic is reproduced), and the whole pipeline on the small model with non-square sizes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from doei.cam.transcam import (crf_seed_labels, normalize_image, normalize_sum_cam, square_views, transcam_cams,
                               transcam_sum_cam)
from doei.errors import DoeiError
from doei.models.conformer import transcam_conformer_synth


@pytest.fixture(scope="module")
def pipe(reference):
    return reference("transcam_campipeline.npz")


def test_square_views_equal_official_inputs(pipe):
    (view,) = square_views(pipe["image_uint8"], (256,))
    assert view.dtype == torch.float32 and view.shape == (1, 3, 256, 256)
    assert np.array_equal(view.numpy(), pipe["s256_flip0_input"])
    assert np.array_equal(view.flip(-1).numpy(), pipe["s256_flip1_input"])


def test_official_normalisation_is_bit_exact(pipe):
    raw = torch.from_numpy(pipe["sum_cam_labeled_raw"])
    got = normalize_sum_cam(raw, "official").numpy()
    assert np.array_equal(got, pipe["official_cam"])
    assert got.min() < -200                          # the quirk, reproduced on purpose


def test_normalisations_by_hand():
    s = torch.tensor([[[2.0, 3.0], [6.0, -1.0]], [[4.0, 4.0], [4.0, 4.0]]])
    eps = np.float32(1e-5)
    official = normalize_sum_cam(s, "official")
    # class 0: negatives -> 0, mn = 0, mx = 6; pixels < 1e-5 zeroed (no change) -> (s - 1e-5)/(6 + 1e-5)
    want0 = (np.array([[2, 3], [6, 0]], np.float32) - eps) / (np.float32(6) + eps)
    np.testing.assert_allclose(official[0].numpy(), want0, rtol=1e-6)
    # class 1 constant 4: every pixel is < mn + 1e-5, zeroed, then (0 - 4 - 1e-5)/(1e-5)
    np.testing.assert_allclose(official[1].numpy(), np.full((2, 2), -(4 + 1e-5) / 1e-5), rtol=1e-5)
    minmax = normalize_sum_cam(s, "minmax")
    np.testing.assert_allclose(minmax[0].numpy(), np.array([[2, 3], [6, 0]]) / (6 + 1e-5), rtol=1e-6)
    assert float(minmax[1].abs().max()) == 0.0       # a flat map carries no location: all zero
    assert float(minmax.min()) >= 0.0 and float(minmax.max()) < 1.0
    with pytest.raises(DoeiError, match="normalization"):
        normalize_sum_cam(s, "sqrt")


def test_crf_seeds_equal_official_label_maps(pipe):
    seeds = crf_seed_labels(pipe["image_uint8"], pipe["official_cam_keys"], pipe["official_cam"], num_classes=20)
    for t in (0.60, 0.25):
        assert seeds[t].dtype == np.uint8
        assert np.array_equal(seeds[t], pipe[f"official_crf_{t:.2f}"])


def test_normalize_image_uses_float64_then_float32():
    img = np.array([[[0, 128, 255]]], np.uint8)
    got = normalize_image(img)
    want = ((np.array([0, 128, 255]) / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]))
    assert got.shape == (3, 1, 1) and np.array_equal(got[:, 0, 0], want.astype(np.float32))


def test_pipeline_on_small_model_non_square_sizes():
    torch.manual_seed(0)
    model = transcam_conformer_synth(num_classes=10).eval()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    labels = np.zeros(10, np.float32)
    labels[[2, 7]] = 1
    views: list = []
    total = transcam_sum_cam(model, image, labels, scales=(64, (64, 96)), view_outputs=views)
    assert total.shape == (10, 50, 70) and len(views) == 4
    assert views[2][2].shape == (1, 11, 8, 12)                      # the non-square view's CAM grid
    assert float(total[[0, 1, 3, 4, 5, 6, 8, 9]].abs().max()) == 0.0  # unlabelled classes masked
    # flipping the image flips the summed CAM (views and their flips are both in the sum)
    flipped = transcam_sum_cam(model, np.ascontiguousarray(image[:, ::-1]), labels, scales=(64, (64, 96)))
    torch.testing.assert_close(flipped, total.flip(-1), rtol=1e-4, atol=1e-4 * float(total.abs().max()))
    classes, cams = transcam_cams(model, image, labels, scales=(64,))
    assert classes.tolist() == [2, 7] and cams.shape == (2, 50, 70) and cams.dtype == np.float32
    assert cams.min() >= 0.0 and cams.max() < 1.0 and np.allclose(cams.reshape(2, -1).min(1), 0.0)
    seeds = crf_seed_labels(image, classes, cams, num_classes=10, thresholds=(0.5,))
    assert set(np.unique(seeds[0.5])) <= {0, 3, 8}
    with pytest.raises(DoeiError, match="labels"):
        transcam_sum_cam(model, image, np.ones(20, np.float32), scales=(64,))
    with pytest.raises(DoeiError, match="RGB uint8"):
        transcam_sum_cam(model, image[..., 0], labels, scales=(64,))
    with pytest.raises(DoeiError, match="multiples of 8"):
        transcam_sum_cam(model, image, labels, scales=(60,))


def test_generic_cam_extractor_uses_the_transcam_source():
    from doei.cam.extractor import CamExtractor
    from doei.models.conformer import transcam_maps

    torch.manual_seed(0)
    model = transcam_conformer_synth(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 96)
    labels = torch.zeros(1, 10)
    labels[0, 4] = 1
    cams = CamExtractor(model, scales=(1.0, 0.5), flip=True)(x, labels)
    assert cams.shape == (1, 10, 64, 96) and float(cams[0, 4].max()) > 0.99 and float(cams[0, 3].abs().max()) == 0
    with torch.no_grad():
        out = model.forward_all(x, need_attn=True)
        view = model.cam_source()(x)
    assert torch.equal(view.refined, transcam_maps(out.x_conv, out.attn_sum)[:, 1:])
    assert torch.equal(view.logits, (out.logits_conv + out.logits_trans)[:, 1:])
    with pytest.raises(DoeiError, match="kind"):
        model.cam_source(kind="mtatt")
