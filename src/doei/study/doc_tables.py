"""One source of truth for the numbers in the docs (issue #24): tables generated from committed JSON results.

A table in README.md or docs/*.md that comes from result files sits between two markers::

    <!-- table KIND FILE[,FILE...] [key=value ...] -->
    | ... generated ... |
    <!-- /table -->

``FILE`` is a JSON result file committed to the repository (path relative to its root; ``docs/results/`` by
convention, copied there from a study or demo folder with ``--collect``), ``KIND`` says how to render it
(renderers in :mod:`doei.study.doc_render` and :mod:`doei.study.doc_demo`; an option a kind does not read is
refused):

* ``study``: a ``doei ablate`` ``ablation.json``: one line per row (``rows=a,b,...``, default all), the row
  ``vs=NAME`` (default ``baseline``) absolute and every other row as the paired difference to it with wins, in
  the columns ``metrics=...`` (default ``mIoU,FP,FN,leak,context_hit,auc_context``; also ``mAP`` (the
  classifier's), ``object_FN``, ``IoU``, ``area`` (predicted pixels as % of object pixels; no wins: no better
  direction), ``object``, ``context``, ``far``, ``auc_far``). Co-occurrence and threshold-free metrics are of
  the class group ``group=context|rest`` (default context), or of the one a metric names: ``area:rest``; and
  ``beta``, ``wall``, ``blocks`` (best β, wall s per run, DOEI per block: one value per row). ``deltas=mIoU,FP``:
  every row absolute, then one column of paired differences to ``vs`` per metric named; ``mode=fixed``:
  mIoU/FP/FN at the study's fixed β;
* ``sweep``: a ``doei sweep`` ``sweep_<param>.json`` (or a collected ``NAME_sweep.json`` holding several:
  ``param=NAME`` picks one): the baseline and one line per value (seeds, mIoU, FP, FN, Δ mIoU paired to the
  baseline, or to the value ``vs=VALUE``, ± std, wins); ``table=knobs``: one line per parameter of the file;
* ``pretrain``: ``python -m doei.study.pretrain``'s ``pretrain.json``: the trunk check on the corpus's
  held-out split beside the trivial references (``table=wall``: wall seconds per step);
* ``demo``: one or more ``doei demo`` ``metrics.json`` (one per seed): ``table=results|gains|ceilings|cost``;
* ``sharpened``: ``python -m doei.study.sharpened``'s ``sharpened.json`` (baseline, area-matched baseline, DOEI);
* ``bias_curve``: ``python -m doei.study.bias_curve``'s ``bias_curve.json`` (leak against bias).

``python -m doei.study.doc_tables`` rewrites every marked table from its files; ``--check`` changes nothing and
exits 1 naming each table that differs from its files (tests/test_doc_tables.py runs it on the repository, so
a hand-edited number or a stale file fails the suite); ``--strict`` also fails on every markdown table row with
a digit outside a marker (:func:`unmarked_tables`). ``--collect DIR NAME`` copies a folder's result files to
``docs/results/``: ``ablation.json`` → ``NAME.json``, ``sharpened.json`` / ``bias_curve.json`` /
``pretrain.json`` → ``NAME_<kind>.json``, all ``sweep_<param>.json`` → one ``NAME_sweep.json``
(``{"sweeps": {param: ...}}``), a demo's ``metrics.json`` → ``NAME.json``.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from doei.config import read_json
from doei.errors import DoeiError
from doei.study.doc_demo import render_demo
from doei.study.doc_json import Node
from doei.study.doc_render import render_bias_curve, render_pretrain, render_sharpened, render_study, render_sweep
from doei.utils.io import atomic_write_json, atomic_write_text

REPO = Path(__file__).resolve().parents[3]
MARK = re.compile(r"(<!-- table (?P<kind>\S+) (?P<file>\S+)(?P<opts>(?: [^\s=]+=\S+)*) -->\n)(?P<body>.*?)"
                  r"(?P<end><!-- /table -->)", re.S)


@dataclass(frozen=True)
class Kind:
    """A table kind: its renderer (called with one file's :class:`Node`, or with ``multi`` a list of them,
    and the marker's options) and whether a marker may name several comma-separated files."""
    render: Callable
    multi: bool = False


KINDS: dict[str, Kind] = {"study": Kind(render_study), "sweep": Kind(render_sweep), "pretrain": Kind(render_pretrain),
                          "sharpened": Kind(render_sharpened), "bias_curve": Kind(render_bias_curve),
                          "demo": Kind(render_demo, multi=True)}


def _load(root: Path, file: str) -> Node:
    path = root / file
    if not path.is_file():
        raise DoeiError(f"{file}: result file not found (commit it, e.g. with --collect)")
    try:
        return Node(read_json(path, Any), file)
    except DoeiError as e:              # read_json names the full path: name the file as the marker does
        raise DoeiError(str(e).replace(str(path), file)) from None


def _render(m: re.Match, root: Path, where: str) -> str:
    kind, files = m["kind"], m["file"].split(",")
    if kind not in KINDS:
        raise DoeiError(f"{where}: table kind {kind!r}; expected one of {sorted(KINDS)}")
    if len(files) > 1 and not KINDS[kind].multi:
        raise DoeiError(f"{where}: a {kind} table reads one file; the marker names {len(files)}")
    opts = dict(o.split("=", 1) for o in m["opts"].split())
    try:
        docs = [_load(root, f) for f in files]
        return KINDS[kind].render(docs if KINDS[kind].multi else docs[0], opts)
    except DoeiError as e:
        msg = str(e)
        raise DoeiError(f"{where}: {msg}" if msg.startswith(tuple(files)) else f"{where}: {m['file']}: {msg}") from None
    except (KeyError, TypeError, ValueError, IndexError) as e:     # sharpened / bias_curve read the raw dict
        raise DoeiError(f"{where}: {m['file']} is not a {kind} result file ({type(e).__name__}: {e})") from None


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


def unmarked_tables(path: Path) -> list[str]:
    """``"<doc>:<line>"`` of every markdown table row (a line starting with ``|``) that contains a digit and
    sits neither inside a ``<!-- table ... -->`` ... ``<!-- /table -->`` marker nor in a code block: a number
    that no result file backs."""
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path: expected a path, got {type(path).__name__}")
    out, marked, fence = [], False, None
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        s = line.strip()
        if fence is None and s.startswith(("```", "~~~")):
            fence = s[:3]
        elif fence is not None:
            if s.startswith(fence):
                fence = None
        elif s.startswith("<!-- table "):
            marked = True
        elif s.startswith("<!-- /table -->"):
            marked = False
        elif s.startswith("|") and not marked and any(c.isdigit() for c in s):
            out.append(f"{path}:{i}")
    return out


def default_docs(root: Path = REPO) -> list[Path]:
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if p.is_file()]


STRICT_DOCS = ("README.md", "docs/results.md", "docs/demo.md")   # every number in these comes from a file


def collect(folder: Path, name: str, root: Path = REPO) -> list[Path]:
    """Copy a study's or demo's result files to ``docs/results/`` (module docstring); returns the files written."""
    folder = Path(folder)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name or ""):
        raise DoeiError(f"NAME {name!r}: expected letters, digits, '_', '-' or '.' (a file name under docs/results/)")
    plan: dict[str, Any] = {}
    for src, suffix in (("ablation.json", ""), ("metrics.json", ""), ("sharpened.json", "_sharpened"),
                        ("bias_curve.json", "_bias_curve"), ("pretrain.json", "_pretrain")):
        if (folder / src).is_file():
            dest = f"{name}{suffix}.json"
            if dest in plan:
                raise DoeiError(f"{folder}: both ablation.json and metrics.json; collect them under different names")
            plan[dest] = read_json(folder / src, Any)
    sweeps = sorted(folder.glob("sweep_*.json"))
    if sweeps:
        docs = {p: read_json(p, dict) for p in sweeps}
        plan[f"{name}_sweep.json"] = {"sweeps": {Node(d, str(p)).str("param"): d for p, d in docs.items()}}
    if not plan:
        raise DoeiError(f"{folder}: no ablation.json, metrics.json, sweep_*.json, sharpened.json, bias_curve.json "
                        "or pretrain.json to collect")
    out = []
    for dest, doc in plan.items():
        atomic_write_json(root / "docs" / "results" / dest, doc)
        out.append(root / "docs" / "results" / dest)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m doei.study.doc_tables", description=__doc__.split("\n")[0])
    ap.add_argument("docs", nargs="*", type=Path, help="markdown files (default: README.md and docs/*.md)")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table differs from its file")
    ap.add_argument("--strict", action="store_true",
                    help="also exit 1 on a table row with a digit outside a marker (default docs: "
                         + ", ".join(STRICT_DOCS) + ")")
    ap.add_argument("--collect", nargs=2, metavar=("DIR", "NAME"), help="copy a folder's result files to docs/results/")
    a = ap.parse_args(argv)
    try:
        if a.collect:
            for p in collect(Path(a.collect[0]), a.collect[1]):
                print(f"wrote {p}")
            return 0
        missing = [d for d in a.docs if not d.is_file()]
        if missing:
            raise DoeiError(f"{missing[0]}: markdown file not found")
        stale = [s for d in (a.docs or default_docs()) for s in update_doc(d, check=a.check)]
        strict = [REPO / d for d in STRICT_DOCS if (REPO / d).is_file()] if not a.docs else a.docs
        unmarked = [u for d in strict for u in unmarked_tables(d)] if a.strict else []
    except DoeiError as e:
        print(f"error: {e}")
        return 2
    for s in stale:
        print(("differs from its file: " if a.check else "regenerated: ") + s)
    for u in unmarked:
        print(f"number outside a table marker: {u}")
    return 1 if ((stale and a.check) or unmarked) else 0


if __name__ == "__main__":
    raise SystemExit(main())
