"""Smoke mode of ``doei run`` (run.smoke / --smoke): capped steps and images, random init, the per-stage
table, and the guards that keep a smoke run from being taken for a real one. On the tiny synthetic set."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from doei.errors import DoeiError
from doei.pipeline import run_pipeline
from doei.pipeline.smoke import SMOKE_FILE, StageMeter, smoke_config
from doei.pipeline_config import STAGES
from tests.pipeline_common import make_synth, tiny_config


def _smoke_cfg(tmp_path: Path, out: str = "run", **kw):
    root = make_synth(tmp_path)
    return tiny_config(root, tmp_path / out, run__smoke=1, **kw)


def test_smoke_run_caps_every_stage_and_writes_the_table(tmp_path):
    cfg = _smoke_cfg(tmp_path, classifier__model__pretrained=str(tmp_path / "missing_weights.pth"),
                     refine__train__init_weights=str(tmp_path / "missing_res38.pth"))
    lines: list[str] = []
    res = run_pipeline(cfg, log=lines.append)
    out = Path(cfg.run.out_dir)
    table = json.loads((out / SMOKE_FILE).read_text())
    assert table["smoke"] == 1 and "no number" in table["note"]
    assert [r["stage"] for r in table["stages"]] == list(STAGES)
    assert any("random init" in c for c in table["changes"])          # the missing weight files were never read
    assert any("random init" in line for line in lines) and any("SMOKE RUN" in line for line in lines)
    rows = {r["stage"]: r for r in table["stages"]}
    for st in STAGES:
        assert rows[st]["seconds"] > 0 and rows[st]["peak_rss_mb"] > 0
    assert rows["train-cls"]["steps"] == 1 and rows["train-cls"]["batch"] == 4 and rows["train-cls"]["train s/step"] > 0
    assert rows["refine"]["batch"] == 2 and rows["refine"]["affinity s/step"] > 0
    assert rows["cam"]["images"] == 1 and rows["infer-seg"]["images"] == 1
    # one image per split: one CAM, one pseudo mask, one prediction
    assert len(list((out / "cam").glob("*.npz"))) == 1
    assert len(list((out / "pseudo").glob("*.png"))) == 1
    assert len(list((out / "seg_pred" / "pred").glob("*.png"))) == 1
    # exactly one optimiser step per training stage, at the configured batch
    for sub in ("cls", "refine", "seg"):
        rec = [json.loads(x) for x in (out / sub / "metrics.jsonl").read_text().splitlines() if x.strip()]
        assert [r["step"] for r in rec if r["kind"] == "epoch"] == [1]
        assert len(next(r for r in rec if r["kind"] == "epoch")["step_compute_seconds"]) == 1
    ev = json.loads((out / "eval.json").read_text())
    assert ev["smoke"] == 1 and all(r["images"] == 1 for r in ev["table"])
    assert res["smoke"]["stages"][0]["stage"] == "train-cls"
    marker = json.loads((out / "stages" / "cam" / "stage_done.json").read_text())
    assert marker["smoke"] == {"smoke": 1, "smoke_batch": None} and marker["resources"]["peak_rss_mb"] > 0
    # a rerun skips every stage and rebuilds the same table from the markers
    again = run_pipeline(cfg, log=lambda *_: None)
    assert [r["stage"] for r in again["smoke"]["stages"]] == list(STAGES)


def test_real_run_refuses_a_smoke_folder_and_smoke_refuses_a_real_one(tmp_path):
    cfg = _smoke_cfg(tmp_path, run__stages=["train-cls"])
    run_pipeline(cfg, log=lambda *_: None)
    real = tiny_config(make_synth(tmp_path), tmp_path / "run", run__stages=["train-cls"])
    with pytest.raises(DoeiError, match="holds a smoke run"):
        run_pipeline(real, log=lambda *_: None)
    real2 = tiny_config(make_synth(tmp_path), tmp_path / "real", run__stages=["train-cls"],
                        classifier__train__epochs=1)
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "pipeline_config.json").write_text("{}")
    smoke2 = tiny_config(make_synth(tmp_path), tmp_path / "real", run__stages=["train-cls"], run__smoke=1)
    with pytest.raises(DoeiError, match="holds a real run"):
        run_pipeline(smoke2, log=lambda *_: None)
    assert real2.run.smoke is None


def test_smoke_fingerprints_differ_from_real_ones(tmp_path):
    from doei.pipeline.markers import fingerprint, stage_settings

    root = make_synth(tmp_path)
    real = tiny_config(root, tmp_path / "r")
    sm = tiny_config(root, tmp_path / "r", run__smoke=1)
    for st in STAGES:
        assert fingerprint(stage_settings(real, st)) != fingerprint(stage_settings(sm, st))
    assert "smoke" not in stage_settings(real, "cam")      # markers of real runs are unchanged


def test_smoke_batch_override_is_applied_and_stated(tmp_path):
    cfg = _smoke_cfg(tmp_path, run__smoke_batch=1)
    c, changes = smoke_config(cfg)
    assert c.classifier["train"]["batch_size"] == 1 and c.refine.train.batch_size == 1 and c.seg.train.batch_size == 1
    assert any("run.smoke_batch" in x for x in changes)
    assert cfg.refine.train.batch_size == 2                 # the given config is not changed


def test_smoke_settings_are_checked(tmp_path):
    root = make_synth(tmp_path)
    with pytest.raises(DoeiError, match="run.smoke"):
        tiny_config(root, tmp_path / "r", run__smoke=0)
    with pytest.raises(DoeiError, match="run.smoke_batch"):
        tiny_config(root, tmp_path / "r", run__smoke_batch=2)
    with pytest.raises(TypeError, match="cfg"):
        smoke_config({"run": {}})
    with pytest.raises(ValueError, match="run.smoke"):
        smoke_config(tiny_config(root, tmp_path / "r"))


def test_stage_meter_sees_a_stage_allocation():
    import numpy as np

    with StageMeter() as m:
        a = np.ones(64 * 1024 * 1024 // 8)        # 64 MiB touched
        a.sum()
    del a
    assert m.result["seconds"] >= 0 and m.result["peak_rss_mb"] >= 64
    assert m.result["cuda_peak_mb"] is None and m.result["cpu_seconds"] >= 0
