"""One catalogue of bad inputs across the commands, each run through ``doei.cli.main``.

Every case must give exit status 2, exactly one stderr line ``doei <cmd>: error: ...`` that names the
offending file/key/value (asserted by a regular expression), and leave no output behind (the
command's output path absent, or at least nothing for the bad item and no ``.tmp-*`` file). Several
cases are also tested in the per-module tests; this file states them in one place on one small
shared setup (3 synthetic VOC-layout images, a tiny random MCTformer-V2 checkpoint).

The "pickle that would execute code" cases hand the loaders a ``torch.save`` of an object whose
``__reduce__`` opens a marker file for writing: the marker must not exist afterwards.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from doei.cam.io import save_cam
from doei.cli import main

SIZE = 32
TINY = {"img_size": SIZE, "depth": 2, "embed_dim": 32, "num_heads": 2}


class _Evil:
    """Unpickling this calls ``open(marker, "w")`` — i.e. creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Synthetic VOC-layout data, GT folder + list, CAMs, tiny checkpoints, train/cam/pipeline configs."""
    from doei.data.synth import SynthParams, write_synth
    from doei.models.registry import create_model

    root = tmp_path_factory.mktemp("catalogue")
    data = root / "synth"
    write_synth(data, SynthParams(seed=1, n_train=3, n_val=2, size=SIZE))
    ids = [ln.split()[0] for ln in (data / "ImageSets/Segmentation/train.txt").read_text().split("\n") if ln.strip()]
    gt, pred, cams = root / "gt", root / "pred", root / "cams"
    for d in (gt, pred, cams):
        d.mkdir()
    for i in ids:
        m = np.array(Image.open(data / "SegmentationClass" / f"{i}.png"))
        Image.fromarray(m).save(gt / f"{i}.png")
        Image.fromarray(m).save(pred / f"{i}.png")
        save_cam(cams / f"{i}.npz", np.array([0]), np.full((1,) + m.shape, 0.5, np.float32), dtype=np.float32)
    (root / "list.txt").write_text("".join(f"{i}\n" for i in ids))
    torch.manual_seed(0)
    torch.save({"model": create_model("mctformer_v2_tiny_conv", num_classes=10, **TINY).state_dict()},
               root / "ckpt10.pth")
    torch.save({"model": create_model("mctformer_v2_tiny_conv", num_classes=20, **TINY).state_dict()},
               root / "ckpt20.pth")
    torch.save({"model": create_model("tscam_tiny_conv", num_classes=10, **TINY).state_dict()}, root / "tscam.pth")
    (root / "cam.yaml").write_text(yaml.safe_dump({"model_kwargs": TINY}))
    train_cfg = {"model": {"name": "mctformer_v2_tiny_conv", "num_classes": 10, "img_size": SIZE,
                           "options": {k: v for k, v in TINY.items() if k != "img_size"}},
                 "data": {"kind": "synth", "root": str(data), "train_split": "train", "transform": "resize"},
                 "train": {"epochs": 1, "batch_size": 2, "device": "cpu", "progress": False,
                           "out_dir": str(root / "never")}}
    (root / "train.yaml").write_text(yaml.safe_dump(train_cfg))
    return {"root": root, "data": data, "ids": ids, "gt": gt, "pred": pred, "cams": cams, "train": train_cfg}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _png_truncated(path: Path) -> None:
    b = path.read_bytes()
    path.write_bytes(b[: len(b) // 2])


def _eval(b, t, pred=None, gt=None, lst=None, *extra):
    return ["eval", "--pred", str(pred or b["pred"]), "--gt", str(gt or b["gt"]), "--list", str(lst or b["root"] / "list.txt"),
            "--out", str(t / "out.json"), "--no-progress", *extra]


def _cam(b, t, data=None, ckpt="ckpt10.pth", n=10, *extra):
    return ["cam", "--config", str(b["root"] / "cam.yaml"), "--model", "mctformer_v2_tiny_conv", "--num-classes", str(n),
            "--dataset", "synth", "--data-root", str(data or b["data"]), "--split", "train", "--n-layers", "2",
            "--checkpoint", str(b["root"] / ckpt if isinstance(ckpt, str) else ckpt), "--out", str(t / "out"),
            "--no-progress", *extra]


def _train(b, t, edit):
    cfg = yaml.safe_load(yaml.safe_dump(b["train"]))
    cfg["train"]["out_dir"] = str(t / "out")
    edit(cfg)
    p = t / "train.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return ["train-cls", "--config", str(p)]


def _pipeline(b, t, edit):
    cfg = {"run": {"out_dir": str(t / "out"), "device": "cpu", "progress": False},
           "data": {"kind": "synth", "root": str(b["data"]), "train_split": "train", "val_split": "val",
                    "num_classes": 10}}
    edit(cfg)
    p = t / "pipe.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


# ------------------------------------------------------------------------------------ the cases
def c_truncated_pred_png(b, t):
    pred = _copy(b["pred"], t / "pred")
    _png_truncated(pred / f"{b['ids'][1]}.png")
    return _eval(b, t, pred=pred), rf"{b['ids'][1]}\.png"


def c_truncated_gt_png(b, t):
    gt = _copy(b["gt"], t / "gt")
    _png_truncated(gt / f"{b['ids'][0]}.png")
    return _eval(b, t, gt=gt), rf"{b['ids'][0]}\.png"


def c_rgb_gt(b, t):
    gt = _copy(b["gt"], t / "gt")
    p = gt / f"{b['ids'][0]}.png"
    Image.open(p).convert("RGB").save(p)
    return _eval(b, t, gt=gt), rf"{b['ids'][0]}\.png.*(mode|RGB)"


def c_16bit_gt(b, t):
    gt = _copy(b["gt"], t / "gt")
    p = gt / f"{b['ids'][0]}.png"
    Image.fromarray(np.array(Image.open(p)).astype(np.uint16) * 300).save(p)
    return _eval(b, t, gt=gt), rf"{b['ids'][0]}\.png"


def c_size_mismatch(b, t):
    pred = _copy(b["pred"], t / "pred")
    p = pred / f"{b['ids'][2]}.png"
    Image.open(p).resize((SIZE + 4, SIZE)).save(p)
    return _eval(b, t, pred=pred), rf"{b['ids'][2]}.*(size|shape)"


def c_gt_label_out_of_range(b, t):
    gt = _copy(b["gt"], t / "gt")
    p = gt / f"{b['ids'][0]}.png"
    m = np.array(Image.open(p))
    m[0, 0] = 77
    Image.fromarray(m).save(p)
    return _eval(b, t, gt=gt), rf"{b['ids'][0]}\.png.*77"


def c_pred_label_out_of_range(b, t):
    pred = _copy(b["pred"], t / "pred")
    p = pred / f"{b['ids'][0]}.png"
    m = np.array(Image.open(p))
    m[1, 1] = 30
    Image.fromarray(m).save(p)
    return _eval(b, t, pred, None, None, "--num-classes", "10"), rf"{b['ids'][0]}\.png.*30"


def c_empty_list(b, t):
    (t / "list.txt").write_text("\n\n")
    return _eval(b, t, lst=t / "list.txt"), r"list\.txt.*(empty|no )"


def c_duplicate_ids(b, t):
    (t / "list.txt").write_text(f"{b['ids'][0]}\n{b['ids'][1]}\n{b['ids'][0]}\n")
    return _eval(b, t, lst=t / "list.txt"), rf"list\.txt.*{b['ids'][0]}.*(duplicate|twice|more than once)|duplicate.*{b['ids'][0]}"


def c_id_escapes_root(b, t):
    (t / "list.txt").write_text(f"{b['ids'][0]}\n../../etc/passwd\n")
    return _eval(b, t, lst=t / "list.txt"), r"\.\./\.\./etc/passwd"


def c_missing_prediction(b, t):
    pred = _copy(b["pred"], t / "pred")
    (pred / f"{b['ids'][1]}.png").unlink()
    return _eval(b, t, pred=pred), rf"{b['ids'][1]}"


def c_nan_cam(b, t):
    cams = _copy(b["cams"], t / "cams")
    p = cams / f"{b['ids'][0]}.npz"
    a = np.full((1, SIZE, SIZE), 0.5, np.float32)
    a[0, 3, 3] = np.nan
    np.savez(p, classes=np.array([0]), cams=a)
    return _eval(b, t, pred=cams), rf"{b['ids'][0]}\.npz.*(NaN|nan|finite)"


def c_inf_cam(b, t):
    cams = _copy(b["cams"], t / "cams")
    p = cams / f"{b['ids'][1]}.npz"
    a = np.full((1, SIZE, SIZE), 0.5, np.float32)
    a[0, 0, 0] = np.inf
    np.savez(p, classes=np.array([0]), cams=a)
    return _eval(b, t, pred=cams), rf"{b['ids'][1]}\.npz.*(Inf|inf|finite)"


def c_cam_pickled_object_array(b, t):
    cams = _copy(b["cams"], t / "cams")
    p = cams / f"{b['ids'][0]}.npz"
    np.savez(p, classes=np.array([0]), cams=np.array([{"x": 1}], dtype=object))
    return _eval(b, t, pred=cams), rf"{b['ids'][0]}\.npz"


def c_truncated_image(b, t):
    data = _copy(b["data"], t / "data")
    imgs = sorted((data / "JPEGImages").iterdir())
    _png_truncated(imgs[0])
    return _cam(b, t, data=data), re.escape(imgs[0].name)


def c_gt_two_channel_mode(b, t):
    # (images in wide or odd modes are accepted by design: doei.data scales them to 8-bit RGB)
    gt = _copy(b["gt"], t / "gt")
    p = gt / f"{b['ids'][2]}.png"
    Image.open(p).convert("LA").save(p)
    return _eval(b, t, gt=gt), rf"{b['ids'][2]}\.png.*LA"


def c_checkpoint_wrong_class_count(b, t):
    return _cam(b, t, ckpt="ckpt20.pth"), r"ckpt20\.pth"


def c_checkpoint_wrong_model(b, t):
    return _cam(b, t, ckpt="tscam.pth"), r"tscam\.pth"


def c_checkpoint_pickle_executes_code_cam(b, t):
    marker = t / "PWNED"
    torch.save({"model": _Evil(marker)}, t / "evil.pth")
    return _cam(b, t, ckpt=t / "evil.pth"), r"evil\.pth", marker


def c_checkpoint_pickle_executes_code_resume(b, t):
    marker = t / "PWNED"
    (t / "out").mkdir()
    torch.save({"format": "doei-train-ckpt-v1", "model": _Evil(marker)}, t / "out" / "checkpoint.pt")
    argv = _train(b, t, lambda c: None) + ["--resume"]
    return argv, r"checkpoint\.pt.*weights-only", marker


def c_truncated_checkpoint(b, t):
    data = (b["root"] / "ckpt10.pth").read_bytes()
    (t / "half.pth").write_bytes(data[: len(data) // 3])
    return _cam(b, t, ckpt=t / "half.pth"), r"half\.pth"


def c_cam_config_unknown_key(b, t):
    (t / "cam.yaml").write_text("model_kwargs: {depth: 2}\nscale: [1.0]\n")
    argv = _cam(b, t)
    argv[argv.index("--config") + 1] = str(t / "cam.yaml")
    return argv, r"cam\.yaml.*scale"


def c_cam_bad_scales_flag(b, t):
    return _cam(b, t) + ["--scales", "1.0,big"], r"--scales.*big"


def c_train_mistyped_key(b, t):
    return _train(b, t, lambda c: c["train"].__setitem__("epochz", 2)), r"train\.yaml.*epochz"


def c_train_wrong_type(b, t):
    return _train(b, t, lambda c: c["train"].__setitem__("batch_size", "eight")), r"batch_size.*eight"


def c_train_value_out_of_range(b, t):
    return _train(b, t, lambda c: c["optim"].__setitem__("lr", -1.0) if "optim" in c
                  else c.__setitem__("optim", {"lr": -1.0})), r"optim\.lr.*-1"


def c_train_missing_dataset(b, t):
    return _train(b, t, lambda c: c["data"].__setitem__("root", str(t / "nowhere"))), r"nowhere"


def c_train_num_classes_mismatch(b, t):
    return _train(b, t, lambda c: c["model"].__setitem__("num_classes", 7)), r"num_classes.*7|7.*classes"


def c_run_unknown_section(b, t):
    p = _pipeline(b, t, lambda c: c.__setitem__("segg", {}))
    return ["run", "--config", str(p)], r"pipe\.yaml.*segg"


def c_run_unknown_stage(b, t):
    p = _pipeline(b, t, lambda c: c["run"].__setitem__("stages", ["train-cls", "cams"]))
    return ["run", "--config", str(p)], r"run\.stages.*cams"


def c_coco_masks_corrupt_json(b, t):
    (t / "inst.json").write_text('{"images": [ {"id": 1, "file_name"')
    return ["coco-masks", "--ann", str(t / "inst.json"), "--out", str(t / "out")], r"inst\.json"


def _coco_json(t, edit):
    """One 6x8 image with one polygon annotation (id 10) of category 17 (cat), after ``edit(d)``."""
    d = {"images": [{"id": 1, "file_name": "a.jpg", "height": 6, "width": 8}],
         "annotations": [{"id": 10, "image_id": 1, "category_id": 17, "iscrowd": 0, "area": 12.0,
                          "bbox": [1, 1, 4, 3], "segmentation": [[1, 1, 5, 1, 5, 4, 1, 4]]}],
         "categories": [{"id": 17, "name": "cat"}]}
    edit(d)
    (t / "inst.json").write_text(json.dumps(d))
    return str(t / "inst.json")


def c_coco_masks_polygon_three_numbers(b, t):
    ann = _coco_json(t, lambda d: d["annotations"][0].__setitem__("segmentation", [[1, 2, 3]]))
    return ["coco-masks", "--ann", ann, "--out", str(t / "out")], r"inst\.json: annotation 10 .*3 coordinates"


def c_coco_masks_malformed_rle(b, t):
    ann = _coco_json(t, lambda d: d["annotations"][0].__setitem__("segmentation", {"size": [6, 8], "counts": [5, 9]}))
    return ["coco-masks", "--ann", ann, "--out", str(t / "out")], r"inst\.json: annotation 10 .*RLE.*48"


def c_coco_masks_negative_bbox(b, t):
    ann = _coco_json(t, lambda d: d["annotations"][0]["bbox"].__setitem__(2, -4))
    return ["coco-masks", "--ann", ann, "--out", str(t / "out")], r"inst\.json: annotation 10 .*bbox"


def c_coco_labels_without_categories(b, t):
    ann = _coco_json(t, lambda d: d.pop("categories"))
    return ["labels", "--dataset", "coco", "--ann", ann, "--out", str(t / "out")], r"inst\.json.*categories"


def c_coco_labels_unknown_image_id(b, t):
    ann = _coco_json(t, lambda d: d["annotations"][0].__setitem__("image_id", 5))
    return ["labels", "--dataset", "coco", "--ann", ann, "--out", str(t / "out")], r"inst\.json: annotation 10 .*image_id 5"


def c_labels_conflict_with_existing_file(b, t):
    # the existing file (another split's labels + a different label for ids[0]) must be left as it is
    from doei.data.common import write_labels_json
    from doei.data.voc import VOC_CLASSES

    write_labels_json(t / "out", {b["ids"][0]: [19], "other_1": [3]}, VOC_CLASSES, source="test")
    argv = ["labels", "--dataset", "voc", "--data-root", str(b["data"]), "--source", "masks", "--split", "train",
            "--out", str(t / "out")]
    return argv, rf"out: image '{b['ids'][0]}' is labelled \[tvmonitor\] there but .*--overwrite"


def c_labels_existing_file_other_classes(b, t):
    # synth's own cls_labels.json names 10 synthetic classes: not merged into a VOC labels file
    shutil.copy(b["data"] / "cls_labels.json", t / "out")
    argv = ["labels", "--dataset", "voc", "--data-root", str(b["data"]), "--source", "masks", "--out", str(t / "out")]
    return argv, r"--out .*out exists but cannot be merged.*class names"


def c_eval_voc_default_on_synth(b, t):
    # the synthetic benchmark's labels (<= 10) scored against VOC's 21 classes by default: refused
    return _eval(b, t), r"VOC's 21 classes were assumed; labels .* go up to \d+.*--dataset synth"


def c_eval_classes_disagree(b, t):
    return _eval(b, t) + ["--num-classes", "21", "--dataset", "synth", "--data-root", str(b["data"])], \
        r"--num-classes 21 but --dataset synth .*10 foreground classes"


def c_eval_beta_outside_unit_interval(b, t):
    return _eval(b, t, b["cams"]) + ["--betas", "0.5,1.5"], r"--betas '0\.5,1\.5': 1\.5 is outside \[0, 1\]"


def c_eval_out_under_a_file(b, t):
    (t / "afile").write_text("")
    argv = _eval(b, t)
    argv[argv.index("--out") + 1] = str(t / "afile" / "m.json")
    return argv, r"--out .*afile/m\.json: .*afile is a file"


def c_eval_out_is_a_directory(b, t):
    (t / "out.json").mkdir()
    return _eval(b, t), r"--out .*out\.json: is a directory"


def c_run_stages_out_of_order(b, t):
    p = _pipeline(b, t, lambda c: c["run"].__setitem__("stages", ["eval", "cam"]))
    return ["run", "--config", str(p)], r"pipe\.yaml.*run\.stages = \['eval', 'cam'\].*order"


def c_run_stages_empty(b, t):
    p = _pipeline(b, t, lambda c: c["run"].__setitem__("stages", []))
    return ["run", "--config", str(p)], r"pipe\.yaml.*run\.stages = \[\].*at least one stage"


def c_refine_infer_negative_limit(b, t):
    # a negative limit sliced records[:-1] (all but the last images) silently
    p = _pipeline(b, t, lambda c: None)
    return ["refine", "infer", "--config", str(p), "--limit", "-1"], r"--limit -1: expected .*>= 0"


def c_infer_seg_negative_limit(b, t):
    p = _pipeline(b, t, lambda c: None)
    return ["infer-seg", "--config", str(p), "--limit", "-3"], r"--limit -3: expected .*>= 0"


def c_demo_n_train_zero(b, t):
    # `args.n_train or 1000` turned 0 into the default
    return ["demo", "--quick", "--out", str(t / "out"), "--n-train", "0"], r"--n-train 0: expected an integer >= 1"


def c_synth_negative_seed(b, t):
    # was a NumPy traceback (default_rng of a negative seed)
    return ["synth", "--out", str(t / "out"), "--seed", "-1"], r"--seed -1: expected an integer >= 0"


def c_ablate_negative_first_seed(b, t):
    return ["ablate", "--out", str(t / "out"), "--quick", "--first-seed", "-2"], r"--first-seed -2"


# ---- DOEI "on" that can do nothing, and factors outside their domain (refused before any training)
def c_doei_layers_empty(b, t):
    return _train(b, t, lambda c: c.__setitem__("doei", {"enabled": True, "layers": []})), r"doei\.layers \[\] names no block"


def c_doei_all_factors_zero(b, t):
    zero = {"enabled": True, "af_p2c": 0, "sf_p2c": 0, "af_c2c": 0, "sf_c2c": 0}
    return _train(b, t, lambda c: c.__setitem__("doei", zero)), r"DOEI is enabled but can change nothing.*PPDO"


def c_doei_cpdo_alone_one_class_token(b, t):
    def edit(c):
        c["model"]["name"] = "tscam_tiny_conv"
        c["doei"] = {"enabled": True, "ppdo": False}
    return _train(b, t, edit), r"tscam_tiny_conv.*can change nothing.*1 class token"


def c_doei_negative_amplification(b, t):
    return _train(b, t, lambda c: c.__setitem__("doei", {"enabled": True, "af_p2c": -0.5})), r"af_p2c must be >= 0.*-0\.5"


def c_set_value_not_yaml(b, t):
    return _train(b, t, lambda c: None) + ["--set", "optim.lr=[1,"], r"--set 'optim\.lr=\[1,'.*not valid YAML"


def c_checkpoint_random_bytes_index_error(b, t):
    import random

    (t / "bytes.pth").write_bytes(random.Random(2).randbytes(64))
    return _cam(b, t, ckpt=t / "bytes.pth"), r"bytes\.pth: not a readable.*IndexError"


def c_checkpoint_text_file(b, t):
    (t / "notes.pth").write_text("not a checkpoint\n")
    return _cam(b, t, ckpt=t / "notes.pth"), r"notes\.pth: not a readable"


def c_cam_flag_disagrees_with_training_checkpoint(b, t):
    argv = _train(b, t, lambda c: c["train"].__setitem__("out_dir", str(t / "trained")))
    assert main(argv) == 0
    return _cam(b, t, None, t / "trained" / "checkpoint.pt", 10, "--set", "model_kwargs.depth=3"), \
        r"model_kwargs\.depth = 3 disagrees with .*checkpoint\.pt"


def c_train_out_dir_is_a_file(b, t):
    (t / "out").write_text("keep\n")
    return _train(b, t, lambda c: None), r"train\.out_dir .*out: exists and is a file"


def c_sweep_config_not_found(b, t):
    # a relative --config is looked up in the working directory, then the repository (its root, configs/)
    return ["sweep", "--config", "nope_study.yaml", "--out", str(t / "out"), "--param", "af_p2c=1"], \
        r"--config nope_study\.yaml: file not found \(looked in .*configs\)"


def c_run_num_classes_not_the_datasets(b, t):
    p = _pipeline(b, t, lambda c: c["data"].__setitem__("num_classes", 20))
    return ["run", "--config", str(p)], r"data\.num_classes = 20, but .* has 10 foreground classes"


CASES = {name[2:]: fn for name, fn in dict(globals()).items() if name.startswith("c_") and callable(fn)}


def _outputs_left(t: Path) -> list[Path]:
    out = t / "out"
    if out.is_file():
        return [out]
    left = [p for p in out.rglob("*") if p.is_file()] if out.is_dir() else []
    if (t / "out.json").exists():
        left.append(t / "out.json")
    return left


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, base, tmp_path, capsys):
    res = CASES[case](base, tmp_path)
    before = set(_outputs_left(tmp_path))                                # inputs placed in out/ by the case
    argv, pattern, marker = (*res, None) if len(res) == 2 else res
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "\n" not in err, err
    assert err.startswith(f"doei {argv[0]}: error: "), err
    assert re.search(pattern, err), f"{pattern!r} not in {err!r}"
    if marker is not None:
        assert not marker.exists(), "unpickling ran code"
    left = [p for p in _outputs_left(tmp_path) if p not in before]
    # a command that failed before its main loop writes nothing; cam may have written its settings/log
    # header before meeting the bad image, but never a CAM/PNG, and never a temporary file
    assert not [p for p in left if p.suffix in (".npz", ".png", ".pt", ".pth") or p.name.startswith(".tmp-")], left
    if argv[0] != "cam":
        assert not left, left


def test_catalogue_size():
    assert len(CASES) >= 20
