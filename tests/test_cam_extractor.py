"""CamExtractor on a tiny random MCTformer-V2: shapes, ranges, label masking, multi-scale + flip order,
list input, custom sources (the TS-CAM / TransCAM plug-in point) and input validation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from doei.cam.extractor import (CamExtractor, ViewCams, minmax_labelled, normalize_image, official_views,
                                scaled_size)
from doei.errors import DoeiError
from doei.models.registry import create_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("mctformer_v2_tiny_conv", num_classes=6).eval()


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)   # tiny tensors: one thread is faster and immune to a busy machine


def _labels(*rows):
    lab = torch.zeros(len(rows), 6)
    for i, r in enumerate(rows):
        lab[i, list(r)] = 1
    return lab


def test_shape_range_and_label_masking(model):
    x = torch.randn(2, 3, 40, 56)
    lab = _labels([1, 4], [0])
    cams = CamExtractor(model)(x, lab)
    assert cams.shape == (2, 6, 40, 56) and cams.dtype == torch.float32
    assert torch.all(cams[lab == 0] == 0)
    on = cams[lab > 0].flatten(1)
    assert torch.all(on.amin(1) == 0) and torch.all(on.amax(1) > 0.999) and torch.all(on.amax(1) <= 1)


def test_multiscale_flip_matches_manual_derivation(model):
    """Views [s0, flip(s0), s1, flip(s1)], upsampled, × label, flipped back, summed, min–max."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)
    lab = _labels([2, 3])
    scales = (1.0, 0.75, 1.5)
    views = official_views(img, scales)
    assert [tuple(v.shape[1:]) for v in views] == [(37, 50), scaled_size(37, 50, 0.75), scaled_size(37, 50, 1.5)]
    got = CamExtractor(model, scales=scales, normalize=False).from_views(views, lab, (37, 50))
    total = torch.zeros(1, 6, 37, 50)
    with torch.no_grad():
        for v in views:
            for flipped in (False, True):
                x = v[None].flip(-1) if flipped else v[None]
                out = model.forward_cams(x, n_layers=3, kind="fused")
                a = out.patch_attn.sum(0)
                b, c, h, w = out.cams.shape
                ref = (a[:, None] @ out.cams.reshape(b, c, h * w, 1)).reshape(b, c, h, w)
                up = F.interpolate(ref, (37, 50), mode="bilinear", align_corners=False) * lab[..., None, None]
                total += up.flip(-1) if flipped else up
    # raw sums compared (a view batched with its flip differs from single runs by float rounding,
    # which min–max of these nearly constant random-weight maps would amplify)
    np.testing.assert_allclose(got.numpy(), total.numpy(), rtol=1e-5, atol=1e-7)
    assert torch.all(got[lab == 0] == 0)
    no_flip = CamExtractor(model, scales=scales, flip=False, normalize=False).from_views(views, lab, (37, 50))
    assert (no_flip - got / 2).abs().max() > 1e-3 * got.abs().max()


def test_in_memory_resize_close_to_official_views(model):
    """The tensor call resizes with antialiased bicubic; at 1.0 it is the official input exactly."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    x = normalize_image(img)[None]
    lab = _labels([0, 5])
    ex = CamExtractor(model, scales=(1.0,))
    assert torch.equal(ex(x, lab), ex.from_views(official_views(img, (1.0,)), lab, (48, 64)))
    ex2 = CamExtractor(model, scales=(1.0, 0.5))
    diff = (ex2(x, lab) - ex2.from_views(official_views(img, (1.0, 0.5)), lab, (48, 64))).abs().max()
    assert diff < 0.2


def test_list_of_sizes_equals_single_calls(model):
    imgs = [torch.randn(3, 32, 40), torch.randn(3, 45, 29)]
    lab = _labels([1], [2, 3])
    ex = CamExtractor(model, scales=(1.0, 0.5))
    out = ex(imgs, lab)
    assert [tuple(o.shape) for o in out] == [(6, 32, 40), (6, 45, 29)]
    for i, img in enumerate(imgs):
        torch.testing.assert_close(out[i], ex(img[None], lab[i:i + 1])[0])


def test_normalize_false_returns_masked_sum(model):
    x = torch.randn(1, 3, 32, 32)
    lab = _labels([3])
    raw = CamExtractor(model, normalize=False)(x, lab)
    norm = CamExtractor(model)(x, lab)
    torch.testing.assert_close(minmax_labelled(raw, lab), norm)
    assert raw[0, 3].min() > 0 and not torch.allclose(raw, norm)   # the raw sum is not min–max scaled


def test_custom_source_plugs_in():
    """Any callable returning ViewCams works (how TS-CAM / TransCAM adapters plug in)."""
    class Src:
        num_classes = 2

        def __call__(self, x):
            b, _, h, w = x.shape
            ramp = torch.arange(w, dtype=torch.float32).expand(b, 2, h // 4, w)[..., ::4]
            return ViewCams(torch.zeros(b, 2), ramp, ramp)

    ex = CamExtractor(torch.nn.Linear(1, 1), source=Src(), flip=False)
    out = ex(torch.zeros(1, 3, 8, 16), torch.tensor([[0.0, 1.0]]))
    assert out[0, 0].abs().max() == 0
    assert out[0, 1, :, 0].max() == 0 and torch.all(out[0, 1, :, -1] > 0.99)
    assert torch.all(out[0, 1].diff(dim=1) >= 0)       # the ramp survives upsampling and min–max


def test_validation(model):
    ex = CamExtractor(model)
    with pytest.raises(DoeiError, match="labels"):
        ex(torch.randn(2, 3, 16, 16), torch.zeros(2, 5))
    with pytest.raises(DoeiError, match=r"\[B, 3, H, W\]"):
        ex(torch.randn(3, 16, 16), torch.zeros(1, 6))
    with pytest.raises(DoeiError, match="scales"):
        CamExtractor(model, scales=(1.0, 0.0))
    with pytest.raises(DoeiError, match="n_layers"):
        CamExtractor(model, n_layers=7)
    with pytest.raises(DoeiError, match="uint8"):
        normalize_image(np.zeros((4, 4, 3), np.float32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(model):
    x = torch.randn(2, 3, 40, 48)
    lab = _labels([1, 2], [4])
    cpu = CamExtractor(model)(x, lab)
    gpu_model = create_model("mctformer_v2_tiny_conv", num_classes=6)
    gpu_model.load_state_dict(model.state_dict())
    gpu = CamExtractor(gpu_model.cuda())(x, lab)
    assert gpu.device.type == "cpu"                     # results come back on the images' device
    torch.testing.assert_close(gpu, cpu, atol=1e-3, rtol=0)
