"""``doei run`` on tiny data: every stage in order, stage markers, resume after a failing stage
(earlier stages skipped, not redone), refusal of changed settings, the eval table."""
from __future__ import annotations

import json

import pytest

from doei import pipeline as run_cmd
from doei.errors import DoeiError
from tests.pipeline_common import make_synth, tiny_config


def _cfg(synth, out, **kw):
    base = {"refine__train__epochs": 1, "seg__train__epochs": 1, "seg__infer__scales": [1.0],
            "seg__infer__flip": False}
    return tiny_config(synth, out, **{**base, **kw})


def test_run_resumes_after_a_failing_stage(tmp_path, monkeypatch):
    synth = make_synth(tmp_path)
    out = tmp_path / "run"
    logs: list[str] = []

    def boom(cfg, log):
        raise DoeiError("simulated failure in train-seg")

    monkeypatch.setitem(run_cmd.STAGE_FUNCS, "train-seg", boom)
    with pytest.raises(DoeiError, match="simulated"):
        run_cmd.run_pipeline(_cfg(synth, out), log=logs.append)
    done = {s: (out / "stages" / s / "stage_done.json") for s in ("train-cls", "cam", "refine")}
    assert all(p.is_file() for p in done.values())
    assert not (out / "stages" / "train-seg" / "stage_done.json").exists()
    stamps = {s: p.read_text() for s, p in done.items()}
    cls_mtime = (out / "cls" / "checkpoint.pt").stat().st_mtime_ns
    n_pseudo = len(list((out / "pseudo").glob("*.png")))
    assert n_pseudo > 0 and len(list((out / "cam").glob("*.npz"))) == n_pseudo

    monkeypatch.undo()
    logs.clear()
    res = run_cmd.run_pipeline(_cfg(synth, out), log=logs.append)
    for s in ("train-cls", "cam", "refine"):
        assert any(f"[{s}] already done" in m for m in logs), s
        assert done[s].read_text() == stamps[s]                 # not redone
    assert (out / "cls" / "checkpoint.pt").stat().st_mtime_ns == cls_mtime
    assert any("[train-seg] running" in m for m in logs) and any("[eval] done" in m for m in logs)
    table = json.loads((out / "eval.json").read_text())["table"]
    assert [r["stage"] for r in table] == ["Seed", "Mask", "Seg", "Seg+CRF"]
    assert all(0 <= r["mIoU"] <= 100 for r in table) and table[0]["beta"] is not None
    assert res["eval"]["table"] == table
    marker = json.loads((out / "stages" / "eval" / "stage_done.json").read_text())
    assert marker["stage"] == "eval" and marker["seconds"] >= 0 and len(marker["fingerprint"]) == 16

    events = [json.loads(ln) for ln in (out / "run_log.jsonl").read_text().splitlines()]
    assert {"event": "fail", "stage": "train-seg"}.items() <= events[[e["event"] for e in events].index("fail")].items()
    assert [e["stage"] for e in events if e["event"] == "skip"] == ["train-cls", "cam", "refine"]
    # a third run does nothing; runtime-only settings (progress, workers) do not count as changes
    logs.clear()
    run_cmd.run_pipeline(_cfg(synth, out, seg__infer__crf_workers=2), log=logs.append)
    assert sum("already done" in m for m in logs) == 6 and not any("running" in m for m in logs)
    # eval alone scores what exists: rows of stages outside run.stages without outputs are skipped
    only = _cfg(synth, tmp_path / "only_eval", run__stages=["eval"], refine__train__cam_dir=str(out / "cam"))
    res2 = run_cmd.run_pipeline(only, log=logs.append)
    assert [r["stage"] for r in res2["eval"]["table"]] == ["Seed"]
    assert res2["eval"]["table"][0]["mIoU"] == table[0]["mIoU"]
    # a changed recipe for a finished stage is refused, naming the marker
    with pytest.raises(DoeiError, match=r"stage refine finished with other inputs \(refine.infer.logt was 3, now 4\)"):
        run_cmd.run_pipeline(_cfg(synth, out, refine__infer__logt=4), log=logs.append)


def test_run_cli_bad_config_exits_2(tmp_path, capsys):
    from doei.cli import main

    f = tmp_path / "bad.yaml"
    f.write_text("data: {root: x}\nrefine: {train: {epochs: 0}}\n")
    assert main(["run", "--config", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refine.train.epochs" in err[0]
    assert main(["run", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
