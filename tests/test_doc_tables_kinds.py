"""Issue #24: the sweep, pretrain and demo table kinds of doei.study.doc_tables and --collect, on tiny
hand-made result files whose cells are computed by hand in the comments."""
from __future__ import annotations

import copy
import json

import pytest

from doei.errors import DoeiError
from doei.study.doc_tables import collect, update_doc


def _write(tmp_path, files: dict, marker: str):
    (tmp_path / "docs" / "results").mkdir(parents=True, exist_ok=True)
    for name, doc in files.items():
        (tmp_path / "docs" / "results" / name).write_text(json.dumps(doc))
    md = tmp_path / "docs" / "x.md"
    md.write_text(f"{marker}\nold\n<!-- /table -->\n")
    return md


def _table(tmp_path, files: dict, marker: str) -> list[str]:
    md = _write(tmp_path, files, marker)
    update_doc(md, tmp_path)
    assert update_doc(md, tmp_path, check=True) == []
    return md.read_text().splitlines()[1:-1]


def _ps(a, b):
    return {"per_seed": {"0": a, "1": b}}


def _sweep():
    def s(m, fp, fn):
        return {"best_beta": {"mIoU": _ps(*m), "FP": _ps(*fp), "FN": _ps(*fn)}}

    return {"param": "af_p2c", "values": [0.5, 1.0], "seeds": [0, 1], "base_doei": {"af_p2c": 1.0, "layers": None},
            "baseline": s((20.0, 22.0), (50.0, 52.0), (30.0, 26.0)),
            "points": [{"value": 0.5, "summary": s((23.0, 24.0), (45.0, 47.0), (32.0, 29.0))},
                       {"value": 1.0, "summary": s((19.0, 25.0), (50.0, 50.0), (31.0, 25.0))}]}


def test_sweep_table_hand_computed(tmp_path):
    lines = _table(tmp_path, {"s.json": _sweep()}, "<!-- table sweep docs/results/s.json -->")
    assert lines == ["| af_p2c | seeds | mIoU | FP | FN | Δ mIoU vs baseline |", "|---|---:|---:|---:|---:|---:|",
                     "| baseline (DOEI off) | 2 | 21.0 ± 1.4 | 51.0 ± 1.4 | 28.0 ± 2.8 | – |",
                     # mIoU 23, 24 vs 20, 22: diffs +3, +2
                     "| 0.5 | 2 | 23.5 ± 0.7 | 46.0 ± 1.4 | 30.5 ± 2.1 | +2.5 ± 0.7 (2/2) |",
                     # diffs −1, +3
                     "| 1.0 | 2 | 22.0 ± 4.2 | 50.0 ± 0.0 | 28.0 ± 4.2 | +1.0 ± 2.8 (1/2) |"]
    # paired to another value; a collected file with two sweeps, one picked by param=
    other = {**copy.deepcopy(_sweep()), "param": "layers"}
    lines = _table(tmp_path, {"c.json": {"sweeps": {"af_p2c": _sweep(), "layers": other}}},
                   "<!-- table sweep docs/results/c.json param=af_p2c vs=0.5 -->")
    assert lines[0] == "| af_p2c | seeds | mIoU | FP | FN | Δ mIoU vs af_p2c = 0.5 |"
    assert lines[2].endswith("| -2.5 ± 0.7 (0/2) |") and lines[3].endswith("| – |")
    assert lines[4].endswith("| -1.5 ± 3.5 (1/2) |")                     # −4, +1
    md = _write(tmp_path, {"c.json": {"sweeps": {"af_p2c": _sweep(), "layers": other}}},
                "<!-- table sweep docs/results/c.json -->")
    with pytest.raises(DoeiError, match=r"x.md:1: docs/results/c.json: sweeps \['af_p2c', 'layers'\]: name one"):
        update_doc(md, tmp_path)


def test_sweep_knobs_table_one_line_per_parameter(tmp_path):
    other = {**copy.deepcopy(_sweep()), "param": "layers"}
    other["points"] = other["points"][:1]
    other["points"][0]["value"] = 2
    lines = _table(tmp_path, {"c.json": {"sweeps": {"af_p2c": _sweep(), "layers": other}}},
                   "<!-- table sweep docs/results/c.json table=knobs -->")
    assert lines == ["| knob | values → mIoU, Δ mIoU (wins); baseline 21.0 ± 1.4 |", "|---|---|",
                     # bold: the base setting's value (af_p2c 1.0); layers' base is None (all blocks): no bold
                     "| `af_p2c` | 0.5: 23.5 ± 0.7, +2.5 ± 0.7 (2/2); **1.0: 22.0 ± 4.2, +1.0 ± 2.8 (1/2)** |",
                     "| `layers` | 2: 23.5 ± 0.7, +2.5 ± 0.7 (2/2) |"]
    md = _write(tmp_path, {"s.json": _sweep()}, "<!-- table sweep docs/results/s.json table=knobs param=af_p2c -->")
    with pytest.raises(DoeiError, match=r"table=knobs shows every parameter; drop \['param'\]"):
        update_doc(md, tmp_path)


def test_sweep_file_without_per_seed_values_is_one_line(tmp_path):
    doc = _sweep()
    doc["points"][1]["summary"]["best_beta"]["FP"] = {"mean": 50.0, "std": 0.0, "n": 2}
    md = _write(tmp_path, {"s.json": doc}, "<!-- table sweep docs/results/s.json -->")
    with pytest.raises(DoeiError, match=r"^\S+x.md:1: docs/results/s.json: points\[1\].summary.best_beta.FP: no "
                                        r"per_seed values"):
        update_doc(md, tmp_path)
    doc["points"][1]["summary"]["best_beta"]["FP"] = _ps("50", 50.0)
    md = _write(tmp_path, {"s.json": doc}, "<!-- table sweep docs/results/s.json -->")
    with pytest.raises(DoeiError, match=r"best_beta.FP.per_seed.0: expected a number"):
        update_doc(md, tmp_path)


def _pretrain():
    refs = {"all_background": {"mIoU": 5.147, "FP": 0.735, "FN": 94.118, "beta": 0.05},
            "uniform_cam": {"mIoU": 4.879, "FP": 80.371, "FN": 14.75, "beta": 0.05}}
    return {"corpus": {"n_train": 20000, "n_val": 500}, "classes": [f"c{i}" for i in range(16)], "steps": 3744,
            "classifier": {"val_mAP": 89.639}, "corpus_cams": {"mIoU": 43.318, "FP": 32.232, "FN": 24.449, "beta": 0.45},
            "corpus_references": refs, "wall_s": {"corpus": 0.0, "train": 508.1, "cams_and_trunk": 4.0, "total": 512.0}}


def test_pretrain_table_hand_computed(tmp_path):
    lines = _table(tmp_path, {"p.json": _pretrain()}, "<!-- table pretrain docs/results/p.json -->")
    assert lines[2] == "| pretrained classifier | 16 | 20,000 / 500 | 3,744 | 89.6 | 43.3 | 32.2 | 24.4 | 0.45 | 512 |"
    assert lines[3] == "| all background (reference) | – | – | – | – | 5.1 | 0.7 | 94.1 | 0.05 | – |"
    assert lines[4] == "| uniform CAM (reference) | – | – | – | – | 4.9 | 80.4 | 14.8 | 0.05 | – |"
    lines = _table(tmp_path, {"p.json": _pretrain()}, "<!-- table pretrain docs/results/p.json table=wall -->")
    assert lines == ["| corpus s | training s | CAMs + trunk s | total s |", "|---:|---:|---:|---:|", "| 0 | 508 | 4 | 512 |"]
    bad = _pretrain()
    del bad["corpus_cams"]["FP"]
    md = _write(tmp_path, {"p.json": bad}, "<!-- table pretrain docs/results/p.json -->")
    with pytest.raises(DoeiError, match=r"docs/results/p.json: corpus_cams: missing key 'FP'$"):
        update_doc(md, tmp_path)
    md = _write(tmp_path, {"p.json": _pretrain()}, "<!-- table pretrain docs/results/p.json tabel=wall -->")
    with pytest.raises(DoeiError, match=r"unknown option\(s\) \['tabel'\]"):
        update_doc(md, tmp_path)


def _demo(seed: int, base: tuple, doei: tuple, times: dict | None = None) -> dict:
    """A metrics.json: per run (CAM, Seed, Mask, Seg, Seg+CRF, mAP) mIoU."""
    def run(v):
        return {"mIoU": v[0], "FP": 50.0, "FN": 20.0, "cls_mAP": v[5]}

    def pipe(v):
        return {k: {"mIoU": x, "FP": 40.0, "FN": 30.0} for k, x in zip(("Seed", "Mask", "Seg", "Seg+CRF"), v[1:5])}

    t = times or {"benchmark": (9, 9), "training": (300, 585), "cams": (5, 7), "evaluation": (4, 6),
                  "pipeline_benchmark": (8, 8), "pipeline": (799, 1557), "report": (2, 2), "total": (1127, 2174)}
    return {"baseline": run(base), "doei": run(doei),
            "pipeline": {"baseline": pipe(base), "doei": pipe(doei),
                         "ceilings": {"rw_true_seeds": {"Seed": {"mIoU": 80.0 + seed / 5}, "Mask": {"mIoU": 70.0 + 0.8 * seed}},
                                      "seg_true_masks": {"Seg": {"mIoU": 82.0}, "Seg+CRF": {"mIoU": 92.0}}},
                         "settings": {"px": 128, "pipeline_train": 1000, "overrides": []}},
            "settings": {"family": "mctformer", "quick": False, "n_train": 3000, "n_val": 300, "model": "m",
                         "epochs": 5, "batch_size": 64, "cam_layers": 3, "patch_refine": False, "betas": "0.05:0.95:0.05",
                         "overrides": [], "seed": seed, "train_seed": seed, "jobs": 2},
            "timings": {k: {"wall_s": w, "cpu_s": c} for k, (w, c) in t.items()}}


DEMO = {"d0.json": _demo(0, (28, 28, 30, 27, 31, 78), (32, 31, 33, 30, 34, 66)),
        "d1.json": _demo(1, (30, 29, 32, 26, 29, 74), (33, 30, 32, 28, 30, 60))}
BOTH = "docs/results/d0.json,docs/results/d1.json"


def test_demo_results_gains_ceilings_hand_computed(tmp_path):
    lines = _table(tmp_path, DEMO, f"<!-- table demo {BOTH} -->")
    assert lines == [
        "| run | CAM (val) | Seed | Mask | Seg | Seg+CRF | classifier mAP |", "|---|---:|---:|---:|---:|---:|---:|",
        "| baseline | 29.0 ± 1.4 | 28.5 ± 0.7 | 31.0 ± 1.4 | 26.5 ± 0.7 | 30.0 ± 1.4 | 76.0 ± 2.8 |",
        "| … per seed (0 / 1) | 28.0 / 30.0 | 28.0 / 29.0 | 30.0 / 32.0 | 27.0 / 26.0 | 31.0 / 29.0 | 78.0 / 74.0 |",
        "| + DOEI | 32.5 ± 0.7 | 30.5 ± 0.7 | 32.5 ± 0.7 | 29.0 ± 1.4 | 32.0 ± 2.8 | 63.0 ± 4.2 |",
        "| … per seed (0 / 1) | 32.0 / 33.0 | 31.0 / 30.0 | 33.0 / 32.0 | 30.0 / 28.0 | 34.0 / 30.0 | 66.0 / 60.0 |",
        # paired per file: CAM +4 +3, Seed +3 +1, Mask +3 +0, Seg +3 +2, Seg+CRF +3 +1, mAP −12 −14
        "| DOEI − baseline | +3.5 ± 0.7 (2/2) | +2.0 ± 1.4 (2/2) | +1.5 ± 2.1 (1/2) | +2.5 ± 0.7 (2/2) | +2.0 ± 1.4 (2/2) "
        "| -13.0 ± 1.4 (0/2) |"]
    one = _table(tmp_path, DEMO, "<!-- table demo docs/results/d0.json -->")
    assert one[2] == "| baseline | 28.0 | 28.0 | 30.0 | 27.0 | 31.0 | 78.0 |" and len(one) == 5   # no per-seed lines
    assert one[4] == "| DOEI − baseline | +4.0 | +3.0 | +3.0 | +3.0 | +3.0 | -12.0 |"
    fp = _table(tmp_path, DEMO, f"<!-- table demo {BOTH} metric=FP -->")
    assert fp[0] == "| run | CAM (val) | Seed | Mask | Seg | Seg+CRF |" and fp[-1].startswith("| DOEI − baseline | +0.0 ± 0.0 (0/2) |")
    gains = _table(tmp_path, DEMO, f"<!-- table demo {BOTH} table=gains -->")
    # baseline: Seed→Mask +2 +3, Mask→Seg −3 −6, Seg→CRF +4 +3, CRF−Seed +3 +0, CRF−Mask +1 −3
    assert gains[2] == ("| baseline | +2.5 ± 0.7 (+2.0 / +3.0) | -4.5 ± 2.1 (-3.0 / -6.0) | +3.5 ± 0.7 (+4.0 / +3.0) | "
                        "+1.5 ± 2.1 (+3.0 / +0.0) | -1.0 ± 2.8 (+1.0 / -3.0) |")
    ceil = _table(tmp_path, DEMO, f"<!-- table demo {BOTH} table=ceilings -->")
    assert ceil[0].startswith("| ceiling run (2 seeds) | Seed | Mask | Seg | Seg+CRF |")
    # true seeds 80.0 / 80.2 → 70.0 / 70.8: −10.0, −9.4
    assert ceil[2] == "| true seeds → AffinityNet + random walk | 80.1 ± 0.1 | 70.4 ± 0.6 | – | – | Seed → Mask -9.7 ± 0.4 (-10.0 / -9.4) |"
    assert ceil[3] == "| DeepLab trained on the true masks | – | – | 82.0 ± 0.0 | 92.0 ± 0.0 | Seg → Seg+CRF +10.0 ± 0.0 (+10.0 / +10.0) |"


def test_demo_cost_table(tmp_path):
    slow = {k: (w + 10, c + 20) for k, (w, c) in {"benchmark": (9, 9), "training": (300, 585), "cams": (5, 7),
            "evaluation": (4, 6), "pipeline_benchmark": (8, 8), "pipeline": (799, 1557), "report": (2, 2),
            "total": (1127, 2174)}.items()}
    files = {**DEMO, "d1.json": _demo(1, (30, 29, 32, 26, 29, 74), (33, 30, 32, 28, 30, 60), slow)}
    lines = _table(tmp_path, files, "<!-- table demo docs/results/d0.json table=cost -->")
    assert lines[2] == "| benchmark (3,000 + 300 scenes) | 9 | 9 |"
    assert lines[3] == "| training, baseline and DOEI side by side (5 epochs each) | 300 | 585 |"
    assert lines[6] == "| pipeline benchmark (1,000 + 300 scenes at 128 px) | 8 | 8 |"
    assert lines[-1] == "| **total** | **1,127** | **2,174** |"
    lines = _table(tmp_path, files, f"<!-- table demo {BOTH} table=cost -->")
    assert lines[-1] == "| **total** | **1,132 ± 7** | **2,184 ± 14** |"       # +10 / +20 on one of two


def test_demo_refuses_mixed_settings_duplicates_and_old_timings(tmp_path):
    other = copy.deepcopy(DEMO["d1.json"])
    other["settings"]["n_train"] = 1000
    md = _write(tmp_path, {**DEMO, "d1.json": other}, f"<!-- table demo {BOTH} -->")
    with pytest.raises(DoeiError, match="docs/results/d1.json: settings.n_train is 1000, docs/results/d0.json has 3000"):
        update_doc(md, tmp_path)
    md = _write(tmp_path, DEMO, "<!-- table demo docs/results/d0.json,docs/results/d0.json -->")
    with pytest.raises(DoeiError, match="seed 0 given twice"):
        update_doc(md, tmp_path)
    old = copy.deepcopy(DEMO["d0.json"])
    old["timings"] = {"1/6 synthetic benchmark -> /x": {"wall_s": 9, "cpu_s": 9}, "total": {"wall_s": 9, "cpu_s": 9}}
    md = _write(tmp_path, {"d0.json": old}, "<!-- table demo docs/results/d0.json table=cost -->")
    with pytest.raises(DoeiError, match="d0.json: timings: none of the stage keys"):
        update_doc(md, tmp_path)
    del old["doei"]["cls_mAP"]
    md = _write(tmp_path, {"d0.json": old}, "<!-- table demo docs/results/d0.json -->")
    with pytest.raises(DoeiError, match=r"x.md:1: docs/results/d0.json: doei: missing key 'cls_mAP'$"):
        update_doc(md, tmp_path)
    md = _write(tmp_path, {"s.json": _sweep()}, "<!-- table sweep docs/results/s.json,docs/results/s.json -->")
    with pytest.raises(DoeiError, match="a sweep table reads one file; the marker names 2"):
        update_doc(md, tmp_path)


def test_collect_copies_every_result_file(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    (study / "ablation.json").write_text(json.dumps({"rows": {}}))
    (study / "pretrain.json").write_text(json.dumps(_pretrain()))
    (study / "sweep_af_p2c.json").write_text(json.dumps(_sweep()))
    (study / "sweep_layers.json").write_text(json.dumps({**_sweep(), "param": "layers"}))
    out = collect(study, "s24", root=tmp_path)
    assert sorted(p.name for p in out) == ["s24.json", "s24_pretrain.json", "s24_sweep.json"]
    sweeps = json.loads((tmp_path / "docs" / "results" / "s24_sweep.json").read_text())["sweeps"]
    assert list(sweeps) == ["af_p2c", "layers"] and sweeps["af_p2c"] == _sweep()
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "metrics.json").write_text(json.dumps(DEMO["d0.json"]))
    assert [p.name for p in collect(demo, "demo_seed0", root=tmp_path)] == ["demo_seed0.json"]
    (demo / "ablation.json").write_text("{}")
    with pytest.raises(DoeiError, match="both ablation.json and metrics.json"):
        collect(demo, "x", root=tmp_path)
    with pytest.raises(DoeiError, match="NAME 'a/b'"):
        collect(demo, "a/b", root=tmp_path)
    with pytest.raises(DoeiError, match="nothing|no ablation.json"):
        collect(tmp_path / "docs", "x", root=tmp_path)
