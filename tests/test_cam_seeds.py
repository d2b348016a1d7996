"""Seeds from CAMs (β threshold, ties), the official CRF with exponent α, label PNGs and overlays."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from doei.cam.seeds import crf_label_map, crf_with_alpha, official_crf_image, seeds_from_cams
from doei.seg.crf import CAM_CRF, dense_crf
from doei.cam.visualize import cam_overlay, cam_panel, jet, save_label_png, voc_palette
from doei.errors import DoeiError


def test_seeds_threshold_and_class_ids():
    cams = np.zeros((2, 2, 3), np.float32)
    cams[0] = [[0.9, 0.2, 0.5], [0.1, 0.6, 0.3]]
    cams[1] = [[0.1, 0.7, 0.5], [0.0, 0.6, 0.3]]
    seeds = seeds_from_cams(cams, 0.3, classes=[4, 11])
    # background wins ties (0.3 vs 0.3), lower class wins class ties (0.5 / 0.6)
    assert seeds.tolist() == [[5, 12, 5], [0, 5, 0]]
    assert seeds.dtype == np.uint8
    assert seeds_from_cams(cams, 0.95, classes=[4, 11]).max() == 0


def test_seeds_beta_is_compared_in_float32():
    cams = np.full((1, 1, 1), np.float32(0.3))      # float32(0.3) > float64 0.3
    assert seeds_from_cams(cams, 0.3)[0, 0] == 0      # tie in float32 -> background


def test_seeds_batched_tensor_and_empty():
    cams = torch.rand(2, 3, 4, 5)
    out = seeds_from_cams(cams, 0.5)
    assert out.shape == (2, 4, 5)
    ref = np.where(cams.max(1).values.numpy() > 0.5, cams.argmax(1).numpy() + 1, 0)
    assert np.array_equal(out, ref)
    assert seeds_from_cams(np.zeros((0, 4, 5), np.float32), 0.1).tolist() == np.zeros((4, 5)).tolist()
    with pytest.raises(DoeiError, match="classes"):
        seeds_from_cams(cams[0], 0.5, classes=[1, 2])


@pytest.mark.parametrize("k", ["img0", "img1"])
@pytest.mark.parametrize("alpha", [1, 12])
def test_crf_parity_from_reference_cams(reference, k, alpha):
    z = reference("mctformer_v2_campipeline.npz")
    img = official_crf_image(torch.from_numpy(z[f"{k}_view0_input"]))
    assert np.array_equal(img, z[f"{k}_crf_input_image_uint8"])
    keys, probs = crf_with_alpha(img, z[f"{k}_official_cam_keys"], z[f"{k}_official_cam"], alpha)
    ref = z[f"{k}_official_crf_alpha{alpha}"]
    assert np.array_equal(keys, z[f"{k}_official_crf_alpha{alpha}_keys"])
    assert np.abs(probs - ref).max() <= 1e-6
    assert np.array_equal(crf_label_map(keys, probs), crf_label_map(keys, ref))


def test_crf_original_pixels_differ_from_official_image(reference):
    z = reference("mctformer_v2_campipeline.npz")
    keys, cams = z["img0_official_cam_keys"], z["img0_official_cam"]
    _, a = crf_with_alpha(z["img0_image_uint8"], keys, cams, 1)
    _, b = crf_with_alpha(z["img0_crf_input_image_uint8"], keys, cams, 1)
    assert np.abs(a - b).max() > 0


def test_crf_validates_inputs():
    img = np.zeros((4, 5, 3), np.uint8)
    with pytest.raises(DoeiError, match="matching the image"):
        dense_crf(img, np.full((2, 4, 6), 0.5, np.float32), CAM_CRF)
    with pytest.raises(DoeiError, match="uint8"):
        dense_crf(img.astype(np.float32), np.full((2, 4, 5), 0.5, np.float32), CAM_CRF)
    with pytest.raises(DoeiError, match="K>0"):
        crf_with_alpha(img, [], np.zeros((0, 4, 5), np.float32), 1)


def test_label_png_roundtrip_and_palette(tmp_path):
    lab = np.array([[0, 1, 15], [255, 20, 3]], np.uint8)
    save_label_png(tmp_path / "a.png", lab)
    im = Image.open(tmp_path / "a.png")
    assert im.mode == "P"
    assert np.array_equal(np.asarray(im), lab)
    pal = voc_palette()
    assert pal[1].tolist() == [128, 0, 0] and pal[15].tolist() == [192, 128, 128] and pal[255].tolist() == [224, 224, 192]


def test_overlay_and_panel():
    img = np.full((6, 8, 3), 100, np.uint8)
    cam = np.zeros((6, 8), np.float32)
    cam[:, 4:] = 1.0
    ov = cam_overlay(img, cam, alpha=0.5)
    assert ov.shape == img.shape and ov.dtype == np.uint8
    assert np.array_equal(ov[0, 0], ((100 + jet(np.float32(0.0)).astype(float)) / 2 + 0.5).astype(np.uint8))
    assert ov[0, 7, 0] > ov[0, 7, 2]                  # jet(1) is red, jet(0) is blue
    assert ov[0, 0, 2] > ov[0, 0, 0]
    panel = cam_panel(img, [2, 5], np.stack([cam, cam]), seeds=np.zeros((6, 8), np.uint8))
    assert panel.dtype == np.uint8 and panel.shape[1] >= 4 * 256    # image, 2 CAMs, seeds in 256-px cells
    with pytest.raises(DoeiError, match="does not match"):
        cam_overlay(img, cam[:5])
