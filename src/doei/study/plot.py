"""Sweep figures: mIoU, FP and FN (seed mean ± std) against one DOEI knob, with the baseline as a band,
and ‖Δ‖/‖X‖ (patch tokens) and k per block printed beside each point."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from doei.study.grid import LOG_AXIS


def _xscale(ax, name: str, xs: Sequence[float]) -> None:
    if name in LOG_AXIS and all(x > 0 for x in xs):
        ax.set_xscale("log")
    elif name in LOG_AXIS and all(x <= 0 for x in xs):
        nz = [abs(x) for x in xs if x != 0]
        ax.set_xscale("symlog", linthresh=min(nz) if nz else 1.0)


def _point_note(stats: Sequence[Mapping]) -> str:
    """Per block (top to bottom) ``k p/c Δp%``: how much DOEI actually changed the tokens at this value."""
    rows = []
    for s in stats:
        k = "/".join("-" if s[key] is None else f"{s[key]:.0f}" for key in ("k_p2c", "k_c2c"))
        dp = s["delta_ratio_patch"] if s["delta_ratio_patch"] is not None else s["delta_ratio_cls"]
        rows.append(f"b{s['block']} k{k} {'-' if dp is None else f'{100 * dp:.0f}%'}")
    return "\n".join(rows)


def sweep_figure(path: Path, doc: Mapping) -> None:
    """Write ``path`` (PNG) for one parameter's sweep document (see :func:`doei.study.sweep.run_sweep`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name, points = doc["param"], doc["points"]
    categorical = name == "suppress"
    xs = list(range(len(points))) if categorical else [float(p["value"]) for p in points]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.9))
    base = doc["baseline"]["best_beta"]
    for ax, m in zip(axes, ("mIoU", "FP", "FN")):
        mu = [p["summary"]["best_beta"][m]["mean"] for p in points]
        sd = [p["summary"]["best_beta"][m]["std"] for p in points]
        ax.errorbar(xs, mu, yerr=sd, fmt="o-", color="tab:red", capsize=3, label="DOEI (seed mean ± std)")
        b, bs = base[m]["mean"], base[m]["std"]
        ax.axhline(b, color="tab:blue", lw=1.2, label="baseline (DOEI off)")
        ax.axhspan(b - bs, b + bs, color="tab:blue", alpha=0.12)
        if m == "mIoU":
            for x, y, p in zip(xs, mu, points):
                ax.annotate(_point_note(p["summary"]["block_stats"]), (x, y), textcoords="offset points",
                            xytext=(4, -6), fontsize=5, va="top", color="0.3")
        if categorical:
            ax.set_xticks(xs, [str(p["value"]) for p in points])
        else:
            _xscale(ax, name, xs)
        ax.set_xlabel(name + (" (K = first K blocks)" if name == "layers" else ""))
        ax.set_ylabel(_ylabel(doc, m))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    p = doc.get("pipeline")
    where = "" if p is None else f" ({p['score']} on {p['kind']} `{p['split']}`)"
    fig.suptitle(f"sweep of {name}{where}: {len(doc['seeds'])} seed(s); notes: k PPDO/CPDO and ‖Δ‖/‖X‖ of patch tokens "
                 "per block", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def _ylabel(doc: Mapping, m: str) -> str:
    """``mIoU (%) at best β``; a pipeline study names its scored row (``Seed mIoU``), without β for rows
    that have none (pseudo masks, segmentations)."""
    p = doc.get("pipeline")
    if p is None:
        return f"{m} (%) at best β"
    return f"{p['score']} {m} (%)" + (" at best β" if doc.get("fixed_beta") is not None else "")


def save_figure(fig, path: Path, dpi: int = 100) -> None:
    """Write a matplotlib figure as PNG atomically (nothing half-written) and close it."""
    import io

    import matplotlib.pyplot as plt

    from doei.utils.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def ablation_figure(path: Path, doc: Mapping) -> None:
    """Per Table-4 row: mIoU, FP, FN (best β) as the seed mean (dash) ± std and each seed as a dot; the
    baseline's mean as a dotted line (no bars: the axes do not start at 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["rows"].values() if r["seeds"]]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    xs = list(range(len(rows)))
    for ax, m in zip(axes, ("mIoU", "FP", "FN")):
        mu = [r["best_beta"][m]["mean"] for r in rows]
        sd = [r["best_beta"][m]["std"] for r in rows]
        ax.errorbar(xs, mu, yerr=sd, fmt="none", ecolor="0.4", capsize=4)
        ax.scatter(xs, mu, marker="_", s=300, c=["tab:blue"] + ["tab:red"] * (len(rows) - 1), zorder=3)
        ax.axhline(mu[0], color="tab:blue", lw=0.8, ls=":")
        for x, r in zip(xs, rows):
            vals = list(r["best_beta"][m]["per_seed"].values())
            ax.plot([x] * len(vals), vals, "k.", ms=4)
        lo = min(min(r["best_beta"][m]["per_seed"].values()) for r in rows)
        hi = max(max(r["best_beta"][m]["per_seed"].values()) for r in rows)
        ax.set_ylim(max(0.0, lo - 0.25 * (hi - lo + 1)), hi + 0.25 * (hi - lo + 1))
        ax.set_xticks(xs, [r["label"].replace(" (DOEI off)", "").replace(" + ", "+") for r in rows],
                      rotation=35, ha="right", fontsize=7)
        ax.set_ylabel(_ylabel(doc, m))
        ax.grid(axis="y", alpha=0.3)
    p = doc.get("pipeline")
    where = "on the synthetic benchmark" if p is None else f"{p['score']} on {p['kind']} `{p['split']}`"
    fig.suptitle(f"Table-4 grid {where}: seed mean (dash) ± std, dots = seeds ({doc['config']})", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
