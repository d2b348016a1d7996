"""``doei eval`` end to end: official parity through files (.npy with --trust-pickle, our .npz, PNG
label maps), the report JSON, real VOC palette masks, and every bad input -> one line, exit 2, no file."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from doei.cam.io import save_cam
from doei.cli import main

FIXTURE_BETAS = "0,0.05,0.1,0.2,0.25,0.3,0.4,0.5,0.6,0.8,1"


def _write_png(path: Path, arr: np.ndarray) -> None:
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def fixture_dirs(tmp_path_factory, reference):
    """The evaluation fixture on disk: gt/*.png, npy/*.npy (official dicts), npz/*.npz (ours),
    png/*.png (the PNG-mode predictions) and list.txt."""
    z = reference("mctformer_evaluation.npz")
    root = tmp_path_factory.mktemp("evalfix")
    for d in ("gt", "npy", "npz", "png"):
        (root / d).mkdir()
    names = [str(n) for n in z["names"]]
    for n, name in enumerate(names):
        _write_png(root / "gt" / f"{name}.png", z["gt"][n])
        _write_png(root / "png" / f"{name}.png", z["png_pred"][n])
        keys, cams = z[f"cam{n}_keys"], z[f"cam{n}"]
        np.save(root / "npy" / f"{name}.npy", {int(k): cams[i] for i, k in enumerate(keys)})  # official format
        save_cam(root / "npz" / f"{name}.npz", keys, cams, dtype=np.float32)
    (root / "list.txt").write_text("\n".join(names) + "\n\n")
    return root, z


def _run(capsys, *argv):
    rc = main(["eval", *map(str, argv), "--no-progress"])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize("kind", ["npy", "npz"])
def test_npy_and_npz_parity_every_threshold(fixture_dirs, tmp_path, capsys, kind):
    root, z = fixture_dirs
    out = tmp_path / "m.json"
    extra = ["--trust-pickle"] if kind == "npy" else []
    rc, stdout, err = _run(capsys, "--pred", root / kind, "--gt", root / "gt",
                           "--list", root / "list.txt", "--betas", FIXTURE_BETAS, "--out", out, *extra)
    assert rc == 0, err
    rep = json.loads(out.read_text())
    assert rep["pred_type"] == ("npy" if kind == "npy" else "cam")
    assert rep["mean_convention"] == "all" and rep["num_images"] == 6
    sw = rep["sweep"]
    assert [s["beta"] for s in sw] == z["thresholds"].tolist()
    np.testing.assert_array_equal([s["mIoU"] for s in sw], z["npy_mIoU_pct"])  # exact float64
    np.testing.assert_array_equal([s["FP"] for s in sw], z["npy_FP_pct"])
    np.testing.assert_array_equal([s["FN"] for s in sw], z["npy_FN_pct"])
    best = int(np.argmax(z["npy_mIoU_pct"]))  # 0.5 (0.6 ties; lowest wins)
    assert rep["beta"] == z["thresholds"][best] == 0.5
    assert rep["mIoU"] == z["npy_mIoU_pct"][best]
    pc = rep["per_class"]
    np.testing.assert_array_equal([r["IoU"] for r in pc], z["npy_IoU_pct"][best])
    np.testing.assert_array_equal([r["TP"] for r in pc], z["npy_TP"][best])
    np.testing.assert_array_equal([r["P"] for r in pc], z["npy_P"][best])
    np.testing.assert_array_equal([r["T"] for r in pc], z["npy_T"][best])
    assert pc[15]["name"] == "person" and pc[0]["name"] == "background"
    assert "best beta: 0.5" in stdout and "aeroplane" in stdout


def test_npy_needs_trust_pickle(fixture_dirs, tmp_path, capsys):
    root, _ = fixture_dirs
    out = tmp_path / "m.json"
    rc, _, err = _run(capsys, "--pred", root / "npy", "--gt", root / "gt", "--list", root / "list.txt", "--out", out)
    assert rc == 2 and "--trust-pickle" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_png_mode_parity_and_present_convention(fixture_dirs, tmp_path, capsys):
    root, z = fixture_dirs
    out = tmp_path / "m.json"
    rc, stdout, err = _run(capsys, "--pred", root / "png", "--gt", root / "gt", "--list", root / "list.txt",
                           "--out", out)
    assert rc == 0, err
    rep = json.loads(out.read_text())
    assert rep["pred_type"] == "png" and rep["beta"] is None and "sweep" not in rep
    assert rep["mIoU"] == z["png_mIoU_pct"] and rep["FP"] == z["png_FP_pct"] and rep["FN"] == z["png_FN_pct"]
    np.testing.assert_array_equal([r["IoU"] for r in rep["per_class"]], z["png_IoU_pct"])
    rc, _, _ = _run(capsys, "--pred", root / "png", "--gt", root / "gt", "--list", root / "list.txt",
                    "--out", out, "--mean", "present")
    rep2 = json.loads(out.read_text())
    present = [r["present"] for r in rep2["per_class"]]
    assert rep2["mean_convention"] == "present" and 0 < sum(present) < 21
    assert rep2["mIoU"] == pytest.approx(np.mean(z["png_IoU_pct"][present]), rel=1e-12)
    assert rep2["mIoU"] > rep["mIoU"]
    assert rep2["means"]["all"]["mIoU"] == rep["mIoU"]


def test_default_sweep_and_workers_agree(fixture_dirs, tmp_path, capsys):
    root, _ = fixture_dirs
    o1, o2 = tmp_path / "a.json", tmp_path / "b.json"
    common = ["--pred", root / "npz", "--gt", root / "gt", "--list", root / "list.txt"]
    assert _run(capsys, *common, "--out", o1)[0] == 0
    assert _run(capsys, *common, "--out", o2, "--workers", "2")[0] == 0
    r1, r2 = json.loads(o1.read_text()), json.loads(o2.read_text())
    assert len(r1["sweep"]) == 19 and r1["sweep"][5]["beta"] == 0.3 and r1["sweep"][-1]["beta"] == 0.95
    assert r1 == r2


def test_real_voc_masks_against_themselves(shared_dir, tmp_path, capsys):
    voc = shared_dir / "data" / "voc_real_mini"
    out = tmp_path / "m.json"
    lst = voc / "ImageSets" / "Segmentation" / "val.txt"
    rc, _, err = _run(capsys, "--pred", voc / "SegmentationClass", "--gt", voc / "SegmentationClass",
                      "--list", lst, "--out", out, "--mean", "present")
    assert rc == 0, err
    rep = json.loads(out.read_text())
    ids = lst.read_text().split()
    assert rep["num_images"] == len(ids) == 19
    present = {r["class"] for r in rep["per_class"] if r["present"]}
    # classes of the masks, from the (independent) manifest: ground truth values minus 255
    manifest = {m["id"]: m for m in json.loads((voc / "manifest.json").read_text())}
    expected = {0} | {c for i in ids for c in manifest[i]["classes"]}
    assert present == expected
    assert rep["mIoU"] == pytest.approx(100.0, abs=1e-8) and rep["FP"] == 0 and rep["FN"] == 0
    assert rep["means"]["all"]["mIoU"] == pytest.approx(100.0 * len(expected) / 21, abs=1e-8)
    total = sum(np.sum(np.array(Image.open(voc / "SegmentationClass" / f"{i}.png")) != 255) for i in ids)
    assert sum(r["T"] for r in rep["per_class"]) == total


def test_real_voc_shifted_prediction(shared_dir, tmp_path, capsys):
    """A prediction that is all background scores background IoU = T0/(T0 + rest), others 0."""
    voc = shared_dir / "data" / "voc_real_mini"
    ids = ["2007_001311", "2007_004189"]
    pred = tmp_path / "pred"
    pred.mkdir()
    t0 = n = 0
    for i in ids:
        g = np.array(Image.open(voc / "SegmentationClass" / f"{i}.png"))
        _write_png(pred / f"{i}.png", np.zeros_like(g))
        t0 += int(np.sum(g == 0))
        n += int(np.sum(g != 255))
    (tmp_path / "l.txt").write_text("\n".join(ids))
    out = tmp_path / "m.json"
    rc, _, err = _run(capsys, "--pred", pred, "--gt", voc / "SegmentationClass", "--list", tmp_path / "l.txt",
                      "--out", out)
    assert rc == 0, err
    rep = json.loads(out.read_text())
    assert rep["per_class"][0]["IoU"] == t0 / (n + 1e-10) * 100
    assert rep["mIoU"] == pytest.approx(t0 / n * 100 / 21, rel=1e-12)


# ---------------------------------------------------------------------------------------------- bad input


@pytest.fixture()
def bad_setup(tmp_path):
    """Three synthetic 40x50 images (gt/, npz/, png/, list.txt) that a test may damage; independent
    of ../shared so that the bad-input tests always run."""
    rng = np.random.default_rng(1)
    names = ["2099_000100", "2099_000101", "2099_000102"]
    for d in ("gt", "npz", "png"):
        (tmp_path / d).mkdir()
    for name in names:
        gt = rng.integers(0, 21, (40, 50)).astype(np.uint8)
        gt[:, :2] = 255
        _write_png(tmp_path / "gt" / f"{name}.png", gt)
        _write_png(tmp_path / "png" / f"{name}.png", np.where(gt == 255, 0, gt))
        save_cam(tmp_path / "npz" / f"{name}.npz", np.array([2, 7]), rng.random((2, 40, 50)))
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n")
    rc = main(["eval", "--pred", str(tmp_path / "npz"), "--gt", str(tmp_path / "gt"), "--list",
               str(tmp_path / "list.txt"), "--no-progress"])
    assert rc == 0  # the intact set is fine
    return tmp_path


def _expect_error(capsys, setup: Path, needle: str, pred: str = "npz", extra=(), lst=None):
    out = setup / "out" / "m.json"
    rc, _, err = _run(capsys, "--pred", setup / pred, "--gt", setup / "gt", "--list", lst or setup / "list.txt",
                      "--out", out, *extra)
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("doei eval: error: "), err
    assert needle in lines[0], lines[0]
    assert not out.exists() and not (setup / "out").exists()
    return lines[0]


NAME = "2099_000101"


def test_bad_truncated_gt(capsys, bad_setup):
    p = bad_setup / "gt" / f"{NAME}.png"
    p.write_bytes(p.read_bytes()[:60])
    msg = _expect_error(capsys, bad_setup, f"{NAME}.png")
    assert "truncated" in msg or "unreadable" in msg


def test_bad_unreadable_prediction_png(capsys, bad_setup):
    (bad_setup / "png" / f"{NAME}.png").write_bytes(b"not a png at all")
    _expect_error(capsys, bad_setup, f"png/{NAME}.png", pred="png")


def test_bad_truncated_npz(capsys, bad_setup):
    p = bad_setup / "npz" / f"{NAME}.npz"
    p.write_bytes(p.read_bytes()[:100])
    _expect_error(capsys, bad_setup, f"{NAME}.npz: unreadable")


def test_bad_size_mismatch(capsys, bad_setup):
    _write_png(bad_setup / "png" / f"{NAME}.png", np.zeros((40, 49), np.uint8))
    _expect_error(capsys, bad_setup, "size (40, 49)", pred="png")
    save_cam(bad_setup / "npz" / f"{NAME}.npz", np.array([1]), np.zeros((1, 41, 50)))
    _expect_error(capsys, bad_setup, "size (41, 50)")


def test_bad_gt_label(capsys, bad_setup):
    g = np.array(Image.open(bad_setup / "gt" / f"{NAME}.png"))
    g[3, 3] = 37
    _write_png(bad_setup / "gt" / f"{NAME}.png", g)
    _expect_error(capsys, bad_setup, f"{NAME}.png: ground truth label 37 outside 0..20 (or 255)")


def test_bad_prediction_label(capsys, bad_setup):
    g = np.zeros((40, 50), np.uint8)
    g[0, 0] = 21
    _write_png(bad_setup / "png" / f"{NAME}.png", g)
    _expect_error(capsys, bad_setup, "prediction label 21 outside 0..20", pred="png")


def test_bad_rgb_gt(capsys, bad_setup):
    Image.new("RGB", (50, 40)).save(bad_setup / "gt" / f"{NAME}.png")
    _expect_error(capsys, bad_setup, "mode RGB")


def test_bad_list_names_missing_file(capsys, bad_setup):
    with open(bad_setup / "list.txt", "a") as f:
        f.write("2099_999999\n")
    _expect_error(capsys, bad_setup, "2099_999999.png: ground truth file not found")
    shutil.copy(bad_setup / "gt" / f"{NAME}.png", bad_setup / "gt" / "2099_999999.png")
    _expect_error(capsys, bad_setup, "2099_999999.npz: prediction file not found")


def test_bad_cam_nan_and_inf(capsys, bad_setup):
    from doei.utils.io import atomic_save_npz

    cams = np.zeros((1, 40, 50), np.float16)
    cams[0, 5, 5] = np.nan
    atomic_save_npz(bad_setup / "npz" / f"{NAME}.npz", classes=np.array([1]), cams=cams)
    _expect_error(capsys, bad_setup, f"{NAME}.npz: CAM contains NaN or Inf")
    cams[0, 5, 5] = np.inf
    atomic_save_npz(bad_setup / "npz" / f"{NAME}.npz", classes=np.array([1]), cams=cams)
    _expect_error(capsys, bad_setup, "NaN or Inf")


def test_bad_cam_class_id(capsys, bad_setup):
    save_cam(bad_setup / "npz" / f"{NAME}.npz", np.array([3, 20]), np.zeros((2, 40, 50)))
    _expect_error(capsys, bad_setup, "CAM class id 20 >= num_classes-1 = 20")
    save_cam(bad_setup / "npz" / f"{NAME}.npz", np.array([3, 3]), np.zeros((2, 40, 50)))
    _expect_error(capsys, bad_setup, "duplicate CAM class ids")


def test_bad_lists(capsys, bad_setup):
    lst = bad_setup / "l.txt"
    lst.write_text("\n  \n")
    _expect_error(capsys, bad_setup, "l.txt: id list is empty", lst=lst)     # the datasets' reader (one)
    lst.write_text(f"{NAME}\n{NAME}\n")
    _expect_error(capsys, bad_setup, f"l.txt: duplicate image id '{NAME}'", lst=lst)
    for bad in ("../gt/2099_000101", "sub/2099_000101", "JPEGImages/2099_000101.jpg 1", ".."):
        lst.write_text(bad + "\n")
        _expect_error(capsys, bad_setup, "l.txt:1:", lst=lst)
    _expect_error(capsys, bad_setup, "nope.txt: id list not found", lst=bad_setup / "nope.txt")


def test_bad_options(capsys, bad_setup):
    _expect_error(capsys, bad_setup, "--betas", extra=["--betas", "0.5,abc"])
    _expect_error(capsys, bad_setup, "--betas", extra=["--betas", "0.9:0.1:0.1"])
    _expect_error(capsys, bad_setup, "--betas applies to CAM predictions only", pred="png", extra=["--betas", "0.3"])
    _expect_error(capsys, bad_setup, "--num-classes 300: expected 1..254", extra=["--num-classes", "300"])
    _expect_error(capsys, bad_setup, "prediction directory not found", pred="nodir")


def test_parse_betas():
    from doei.eval.betas import parse_betas

    b = parse_betas("0.05:0.95:0.05")
    assert len(b) == 19 and b[5] == 0.3 and b[-1] == 0.95
    assert parse_betas("0:0.6:0.01") == [i / 100 for i in range(61)]  # the official curve's i/100
    assert parse_betas("0.3") == [0.3] and parse_betas("0.2,0.1,0.2") == [0.1, 0.2]


def test_cam_without_classes_and_ambiguous_type(fixture_dirs, tmp_path, capsys):
    root, z = fixture_dirs
    name = str(z["names"][0])
    (tmp_path / "p").mkdir()
    save_cam(tmp_path / "p" / f"{name}.npz", np.zeros(0, np.int64), np.zeros((0, 40, 50)))
    (tmp_path / "l.txt").write_text(name + "\n")
    out = tmp_path / "o" / "m.json"
    rc, _, err = _run(capsys, "--pred", tmp_path / "p", "--gt", root / "gt", "--list", tmp_path / "l.txt",
                      "--out", out, "--betas", "0.5")
    assert rc == 0, err
    rep = json.loads(out.read_text())
    gt = z["gt"][0]
    assert rep["per_class"][0]["P"] == int(np.sum(gt != 255)) and rep["per_class"][0]["TP"] == int(np.sum(gt == 0))
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.json"]  # nothing else left behind
    _write_png(tmp_path / "p" / f"{name}.png", gt)
    rc, _, err = _run(capsys, "--pred", tmp_path / "p", "--gt", root / "gt", "--list", tmp_path / "l.txt")
    assert rc == 2 and "--pred-type" in err


# ------------------------------------------------------------------------------ class count, betas, --out


@pytest.fixture(scope="module")
def synth_small(tmp_path_factory):
    """A tiny synthetic benchmark (10 classes + background): its GT masks serve as perfect predictions."""
    from doei.data.synth import SynthParams, write_synth

    root = tmp_path_factory.mktemp("synth_eval") / "synth"
    write_synth(root, SynthParams(seed=3, n_train=2, n_val=6, size=32))
    return root


def _synth_argv(root, *extra, out=None):
    argv = ["--pred", root / "SegmentationClass", "--gt", root / "SegmentationClass",
            "--list", root / "ImageSets" / "Segmentation" / "val.txt", *extra]
    return argv + (["--out", out] if out else [])


def test_class_count_comes_from_the_data_not_voc(synth_small, tmp_path, capsys):
    root = synth_small
    names = json.loads((root / "meta.json").read_text())["classes"]
    # no class count given: VOC's 21 would halve the mIoU of a perfect prediction -> refused, nothing written
    out = tmp_path / "m.json"
    rc, _, err = _run(capsys, *_synth_argv(root, out=out))
    assert rc == 2 and not out.exists(), err
    assert len(err.strip().splitlines()) == 1
    assert "VOC's 21 classes were assumed" in err and "--dataset synth --data-root" in err, err
    # from the benchmark itself (--dataset synth, or its meta.json / labels file as --classes): 11 classes, names
    for extra, src in ((["--dataset", "synth", "--data-root", root], "--dataset synth"),
                       (["--classes", root / "meta.json"], "--classes"), (["--classes", root / "cls_labels.json"], "--classes"),
                       (["--num-classes", "10", "--dataset", "synth", "--data-root", root], "--dataset synth")):
        rc, text, err = _run(capsys, *_synth_argv(root, *extra, out=out))
        assert rc == 0 and err == "", err
        rep = json.loads(out.read_text())
        assert rep["num_classes"] == 11 and [r["name"] for r in rep["per_class"]] == ["background"] + names
        assert rep["means"]["present"]["mIoU"] == pytest.approx(100, abs=1e-6)
        assert rep["num_classes_from"].startswith(src) and names[-1] in text
    # an explicit --num-classes 20 (VOC's foreground classes) is honoured, with a loud warning
    rc, _, err = _run(capsys, *_synth_argv(root, "--num-classes", "20", out=out))
    assert rc == 0 and json.loads(out.read_text())["num_classes"] == 21
    assert err.startswith("doei eval: warning: labels in the ground truth and predictions go up to ") and \
        "21 classes are scored (--num-classes 20)" in err, err
    # --num-classes counts foreground classes in every verb: the old background-inclusive 11 is refused
    out.unlink(missing_ok=True)
    rc, _, err = _run(capsys, *_synth_argv(root, "--num-classes", "11", out=out))
    assert rc == 2 and not out.exists() and len(err.strip().splitlines()) == 1, err
    assert "--num-classes 11 counts FOREGROUND classes" in err and "give --num-classes 10" in err, err
    # sources that disagree, or an incomplete one, are refused before anything is read
    for extra, needle in ((["--num-classes", "21", "--classes", root / "meta.json"],
                           "--num-classes 21 but --classes"),
                          (["--dataset", "voc", "--classes", root / "meta.json"], "--dataset voc has 20 foreground classes but --classes"),
                          (["--dataset", "synth"], "--dataset synth needs --data-root"),
                          (["--classes", tmp_path / "none.txt"], "none.txt: class names file not found")):
        out.unlink(missing_ok=True)
        rc, _, err = _run(capsys, *_synth_argv(root, *extra, out=out))
        assert rc == 2 and needle in err and not out.exists(), err


def test_class_count_rule_keeps_voc_and_coco_defaults(fixture_dirs, tmp_path, capsys):
    """Real VOC-class data (labels up to 20) passes the rule with the default 21 and VOC names."""
    root, _ = fixture_dirs
    out = tmp_path / "m.json"
    rc, _, err = _run(capsys, "--pred", root / "png", "--gt", root / "gt", "--list", root / "list.txt", "--out", out)
    assert rc == 0 and err == "", err
    rep = json.loads(out.read_text())
    assert rep["num_classes"] == 21 and rep["per_class"][15]["name"] == "person"
    assert rep["num_classes_from"] == "default (VOC)"
    rc, _, err = _run(capsys, "--pred", root / "png", "--gt", root / "gt", "--list", root / "list.txt",
                      "--dataset", "coco", "--out", out)
    assert rc == 0 and "81 classes are scored (--dataset coco)" in err  # warned: labels <= 20 of 80
    assert json.loads(out.read_text())["per_class"][1]["name"] == "person"


def test_betas_outside_unit_interval_refused(capsys, bad_setup):
    for spec in ("1.5", "-0.1,0.3", "0:1.2:0.1", "-0.5:0.5:0.25"):
        _expect_error(capsys, bad_setup, f"--betas {spec!r}: ", extra=[f"--betas={spec}"])
    from doei.eval.betas import parse_betas

    assert parse_betas("0,1") == [0.0, 1.0]


def test_unwritable_out_refused_before_evaluation(capsys, bad_setup, monkeypatch):
    import os

    import doei.eval.evaluate as ev

    def never(*a, **k):
        raise AssertionError("evaluated before --out was checked")

    monkeypatch.setattr(ev, "evaluate_dirs", never)
    tmp_path = bad_setup / "o"
    tmp_path.mkdir()
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    cases = [(tmp_path / "adir", "is a directory"), (tmp_path / "afile" / "m.json", "afile is a file, not a folder"),
             (tmp_path / "afile" / "deeper" / "m.json", "afile is a file, not a folder")]
    if Path("/proc").is_dir():
        cases.append((Path("/proc/m.json"), "cannot write in /proc"))
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        cases.append((ro / "m.json", "cannot write in"))
    for out, needle in cases:
        rc, _, err = _run(capsys, "--pred", bad_setup / "npz", "--gt", bad_setup / "gt", "--list",
                          bad_setup / "list.txt", "--out", out)
        assert rc == 2 and err.startswith(f"doei eval: error: --out {out}") and needle in err, err
        assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["afile", "adir"] + (["ro"] if os.geteuid() else []))
    assert list((tmp_path / "adir").iterdir()) == []
