"""The demo behind ``doei demo``: synthetic data → two trainings → CAMs → β sweep → the rest of the WSSS
pipeline (AffinityNet, DeepLab, multi-scale + CRF) for both → report.

Kept separate from the command module so tests and notebooks can call :func:`run_demo` directly.
Every stage reuses finished work in the output folder (the benchmark, a training checkpoint whose
config matches), so an interrupted demo picks up where it stopped.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from doei.errors import DoeiError

RUNS = ("baseline", "doei")
# --model -> (display name, config file per mode, CAM patch refinement by default). TS-CAM has no refinement
# (its map is cls attention x head map); TransCAM's CAM IS the patch-to-patch refined conv map, so it is on;
# MCTformer's is off (it smears the small model's CAMs onto background, docs/demo.md).
MODELS = {
    "mctformer": ("MCTformer-V2", {"default": "demo.yaml", "quick": "demo_quick.yaml"}, False),
    "tscam": ("TS-CAM", {"default": "demo_tscam.yaml", "quick": "demo_tscam_quick.yaml"}, False),
    "transcam": ("TransCAM", {"default": "demo_transcam.yaml", "quick": "demo_transcam_quick.yaml"}, True),
}
REFERENCES = ("all_background", "uniform_cam")


@dataclass
class DemoOptions:
    out: Path
    config: Path
    overrides: list[str] = field(default_factory=list)
    model: str = "mctformer"
    n_train: int = 3000
    n_val: int = 300
    seed: int = 0
    cam_layers: int = 3
    patch_refine: bool | None = None      # None: the model's default (MODELS)
    train_seed: int | None = None         # None: ``seed`` (the benchmark's seed)
    fresh: bool = False
    quick: bool = False
    betas: str = "0.05:0.95:0.05"
    overlay_classes: Sequence[str] = ()
    batch: int = 50
    pipeline: bool = True                 # stages after the CAMs (doei run) for both classifiers
    pipeline_config: Path | None = None   # None: configs/demo_pipeline[_quick].yaml next to ``config``
    pipeline_overrides: list[str] = field(default_factory=list)
    pipeline_train: int = 1000            # first N training images: Seed/Mask split, DeepLab's training set


class _Clock:
    """Wall and process-CPU seconds per stage (the CPU figure is robust to a shared machine)."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, float]] = {}

    def stage(self, name: str):
        clock = self

        class _Ctx:
            def __enter__(self):
                self.w, self.c = time.time(), time.process_time()
                print(f"\n== {name}", flush=True)

            def __exit__(self, *exc):
                clock.stages[name] = {"wall_s": round(time.time() - self.w, 1),
                                      "cpu_s": round(time.process_time() - self.c, 1)}

        return _Ctx()


# ----------------------------------------------------------------------------------- stages
def ensure_synth(root: Path, n_train: int, n_val: int, seed: int) -> dict:
    """Generate the benchmark at ``root`` unless a complete one with these parameters is there."""
    from doei.data.synth import SynthParams, params_from_meta, read_meta, write_synth

    params = SynthParams(seed=seed, n_train=n_train, n_val=n_val)
    if (root / "meta.json").is_file():
        meta = read_meta(root)
        if params_from_meta(meta) != params:
            raise DoeiError(f"{root}: holds a benchmark with other parameters; delete it or use another --out")
        print(f"reusing {root} ({n_train} train + {n_val} val images)")
        return meta
    from tqdm import tqdm

    with tqdm(total=n_train + n_val, desc="synth", unit="img", dynamic_ncols=True) as bar:
        return write_synth(root, params, workers=1, progress=bar.update)


def demo_configs(o: DemoOptions, synth_root: Path) -> dict:
    """The two TrainConfigs (DOEI off/on) from the demo config + overrides, on ``synth_root``."""
    from doei.config import apply_overrides, load_yaml
    from doei.train_config import train_config_from_dict

    out = {}
    for run in RUNS:
        d = apply_overrides(load_yaml(o.config), list(o.overrides))
        d.setdefault("data", {}).update({"kind": "synth", "root": str(synth_root)})
        d.setdefault("train", {}).update({"out_dir": str(o.out / "runs" / run),
                                          "seed": o.seed if o.train_seed is None else o.train_seed})
        d["doei"] = {**d.get("doei", {}), "enabled": run == "doei"}
        out[run] = train_config_from_dict(d, where=str(o.config))
    return out


def train_or_reuse(cfg, fresh: bool) -> dict:
    """Train (or resume / reuse a finished run with the same config); returns the last epoch record."""
    from doei.engine.checkpoint import load_checkpoint
    from doei.engine.train_cls import CHECKPOINT_NAME, train

    ckpt = Path(cfg.train.out_dir) / CHECKPOINT_NAME
    resume: bool | str = False
    if not fresh and ckpt.is_file():
        try:
            same = load_checkpoint(ckpt)["config"] == cfg.to_dict()
        except DoeiError:
            same = False
        resume = "auto" if same else False
    res = train(cfg, resume=resume, overwrite=fresh)
    if res.epochs_run == 0:
        print(f"reusing the finished run in {cfg.train.out_dir}")
    return res.final


def write_cams(checkpoint: Path, synth_root: Path, out_dir: Path, cam_layers: int, batch: int,
               patch_refine: bool = False) -> list[str]:
    """CAMs of the val split (scale 1 + flip, GT image labels) → ``out_dir/<id>.npz``; returns the ids.

    The model's own CAM source (``cam_source``) through :class:`CamExtractor`; the views' maps are summed,
    then ``relu`` and per-class min-max: TransCAM's "minmax" normalisation (:mod:`doei.cam.transcam`; the
    official one leaves hugely negative values). For MCTformer and TS-CAM the maps are already ≥ 0, so the
    ReLU changes nothing there.

    ``patch_refine`` is off by default: in the small from-scratch model the patch→patch attention summed
    over all blocks is dominated by a few background "sink" patches, and the official refinement then
    spreads every class over the background (docs/demo.md gives the measurement)."""
    from tqdm import tqdm

    from doei.cam.extractor import CamExtractor, minmax_labelled
    from doei.cam.io import save_cam
    from doei.data.build import build_dataset
    from doei.data.transforms import cam_transform
    from doei.engine.classifier import load_classifier

    model, _ = load_classifier(checkpoint)
    ext = CamExtractor(model, scales=(1.0,), flip=True, n_layers=min(cam_layers, model.depth),
                       patch_refine=patch_refine, normalize=False)
    ds = build_dataset("synth", synth_root, "val", transform=cam_transform())
    ids = ds.ids
    for s in tqdm(range(0, len(ds), batch), desc=f"CAMs {out_dir.name}", unit="batch", dynamic_ncols=True):
        items = [ds[i] for i in range(s, min(s + batch, len(ds)))]
        x = torch.stack([it[0] for it in items])
        y = torch.stack([it[1] for it in items])
        cams = minmax_labelled(torch.relu(ext(x, y)), y)              # [B, C, H, W] in [0, 1]
        for (_, lab, iid), cam in zip(items, cams):
            cls = torch.nonzero(lab > 0).flatten()
            save_cam(out_dir / f"{iid}.npz", cls.numpy(), cam[cls].numpy())
    return ids


def write_reference_cams(synth_root: Path, cam_root: Path) -> None:
    """The trivial references as CAM files, scored by the same evaluation as the models' CAMs:
    ``all_background`` (no class map: every pixel background at every β ≥ 0) and ``uniform_cam``
    (each labelled class = 1 everywhere: every pixel the lowest labelled class at every β < 1)."""
    from doei.cam.io import save_cam
    from doei.data.build import build_dataset

    ds = build_dataset("synth", synth_root, "val")
    for i, rec in enumerate(ds.records):
        h, w = ds.mask(i).shape
        cls = np.asarray(rec.classes, dtype=np.int64)
        save_cam(cam_root / "all_background" / f"{rec.id}.npz", np.zeros(0, np.int64), np.zeros((0, h, w), np.float16))
        save_cam(cam_root / "uniform_cam" / f"{rec.id}.npz", cls, np.ones((cls.size, h, w), np.float16))


def evaluate_cams(pred_dir: Path, synth_root: Path, ids: list[str], class_names: list[str], betas: str) -> dict:
    """``doei eval``'s numbers for one CAM folder: best-β mIoU/FP/FN (percent), β, and the sweep."""
    from doei.eval.betas import parse_betas
    from doei.eval.evaluate import evaluate_dirs
    from doei.eval.report import build_report

    counts = evaluate_dirs(pred_dir, synth_root / "SegmentationClass", ids, num_classes=len(class_names) + 1,
                           pred_type="cam", betas=parse_betas(betas), progress=True)
    rep = build_report(counts)
    return {"mIoU": rep["mIoU"], "FP": rep["FP"], "FN": rep["FN"], "beta": rep["beta"],
            "per_class_IoU": {(["background"] + list(class_names))[p["class"]]: p["IoU"] for p in rep["per_class"]},
            "sweep": rep["sweep"]}


PIPELINE_STAGES = ["train-cls", "cam", "refine", "train-seg", "infer-seg", "eval"]


def pipeline_split(synth_root: Path, n: int) -> str:
    """The first ``n`` training ids as the split ``train_first<n>`` (``ImageSets/Segmentation``), written once.

    The later stages work on this subset of the classifier's training images: its CAMs are the seeds
    (paper Table 1 "Seed"), AffinityNet turns them into pseudo masks ("Mask") and DeepLab trains on those."""
    from doei.utils.io import atomic_write_text

    ids = (synth_root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    if n < 1:
        raise DoeiError(f"--pipeline-train {n}: expected a positive number of training images")
    name = f"train_first{min(n, len(ids))}"
    path = synth_root / "ImageSets" / "Segmentation" / f"{name}.txt"
    text = "\n".join(ids[:n]) + "\n"
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)
    return name


def pipeline_yaml(o: DemoOptions) -> Path:
    """``--pipeline-config``, else ``demo_pipeline[_quick].yaml`` beside the training config."""
    return Path(o.pipeline_config or o.config.parent / f"demo_pipeline{'_quick' if o.quick else ''}.yaml")


def pipeline_config(o: DemoOptions, run: str, synth_root: Path, split: str, checkpoint: Path, patch_refine: bool):
    """The ``doei run`` config of one demo run: the pipeline YAML + ``--pipeline-set`` overrides, on the demo's
    benchmark and subset, with the demo's classifier (``run.cls_checkpoint``) and CAM read-out."""
    from doei.config import apply_overrides, load_yaml
    from doei.pipeline_config import pipeline_config_from_dict

    path = pipeline_yaml(o)
    if not path.is_file():
        raise DoeiError(f"{path}: pipeline config not found (pass --pipeline-config FILE or --no-pipeline)")
    d = apply_overrides(load_yaml(path), list(o.pipeline_overrides))
    d.setdefault("run", {}).update({"out_dir": str(o.out / "pipeline" / run), "cls_checkpoint": str(checkpoint),
                                    "stages": list(PIPELINE_STAGES)})
    d.setdefault("data", {}).update({"kind": "synth", "root": str(synth_root), "train_split": split,
                                     "val_split": "val"})
    from doei.engine.classifier import load_classifier

    depth = load_classifier(checkpoint)[0].depth                 # as write_cams: at most the model's depth
    d.setdefault("cam", {}).update({"n_layers": min(o.cam_layers, depth), "patch_refine": patch_refine})
    return pipeline_config_from_dict(d, where=str(path))


def run_pipeline_stages(cfg) -> dict:
    """``doei run`` for one config; returns ``{Seed|Mask|Seg|Seg+CRF: {mIoU, FP, FN, beta, split, images}}``.
    Finished stages are skipped (their markers hold the summaries), so a rerun only re-reads the table."""
    from doei.pipeline import run_pipeline

    res = run_pipeline(cfg)
    return {k: {"mIoU": v["mIoU"], "FP": v["FP"], "FN": v["FN"], "beta": v["beta"], "split": v["split"],
                "images": v["num_images"], "mean": v["mean_convention"]}
            for k, v in res["eval"]["results"].items()}


# ----------------------------------------------------------------------------------- figures
def figure_overlays(path: Path, synth_root: Path, cam_root: Path, class_names: list[str],
                    wanted: Sequence[str]) -> None:
    """Rows: one held-out image per wanted class; columns: image | baseline CAM | DOEI CAM | ground truth."""
    from doei.cam.io import load_cam
    from doei.cam.visualize import cam_overlay

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
    fig.tight_layout()
    _save_fig(fig, path)


def _figure_grid(synth_root: Path, class_names: list[str], wanted: Sequence[str], n_cols: int):
    """``(held-out dataset, rows of _pick_rows, figure, axes [rows, n_cols])``, or None when no wanted class
    occurs in the held-out split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from doei.data.build import build_dataset

    ds = build_dataset("synth", synth_root, "val")
    rows = _pick_rows(ds, class_names, wanted)
    if not rows:
        return None
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(2 * n_cols, 2.1 * len(rows)), squeeze=False)
    return ds, rows, fig, axes


def _blend_labels(image: np.ndarray, label: np.ndarray) -> np.ndarray:
    """VOC-palette colours of ``label`` [H, W] blended over ``image`` [H, W, 3] uint8."""
    from doei.cam.visualize import voc_palette

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
    for r, (_, _, i) in enumerate(rows):
        s = ds.sample(i)
        panels, titles = [s.image], [f"{s.id} ({', '.join(class_names[c] for c in s.classes)})"]
        for run, d in pred_dirs.items():
            panels.append(_blend_labels(s.image, np.asarray(Image.open(d / f"{s.id}.png"))))
            titles.append(f"{run}: segmentation")
        panels.append(_blend_labels(s.image, s.mask))
        titles.append("ground truth")
        _panel_row(axes[r], panels, titles)
    fig.tight_layout()
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

    from doei.utils.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------------- report
def render_report(metrics: dict) -> str:
    """``report.md``: the results table, what the numbers mean, settings and timings."""
    label = MODELS[metrics["settings"].get("family", "mctformer")][0]
    rows = [("all background", metrics["references"]["all_background"], None),
            ("uniform CAM", metrics["references"]["uniform_cam"], None),
            (f"{label} (baseline)", metrics["baseline"], metrics["baseline"]),
            (f"{label} + DOEI", metrics["doei"], metrics["doei"])]
    lines = [
        "# DOEI demo on the synthetic benchmark",
        "",
        f"Mode: {'quick' if metrics['settings']['quick'] else 'default'}; "
        f"{metrics['settings']['n_train']} training and {metrics['settings']['n_val']} held-out images "
        f"({metrics['settings']['synth_root']}). CAMs of the held-out split, evaluated against its masks "
        "with a background-threshold sweep (β = "
        f"{metrics['settings']['betas']}); each row reports its best β. Percent.",
        "",
        "| CAMs from | mIoU | FP | FN | best β | classifier mAP | classifier F1 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r, c in rows:
        cls = (f"{c['cls_mAP']:.1f} | {c['cls_F1']:.1f}" if c else "– | –")
        lines.append(f"| {name} | {r['mIoU']:.1f} | {r['FP']:.1f} | {r['FN']:.1f} | {r['beta']:.2f} | {cls} |")
    b, d = metrics["baseline"], metrics["doei"]
    refs = max(metrics["references"]["all_background"]["mIoU"], metrics["references"]["uniform_cam"]["mIoU"])
    lines += [
        "",
        f"DOEI − baseline: mIoU {d['mIoU'] - b['mIoU']:+.1f}, FP {d['FP'] - b['FP']:+.1f}, "
        f"FN {d['FN'] - b['FN']:+.1f} points. Baseline over the better trivial reference: "
        f"{b['mIoU'] - refs:+.1f} mIoU points.",
        "",
        "mIoU, FP and FN are means over all classes (background included) at the best β; FP + FN + IoU = 100 "
        "per class. The classifier columns are the model's image scores on the held-out split (per-class "
        "average precision; micro F1 at probability 0.5).",
        "",
        "![CAM overlays](figures/cam_overlays.png)",
        "",
        "![mIoU, FP, FN against beta](figures/beta_sweep.png)",
        "",
    ]
    if metrics.get("pipeline"):
        lines += _pipeline_section(metrics["pipeline"])
    lines += [
        "## Settings",
        "",
        f"- config: `{metrics['settings']['config']}`"
        + (f", overrides: `{' '.join(metrics['settings']['overrides'])}`" if metrics["settings"]["overrides"] else ""),
        f"- model: {metrics['settings']['model']}; epochs {metrics['settings']['epochs']}, batch "
        f"{metrics['settings']['batch_size']}, peak lr {metrics['settings']['peak_lr']:.3g}",
        "- CAMs: scale 1.0 + flip, " + _cam_description(metrics["settings"]) + ", ground-truth image labels, "
        "ReLU then per-class min-max",
        "",
        "## Time (wall / process CPU seconds)",
        "",
        "| stage | wall s | CPU s |",
        "|---|---:|---:|",
    ]
    for k, v in metrics["timings"].items():
        lines.append(f"| {k} | {v['wall_s']:.0f} | {v['cpu_s']:.0f} |")
    lines += ["", "Wall times depend on what else runs on the machine; CPU seconds are summed over threads.", ""]
    return "\n".join(lines)


PIPELINE_ROWS = ("Seed", "Mask", "Seg", "Seg+CRF")


def _pipeline_section(p: dict) -> list[str]:
    """The paper's Table 1/2 analogue: Seed and Mask on the training subset, Seg (+CRF) on the held-out split."""
    st = p["settings"]
    cols = [k for k in PIPELINE_ROWS if all(k in p[run] for run in RUNS)]
    split = lambda k: p["baseline"][k]["split"]  # noqa: E731
    lines = ["## The whole pipeline (paper Tables 1–2 analogue)", "",
             f"Each classifier's CAMs of the first {st['pipeline_train']} training images are the seeds (Seed, best "
             "β); AffinityNet trained on them turns them into pseudo masks by random walk (Mask); DeepLab-v1 "
             "(ResNet38) trained on those masks segments the held-out split, multi-scale + flip (Seg) and then "
             f"DenseCRF (Seg+CRF). Config `{st['config']}`"
             + (f", overrides `{' '.join(st['overrides'])}`" if st["overrides"] else "") + ". mIoU, percent; "
             "Seed/Mask average all classes (seed convention), Seg the classes present (segmentation convention).",
             "", "| run | " + " | ".join(f"{k} ({split(k)})" for k in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for run, label in (("baseline", "baseline"), ("doei", "+ DOEI")):
        lines.append(f"| {label} | " + " | ".join(f"{p[run][k]['mIoU']:.1f}" for k in cols) + " |")
    lines.append("| DOEI − baseline | "
                 + " | ".join(f"{p['doei'][k]['mIoU'] - p['baseline'][k]['mIoU']:+.1f}" for k in cols) + " |")
    lines += ["", "FP / FN (percent) per stage: "
              + "; ".join(f"{k}: baseline {p['baseline'][k]['FP']:.1f} / {p['baseline'][k]['FN']:.1f}, DOEI "
                          f"{p['doei'][k]['FP']:.1f} / {p['doei'][k]['FN']:.1f}" for k in cols) + ".",
              "", "![segmentations](figures/segmentation.png)", ""]
    return lines


def _cam_description(st: dict) -> str:
    family, refine = st.get("family", "mctformer"), st["patch_refine"]
    if family == "tscam":
        return "TS-CAM map (cls attention summed over all blocks x head map)"
    if family == "transcam":
        return ("TransCAM map (conv-branch CAM refined by the summed patch-to-patch attention)" if refine
                else "conv-branch CAM without attention refinement")
    return (f"fused class attention of the last {st['cam_layers']} blocks x ReLU(conv head), "
            f"{'with' if refine else 'without'} patch-affinity refinement")


# ----------------------------------------------------------------------------------- driver
def run_demo(o: DemoOptions) -> str:
    """Run every stage; write ``report.md``, ``metrics.json`` and the figures; return a short summary."""
    from doei.cam.io import load_cam  # noqa: F401  (fail early if the CAM module is missing)
    from doei.utils.io import atomic_write_json, atomic_write_text

    if o.model not in MODELS:
        raise DoeiError(f"--model {o.model!r}: expected one of {', '.join(MODELS)}")
    patch_refine = MODELS[o.model][2] if o.patch_refine is None else o.patch_refine
    o.out.mkdir(parents=True, exist_ok=True)
    clock = _Clock()
    t0 = time.time()
    n_stages = 6 if o.pipeline else 5
    synth_root = o.out / f"synth-{o.n_train}-{o.n_val}-s{o.seed}"
    with clock.stage(f"1/{n_stages} synthetic benchmark -> {synth_root}"):
        meta = ensure_synth(synth_root, o.n_train, o.n_val, o.seed)
    class_names = list(meta["classes"])
    cfgs = demo_configs(o, synth_root)
    cls_metrics = {}
    for i, run in enumerate(RUNS):
        with clock.stage(f"2/{n_stages} training {run} (DOEI {'on' if run == 'doei' else 'off'})"):
            last = train_or_reuse(cfgs[run], o.fresh)
        cls_metrics[run] = {"cls_mAP": last.get("val_mAP", float("nan")), "cls_F1": last.get("val_F1", float("nan")),
                            "cls_mAP_img": last.get("val_mAP_img", float("nan"))}
    cam_root = o.out / "cams"
    ids: list[str] = []
    with clock.stage(f"3/{n_stages} CAMs of the held-out split"):
        for run in RUNS:
            ids = write_cams(Path(cfgs[run].train.out_dir) / "checkpoint.pt", synth_root, cam_root / run,
                             o.cam_layers, o.batch, patch_refine)
        write_reference_cams(synth_root, cam_root)
    results = {}
    with clock.stage(f"4/{n_stages} evaluation (beta sweep)"):
        for name in (*RUNS, *REFERENCES):
            results[name] = evaluate_cams(cam_root / name, synth_root, ids, class_names, o.betas)
    pipeline: dict = {}
    if o.pipeline:
        split = pipeline_split(synth_root, o.pipeline_train)
        pcfgs = {run: pipeline_config(o, run, synth_root, split, Path(cfgs[run].train.out_dir) / "checkpoint.pt",
                                      patch_refine) for run in RUNS}
        for run in RUNS:
            with clock.stage(f"5/{n_stages} pipeline {run}: cam -> refine -> train-seg -> infer-seg -> eval"):
                pipeline[run] = run_pipeline_stages(pcfgs[run])
        pipeline["settings"] = {"config": str(pipeline_yaml(o)),
                                "overrides": list(o.pipeline_overrides), "pipeline_train": o.pipeline_train,
                                "split": split, "out": str(o.out / "pipeline")}
    with clock.stage(f"{n_stages}/{n_stages} figures and report"):
        fig_dir = o.out / "figures"
        figure_overlays(fig_dir / "cam_overlays.png", synth_root, cam_root, class_names, o.overlay_classes)
        figure_sweep(fig_dir / "beta_sweep.png", results)
        if o.pipeline:
            final = {run: Path(pcfgs[run].seg.infer.out_dir) / ("pred_crf" if pcfgs[run].seg.infer.crf else "pred")
                     for run in RUNS}
            figure_segmentation(fig_dir / "segmentation.png", synth_root, final, class_names, o.overlay_classes)
    c = cfgs["baseline"]
    metrics = {
        "baseline": {**results["baseline"], **cls_metrics["baseline"]},
        "doei": {**results["doei"], **cls_metrics["doei"], "doei_config": cfgs["doei"].doei},
        "references": {k: results[k] for k in REFERENCES},
        **({"pipeline": pipeline} if pipeline else {}),
        "settings": {"family": o.model, "train_seed": cfgs["baseline"].train.seed, "quick": o.quick, "n_train": o.n_train, "n_val": o.n_val, "seed": o.seed,
                     "synth_root": str(synth_root), "config": str(o.config), "overrides": list(o.overrides),
                     "model": c.model.name, "epochs": c.train.epochs, "batch_size": c.train.batch_size,
                     "peak_lr": c.peak_lr(), "cam_layers": o.cam_layers, "patch_refine": patch_refine, "betas": o.betas,
                     "threads": torch.get_num_threads()},
        "timings": {**clock.stages, "total": {"wall_s": round(time.time() - t0, 1),
                                              "cpu_s": round(sum(v["cpu_s"] for v in clock.stages.values()), 1)}},
    }
    atomic_write_json(o.out / "metrics.json", metrics)
    atomic_write_text(o.out / "report.md", render_report(metrics))
    b, d = metrics["baseline"], metrics["doei"]
    r = metrics["references"]
    tail = ""
    if pipeline:
        tail = "; pipeline mIoU " + ", ".join(
            f"{k} {pipeline['baseline'][k]['mIoU']:.1f} -> {pipeline['doei'][k]['mIoU']:.1f}"
            for k in PIPELINE_ROWS if k in pipeline["baseline"]) + " (baseline -> DOEI)"
    return (f"CAM mIoU / FP / FN (best beta): baseline {b['mIoU']:.1f} / {b['FP']:.1f} / {b['FN']:.1f}, "
            f"DOEI {d['mIoU']:.1f} / {d['FP']:.1f} / {d['FN']:.1f}; references: all background "
            f"{r['all_background']['mIoU']:.1f}, uniform CAM {r['uniform_cam']['mIoU']:.1f}; classifier mAP "
            f"baseline {b['cls_mAP']:.1f}, DOEI {d['cls_mAP']:.1f}" + tail)


__all__ = ["DemoOptions", "MODELS", "run_demo"]
