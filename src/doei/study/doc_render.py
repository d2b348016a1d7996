"""The table kinds of :mod:`doei.study.doc_tables` for study results: ``study`` (``doei ablate``'s
ablation.json), ``sweep`` (``doei sweep``'s sweep_<param>.json, or several collected in one file),
``pretrain`` (``python -m doei.study.pretrain``'s pretrain.json), ``sharpened`` and ``bias_curve``.

Each renderer takes the file as a :class:`~doei.study.doc_json.Node` and the marker's options, and returns
the markdown table (ending in a newline). Cells: a seed mean ± sample std (``21.0 ± 1.4``; one seed: ``21.0``),
a paired difference ± std with wins/seeds (``+3.5 ± 0.7 (2/2)``; a metric with no better direction, area, has
no wins part), ``–`` where the file has no value.
"""
from __future__ import annotations

from typing import Mapping

from doei.errors import DoeiError
from doei.study.doc_json import Node
from doei.study.table import fmt_blocks, fmt_diff, fmt_ms, mean_std, paired

LABELS = {"mIoU": "mIoU", "FP": "FP", "FN": "FN", "mAP": "mAP", "leak": "leak", "context_hit": "ctx hit",
          "object_FN": "obj FN", "IoU": "IoU", "area": "area", "object": "CAM obj", "context": "CAM ctx",
          "far": "CAM far", "auc_context": "AUC obj-ctx", "auc_far": "AUC obj-far"}
# a win is higher (True) or lower (False) than the reference; area (predicted / object pixels) has no direction
HIGHER = {"mIoU": True, "FP": False, "FN": False, "mAP": True, "leak": False, "context_hit": False,
          "object_FN": False, "IoU": True, "area": None, "object": True, "context": False, "far": False,
          "auc_context": True, "auc_far": True}
COOC = ("leak", "context_hit", "object_FN", "IoU", "area")
GROUPS = {"context": "ctx", "rest": "rest"}


def check_opts(opts: Mapping[str, str], allowed: tuple[str, ...], kind: str) -> None:
    """Refuse a marker option the kind does not read (a typo would otherwise be ignored)."""
    bad = sorted(set(opts) - set(allowed))
    if bad:
        raise DoeiError(f"{kind} table: unknown option(s) {bad}; expected some of {list(allowed)}")


# columns of one value per row (no per-seed values, no difference): a row summary's seed mean ± std
ROW_VALUES = {"beta": "best β", "wall": "wall s per run", "blocks": "DOEI per block"}


def parse_metrics(spec: str, default_group: str) -> list[tuple[str, str, bool]]:
    """``metrics=mIoU,object_FN:rest,...`` → ``[(metric, group, group given)]``; a ``:GROUP`` suffix
    (context|rest) picks the class group of a co-occurrence / localisation metric."""
    out = []
    for item in spec.split(","):
        m, _, g = item.partition(":")
        if m not in LABELS and m not in ROW_VALUES:
            raise DoeiError(f"metric {m!r}: expected one of {sorted(LABELS) + sorted(ROW_VALUES)}")
        if g and (g not in GROUPS or m in ROW_VALUES):
            raise DoeiError(f"metric {item!r}: class group {g!r}; expected one of {sorted(GROUPS)} (and a metric "
                            "of a class group)")
        out.append((m, g or default_group, bool(g)))
    return out


def _record(row: Node, metric: str, group: str, mode: str) -> Node | None:
    """The summary record (``{mean, std, n, per_seed, vs_baseline}``) of ``metric`` in one ablation row."""
    if metric in ("mIoU", "FP", "FN"):
        if row.get(mode) is None:
            raise DoeiError(f"{row.where}: no {mode} scores (rows without a β sweep have best_beta only)")
        return row[mode].get(metric)
    if metric == "mAP":
        return row.get("classifier_mAP")
    place = (row.get("cooccurrence") if metric in COOC else row.get("localisation"))
    place = place.get(f"group:{group}") if place is not None else None
    return place.get(metric) if place is not None else None


def per_seed(row: Node, metric: str, group: str, mode: str = "best_beta") -> dict[str, float] | None:
    """The per-seed values of ``metric`` in one ablation.json row (None when the row has none); ``mode``:
    mIoU/FP/FN at each run's best β (``best_beta``) or at the study's fixed β (``fixed_beta``)."""
    rec = _record(row, metric, group, mode)
    return None if rec is None or not rec.value else rec.per_seed()


def _row_value(row: Node, metric: str) -> str:
    """A ROW_VALUES cell: best β (2 digits) or wall seconds (seed mean ± std), or the DOEI per-block statistics."""
    if metric == "blocks":
        return fmt_blocks([{k: s[k].value for k in ("block", "k_p2c", "k_c2c", "delta_ratio_patch", "delta_ratio_cls")}
                           for s in row["block_stats"].list()])
    rec = row["best_beta"]["beta"] if metric == "beta" else row["wall_s"]
    mean = rec["mean"].value
    if rec.int("n") == 0 or not isinstance(mean, (int, float)) or mean != mean:     # none, or NaN
        return "–"
    return fmt_ms({"mean": rec.num("mean"), "std": rec.num("std"), "n": rec.int("n")}, 2 if metric == "beta" else 0)


def _head(m: str, g: str, given: bool) -> str:
    return ROW_VALUES.get(m) or LABELS[m] + (f" {GROUPS[g]}" if given else "")


def render_study(doc: Node, opts: Mapping[str, str]) -> str:
    """``study``: one line per row (``rows=a,b``, default all) in the columns ``metrics=`` (default
    ``mIoU,FP,FN,leak,context_hit,auc_context``), each ``METRIC[:GROUP]`` (group default ``group=``, context),
    or one of ``beta``, ``wall``, ``blocks`` (a value per row). Without ``deltas=``: the row ``vs=NAME`` (default
    baseline) absolute, the others as paired differences to it; with ``deltas=mIoU,FP,...``: every row absolute,
    then a column of paired differences to ``vs`` per metric named. ``mode=fixed``: mIoU/FP/FN at the study's
    fixed β (default: each run's best β)."""
    check_opts(opts, ("rows", "vs", "metrics", "group", "deltas", "mode"), "study")
    rows = doc["rows"]
    names = opts["rows"].split(",") if "rows" in opts else rows.keys()
    ref = opts.get("vs", "baseline")
    group = opts.get("group", "context")
    if group not in GROUPS:
        raise DoeiError(f"group={group}: expected one of {sorted(GROUPS)}")
    mode = {"best": "best_beta", "fixed": "fixed_beta"}.get(opts.get("mode", "best"))
    if mode is None:
        raise DoeiError(f"mode={opts['mode']}: expected best or fixed")
    metrics = parse_metrics(opts.get("metrics", "mIoU,FP,FN,leak,context_hit,auc_context"), group)
    deltas = parse_metrics(opts["deltas"], group) if "deltas" in opts else []
    if any(m in ROW_VALUES for m, _, _ in deltas):
        raise DoeiError(f"deltas={opts['deltas']}: {sorted(ROW_VALUES)} have no paired difference")
    for n in [*names, ref]:
        if n not in rows:
            raise DoeiError(f"{doc.where}: row {n!r} is not in the file (it has {sorted(rows.keys())})")
    heads = [_head(*m) for m in metrics]
    heads += [f"Δ {_head(*d)}" + ("" if HIGHER[d[0]] is None else " (wins)") for d in deltas]
    lines = ["| row | seeds | " + " | ".join(heads) + " |",
             "|---|---:|" + "".join("---|" if m == "blocks" else "---:|" for m, _, _ in metrics) + "---:|" * len(deltas)]

    def diff(r: Node, m: str, g: str) -> str:
        v, base = per_seed(r, m, g, mode), per_seed(rows[ref], m, g, mode)
        return fmt_diff(paired(v, base, HIGHER[m])) if v and base else "–"

    for n in names:
        r = rows[n]
        cells = []
        for m, g, _ in metrics:
            if m in ROW_VALUES:
                cells.append(_row_value(r, m))
                continue
            v = per_seed(r, m, g, mode)
            if v is None:
                cells.append("–")
            elif n == ref or deltas:
                cells.append(fmt_ms(mean_std(v.values())))
            else:
                cells.append(diff(r, m, g))
        cells += ["–" if n == ref else diff(r, m, g) for m, g, _ in deltas]
        label = r.str("label")
        label = f"**{label}**" + ("" if deltas else " (absolute)") if n == ref else label
        lines.append(f"| {label} | {len(r['seeds'].list())} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _sweep_doc(doc: Node, opts: Mapping[str, str]) -> Node:
    """One parameter's sweep: the file itself (a sweep_<param>.json) or, in a collected file
    (``{"sweeps": {param: doc}}``), the one ``param=`` names (optional when it holds one)."""
    if "param" in doc:
        if "param" in opts and opts["param"] != doc.str("param"):
            raise DoeiError(f"{doc.where}: param={opts['param']}: the file sweeps {doc.str('param')!r}")
        return doc
    sweeps = doc["sweeps"]
    if "param" not in opts:
        if len(sweeps.keys()) != 1:
            raise DoeiError(f"{doc.where}: sweeps {sweeps.keys()}: name one with param=NAME")
        return sweeps[sweeps.keys()[0]]
    if opts["param"] not in sweeps:
        raise DoeiError(f"{doc.where}: param={opts['param']}: not swept in the file (it has {sweeps.keys()})")
    return sweeps[opts["param"]]


def _fmt_value(v) -> str:
    return str(v).replace("|", "/")


def render_knobs(doc: Node) -> str:
    """``sweep`` ``table=knobs``: one line per swept parameter of the file, each value's mIoU (seed mean ±
    std) and Δ mIoU paired to the baseline (± std, wins); bold: the value of the study's base setting."""
    sweeps = [doc] if "param" in doc else [d for _, d in doc["sweeps"].items()]
    base = sweeps[0]["baseline"]["best_beta"]["mIoU"].per_seed()
    lines = [f"| knob | values → mIoU, Δ mIoU (wins); baseline {fmt_ms(mean_std(base.values()))} |", "|---|---|"]
    for d in sweeps:
        name, cells = d.str("param"), []
        default = d["base_doei"].value.get(name) if isinstance(d["base_doei"].value, dict) else None
        for p in d["points"].list():
            v = p["summary"]["best_beta"]["mIoU"].per_seed()
            cell = f"{_fmt_value(p['value'].value)}: {fmt_ms(mean_std(v.values()))}, {fmt_diff(paired(v, base, True))}"
            cells.append(f"**{cell}**" if p["value"].value == default else cell)
        lines.append(f"| `{name}` | " + "; ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_sweep(doc: Node, opts: Mapping[str, str]) -> str:
    """``sweep``: the baseline (absolute) and one line per value of ``param=`` (seeds, mIoU, FP, FN at each
    run's best β, seed mean ± std) with Δ mIoU paired to the baseline, or to the value ``vs=VALUE`` (± std,
    wins); ``table=knobs``: every parameter of the file on one line each (:func:`render_knobs`)."""
    check_opts(opts, ("param", "vs", "table"), "sweep")
    if opts.get("table", "values") not in ("values", "knobs"):
        raise DoeiError(f"sweep table: table={opts['table']}; expected values or knobs")
    if opts.get("table") == "knobs":
        if set(opts) - {"table"}:
            raise DoeiError(f"sweep table: table=knobs shows every parameter; drop {sorted(set(opts) - {'table'})}")
        return render_knobs(doc)
    d = _sweep_doc(doc, opts)
    name = d.str("param")
    points = d["points"].list()
    base = d["baseline"]["best_beta"]
    ref_label = "baseline"
    ref = base["mIoU"].per_seed()
    if "vs" in opts:
        hits = [p for p in points if _fmt_value(p["value"].value) == opts["vs"]]
        if not hits:
            raise DoeiError(f"{d.where}: vs={opts['vs']}: no such value of {name} "
                            f"(it has {[_fmt_value(p['value'].value) for p in points]})")
        ref, ref_label = hits[0]["summary"]["best_beta"]["mIoU"].per_seed(), f"{name} = {opts['vs']}"
    lines = [f"| {name} | seeds | mIoU | FP | FN | Δ mIoU vs {ref_label} |", "|---|---:|---:|---:|---:|---:|"]

    def cells(s: Node) -> str:
        return " | ".join(fmt_ms(mean_std(s[m].per_seed().values())) for m in ("mIoU", "FP", "FN"))

    lines.append(f"| baseline (DOEI off) | {len(base['mIoU'].per_seed())} | {cells(base)} | "
                 + ("–" if "vs" not in opts else fmt_diff(paired(base["mIoU"].per_seed(), ref, True))) + " |")
    for p in points:
        s = p["summary"]["best_beta"]
        v = s["mIoU"].per_seed()
        is_ref = "vs" in opts and _fmt_value(p["value"].value) == opts["vs"]
        diff = "–" if is_ref else fmt_diff(paired(v, ref, True))
        lines.append(f"| {_fmt_value(p['value'].value)} | {len(v)} | {cells(s)} | {diff} |")
    return "\n".join(lines) + "\n"


def _f1(x: float) -> str:
    return f"{x:.1f}"


def render_pretrain(doc: Node, opts: Mapping[str, str]) -> str:
    """``pretrain``: the trunk check on the corpus's held-out split: the pretrained classifier's CAMs (mIoU,
    FP, FN at the best β) beside the trivial references scored the same way, with the corpus size, the
    optimiser steps, the classifier's mAP and the wall time; ``table=wall`` instead: wall seconds per step."""
    check_opts(opts, ("table",), "pretrain")
    table = opts.get("table", "check")
    wall = doc["wall_s"]
    if table == "wall":
        parts = (("corpus", "corpus"), ("train", "training"), ("cams_and_trunk", "CAMs + trunk"), ("total", "total"))
        return ("| " + " | ".join(f"{label} s" for _, label in parts) + " |\n|" + "---:|" * len(parts) + "\n| "
                + " | ".join(f"{wall.num(k):,.0f}" for k, _ in parts) + " |\n")
    if table != "check":
        raise DoeiError(f"pretrain table: table={table}; expected check or wall")
    corpus, cams, refs = doc["corpus"], doc["corpus_cams"], doc["corpus_references"]
    n_cls = len(doc["classes"].list())
    lines = ["| CAMs on the corpus's held-out split | classes | images (train / held-out) | steps | classifier mAP "
             "| mIoU | FP | FN | best β | wall s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def scores(r: Node) -> str:
        return f"{_f1(r.num('mIoU'))} | {_f1(r.num('FP'))} | {_f1(r.num('FN'))} | {r.num('beta'):.2f}"

    lines.append(f"| pretrained classifier | {n_cls} | {corpus.int('n_train'):,} / {corpus.int('n_val'):,} | "
                 f"{doc.int('steps'):,} | {_f1(doc['classifier'].num('val_mAP'))} | {scores(cams)} | "
                 f"{wall.num('total'):,.0f} |")
    for key, label in (("all_background", "all background (reference)"), ("uniform_cam", "uniform CAM (reference)")):
        lines.append(f"| {label} | – | – | – | – | {scores(refs[key])} | – |")
    return "\n".join(lines) + "\n"


def render_sharpened(doc: Node, opts: Mapping[str, str]) -> str:
    """``sharpened``: the metric table of ``python -m doei.study.sharpened``'s report."""
    from doei.study.sharpened import render

    check_opts(opts, (), "sharpened")
    text = render(doc.value)
    start = text.index("| metric |")
    return text[start:text.index("\n\n", start)] + "\n"


def render_bias_curve(doc: Node, opts: Mapping[str, str]) -> str:
    """``bias_curve``: the table of ``python -m doei.study.bias_curve``'s report."""
    from doei.study.bias_curve import render

    check_opts(opts, (), "bias_curve")
    text = render(doc.value)
    start = text.index("| bias |")
    return text[start:].rstrip("\n") + "\n"
