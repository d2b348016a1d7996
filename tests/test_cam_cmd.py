"""``doei cam`` end to end on a tiny random MCTformer-V2 and five synthetic images in the VOC layout:
outputs, agreement with the in-memory extractor, resume, config files and bad input (exit 2, nothing
written)."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from doei.cam.extractor import CamExtractor, official_views
from doei.cam.io import load_cam
from doei.cli import main
from doei.errors import DoeiError
from doei.models.registry import create_model

SIZES = [(64, 80), (64, 80), (72, 56), (50, 61), (64, 80)]
MODEL = ["--model", "mctformer_v2_tiny_conv", "--num-classes", "20", "--dataset", "voc", "--split", "train"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    """VOC2012-layout folder (labels from the masks) + a {'model': ...} checkpoint with 'module.' keys."""
    root = tmp_path_factory.mktemp("voc")
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids, classes = [], {}
    for i, (h, w) in enumerate(SIZES):
        iid = f"2099_{i:06d}"
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        m = np.zeros((h, w), np.uint8)
        m[5:20, 5:30] = 1 + i
        if i != 3:
            m[30:45, 10:40] = 12 + i
        m[0, :] = 255
        Image.fromarray(img).save(root / "JPEGImages" / f"{iid}.png")
        Image.fromarray(m).save(root / "SegmentationClass" / f"{iid}.png")
        ids.append(iid)
        classes[iid] = sorted({int(v) - 1 for v in np.unique(m) if 0 < v < 255})
    (root / "ImageSets/Segmentation/train.txt").write_text("".join(f"{i}\n" for i in ids))
    torch.manual_seed(0)
    model = create_model("mctformer_v2_tiny_conv", num_classes=20).eval()
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, root / "ckpt.pth")
    torch.save({"model": create_model("mctformer_v2_tiny_conv", num_classes=10).state_dict()}, root / "ckpt10.pth")
    return {"root": root, "ids": ids, "classes": classes, "model": model}


def _run(voc, out, *extra):
    argv = ["cam", *MODEL, "--data-root", str(voc["root"]), "--checkpoint", str(voc["root"] / "ckpt.pth"),
            "--out", str(out), "--no-progress", *extra]
    return main(argv)


@pytest.fixture(scope="module")
def full_run(voc, tmp_path_factory):
    torch.set_num_threads(1)       # module fixtures run before the function-scoped autouse one
    out = tmp_path_factory.mktemp("cams") / "out"
    rc = _run(voc, out, "--scales", "1.0,0.5", "--batch-size", "2", "--save-seeds", "--seed-beta", "0.5",
              "--save-overlays", "--crf-alphas", "1,12")
    return rc, out


def test_outputs_written(voc, full_run):
    rc, out = full_run
    assert rc == 0
    for iid in voc["ids"]:
        classes, cams = load_cam(out / f"{iid}.npz")
        assert classes.tolist() == voc["classes"][iid]
        assert cams.shape[1:] == SIZES[voc["ids"].index(iid)]
        with np.load(out / f"{iid}.npz") as z:
            assert z["cams"].dtype == np.float16
        assert cams.min() >= 0 and cams.max() <= 1
        assert np.all(cams.reshape(len(classes), -1).max(1) > 0.99)
        allowed = {0, *(k + 1 for k in classes)}
        for sub in ("seeds", "crf_alpha1", "crf_alpha12"):
            lab = np.asarray(Image.open(out / sub / f"{iid}.png"))
            assert lab.shape == cams.shape[1:] and set(np.unique(lab)) <= allowed
        ov = Image.open(out / "overlays" / f"{iid}.png")                # image | one cell per class | seeds, legends
        assert ov.mode == "RGB" and ov.size[0] >= min(4, len(classes) + 2) * 128   # cells of 256 px on the longer side
    log = [json.loads(line) for line in (out / "cam_log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log] == ["start"] + ["image"] * 5 + ["end"]
    settings = json.loads((out / "cam_settings.json").read_text())
    assert settings["scales"] == [1.0, 0.5] and settings["crf_alphas"] == [1.0, 12.0]


def test_cams_equal_in_memory_extractor(voc, full_run):
    _, out = full_run
    ex = CamExtractor(voc["model"], scales=(1.0, 0.5))
    for iid in voc["ids"][1:4]:   # id 1 was batched with id 0 (same size); 2, 3 alone
        img = np.asarray(Image.open(voc["root"] / "JPEGImages" / f"{iid}.png"))
        lab = torch.zeros(1, 20)
        lab[0, voc["classes"][iid]] = 1
        ref = ex.from_views(official_views(img, (1.0, 0.5)), lab, img.shape[:2])[0].numpy()
        classes, cams = load_cam(out / f"{iid}.npz")
        np.testing.assert_allclose(cams, ref[classes], atol=1e-3)      # float16 storage


def test_resume_recomputes_only_missing(voc, full_run, capsys):
    _, out = full_run
    victim = out / f"{voc['ids'][2]}.npz"
    victim.unlink()
    (out / "seeds" / f"{voc['ids'][4]}.png").unlink()           # a missing side output also counts
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}
    capsys.readouterr()
    rc = _run(voc, out, "--scales", "1.0,0.5", "--batch-size", "2", "--save-seeds", "--seed-beta", "0.5",
              "--save-overlays", "--crf-alphas", "1,12")
    assert rc == 0
    assert "2 computed, 3 already done" in capsys.readouterr().out
    assert victim.is_file() and (out / "seeds" / f"{voc['ids'][4]}.png").is_file()
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}
    changed = {n for n in before if after[n] != before[n]}
    assert changed == {f"{voc['ids'][4]}.npz"}
    log = [json.loads(line) for line in (out / "cam_log.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "end" and log[-1]["computed"] == 2 and log[-1]["skipped"] == 3


def test_rerun_with_other_settings_is_refused(voc, full_run, capsys):
    _, out = full_run
    rc = _run(voc, out, "--scales", "1.0", "--save-seeds")
    err = capsys.readouterr().err
    assert rc == 2 and "scales" in err and len(err.strip().splitlines()) == 1


def test_config_file_and_float32(voc, tmp_path, capsys):
    cfg = tmp_path / "cam.yaml"
    cfg.write_text(f"model: mctformer_v2_tiny_conv\nnum_classes: 20\ndataset: voc\ndata_root: {voc['root']}\n"
                   "split: train\nscales: [1.0]\ncam_dtype: float32\n")
    out = tmp_path / "out"
    rc = main(["cam", "--config", str(cfg), "--checkpoint", str(voc["root"] / "ckpt.pth"), "--out", str(out),
               "--limit", "2", "--no-progress"])
    assert rc == 0
    assert sorted(p.stem for p in out.glob("*.npz")) == voc["ids"][:2]
    with np.load(out / f"{voc['ids'][0]}.npz") as z:
        assert z["cams"].dtype == np.float32
    cfg.write_text(cfg.read_text() + "scale: 2\n")
    rc = main(["cam", "--config", str(cfg), "--checkpoint", str(voc["root"] / "ckpt.pth"), "--out",
               str(tmp_path / "o2"), "--no-progress"])
    assert rc == 2 and "unknown key 'scale'" in capsys.readouterr().err


# Fixed byte patterns: torch.load(weights_only=True) on random bytes raises UnpicklingError mostly, but
# random.Random(2).randbytes(64) raises IndexError and random.Random(20).randbytes(64) KeyError.
GARBAGE = {"garbage_unpickling": lambda: random.Random(0).randbytes(64),
           "garbage_index_error": lambda: random.Random(2).randbytes(64),
           "garbage_key_error": lambda: random.Random(20).randbytes(64),
           "text": lambda: b"this is a text file, not a checkpoint\n"}


@pytest.mark.parametrize("case", ["missing", "wrong_classes", *GARBAGE, "cuda"])
def test_bad_input_exit_2_nothing_written(voc, tmp_path, capsys, case):
    ckpt = {"missing": voc["root"] / "nope.pth", "wrong_classes": voc["root"] / "ckpt10.pth"}.get(case)
    if case in GARBAGE:
        ckpt = tmp_path / "garbage.pth"
        ckpt.write_bytes(GARBAGE[case]())
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "out"
    argv = ["cam", *MODEL, "--data-root", str(voc["root"]), "--checkpoint", str(ckpt or voc["root"] / "ckpt.pth"),
            "--out", str(out), "--no-progress"]
    if case == "cuda":
        argv += ["--device", "cuda"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("doei cam: error:")
    expected = {"missing": "checkpoint file not found", "wrong_classes": "shape mismatch for cls_token (1, 10, 192)",
                "cuda": "CUDA is not available", **{g: "not a readable weights-only" for g in GARBAGE}}[case]
    assert expected in err
    assert not out.exists()


def test_any_bytes_are_refused_in_one_line(tmp_path):
    """Property over 200 fixed seeds (64 and 300 bytes): every file of random bytes is a one-line DoeiError
    naming the file, whatever exception torch.load raised inside."""
    from doei.models.weights import load_weights_only

    f = tmp_path / "bytes.pth"
    for seed in range(200):
        f.write_bytes(random.Random(seed).randbytes(64 if seed % 2 else 300))
        with pytest.raises(DoeiError) as e:
            load_weights_only(f)
        assert str(e.value).startswith(f"{f}: not a readable") and "\n" not in str(e.value), seed


def test_bad_dataset_exit_2(voc, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["cam", *MODEL, "--data-root", str(tmp_path / "nowhere"), "--checkpoint", str(voc["root"] / "ckpt.pth"),
            "--out", str(out)]
    assert main(argv) == 2
    assert "dataset folder not found" in capsys.readouterr().err
    assert not out.exists()
