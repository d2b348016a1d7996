"""The fingerprint rule of ``doei run`` as a property over the stage table: after every stage finished,
changing any input of any stage (a setting it uses, a file it reads) makes that stage refuse in one line
naming what changed (never a silent reuse); runtime-only keys change nothing. Also: a failed start is
recoverable in the same folder, and a damaged marker is one line naming its file and key."""
from __future__ import annotations

import copy
import json
import os
import shutil

import pytest
import torch

from doei import pipeline as run_cmd
from doei.errors import DoeiError
from doei.pipeline.fingerprints import RUNTIME_KEYS, stage_inputs
from doei.data.build import build_dataset
from doei.pipeline_config import STAGES, pipeline_config_from_dict
from tests.pipeline_common import make_synth, tiny_config

# an independent, hand-written table: per stage, settings it uses (dotted config keys) -> a new value
STAGE_KEYS = {
    "train-cls": {"classifier.optim.lr": 2e-3, "classifier.train.epochs": 2, "classifier.model.options.depth": 1,
                  "run.seed": 5, "data.train_split": "val"},
    "cam": {"cam.scales": [1.0, 0.5], "cam.n_layers": 1, "cam.flip": True, "data.train_split": "val"},
    "refine": {"refine.train.lr": 0.02, "refine.infer.logt": 4, "refine.train.radius": 3, "refine.infer.beta": 4.0},
    "train-seg": {"seg.train.lr": 0.02, "seg.train.epochs": 2, "seg.train.crop_size": 40},
    "infer-seg": {"seg.infer.scales": [1.0, 0.5], "seg.infer.crf": False, "seg.infer.crf_iterations": 3},
    "eval": {"eval.seed_betas": [0.3, 0.5], "eval.train_split": "train"},
}


def _dict(synth, out, **kw):
    base = {"refine__train__epochs": 1, "seg__train__epochs": 1, "seg__infer__scales": [1.0], "seg__infer__flip": False}
    d = tiny_config(synth, out, **{**base, **kw}).to_dict()
    for sec, sub, keys in (("refine", "train", ("cam_dir", "split", "out_dir")),   # defaults resolve_paths fills
                           ("refine", "infer", ("cam_dir", "split", "out_dir", "checkpoint", "model")),
                           ("seg", "train", ("pseudo_dir", "split", "out_dir")),
                           ("seg", "infer", ("split", "out_dir", "checkpoint", "model"))):
        for k in keys:
            d[sec][sub][k] = None
    return d


def _set(d: dict, key: str, value) -> dict:
    d = copy.deepcopy(d)
    node = d
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return d


def _build(d: dict):
    return run_cmd.resolve(pipeline_config_from_dict(d, where="test"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fp")
    synth = make_synth(root)
    d = _dict(synth, root / "run")
    run_cmd.run_pipeline(_build(d).cfg, log=lambda s: None)
    return root, synth, d


def _refusals(d: dict) -> dict[str, str]:
    """stage -> refusal message, for every finished stage that refuses config ``d``."""
    r = _build(d)
    out = {}
    for stage in STAGES:
        try:
            run_cmd.check_finished(r, stage, lambda s: None)
        except DoeiError as e:
            out[stage] = str(e)
    return out


@pytest.mark.parametrize("stage", STAGES)
def test_each_setting_of_each_stage_refuses_that_stage(finished, stage):
    _, _, d = finished
    assert _refusals(d) == {}
    for key, value in STAGE_KEYS[stage].items():
        refused = _refusals(_set(d, key, value))
        assert stage in refused, f"{key} changed but stage {stage} would be reused"
        named = key.split(".")[-1].replace("train_split", "split")     # cam.split / classifier.data.train_split
        assert "\n" not in refused[stage] and named in refused[stage], refused[stage]


def _leaves(obj, prefix=""):
    if isinstance(obj, dict) and obj:
        for k, v in obj.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix, obj


def _other(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return round(value * 1.5 + 0.01, 4)
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return [round(value[0] * 0.9, 4)] + value[1:]
    return None


def test_every_config_value_is_an_input_or_runtime(finished):
    """The property: every leaf of the resolved config (classifier and cam sections with their defaults
    included) that a valid change can reach is either read by some finished stage — which then refuses —
    or a runtime-only key, which no stage refuses."""
    _, _, d = finished
    r = _build(d)
    full = {**r.cfg.to_dict(), "classifier": r.classifier.to_dict(), "cam": {k: v for k, v in
                                                                          r.cam.__dict__.items() if v is not None}}
    checked = silent = 0
    for key, value in _leaves(full):
        new = _other(value)
        if new is None or key.startswith("run.") and key != "run.seed":
            continue
        try:
            refused = _refusals(_set(d, key, new))
        except DoeiError:
            continue                       # not a valid config with this value (e.g. a crop size rule)
        runtime = key.split(".")[-1] in RUNTIME_KEYS
        if runtime:
            assert not refused, f"runtime key {key} refused {sorted(refused)}"
        else:
            checked += 1
            silent += not refused
            assert refused, f"{key}: {value!r} -> {new!r} changes no stage's fingerprint (a silent reuse)"
    assert checked >= 60 and silent == 0


def test_each_input_file_of_each_stage_refuses_that_stage(finished):
    root, _, d = finished
    r = _build(d)
    for stage in STAGES:
        _, files = stage_inputs(r, stage)
        assert files, stage
        for name in files:
            target = _file_of(r, stage, name)
            saved = target.read_bytes()
            st = target.stat()
            if name.endswith(".records"):                  # another label for the split's first image
                doc = json.loads(saved)
                first = build_dataset("synth", r.cfg.data.root, name[5:name.index("]")]).ids[0]
                doc["labels"][first] = sorted(set(doc["labels"][first]) ^ {9})
                target.write_text(json.dumps(doc))
            elif target.suffix in (".pt", ".pth"):
                target.write_bytes(saved + b"\0")
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
            try:
                refused = _refusals(d)
                assert stage in refused and "changed since" in refused[stage], (stage, name, refused)
            finally:
                target.write_bytes(saved)
                os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert _refusals(d) == {}


def _file_of(r, stage, name):
    """One file behind input ``name`` of ``stage``."""
    from pathlib import Path

    cfg = r.cfg
    if name == "classifier checkpoint":
        return r.checkpoint
    if name.startswith("data["):
        split = name[5:name.index("]")]
        rec = build_dataset("synth", cfg.data.root, split).records[0]
        if name.endswith("records"):
            return Path(cfg.data.root) / "cls_labels.json"
        return rec.mask_path if name.endswith("masks") else rec.image_path
    if name == "seg.infer.checkpoint":
        return Path(cfg.seg.infer.checkpoint)
    folder = {"refine.train.cam_dir": cfg.refine.train.cam_dir, "seg.train.pseudo_dir": cfg.seg.train.pseudo_dir}.get(name)
    if folder is None:                                    # eval <row> predictions (<folder>)
        folder = name[name.index("(") + 1:-1].replace("<run.out_dir>", cfg.run.out_dir)
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix in (".npz", ".png"))[0]


def test_another_classifier_after_cam_finished_is_refused(finished, tmp_path):
    """The reported case: ``run.cls_checkpoint`` changed to another classifier after cam finished."""
    root, _, d = finished
    ckpt = root / "run" / "cls" / "checkpoint.pt"
    other = tmp_path / "other.pt"
    shutil.copy(ckpt, other)
    same = _set(d, "run.cls_checkpoint", str(other))
    refused = _refusals(same)
    assert "cam" not in refused                     # the same bytes elsewhere: the CAMs are still its CAMs
    obj = torch.load(other, weights_only=True)
    next(iter(obj["model"].values())).add_(1.0)
    torch.save(obj, other)
    refused = _refusals(same)
    assert "classifier checkpoint changed since" in refused["cam"]


def test_a_damaged_marker_is_one_line(finished, tmp_path):
    root, _, d = finished
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    d2 = _set(d, "run.out_dir", str(run))
    marker = run / "stages" / "cam" / "stage_done.json"
    for text, pattern in (("null", r"stage_done\.json: expected a mapping, found null"),
                          (json.dumps({"stage": "cam", "fingerprint": ["x"]}), r"fingerprint: expected a string"),
                          ("{", r"stage_done\.json: not valid JSON")):
        marker.write_text(text)
        with pytest.raises(DoeiError, match=pattern):
            run_cmd.run_pipeline(_build(d2).cfg, log=lambda s: None)


def test_a_failed_start_is_recoverable_in_the_same_folder(tmp_path, monkeypatch):
    """A run that fails inside a stage on a bad setting, rerun with the setting corrected, in the same folder
    without --overwrite: the finished stages are kept, the failed stage's partial outputs are set aside."""
    synth = make_synth(tmp_path)
    out = tmp_path / "run"
    d = _dict(synth, out, run__stages=["train-cls", "cam"])
    bad = _set(d, "cam.n_layers", 1)       # a setting the cam stage fails on, inside it (the settings doei run
                                           # checks before any stage, e.g. n_layers beyond the depth, never get there)

    def fails(r, log):
        raise DoeiError("cam: failed inside the stage")

    with monkeypatch.context() as m, pytest.raises(DoeiError):
        m.setitem(run_cmd.STAGE_FUNCS, "cam", fails)
        run_cmd.run_pipeline(_build(bad).cfg, log=lambda s: None)
    assert (out / "stages" / "train-cls" / "stage_done.json").is_file()
    mtime = (out / "cls" / "checkpoint.pt").stat().st_mtime_ns
    (out / "cam").mkdir(exist_ok=True)
    (out / "cam" / "leftover.npz").write_bytes(b"partial")  # what a start killed mid-way would leave
    logs: list[str] = []
    run_cmd.run_pipeline(_build(d).cfg, log=logs.append)
    assert any("[train-cls] already done" in m for m in logs)
    assert (out / "cls" / "checkpoint.pt").stat().st_mtime_ns == mtime
    aside = [p for p in out.iterdir() if p.name.startswith("cam.partial-")]
    assert len(aside) == 1 and (aside[0] / "leftover.npz").is_file()
    assert any("set aside" in m and "cam.n_layers was 1, now 2" in m for m in logs), logs
    assert (out / "stages" / "cam" / "stage_done.json").is_file()
