"""Issue #24: doc tables generated from committed JSON results (doei.study.doc_tables); the repository's docs
must agree with their files."""
from __future__ import annotations

import json

import pytest

from doei.errors import DoeiError
from doei.study.doc_tables import REPO, STRICT_DOCS, default_docs, main, unmarked_tables, update_doc


def _row(label, miou, leak, auc):
    ps = lambda v: {"per_seed": {"0": v[0], "1": v[1]}}  # noqa: E731
    return {"label": label, "seeds": [0, 1], "best_beta": {"mIoU": ps(miou), "FP": ps((50.0, 52.0)), "FN": ps((20.0, 20.0))},
            "cooccurrence": {"group:context": {"leak": ps(leak)}},
            "localisation": {"group:context": {"auc_context": ps(auc)}}}


def _study(tmp_path):
    doc = {"rows": {"baseline": _row("baseline (DOEI off)", (20.0, 22.0), (10.0, 12.0), (70.0, 70.0)),
                    "cpdo_ppdo_hfa": _row("CPDO + PPDO + HFA", (24.0, 25.0), (15.0, 15.0), (71.0, 69.0))}}
    (tmp_path / "docs" / "results").mkdir(parents=True)
    (tmp_path / "docs" / "results" / "s.json").write_text(json.dumps(doc))
    md = tmp_path / "docs" / "x.md"
    md.write_text("text\n<!-- table study docs/results/s.json metrics=mIoU,leak,auc_context -->\nold\n<!-- /table -->\nend\n")
    return md


def test_study_table_hand_computed_and_check(tmp_path):
    md = _study(tmp_path)
    assert update_doc(md, tmp_path, check=True) == [f"{md}:2 study docs/results/s.json"]
    assert "old" in md.read_text()                                       # --check changes nothing
    assert update_doc(md, tmp_path) and update_doc(md, tmp_path, check=True) == []
    text = md.read_text()
    # baseline absolute: mIoU 21.0 ± 1.4, leak 11.0 ± 1.4, AUC 70.0 ± 0.0; DOEI paired: +4, +3 -> +3.5 ± 0.7 (2/2);
    # leak +5, +3 -> +4.0 ± 1.4 (0/2: lower wins); AUC +1, -1 -> +0.0 ± 1.4 (1/2)
    assert "| **baseline (DOEI off)** (absolute) | 2 | 21.0 ± 1.4 | 11.0 ± 1.4 | 70.0 ± 0.0 |" in text
    assert "| CPDO + PPDO + HFA | 2 | +3.5 ± 0.7 (2/2) | +4.0 ± 1.4 (0/2) | +0.0 ± 1.4 (1/2) |" in text
    assert text.startswith("text\n<!-- table") and text.endswith("<!-- /table -->\nend\n")
    md.write_text(text.replace("+3.5 ± 0.7", "+3.6 ± 0.7"))                # a hand-edited number fails the check
    assert update_doc(md, tmp_path, check=True)
    vs = md.read_text().replace("metrics=mIoU,leak,auc_context", "vs=cpdo_ppdo_hfa metrics=mIoU")
    md.write_text(vs)
    update_doc(md, tmp_path)
    assert "| baseline (DOEI off) | 2 | -3.5 ± 0.7 (0/2) |" in md.read_text()


def test_errors_are_one_line(tmp_path, capsys):
    md = _study(tmp_path)
    md.write_text(md.read_text().replace("s.json", "missing.json"))
    from doei.errors import DoeiError

    with pytest.raises(DoeiError, match="missing.json: result file not found"):
        update_doc(md, tmp_path)
    md.write_text("<!-- table study docs/results/s.json rows=nope -->\n<!-- /table -->\n")
    with pytest.raises(DoeiError, match="row 'nope' is not in the file"):
        update_doc(md, tmp_path)
    assert main([str(md), "--check"]) == 2 and "error:" in capsys.readouterr().out


def test_bias_curve_table_renders():
    from doei.study.doc_json import Node
    from doei.study.doc_render import render_bias_curve

    d = {"mean": 1.0, "std": 0.5, "n": 2}
    diff = {"vs_baseline": {"mean": 1.0, "std": 0.5, "n": 2, "wins": 1}}
    rec = {"bias": 0.5, "seeds": [0, 1], "row": "cpdo_ppdo_hfa", "label": "DOEI", "baseline": {"leak": d},
           "cpdo_ppdo_hfa": {"leak": {**d, **diff}, "mIoU": diff}}
    assert render_bias_curve(Node([rec], "b.json"), {}).startswith("| bias |")


def test_study_mAP_and_area_of_a_named_group(tmp_path):
    md = _study(tmp_path)
    doc = json.loads((tmp_path / "docs" / "results" / "s.json").read_text())
    for name, maps, area in (("baseline", (30.0, 34.0), (200.0, 180.0)), ("cpdo_ppdo_hfa", (20.0, 22.0), (150.0, 170.0))):
        doc["rows"][name]["classifier_mAP"] = {"mean": 0.0, "std": 0.0, "n": 2, "per_seed": {"0": maps[0], "1": maps[1]}}
        doc["rows"][name]["cooccurrence"]["group:rest"] = {"area": {"per_seed": {"0": area[0], "1": area[1]}}}
    (tmp_path / "docs" / "results" / "s.json").write_text(json.dumps(doc))
    md.write_text("<!-- table study docs/results/s.json metrics=mAP,area:rest,leak:rest -->\n<!-- /table -->\n")
    update_doc(md, tmp_path)
    text = md.read_text()
    assert "| row | seeds | mAP | area rest | leak rest |" in text
    # mAP: −10, −12 (lower: no win); area: −50, −10 (no better direction: no wins); no leak in group rest
    assert "| **baseline (DOEI off)** (absolute) | 2 | 32.0 ± 2.8 | 190.0 ± 14.1 | – |" in text
    assert "| CPDO + PPDO + HFA | 2 | -11.0 ± 1.4 (0/2) | -30.0 ± 28.3 | – |" in text
    # a file written before per-seed mAP: one line naming the file and the key, and how to regenerate it
    del doc["rows"]["baseline"]["classifier_mAP"]["per_seed"]
    (tmp_path / "docs" / "results" / "s.json").write_text(json.dumps(doc))
    with pytest.raises(DoeiError, match=r"x.md:1: docs/results/s.json: rows.baseline.classifier_mAP: no per_seed "
                                        r"values .*doei ablate --report-only"):
        update_doc(md, tmp_path)
    for bad, msg in (("metrics=mAP:far", "class group 'far'"), ("metrics=nope", "metric 'nope'"),
                     ("rows=baseline colour=red", r"unknown option\(s\) \['colour'\]")):
        md.write_text(f"<!-- table study docs/results/s.json {bad} -->\n<!-- /table -->\n")
        with pytest.raises(DoeiError, match=msg):
            update_doc(md, tmp_path)
    (tmp_path / "docs" / "results" / "s.json").write_text("{not json")
    with pytest.raises(DoeiError, match=r"x.md:1: docs/results/s.json: not valid JSON"):
        update_doc(md, tmp_path)


def test_study_every_row_absolute_with_delta_columns_row_values_and_fixed_beta(tmp_path):
    md = _study(tmp_path)
    doc = json.loads((tmp_path / "docs" / "results" / "s.json").read_text())
    base, full = doc["rows"]["baseline"], doc["rows"]["cpdo_ppdo_hfa"]
    base["best_beta"]["beta"], full["best_beta"]["beta"] = {"mean": 0.3, "std": 0.05, "n": 2}, {"mean": 0.25, "std": 0.0, "n": 2}
    base["wall_s"], full["wall_s"] = {"mean": 12.4, "std": 1.0, "n": 2}, {"mean": float("nan"), "std": 0.0, "n": 2}
    base["block_stats"] = []
    full["block_stats"] = [{"block": 1, "k_p2c": 3.0, "k_c2c": None, "delta_ratio_patch": 0.11, "delta_ratio_cls": None}]
    base["fixed_beta"] = {"mIoU": {"per_seed": {"0": 19.0, "1": 21.0}}}
    full["fixed_beta"] = {"mIoU": {"per_seed": {"0": 22.0, "1": 25.0}}}
    (tmp_path / "docs" / "results" / "s.json").write_text(json.dumps(doc))
    md.write_text("<!-- table study docs/results/s.json metrics=mIoU,FP,beta,wall,blocks deltas=mIoU,FP -->\n"
                  "<!-- /table -->\n<!-- table study docs/results/s.json metrics=mIoU mode=fixed -->\n<!-- /table -->\n")
    update_doc(md, tmp_path)
    lines = md.read_text().splitlines()
    assert lines[1:5] == [
        "| row | seeds | mIoU | FP | best β | wall s per run | DOEI per block | Δ mIoU (wins) | Δ FP (wins) |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
        "| **baseline (DOEI off)** | 2 | 21.0 ± 1.4 | 51.0 ± 1.4 | 0.30 ± 0.05 | 12 ± 1 | – | – | – |",
        # mIoU +4, +3; FP 0, 0 (no win); wall NaN (a run without timing): –
        "| CPDO + PPDO + HFA | 2 | 24.5 ± 0.7 | 51.0 ± 1.4 | 0.25 ± 0.00 | – | b1 k 3/–, Δ 11/–% | +3.5 ± 0.7 (2/2) "
        "| +0.0 ± 0.0 (0/2) |"]
    assert lines[9:11] == ["| **baseline (DOEI off)** (absolute) | 2 | 20.0 ± 1.4 |",
                           "| CPDO + PPDO + HFA | 2 | +3.5 ± 0.7 (2/2) |"]          # fixed β: +3, +4
    full["fixed_beta"] = None
    (tmp_path / "docs" / "results" / "s.json").write_text(json.dumps(doc))
    with pytest.raises(DoeiError, match=r"s.json: rows.cpdo_ppdo_hfa: no fixed_beta scores"):
        update_doc(md, tmp_path)
    md.write_text("<!-- table study docs/results/s.json deltas=beta -->\n<!-- /table -->\n")
    with pytest.raises(DoeiError, match="have no paired difference"):
        update_doc(md, tmp_path)


def test_unmarked_number_bearing_rows_are_found_and_strict_fails(tmp_path, capsys):
    md = _study(tmp_path)
    md.write_text(md.read_text() + "\n| a | b |\n|---|---|\n| x | 1.5 |\n\n```\n| 1 | in code |\n```\n"
                  "<!-- table study docs/results/s.json -->\n| 2 |\n<!-- /table -->\n")
    update_doc(md, tmp_path)
    line = md.read_text().splitlines().index("| x | 1.5 |") + 1
    assert unmarked_tables(md) == [f"{md}:{line}"]       # the header and rule have no digit; code is not a table
    with pytest.raises(TypeError, match="path"):
        unmarked_tables(3)
    plain = tmp_path / "plain.md"                          # no markers: the CLI reads no result file
    plain.write_text("| n |\n|---|\n| 3 |\n")
    assert main([str(plain), "--check"]) == 0
    assert main([str(plain), "--check", "--strict"]) == 1
    assert f"number outside a table marker: {plain}:3" in capsys.readouterr().out
    assert main([str(tmp_path / "nope.md"), "--check"]) == 2
    assert capsys.readouterr().out == f"error: {tmp_path / 'nope.md'}: markdown file not found\n"


def test_strict_flag_on_the_repository(capsys):
    unmarked = [u for d in STRICT_DOCS for u in unmarked_tables(REPO / d)]
    assert main(["--check", "--strict"]) == (1 if unmarked else 0)
    out = capsys.readouterr().out
    assert all(f"number outside a table marker: {u}" in out for u in unmarked)


def test_every_number_in_the_strict_docs_comes_from_a_result_file():
    """README.md, docs/results.md and docs/demo.md: every table row with a digit sits inside a marker
    (and the markers agree with their files, the test below)."""
    unmarked = [u for d in STRICT_DOCS for u in unmarked_tables(REPO / d)]
    assert not unmarked, f"{len(unmarked)} table rows with numbers outside a marker, first {unmarked[:5]}"


def test_repository_docs_agree_with_their_result_files():
    stale = [s for d in default_docs() for s in update_doc(d, check=True)]
    assert not stale, f"regenerate with python -m doei.study.doc_tables: {stale}"
