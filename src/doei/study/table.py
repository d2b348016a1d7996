"""Seed statistics of a study: mean ± std, paired differences to the baseline, wins, fixed-β scores.

Inputs are run results as written by :mod:`doei.study.runner`: dicts with ``mIoU``, ``FP``, ``FN``
(percent, at the run's best β), ``beta`` and ``sweep`` (``[{beta, mIoU, FP, FN}]``), plus
``block_stats`` (``[{block, k_p2c, k_c2c, delta_ratio_patch, delta_ratio_cls}]``). Everything here is
pure arithmetic so that it can be tested on hand-made numbers.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

METRICS = ("mIoU", "FP", "FN")
# A "win" is a seed on which the row beats the baseline: higher mIoU, lower FP / FN.
HIGHER_IS_BETTER = {"mIoU": True, "FP": False, "FN": False}


def mean_std(values: Sequence[float]) -> dict:
    """``{"mean", "std", "n"}`` with the sample standard deviation (ddof 1; 0 for a single value)."""
    a = np.asarray(list(values), dtype=np.float64)
    if a.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0, "n": int(a.size)}


def at_beta(result: Mapping, beta: float) -> dict:
    """mIoU/FP/FN of one run at a given β of its sweep (the nearest swept β, within 1e-6)."""
    for p in result["sweep"]:
        if abs(p["beta"] - beta) < 1e-6:
            return {m: p[m] for m in METRICS}
    raise KeyError(f"beta {beta} not in the run's sweep")


def fixed_beta(baseline_runs: Sequence[Mapping]) -> float:
    """The β that maximises the baseline's seed-mean mIoU over the shared sweep (lowest β on ties)."""
    betas = [p["beta"] for p in baseline_runs[0]["sweep"]]
    means = np.array([[at_beta(r, b)["mIoU"] for b in betas] for r in baseline_runs]).mean(axis=0)
    return float(betas[int(np.argmax(means))])


def paired(row: Mapping[int, float], base: Mapping[int, float], higher_is_better: bool | None) -> dict:
    """Row − baseline per shared seed: ``{"mean", "std", "n", "wins", "diffs"}``; a win is a strict
    improvement (higher, or lower when ``higher_is_better`` is False; None: a metric with no better direction,
    ``wins`` is None)."""
    seeds = sorted(set(row) & set(base))
    d = [row[s] - base[s] for s in seeds]
    wins = None if higher_is_better is None else sum(1 for x in d if (x > 0 if higher_is_better else x < 0))
    return {**mean_std(d), "wins": wins, "diffs": d}


def block_stats_mean(runs: Sequence[Mapping]) -> list[dict]:
    """Per-block means over runs (seeds) of k_p2c, k_c2c and the two ‖Δ‖/‖X‖ ratios (None stays None)."""
    by_block: dict[int, list[dict]] = {}
    for r in runs:
        for s in r.get("block_stats") or []:
            by_block.setdefault(int(s["block"]), []).append(s)
    out = []
    for b in sorted(by_block):
        rec: dict = {"block": b}
        for key in ("k_p2c", "k_c2c", "delta_ratio_patch", "delta_ratio_cls"):
            vals = [s[key] for s in by_block[b] if s.get(key) is not None]
            rec[key] = float(np.mean(vals)) if vals else None
        out.append(rec)
    return out


def summarize(runs: Mapping[int, Mapping], base_runs: Mapping[int, Mapping], beta_fixed: float | None) -> dict:
    """One row of a table: per metric, at the best β and at ``beta_fixed``, the seed mean ± std and the
    paired difference to the baseline with the same seed (with wins), plus per-block DOEI statistics.
    ``beta_fixed`` None (rows without a β sweep: pseudo masks, segmentations): ``fixed_beta`` is None and
    ``best_beta`` holds the runs' scores."""
    out: dict = {"seeds": sorted(runs), "best_beta": {}, "fixed_beta": {} if beta_fixed is not None else None}
    for mode in ("best_beta", "fixed_beta") if beta_fixed is not None else ("best_beta",):
        def val(r: Mapping, m: str) -> float:
            return r[m] if mode == "best_beta" else at_beta(r, beta_fixed)[m]

        for m in METRICS:
            row = {s: val(r, m) for s, r in runs.items()}
            base = {s: val(r, m) for s, r in base_runs.items()}
            out[mode][m] = {**mean_std(row.values()), "per_seed": row,
                            "vs_baseline": paired(row, base, HIGHER_IS_BETTER[m])}
    out["best_beta"]["beta"] = mean_std([r["beta"] for r in runs.values() if r["beta"] is not None])
    out["block_stats"] = block_stats_mean(list(runs.values()))
    out["wall_s"] = mean_std([r.get("timing", {}).get("total_wall_s", math.nan) for r in runs.values()])
    maps = {s: float(r["cls_mAP"]) for s, r in runs.items() if r.get("cls_mAP") is not None}
    base_maps = {s: float(r["cls_mAP"]) for s, r in base_runs.items() if r.get("cls_mAP") is not None}
    # {mean, std, n} as before (NaN for a run without it), plus per seed and paired to the baseline (wins: higher)
    out["classifier_mAP"] = {**mean_std([r.get("cls_mAP", math.nan) for r in runs.values()]), "per_seed": maps,
                             "vs_baseline": paired(maps, base_maps, True)}
    return out


COOC_METRICS = ("IoU", "leak", "context_hit", "object_FN", "area")
# area (predicted pixels as % of object pixels) has no better direction: its paired difference counts no wins
COOC_HIGHER_IS_BETTER = {"IoU": True, "leak": False, "context_hit": False, "object_FN": False, "area": None}


def class_area(iou: float | None, object_fn: float | None) -> float | None:
    """A class's predicted pixels as a percentage of its object pixels, from its IoU and object FN (percent):
    with ``R = 1 − object FN`` (= TP / GT) and ``IoU = TP / (GT + pred − TP)``, ``pred / GT = R / IoU − 1 + R``.
    None when it is not determined (IoU 0: no true positive, or a value missing)."""
    if iou is None or object_fn is None or not (iou > 0) or math.isnan(object_fn):
        return None
    r = 1.0 - object_fn / 100.0
    return 100.0 * (r / (iou / 100.0) - 1.0 + r)


def _cooc_value(r: Mapping, where: tuple[str, str], m: str):
    c = r.get("cooccurrence")
    if not c:
        return None
    if m == "area":          # per class from IoU and object FN; a group's is the mean over its classes
        names = c["groups"][where[1]]["classes"] if where[0] == "group" else [where[1]]
        vals = [a for n in names if (a := class_area(c["per_class"][n]["IoU"], c["per_class"][n]["object_FN"]))
                is not None]
        return float(np.mean(vals)) if vals else None
    v = c["groups"][where[1]][m] if where[0] == "group" else c["per_class"][where[1]][m]
    return None if v is None else float(v)


def summarize_cooc(runs: Mapping[int, Mapping], base_runs: Mapping[int, Mapping]) -> dict:
    """Co-occurrence metrics (doei.eval.cooccurrence, at each run's best β) of one row: per class group
    ("context", "rest") and per context class, the seed mean ± std and the paired difference to the
    baseline (wins: higher IoU, lower leak / context hit / object FN). {} when no run has them."""
    first = next((r["cooccurrence"] for r in runs.values() if r.get("cooccurrence")), None)
    if first is None:
        return {}
    places = [("group", "context"), ("group", "rest")] + [("class", n) for n in first["groups"]["context"]["classes"]]
    out: dict = {}
    for where in places:
        rec = {}
        for m in COOC_METRICS:
            row = {s: v for s, r in runs.items() if (v := _cooc_value(r, where, m)) is not None}
            base = {s: v for s, r in base_runs.items() if (v := _cooc_value(r, where, m)) is not None}
            if row:
                rec[m] = {**mean_std(row.values()), "per_seed": row,
                          "vs_baseline": paired(row, base, COOC_HIGHER_IS_BETTER[m])}
        out[f"{where[0]}:{where[1]}"] = rec
    return out


LOC_METRICS = ("object", "context", "far", "auc_context", "auc_far")
LOC_HIGHER_IS_BETTER = {"object": True, "context": False, "far": False, "auc_context": True, "auc_far": True}


def summarize_loc(runs: Mapping[int, Mapping], base_runs: Mapping[int, Mapping]) -> dict:
    """The threshold-free localisation (doei.eval.localisation) of one row per class group: seed mean ± std and
    the paired difference to the baseline (wins: higher object mean and AUCs, lower context / far means). {}
    when no run has it."""
    def value(r: Mapping, group: str, m: str):
        v = ((r.get("localisation") or {}).get("groups") or {}).get(group, {}).get(m)
        return None if v is None else float(v)

    if not any(r.get("localisation") for r in runs.values()):
        return {}
    out: dict = {}
    for group in ("context", "rest"):
        rec = {}
        for m in LOC_METRICS:
            row = {s: v for s, r in runs.items() if (v := value(r, group, m)) is not None}
            base = {s: v for s, r in base_runs.items() if (v := value(r, group, m)) is not None}
            if row:
                rec[m] = {**mean_std(row.values()), "per_seed": row,
                          "vs_baseline": paired(row, base, LOC_HIGHER_IS_BETTER[m])}
        out[f"group:{group}"] = rec
    return out


def fmt_ms(d: Mapping, digits: int = 1) -> str:
    """``12.3 ± 0.4`` (or ``12.3`` for one seed)."""
    if d["n"] == 0:
        return "–"
    return f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}" if d["n"] > 1 else f"{d['mean']:.{digits}f}"


def fmt_diff(d: Mapping, digits: int = 1) -> str:
    """``+1.2 ± 0.8 (2/3)``: paired mean ± std and wins/seeds (no wins part when ``wins`` is None)."""
    if d["n"] == 0:
        return "–"
    wins = "" if d.get("wins") is None else f" ({d['wins']}/{d['n']})"      # None: no better direction
    return f"{d['mean']:+.{digits}f} ± {d['std']:.{digits}f}{wins}"


def fmt_blocks(stats: Sequence[Mapping]) -> str:
    """Compact per-block DOEI statistics: ``k p/c`` and ``‖Δ‖/‖X‖`` of patch/class tokens in percent."""
    if not stats:
        return "–"
    parts = []
    for s in stats:
        k = "/".join("–" if s[key] is None else f"{s[key]:.0f}" for key in ("k_p2c", "k_c2c"))
        r = "/".join("–" if s[key] is None else f"{100 * s[key]:.0f}" for key in ("delta_ratio_patch", "delta_ratio_cls"))
        parts.append(f"b{s['block']} k {k}, Δ {r}%")
    return "; ".join(parts)


def markdown_table(rows: Sequence[tuple[str, Mapping]], mode: str, beta_fixed: float) -> str:
    """The ablation table (one line per row) for ``mode`` = "best_beta" or "fixed_beta"."""
    if beta_fixed is None:
        head = "each run's score (no β)"
    else:
        head = "best β of each run" if mode == "best_beta" else f"fixed β = {beta_fixed:.2f} (the baseline's best)"
    lines = [f"Seed mean ± std, {head}; Δ = paired difference to the baseline with the same seed ± std "
             "(wins/seeds: higher mIoU, lower FP/FN).", "",
             "| row | mIoU | FP | FN | Δ mIoU (wins) | Δ FP (wins) | Δ FN (wins) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, s in rows:
        m = s[mode]
        lines.append(f"| {label} | {fmt_ms(m['mIoU'])} | {fmt_ms(m['FP'])} | {fmt_ms(m['FN'])} | "
                     f"{fmt_diff(m['mIoU']['vs_baseline'])} | {fmt_diff(m['FP']['vs_baseline'])} | "
                     f"{fmt_diff(m['FN']['vs_baseline'])} |")
    return "\n".join(lines)
