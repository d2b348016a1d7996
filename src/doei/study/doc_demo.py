"""The ``demo`` table kind of :mod:`doei.study.doc_tables`: tables of one or more ``doei demo`` runs, from
their ``metrics.json`` (one file per benchmark seed, e.g. ``docs/results/demo_seed0.json,...``).

``table=`` picks the table:

* ``results`` (default): mIoU (``metric=FP|FN`` for those) of the held-out CAMs (best β) and of the
  pipeline rows Seed, Mask, Seg, Seg+CRF that every file has, and the classifier's mAP (mIoU only), for
  the baseline and + DOEI: mean ± sample std over the files and a line of per-seed values (file order),
  then DOEI − baseline paired per file ± std (wins/files: higher mIoU / mAP, lower FP / FN);
* ``gains``: what each later stage added per run (its output − its input), mean ± std (per seed);
* ``ceilings``: the ceiling runs (``doei demo --ceilings``), mean ± std, and what their stage adds;
* ``cost``: wall and CPU seconds per stage (metrics.json ``timings``), mean ± std over the files.

With one file every cell is that run's value and there is no per-seed line. The files must come from
the same demo settings (model, sizes, epochs, CAM read-out, pipeline); two files of the same seeds are refused.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from doei.demo.catalog import TIMED_STAGES
from doei.errors import DoeiError
from doei.study.doc_json import Node
from doei.study.doc_render import check_opts
from doei.study.table import fmt_diff, fmt_ms, mean_std, paired

PIPELINE_ROWS = ("Seed", "Mask", "Seg", "Seg+CRF")
SAME = ("family", "quick", "n_train", "n_val", "model", "epochs", "batch_size", "cam_layers", "patch_refine",
        "betas", "overrides")
SAME_PIPELINE = ("px", "pipeline_train", "overrides")
GAINS = (("Seed", "Mask", "AffinityNet + random walk (Seed → Mask)"), ("Mask", "Seg", "DeepLab (Mask → Seg)"),
         ("Seg", "Seg+CRF", "DenseCRF (Seg → Seg+CRF)"), ("Seed", "Seg+CRF", "after the CAMs (Seg+CRF − Seed)"),
         ("Mask", "Seg+CRF", "Seg+CRF − Mask"))
CEILINGS = (("rw_true_seeds", "true seeds → AffinityNet + random walk", "Seed", "Mask"),
            ("seg_true_masks", "DeepLab trained on the true masks", "Seg", "Seg+CRF"))
RUN_LABELS = (("baseline", "baseline"), ("doei", "+ DOEI"))


def _seed_label(doc: Node) -> str:
    st = doc["settings"]
    seed, train = st.int("seed"), st.int("train_seed")
    return str(seed) if seed == train else f"{seed} (training seed {train})"


def check_same_settings(docs: Sequence[Node]) -> list[str]:
    """Refuse files of different demo settings or the same seeds twice; returns the seed labels."""
    first = docs[0]
    for d in docs[1:]:
        for key in SAME:
            if d["settings"][key].value != first["settings"][key].value:
                raise DoeiError(f"{d.where}: settings.{key} is {d['settings'][key].value!r}, "
                                f"{first.where} has {first['settings'][key].value!r}: one table, one demo setting")
        p, q = d.get("pipeline"), first.get("pipeline")
        if (p is None) != (q is None):
            raise DoeiError(f"{d.where}: {'no ' if p is None else ''}pipeline, unlike {first.where}")
        for key in SAME_PIPELINE if p is not None else ():
            if p["settings"][key].value != q["settings"][key].value:
                raise DoeiError(f"{d.where}: pipeline.settings.{key} is {p['settings'][key].value!r}, "
                                f"{first.where} has {q['settings'][key].value!r}")
    labels = [_seed_label(d) for d in docs]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise DoeiError(f"{docs[0].where}: seed {dup[0]} given twice")
    return labels


def _stats(values: list[float], sign: bool = False) -> str:
    """Mean ± sample std (one value: the value), signed with ``sign``."""
    ms = mean_std(values)
    if sign:
        return f"{ms['mean']:+.1f}" + (f" ± {ms['std']:.1f}" if ms["n"] > 1 else "")
    return fmt_ms(ms)


def _per_seed(values: list[float], sign: bool = False) -> str:
    return " / ".join(f"{v:+.1f}" if sign else f"{v:.1f}" for v in values)


def _value(doc: Node, run: str, col: str, metric: str) -> float:
    if col == "CAM":
        return doc[run].num(metric)
    if col == "mAP":
        return doc[run].num("cls_mAP")
    return doc["pipeline"][run][col].num(metric)


def _pipeline_cols(docs: Sequence[Node]) -> list[str]:
    if any(d.get("pipeline") is None for d in docs):
        return []
    return [k for k in PIPELINE_ROWS if all(k in d["pipeline"][r] for d in docs for r, _ in RUN_LABELS)]


def render_results(docs: Sequence[Node], labels: list[str], metric: str) -> str:
    cols = ["CAM", *_pipeline_cols(docs)] + (["mAP"] if metric == "mIoU" else [])
    heads = {"CAM": "CAM (val)", "mAP": "classifier mAP"}
    lines = ["| run | " + " | ".join(heads.get(c, c) for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    vals = {(run, c): [_value(d, run, c, metric) for d in docs] for run, _ in RUN_LABELS for c in cols}
    for run, label in RUN_LABELS:
        lines.append(f"| {label} | " + " | ".join(_stats(vals[run, c]) for c in cols) + " |")
        if len(docs) > 1:
            lines.append(f"| … per seed ({' / '.join(labels)}) | "
                         + " | ".join(_per_seed(vals[run, c]) for c in cols) + " |")
    cells = []
    for c in cols:
        higher = True if c == "mAP" or metric == "mIoU" else False
        keys = [str(i) for i in range(len(docs))]
        d = paired(dict(zip(keys, vals["doei", c])), dict(zip(keys, vals["baseline", c])), higher)
        cells.append(fmt_diff(d) if d["n"] > 1 else f"{d['mean']:+.1f}")          # one run: its difference
    lines.append("| DOEI − baseline | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_gains(docs: Sequence[Node], labels: list[str]) -> str:
    missing = [k for k in PIPELINE_ROWS if k not in _pipeline_cols(docs)]
    if missing:
        raise DoeiError(f"{docs[0].where}: table=gains needs the pipeline rows {list(PIPELINE_ROWS)} in every "
                        f"file; missing {missing}")
    lines = ["| run | " + " | ".join(h for _, _, h in GAINS) + " |", "|---|" + "---:|" * len(GAINS)]
    for run, label in RUN_LABELS:
        cells = []
        for a, b, _ in GAINS:
            v = [_value(d, run, b, "mIoU") - _value(d, run, a, "mIoU") for d in docs]
            cells.append(_stats(v, sign=True) + (f" ({_per_seed(v, sign=True)})" if len(docs) > 1 else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_ceilings(docs: Sequence[Node], labels: list[str]) -> str:
    for d in docs:
        if d.get("pipeline") is None or d["pipeline"].get("ceilings") is None:
            raise DoeiError(f"{d.where}: no pipeline.ceilings (a demo run without --ceilings)")
    lines = [f"| ceiling run ({len(docs)} seed{'s' if len(docs) > 1 else ''}) | "
             + " | ".join(PIPELINE_ROWS) + " | what the stage adds |", "|---|" + "---:|" * 5]
    for key, label, a, b in CEILINGS:
        runs = [d["pipeline"]["ceilings"][key] for d in docs]
        cells = [_stats([r[k].num("mIoU") for r in runs]) if k in runs[0] else "–" for k in PIPELINE_ROWS]
        v = [r[b].num("mIoU") - r[a].num("mIoU") for r in runs]
        gain = f"{a} → {b} " + _stats(v, sign=True) + (f" ({_per_seed(v, sign=True)})" if len(docs) > 1 else "")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {gain} |")
    return "\n".join(lines) + "\n"


def _stage_label(key: str, doc: Node) -> str:
    st = doc["settings"]
    both = " side by side" if st.int("jobs") > 1 else ""
    if key == "benchmark":
        return f"benchmark ({st.int('n_train'):,} + {st.int('n_val'):,} scenes)"
    if key == "training":
        return f"training, baseline and DOEI{both} ({st.int('epochs')} epochs each)"
    if key == "pipeline_benchmark":
        p = doc["pipeline"]["settings"]
        return f"pipeline benchmark ({p.int('pipeline_train'):,} + {st.int('n_val'):,} scenes at {p.int('px')} px)"
    if key == "pipeline":
        return f"pipeline, baseline and DOEI{both}"
    return {"cams": "CAMs of the held-out split", "evaluation": "β sweep of the CAMs",
            "ceilings": f"ceiling runs{both}", "report": "figures and report"}[key]


def _seconds(values: list[float]) -> str:
    ms = mean_std(values)
    return f"{ms['mean']:,.0f}" + (f" ± {ms['std']:,.0f}" if ms["n"] > 1 else "")


def render_cost(docs: Sequence[Node]) -> str:
    timings = [d["timings"] for d in docs]
    keys = [k for k in TIMED_STAGES if k in timings[0]]
    if not keys:
        raise DoeiError(f"{timings[0].where}: none of the stage keys {list(TIMED_STAGES)} (a metrics.json written "
                        "before they were recorded: rerun the same doei demo, which reuses its finished work)")
    for t in timings[1:]:
        if [k for k in TIMED_STAGES if k in t] != keys:
            raise DoeiError(f"{t.where}: stages {[k for k in TIMED_STAGES if k in t]}, {timings[0].where} has {keys}")
    lines = ["| stage | wall s | CPU s |", "|---|---:|---:|"]
    for k in [*keys, "total"]:
        wall, cpu = (_seconds([t[k].num(f) for t in timings]) for f in ("wall_s", "cpu_s"))
        if k == "total":
            lines.append(f"| **total** | **{wall}** | **{cpu}** |")
        else:
            lines.append(f"| {_stage_label(k, docs[0])} | {wall} | {cpu} |")
    return "\n".join(lines) + "\n"


def render_demo(docs: Sequence[Node], opts: Mapping[str, str]) -> str:
    """``demo``: the table ``table=results|gains|ceilings|cost`` of the ``doei demo`` metrics.json files."""
    check_opts(opts, ("table", "metric"), "demo")
    table, metric = opts.get("table", "results"), opts.get("metric", "mIoU")
    if metric not in ("mIoU", "FP", "FN"):
        raise DoeiError(f"demo table: metric={metric}; expected mIoU, FP or FN")
    if "metric" in opts and table != "results":
        raise DoeiError(f"demo table: metric= is an option of table=results, not table={table}")
    labels = check_same_settings(docs)
    if table == "results":
        return render_results(docs, labels, metric)
    if table == "gains":
        return render_gains(docs, labels)
    if table == "ceilings":
        return render_ceilings(docs, labels)
    if table == "cost":
        return render_cost(docs)
    raise DoeiError(f"demo table: table={table}; expected results, gains, ceilings or cost")
