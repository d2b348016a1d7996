"""The post-hoc sharpened-baseline control of a ``doei ablate`` study (issue #24), from its CAM files, no training.

Per seed: the baseline's CAMs (``runs/<baseline key>/cams``) with one power γ for every class (a sweep), and
with a power per class chosen so that each class's predicted area equals full DOEI's (the row ``--row``, default
``cpdo_ppdo_hfa``, at its own best β); scored at the baseline's best β (:mod:`doei.eval.sharpen`). Writes
``<study>/sharpened.json`` and ``sharpened.md`` (paired differences to the baseline and to DOEI, wins).

    python -m doei.study.sharpened STUDY_DIR [--row cpdo_ppdo_hfa] [--powers 0.5,1,1.5,2,3,4]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from doei.errors import DoeiError
from doei.study.table import fmt_diff, fmt_ms, mean_std, paired
from doei.utils.io import atomic_write_json, atomic_write_text

POWERS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)


def sharpened_study(study: Path, row: str = "cpdo_ppdo_hfa", powers: Sequence[float] = POWERS) -> dict:
    """Compute the control for every seed both rows have finished; returns the document it writes."""
    from doei.eval.betas import parse_betas
    from doei.eval.sharpen import area_matched_gammas, load_items, power_sweep, score_items, sweep_items

    study = Path(study)
    path = study / "ablation.json"
    if not path.is_file():
        raise DoeiError(f"{path}: not found (run doei ablate there first)")
    doc = json.loads(path.read_text())
    rows = doc.get("rows", {})
    if "baseline" not in rows or row not in rows:
        raise DoeiError(f"{path}: needs the rows baseline and {row}; it has {sorted(rows)}")
    bench = doc.get("benchmark") or {}
    root = Path(bench.get("root", ""))
    meta = root / "meta.json"
    if not meta.is_file():
        raise DoeiError(f"{path}: benchmark.root {str(root)!r} has no meta.json (a synthetic-benchmark study only)")
    names = list(json.loads(meta.read_text())["classes"])
    n = len(names) + 1
    betas = parse_betas(doc["betas"])
    from doei.data.synth_context import CONTEXT_DIR, write_context_maps

    write_context_maps(root, ("val",))
    ids = (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    per_seed = {}
    for seed, kb, kd in zip(doc["seeds"], rows["baseline"]["run_keys"], rows[row]["run_keys"]):
        rb, rd = study / "runs" / kb, study / "runs" / kd
        if not ((rb / "result.json").is_file() and (rd / "result.json").is_file()):
            continue
        res_b, res_d = (json.loads((r / "result.json").read_text()) for r in (rb, rd))
        base = load_items(rb / "cams", root / "SegmentationClass", ids, n, root / CONTEXT_DIR)
        doei = load_items(rd / "cams", root / "SegmentationClass", ids, n)
        beta_b, beta_d = float(res_b["beta"]), float(res_d["beta"])
        target = sweep_items(doei, 1.0, [beta_d], n)["p"][0]
        gammas, area = area_matched_gammas(base, target, beta_b, n)
        matched = score_items(base, gammas, beta_b, names)
        per_seed[int(seed)] = {
            "baseline": {k: res_b[k] for k in ("mIoU", "FP", "FN", "beta")},
            "doei": {k: res_d[k] for k in ("mIoU", "FP", "FN", "beta")},
            "area_matched": {**matched, "gammas": {nm: float(g) for nm, g in zip(names, gammas)},
                             "area_ratio": {nm: (float(area[i + 1] / target[i + 1]) if target[i + 1] else None)
                                            for i, nm in enumerate(names)}},
            "power_sweep": power_sweep(base, powers, betas, beta_b, n),
            "cooccurrence": {"baseline": res_b.get("cooccurrence"), "doei": res_d.get("cooccurrence")}}
    if not per_seed:
        raise DoeiError(f"{study}: no seed has finished runs of both baseline and {row}")
    out = {"study": str(study), "row": row, "label": rows[row]["label"], "powers": list(powers),
           "seeds": sorted(per_seed), "per_seed": per_seed, "summary": summarize(per_seed)}
    atomic_write_json(study / "sharpened.json", out)
    atomic_write_text(study / "sharpened.md", render(out))
    return out


def _leak(rec: dict | None) -> float | None:
    g = ((rec or {}).get("groups") or {}).get("context") or {}
    return g.get("leak")


def summarize(per_seed: dict) -> dict:
    """Seed mean ± std of mIoU / FP / FN / context leak of the three, and paired differences (wins)."""
    s: dict = {}
    get = {"baseline": lambda r: r["baseline"], "doei": lambda r: r["doei"], "area_matched": lambda r: r["area_matched"]}
    for m, higher in (("mIoU", True), ("FP", False), ("FN", False)):
        vals = {k: {sd: f(r)[m] for sd, r in per_seed.items()} for k, f in get.items()}
        s[m] = {k: mean_std(v.values()) for k, v in vals.items()}
        s[m]["matched_vs_baseline"] = paired(vals["area_matched"], vals["baseline"], higher)
        s[m]["doei_vs_matched"] = paired(vals["doei"], vals["area_matched"], higher)
    leak = {"baseline": {sd: _leak(r["cooccurrence"]["baseline"]) for sd, r in per_seed.items()},
            "doei": {sd: _leak(r["cooccurrence"]["doei"]) for sd, r in per_seed.items()},
            "area_matched": {sd: _leak(r["area_matched"].get("cooccurrence")) for sd, r in per_seed.items()}}
    if all(v is not None for d in leak.values() for v in d.values()):
        s["leak"] = {k: mean_std(v.values()) for k, v in leak.items()}
        s["leak"]["matched_vs_baseline"] = paired(leak["area_matched"], leak["baseline"], False)
        s["leak"]["doei_vs_matched"] = paired(leak["doei"], leak["area_matched"], False)
    return s


def render(doc: dict) -> str:
    s = doc["summary"]
    lines = [f"# Sharpened baseline vs {doc['label']} (seeds {doc['seeds']})", "",
             "Area-matched: the baseline's CAMs with a power per class so that each class predicts as many pixels "
             "as DOEI at its best β, scored at the baseline's best β (doei.eval.sharpen). Δ = paired difference "
             "± std (wins).", "",
             "| metric | baseline | area-matched baseline | DOEI | matched − baseline | DOEI − matched |",
             "|---|---:|---:|---:|---:|---:|"]
    for m in ("mIoU", "FP", "FN", "leak"):
        if m in s:
            r = s[m]
            lines.append(f"| {m} | {fmt_ms(r['baseline'])} | {fmt_ms(r['area_matched'])} | {fmt_ms(r['doei'])} | "
                         f"{fmt_diff(r['matched_vs_baseline'])} | {fmt_diff(r['doei_vs_matched'])} |")
    lines += ["", "Power sweep of the baseline (one γ for every class): mIoU at the best β / at the baseline's best β.",
              "", "| γ | " + " | ".join(f"seed {sd}" for sd in doc["seeds"]) + " |",
              "|---:|" + "---|" * len(doc["seeds"])]
    for i, g in enumerate(doc["powers"]):
        cells = []
        for sd in doc["seeds"]:
            ps = doc["per_seed"]
            p = (ps[sd] if sd in ps else ps[str(sd)])["power_sweep"][i]       # str keys once read back from JSON
            cells.append(f"{p['best_beta']['mIoU']:.1f} / {p['fixed_beta']['mIoU']:.1f}")
        lines.append(f"| {g:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m doei.study.sharpened", description=__doc__.split("\n")[0])
    ap.add_argument("study", type=Path, help="a doei ablate output folder (ablation.json, runs/)")
    ap.add_argument("--row", default="cpdo_ppdo_hfa", help="the DOEI row whose areas are matched (default %(default)s)")
    ap.add_argument("--powers", default=",".join(f"{p:g}" for p in POWERS),
                    help="powers of the sweep, comma-separated (default %(default)s)")
    a = ap.parse_args(argv)
    try:
        powers = [float(p) for p in a.powers.split(",") if p.strip()]
        if not powers or any(p <= 0 for p in powers):
            raise ValueError
    except ValueError:
        print(f"error: --powers {a.powers!r}: expected positive numbers, comma-separated")
        return 2
    try:
        doc = sharpened_study(a.study, a.row, powers)
    except DoeiError as e:
        print(f"error: {e}")
        return 2
    print(render(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
