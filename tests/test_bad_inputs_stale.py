"""The second catalogue of bad inputs (issue #22), part 1: results reused or read back — a finished stage
reused under changed inputs, files we wrote read back with the wrong shape, and ``--set`` overrides or flags
that a command would silently replace or ignore. How a case is judged: ``tests/bad_inputs_common.py``; part 2
(near-miss formats, paths, values found late): ``tests/test_bad_inputs_values.py``.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.bad_inputs_common import (assert_clean, cases_of, Case, cam_argv, copy_tree, eval_argv, make_base,
                                     pipeline_yaml, train_yaml, trains_first)


# ------------------------------------------------------------ a finished stage reused under changed inputs
def c_run_other_classifier_after_cam(b, t):
    cfg = pipeline_yaml(b, t)
    return Case(["run", "--config", cfg], r"stage cam finished with other inputs \(classifier checkpoint changed",
                prior=[["run", "--config", cfg]],
                between=lambda: shutil.copy(b["root"] / "ckpt_b.pth", t / "cls.pth"), reuse=True)


def c_run_other_classifier_path_after_cam(b, t):
    cfg = pipeline_yaml(b, t)
    other = pipeline_yaml(b, t, lambda c: c["run"].__setitem__("cls_checkpoint", str(b["root"] / "ckpt_b.pth")), "b.yaml")
    return Case(["run", "--config", other], r"stage cam finished with other inputs \(.*checkpoint",
                prior=[["run", "--config", cfg]], reuse=True)


def c_run_labels_changed_after_cam(b, t):
    data = copy_tree(b["data"], t / "data")
    cfg = pipeline_yaml(b, t, lambda c: c["data"].__setitem__("root", str(data)))

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
    cfg = pipeline_yaml(b, t)
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
    argv = cam_argv(b, t)
    return Case(argv, r"cam_settings\.json: expected a mapping, found a string", prior=[argv],
                between=lambda: (t / "out" / "cam_settings.json").write_text('"abc"'))


def c_checkpoint_config_a_string(b, t):
    sd = torch.load(b["root"] / "ckpt_a.pth", weights_only=True)["model"]
    torch.save({"format": "doei-train-ckpt-v1", "model": sd, "optimizer": {}, "epoch": 0, "step": 0, "config": "abc",
                "rng": {}}, t / "bad.pt")
    return Case(cam_argv(b, t, t / "bad.pt"), r"bad\.pt: config: expected a mapping, found a string")


def c_study_section_a_string(b, t):
    (t / "s.yaml").write_text("study: abc\n")
    return Case(["ablate", "--config", str(t / "s.yaml"), "--out", str(t / "out"), "--quick"],
                r"s\.yaml: study: expected a mapping, found a string")


def c_study_section_a_list(b, t):
    (t / "s.yaml").write_text("study: [1, 2]\n")
    return Case(["sweep", "--config", str(t / "s.yaml"), "--out", str(t / "out"), "--quick", "--param", "af_p2c=1"],
                r"s\.yaml: study: expected a mapping, found a list")


def c_synth_meta_a_list(b, t):
    data = copy_tree(b["data"], t / "data")
    (data / "meta.json").write_text("[]")
    argv = eval_argv(b, t)
    argv[argv.index("--data-root") + 1] = str(data)
    return Case(argv, r"meta\.json: expected a mapping, found a list")


def c_train_resume_missing_weight(b, t):
    cfg = train_yaml(b, t)

    def drop():
        ck = torch.load(t / "out" / "checkpoint.pt", weights_only=True)
        ck["model"].pop(sorted(ck["model"])[0])
        torch.save(ck, t / "out" / "checkpoint.pt")
    return Case(["train-cls", "--config", cfg, "--resume"], r"checkpoint\.pt: cannot resume: the checkpoint does not fit",
                prior=[["train-cls", "--config", cfg]], between=drop)


# ------------------------------------------------------------ overrides and flags a command would replace or ignore
def c_ablate_set_data_root(b, t):
    return Case(["ablate", "--out", str(t / "out"), "--quick", "--set", f"data.root={t / 'elsewhere'}"],
                r"--set data\.root=.*: this command sets data\.root itself")


def _pipeline_study(b, t) -> str:
    """A pipeline config for doei ablate / doei sweep (each row a doei run of train-cls, cam, eval)."""
    def edit(c):
        trains_first(n_layers=2)(c)
        del c["run"]["out_dir"], c["run"]["stages"]
        c["study"] = {"rows": ["baseline", "cpdo", "ppdo"], "stats_images": 0, "sweep": {"af_p2c": [1, 3]}}
    return pipeline_yaml(b, t, edit, "study.yaml")


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


CASES = cases_of(globals())


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("stale"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, base, tmp_path):
    assert_clean(CASES, name, base, tmp_path)
