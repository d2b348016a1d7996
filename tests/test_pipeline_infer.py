"""``doei refine infer`` and ``doei infer-seg`` on tiny data with random-weight reduced-width nets:
outputs, resume per image, inline vs worker-process CRF, agreement with the library functions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from doei.seg.infer import infer_segmentation
from doei.refine.infer import infer_pseudo_masks
from doei.errors import DoeiError
from tests.pipeline_common import N_TRAIN, N_VAL, make_synth, tiny_config, write_cams_from_masks


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe_infer")
    synth = make_synth(root)
    write_cams_from_masks(synth, root / "cam")
    from doei.engine.train_aff import build_affinity_model
    from doei.engine.train_seg import build_seg_model

    torch.manual_seed(0)
    aff = build_affinity_model("psa_resnet38_aff_small", {"width": 0.0625}, radius=4)
    torch.save({"model": aff.state_dict()}, root / "aff.pt")
    seg = build_seg_model("deeplab_resnet38_small", 11, {"width": 0.0625})
    torch.save(seg.state_dict(), root / "seg.pt")   # a bare state dict (official .pth style) loads too
    return root, synth


def _cfg(root, synth, out, **kw):
    base = {"refine__infer__cam_dir": str(root / "cam"), "refine__infer__checkpoint": str(root / "aff.pt"),
            "seg__infer__checkpoint": str(root / "seg.pt")}
    return tiny_config(synth, out, **{**base, **kw})


def _png(path) -> np.ndarray:
    return np.array(Image.open(path))


def test_refine_infer_writes_pseudo_masks_and_resumes(data, tmp_path):
    from doei.cam.io import load_cam
    from doei.data.build import build_dataset
    from doei.engine.train_aff import normalize
    from doei.refine.random_walk import random_walk_refine

    root, synth = data
    cfg = _cfg(root, synth, tmp_path)
    s = infer_pseudo_masks(cfg, log=lambda m: None)
    assert (s["computed"], s["skipped"]) == (N_TRAIN, 0)
    ds = build_dataset("synth", synth, "train")
    for i, r in enumerate(ds.records):
        pred = _png(tmp_path / "pseudo" / f"{r.id}.png")
        assert pred.shape == (64, 64) and pred.dtype == np.uint8
        assert set(np.unique(pred)) <= {0} | {k + 1 for k in r.classes}
    # same result as the library call on the features of the padded image
    from doei.refine.infer import load_affinity_model, pad_to_stride

    model = load_affinity_model(cfg, "cpu")
    r0 = ds.records[0]
    classes, cams = load_cam(root / "cam" / f"{r0.id}.npz")
    x = torch.from_numpy(normalize(ds.sample(0).image).transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        f = model.features(pad_to_stride(x))[0]
    ref = random_walk_refine(cams, classes, f, bg_threshold=0.39, beta=8, logt=3, num_classes=11, radius=4)
    assert np.array_equal(ref, _png(tmp_path / "pseudo" / f"{r0.id}.png"))
    # resume: nothing recomputed; a deleted PNG is the only one redone
    (tmp_path / "pseudo" / f"{r0.id}.png").unlink()
    s2 = infer_pseudo_masks(cfg, log=lambda m: None)
    assert (s2["computed"], s2["skipped"]) == (1, N_TRAIN - 1)
    assert np.array_equal(ref, _png(tmp_path / "pseudo" / f"{r0.id}.png"))
    assert not list((tmp_path / "pseudo").glob(".tmp-*"))


def test_refine_infer_bad_inputs(data, tmp_path):
    root, synth = data
    with pytest.raises(DoeiError, match="checkpoint not found"):
        infer_pseudo_masks(_cfg(root, synth, tmp_path, refine__infer__checkpoint=str(tmp_path / "nope.pt")))
    with pytest.raises(DoeiError, match="CAM folder not found"):
        infer_pseudo_masks(_cfg(root, synth, tmp_path, refine__infer__cam_dir=str(tmp_path / "nocams")))
    # a checkpoint of another width does not fit: one-line error naming the shapes
    from doei.engine.train_aff import build_affinity_model

    other = build_affinity_model("psa_resnet38_aff_small", {"width": 0.125}, radius=4)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(DoeiError, match="shape mismatch"):
        infer_pseudo_masks(_cfg(root, synth, tmp_path / "o", refine__infer__checkpoint=str(tmp_path / "other.pt")))


def test_infer_seg_outputs_resume_and_worker_parity(data, tmp_path):
    from doei.data.build import build_dataset
    from doei.seg.crf import CRFParams, crf_refine
    from doei.seg.multiscale import multiscale_predict

    root, synth = data
    inline = _cfg(root, synth, tmp_path / "a")
    s = infer_segmentation(inline, log=lambda m: None)
    assert (s["computed"], s["skipped"]) == (N_VAL, 0)
    pooled = _cfg(root, synth, tmp_path / "b", seg__infer__crf_workers=1)
    infer_segmentation(pooled, log=lambda m: None)
    ds = build_dataset("synth", synth, "val")
    from doei.seg.infer import load_seg_model

    model = load_seg_model(inline, "cpu")
    for i, r in enumerate(ds.records):
        a = {d: _png(tmp_path / "a" / "seg_pred" / d / f"{r.id}.png") for d in ("pred", "pred_crf", "overlay")}
        b = {d: _png(tmp_path / "b" / "seg_pred" / d / f"{r.id}.png") for d in ("pred", "pred_crf", "overlay")}
        for d in a:
            assert np.array_equal(a[d], b[d]), d
        assert a["pred"].shape == (64, 64) and a["overlay"].ndim == 3 and a["overlay"].shape[1] >= 2 * 320  # 2 legend cells
        if i == 0:
            img = ds.sample(i).image
            probs = multiscale_predict(model, img, [0.75, 1.0], flip=True)
            assert np.array_equal(a["pred"], probs.argmax(0).numpy())
            crf = crf_refine(img, probs.numpy().astype(np.float16).astype(np.float32), CRFParams(4, 3, 83, 5, 3))
            assert np.array_equal(a["pred_crf"], crf.argmax(0))
    # resume: all done -> nothing computed; a missing CRF output redoes only that image
    (tmp_path / "a" / "seg_pred" / "pred_crf" / f"{ds.records[1].id}.png").unlink()
    s2 = infer_segmentation(inline, log=lambda m: None)
    assert (s2["computed"], s2["skipped"]) == (1, N_VAL - 1)
    log = (tmp_path / "a" / "seg_pred" / "infer_seg_log.jsonl").read_text().splitlines()
    assert sum('"event": "crf"' in ln for ln in log) == N_VAL + 1
    assert not list((tmp_path / "a" / "seg_pred").rglob(".tmp-*"))


def test_infer_seg_without_crf_and_bad_checkpoint(data, tmp_path, capsys):
    root, synth = data
    cfg = _cfg(root, synth, tmp_path, seg__infer__crf=False, seg__infer__scales=[1.0], seg__infer__flip=False)
    infer_segmentation(cfg, log=lambda m: None)
    assert not (tmp_path / "seg_pred" / "pred_crf").exists()
    assert len(list((tmp_path / "seg_pred" / "overlay").glob("*.png"))) == N_VAL
    import yaml

    from doei.cli import main

    d = cfg.to_dict()
    d["seg"]["infer"]["checkpoint"] = str(root / "aff.pt")  # an AffinityNet checkpoint for the seg net
    d["seg"]["infer"]["out_dir"] = str(tmp_path / "x")
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(d))
    assert main(["infer-seg", "--config", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("doei infer-seg: error:")
    assert not list((tmp_path / "x").rglob("*.png"))


def test_infer_seg_starts_no_crf_processes_it_cannot_use(data, tmp_path, monkeypatch):
    """#21: the paper configs' crf_workers: 8 spawned 8 processes (each importing torch) even for one image."""
    import doei.seg.infer as seg_infer

    root, synth = data
    started = []
    real = seg_infer.mp.get_context

    def spy(*a, **k):
        ctx = real(*a, **k)
        pool = ctx.Pool

        def counted(n, *pa, **pk):
            started.append(n)
            return pool(n, *pa, **pk)

        ctx.Pool = counted
        return ctx

    monkeypatch.setattr(seg_infer.mp, "get_context", spy)
    one = _cfg(root, synth, tmp_path / "one", seg__infer__crf_workers=3)
    assert infer_segmentation(one, limit=1, log=lambda m: None)["computed"] == 1
    assert started == []                                   # one image: CRF in this process
    two = _cfg(root, synth, tmp_path / "two", seg__infer__crf_workers=3)
    assert infer_segmentation(two, log=lambda m: None)["computed"] == N_VAL
    assert started == [min(3, N_VAL)]                      # never more processes than images
