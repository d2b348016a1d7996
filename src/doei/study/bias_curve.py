"""Leak against bias: the co-occurrence variant's ``doei ablate`` studies (one per bias strength) in one
figure and table (issue #15, docs/results.md).

For every study folder (its ``ablation.json``; ``benchmark.bias`` null = the standard benchmark, whose
context classes show their context in 0.9 of their images and house its tree in 0.8 — plotted at 0.9),
the baseline and one DOEI row: per class group ("context" = classes with a declared context region),
context leak, context hit, object FN and IoU (seed mean ± std, at each run's best β), plus mIoU / FP / FN,
and the paired DOEI − baseline differences with wins. The paper's claim predicts that DOEI lowers the leak
more where the bias is stronger.

    python -m doei.study.bias_curve --out study/bias_curve study/bias050 study/bias075 study/bias090 study/bias100
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from doei.errors import DoeiError
from doei.study.table import fmt_diff, fmt_ms

COOC = (("leak", "context leak"), ("context_hit", "context hit"), ("object_FN", "object FN"), ("IoU", "IoU"))


def collect(folders: Sequence[Path], row: str = "cpdo_ppdo_hfa", group: str = "context") -> list[dict]:
    """One record per study folder, sorted by bias."""
    out = []
    for f in folders:
        path = Path(f) / "ablation.json"
        if not path.is_file():
            raise DoeiError(f"{path}: not found (run doei ablate there first)")
        doc = json.loads(path.read_text())
        bias = doc["benchmark"].get("bias")
        rows = doc["rows"]
        if row not in rows or "baseline" not in rows:
            raise DoeiError(f"{path}: needs the rows baseline and {row}")
        rec = {"folder": str(f), "bias": 0.9 if bias is None else float(bias), "standard": bias is None,
               "seeds": rows[row]["seeds"], "row": row, "label": rows[row]["label"]}
        for name in ("baseline", row):
            r = rows[name]
            g = r.get("cooccurrence", {}).get(f"group:{group}", {})
            rec[name] = {m: g.get(m) for m, _ in COOC}
            rec[name].update({m: r["best_beta"][m] for m in ("mIoU", "FP", "FN")})
            for k, v in r.get("cooccurrence", {}).items():
                if k.startswith("class:"):
                    rec.setdefault("per_class", {}).setdefault(k[6:], {})[name] = {m: v.get(m) for m, _ in COOC}
        out.append(rec)
    return sorted(out, key=lambda r: r["bias"])


def render(recs: list[dict]) -> str:
    lines = [f"# Context leak against bias ({recs[0]['label']} vs baseline)", "",
             "Class group 'context' (boat, train, car, house); seed mean ± std at each run's best β; Δ = paired "
             "DOEI − baseline ± std (wins: lower leak / hit / FN, higher IoU / mIoU). Bias 0.9 = the standard "
             "benchmark (house: tree in 0.8).", "",
             "| bias | seeds | leak base | leak DOEI | Δ leak | Δ ctx hit | Δ object FN | Δ IoU (ctx) | Δ mIoU | Δ FP | Δ FN |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in recs:
        b, d = r["baseline"], r[r["row"]]
        cell = lambda m: fmt_diff(d[m]["vs_baseline"]) if d.get(m) else "–"  # noqa: E731
        lines.append(f"| {r['bias']:.2f} | {len(r['seeds'])} | {fmt_ms(b['leak']) if b['leak'] else '–'} | "
                     f"{fmt_ms(d['leak']) if d['leak'] else '–'} | {cell('leak')} | {cell('context_hit')} | "
                     f"{cell('object_FN')} | {cell('IoU')} | {cell('mIoU')} | {cell('FP')} | {cell('FN')} |")
    lines.append("")
    return "\n".join(lines)


def figure(path: Path, recs: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from doei.study.plot import save_figure

    xs = [r["bias"] for r in recs]
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.6))
    panels = list(COOC) + [("mIoU", "mIoU (all classes)")]
    for ax, (m, title) in zip(axes, panels):
        for name, colour, lab in (("baseline", "tab:blue", "baseline"), (recs[0]["row"], "tab:red", recs[0]["label"])):
            pts = [(x, r[name][m]) for x, r in zip(xs, recs) if r[name].get(m)]
            ax.errorbar([p[0] for p in pts], [p[1]["mean"] for p in pts], yerr=[p[1]["std"] for p in pts],
                        fmt="o-", color=colour, capsize=3, label=lab)
        ax.set_xlabel("bias (share of images with the context)", fontsize=8)
        ax.set_title(title + ("" if m == "mIoU" else " (context classes)"), fontsize=9)
        ax.set_ylabel("% at best β")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"co-occurrence variant: seeds {recs[0]['seeds']}, mean ± std", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
    from doei.utils.io import atomic_write_json, atomic_write_text

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", help="doei ablate output folders (one per bias)")
    p.add_argument("--out", required=True, help="folder for bias_curve.png / .md / .json")
    p.add_argument("--row", default="cpdo_ppdo_hfa", help="the DOEI row compared with the baseline")
    args = p.parse_args(argv)
    recs = collect([Path(f) for f in args.folders], args.row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "bias_curve.json", recs)
    atomic_write_text(out / "bias_curve.md", render(recs))
    figure(out / "bias_curve.png", recs)
    print(render(recs))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
