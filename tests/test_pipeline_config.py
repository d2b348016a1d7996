"""Pipeline config: official recipe defaults, strict keys, range checks, default paths; SGD poly schedule."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from doei.config import from_dict
from doei.engine.sgd_loop import build_sgd, poly_factor, set_poly_lr
from doei.errors import DoeiError
from doei.pipeline_config import PipelineConfig, load_pipeline_config, pipeline_config_from_dict

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_official_recipes():
    c = from_dict(PipelineConfig, {"data": {"root": "x"}})
    rt, ri, st, si = c.refine.train, c.refine.infer, c.seg.train, c.seg.infer
    # PSA train_aff.py (ResNet38): crop 448, batch 8, 8 epochs, lr 0.1, wd 5e-4, poly 0.9
    assert (rt.crop_size, rt.batch_size, rt.epochs, rt.lr, rt.weight_decay, rt.power) == (448, 8, 8, 0.1, 5e-4, 0.9)
    assert rt.momentum == rt.weight_decay  # PolyOptimizer passes weight decay into SGD's momentum slot
    assert rt.color_jitter == [0.3, 0.3, 0.3, 0.1] and rt.radius == 5 and rt.crf
    # MCTformer infer_aff.py
    assert (ri.bg_mode, ri.bg_threshold, ri.beta, ri.logt) == ("constant", 0.39, 8.0, 6)
    # MCTformer seg/train_seg.py + run_seg.sh
    assert (st.crop_size, st.batch_size, st.epochs, st.lr, st.head_lr_mult) == (321, 4, 30, 7e-4, 10.0)
    assert st.scale_range == [0.7, 1.3] and st.weight_decay == 0.0 and st.momentum == 1e-5
    assert si.scales == [0.5, 0.75, 1.0, 1.25, 1.5] and si.crf
    assert (si.crf_gauss_sxy, si.crf_gauss_compat, si.crf_bi_sxy, si.crf_bi_srgb, si.crf_bi_compat) == (4, 3, 83, 5, 3)


def test_default_paths_follow_run_out_dir():
    c = pipeline_config_from_dict({"run": {"out_dir": "R"}, "data": {"root": "d", "train_split": "tr", "val_split": "va"}})
    assert c.refine.train.cam_dir == str(Path("R/cam")) and c.refine.train.split == "tr"
    assert c.refine.infer.out_dir == str(Path("R/pseudo")) and c.seg.train.pseudo_dir == c.refine.infer.out_dir
    assert c.refine.infer.checkpoint == str(Path("R/refine/checkpoint.pt"))
    assert c.seg.infer.checkpoint == str(Path("R/seg/checkpoint.pt")) and c.seg.infer.split == "va"
    assert c.seg.infer.model == c.seg.train.model and c.refine.infer.model == c.refine.train.model


@pytest.mark.parametrize("data, needle", [
    ({"data": {"root": "d"}, "refine": {"train": {"crop_sz": 3}}}, "unknown key 'crop_sz'"),
    ({"data": {"root": "d"}, "refine": {"train": {"crop_size": 100}}}, "refine.train.crop_size"),
    ({"data": {"root": "d"}, "seg": {"train": {"momentum": 1.5}}}, "seg.train.momentum"),
    ({"data": {"root": "d"}, "seg": {"infer": {"scales": []}}}, "seg.infer.scales"),
    ({"data": {"root": "d"}, "run": {"stages": ["cam", "bogus"]}}, "run.stages"),
    ({"data": {"root": "d"}, "run": {"stages": []}}, "run.stages = [], expected at least one stage"),
    ({"data": {"root": "d"}, "run": {"stages": ["eval", "cam"]}},
     "run.stages = ['eval', 'cam'], expected each stage once, in the pipeline's order ['train-cls', 'cam'"),
    ({"data": {"root": "d"}, "run": {"stages": ["cam", "refine", "cam"]}}, "expected each stage once"),
    ({"data": {"root": "d"}, "refine": {"train": {"low_alpha": 12, "high_alpha": 1}}}, "low_alpha"),
    ({"data": {"root": "d"}, "seg": {"train": {"device": "tpu"}}}, "seg.train.device"),
    ({"data": {"root": ""}}, "data.root"),
    ({"data": {"root": "d", "kind": "imagenet"}}, "data.kind"),
])
def test_bad_values_are_one_line_errors(data, needle):
    with pytest.raises(DoeiError) as e:
        pipeline_config_from_dict(data)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_demo_pipeline_config_loads_and_overrides():
    c = load_pipeline_config(REPO / "configs/demo_pipeline.yaml", ["refine.train.epochs=1", "run.out_dir=/tmp/x"])
    assert c.refine.train.epochs == 1 and c.refine.train.cam_dir == str(Path("/tmp/x/cam"))
    assert c.refine.train.model == "psa_resnet38_aff_small" and c.data.kind == "synth"


def test_demo_pipeline_128px_differs_from_64px_only_in_resolution_keys():
    """configs/demo_pipeline.yaml (128 px, the demo's default since issue #16) is configs/demo_pipeline_px64.yaml's
    recipe with the classifier read at scale 0.5, the later stages' crops, radius and CRF widths scaled to
    128 px and the random walk's background threshold at the seeds' best β; every other setting is the same."""
    a = load_pipeline_config(REPO / "configs/demo_pipeline_px64.yaml").to_dict()
    b = load_pipeline_config(REPO / "configs/demo_pipeline.yaml").to_dict()
    assert b["cam"]["scales"] == [0.5] and b["refine"]["train"]["radius"] == 5
    assert b["seg"]["infer"]["crf_gauss_sxy"] == 2 * a["seg"]["infer"]["crf_gauss_sxy"]
    assert b["seg"]["infer"]["crf_bi_sxy"] == 2 * a["seg"]["infer"]["crf_bi_sxy"]
    changed = {("cam", "scales"), ("refine.train", "crop_size"), ("refine.train", "radius"),
               ("refine.infer", "bg_threshold"),                       # the seeds' best beta at each size
               ("seg.train", "crop_size"), ("seg.infer", "crf_gauss_sxy"), ("seg.infer", "crf_bi_sxy")}
    for sec in ("cam", "refine.train", "refine.infer", "seg.train", "seg.infer", "eval"):
        x, y = a, b
        for k in sec.split("."):
            x, y = x[k], y[k]
        for key in set(x) | set(y):
            if (sec, key) not in changed and not str(x.get(key)).startswith("demo_out"):
                assert x.get(key) == y.get(key), (sec, key)


def test_poly_schedule_and_groups():
    assert poly_factor(0, 10, 0.9) == 1.0
    assert poly_factor(5, 10, 0.9) == pytest.approx(0.5 ** 0.9)
    assert poly_factor(10, 10, 0.9) == 0.0 and poly_factor(12, 10, 0.9) == 0.0
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    opt = build_sgd([([a], 1.0, 5e-4), ([], 2.0, 0.0), ([b], 10.0, 0.0)], base_lr=0.1, momentum=0.0)
    assert len(opt.param_groups) == 2  # the empty group is dropped
    lr = set_poly_lr(opt, 0.1, 0.5)
    assert lr == pytest.approx(0.05)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.5])
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0]
    with pytest.raises(DoeiError):
        build_sgd([([], 1.0, 0.0)], 0.1, 0.0)


def test_exponent_floats_load_and_the_run_record_loads_back(tmp_path):
    """``1e-3`` (no dot) is a float in configs and ``--set`` (plain YAML 1.1 reads a string), so the
    ``pipeline_config.json`` that ``doei run`` writes (JSON prints ``1e-05``) loads back as a config."""
    import json

    from doei.config import parse_yaml

    assert parse_yaml("lr: 1e-3") == {"lr": 1e-3} and parse_yaml("x: -2E+2") == {"x": -200.0}
    assert parse_yaml("x: 1e5x") == {"x": "1e5x"} and parse_yaml("x: 3") == {"x": 3}
    cfg = load_pipeline_config(REPO / "configs" / "demo_pipeline.yaml", ["seg.train.lr=7e-4"])
    assert cfg.seg.train.lr == 7e-4
    rec = tmp_path / "pipeline_config.json"
    rec.write_text(json.dumps(cfg.to_dict()))
    assert "1e-05" in rec.read_text() or "e-0" in rec.read_text()
    assert load_pipeline_config(rec).to_dict() == cfg.to_dict()


def test_run_stages_subsets_in_pipeline_order_are_accepted():
    for stages in (["eval"], ["cam", "eval"], ["train-cls", "cam", "refine", "train-seg", "infer-seg", "eval"]):
        assert pipeline_config_from_dict({"data": {"root": "d"}, "run": {"stages": stages}}).run.stages == stages
