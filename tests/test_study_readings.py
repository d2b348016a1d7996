"""Issue #15's study machinery: reading rows, run keys, the co-occurrence variant, context metrics in
``doei ablate`` (quick)."""
from __future__ import annotations

import json
from pathlib import Path

from doei.cli import main as cli_main
from doei.study.grid import READING_ROWS, row_doei, run_key, select_rows

REPO = Path(__file__).resolve().parents[1]


def test_run_keys_of_todays_readings_are_unchanged_and_readings_get_their_own():
    # the keys of settings at today's readings are those of before the readings existed (finished runs reused)
    assert run_key({"enabled": False}, 0) == "off-s0"
    assert run_key({"enabled": True}, 0) == "d74054d34f5a-s0"
    assert run_key({"enabled": True, "heads": "mean", "rgb": "normalised"}, 0) == "d74054d34f5a-s0"
    keys = {run_key(row_doei(r, {}), 0) for r in READING_ROWS}
    assert len(keys) == len(READING_ROWS) and "d74054d34f5a-s0" not in keys
    # HFA on the scores cannot act without PPDO; on the attention it can
    cpdo = {"enabled": True, "ppdo": False}
    assert run_key({**cpdo, "hfa": True}, 0) == run_key({**cpdo, "hfa": False}, 0)
    assert run_key({**cpdo, "hfa": True, "hfa_target": "attention"}, 0) != run_key({**cpdo, "hfa": False}, 0)
    assert [r.name for r in select_rows(["read_heads", "baseline"], "t")] == ["baseline", "read_heads"]


def test_ablate_quick_reports_cooccurrence_for_a_bias_variant(tmp_path):
    cfg = (REPO / "configs" / "cooccurrence" / "bias_050.yaml").read_text()
    assert "bias: 0.5" in cfg
    (tmp_path / "c.yaml").write_text(cfg.replace("rows: [baseline, cpdo_ppdo_hfa]", "rows: [baseline, read_heads]"))
    out = tmp_path / "o"
    assert cli_main(["ablate", "--config", str(tmp_path / "c.yaml"), "--out", str(out), "--quick", "--seeds", "1"]) == 0
    doc = json.loads((out / "ablation.json").read_text())
    assert doc["benchmark"]["bias"] == 0.5 and "bias050" in doc["benchmark"]["root"]
    meta = json.loads((Path(doc["benchmark"]["root"]) / "meta.json").read_text())
    assert meta["params"]["p_context"] == 0.5 and meta["params"]["p_companion"] == 0.5
    row = doc["rows"]["read_heads"]
    assert set(row["cooccurrence"]) >= {"group:context", "group:rest"}
    assert "object_FN" in row["cooccurrence"]["group:rest"]
    md = (out / "ablation.md").read_text()
    assert "Co-occurrence and under-activation" in md and "selection per head" in md
    assert set(row["localisation"]["group:context"]) >= {"object", "context", "far", "auc_context"}   # issue #24
    assert "Threshold-free localisation" in md
    # the leak-against-bias summary reads the study folder
    from doei.study.bias_curve import main as curve_main

    assert curve_main([str(out), "--out", str(tmp_path / "bc"), "--row", "read_heads"]) == 0
    recs = json.loads((tmp_path / "bc" / "bias_curve.json").read_text())
    assert recs[0]["bias"] == 0.5 and "leak" in recs[0]["baseline"]
    assert (tmp_path / "bc" / "bias_curve.png").stat().st_size > 1000
    assert "| 0.50 | 1 |" in (tmp_path / "bc" / "bias_curve.md").read_text()


def test_demo_report_shows_cooccurrence_beside_miou():
    from doei.demo.report import _cooccurrence_section

    grp = {"context": {"classes": ["boat"], "leak": 20.0, "context_hit": 30.0, "object_FN": 40.0, "IoU": 25.0},
           "rest": {"classes": ["star"], "leak": None, "context_hit": None, "object_FN": 60.0, "IoU": 15.0}}
    m = {"baseline": {"cooccurrence": {"groups": grp}}, "doei": {"cooccurrence": {"groups": grp}}}
    text = "\n".join(_cooccurrence_section(m))
    assert "| baseline | 20.0 | 30.0 | 40.0 | 25.0 | 60.0 |" in text and "| DOEI |" in text
    assert _cooccurrence_section({"baseline": {}, "doei": {}}) == []
