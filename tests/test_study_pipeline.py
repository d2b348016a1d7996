"""``doei ablate`` / ``doei sweep`` on a pipeline config (doei.study.pipeline_study): every (row, seed) is a
resumable ``doei run`` of the stages its scored row needs; resumed without recomputing; changed settings
refused before anything runs; the same tables and plots as on the benchmark. Plus the Table-4 / Fig. 4
paper configs load and validate. Tiny: a 4-image synthetic set in VOC layout, a 2-block 48-wide model."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from doei.cli import main as cli_main
from pipeline_common import make_synth, tiny_dict

PAPER = Path(__file__).resolve().parents[1] / "configs" / "paper"
ROWS = ["baseline", "cpdo", "cpdo_hfa", "cpdo_ppdo_hfa"]


def _study_config(tmp: Path, data_root: Path, tiny: dict | None = None, **study) -> Path:
    """The tiny pipeline of ``tests/pipeline_common.py`` (``tiny``: its ``sec__key`` edits) as a study config:
    DOEI on (CPDO's ST 0.3) for the rows to start from, a 4-β seed sweep, ``run.out_dir`` left to the study;
    ``study`` keys on top of the defaults."""
    d = tiny_dict(data_root, None, classifier__doei={"enabled": True, "st_c2c": 0.3},
                  eval={"seed_betas": [0.1, 0.3, 0.5, 0.7], "workers": 1}, **(tiny or {}))
    d["study"] = {"rows": ROWS, "stats_images": 2, "sweep": {"af_p2c": [1, 3]}, **study}
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pstudy")
    config = _study_config(tmp, make_synth(tmp))
    out = tmp / "out"
    assert cli_main(["ablate", "--config", str(config), "--out", str(out), "--seeds", "1"]) == 0
    return config, out


def _stamps(out: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}


def test_rows_run_as_doei_run_stages_and_produce_the_table(study):
    config, out = study
    doc = json.loads((out / "ablation.json").read_text())
    assert list(doc["rows"]) == ROWS and doc["pipeline"]["stages"] == ["train-cls", "cam", "eval"]
    assert doc["pipeline"]["score"] == "Seed" and doc["pipeline"]["split"] == "train"
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert len(runs) == 3 and doc["rows"]["cpdo_hfa"]["run_keys"] == doc["rows"]["cpdo"]["run_keys"]
    for key in runs:
        run = out / "runs" / key / "run"
        # a doei run of the needed stages only: markers of train-cls, cam, eval; no refine/seg
        assert sorted(p.name for p in (run / "stages").iterdir()) == ["cam", "eval", "train-cls"]
        assert not (run / "refine").exists() and not (run / "seg").exists()
        cfg = json.loads((run / "pipeline_config.json").read_text())
        res = json.loads((out / "runs" / key / "result.json").read_text())
        assert cfg["classifier"]["doei"] == res["doei"] and cfg["run"]["seed"] == 0
        ev = json.loads((run / "eval.json").read_text())["results"]["Seed"]
        assert res["mIoU"] == ev["mIoU"] and res["beta"] == ev["beta"] and len(res["sweep"]) == 4
        assert set(res["timing"]["stage_seconds"]) == {"train-cls", "cam", "eval"}
    base, full = doc["rows"]["baseline"], doc["rows"]["cpdo_ppdo_hfa"]
    assert base["block_stats"] == [] and len(full["block_stats"]) == 2
    assert full["best_beta"]["mIoU"]["vs_baseline"]["n"] == 1 and doc["fixed_beta"] in (0.1, 0.3, 0.5, 0.7)
    md = (out / "ablation.md").read_text()
    assert "| CPDO + PPDO + HFA |" in md and "fixed β" in md and "`doei run` of stages train-cls, cam, eval" in md
    assert (out / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    log = [json.loads(x) for x in (out / "study_log.jsonl").read_text().splitlines()]
    assert sum(r["event"] == "end" for r in log) == 3


def test_rerun_resumes_without_recomputing(study, monkeypatch):
    import doei.pipeline.runner as pr

    config, out = study
    stamps = _stamps(out)

    def no_stage(*a, **k):
        raise AssertionError("a finished stage ran again")

    for stage in ("train-cls", "cam"):
        monkeypatch.setitem(pr.STAGE_FUNCS, stage, no_stage)
    assert cli_main(["ablate", "--config", str(config), "--out", str(out), "--seeds", "1"]) == 0
    assert _stamps(out) == stamps                                     # finished runs: nothing rewritten
    # a run stopped after its CAMs (eval marker and result gone): only eval runs, from the stage markers
    victim = out / "runs" / "off-s0"
    before = json.loads((victim / "result.json").read_text())
    (victim / "result.json").unlink()
    (victim / "run" / "stages" / "eval" / "stage_done.json").unlink()
    assert cli_main(["ablate", "--config", str(config), "--out", str(out), "--seeds", "1"]) == 0
    after = json.loads((victim / "result.json").read_text())
    assert after["mIoU"] == before["mIoU"] and after["sweep"] == before["sweep"]
    events = [json.loads(x) for x in (victim / "run" / "run_log.jsonl").read_text().splitlines()]
    assert [(e["stage"], e["event"]) for e in events[-4:]] == [("train-cls", "skip"), ("cam", "skip"),
                                                               ("eval", "start"), ("eval", "end")]


def test_changed_settings_are_refused_before_anything_runs(study, capsys):
    config, out = study
    stamps = _stamps(out)
    assert cli_main(["ablate", "--config", str(config), "--out", str(out), "--seeds", "1",
                     "--set", "classifier.train.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "made with other settings (train-cls differ; train-cls: classifier.train.epochs was 1, now 2)" in err
    assert err.count("\n") == 1, err
    assert cli_main(["ablate", "--config", str(config), "--out", str(out), "--seeds", "1",
                     "--set", "cam.n_layers=1"]) == 2
    assert "(cam differ; cam: cam.n_layers was 2, now 1)" in capsys.readouterr().err
    assert _stamps(out) == stamps


def test_a_finished_run_whose_input_file_changed_is_refused_not_reused(tmp_path, capsys):
    """The study recognises its finished runs by their input files too, as ``doei run``'s stage fingerprints
    do (#22): an image of the scored split replaced after the run is refused in one line naming the run,
    the stage and the file, before anything runs — also when only ``result.json`` is left of the run."""
    from PIL import Image

    data = make_synth(tmp_path)
    config = _study_config(tmp_path, data, rows=["baseline"], stats_images=0)
    out = tmp_path / "out"
    argv = ["ablate", "--config", str(config), "--out", str(out), "--seeds", "1"]
    assert cli_main(argv) == 0
    img = data / "JPEGImages" / "train_000001.png"
    Image.fromarray(255 - np.asarray(Image.open(img))).save(img)            # same name, other pixels
    for gone in (None, out / "runs" / "off-s0" / "run"):
        if gone is not None:
            shutil.rmtree(gone)                                             # the run folder deleted
        stamps = _stamps(out)
        capsys.readouterr()
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "off-s0: stage train-cls finished with other inputs (data[train].images " \
            "changed since" in err, err
        assert _stamps(out) == stamps
    res = json.loads((out / "runs" / "off-s0" / "result.json").read_text())
    assert set(res["inputs"]) == {"train-cls", "cam", "eval"}          # what the second refusal read


def test_sweep_from_the_config_reuses_the_ablation_runs(study):
    config, out = study
    before = set(p.name for p in (out / "runs").iterdir())
    assert cli_main(["sweep", "--config", str(config), "--out", str(out), "--seeds", "1"]) == 0   # study.sweep
    doc = json.loads((out / "sweep_af_p2c.json").read_text())
    abl = json.loads((out / "ablation.json").read_text())
    p1, p3 = doc["points"]
    assert p1["run_keys"] == abl["rows"]["cpdo_ppdo_hfa"]["run_keys"]      # af_p2c 1 = the full row's run
    assert len(set(p.name for p in (out / "runs").iterdir()) - before) == 1
    assert p3["summary"]["block_stats"][0]["delta_ratio_patch"] > p1["summary"]["block_stats"][0]["delta_ratio_patch"]
    assert (out / "sweep_af_p2c.png").read_bytes()[:4] == b"\x89PNG" and "Pipeline:" in (out / "sweep.md").read_text()


@pytest.mark.parametrize("study_keys, set_, needle", [
    ({"n_train": 10}, [], "study: unknown key(s) ['n_train'] for a pipeline config"),
    ({"score": "Pseudo"}, [], "study.score = 'Pseudo', expected one of ['Seed', 'Mask', 'Seg', 'Seg+CRF']"),
    ({"stats_images": -1}, [], "study.stats_images = -1, expected an integer >= 0"),
    ({"sweep": {"gamma": [1]}}, [], "unknown parameter 'gamma'"),
    ({}, ["run.cls_checkpoint=x.pt"], "run.cls_checkpoint is set, but every row trains its own classifier"),
    ({}, ["refine.train.cam_dir=/tmp/cams"], "refine.train.cam_dir = '/tmp/cams'; the study puts each run's"),
    ({}, ["classifier.optim.lrr=1"], "classifier.optim: unknown key 'lrr'"),
    ({"sweep": {"layers": [1, 3]}}, [], "does not fit mctformer_v2_tiny_conv: layers [1, 2, 3] name blocks beyond "
                                        "the network's depth 2"),
])
def test_bad_study_settings_exit_2_with_one_line(tmp_path, capsys, study_keys, set_, needle):
    config = _study_config(tmp_path, tmp_path / "nodata", **study_keys)
    sets = [x for s in set_ for x in ("--set", s)]
    verb = "sweep" if "sweep" in study_keys else "ablate"
    assert cli_main([verb, "--config", str(config), "--out", str(tmp_path / "o"), *sets]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_quick_is_refused_for_a_pipeline_config(tmp_path, capsys):
    config = _study_config(tmp_path, tmp_path / "nodata")
    assert cli_main(["sweep", "--config", str(config), "--out", str(tmp_path / "o"), "--quick"]) == 2
    assert "--quick shrinks the synthetic benchmark only" in capsys.readouterr().err


def test_a_mask_study_runs_refine_and_tabulates_rows_without_beta(tmp_path):
    """study.score: Mask — each run adds the refine stage (tiny AffinityNet), the pseudo masks are scored
    (no β: no fixed-β table), the seed reaches every training stage."""
    from doei.study.runner import load_study

    config = _study_config(tmp_path, make_synth(tmp_path), {"refine__train__epochs": 1}, score="Mask",
                           rows=["baseline"], stats_images=0)
    s = load_study(config, tmp_path / "o")
    assert s.stages == ["train-cls", "cam", "refine", "eval"]
    cfg = s.run_config({"enabled": False}, 3)
    assert cfg.run.seed == 3 and cfg.refine.train.seed == 3 and cfg.cam.get("split") is None
    assert Path(cfg.refine.train.cam_dir) == s.out.resolve() / "runs" / "off-s3" / "run" / "cam"
    out = tmp_path / "mask"
    assert cli_main(["ablate", "--config", str(config), "--out", str(out), "--seeds", "1"]) == 0
    doc = json.loads((out / "ablation.json").read_text())
    assert doc["fixed_beta"] is None and doc["rows"]["baseline"]["fixed_beta"] is None
    res = json.loads((out / "runs" / "off-s0" / "result.json").read_text())
    ev = json.loads((out / "runs" / "off-s0" / "run" / "eval.json").read_text())["results"]["Mask"]
    assert res["mIoU"] == ev["mIoU"] and res["beta"] is None and res["sweep"] == []
    assert (out / "runs" / "off-s0" / "run" / "stages" / "refine" / "stage_done.json").is_file()
    md = (out / "ablation.md").read_text()
    assert "## Scores" in md and "fixed β" not in md and "each run's score (no β)" in md
    assert (out / "ablation.png").read_bytes()[:4] == b"\x89PNG"


def test_paper_table4_and_fig4_configs_load_and_follow_the_doei_config(tmp_path):
    from doei.pipeline import classifier_config
    from doei.study.grid import SWEEP_PARAMS, canonical_doei, row_doei, run_key
    from doei.study.runner import load_study

    ab = load_study(PAPER / "ablate_voc_mctformer_v2.yaml", tmp_path / "a")
    assert [r.name for r in ab.rows] == ["baseline", "cpdo", "ppdo", "cpdo_ppdo", "cpdo_hfa", "ppdo_hfa",
                                         "cpdo_ppdo_hfa"]
    assert ab.score == "Seed" and ab.stages == ["train-cls", "cam", "eval"] and ab.scored_split == "train"
    full = ab.run_config(row_doei(ab.rows[-1], ab.base_doei), 1)
    tcfg = classifier_config(full)
    assert tcfg.doei.alpha == 0.35 and tcfg.doei.cpdo and tcfg.train.seed == 1
    assert (tcfg.train.batch_size, tcfg.train.epochs, tcfg.model.img_size) == (64, 60, 224)
    assert full.cam["split"] == "train" and full.run.stages == ["train-cls", "cam", "eval"]
    sw = load_study(PAPER / "sweep_voc_mctformer_v2.yaml", tmp_path / "s")
    names = [n for n, _ in sw.sweep]
    assert set(names) == set(SWEEP_PARAMS) - {"suppress"}       # ST/AF/SF for p2c and c2c, alpha, layers
    assert dict(sw.sweep)["layers"][-1] == 12 and 0.35 in dict(sw.sweep)["alpha"]
    for d in (row_doei(r, ab.base_doei) for r in ab.rows):
        assert run_key(canonical_doei(d), 0) == run_key(d, 0)
    # the pipeline of both is configs/paper/voc_mctformer_v2_doei.yaml, unchanged
    ref = yaml.safe_load((PAPER / "voc_mctformer_v2_doei.yaml").read_text())
    ref["run"].pop("out_dir")
    for name in ("ablate_voc_mctformer_v2", "sweep_voc_mctformer_v2"):
        this = yaml.safe_load((PAPER / f"{name}.yaml").read_text())
        this.pop("study")
        assert this == ref, name


def test_smoke_study_marks_every_run_and_the_tables(tmp_path, capsys):
    config = _study_config(tmp_path, make_synth(tmp_path), rows=["baseline"], stats_images=0)
    out = tmp_path / "smoke"
    assert cli_main(["ablate", "--config", str(config), "--out", str(out), "--seeds", "1", "--smoke", "1"]) == 0
    for key in ("off-s0",):
        smoke = json.loads((out / "runs" / key / "run" / "smoke.json").read_text())
        assert smoke["smoke"] == 1 and [r["stage"] for r in smoke["stages"]] == ["train-cls", "cam", "eval"]
        assert json.loads((out / "runs" / key / "result.json").read_text())["smoke"] == 1
    md = (out / "ablation.md").read_text()
    assert "**SMOKE RUN** (`run.smoke: 1`)" in md and "| train-cls | cam | eval |" in md
    capsys.readouterr()
    # the same folder as a real (or other-smoke) study: refused before anything runs
    assert cli_main(["ablate", "--config", str(config), "--out", str(out), "--seeds", "1"]) == 2
    assert "(run.smoke/smoke_batch, train-cls, cam, eval differ; train-cls: smoke.smoke was 1, now '<unset>')" in \
        capsys.readouterr().err
    # the synthetic benchmark's study has no smoke mode
    assert cli_main(["ablate", "--out", str(tmp_path / "o"), "--quick", "--smoke", "1"]) == 2
    assert "smoke mode is for a pipeline config" in capsys.readouterr().err


def test_a_voc_table4_study_is_set_beside_the_paper(tmp_path):
    """The ablation's rows against Table 4 (doei.eval.paper_numbers): each row's own paper number."""
    from doei.study.ablation import paper_comparison

    def row(label, on, v):
        return {"label": label, "doei": {"enabled": on}, "best_beta": {"mIoU": {"mean": v, "n": 2}}}

    doc = {"pipeline": {"kind": "voc", "model": "mctformer_v2_deit_small", "score": "Seed", "split": "train",
                        "smoke": None},
           "rows": {"baseline": row("baseline (DOEI off)", False, 60.0), "cpdo": row("CPDO", True, 64.0),
                    "cpdo_ppdo_hfa": row("CPDO + PPDO + HFA", True, 65.0)}}
    rows = paper_comparison(tmp_path, doc)
    assert [(r["paper_this"], r["diff_paper"]) for r in rows] == [(61.7, -1.7), (63.3, 0.7), (65.5, -0.5)]
    assert "| CPDO | train | 64.0 |" in (tmp_path / "paper_comparison.md").read_text()
    assert paper_comparison(tmp_path, {**doc, "pipeline": {**doc["pipeline"], "kind": "synth"}}) is None


def test_under_torchrun_rank0_writes_and_each_run_is_the_same_doei_run(study, tmp_path):
    """Two gloo ranks (forked as torchrun starts them): every run is a DDP ``doei run`` of the same config as
    the single-process study's (DDP vs one process is the pipeline's own contract, tests/test_distributed_*),
    and rank 0 alone writes the study's files."""
    from dist_common import launch_cli

    config, single = study
    out = tmp_path / "ddp"
    launch_cli(2, ["ablate", "--config", str(config), "--out", str(out), "--seeds", "1",
                   "--rows", "baseline,cpdo_ppdo_hfa"])
    doc = json.loads((out / "ablation.json").read_text())
    assert list(doc["rows"]) == ["baseline", "cpdo_ppdo_hfa"] and (out / "ablation.png").is_file()
    log = [json.loads(x) for x in (out / "study_log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log] == ["start", "end", "start", "end"]          # one writer
    for row in ("baseline", "cpdo_ppdo_hfa"):
        key = doc["rows"][row]["run_keys"][0]
        cfg1 = json.loads((single / "runs" / key / "run" / "pipeline_config.json").read_text())
        cfg2 = json.loads((out / "runs" / key / "run" / "pipeline_config.json").read_text())
        for c in (cfg1, cfg2):
            c["run"]["out_dir"] = c["run"]["out_dir"].split("/runs/")[-1]
            c["refine"] = c["seg"] = None                     # paths under the study folder
        assert cfg1 == cfg2
        res = json.loads((out / "runs" / key / "result.json").read_text())
        ev = json.loads((out / "runs" / key / "run" / "eval.json").read_text())["results"]["Seed"]
        assert res["mIoU"] == ev["mIoU"] and res["sweep"] == ev["sweep"]


def test_reproduce_md_smoke_section_is_the_benchmark_output():
    """docs/reproduce.md's Table 4 / Fig. 4 smoke tables are benchmarks/paper_study_smoke.py's output from the
    committed benchmarks/results/paper_study_smoke.json (regenerate: --tables-only --docs docs/reproduce.md)."""
    import importlib.util

    repo = PAPER.parents[1]
    spec = importlib.util.spec_from_file_location("paper_study_smoke", repo / "benchmarks" / "paper_study_smoke.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    doc = json.loads((repo / "benchmarks" / "results" / "paper_study_smoke.json").read_text())
    assert set(doc["verbs"]) == {"ablate", "sweep"} and all(v["rc"] == 0 for v in doc["verbs"].values())
    text = (repo / "docs" / "reproduce.md").read_text()
    section = text.split(mod.BEGIN, 1)[1].split(mod.END, 1)[0].strip()
    assert section == mod.docs_section(doc)
