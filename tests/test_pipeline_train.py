"""AffinityNet and DeepLab training on tiny data: labels from seeds, determinism, bit-for-bit resume,
the ground-truth guard, and the CLI's one-line errors."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from doei.engine.train_aff import AffinityDataset, random_crop_offsets, train_affinity
from doei.engine.train_seg import SegDataset, check_not_ground_truth, train_segmentation
from doei.errors import DoeiError
from doei.refine.labels import affinity_labels_from_seeds
from tests.pipeline_common import N_TRAIN, make_synth, tiny_config, write_cams_from_masks


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe_train")
    synth = make_synth(root)
    write_cams_from_masks(synth, root / "cam")
    return root, synth


def _cfg(root, synth, out, **kw):
    return tiny_config(synth, out, refine__train__cam_dir=str(root / "cam"), **kw)


def test_affinity_dataset_items(data, tmp_path):
    root, synth = data
    cfg = _cfg(root, synth, tmp_path, refine__train__color_jitter=[0, 0, 0, 0], refine__train__hflip=False)
    from doei.data.build import build_dataset

    base = build_dataset("synth", synth, "train")
    ds = AffinityDataset(base, root / "cam", cfg.refine.train)
    x, bg, fg, neg = ds[0]
    assert x.shape == (3, 72, 72) and bg.shape == fg.shape == neg.shape
    from doei.models.pairs import pair_offsets

    assert bg.shape[0] == len(pair_offsets(4)) == 22  # radius-4 half disc
    assert ((bg + fg + neg) <= 1).all() and (bg + fg + neg).sum() > 0
    # same (seed, epoch, index) -> same item; the crop of a 64-px image inside 72 is a random placement
    assert all(torch.equal(a, b) for a, b in zip(ds[0], ds[0]))
    # a 64-px image placed at (0,0) with no jitter/flip: the labels of its score stacks zero-padded to 72
    # (padding has no score -> ignored, as the official crop after the la/ha maps)
    from doei.cam.io import load_cam
    from doei.refine.labels import (affinity_labels_from_label, block_mean, scores_with_background,
                                    seed_label_from_scores)

    classes, cams = load_cam(root / "cam" / f"{base.records[0].id}.npz")
    pad = lambda a: np.pad(a, ((0, 0), (0, 8), (0, 8)))  # noqa: E731
    la, ha = (block_mean(pad(scores_with_background(cams, a)), 8) for a in (1.0, 12.0))
    ref_label = seed_label_from_scores(la, ha, classes)
    assert (ref_label[-1] == 255).all() and (ref_label[:, -1] == 255).all()
    ref = affinity_labels_from_label(ref_label, 4)
    full_label, _ = affinity_labels_from_seeds(cams, classes, low_alpha=1.0, high_alpha=12.0, radius=4)
    assert np.array_equal(full_label, ref_label[:8, :8])
    from doei.engine.train_aff import item_rng

    for epoch in range(200):  # an epoch whose random placement is (0, 0): then the labels must match exactly
        ds.set_epoch(epoch)
        # with zero jitter strengths no colour factor is drawn, so the crop offsets are the first draws
        if random_crop_offsets(64, 64, 72, item_rng(ds.sec.seed, epoch, 0)) == (0, 0, 0, 0):
            _, b2, f2, n2 = ds[0]
            assert torch.equal(b2, ref[0]) and torch.equal(f2, ref[1]) and torch.equal(n2, ref[2])
            break
    else:
        pytest.skip("no epoch placed the image at (0, 0)")


def test_affinity_training_resumes_bit_for_bit(data, tmp_path):
    root, synth = data
    full = train_affinity(_cfg(root, synth, tmp_path / "a"), log=lambda s: None)
    assert full.epochs_run == 2 and np.isfinite(full.final["loss"])
    part = train_affinity(_cfg(root, synth, tmp_path / "b"), stop_after=1, log=lambda s: None)
    assert part.epochs_run == 1
    rest = train_affinity(_cfg(root, synth, tmp_path / "b"), log=lambda s: None)
    assert rest.epochs_run == 1
    a = torch.load(full.checkpoint, weights_only=True)
    b = torch.load(rest.checkpoint, weights_only=True)
    assert a["step"] == b["step"] == 2 * (N_TRAIN // 2)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    lines = (tmp_path / "b" / "refine" / "metrics.jsonl").read_text().splitlines()
    assert sum('"kind": "epoch"' in ln for ln in lines) == 2
    # frozen BN: running statistics never change during training
    init = torch.load(full.checkpoint, weights_only=True)["model"]
    assert torch.equal(init["bn7.running_mean"], torch.zeros_like(init["bn7.running_mean"]))
    # resuming with a changed recipe is refused
    with pytest.raises(DoeiError, match="cannot resume"):
        train_affinity(_cfg(root, synth, tmp_path / "b", refine__train__lr=0.5, refine__train__epochs=3),
                       log=lambda s: None)


def test_crf_seed_scores_are_cached_and_used(data, tmp_path):
    from doei.data.build import build_dataset
    from doei.engine.train_aff import precompute_crf_scores

    root, synth = data
    sec = _cfg(root, synth, tmp_path, refine__train__crf=True).refine.train
    base = build_dataset("synth", synth, "train")
    assert precompute_crf_scores(base, root / "cam", tmp_path / "scores", sec, progress=False) == N_TRAIN
    assert precompute_crf_scores(base, root / "cam", tmp_path / "scores", sec, progress=False) == 0  # resumable
    with np.load(tmp_path / "scores" / f"{base.records[0].id}.npz") as z:
        assert z["la"].dtype == np.float16 and z["la"].shape == z["ha"].shape
        np.testing.assert_allclose(z["la"].astype(np.float32).sum(0), 1.0, atol=2e-2)  # CRF marginals
    ds = AffinityDataset(base, root / "cam", sec, tmp_path / "scores")
    _, bg, fg, neg = ds[0]
    assert (bg + fg + neg).sum() > 0


def _write_pseudo_from_gt(synth, pseudo, corrupt: bool):
    from doei.cam.visualize import save_label_png
    from doei.data.build import build_dataset

    ds = build_dataset("synth", synth, "train")
    for i, r in enumerate(ds.records):
        m = ds.mask(i).copy()
        if corrupt:
            m[:8] = 0
        save_label_png(pseudo / f"{r.id}.png", m)


def test_seg_training_resumes_bit_for_bit(data, tmp_path):
    root, synth = data
    pseudo = tmp_path / "pseudo"
    _write_pseudo_from_gt(synth, pseudo, corrupt=True)
    kw = {"seg__train__pseudo_dir": str(pseudo)}
    full = train_segmentation(_cfg(root, synth, tmp_path / "a", **kw), log=lambda s: None)
    train_segmentation(_cfg(root, synth, tmp_path / "b", **kw), stop_after=1, log=lambda s: None)
    rest = train_segmentation(_cfg(root, synth, tmp_path / "b", **kw), log=lambda s: None)
    a = torch.load(full.checkpoint, weights_only=True)["model"]
    b = torch.load(rest.checkpoint, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full.final["loss"] > 0 and 0 < full.final["valid_frac"] <= 1
    # the dataset: crop-size items, labels in 0..10 or the ignore pad
    from doei.data.build import build_dataset

    ds = SegDataset(build_dataset("synth", synth, "train"), pseudo, _cfg(root, synth, tmp_path / "c", **kw).seg.train)
    x, y = ds[1]
    assert x.shape == (3, 48, 48) and y.shape == (48, 48) and y.dtype == torch.int64
    assert set(torch.unique(y).tolist()) <= set(range(11)) | {255}


def test_ground_truth_as_pseudo_labels_is_refused(data, tmp_path):
    root, synth = data
    from doei.data.build import build_dataset

    base = build_dataset("synth", synth, "train")
    cfg = _cfg(root, synth, tmp_path)
    with pytest.raises(DoeiError, match="ground-truth folder") as e:
        check_not_ground_truth(synth / "SegmentationClass", base, cfg)
    assert "\n" not in str(e.value)
    copy = tmp_path / "copy"
    shutil.copytree(synth / "SegmentationClass", copy)
    with pytest.raises(DoeiError, match="identical to the ground truth"):
        check_not_ground_truth(copy, base, cfg)
    reencoded = tmp_path / "reenc"
    _write_pseudo_from_gt(synth, reencoded, corrupt=False)  # same labels, different PNG bytes
    with pytest.raises(DoeiError, match="identical to the ground truth"):
        check_not_ground_truth(reencoded, base, cfg)
    honest = tmp_path / "honest"
    _write_pseudo_from_gt(synth, honest, corrupt=True)
    check_not_ground_truth(honest, base, cfg)  # no error


def test_train_seg_cli_refuses_ground_truth(data, tmp_path, capsys):
    import yaml

    from doei.cli import main

    root, synth = data
    cfg = _cfg(root, synth, tmp_path)
    d = cfg.to_dict()
    d["seg"]["train"]["pseudo_dir"] = str(synth / "SegmentationClass")
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(d))
    assert main(["train-seg", "--config", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("doei train-seg: error:") and "ground-truth" in err[0]
    assert not (tmp_path / "seg" / "checkpoint.pt").exists()
    assert main(["refine", "train", "--config", str(f), "--set", "refine.train.cam_dir=/nonexistent"]) == 2
    assert "CAM folder not found" in capsys.readouterr().err


def test_allow_ground_truth_is_an_explicit_oracle_opt_in(data, tmp_path):
    """``seg.train.allow_ground_truth: true`` (the ceiling row of the demo: DeepLab on the true masks) lets a
    copy of the ground truth be trained on; it is a permission, not part of the train-seg fingerprint."""
    from doei.pipeline.markers import fingerprint, stage_settings

    root, synth = data
    copy = tmp_path / "gt_copy"
    shutil.copytree(synth / "SegmentationClass", copy)
    kw = {"seg__train__pseudo_dir": str(copy), "seg__train__epochs": 1}
    with pytest.raises(DoeiError, match="identical to the ground truth"):
        train_segmentation(_cfg(root, synth, tmp_path / "refused", **kw), log=lambda s: None)
    logs: list[str] = []
    cfg = _cfg(root, synth, tmp_path / "oracle", seg__train__allow_ground_truth=True, **kw)
    res = train_segmentation(cfg, log=logs.append)
    assert res.checkpoint.is_file() and any("allow_ground_truth" in s for s in logs)
    plain = _cfg(root, synth, tmp_path / "oracle", **kw)
    assert fingerprint(stage_settings(cfg, "train-seg")) == fingerprint(stage_settings(plain, "train-seg"))


def test_adamw_option_trains_resumes_and_differs_from_sgd(data, tmp_path):
    """``seg.train.optimizer: adamw`` (the from-scratch choice of the demo configs): the checkpoint holds
    AdamW state, an interrupted run resumes bit for bit, and the weights differ from an SGD run."""
    root, synth = data
    pseudo = tmp_path / "pseudo"
    _write_pseudo_from_gt(synth, pseudo, corrupt=True)
    kw = {"seg__train__pseudo_dir": str(pseudo), "seg__train__optimizer": "adamw", "seg__train__lr": 1e-3}
    full = train_segmentation(_cfg(root, synth, tmp_path / "a", **kw), log=lambda s: None)
    train_segmentation(_cfg(root, synth, tmp_path / "b", **kw), stop_after=1, log=lambda s: None)
    rest = train_segmentation(_cfg(root, synth, tmp_path / "b", **kw), log=lambda s: None)
    ck = torch.load(full.checkpoint, weights_only=True)
    assert "exp_avg_sq" in next(iter(ck["optimizer"]["state"].values()))
    b = torch.load(rest.checkpoint, weights_only=True)["model"]
    assert all(torch.equal(ck["model"][k], b[k]) for k in b)
    sgd = train_segmentation(_cfg(root, synth, tmp_path / "s", **{**kw, "seg__train__optimizer": "sgd"}),
                             log=lambda s: None)
    s = torch.load(sgd.checkpoint, weights_only=True)["model"]
    assert any(not torch.equal(s[k], b[k]) for k in b if s[k].is_floating_point())
    with pytest.raises(DoeiError, match="optimizer"):
        _cfg(root, synth, tmp_path / "x", **{**kw, "seg__train__optimizer": "adam"})


def _spy_refusals(monkeypatch) -> list:
    """Every call of :func:`doei.engine.checkpoint.refuse_to_replace`, in whichever doei module imported it."""
    import sys

    from doei.engine import checkpoint

    calls, real = [], checkpoint.refuse_to_replace

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("doei") and getattr(mod, "refuse_to_replace", None) is real:
            monkeypatch.setattr(mod, "refuse_to_replace", spy)
    return calls


@pytest.mark.parametrize("stage", ["refine", "seg"])
def test_the_folder_is_checked_once_and_a_finished_run_refused_before_any_work(data, tmp_path, monkeypatch,
                                                                               capsys, stage):
    """``doei refine train`` / ``doei train-seg`` check once that a fresh start may use the folder (it was
    checked twice, #22); a finished run is refused in one line naming the option, exit 2, before any data is
    read, and its folder is left as it was."""
    import yaml

    from doei.cli import main as cli_main
    from doei.engine import train_aff, train_seg

    root, synth = data
    pseudo = tmp_path / "pseudo"
    _write_pseudo_from_gt(synth, pseudo, corrupt=True)
    cfg = _cfg(root, synth, tmp_path / "r", refine__train__epochs=1, seg__train__epochs=1,
               seg__train__pseudo_dir=str(pseudo))
    train, key = (train_affinity, "refine.train.out_dir") if stage == "refine" else (train_segmentation,
                                                                                     "seg.train.out_dir")
    calls = _spy_refusals(monkeypatch)
    train(cfg, resume=False, log=lambda s: None)
    assert len(calls) == 1, calls
    out = tmp_path / "r" / ("refine" if stage == "refine" else "seg")
    assert str(calls[0][0]) == str(out) and calls[0][2] == key
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def no_data(*a, **k):
        raise AssertionError("data read before the refusal")

    monkeypatch.setattr(train_aff if stage == "refine" else train_seg, "first_images", no_data)
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    capsys.readouterr()
    argv = ["refine", "train"] if stage == "refine" else ["train-seg"]
    assert cli_main([*argv, "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{key} {out}: holds a training run" in err, err
    assert len(calls) == 2
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
