"""``doei sweep``: one-parameter DOEI sweeps × seeds → ``sweep_<param>.json`` + ``sweep_<param>.png``
and a combined ``sweep.md``."""
from __future__ import annotations

import time
from typing import Sequence

from doei.engine.distributed import env_world
from doei.study.grid import run_key, sweep_doei
from doei.study.ablation import pipeline_description, smoke_banner
from doei.study.plot import sweep_figure
from doei.study.runner import prepare, run_all, Study
from doei.study.table import fixed_beta, fmt_blocks, fmt_diff, fmt_ms, summarize
from doei.utils.io import atomic_write_json, atomic_write_text


def run_sweep(study, params: Sequence[tuple[str, list]], seeds: Sequence[int]) -> dict:
    """Run the baseline and every (param value × seed) with the other knobs at the base DOEI setting; write
    one JSON and one PNG per parameter and ``sweep.md``; returns ``{param: doc}``. ``study``: a
    :class:`Study` or a :class:`doei.study.pipeline_study.PipelineStudy` (under torchrun rank 0 writes;
    the other ranks return ``{}``)."""
    t0 = time.time()
    off = {"enabled": False}
    plan = sweep_runs(study, params, seeds)
    prepare(study, plan)
    results = run_all(study, plan, desc="sweep")
    if env_world()[0] != 0:
        return {}
    base_runs = {s: results[run_key(off, s)] for s in seeds}
    beta_fixed = fixed_beta(list(base_runs.values())) if all(r.get("sweep") for r in base_runs.values()) else None
    base_summary = summarize(base_runs, base_runs, beta_fixed)
    docs = {}
    for name, values in params:
        points = []
        for v in values:
            d = sweep_doei(study.base_doei, name, v)
            runs = {s: results[run_key(d, s)] for s in seeds}
            points.append({"value": v, "doei": d, "run_keys": [run_key(d, s) for s in seeds],
                           "summary": summarize(runs, base_runs, beta_fixed)})
        doc = {"param": name, "values": list(values), "seeds": list(seeds), "base_doei": study.base_doei,
               "config": study.config_path, "quick": study.quick, "fixed_beta": beta_fixed,
               "baseline": base_summary, "points": points}
        if isinstance(study, Study):
            doc["betas"] = study.betas
        else:
            doc["pipeline"] = study.describe()
        atomic_write_json(study.out / f"sweep_{name}.json", doc)
        sweep_figure(study.out / f"sweep_{name}.png", doc)
        docs[name] = doc
    atomic_write_text(study.out / "sweep.md", render(docs, time.time() - t0))
    return docs


def sweep_runs(study, params: Sequence[tuple[str, list]], seeds: Sequence[int]) -> list[tuple[dict, int]]:
    """The (DOEI dict, seed) of the baseline and every parameter value × seed."""
    plan = [({"enabled": False}, s) for s in seeds]
    for name, values in params:
        plan += [(sweep_doei(study.base_doei, name, v), s) for s in seeds for v in values]
    return plan


def render(docs: dict, wall_s: float) -> str:
    """A table per parameter: value | mIoU | FP | FN | Δ mIoU vs baseline (wins) | DOEI per block."""
    lines = ["# DOEI one-parameter sweeps", ""]
    first = next(iter(docs.values()), {})
    lines += smoke_banner(first)
    for name, doc in docs.items():
        b = doc["baseline"]["best_beta"]
        lines += [f"## {name}", "",
                  f"Seeds {doc['seeds']}; other knobs at `{doc['base_doei']}`. "
                  + (f"Pipeline: {pipeline_description(doc['pipeline'])}. " if "pipeline" in doc else "")
                  + f"Best β per run; baseline (DOEI off): "
                  f"mIoU {fmt_ms(b['mIoU'])}, FP {fmt_ms(b['FP'])}, FN {fmt_ms(b['FN'])}.", "",
                  f"![sweep of {name}](sweep_{name}.png)", "",
                  "| value | mIoU | FP | FN | Δ mIoU (wins) | Δ FP (wins) | Δ FN (wins) | DOEI per block |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for p in doc["points"]:
            s = p["summary"]["best_beta"]
            lines.append(f"| {p['value']} | {fmt_ms(s['mIoU'])} | {fmt_ms(s['FP'])} | {fmt_ms(s['FN'])} | "
                         f"{fmt_diff(s['mIoU']['vs_baseline'])} | {fmt_diff(s['FP']['vs_baseline'])} | "
                         f"{fmt_diff(s['FN']['vs_baseline'])} | {fmt_blocks(p['summary']['block_stats'])} |")
        lines.append("")
    lines += [f"Wall time of this call: {wall_s:.0f} s (finished runs are reused).", ""]
    return "\n".join(lines)
