"""Shared by the second catalogue of bad inputs (issue #22), ``tests/test_bad_inputs_stale.py`` (results
reused or read back, overrides a command would replace) and ``tests/test_bad_inputs_values.py`` (near-miss
formats, paths the OS refuses, values found late).

Each ``c_<name>(b, t)`` there returns a :class:`Case`. A CLI case must exit 2 with ONE stderr line matching
its pattern and leave ``t / "out"`` (or its ``watch`` path) exactly as it was; an ``accept`` case (a near
miss that is read correctly: BOM, CRLF) must exit 0; a ``reuse`` case runs ``prior`` commands first, then
changes an input (``between``), and the rerun must refuse (a rerun that exits 0 is a silent reuse).
The Python API cases are in ``tests/test_api_arguments.py``. ``benchmarks/bad_input_probe.py`` runs the
lists (:func:`all_cases`) against any tree and counts the outcomes (clean, traceback, silently accepted,
silent reuse, partial write, unclear).
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


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def eval_argv(b, t, pred=None, gt=None, lst=None, *extra):
    return ["eval", "--pred", str(pred or b["cams"]), "--gt", str(gt or b["gt"]), "--list", str(lst or b["root"] / "list.txt"),
            "--out", str(t / "out" / "m.json"), "--no-progress", "--dataset", "synth", "--data-root", str(b["data"]), *extra]


def cam_argv(b, t, ckpt="ckpt_a.pth", out=None, *extra):
    (t / "cam.yaml").write_text(yaml.safe_dump({"model_kwargs": TINY}))
    return ["cam", "--config", str(t / "cam.yaml"), "--model", "mctformer_v2_tiny_conv", "--num-classes", "10",
            "--dataset", "synth", "--data-root", str(b["data"]), "--split", "train", "--n-layers", "2",
            "--checkpoint", str(b["root"] / ckpt if isinstance(ckpt, str) else ckpt), "--out", str(out or t / "out"),
            "--no-progress", *extra]


def pipeline_yaml(b, t, edit=None, name="pipe.yaml") -> str:
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


def train_yaml(b, t, edit=None) -> str:
    cfg = {"model": {"name": "mctformer_v2_tiny_conv", "num_classes": 10, "img_size": SIZE,
                     "options": {k: v for k, v in TINY.items() if k != "img_size"}},
           "data": {"kind": "synth", "root": str(b["data"]), "train_split": "train", "transform": "resize"},
           "train": {"epochs": 1, "batch_size": 3, "device": "cpu", "progress": False, "out_dir": str(t / "out")}}
    if edit:
        edit(cfg)
    (t / "train.yaml").write_text(yaml.safe_dump(cfg))
    return str(t / "train.yaml")


def trains_first(net="mctformer_v2_tiny_conv", **cam):
    """A run that trains its classifier ``net`` first (train-cls, cam), with these ``cam`` keys."""
    def edit(c):
        c["run"].pop("cls_checkpoint")
        c["run"]["stages"] = ["train-cls", "cam"]
        c["classifier"] = {"model": {"name": net, "img_size": SIZE,
                                     "options": {k: v for k, v in TINY.items() if k != "img_size"}},
                           "data": {"transform": "resize"}, "train": {"epochs": 1, "batch_size": 3}}
        c["cam"] = {"flip": False, "cam_dtype": "float32", **cam}
    return edit


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


def all_cases() -> dict[str, Callable]:
    """Every CLI case of the catalogue, by name (both test files; a name in both is an error)."""
    import importlib

    out: dict[str, Callable] = {}
    for name in ("tests.test_bad_inputs_stale", "tests.test_bad_inputs_values"):
        cases = importlib.import_module(name).CASES
        twice = set(out) & set(cases)
        if twice:
            raise ValueError(f"case names in both catalogue files: {sorted(twice)}")
        out.update(cases)
    return out


def cases_of(namespace: dict) -> dict[str, Callable]:
    """The ``c_<name>`` case functions of a test module's namespace, by ``<name>``."""
    return {name[2:]: fn for name, fn in dict(namespace).items() if name.startswith("c_") and callable(fn)}


def assert_clean(cases: dict[str, Callable], name: str, base, tmp_path) -> None:
    """Run one case through the CLI in this process and require the outcome "clean" (one line, exit 2,
    nothing written; or exit 0 for an ``accept`` case); skipped where it needs a machine without CUDA."""
    import pytest

    from doei.cli import main

    torch.set_num_threads(1)
    case = cases[name](base, tmp_path)
    if case.needs_no_cuda and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    outcome, err = run_case(case, tmp_path, main)
    assert outcome == "clean", f"{outcome}: {err}"
