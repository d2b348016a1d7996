"""``doei ablate``: the Table-4 component grid × seeds → ``ablation.json`` and ``ablation.md``."""
from __future__ import annotations

import time
from typing import Sequence

from doei.errors import DoeiError
from doei.study.grid import Row, row_doei, run_key
from doei.study.plot import ablation_figure
from doei.engine.distributed import env_world
from doei.study.runner import finished_results, prepare, run_all, Study
from doei.study.table import (fixed_beta, fmt_blocks, fmt_diff, fmt_ms, markdown_table, mean_std, summarize,
                              summarize_cooc, summarize_loc)
from doei.utils.io import atomic_write_json, atomic_write_text


def run_ablation(study, seeds: Sequence[int], rows: Sequence[Row] | None = None,
                 report_only: bool = False) -> dict:
    """Train and evaluate every row × seed (finished runs reused), then write the table files.
    ``study``: a :class:`Study` (synthetic benchmark) or a :class:`doei.study.pipeline_study.PipelineStudy`
    (each run a ``doei run``; under torchrun rank 0 writes the files and the other ranks return ``{}``).
    ``rows``: default the study config's ``study.rows`` (all of TABLE4 unless it names some).
    ``report_only``: train nothing; tabulate the runs that have finished (a row lists the seeds it has)."""
    rows = tuple(rows or study.rows)
    t0 = time.time()
    plan = [(row, row_doei(row, study.base_doei), s) for row in rows for s in seeds]
    prepare(study, ablation_runs(study, seeds, rows))
    # baseline and full DOEI (first and last row) seed by seed first, then the other rows seed by seed, so
    # that an early stop leaves complete paired comparisons of the two that matter most
    ends = {rows[0].name, "cpdo_ppdo_hfa" if any(r.name == "cpdo_ppdo_hfa" for r in rows) else rows[-1].name}
    order = sorted(plan, key=lambda p: (p[0].name not in ends, p[2], rows.index(p[0])))
    if report_only:
        results = finished_results(study, [(d, s) for _, d, s in order])
    else:
        results = run_all(study, [(d, s) for _, d, s in order], desc="ablate")
    if env_world()[0] != 0:
        return {}
    per_row = {row.name: {s: results[run_key(d, s)] for r2, d, s in plan
                          if r2.name == row.name and run_key(d, s) in results} for row in rows}
    base = per_row[rows[0].name]
    if not base:
        raise DoeiError(f"{study.out}: no finished baseline run yet; nothing to tabulate")
    # one fixed β for every row needs a β sweep (CAM rows); pseudo masks and segmentations have no β
    beta_fixed = fixed_beta(list(base.values())) if all(r.get("sweep") for r in base.values()) else None
    summary = {row.name: {"label": row.label, "doei": row_doei(row, study.base_doei),
                          "run_keys": [run_key(row_doei(row, study.base_doei), s) for s in seeds],
                          **summarize(per_row[row.name], base, beta_fixed),
                          "cooccurrence": summarize_cooc(per_row[row.name], base),
                          "localisation": summarize_loc(per_row[row.name], base)} for row in rows}
    doc = {"config": study.config_path, "quick": study.quick, "seeds": list(seeds), "report_only": report_only,
           "base_doei": study.base_doei}
    if isinstance(study, Study):
        doc.update({"benchmark": {"root": str(study.synth_root), "n_train": study.n_train, "n_val": study.n_val,
                                  "synth_seed": study.synth_seed, "bias": study.bias},
                    "cam_layers": study.cam_layers, "betas": study.betas})
    else:
        doc["pipeline"] = study.describe()
        for row in rows:          # each stage's wall seconds (its marker), seed mean: what a row costs
            runs = list(per_row[row.name].values())
            stages = {st for r in runs for st in (r.get("timing") or {}).get("stage_seconds") or {}}
            summary[row.name]["stage_seconds"] = {
                st: mean_std([r["timing"]["stage_seconds"][st] for r in runs
                              if (r["timing"].get("stage_seconds") or {}).get(st) is not None])
                for st in study.stages if st in stages}
    doc.update({"fixed_beta": beta_fixed, "rows": summary, "wall_s_this_call": round(time.time() - t0, 1)})
    if "pipeline" in doc:
        doc["paper"] = paper_comparison(study.out, doc)
    atomic_write_json(study.out / "ablation.json", doc)
    atomic_write_text(study.out / "ablation.md", render(doc))

    ablation_figure(study.out / "ablation.png", doc)
    return doc


def ablation_runs(study, seeds: Sequence[int], rows: Sequence[Row] | None = None) -> list[tuple[dict, int]]:
    """The (DOEI dict, seed) of every row × seed (``rows`` default: the study's)."""
    return [(row_doei(row, study.base_doei), s) for row in tuple(rows or study.rows) for s in seeds]


def render(doc: dict) -> str:
    """The ablation report: both tables, per-row DOEI statistics and run cost."""
    def label(r: dict) -> str:
        if not r["seeds"]:
            return f"{r['label']} (not run yet)"
        return r["label"] + (f" [seeds {r['seeds']}]" if r["seeds"] != doc["seeds"] else "")

    rows = [(label(r), r) for r in doc["rows"].values()]
    if "benchmark" in doc:
        b = doc["benchmark"]
        where = (f"benchmark {b['n_train']} train / {b['n_val']} held-out synthetic images (seed {b['synth_seed']}); "
                 f"CAMs of the held-out split (last {doc['cam_layers']} blocks' class attention × conv head), β swept "
                 f"over {doc['betas']}")
    else:
        where = pipeline_description(doc["pipeline"])
    lines = [f"# DOEI component ablation (Table 4 grid), seeds {doc['seeds']}", "", *smoke_banner(doc),
             f"Config `{doc['config']}`{' (--quick)' if doc['quick'] else ''}; {where}. Percent.", "",
             "## At each run's best β" if doc["fixed_beta"] is not None else "## Scores", "",
             markdown_table(rows, "best_beta", doc["fixed_beta"]), ""]
    if doc["fixed_beta"] is not None:
        lines += ["## At one fixed β chosen on the baseline", "", markdown_table(rows, "fixed_beta", doc["fixed_beta"]),
                  ""]
    lines += ["## Per row: classifier, best β, DOEI per block, cost", "",
             "k p/c = tokens selected as confident per row by PPDO / CPDO; Δ p/c = ‖Δ‖/‖X‖ of patch / class tokens "
             + ("(val batch, seed mean)." if "pipeline" not in doc else
                f"(the first {doc['pipeline']['stats_images']} images of `{doc['pipeline']['split']}`, seed mean)."), "",
             "| row | classifier mAP | best β | DOEI per block | wall s per run |", "|---|---:|---:|---|---:|"]
    for label, r in rows:
        lines.append(f"| {label} | {fmt_ms(r['classifier_mAP'])} | {fmt_ms(r['best_beta']['beta'], 2)} | "
                     f"{fmt_blocks(r['block_stats'])} | {fmt_ms(r['wall_s'], 0)} |")
    lines += ["", "Rows whose DOEI setting computes the same network share one run (same run keys): with PPDO "
              "off, HFA has nothing to act on, so CPDO + HFA is CPDO.", ""]
    if "pipeline" in doc:
        stages = doc["pipeline"]["stages"]
        lines += ["## Per row: wall seconds of each stage (seed mean; the stage markers)", "",
                  "| row | " + " | ".join(stages) + " |", "|---|" + "---:|" * len(stages)]
        for label, r in rows:
            st = r.get("stage_seconds") or {}
            lines.append(f"| {label} | " + " | ".join(fmt_ms(st[s], 0) if s in st else "–" for s in stages) + " |")
        lines.append("")
    if doc.get("paper"):
        from doei.eval.paper_numbers import format_comparison

        lines += ["## Beside the paper (Table 4) and the published baseline", "",
                  format_comparison(doc["paper"]), "", "Sources: paper_comparison.json.", ""]
    lines += render_cooc(rows)
    lines += render_loc(rows)
    return "\n".join(lines)


def paper_comparison(out, doc: dict) -> list[dict] | None:
    """A pipeline study's rows (seed means) beside the paper's Table 4 and the published baseline
    (:mod:`doei.eval.paper_numbers`), written to ``out/paper_comparison.{json,md}``; None when the dataset,
    the classifier or the scored row is not one the papers report."""
    from doei.eval.paper_numbers import RUN_ROW_METRIC, comparison_rows, method_for_model, write_comparison

    p = doc["pipeline"]
    method, metric = method_for_model(p.get("model")), RUN_ROW_METRIC.get(p["score"])
    if p["kind"] not in ("voc", "coco") or method is None or metric is None:
        return None
    note = "smoke run: not a result" if p.get("smoke") is not None else ""
    rows = []
    for name, r in doc["rows"].items():
        m = r["best_beta"]["mIoU"]
        if not m["n"]:
            continue
        seeds = f"mean of {m['n']} seed(s)"
        rows += comparison_rows([{"row": r["label"], "metric": metric, "value": round(m["mean"], 2), "split": p["split"],
                                  "note": "; ".join(x for x in (seeds, note) if x)}],
                                dataset=p["kind"], method=method, doei=bool(r["doei"].get("enabled")), variant=name)
    write_comparison(out, rows, {"title": f"{out}: Table 4 rows ({p['score']}, {p['kind'].upper()} {method}) beside "
                                          "the papers (mIoU %)", "dataset": p["kind"], "method": method,
                                 "smoke": p.get("smoke"), "variant": "table4"})
    return rows


def smoke_banner(doc: dict) -> list[str]:
    """Lines saying that a pipeline study ran in smoke mode (run.smoke): its numbers are no result."""
    p = doc.get("pipeline") or {}
    if p.get("smoke") is None:
        return []
    batch = f", batch {p['smoke_batch']}" if p.get("smoke_batch") else ""
    return [f"**SMOKE RUN** (`run.smoke: {p['smoke']}`{batch}): every run capped at {p['smoke']} optimiser steps and "
            f"{p['smoke']} images per split, random initialisation. Timings only: no number below is a result.", ""]


def pipeline_description(p: dict) -> str:
    """One sentence on what a pipeline study scores: the row, its split, the stages each run has."""
    what = "CAM seeds at the best β of the run's eval.seed_betas" if p["score"] == "Seed" else f"the {p['score']} row"
    return (f"each run a `doei run` of stages {', '.join(p['stages'])} on {p['kind']} `{p['root']}`; scored: "
            f"{what}, on split `{p['split']}`")


def render_loc(rows) -> list[str]:
    """Threshold-free localisation tables (doei.eval.localisation) per class group: seed mean ± std and
    paired Δ to the baseline (wins)."""
    if not any(r.get("localisation") for _, r in rows):
        return []
    lines = ["## Threshold-free localisation (no β)", "",
             "Mean normalised CAM (percent of each class map's range) on the object, on its declared context off "
             "the object, and on far background; AUC = P(CAM at an object pixel > CAM at a context / far pixel). "
             "A uniform shrink lowers the context and far means alike and leaves the AUCs; decoupling raises "
             "AUC obj-ctx. Δ = paired difference to the baseline ± std (wins).", ""]
    names = {"object": "object", "context": "context", "far": "far", "auc_context": "AUC obj-ctx",
             "auc_far": "AUC obj-far"}
    for group in ("context", "rest"):
        lines += [f"### class group '{group}'", "",
                  "| row | " + " | ".join(f"{n} | Δ {n}" for n in names.values()) + " |",
                  "|---|" + "---:|" * (2 * len(names))]
        for label, r in rows:
            rec = (r.get("localisation") or {}).get(f"group:{group}", {})
            cells = []
            for m in names:
                cells += [fmt_ms(rec[m]), fmt_diff(rec[m]["vs_baseline"])] if m in rec else ["–", "–"]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def render_cooc(rows) -> list[str]:
    """Co-occurrence / under-activation tables (doei.eval.cooccurrence): per class group and per context
    class, seed mean ± std and paired Δ to the baseline (wins)."""
    if not any(r.get("cooccurrence") for _, r in rows):
        return []
    lines = ["## Co-occurrence and under-activation (at each run's best β)", "",
             "leak = share of a class's predicted pixels on its declared context and off the object; ctx hit = "
             "share of the context activated as the class; object FN = share of the object's pixels left "
             "unactivated; IoU per class. Group = mean over its classes (context: classes with a declared "
             "context region; rest: the others). Δ = paired difference to the baseline ± std (wins).", ""]
    places = [p for p in next(r["cooccurrence"] for _, r in rows if r.get("cooccurrence"))]
    for place in places:
        kind, name = place.split(":", 1)
        title = f"class group '{name}'" if kind == "group" else f"class {name}"
        lines += [f"### {title}", "", "| row | IoU | Δ IoU | leak | Δ leak | ctx hit | Δ ctx hit | object FN | Δ object FN |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for label, r in rows:
            rec = (r.get("cooccurrence") or {}).get(place, {})
            cells = []
            for m in ("IoU", "leak", "context_hit", "object_FN"):
                if m in rec:
                    cells += [fmt_ms(rec[m]), fmt_diff(rec[m]["vs_baseline"])]
                else:
                    cells += ["–", "–"]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines
