"""``doei ablate --quick`` and ``doei sweep --quick`` end to end through ``doei.cli.main``, and resume."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from doei.cli import main as cli_main

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "ablate.yaml")
CONFIG_TSCAM = str(Path(__file__).resolve().parents[1] / "configs" / "ablate_tscam.yaml")


@pytest.fixture(scope="module")
def ablate_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "out"
    assert cli_main(["ablate", "--config", CONFIG, "--out", str(out), "--quick", "--seeds", "2"]) == 0
    return out


def test_ablate_writes_the_table_for_seven_rows_and_two_seeds(ablate_dir):
    doc = json.loads((ablate_dir / "ablation.json").read_text())
    assert list(doc["rows"]) == ["baseline", "cpdo", "ppdo", "cpdo_ppdo", "cpdo_hfa", "ppdo_hfa", "cpdo_ppdo_hfa"]
    runs = sorted(p.name for p in (ablate_dir / "runs").iterdir())
    assert len(runs) == 12 and all((ablate_dir / "runs" / r / "result.json").is_file() for r in runs)
    base = doc["rows"]["baseline"]
    assert base["seeds"] == [0, 1] and base["block_stats"] == []
    assert base["best_beta"]["mIoU"]["vs_baseline"]["diffs"] == [0, 0]
    full = doc["rows"]["cpdo_ppdo_hfa"]
    assert full["doei"]["enabled"] and len(full["block_stats"]) == 2           # quick model: depth 2
    # PPDO always moves patch tokens (SF < 0 on the non-confident); with the default sf_c2c = 0 CPDO only
    # amplifies, so class tokens move exactly where some class token is selected (k > 0)
    assert all(s["delta_ratio_patch"] > 0 for s in full["block_stats"])
    assert all((s["delta_ratio_cls"] > 0) == (s["k_c2c"] > 0) for s in full["block_stats"])
    assert doc["rows"]["cpdo_hfa"]["run_keys"] == doc["rows"]["cpdo"]["run_keys"]
    for row in doc["rows"].values():
        for mode in ("best_beta", "fixed_beta"):
            m = row[mode]["mIoU"]
            assert m["n"] == 2 and 0 <= m["mean"] <= 100
            assert m["vs_baseline"]["mean"] == pytest.approx(m["mean"] - base[mode]["mIoU"]["mean"])
    md = (ablate_dir / "ablation.md").read_text()
    assert "| CPDO + PPDO + HFA |" in md and "fixed β" in md
    assert (ablate_dir / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    log = [json.loads(x) for x in (ablate_dir / "study_log.jsonl").read_text().splitlines()]
    assert sum(r["event"] == "end" for r in log) == 12


def test_rerun_skips_finished_runs(ablate_dir, monkeypatch):
    import doei.engine.train_cls as tc

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(tc, "train", no_training)
    stamp = {p: p.stat().st_mtime_ns for p in (ablate_dir / "runs").glob("*/result.json")}
    assert cli_main(["ablate", "--config", CONFIG, "--out", str(ablate_dir), "--quick", "--seeds", "2"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (ablate_dir / "runs").glob("*/result.json")} == stamp
    log = [json.loads(x) for x in (ablate_dir / "study_log.jsonl").read_text().splitlines()]
    assert sum(r["event"] == "skip" for r in log) == 12


def test_missing_result_is_rerun_and_report_only_trains_nothing(ablate_dir, monkeypatch):
    victim = next(p for p in (ablate_dir / "runs").glob("*-s1") if not p.name.startswith("off"))
    os.remove(victim / "result.json")
    import doei.engine.train_cls as tc

    monkeypatch.setattr(tc, "train", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained")))
    assert cli_main(["ablate", "--config", CONFIG, "--out", str(ablate_dir), "--quick", "--seeds", "2",
                     "--report-only"]) == 0
    doc = json.loads((ablate_dir / "ablation.json").read_text())
    assert any(r["seeds"] == [0] for r in doc["rows"].values())
    full = doc["rows"]["cpdo_ppdo_hfa"]                 # per-seed mAP and area, regenerated from the runs
    assert set(full["classifier_mAP"]["per_seed"]) <= {"0", "1"} and "wins" in full["classifier_mAP"]["vs_baseline"]
    assert set(full["cooccurrence"]["group:context"]["area"]["per_seed"]) <= {"0", "1"}
    monkeypatch.undo()
    assert cli_main(["ablate", "--config", CONFIG, "--out", str(ablate_dir), "--quick", "--seeds", "2"]) == 0
    assert (victim / "result.json").is_file()
    # the checkpoint of the finished training was reused: the run's metrics log has one epoch record
    epochs = [json.loads(x) for x in (victim / "train" / "metrics.jsonl").read_text().splitlines()]
    assert sum(e.get("kind") == "epoch" for e in epochs) == 1


def test_sweep_writes_json_and_plot_and_reuses_ablation_runs(ablate_dir):
    before = len(list((ablate_dir / "runs").iterdir()))
    assert cli_main(["sweep", "--config", CONFIG, "--out", str(ablate_dir), "--quick", "--seeds", "1",
                     "--param", "af_p2c=1,3", "--param", "layers=1"]) == 0
    doc = json.loads((ablate_dir / "sweep_af_p2c.json").read_text())
    assert doc["values"] == [1.0, 3.0] and len(doc["points"]) == 2
    p1, p3 = doc["points"]
    assert p1["run_keys"] == json.loads((ablate_dir / "ablation.json").read_text())["rows"]["cpdo_ppdo_hfa"]["run_keys"][:1]
    r1 = [s["delta_ratio_patch"] for s in p1["summary"]["block_stats"]]
    r3 = [s["delta_ratio_patch"] for s in p3["summary"]["block_stats"]]
    k = [s["k_p2c"] for s in p1["summary"]["block_stats"]]
    assert k[0] > 0 and r3[0] > r1[0]            # a larger AF is a larger update where PPDO selects patches
    assert all(b > a for a, b, kk in zip(r1, r3, k) if kk > 0)
    lay = json.loads((ablate_dir / "sweep_layers.json").read_text())
    assert [s["block"] for s in lay["points"][0]["summary"]["block_stats"]] == [1]
    for name in ("af_p2c", "layers"):
        png = (ablate_dir / f"sweep_{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert len(list((ablate_dir / "runs").iterdir())) == before + 2   # af 3 and K = 1 only


def test_doc_tables_render_the_real_study_files(ablate_dir, tmp_path):
    """The doc-table kinds read what doei ablate / doei sweep write (--collect, then the study and sweep kinds)."""
    from doei.study.doc_json import Node
    from doei.study.doc_render import render_study, render_sweep
    from doei.study.doc_tables import collect

    if not list(ablate_dir.glob("sweep_*.json")):
        assert cli_main(["sweep", "--config", CONFIG, "--out", str(ablate_dir), "--quick", "--seeds", "1",
                         "--param", "af_p2c=1,3"]) == 0
    names = sorted(p.name for p in collect(ablate_dir, "q", root=tmp_path))
    assert names == ["q.json", "q_sweep.json"]
    res = tmp_path / "docs" / "results"
    study = render_study(Node(json.loads((res / "q.json").read_text()), "q.json"),
                         {"metrics": "mIoU,mAP,area,area:rest,object_FN:rest", "rows": "baseline,cpdo_ppdo_hfa"})
    lines = study.splitlines()
    assert lines[0] == "| row | seeds | mIoU | mAP | area | area rest | obj FN rest |" and len(lines) == 4
    assert "(absolute)" in lines[2] and lines[3].count("/") >= 3          # mIoU, mAP, obj FN with wins; area none
    sweeps = json.loads((res / "q_sweep.json").read_text())["sweeps"]
    sweep = render_sweep(Node(sweeps["af_p2c"], "q_sweep.json"), {}).splitlines()
    assert sweep[0] == "| af_p2c | seeds | mIoU | FP | FN | Δ mIoU vs baseline |"
    assert len(sweep) == 3 + len(sweeps["af_p2c"]["points"]) and sweep[3].startswith("| 1.0 | ")
    assert "## af_p2c" in (ablate_dir / "sweep.md").read_text()


def test_bad_input_exits_2(tmp_path, capsys):
    assert cli_main(["sweep", "--config", CONFIG, "--out", str(tmp_path), "--param", "gamma=1"]) == 2
    assert "unknown parameter 'gamma'" in capsys.readouterr().err
    assert cli_main(["ablate", "--config", str(tmp_path / "none.yaml"), "--out", str(tmp_path)]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(CONFIG).read_text().replace("cam_layers: 3", "cam_layer: 3"))
    assert cli_main(["ablate", "--config", str(bad), "--out", str(tmp_path)]) == 2
    assert "study: unknown key(s) ['cam_layer']" in capsys.readouterr().err


def test_tscam_study_runs_only_its_rows(tmp_path):
    """configs/ablate_tscam.yaml: one class token, so study.rows limits the grid to baseline/PPDO/PPDO+HFA;
    CPDO never selects anything (no class-token block statistics)."""
    out = tmp_path / "tscam"
    assert cli_main(["ablate", "--config", CONFIG_TSCAM, "--out", str(out), "--quick", "--seeds", "1"]) == 0
    doc = json.loads((out / "ablation.json").read_text())
    assert list(doc["rows"]) == ["baseline", "ppdo", "ppdo_hfa"]
    assert len(list((out / "runs").iterdir())) == 3
    assert all(not d["doei"].get("cpdo", False) for d in doc["rows"].values())
    stats = doc["rows"]["ppdo_hfa"]["block_stats"]
    assert stats and all(b["k_c2c"] is None or b["k_c2c"] == 0 for b in stats)
    assert "| PPDO + HFA |" in (out / "ablation.md").read_text() and "| CPDO |" not in (out / "ablation.md").read_text()


def test_bad_rows_key_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad_rows.yaml"
    bad.write_text(Path(CONFIG_TSCAM).read_text().replace("rows: [baseline, ppdo, ppdo_hfa]", "rows: [ppdo, hfa]"))
    assert cli_main(["ablate", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "study.rows: unknown row(s) ['hfa']" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_quick_shrinks_only_models_that_take_size_options(tmp_path):
    from doei.study.runner import load_study

    root = Path(CONFIG).parent
    vit = load_study(root / "ablate_tscam.yaml", tmp_path / "a", quick=True)
    assert vit.train_dict["model"]["options"] == {"depth": 2, "embed_dim": 32, "num_heads": 2}
    conformer = load_study(root / "ablate_transcam.yaml", tmp_path / "b", quick=True)
    assert "options" not in conformer.train_dict["model"]   # the synth Conformer takes none
    assert conformer.train_dict["train"]["epochs"] == 1 and conformer.n_train == 16
    assert [r.name for r in conformer.rows] == ["baseline", "ppdo", "ppdo_hfa"]


@pytest.mark.parametrize("cmd", ["ablate", "sweep"])
def test_integer_options_and_study_keys_are_checked_before_anything_runs(cmd, tmp_path, capsys):
    sweep = ["--param", "af_p2c=0.3,1"] if cmd == "sweep" else []
    out = tmp_path / "o"
    for extra, needle in ((["--seeds", "0"], "--seeds 0: expected at least 1"),
                          (["--first-seed", "-1"], "--first-seed -1: expected an integer >= 0")):
        assert cli_main([cmd, "--config", CONFIG, "--out", str(out), "--quick", *sweep, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"doei {cmd}: error: {needle}") and err.count("\n") == 1, err
    text = Path(CONFIG).read_text()
    for key, value in (("n_train", "0"), ("n_val", "-2"), ("synth_seed", "-1"), ("cam_layers", "0"),
                       ("stats_images", "0"), ("n_train", "2.5")):
        bad = tmp_path / "study.yaml"
        bad.write_text(_with_study_key(text, key, value))
        assert cli_main([cmd, "--config", str(bad), "--out", str(out), *sweep]) == 2
        err = capsys.readouterr().err
        assert f"study.yaml: study.{key} = {value}, expected an integer >=" in err and err.count("\n") == 1, err
    assert not out.exists()


def _with_study_key(text: str, key: str, value: str) -> str:
    import yaml

    d = yaml.safe_load(text)
    d.setdefault("study", {})[key] = yaml.safe_load(value)
    return yaml.safe_dump(d)


@pytest.mark.parametrize("cmd", ["ablate", "sweep"])
def test_default_and_relative_configs_found_from_any_folder(cmd, tmp_path, monkeypatch, capsys):
    """The default configs/ablate.yaml (and a README-style relative --config) is found from another cwd.

    A deliberate bad --set makes load_study fail right after reading the config, so no run starts; the
    error names the file that was read: the repository's, by absolute path."""
    repo_configs = Path(CONFIG).parent
    monkeypatch.chdir(tmp_path)
    sweep = ["--param", "af_p2c=1"] if cmd == "sweep" else []
    for config, name in (([], "ablate.yaml"), (["--config", "configs/ablate_tscam.yaml"], "ablate_tscam.yaml"),
                         (["--config", "ablate_transcam.yaml"], "ablate_transcam.yaml")):
        assert cli_main([cmd, "--out", "o", "--quick", *sweep, *config, "--set", "train.epochz=1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"doei {cmd}: error: {repo_configs / name}.train: unknown key 'epochz'"), err
    assert cli_main([cmd, "--out", "o", *sweep, "--config", "nope.yaml"]) == 2
    assert f"--config nope.yaml: file not found (looked in {tmp_path}, " in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_find_config_prefers_the_working_directory(tmp_path, monkeypatch):
    from doei.utils.repo_configs import configs_dir, find_config

    monkeypatch.chdir(tmp_path)
    assert find_config(None, "ablate.yaml") == configs_dir() / "ablate.yaml" == Path(CONFIG)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "ablate.yaml").write_text("x: 1\n")
    assert find_config("configs/ablate.yaml", "ablate.yaml") == Path("configs/ablate.yaml")  # the user's own
    assert find_config(str(tmp_path / "missing.yaml"), "ablate.yaml") == tmp_path / "missing.yaml"  # load_study says so


def test_quick_keeps_the_configs_betas(tmp_path):
    """``--quick`` shrinks the benchmark and the model, not the evaluation: the config's ``study.betas`` is
    the β grid of every run (it was silently replaced by 0.1:0.9:0.2, #22), recorded in ``ablation.json``
    and ``sweep_<param>.json``."""
    import yaml

    d = yaml.safe_load(Path(CONFIG).read_text())
    d["study"].update(betas="0.2,0.6", rows=["baseline"])
    config = tmp_path / "ablate.yaml"
    config.write_text(yaml.safe_dump(d))
    out = tmp_path / "out"
    assert cli_main(["ablate", "--config", str(config), "--out", str(out), "--quick", "--seeds", "1"]) == 0
    assert json.loads((out / "ablation.json").read_text())["betas"] == "0.2,0.6"
    for res in (json.loads(p.read_text()) for p in (out / "runs").glob("*/result.json")):
        assert [round(s["beta"], 6) for s in res["sweep"]] == [0.2, 0.6] and res["beta"] in (0.2, 0.6)
    assert cli_main(["sweep", "--config", str(config), "--out", str(out), "--quick", "--param", "af_p2c=1"]) == 0
    assert json.loads((out / "sweep_af_p2c.json").read_text())["betas"] == "0.2,0.6"
