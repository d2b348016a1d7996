"""The second catalogue of bad inputs (issue #22): stale results reused under changed inputs, files read back
with the wrong shape, near-miss formats, paths the OS refuses, values found late, flags a mode ignores.

Each ``c_<name>(b, t)`` returns a :class:`Case`. A CLI case must exit 2 with ONE stderr line matching its
pattern and leave ``t / "out"`` (or its ``watch`` path) exactly as it was; an ``accept`` case (a near miss
that is read correctly: BOM, CRLF) must exit 0; a ``reuse`` case runs ``prior`` commands first, then
changes an input (``between``), and the rerun must refuse (a rerun that exits 0 is a silent reuse).
The Python API cases are in ``tests/test_api_arguments.py``. ``benchmarks/bad_input_probe.py`` runs both
lists against any tree and counts the outcomes (clean, traceback, silently accepted, silent reuse,
partial write, unclear).
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

SIZE = 32
TINY = {"img_size": SIZE, "depth": 2, "embed_dim": 32, "num_heads": 2}


@dataclass
class Case:
    argv: list[str]
    pattern: str = ""
    prior: list[list[str]] = field(default_factory=list)    # commands that must succeed first
    between: Callable[[], None] | None = None                # the change made after them
    reuse: bool = False                                      # exit 0 after the change = a silent reuse
    accept: bool = False                                     # a near miss that must be read (exit 0)
    watch: Path | None = None                                # left exactly as it was (default t/out)
    needs_no_cuda: bool = False


def make_base(root: Path) -> dict:
    """3 synthetic VOC-layout images (32 px), GT/pred/CAM folders, an id list, two tiny classifiers."""
    from doei.cam.io import save_cam
    from doei.data.synth import SynthParams, write_synth
    from doei.models.registry import create_model

    data = root / "synth"
    write_synth(data, SynthParams(seed=1, n_train=3, n_val=2, size=SIZE))
    ids = [ln.split()[0] for ln in (data / "ImageSets/Segmentation/train.txt").read_text().split("\n") if ln.strip()]
    gt, cams = root / "gt", root / "cams"
    gt.mkdir()
    cams.mkdir()
    for i in ids:
        m = np.array(Image.open(data / "SegmentationClass" / f"{i}.png"))
        Image.fromarray(m).save(gt / f"{i}.png")
        save_cam(cams / f"{i}.npz", np.array([0]), np.full((1,) + m.shape, 0.5, np.float32), dtype=np.float32)
    (root / "list.txt").write_text("".join(f"{i}\n" for i in ids))
    for seed, name in ((0, "ckpt_a.pth"), (1, "ckpt_b.pth")):
        torch.manual_seed(seed)
        sd = create_model("mctformer_v2_tiny_conv", num_classes=10, **TINY).state_dict()
        torch.save({"model": sd}, root / name)
    (root / "names.txt").write_text("\n".join(json.loads((data / "meta.json").read_text())["classes"]) + "\n")
    return {"root": root, "data": data, "ids": ids, "gt": gt, "cams": cams}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _eval(b, t, pred=None, gt=None, lst=None, *extra):
    return ["eval", "--pred", str(pred or b["cams"]), "--gt", str(gt or b["gt"]), "--list", str(lst or b["root"] / "list.txt"),
            "--out", str(t / "out" / "m.json"), "--no-progress", "--dataset", "synth", "--data-root", str(b["data"]), *extra]


def _cam(b, t, ckpt="ckpt_a.pth", out=None, *extra):
    (t / "cam.yaml").write_text(yaml.safe_dump({"model_kwargs": TINY}))
    return ["cam", "--config", str(t / "cam.yaml"), "--model", "mctformer_v2_tiny_conv", "--num-classes", "10",
            "--dataset", "synth", "--data-root", str(b["data"]), "--split", "train", "--n-layers", "2",
            "--checkpoint", str(b["root"] / ckpt if isinstance(ckpt, str) else ckpt), "--out", str(out or t / "out"),
            "--no-progress", *extra]


def _pipeline(b, t, edit=None, name="pipe.yaml") -> str:
    cfg = {"run": {"out_dir": str(t / "out"), "device": "cpu", "progress": False, "stages": ["cam"],
                   "cls_checkpoint": str(t / "cls.pth")},
           "data": {"kind": "synth", "root": str(b["data"]), "train_split": "train", "val_split": "val",
                    "num_classes": 10},
           "cam": {"model": "mctformer_v2_tiny_conv", "model_kwargs": TINY, "n_layers": 2, "flip": False,
                   "cam_dtype": "float32"}}
    if edit:
        edit(cfg)
    (t / name).write_text(yaml.safe_dump(cfg))
    if not (t / "cls.pth").exists():
        shutil.copy(b["root"] / "ckpt_a.pth", t / "cls.pth")
    return str(t / name)


def _train(b, t, edit=None) -> str:
    cfg = {"model": {"name": "mctformer_v2_tiny_conv", "num_classes": 10, "img_size": SIZE,
                     "options": {k: v for k, v in TINY.items() if k != "img_size"}},
           "data": {"kind": "synth", "root": str(b["data"]), "train_split": "train", "transform": "resize"},
           "train": {"epochs": 1, "batch_size": 3, "device": "cpu", "progress": False, "out_dir": str(t / "out")}}
    if edit:
        edit(cfg)
    (t / "train.yaml").write_text(yaml.safe_dump(cfg))
    return str(t / "train.yaml")


# ------------------------------------------------------------ a finished stage reused under changed inputs
def c_run_other_classifier_after_cam(b, t):
    cfg = _pipeline(b, t)
    return Case(["run", "--config", cfg], r"stage cam finished with other inputs \(classifier checkpoint changed",
                prior=[["run", "--config", cfg]],
                between=lambda: shutil.copy(b["root"] / "ckpt_b.pth", t / "cls.pth"), reuse=True)


def c_run_other_classifier_path_after_cam(b, t):
    cfg = _pipeline(b, t)
    other = _pipeline(b, t, lambda c: c["run"].__setitem__("cls_checkpoint", str(b["root"] / "ckpt_b.pth")), "b.yaml")
    return Case(["run", "--config", other], r"stage cam finished with other inputs \(.*checkpoint",
                prior=[["run", "--config", cfg]], reuse=True)


def c_run_labels_changed_after_cam(b, t):
    data = _copy(b["data"], t / "data")
    cfg = _pipeline(b, t, lambda c: c["data"].__setitem__("root", str(data)))

    def relabel():
        doc = json.loads((data / "cls_labels.json").read_text())
        first = sorted(doc["labels"])[0]
        doc["labels"][first] = sorted(set(doc["labels"][first]) ^ {9})
        (data / "cls_labels.json").write_text(json.dumps(doc))
    return Case(["run", "--config", cfg], r"stage cam finished with other inputs \(data\[train\]\.records changed",
                prior=[["run", "--config", cfg]], between=relabel, reuse=True)


def c_coco_masks_rerun_other_crowd(b, t):
    d = {"images": [{"id": 1, "file_name": "a.jpg", "height": 6, "width": 8}],
         "annotations": [{"id": 10, "image_id": 1, "category_id": 17, "iscrowd": 1, "area": 12.0,
                          "bbox": [1, 1, 4, 3], "segmentation": {"size": [6, 8], "counts": [9, 3, 3, 3, 30]}}],
         "categories": [{"id": 17, "name": "cat"}]}
    (t / "inst.json").write_text(json.dumps(d))
    argv = ["coco-masks", "--ann", str(t / "inst.json"), "--out", str(t / "out")]   # (no --no-progress: older trees)
    return Case(argv + ["--crowd", "class"], r"crowd", prior=[argv], reuse=True)


# ------------------------------------------------------------ files we wrote, read back with the wrong shape
def _marker(b, t, text):
    cfg = _pipeline(b, t)
    return Case(["run", "--config", cfg], "", prior=[["run", "--config", cfg]],
                between=lambda: (t / "out" / "stages" / "cam" / "stage_done.json").write_text(text))


def c_run_marker_null(b, t):
    c = _marker(b, t, "null")
    c.pattern = r"stage_done\.json: expected a mapping, found null"
    return c


def c_run_marker_fingerprint_a_list(b, t):
    c = _marker(b, t, json.dumps({"stage": "cam", "fingerprint": ["x"]}))
    c.pattern = r"stage_done\.json\.fingerprint: expected a string, found a list"
    return c


def c_cam_settings_a_string(b, t):
    argv = _cam(b, t)
    return Case(argv, r"cam_settings\.json: expected a mapping, found a string", prior=[argv],
                between=lambda: (t / "out" / "cam_settings.json").write_text('"abc"'))


def c_checkpoint_config_a_string(b, t):
    sd = torch.load(b["root"] / "ckpt_a.pth", weights_only=True)["model"]
    torch.save({"format": "doei-train-ckpt-v1", "model": sd, "optimizer": {}, "epoch": 0, "step": 0, "config": "abc",
                "rng": {}}, t / "bad.pt")
    return Case(_cam(b, t, t / "bad.pt"), r"bad\.pt: config: expected a mapping, found a string")


def c_study_section_a_string(b, t):
    (t / "s.yaml").write_text("study: abc\n")
    return Case(["ablate", "--config", str(t / "s.yaml"), "--out", str(t / "out"), "--quick"],
                r"s\.yaml: study: expected a mapping, found a string")


def c_study_section_a_list(b, t):
    (t / "s.yaml").write_text("study: [1, 2]\n")
    return Case(["sweep", "--config", str(t / "s.yaml"), "--out", str(t / "out"), "--quick", "--param", "af_p2c=1"],
                r"s\.yaml: study: expected a mapping, found a list")


def c_synth_meta_a_list(b, t):
    data = _copy(b["data"], t / "data")
    (data / "meta.json").write_text("[]")
    argv = _eval(b, t)
    argv[argv.index("--data-root") + 1] = str(data)
    return Case(argv, r"meta\.json: expected a mapping, found a list")


def c_train_resume_missing_weight(b, t):
    cfg = _train(b, t)

    def drop():
        ck = torch.load(t / "out" / "checkpoint.pt", weights_only=True)
        ck["model"].pop(sorted(ck["model"])[0])
        torch.save(ck, t / "out" / "checkpoint.pt")
    return Case(["train-cls", "--config", cfg, "--resume"], r"checkpoint\.pt: cannot resume: the checkpoint does not fit",
                prior=[["train-cls", "--config", cfg]], between=drop)


# ------------------------------------------------------------ near-miss formats
def c_eval_npz_that_is_npy(b, t):
    cams = _copy(b["cams"], t / "cams")
    with open(cams / f"{b['ids'][0]}.npz", "wb") as f:
        np.save(f, np.full((1, SIZE, SIZE), 0.5, np.float32))
    return Case(_eval(b, t, cams), rf"{b['ids'][0]}\.npz: a plain \.npy array")


def c_eval_cam_classes_last_axis(b, t):
    cams = _copy(b["cams"], t / "cams")
    np.savez(cams / f"{b['ids'][1]}.npz", classes=np.array([0, 1]), cams=np.full((SIZE, SIZE, 2), 0.5, np.float32))
    return Case(_eval(b, t, cams), rf"{b['ids'][1]}\.npz: .*last axis")


def c_eval_cam_values_0_255(b, t):
    cams = _copy(b["cams"], t / "cams")
    for i in b["ids"]:
        np.savez(cams / f"{i}.npz", classes=np.array([0]), cams=np.full((1, SIZE, SIZE), 128.0, np.float32))
    return Case(_eval(b, t, cams), r"\.npz: CAM values span \[128, 128\], expected \[0, 1\]")


def c_eval_list_with_bom(b, t):
    (t / "list.txt").write_bytes(b"\xef\xbb\xbf" + (b["root"] / "list.txt").read_bytes())
    return Case(_eval(b, t, None, None, t / "list.txt"), accept=True)


def c_eval_list_crlf(b, t):
    (t / "list.txt").write_bytes((b["root"] / "list.txt").read_bytes().replace(b"\n", b"\r\n"))
    return Case(_eval(b, t, None, None, t / "list.txt"), accept=True)


def c_eval_classes_not_utf8(b, t):
    names = (b["root"] / "names.txt").read_text().splitlines()
    names[1] = "bi\xe8re"
    (t / "names.txt").write_bytes("\n".join(names).encode("latin-1"))
    argv = _eval(b, t)[:-4] + ["--classes", str(t / "names.txt")]
    return Case(argv, r"names\.txt: not UTF-8 text \(byte 0xe8 at offset \d+\)")


def c_eval_gt_100_megapixels(b, t):
    gt = _copy(b["gt"], t / "gt")
    buf = io.BytesIO()
    Image.new("L", (10_000, 10_000)).save(buf, format="PNG")
    (gt / f"{b['ids'][0]}.png").write_bytes(buf.getvalue())
    return Case(_eval(b, t, None, gt), rf"{b['ids'][0]}\.png: .*10000x10000 = 100\.0 megapixels")


# ------------------------------------------------------------ paths the OS refuses
def c_eval_out_name_too_long(b, t):
    argv = _eval(b, t)
    argv[argv.index("--out") + 1] = str(t / "out" / ("m" * 300 + ".json"))
    return Case(argv, r"longer than the \d+ the file system allows")


def c_cam_out_dangling_symlink(b, t):
    (t / "out").symlink_to(t / "nowhere")
    return Case(_cam(b, t), r"--out .*out: .*out is a symbolic link to .*nowhere, which does not exist",
                watch=t / "nowhere")


def c_run_out_dir_symlink_loop(b, t):
    (t / "out").symlink_to(t / "out")
    return Case(["run", "--config", _pipeline(b, t)], r"run\.out_dir .*out: a symbolic link loop", watch=t / "nothing")


def c_train_out_dir_symlink_loop(b, t):
    (t / "out").symlink_to(t / "out")
    return Case(["train-cls", "--config", _train(b, t)], r"out: a symbolic link loop", watch=t / "nothing")


# ------------------------------------------------------------ values out of domain, checks before any write
def c_cam_scales_inf(b, t):
    return Case(_cam(b, t) + ["--scales", "1.0,inf"], r"--scales '1\.0,inf': inf is not a finite number")


def c_cam_set_and_flag_disagree(b, t):
    return Case(_cam(b, t) + ["--set", "n_layers=1"], r"--set n_layers=1 and the flag --n-layers \(2\) disagree")


def c_run_seg_scales_inf(b, t):
    cfg = _pipeline(b, t, lambda c: c.setdefault("seg", {}).setdefault("infer", {}).__setitem__("scales", [1.0, float("inf")]))
    return Case(["run", "--config", cfg], r"seg\.infer\.scales\[1\]: expected a finite number, found the number inf")


def c_run_device_cuda_without_one(b, t):
    cfg = _pipeline(b, t, lambda c: c["run"].__setitem__("device", "cuda"))
    return Case(["run", "--config", cfg], r"run\.device = 'cuda': CUDA is not available", needs_no_cuda=True)


def c_run_dataset_absent(b, t):
    cfg = _pipeline(b, t, lambda c: c["data"].__setitem__("root", str(t / "nowhere")))
    return Case(["run", "--config", cfg], r"nowhere")


def _trains_first(model="mctformer_v2_tiny_conv", **cam):
    """A run that trains its classifier first (train-cls, cam), with these ``cam`` keys."""
    def edit(c):
        c["run"].pop("cls_checkpoint")
        c["run"]["stages"] = ["train-cls", "cam"]
        c["classifier"] = {"model": {"name": model, "img_size": SIZE,
                                     "options": {k: v for k, v in TINY.items() if k != "img_size"}},
                           "data": {"transform": "resize"}, "train": {"epochs": 1, "batch_size": 3}}
        c["cam"] = {"flip": False, "cam_dtype": "float32", **cam}
    return edit


def c_run_cam_kind_the_model_lacks(b, t):
    cfg = _pipeline(b, t, _trains_first(kind="gradcam"))
    return Case(["run", "--config", cfg], r"cam\.kind = 'gradcam': expected one of fused, patchcam, mtatt")


def c_run_cam_option_the_model_does_not_read(b, t):
    cfg = _pipeline(b, t, _trains_first("tscam_tiny_conv", n_layers=2))
    return Case(["run", "--config", cfg], r"cam\.n_layers = 2: TSCAM .* does not read this CAM option; expected it "
                                          r"unset \(its CAM options: none\)")


def c_run_cam_n_layers_beyond_the_depth(b, t):
    cfg = _pipeline(b, t, _trains_first(n_layers=3))
    return Case(["run", "--config", cfg], r"cam\.n_layers = 3: expected 1\.\.2 ")


def c_ablate_betas_invalid(b, t):
    from doei.utils.repo_configs import configs_dir

    d = yaml.safe_load((configs_dir() / "ablate.yaml").read_text())
    d.setdefault("study", {})["betas"] = "0.9:0.1:0.1"
    (t / "s.yaml").write_text(yaml.safe_dump(d))
    return Case(["ablate", "--config", str(t / "s.yaml"), "--out", str(t / "out"), "--seeds", "1"],
                r"s\.yaml: study\.betas")


def c_sweep_param_out_of_domain(b, t):
    return Case(["sweep", "--out", str(t / "out"), "--quick", "--param", "af_p2c=0.5,-1"], r"af_p2c.*-1")


def c_sweep_param_inf(b, t):
    return Case(["sweep", "--out", str(t / "out"), "--quick", "--param", "af_p2c=inf"], r"--param 'af_p2c=inf'.*finite")


def c_ablate_set_data_root(b, t):
    return Case(["ablate", "--out", str(t / "out"), "--quick", "--set", f"data.root={t / 'elsewhere'}"],
                r"--set data\.root=.*: this command sets data\.root itself")


def _pipeline_study(b, t) -> str:
    """A pipeline config for doei ablate / doei sweep (each row a doei run of train-cls, cam, eval)."""
    def edit(c):
        _trains_first(n_layers=2)(c)
        del c["run"]["out_dir"], c["run"]["stages"]
        c["study"] = {"rows": ["baseline", "cpdo", "ppdo"], "stats_images": 0, "sweep": {"af_p2c": [1, 3]}}
    return _pipeline(b, t, edit, "study.yaml")


def c_ablate_pipeline_set_a_row_flag(b, t):
    return Case(["ablate", "--config", _pipeline_study(b, t), "--out", str(t / "out"), "--seeds", "1",
                 "--set", "classifier.doei.cpdo=false"],
                r"--set classifier\.doei\.cpdo=false: this command sets classifier\.doei\.cpdo itself.*--rows")


def c_ablate_pipeline_set_run_seed(b, t):
    return Case(["ablate", "--config", _pipeline_study(b, t), "--out", str(t / "out"), "--seeds", "1",
                 "--set", "run.seed=4"], r"--set run\.seed=4: this command sets run\.seed itself")


def c_sweep_pipeline_set_the_swept_parameter(b, t):
    return Case(["sweep", "--config", _pipeline_study(b, t), "--out", str(t / "out"), "--set",
                 "classifier.doei.af_p2c=2"],
                r"--set classifier\.doei\.af_p2c=2: this command sets classifier\.doei\.af_p2c itself.*--param")


def c_ablate_set_a_row_flag(b, t):
    return Case(["ablate", "--out", str(t / "out"), "--quick", "--rows", "baseline,ppdo", "--set", "doei.ppdo=false"],
                r"--set doei\.ppdo=false: this command sets doei\.ppdo itself.*--rows")


def c_sweep_set_the_swept_parameter(b, t):
    return Case(["sweep", "--out", str(t / "out"), "--quick", "--param", "alpha=0.5", "--set", "doei.alpha=0.3"],
                r"--set doei\.alpha=0\.3: this command sets doei\.alpha itself.*--param")


def c_demo_set_doei_enabled(b, t):
    return Case(["demo", "--quick", "--out", str(t / "out"), "--set", "doei.enabled=false"],
                r"--set doei\.enabled=false: this command sets doei\.enabled itself")


def c_demo_pipeline_set_run_stages(b, t):
    return Case(["demo", "--quick", "--out", str(t / "out"), "--pipeline-set", "run.stages=[cam]"],
                r"--pipeline-set run\.stages=\[cam\]: this command sets run\.stages itself")


def c_demo_pipeline_set_out_dir(b, t):
    return Case(["demo", "--quick", "--out", str(t / "out"), "--pipeline-set", f"run.out_dir={t / 'x'}"],
                r"this command sets run\.out_dir itself")


def c_demo_ceilings_without_pipeline(b, t):
    return Case(["demo", "--quick", "--out", str(t / "out"), "--no-pipeline", "--ceilings"],
                r"--ceilings acts on the pipeline, which --no-pipeline skips")


def c_demo_train_device_cuda(b, t):
    return Case(["demo", "--quick", "--out", str(t / "out"), "--set", "train.device=cuda"],
                r"train\.device = 'cuda': CUDA is not available", needs_no_cuda=True)


CASES = {name[2:]: fn for name, fn in dict(globals()).items() if name.startswith("c_") and callable(fn)}


def snapshot(path: Path) -> object:
    """Everything under ``path`` (names, bytes) or None if it does not exist (a link counts as itself)."""
    if path.is_symlink() and not path.exists():
        return ("link", os.readlink(path))
    if not path.exists() and not path.is_symlink():
        return None
    try:
        if path.is_file():
            return ("file", path.read_bytes())
        return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))}
    except OSError:
        return ("unreadable", str(path))


def run_case(case: Case, t: Path, main) -> tuple[str, str]:
    """``(outcome, stderr)``: clean | traceback | accepted (bad input taken) | silent-reuse | partial-write |
    unclear (exit 2 but not one matching line) | refused-valid (an accept case refused) | setup-failed."""
    import contextlib

    for argv in case.prior:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            if main(list(argv)) != 0:
                return "setup-failed", " ".join(argv)
    if case.between:
        case.between()
    watch = case.watch or t / "out"
    before = snapshot(watch)
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            rc = main(list(case.argv))
    except Exception as e:  # noqa: BLE001 - a traceback is the outcome being counted
        return "traceback", f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    text = err.getvalue().strip()
    if case.accept:
        return ("clean" if rc == 0 else "refused-valid"), text
    if rc == 0:
        return ("silent-reuse" if case.reuse else "accepted"), text
    if case.prior or snapshot(watch) == before:
        pass
    else:
        return "partial-write", text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    ok = rc == 2 and len(lines) == 1 and lines[0].startswith(f"doei {case.argv[0]}: error: ") and \
        re.search(case.pattern, lines[0])
    return ("clean" if ok else "unclear"), text


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("more"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, base, tmp_path):
    from doei.cli import main

    torch.set_num_threads(1)
    case = CASES[name](base, tmp_path)
    if case.needs_no_cuda and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    outcome, err = run_case(case, tmp_path, main)
    assert outcome == "clean", f"{outcome}: {err}"
