"""A study never reuses a run made from other inputs: a finished run is refused in one line naming what
changed, an unfinished one is set aside and started afresh (``doei.study.runner.check_run_spec``)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from doei.cli import main as cli_main

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "ablate.yaml")
BASE = ["ablate", "--config", CONFIG, "--quick", "--seeds", "1", "--rows", "baseline"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("stale") / "out"
    assert cli_main([*BASE, "--out", str(out)]) == 0
    return out


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_each_run_records_its_inputs(study):
    spec = json.loads((study / "runs" / "off-s0" / "run_spec.json").read_text())
    assert spec["settings"]["train"]["train"]["seed"] == 0 and "out_dir" not in spec["settings"]["train"]["train"]
    assert spec["settings"]["benchmark"]["n_train"] > 0 and spec["fingerprint"]


@pytest.mark.parametrize("change", ["optim.lr=0.0123", "train.epochs=3", "model.drop_rate=0.1"])
def test_a_finished_run_with_other_settings_is_refused_not_reused(study, change, capsys):
    before = _snapshot(study / "runs")
    assert cli_main([*BASE, "--out", str(study), "--set", change]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "finished with other inputs" in err[0] and change.split("=")[0] in err[0]
    assert _snapshot(study / "runs") == before


def test_changed_initial_weights_are_refused(study, tmp_path, capsys):
    import torch

    # a run whose recorded initial weights differ from the file now named: the content hash decides
    spec_path = study / "runs" / "off-s0" / "run_spec.json"
    saved = spec_path.read_text()
    spec = json.loads(saved)
    spec["files"] = {"model.pretrained": "sha256:" + "0" * 64}
    spec_path.write_text(json.dumps(spec))
    try:
        assert cli_main([*BASE, "--out", str(study)]) == 2
        assert "model.pretrained" in capsys.readouterr().err
    finally:
        spec_path.write_text(saved)
    assert cli_main([*BASE, "--out", str(study)]) == 0


def test_an_unfinished_start_with_other_settings_is_set_aside(study, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(study, out)
    run = out / "runs" / "off-s0"
    (run / "result.json").unlink()
    spec = json.loads((run / "run_spec.json").read_text())
    spec["settings"]["train"]["optim"]["lr"] = 0.5           # started with another learning rate, then stopped
    (run / "run_spec.json").write_text(json.dumps(spec))
    assert cli_main([*BASE, "--out", str(out)]) == 0
    aside = [p for p in (out / "runs").iterdir() if p.name.startswith("off-s0.partial-")]
    assert len(aside) == 1 and not (aside[0] / "result.json").exists()
    now = json.loads((run / "run_spec.json").read_text())
    assert now["settings"] == json.loads((study / "runs" / "off-s0" / "run_spec.json").read_text())["settings"]
    assert (run / "result.json").is_file()


def test_a_run_finished_before_inputs_were_recorded_is_reused_with_a_warning(study, tmp_path, capsys):
    out = tmp_path / "old"
    shutil.copytree(study, out)
    (out / "runs" / "off-s0" / "run_spec.json").unlink()
    assert cli_main([*BASE, "--out", str(out)]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(err) == 1 and "reused unchecked" in err[0]
