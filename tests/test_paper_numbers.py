"""The paper's numbers (src/doei/eval/paper_numbers.json): well-formed, sourced, the ones the issue names,
the same as docs/reproduce.md and the configs' header comments; the run-vs-paper table."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from doei.errors import DoeiError
from doei.eval.paper_numbers import (comparison_rows, format_comparison, load_paper_numbers, lookup, method_for_model,
                                     reference_markdown, run_comparison, write_comparison)

REPO = Path(__file__).resolve().parents[1]


def test_numbers_are_sourced_and_the_quoted_ones_are_there():
    numbers, doc = load_paper_numbers()
    assert len(numbers) >= 30
    for n in numbers:
        assert n.source in doc["sources"] or re.fullmatch(r"doei:Table [1-4]", n.source), n
    get = lambda *k: lookup(numbers, *k).value  # noqa: E731
    # MCTformer-V2 on VOC: the DOEI authors' re-run (†) vs the published numbers
    assert (get("voc", "mctformer_v2", False, "val", "doei_paper"), get("voc", "mctformer_v2", False, "test", "doei_paper")) \
        == (70.2, 70.1)
    assert lookup(numbers, "voc", "mctformer_v2", False, "val", "doei_paper").note.startswith("†")
    assert (get("voc", "mctformer_v2", False, "val", "published"), get("voc", "mctformer_v2", False, "test", "published")) \
        == (71.9, 71.6)
    assert get("voc", "mctformer_v2", True, "val", "doei_paper") == 71.4
    assert (get("voc", "transcam", False, "val", "published"), get("voc", "transcam", False, "test", "published")) \
        == (69.3, 69.6)
    assert get("coco", "mctformer_v2", False, "val", "published") == 42.0
    # no TS-CAM number is claimed as published, no COCO TS-CAM number at all
    assert not [n for n in numbers if n.method == "tscam" and (n.kind == "published" or n.dataset == "coco")]
    t4 = {n.variant: n.value for n in numbers if n.variant}
    assert t4 == {"baseline": 61.7, "cpdo": 63.3, "ppdo": 63.2, "cpdo_ppdo": 64.3, "cpdo_hfa": 64.6,
                  "ppdo_hfa": 64.9, "cpdo_ppdo_hfa": 65.5}


def test_reproduce_md_is_generated_from_the_data_file():
    text = (REPO / "docs" / "reproduce.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- paper-numbers:begin -->\n(.*?)\n<!-- paper-numbers:end -->", text, flags=re.S)
    assert m, "docs/reproduce.md: the paper-numbers block is missing"
    assert m.group(1) == reference_markdown(), "regenerate with: python -m doei.eval.paper_numbers"


def test_paper_config_headers_agree_with_the_data_file():
    import yaml

    numbers, _ = load_paper_numbers()
    for f in sorted((REPO / "configs" / "paper").glob("*.yaml")):
        if f.name.startswith(("ablate_", "sweep_")):
            continue
        head = f.read_text(encoding="utf-8").splitlines()[1]
        cfg = yaml.safe_load(f.read_text(encoding="utf-8"))
        method = method_for_model(cfg["classifier"]["model"]["name"])
        doei = bool(cfg["classifier"].get("doei", {}).get("enabled", False))
        quoted = {k: float(v) for k, v in re.findall(r"\b(seed|mask|val|test) (\d+\.\d)", head)}
        have = {n.metric: n.value for n in numbers if (n.dataset, n.method, n.doei, n.kind, n.variant)
                == (cfg["data"]["kind"], method, doei, "doei_paper", None)}
        assert quoted == have, f.name


def test_comparison_rows_differences_and_split_notes():
    rows = comparison_rows([{"row": "Seed", "metric": "seed", "value": 60.0, "split": "train_aug"},
                            {"row": "Seg", "metric": None, "value": 68.0, "split": "val"},
                            {"row": "Seg+CRF", "metric": "val", "value": 72.0, "split": "val"}],
                           dataset="voc", method="mctformer_v2", doei=True)
    seed, seg, crf = rows
    assert (seed["paper_this"], seed["paper_baseline"], seed["diff_paper"]) == (65.5, 61.7, -5.5)
    assert "not comparable" in seed["note"] and seed["published_baseline"] is None
    assert seg["paper_this"] is None and seg["diff_paper"] is None
    assert (crf["paper_this"], crf["published_baseline"], crf["diff_paper"], crf["diff_published"]) == (71.4, 71.9, 0.6, 0.1)
    table = format_comparison(rows, "t")
    assert "| Seg+CRF | val | 72.0 | 70.2 | 71.4 | 71.9 | +0.6 | +0.1 |" in table
    abl = comparison_rows([{"row": "CPDO", "metric": "seed", "value": 62.0, "split": "train"}], dataset="voc",
                          method="mctformer_v2", doei=True, variant="cpdo")
    assert (abl[0]["paper_this"], abl[0]["paper_baseline"], abl[0]["paper_doei"]) == (63.3, 61.7, 65.5)
    with pytest.raises(ValueError, match="method"):
        comparison_rows([], dataset="voc", method="deeplab", doei=False)
    with pytest.raises(ValueError, match="'row' and 'value'"):
        comparison_rows([{"x": 1}], dataset="voc", method="tscam", doei=False)


def test_run_comparison_of_a_finished_run(tmp_path):
    from doei.pipeline_config import load_pipeline_config

    cfg = load_pipeline_config(REPO / "configs" / "paper" / "voc_mctformer_v2.yaml",
                               overrides=[f"run.out_dir={tmp_path / 'run'}"])
    eval_out = {"table": [{"stage": "Seed", "split": "train", "mIoU": 60.25}, {"stage": "Mask", "split": "train", "mIoU": 70.0},
                          {"stage": "Seg+CRF", "split": "val", "mIoU": 71.0}]}
    rows, header = run_comparison(cfg, eval_out)
    assert header["method"] == "mctformer_v2" and header["doei"] is False
    assert [r["diff_paper"] for r in rows] == [-1.45, 0.9, 0.8] and rows[2]["diff_published"] == -0.9
    (tmp_path / "run").mkdir()
    md = write_comparison(tmp_path / "run", rows, header)
    assert "| Mask | train | 70.0 | 69.1 | 72.2 | – | +0.9 | – |" in md.read_text()
    js = json.loads((tmp_path / "run" / "paper_comparison.json").read_text())
    assert js["rows"] == rows and "mctformer" in js["sources"]
    # an ablation row's run (CPDO only) is compared with its own Table 4 number
    cfg.classifier["doei"] = {"enabled": True, "ppdo": False, "hfa": False}
    rows, header = run_comparison(cfg, eval_out)
    assert header["variant"] == "cpdo" and rows[0]["paper_this"] == 63.3 and rows[0]["diff_paper"] == -3.05
    assert rows[2]["paper_this"] is None                     # Table 4 has Seed numbers only
    cfg.classifier["model"]["name"] = "my_net"
    assert run_comparison(cfg, eval_out) is None


def test_a_broken_data_file_is_one_line(tmp_path):
    _, doc = load_paper_numbers()
    doc["numbers"][3]["metric"] = "miou"
    bad = tmp_path / "n.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(DoeiError, match=r"numbers\[3\]: metric = 'miou', expected one of") as e:
        load_paper_numbers(bad)
    assert "\n" not in str(e.value)
    bad.write_text("{")
    with pytest.raises(DoeiError, match="cannot read the paper numbers"):
        load_paper_numbers(bad)


def test_doei_run_prints_and_writes_the_comparison(tmp_path):
    """What run_pipeline does after its stages on rank 0 (doei.pipeline.runner._paper_comparison)."""
    from doei.pipeline.runner import _paper_comparison
    from doei.pipeline_config import load_pipeline_config

    out = tmp_path / "run"
    out.mkdir()
    cfg = load_pipeline_config(REPO / "configs" / "paper" / "coco_transcam_doei.yaml", overrides=[f"run.out_dir={out}"])
    lines: list[str] = []
    _paper_comparison(cfg, {"table": [{"stage": "Seg+CRF", "split": "val2014", "mIoU": 44.0}]}, lines.append)
    assert "| Seg+CRF | val2014 | 44.0 | 43.5 | 44.7 | – | -0.7 | – |" in lines[0]
    assert (out / "paper_comparison.md").is_file() and (out / "paper_comparison.json").is_file()
    cfg.data.kind = "synth"
    lines.clear()
    _paper_comparison(cfg, {"table": []}, lines.append)
    assert lines == [] and not (tmp_path / "x").exists()
