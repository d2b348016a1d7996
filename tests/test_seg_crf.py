"""DenseCRF styles vs the fixtures: MCTformer ``_crf_with_alpha`` (mctformer_v2_campipeline.npz,
README §5.3 step 5) and the seg ``crf_inference_inf`` (via tests/test_seg_inference.py)."""
from __future__ import annotations

import numpy as np
import pytest

from doei.errors import DoeiError
from doei.seg.crf import CAM_CRF, SEG_CRF, crf_refine, crf_with_alpha


@pytest.mark.parametrize("k", [0, 1])
@pytest.mark.parametrize("alpha", [1, 12])
def test_crf_with_alpha_matches_mctformer(reference, k, alpha):
    z = reference("mctformer_v2_campipeline.npz")
    out = crf_with_alpha(z[f"img{k}_crf_input_image_uint8"], z[f"img{k}_official_cam"], alpha)
    ref = z[f"img{k}_official_crf_alpha{alpha}"]
    assert list(z[f"img{k}_official_crf_alpha{alpha}_keys"]) == [0] + [c + 1 for c in z[f"img{k}_official_cam_keys"]]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_official_parameters():
    assert (CAM_CRF.gauss_sxy, CAM_CRF.gauss_compat, CAM_CRF.bi_sxy, CAM_CRF.bi_srgb, CAM_CRF.bi_compat) == (3, 3, 80, 13, 10)
    assert (SEG_CRF.gauss_sxy, SEG_CRF.gauss_compat, SEG_CRF.bi_sxy, SEG_CRF.bi_srgb, SEG_CRF.bi_compat) == (4, 3, 83, 5, 3)
    assert CAM_CRF.iterations == SEG_CRF.iterations == 10


def test_crf_sharpens_towards_image_edges():
    img = np.zeros((20, 30, 3), np.uint8)
    img[:, 15:] = 255
    p = np.full((2, 20, 30), 0.5, np.float32)
    p[1, :, 10:] = 0.6                               # unary edge at x=10, image edge at x=15
    p[0] = 1 - p[1]
    out = crf_refine(img, p)
    assert out.shape == (2, 20, 30) and np.allclose(out.sum(0), 1, atol=1e-4)
    assert out[1, :, 20:].mean() > p[1, :, 20:].mean()


def test_crf_rejects_bad_inputs():
    with pytest.raises(DoeiError, match="uint8"):
        crf_refine(np.zeros((4, 4, 3), np.float32), np.ones((2, 4, 4), np.float32))
    with pytest.raises(DoeiError, match="matching the image"):
        crf_refine(np.zeros((4, 4, 3), np.uint8), np.ones((2, 5, 4), np.float32))
