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
        ax.set_ylabel(f"{m} (%) at best β")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"sweep of {name}: {len(doc['seeds'])} seed(s); notes: k PPDO/CPDO and ‖Δ‖/‖X‖ of patch tokens "
                 "per block", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig, path: Path, dpi: int = 100) -> None:
    """Write a matplotlib figure as PNG atomically (nothing half-written) and close it."""
    import io

    import matplotlib.pyplot as plt

    from doei.utils.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
