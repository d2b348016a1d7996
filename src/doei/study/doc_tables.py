"""One source of truth for the numbers in the docs (issue #24): tables generated from committed JSON results.

A table in README.md or docs/*.md that comes from a result file sits between two markers::

    <!-- table KIND FILE [key=value ...] -->
    | ... generated ... |
    <!-- /table -->

``FILE`` is a JSON result file committed to the repository (path relative to its root; ``docs/results/`` by
convention, copied there from a study folder with ``--collect``), ``KIND`` says how to render it:

* ``study``: a ``doei ablate`` ``ablation.json``: one line per row (``rows=a,b,...``, default all), the row
  ``vs=NAME`` (default ``baseline``) absolute and every other row as the paired difference to it with wins, in
  the columns ``metrics=...`` (default ``mIoU,FP,FN,leak,context_hit,auc_context``; also ``object_FN``,
  ``IoU``, ``object``, ``context``, ``far``, ``auc_far``: the co-occurrence and threshold-free measures of the
  class group ``group=context|rest``, default context);
* ``sharpened``: ``python -m doei.study.sharpened``'s ``sharpened.json`` (baseline, area-matched baseline, DOEI);
* ``bias_curve``: ``python -m doei.study.bias_curve``'s ``bias_curve.json`` (leak against bias).

``python -m doei.study.doc_tables`` rewrites every marked table from its file; ``--check`` changes nothing and
exits 1 naming each table that differs from its file (tests/test_doc_tables.py runs it on the repository, so
a hand-edited number or a stale file fails the suite). ``--collect STUDY_DIR NAME`` copies a study folder's
``ablation.json`` (and ``sharpened.json`` / ``bias_curve.json`` when present) to ``docs/results/NAME*.json``.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Callable, Mapping

from doei.errors import DoeiError
from doei.study.table import fmt_diff, fmt_ms, mean_std, paired
from doei.utils.io import atomic_write_json, atomic_write_text

REPO = Path(__file__).resolve().parents[3]
MARK = re.compile(r"(<!-- table (?P<kind>\S+) (?P<file>\S+)(?P<opts>(?: [^\s=]+=\S+)*) -->\n)(?P<body>.*?)(?P<end><!-- /table -->)",
                  re.S)
LABELS = {"mIoU": "mIoU", "FP": "FP", "FN": "FN", "leak": "leak", "context_hit": "ctx hit", "object_FN": "obj FN",
          "IoU": "IoU", "object": "CAM obj", "context": "CAM ctx", "far": "CAM far", "auc_context": "AUC obj-ctx",
          "auc_far": "AUC obj-far"}
HIGHER = {"mIoU": True, "FP": False, "FN": False, "leak": False, "context_hit": False, "object_FN": False,
          "IoU": True, "object": True, "context": False, "far": False, "auc_context": True, "auc_far": True}


def _per_seed(row: Mapping, metric: str, group: str) -> dict | None:
    """The per-seed values of ``metric`` in one ablation.json row (None when the row has none)."""
    if metric in ("mIoU", "FP", "FN"):
        rec = (row.get("best_beta") or {}).get(metric)
    elif metric in ("leak", "context_hit", "object_FN", "IoU"):
        rec = (row.get("cooccurrence") or {}).get(f"group:{group}", {}).get(metric)
    else:
        rec = (row.get("localisation") or {}).get(f"group:{group}", {}).get(metric)
    return None if not rec else {str(k): float(v) for k, v in rec["per_seed"].items()}


def render_study(doc: Mapping, opts: Mapping[str, str]) -> str:
    rows = doc["rows"]
    names = opts["rows"].split(",") if "rows" in opts else list(rows)
    ref = opts.get("vs", "baseline")
    metrics = opts.get("metrics", "mIoU,FP,FN,leak,context_hit,auc_context").split(",")
    group = opts.get("group", "context")
    for n in [*names, ref]:
        if n not in rows:
            raise DoeiError(f"row {n!r} is not in the file (it has {sorted(rows)})")
    bad = [m for m in metrics if m not in LABELS]
    if bad:
        raise DoeiError(f"metrics {bad}: expected some of {sorted(LABELS)}")
    lines = ["| row | seeds | " + " | ".join(LABELS[m] for m in metrics) + " |",
             "|---|---:|" + "---:|" * len(metrics)]
    for n in names:
        r = rows[n]
        cells = []
        for m in metrics:
            v, base = _per_seed(r, m, group), _per_seed(rows[ref], m, group)
            if v is None:
                cells.append("–")
            elif n == ref:
                cells.append(fmt_ms(mean_std(v.values())))
            else:
                cells.append(fmt_diff(paired(v, base or {}, HIGHER[m])) if base else "–")
        label = f"**{r['label']}** (absolute)" if n == ref else r["label"]
        lines.append(f"| {label} | {len(r.get('seeds') or [])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_sharpened(doc: Mapping, opts: Mapping[str, str]) -> str:
    from doei.study.sharpened import render

    text = render(doc)
    start = text.index("| metric |")
    return text[start:text.index("\n\n", start)] + "\n"


def render_bias_curve(doc, opts: Mapping[str, str]) -> str:
    from doei.study.bias_curve import render

    text = render(doc)
    start = text.index("| bias |")
    return text[start:].rstrip("\n") + "\n"


RENDERERS: dict[str, Callable[[Mapping, Mapping[str, str]], str]] = {
    "study": render_study, "sharpened": render_sharpened, "bias_curve": render_bias_curve}


def _render(m: re.Match, root: Path, where: str) -> str:
    kind, file = m["kind"], m["file"]
    if kind not in RENDERERS:
        raise DoeiError(f"{where}: table kind {kind!r}; expected one of {sorted(RENDERERS)}")
    path = root / file
    if not path.is_file():
        raise DoeiError(f"{where}: {file}: result file not found (commit it, e.g. with --collect)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DoeiError(f"{where}: {file}: not JSON ({e})") from None
    opts = dict(o.split("=", 1) for o in m["opts"].split())
    try:
        return RENDERERS[kind](doc, opts)
    except (KeyError, TypeError, ValueError) as e:
        raise DoeiError(f"{where}: {file} is not a {kind} result file ({type(e).__name__}: {e})") from None
    except DoeiError as e:
        raise DoeiError(f"{where}: {file}: {e}") from None


def update_doc(path: Path, root: Path = REPO, check: bool = False) -> list[str]:
    """Regenerate the marked tables of ``path``; returns ``"<doc>:<line> KIND FILE"`` of each table that
    differed (and, unless ``check``, rewrites the doc atomically when any did)."""
    text = Path(path).read_text(encoding="utf-8")
    stale: list[str] = []

    def sub(m: re.Match) -> str:
        line = text.count("\n", 0, m.start()) + 1
        where = f"{path}:{line}"
        body = _render(m, root, where)
        if body != m["body"]:
            stale.append(f"{where} {m['kind']} {m['file']}")
        return m.group(1) + body + m["end"]

    new = MARK.sub(sub, text)
    if stale and not check:
        atomic_write_text(path, new)
    return stale


def default_docs(root: Path = REPO) -> list[Path]:
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if p.is_file()]


def collect(study: Path, name: str, root: Path = REPO) -> list[Path]:
    """Copy a study folder's result files to ``docs/results/<name>[_sharpened|_bias_curve].json``."""
    study = Path(study)
    out = []
    for src, suffix in (("ablation.json", ""), ("sharpened.json", "_sharpened"), ("bias_curve.json", "_bias_curve")):
        if (study / src).is_file():
            dest = root / "docs" / "results" / f"{name}{suffix}.json"
            atomic_write_json(dest, json.loads((study / src).read_text()))
            out.append(dest)
    if not out:
        raise DoeiError(f"{study}: no ablation.json, sharpened.json or bias_curve.json to collect")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m doei.study.doc_tables", description=__doc__.split("\n")[0])
    ap.add_argument("docs", nargs="*", type=Path, help="markdown files (default: README.md and docs/*.md)")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table differs from its file")
    ap.add_argument("--collect", nargs=2, metavar=("STUDY_DIR", "NAME"), help="copy a study's result files to docs/results/")
    a = ap.parse_args(argv)
    try:
        if a.collect:
            for p in collect(Path(a.collect[0]), a.collect[1]):
                print(f"wrote {p}")
            return 0
        stale = [s for d in (a.docs or default_docs()) for s in update_doc(d, check=a.check)]
    except DoeiError as e:
        print(f"error: {e}")
        return 2
    for s in stale:
        print(("differs from its file: " if a.check else "regenerated: ") + s)
    return 1 if (stale and a.check) else 0


if __name__ == "__main__":
    raise SystemExit(main())
