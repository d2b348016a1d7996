"""The paper's numbers beside a run: the DOEI paper's Tables 1-4 and the baselines' published numbers.

One committed data file, ``paper_numbers.json`` (beside this module), holds every number with its
source; nothing else in the package states a paper number. Each entry: ``dataset`` (voc / coco),
``method`` (mctformer_v2 / tscam / transcam), ``doei`` (bool), ``metric`` (seed / mask on VOC train,
val / test of the DeepLab with multi-scale + CRF inference), ``value`` (mIoU %), ``kind``
(``doei_paper``: printed in the DOEI paper — for the baselines partly the DOEI authors' re-runs, see
``note``; ``published``: the baseline's own paper), ``source`` (a key of ``sources`` or
``doei:Table N``), optional ``variant`` (Table 4's rows, named as :data:`doei.study.grid.TABLE4`) and
``note``.

* :func:`comparison_rows` — a run's (or an ablation's) rows beside the paper's numbers, with the
  differences; :func:`format_comparison` prints them, :func:`write_comparison` writes
  ``paper_comparison.json`` / ``.md``; :func:`run_comparison` does it for a finished ``doei run``.
* :func:`reference_markdown` — the table of docs/reproduce.md (``python -m doei.eval.paper_numbers``),
  checked against the doc by tests/test_paper_numbers.py.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from doei.errors import DoeiError
from doei.utils.io import atomic_write_json, atomic_write_text

DATA = Path(__file__).with_name("paper_numbers.json")
METHODS = ("mctformer_v2", "tscam", "transcam")
METRICS = ("seed", "mask", "val", "test")
KINDS = ("doei_paper", "published")
# the split each metric is scored on in the papers (the Seed/Mask rows: VOC train, 1,464 images)
PROTOCOL_SPLIT = {("voc", "seed"): "train", ("voc", "mask"): "train", ("voc", "val"): "val",
                  ("voc", "test"): "test", ("coco", "val"): "val2014"}
# doei run's eval rows -> the paper's metric (the paper's segmentation numbers use multi-scale + CRF)
RUN_ROW_METRIC = {"Seed": "seed", "Mask": "mask", "Seg": None, "Seg+CRF": "val"}


@dataclass(frozen=True)
class PaperNumber:
    dataset: str
    method: str
    doei: bool
    metric: str
    value: float
    kind: str
    source: str
    variant: str | None = None
    note: str | None = None


def load_paper_numbers(path: str | Path | None = None) -> tuple[list[PaperNumber], dict]:
    """``(numbers, document)`` of the data file (default :data:`DATA`), every entry checked; a one-line
    DoeiError names the entry and field that is wrong."""
    p = Path(path) if path is not None else DATA
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DoeiError(f"{p}: cannot read the paper numbers ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict) or doc.get("format") != "doei-paper-numbers-v1":
        raise DoeiError(f"{p}: expected a JSON object with format 'doei-paper-numbers-v1'")
    sources = doc.get("sources")
    if not isinstance(sources, dict) or not isinstance(doc.get("numbers"), list):
        raise DoeiError(f"{p}: expected 'sources' (object) and 'numbers' (list)")
    out = []
    for i, e in enumerate(doc["numbers"]):
        where = f"{p}: numbers[{i}]"
        if not isinstance(e, dict):
            raise DoeiError(f"{where}: expected an object, found {type(e).__name__}")
        unknown = set(e) - {f for f in PaperNumber.__dataclass_fields__}
        if unknown:
            raise DoeiError(f"{where}: unknown field(s) {sorted(unknown)}")
        checks = [("dataset", e.get("dataset") in ("voc", "coco"), "voc or coco"),
                  ("method", e.get("method") in METHODS, f"one of {METHODS}"),
                  ("doei", isinstance(e.get("doei"), bool), "true or false"),
                  ("metric", e.get("metric") in METRICS, f"one of {METRICS}"),
                  ("value", isinstance(e.get("value"), (int, float)) and not isinstance(e.get("value"), bool)
                   and 0 <= e["value"] <= 100, "an mIoU in [0, 100]"),
                  ("kind", e.get("kind") in KINDS, f"one of {KINDS}"),
                  ("source", isinstance(e.get("source"), str) and (e["source"] in sources or
                                                                    e["source"].startswith("doei:Table ")),
                   "a key of 'sources' or 'doei:Table N'")]
        for field, ok, expected in checks:
            if not ok:
                raise DoeiError(f"{where}: {field} = {e.get(field)!r}, expected {expected}")
        out.append(PaperNumber(**{k: e.get(k) for k in PaperNumber.__dataclass_fields__}))
    keys = [(n.dataset, n.method, n.doei, n.metric, n.kind, n.variant) for n in out]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup is not None:
        raise DoeiError(f"{p}: two numbers for {dup}")
    return out, doc


def lookup(numbers: Sequence[PaperNumber], dataset: str, method: str, doei: bool, metric: str, kind: str,
           variant: str | None = None) -> PaperNumber | None:
    """The one number for these keys (``None`` when no source gives it)."""
    for n in numbers:
        if (n.dataset, n.method, n.doei, n.metric, n.kind, n.variant) == (dataset, method, doei, metric, kind, variant):
            return n
    return None


def method_for_model(name: str | None) -> str | None:
    """The paper's method of a registered classifier name (``mctformer_v2_*``, ``tscam_*``, ``transcam_*``)."""
    if not isinstance(name, str):
        return None
    for m in METHODS:
        if name.startswith(m):
            return m
    return None


def doei_variant(doei: dict | None) -> str | None:
    """The Table 4 row name of a config's ``doei`` section (``cpdo``, ``ppdo_hfa``, ...; ``None`` for DOEI off
    and for the full setting, whose numbers are the +DOEI rows); parts default on as in DOEIConfig."""
    d = doei or {}
    if not d.get("enabled", False):
        return None
    on = [k for k in ("cpdo", "ppdo", "hfa") if d.get(k, True)]
    return None if len(on) == 3 else "_".join(on) or "none"


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 2)


def comparison_rows(measured: Sequence[dict], *, dataset: str, method: str, doei: bool,
                    variant: str | None = None, numbers: Sequence[PaperNumber] | None = None) -> list[dict]:
    """Each measured row beside the paper's numbers.

    ``measured``: dicts with ``row`` (a name, e.g. ``Seed`` or an ablation row), ``metric`` (seed / mask
    / val / test, or ``None`` for a row the papers do not report), ``value`` (mIoU %, or ``None``) and
    optional ``split`` and ``note``. ``variant``: a Table 4 row name (the ablation; ``seed`` only).
    Returns dicts with the DOEI paper's numbers for the baseline and +DOEI rows of ``method``, the
    baseline's published number, and ``diff_paper`` (run − the DOEI paper's number of this config) and
    ``diff_published`` (run − the published baseline); a ``note`` says when the split is not the paper's.
    """
    if dataset not in ("voc", "coco") or method not in METHODS or not isinstance(doei, bool):
        raise ValueError(f"comparison_rows: dataset {dataset!r} / method {method!r} / doei {doei!r}: expected "
                         f"voc|coco, one of {METHODS}, a bool")
    if numbers is None:
        numbers = load_paper_numbers()[0]
    rows = []
    for m in measured:
        if not isinstance(m, dict) or "row" not in m or "value" not in m:
            raise ValueError(f"comparison_rows: measured rows need 'row' and 'value', got {m!r}")
        metric, value = m.get("metric"), m["value"]
        get = lambda d, kind, v=None: (lookup(numbers, dataset, method, d, metric, kind, v)  # noqa: E731
                                       if metric else None)
        this = get(doei, "doei_paper", variant)
        base, with_doei = get(False, "doei_paper"), get(True, "doei_paper")
        if variant is not None:
            base, with_doei = get(False, "doei_paper", "baseline"), get(True, "doei_paper", "cpdo_ppdo_hfa")
        pub = get(False, "published")
        notes = [m["note"]] if m.get("note") else []
        want = PROTOCOL_SPLIT.get((dataset, metric)) if metric else None
        if want and m.get("split") and m["split"] != want:
            notes.append(f"split {m['split']} (paper: {want}): not comparable")
        rows.append({"row": m["row"], "split": m.get("split"), "metric": metric, "run": value,
                     "paper_this": this.value if this else None,
                     "paper_baseline": base.value if base else None, "paper_doei": with_doei.value if with_doei else None,
                     "published_baseline": pub.value if pub else None,
                     "diff_paper": _diff(value, this.value if this else None),
                     "diff_published": _diff(value, pub.value if pub else None),
                     "sources": sorted({n.source for n in (this, base, with_doei, pub) if n is not None}),
                     "note": "; ".join(notes)})
    return rows


def _fmt(v: Any, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:+.1f}" if signed else f"{v:.1f}"


def format_comparison(rows: Sequence[dict], title: str = "") -> str:
    """A markdown table of :func:`comparison_rows` (prints well in a terminal too)."""
    head = ("| row | split | this run | paper: baseline | paper: +DOEI | published baseline | "
            "run − paper (this config) | run − published | note |")
    lines = ([f"{title}", ""] if title else []) + [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['row']} | {r.get('split') or '–'} | {_fmt(r['run'])} | {_fmt(r['paper_baseline'])} | "
                     f"{_fmt(r['paper_doei'])} | {_fmt(r['published_baseline'])} | {_fmt(r['diff_paper'], True)} | "
                     f"{_fmt(r['diff_published'], True)} | {r.get('note') or ''} |")
    return "\n".join(lines)


def write_comparison(out_dir: str | Path, rows: Sequence[dict], header: dict) -> Path:
    """``<out_dir>/paper_comparison.json`` (header + rows) and ``.md`` (the table), atomically; the .md path."""
    out = Path(out_dir)
    _, doc = load_paper_numbers()
    atomic_write_json(out / "paper_comparison.json", {**header, "rows": list(rows), "sources": doc["sources"]})
    md = out / "paper_comparison.md"
    atomic_write_text(md, format_comparison(rows, header.get("title", "")) + "\n\nSources: " + "; ".join(
        f"{k}: {v['cite']}" for k, v in doc["sources"].items()) + "\n")
    return md


def run_comparison(cfg: Any, eval_out: dict) -> tuple[list[dict], dict] | None:
    """The rows of a finished ``doei run`` (its ``eval.json`` content) beside the paper; ``None`` when
    the run's dataset or classifier is not one of the paper's (a note to print instead is the caller's)."""
    dataset = getattr(cfg.data, "kind", None)
    model = (cfg.classifier.get("model") or {}).get("name") if isinstance(cfg.classifier, dict) else None
    method = method_for_model(model)
    if dataset not in ("voc", "coco") or method is None or not isinstance(eval_out, dict):
        return None
    doei = bool((cfg.classifier.get("doei") or {}).get("enabled", False))
    variant = doei_variant(cfg.classifier.get("doei"))        # a Table 4 row (ablation runs): its own number
    smoke = getattr(cfg.run, "smoke", None)
    measured = [{"row": r["stage"], "metric": RUN_ROW_METRIC.get(r["stage"]), "value": r.get("mIoU"),
                 "split": r.get("split"), "note": "smoke run: not a result" if smoke is not None else ""}
                for r in eval_out.get("table", [])]
    rows = comparison_rows(measured, dataset=dataset, method=method, doei=doei, variant=variant)
    what = f"+ DOEI ({variant})" if variant else ("+ DOEI" if doei else "(baseline)")
    header = {"title": f"{cfg.run.out_dir}: {dataset.upper()} {method} {what} beside the papers (mIoU %)",
              "dataset": dataset, "method": method, "doei": doei, "variant": variant, "smoke": smoke}
    return rows, header


def reference_markdown(numbers: Sequence[PaperNumber] | None = None, doc: dict | None = None) -> str:
    """docs/reproduce.md's table: every config's numbers in the DOEI paper and the published baselines."""
    if numbers is None:
        numbers, doc = load_paper_numbers()
    names = (doc or {}).get("methods", {})
    lines = ["| dataset | method | DOEI | Seed | Mask | Val | Test | kind | source |", "|" + "---|" * 9]
    for ds in ("voc", "coco"):
        for m in METHODS:
            for doei, kind in ((False, "published"), (False, "doei_paper"), (True, "doei_paper")):
                cells = [lookup(numbers, ds, m, doei, k, kind) for k in METRICS]
                if not any(cells):
                    continue
                marks = sorted({c.note.split(" ", 1)[0] for c in cells if c and c.note})
                srcs = sorted({c.source for c in cells if c})
                lines.append(f"| {ds.upper()} | {names.get(m, m)} | {'yes' if doei else 'no'} | "
                             + " | ".join(_fmt(c.value) + (c.note.split(' ', 1)[0] if c and c.note else "")
                                          if c else "–" for c in cells)
                             + f" | {'published' if kind == 'published' else 'DOEI paper'}"
                             + (f" ({', '.join(marks)})" if marks else "") + f" | {', '.join(srcs)} |")
    notes = sorted({n.note for n in numbers if n.note and n.variant is None and n.note[0] in "†*"})
    lines += ["", "Marks:", *(f"- `{t[0]}` {t[2:]}." for t in notes), "", "Sources:"]
    lines += [f"- `{k}`: {v['cite']}" + (f" — checked: {v['checked']}" if v.get("checked") else "")
              for k, v in (doc or {}).get("sources", {}).items()]
    lines.append("- `doei:Table N`: Table N of the DOEI paper (copy in `../shared/paper/doei-paper.md`)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Print docs/reproduce.md's table of the paper numbers.")
    p.parse_args(argv)
    print(reference_markdown())
    return 0


__all__ = ["PaperNumber", "load_paper_numbers", "lookup", "method_for_model", "doei_variant", "comparison_rows", "format_comparison",
           "write_comparison", "run_comparison", "reference_markdown", "DATA"]

if __name__ == "__main__":
    raise SystemExit(main())
