"""Multi-scale fusion and CRF vs seg_resnet38_msinfer.npz (README §5.5).

A stub model replays the stored per-scale logits (keyed by the input size it receives), so the
resize conventions, softmax max-fusion, CRF and argmax are tested on all 5 scales of both images
without the 124M-parameter net (the net's own per-scale logits: tests/test_resnet38_models.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from doei.errors import DoeiError
from doei.seg.crf import crf_refine
from doei.seg.multiscale import OFFICIAL_SCALES, multiscale_predict, normalize_image
from doei.seg.metrics import confusion_matrix, iou_from_confusion


class Replay(nn.Module):
    """Returns the stored logits for the input size it is given; records the sizes."""

    def __init__(self, by_size: dict[tuple[int, int], np.ndarray]):
        super().__init__()
        self.by_size = by_size
        self.seen: list[tuple[int, int]] = []
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hw = (x.shape[2], x.shape[3])
        self.seen.append(hw)
        out = torch.from_numpy(self.by_size[hw])
        return torch.cat([out, out.flip(-1)]) if x.shape[0] == 2 else out   # flipped view: flipped logits


@pytest.fixture(scope="module")
def ms(reference):
    return reference("seg_resnet38_msinfer.npz")


def run_image(ms, k: int, flip: bool = False):
    img = ms[f"img{k}_image_uint8"]
    h, w = img.shape[:2]
    scales = tuple(float(s) for s in ms["scales"])
    by_size = {(int(h * s), int(w * s)): ms[f"img{k}_logits_scale{s}"] for s in scales}
    model = Replay(by_size)
    probs = multiscale_predict(model, img, scales, flip=flip)
    return model, probs


def test_scales_are_the_official_ones(ms):
    assert tuple(float(s) for s in ms["scales"]) == OFFICIAL_SCALES


@pytest.mark.parametrize("k", [0, 1])
def test_fused_probs_preds_and_crf(ms, k):
    model, probs = run_image(ms, k)
    img = ms[f"img{k}_image_uint8"]
    h, w = img.shape[:2]
    assert model.seen == [(int(h * s), int(w * s)) for s in OFFICIAL_SCALES]
    np.testing.assert_allclose(probs.numpy(), ms[f"img{k}_probs_msmax"][0], rtol=1e-4, atol=1e-5)
    assert np.array_equal(probs.numpy().argmax(0), ms[f"img{k}_official_pred_nocrf"])
    crf = crf_refine(img, probs.numpy())
    assert np.array_equal(crf.argmax(0), ms[f"img{k}_official_pred_crf"])


def test_flip_view_enters_the_same_max(ms):
    # the stub returns flipped logits for the flipped view, which flip-back undoes: same result
    _, plain = run_image(ms, 1)
    _, flipped = run_image(ms, 1, flip=True)
    torch.testing.assert_close(plain, flipped)


def test_confusion_and_nanmean_miou(ms):
    for tag in ("nocrf", "crf"):
        conf = sum(confusion_matrix(ms[f"img{k}_gt"], ms[f"img{k}_official_pred_{tag}"]) for k in (0, 1))
        assert np.array_equal(conf, ms[f"official_{tag}_confusion"])
        iou, miou = iou_from_confusion(conf)
        assert np.array_equal(iou, ms[f"official_{tag}_IoU_nan_for_absent"], equal_nan=True)
        assert miou == float(ms[f"official_{tag}_mIoU_nanmean"])


def test_metric_edge_cases():
    gt = np.array([[0, 1, 255], [1, 1, 0]], np.uint8)
    pred = np.array([[0, 2, 7], [1, 1, 1]], np.uint8)
    conf = confusion_matrix(gt, pred, num_classes=3)
    assert conf.sum() == 5 and conf[1, 2] == 1 and conf[0, 1] == 1
    iou, miou = iou_from_confusion(conf)
    assert iou[2] == 0 and miou == pytest.approx((1 / 2 + 2 / 4 + 0) / 3)
    with pytest.raises(DoeiError, match="equal shapes"):
        confusion_matrix(gt, pred[:1])
    with pytest.raises(DoeiError, match="expected 0..2"):
        confusion_matrix(gt, np.full_like(gt, 9), num_classes=3)


def test_input_validation():
    with pytest.raises(DoeiError, match="uint8"):
        normalize_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(DoeiError, match="shrink"):
        multiscale_predict(Replay({}), np.zeros((3, 3, 3), np.uint8), scales=(0.1,))
    x = normalize_image(np.full((2, 2, 3), 255, np.uint8))
    assert x.dtype == torch.float32
    assert float(x[0, 0, 0, 0]) == pytest.approx((1 - 0.485) / 0.229, rel=1e-6)
