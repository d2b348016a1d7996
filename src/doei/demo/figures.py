"""The demo's figures: CAM overlays, segmentation panels and the β sweep (matplotlib, Agg backend)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from doei.cam.io import load_cam
from doei.cam.visualize import cam_overlay, voc_palette
from doei.data.build import build_dataset
from doei.demo.catalog import RUNS
from doei.utils.io import atomic_write_bytes


def figure_overlays(path: Path, synth_root: Path, cam_root: Path, class_names: list[str],
                    wanted: Sequence[str]) -> None:
    """Rows: one held-out image per wanted class; columns: image | baseline CAM | DOEI CAM | ground truth."""
    grid = _figure_grid(synth_root, class_names, wanted, 2 + len(RUNS))
    if grid is None:
        return
    ds, rows, fig, axes = grid
    for r, (name, k, i) in enumerate(rows):
        s = ds.sample(i)
        panels = [s.image]
        for run in RUNS:
            cls, cams = load_cam(cam_root / run / f"{s.id}.npz")
            cam = cams[list(cls).index(k)] if k in cls else np.zeros(s.image.shape[:2], np.float32)
            panels.append(cam_overlay(s.image, np.clip(cam, 0, 1), alpha=0.55))
        panels.append(_blend_labels(s.image, s.mask))
        titles = [f"{s.id} ({', '.join(class_names[c] for c in s.classes)})", f"baseline: {name}",
                  f"DOEI: {name}", "ground truth"]
        _panel_row(axes[r], panels, titles)
    _jet_colorbar(fig, axes)
    _label_legend(fig, [ds.sample(i).mask for _, _, i in rows], class_names)
    _save_fig(fig, path)


def _jet_colorbar(fig, axes) -> None:
    """A colour bar for the CAM overlays (jet, 0 = low, 1 = the class's highest value)."""
    import matplotlib

    sm = matplotlib.cm.ScalarMappable(cmap="jet", norm=matplotlib.colors.Normalize(0, 1))
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    cax = fig.add_axes((0.3, 0.07, 0.4, 0.01))
    cb = fig.colorbar(sm, cax=cax, orientation="horizontal")
    cb.set_label("CAM (each class min-max normalised)", fontsize=7)
    cb.ax.tick_params(labelsize=6)


def _label_legend(fig, masks, class_names: list[str]) -> None:
    """A legend of the label colours present in ``masks`` (background, classes, ignore) under the figure."""
    from matplotlib.patches import Patch

    present = sorted(set().union(*(set(np.unique(m).tolist()) for m in masks)))
    pal = voc_palette(256) / 255.0
    names = {0: "background", 255: "ignore"}
    handles = [Patch(facecolor=pal[v], edgecolor="k", label=names.get(v, class_names[v - 1] if 0 < v <= len(class_names)
                                                                        else str(v))) for v in present]
    fig.legend(handles=handles, loc="lower center", ncol=min(12, len(handles)), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, 0.0))


def _figure_grid(synth_root: Path, class_names: list[str], wanted: Sequence[str], n_cols: int):
    """``(held-out dataset, rows of _pick_rows, figure, axes [rows, n_cols])``, or None when no wanted class
    occurs in the held-out split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    ds = build_dataset("synth", synth_root, "val")
    rows = _pick_rows(ds, class_names, wanted)
    if not rows:
        return None
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(2 * n_cols, 2.1 * len(rows)), squeeze=False)
    return ds, rows, fig, axes


def _blend_labels(image: np.ndarray, label: np.ndarray) -> np.ndarray:
    """VOC-palette colours of ``label`` [H, W] blended over ``image`` [H, W, 3] uint8."""
    return (0.45 * image + 0.55 * voc_palette(256)[label]).astype(np.uint8)


def _pick_rows(ds, class_names: list[str], wanted: Sequence[str]) -> list[tuple[str, int, int]]:
    """``(class name, class index, image index)``: the first held-out image of each wanted class (no repeats)."""
    rows: list[tuple[str, int, int]] = []
    for name in wanted:
        if name not in class_names:
            continue
        k = class_names.index(name)
        used = {i for _, _, i in rows}
        hit = next((i for i, r in enumerate(ds.records) if k in r.classes and i not in used), None)
        if hit is not None:
            rows.append((name, k, hit))
    return rows


def _panel_row(axes, panels: list[np.ndarray], titles: list[str]) -> None:
    for ax, img, title in zip(axes, panels, titles):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title, fontsize=7)
        ax.axis("off")


def figure_segmentation(path: Path, synth_root: Path, pred_dirs: dict[str, Path], class_names: list[str],
                        wanted: Sequence[str]) -> None:
    """Rows: one held-out image per wanted class; columns: image | each run's final segmentation | ground
    truth (label colours blended over the image), as the paper's qualitative segmentation figure."""
    from PIL import Image

    grid = _figure_grid(synth_root, class_names, wanted, 2 + len(pred_dirs))
    if grid is None:
        return
    ds, rows, fig, axes = grid
    masks: list[np.ndarray] = []
    for r, (_, _, i) in enumerate(rows):
        s = ds.sample(i)
        panels, titles = [s.image], [f"{s.id} ({', '.join(class_names[c] for c in s.classes)})"]
        for run, d in pred_dirs.items():
            panels.append(_blend_labels(s.image, np.asarray(Image.open(d / f"{s.id}.png"))))
            titles.append(f"{run}: segmentation")
        panels.append(_blend_labels(s.image, s.mask))
        titles.append("ground truth")
        _panel_row(axes[r], panels, titles)
        masks += [s.mask] + [np.asarray(Image.open(d / f"{s.id}.png")) for d in pred_dirs.values()]
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    _label_legend(fig, masks, class_names)
    _save_fig(fig, path)


def figure_sweep(path: Path, results: dict) -> None:
    """mIoU, FP and FN (percent) against β for both runs and the two references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"baseline": ("tab:blue", "-"), "doei": ("tab:red", "-"),
              "all_background": ("0.55", ":"), "uniform_cam": ("0.35", "--")}
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, key in zip(axes, ("mIoU", "FP", "FN")):
        for name, res in results.items():
            b = [p["beta"] for p in res["sweep"]]
            v = [p[key] for p in res["sweep"]]
            color, ls = styles.get(name, ("k", "-"))
            ax.plot(b, v, ls, color=color, label=name, lw=1.6 if name in RUNS else 1.0)
        ax.set_xlabel("background threshold β")
        ax.set_ylabel(f"{key} (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    _save_fig(fig, path)


def _save_fig(fig, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt


    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------------- report
