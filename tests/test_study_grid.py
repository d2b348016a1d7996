"""The study's run definitions and seed arithmetic (no training)."""
from __future__ import annotations

import json

import pytest

from doei.core.config import DOEIConfig
from doei.errors import DoeiError
from doei.study import grid, table
from doei.study.grid import TABLE4, effective_doei, parse_param, row_doei, run_key, sweep_doei

BASE = {"enabled": True, "ppdo": True, "cpdo": True, "hfa": True, "af_p2c": 0.3}


def test_table4_has_the_seven_rows_with_the_right_flags():
    assert [r.label for r in TABLE4] == ["baseline (DOEI off)", "CPDO", "PPDO", "CPDO + PPDO", "CPDO + HFA",
                                         "PPDO + HFA", "CPDO + PPDO + HFA"]
    want = {"baseline": None, "cpdo": (True, False, False), "ppdo": (False, True, False),
            "cpdo_ppdo": (True, True, False), "cpdo_hfa": (True, False, True), "ppdo_hfa": (False, True, True),
            "cpdo_ppdo_hfa": (True, True, True)}
    for row in TABLE4:
        cfg = DOEIConfig(**row_doei(row, BASE))
        if want[row.name] is None:
            assert not cfg.enabled and not cfg.applies_to(1, 4)
        else:
            assert cfg.enabled and (cfg.cpdo, cfg.ppdo, cfg.hfa) == want[row.name]
            assert cfg.af_p2c == 0.3  # the base setting's knobs are kept
    full = DOEIConfig(**row_doei(TABLE4[-1], BASE))
    assert full.uses_hfa and not DOEIConfig(**row_doei(TABLE4[3], BASE)).uses_hfa


def test_run_keys_merge_settings_that_compute_the_same_network_only():
    rows = {r.name: row_doei(r, BASE) for r in TABLE4}
    keys = {n: run_key(d, 0) for n, d in rows.items()}
    assert keys["cpdo_hfa"] == keys["cpdo"]            # HFA only re-weights PPDO scores
    assert len(set(keys.values())) == 6
    assert keys["baseline"] == "off-s0" and run_key(rows["ppdo"], 1) != keys["ppdo"]
    assert run_key({**rows["ppdo_hfa"], "alpha": 0.0}, 0) == keys["ppdo"]   # alpha 0 switches HFA off exactly
    assert run_key({**rows["ppdo"], "af_c2c": 9.0}, 0) == keys["ppdo"]      # CPDO off: its knobs are inert
    assert run_key({**rows["ppdo"], "af_p2c": 9.0}, 0) != keys["ppdo"]
    assert effective_doei({"enabled": False, "ppdo": True}) == {"enabled": False}


def test_parse_param_and_sweep_points():
    assert parse_param("af_p2c=0.1, 0.3,1") == ("af_p2c", [0.1, 0.3, 1.0])
    assert parse_param("layers=1,2,4") == ("layers", [1, 2, 4])
    assert parse_param("suppress=rest,bottom") == ("suppress", ["rest", "bottom"])
    assert sweep_doei(BASE, "layers", 3)["layers"] == [1, 2, 3]
    d = sweep_doei({"enabled": False}, "sf_p2c", -0.1)
    assert d["enabled"] is True and d["sf_p2c"] == -0.1
    for bad in ("af_p2c", "beta=1,2", "layers=0,1", "suppress=top", "alpha=x", "alpha="):
        with pytest.raises(DoeiError, match="--param"):
            parse_param(bad)
    with pytest.raises(DoeiError, match="alpha"):
        sweep_doei(BASE, "alpha", 2.0)
    with pytest.raises(DoeiError, match="unknown DOEI field"):
        grid.validate_doei({"af": 1}, where="x")


def _run(miou: float, fp: float, fn: float, sweep: list[tuple[float, float]], beta: float = 0.3) -> dict:
    return {"mIoU": miou, "FP": fp, "FN": fn, "beta": beta,
            "sweep": [{"beta": b, "mIoU": m, "FP": 100 - m - 10, "FN": 10.0} for b, m in sweep],
            "block_stats": [], "timing": {"total_wall_s": 10.0}, "cls_mAP": 50.0}


def test_mean_std_paired_difference_and_wins_on_hand_made_numbers():
    assert table.mean_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3}
    assert table.mean_std([4.0]) == {"mean": 4.0, "std": 0.0, "n": 1}
    p = table.paired({0: 12.0, 1: 10.0, 2: 15.0}, {0: 10.0, 1: 11.0, 2: 12.0}, higher_is_better=True)
    assert p["diffs"] == [2.0, -1.0, 3.0] and p["wins"] == 2
    assert p["mean"] == pytest.approx(4 / 3) and p["std"] == pytest.approx(2.0816659994661326)
    q = table.paired({0: 12.0, 1: 10.0, 2: 15.0}, {0: 10.0, 1: 11.0, 2: 12.0}, higher_is_better=False)
    assert q["wins"] == 1
    assert table.paired({0: 1.0, 5: 2.0}, {0: 0.0}, True)["n"] == 1   # only shared seeds are paired


def test_summarize_best_and_fixed_beta():
    base = {0: _run(20, 50, 30, [(0.1, 18), (0.3, 20)]), 1: _run(24, 46, 30, [(0.1, 24), (0.3, 22)])}
    doei = {0: _run(23, 45, 32, [(0.1, 23), (0.3, 21)]), 1: _run(22, 50, 28, [(0.1, 19), (0.3, 22)])}
    bf = table.fixed_beta(list(base.values()))
    assert bf == 0.1                                  # baseline seed means: 21.0 at 0.1, 21.0 at 0.3 -> lowest
    s = table.summarize(doei, base, bf)
    assert s["best_beta"]["mIoU"]["mean"] == 22.5 and s["best_beta"]["FP"]["mean"] == 47.5
    assert s["best_beta"]["mIoU"]["vs_baseline"]["diffs"] == [3, -2] and s["best_beta"]["mIoU"]["vs_baseline"]["wins"] == 1
    assert s["best_beta"]["FN"]["vs_baseline"]["wins"] == 1 and s["best_beta"]["FP"]["vs_baseline"]["wins"] == 1
    assert s["fixed_beta"]["mIoU"]["per_seed"] == {0: 23, 1: 19}
    assert s["fixed_beta"]["mIoU"]["vs_baseline"]["diffs"] == [5, -5]
    assert table.fmt_diff(s["best_beta"]["mIoU"]["vs_baseline"]) == "+0.5 ± 3.5 (1/2)"
    json.dumps(s)  # serialisable
    # the classifier's mAP: {mean, std, n} as before, plus per seed and paired to the baseline (higher wins)
    doei[1]["cls_mAP"] = 47.0
    m = table.summarize(doei, base, bf)["classifier_mAP"]
    assert (m["mean"], m["n"], m["per_seed"]) == (48.5, 2, {0: 50.0, 1: 47.0})
    assert m["vs_baseline"]["diffs"] == [0.0, -3.0] and m["vs_baseline"]["wins"] == 0


def _cooc(per_class: dict) -> dict:
    return {"per_class": {n: {"IoU": i, "object_FN": f, "leak": 0.0, "context_hit": 0.0, "has_context": True}
                          for n, (i, f) in per_class.items()},
            "groups": {"context": {"classes": list(per_class), "IoU": 0.0, "object_FN": 0.0, "leak": 0.0,
                                   "context_hit": 0.0},
                       "rest": {"classes": [], "IoU": None, "object_FN": None, "leak": None, "context_hit": None}}}


def test_area_from_iou_and_object_fn_hand_computed():
    # object 100 px, predicted 200 px, 50 of them on the object: IoU = 50 / 250 = 20 %, object FN = 50 %
    assert table.class_area(20.0, 50.0) == pytest.approx(200.0)
    assert table.class_area(0.0, 100.0) is None and table.class_area(None, 10.0) is None
    # seed 0: a (area 200) and b (IoU 50, FN 0: pred 200 on GT 100 -> 200 %) -> 200; seed 1: a only -> 100
    runs = {0: {"cooccurrence": _cooc({"a": (20.0, 50.0), "b": (50.0, 0.0)})},
            1: {"cooccurrence": _cooc({"a": (100.0, 0.0), "b": (0.0, 100.0)})}}
    base = {0: {"cooccurrence": _cooc({"a": (50.0, 50.0), "b": (50.0, 50.0)})},     # area 50 each
            1: {"cooccurrence": _cooc({"a": (50.0, 50.0), "b": (50.0, 50.0)})}}
    area = table.summarize_cooc(runs, base)["group:context"]["area"]
    assert area["per_seed"] == {0: pytest.approx(200.0), 1: pytest.approx(100.0)}
    assert area["vs_baseline"]["diffs"] == [pytest.approx(150.0), pytest.approx(50.0)]
    assert area["vs_baseline"]["wins"] is None                 # no better direction
    assert table.fmt_diff(area["vs_baseline"]) == "+100.0 ± 70.7"
    assert "area" not in table.summarize_cooc(runs, base)["group:rest"]


def test_block_stats_mean_keeps_missing_parts_missing():
    runs = [{"block_stats": [{"block": 1, "k_p2c": 6, "k_c2c": None, "delta_ratio_patch": 0.1, "delta_ratio_cls": None}]},
            {"block_stats": [{"block": 1, "k_p2c": 8, "k_c2c": None, "delta_ratio_patch": 0.3, "delta_ratio_cls": None}]}]
    (b,) = table.block_stats_mean(runs)
    assert b["k_p2c"] == 7 and b["k_c2c"] is None and b["delta_ratio_patch"] == pytest.approx(0.2)
    assert table.fmt_blocks([b]) == "b1 k 7/–, Δ 20/–%"


def test_select_rows_keeps_table_order_and_requires_the_baseline():
    assert grid.select_rows(None, "x") == TABLE4
    rows = grid.select_rows(["ppdo_hfa", "baseline", "ppdo"], "cfg: study.rows")
    assert [r.name for r in rows] == ["baseline", "ppdo", "ppdo_hfa"]
    with pytest.raises(DoeiError, match=r"cfg: study.rows: unknown row\(s\) \['ppdo\+hfa'\]"):
        grid.select_rows(["baseline", "ppdo+hfa"], "cfg: study.rows")
    with pytest.raises(DoeiError, match="must include 'baseline'"):
        grid.select_rows(["ppdo"], "cfg: study.rows")
    with pytest.raises(DoeiError, match="expected a list of row names"):
        grid.select_rows("baseline", "cfg: study.rows")
