"""TransCAM Conformer-S against the official fixtures (../shared/reference README §5.7, gotcha 8).

Weights: recipe ``crc32-fanin-v1`` on the official key names. Tolerances: README §4 (raw outputs
rtol 1e-4 / atol 1e-5·max|ref|; attention atol 1e-6; Conformer outputs differ by ≤1.7e-5 across
thread counts, TransCAM's normalised CAMs by up to 3e-3, so the normalised CAM is compared at
5e-3 and the pre-normalisation sum tightly).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from doei.cam.transcam import crf_seed_labels, normalize_sum_cam, transcam_sum_cam
from doei.errors import DoeiError
from doei.models.conformer import CAM_METHODS, load_transcam_weights, transcam_conformer_small, transcam_maps
from doei.models.registry import list_models
from recipe_weights import fill_state_dict_


@pytest.fixture(scope="module")
def model():
    return fill_state_dict_(transcam_conformer_small()).eval()


@pytest.fixture(scope="module")
def ref(reference):
    return reference("transcam.npz")


def close(actual: torch.Tensor, expected: np.ndarray, rtol: float = 1e-4, scale: float = 1e-5) -> float:
    a = actual.detach().float().numpy()
    assert a.shape == expected.shape
    atol = scale * float(np.abs(expected).max())
    np.testing.assert_allclose(a, expected, rtol=rtol, atol=atol)
    return float(np.abs(a - expected).max())


def test_state_dict_equals_official_keys_and_shapes(model, shared_dir):
    spec = json.loads((shared_dir / "reference" / "keys_transcam_conformer_small.json").read_text())
    sd = model.state_dict()
    assert len(sd) == spec["n_keys"] == 718
    assert {k: list(v.shape) for k, v in sd.items()} == spec["keys"]
    assert sum(p.numel() for p in model.parameters()) == spec["n_parameters"]
    assert {"transcam_conformer_small", "transcam_conformer_synth"} <= set(list_models())


@pytest.mark.parametrize("case", ["s256", "s224"])
def test_logits_and_cams_match_official(model, ref, case):
    x = torch.from_numpy(ref[f"{case}_input"])
    with torch.no_grad():
        out = model.forward_all(x, need_attn=True, all_attn=case == "s256")
    close(out.logits_conv, ref[f"{case}_logits_conv"])
    close(out.logits_trans, ref[f"{case}_logits_trans"])
    for method in CAM_METHODS:
        close(transcam_maps(out.x_conv, out.attn_sum, method), ref[f"{case}_cams_{method}"])
    if case == "s256":
        close(out.x_conv, ref["s256_x_conv"])
        close(out.feature, ref["s256_cnn_feature_final"])
        close(out.tokens, ref["s256_x_t_normed"])
        attn = torch.stack(out.attn_layers).numpy()
        np.testing.assert_allclose(attn, ref["s256_attn_headmean_all_layers"], rtol=0, atol=1e-6)


def test_loader_accepts_official_checkpoint_layouts(model):
    """Conformer-S state dicts in the official layouts load (strict: every key and shape); the
    same layouts through files, and their effect on the outputs, are tested on the small variant
    in test_transcam_doei.py. Every load here writes the model's own values back."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for layout in (sd, {"model": sd}, {"state_dict": {f"module.{k}": v for k, v in sd.items()}}):
        load_transcam_weights(model, layout)
    bad = dict(sd)
    bad["conv_cls_head.weight"] = torch.zeros(20, 1024, 3, 3)
    with pytest.raises(DoeiError, match="conv_cls_head.weight"):
        load_transcam_weights(model, bad)
    # an ImageNet Conformer-S (1000-way linear heads) initialises everything but the two heads
    imagenet = {k: v for k, v in sd.items() if "cls_head" not in k}
    imagenet.update({"conv_cls_head.weight": torch.zeros(1000, 1024), "conv_cls_head.bias": torch.zeros(1000),
                     "trans_cls_head.weight": torch.zeros(1000, 384), "trans_cls_head.bias": torch.zeros(1000)})
    load_transcam_weights(model, {"model": imagenet}, imagenet=True)
    assert torch.equal(model.conv_cls_head.weight, sd["conv_cls_head.weight"])
    del imagenet["trans_1.attn.qkv.weight"]
    with pytest.raises(DoeiError, match="trans_1.attn.qkv.weight"):
        load_transcam_weights(model, imagenet, imagenet=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_cam_pipeline_first_scale_matches_official(model, reference):
    """The pipeline's 256² view and its flip (the official per-view logits and CAMs); the sum,
    normalisation and CRF of all six views are checked by the end-to-end test below and, from the
    fixture's own sum, bit-exactly in test_transcam_pipeline.py."""
    z = reference("transcam_campipeline.npz")
    views: list = []
    total = transcam_sum_cam(model, z["image_uint8"], z["label_vec"], scales=(256,), view_outputs=views)
    for name, (lc, lt, cams) in zip(("s256_flip0", "s256_flip1"), views, strict=True):
        close(lc, z[f"{name}_logits_conv"])
        close(lt, z[f"{name}_logits_trans"])
        close(cams, z[f"{name}_cams"])
    assert total.shape == (20, 120, 157)


def test_cam_pipeline_end_to_end_matches_official(model, reference):
    """infer_TransCAM.py on the fixture image: 6 square views, label-masked sum, the official
    normalisation quirk and the two CRF label maps."""
    z = reference("transcam_campipeline.npz")
    image, labels = z["image_uint8"], z["label_vec"]
    views: list = []
    sum_cam = transcam_sum_cam(model, image, labels, view_outputs=views)
    names = [f"s{s}_flip{f}" for s in (256, 512, 768) for f in (0, 1)]
    for name, (lc, lt, cams) in zip(names, views, strict=True):
        close(lc, z[f"{name}_logits_conv"])
        close(lt, z[f"{name}_logits_trans"])
        if name.startswith("s256"):
            close(cams, z[f"{name}_cams"])
    keys = z["official_cam_keys"]
    close(sum_cam[torch.from_numpy(keys)], z["sum_cam_labeled_raw"])
    assert float(sum_cam[[i for i in range(20) if i not in keys]].abs().max()) == 0.0

    official = normalize_sum_cam(sum_cam, "official")[torch.from_numpy(keys)].numpy()
    np.testing.assert_allclose(official, z["official_cam"], rtol=0, atol=5e-3)
    assert official.min() < -100  # the quirk: zeroed minimum pixels end hugely negative
    crf = crf_seed_labels(image, keys, official, num_classes=20)
    for t in (0.60, 0.25):
        differ = int((crf[t] != z[f"official_crf_{t:.2f}"]).sum())
        assert differ <= 0.001 * crf[t].size, f"t={t}: {differ} pixels differ"
