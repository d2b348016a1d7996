"""The demo behind ``doei demo``: synthetic data → two trainings → CAMs → β sweep → the rest of the WSSS
pipeline (AffinityNet, DeepLab, multi-scale + CRF) for both → report.

Kept separate from the command module so tests and notebooks can call :func:`run_demo` directly.
Every stage reuses finished work in the output folder (the benchmark, a training checkpoint whose
config matches), so an interrupted demo picks up where it stopped.
"""
from __future__ import annotations

import dataclasses
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from doei.cam.heldout import evaluate_cams, write_cams, write_reference_cams
from doei.config import apply_overrides, load_yaml, refuse_owned_overrides
from doei.data.benchmark import ensure_synth
from doei.demo.catalog import MODELS, REFERENCES, RUNS, TIMED_STAGES
from doei.demo.ceilings import ORACLE_STRIDE, run_ceilings, run_pipeline_stages
from doei.demo.figures import figure_overlays, figure_segmentation, figure_sweep
from doei.demo.report import PIPELINE_ROWS, render_report
from doei.engine.checkpoint import CHECKPOINT_NAME, load_checkpoint
from doei.engine.classifier import load_classifier
from doei.engine.train_cls import train
from doei.errors import DoeiError
from doei.pipeline_config import STAGES, pipeline_config_from_dict
from doei.train_config import train_config_from_dict
from doei.utils.device import resolve_device
from doei.utils.io import atomic_write_json, atomic_write_text
from doei.utils.jobs import job_threads, run_jobs



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
    pipeline_config: Path | None = None   # None: pipeline_yaml() (demo_pipeline[_quick][_px<N>].yaml)
    pipeline_overrides: list[str] = field(default_factory=list)
    pipeline_train: int = 1000            # first N training images: Seed/Mask split, DeepLab's training set
    ceilings: bool = False                # also the ceiling rows (doei.demo.ceilings: stages started from the truth)
    pipeline_px: int = 128                # image side of the pipeline's benchmark (default_pipeline_px)
    jobs: int = 1                         # baseline and DOEI side by side in this many processes (utils.jobs)


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished child processes (parallel jobs, CRF pools)."""
    return time.process_time() + sum(getattr(resource.getrusage(resource.RUSAGE_CHILDREN), f)
                                     for f in ("ru_utime", "ru_stime"))


class _Clock:
    """Wall and CPU seconds per stage (the CPU figure, this process and its children, is robust to a
    shared machine), recorded under the stage's key (:data:`doei.demo.catalog.TIMED_STAGES`); ``name`` is the
    header printed."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, float]] = {}

    def stage(self, key: str, name: str):
        if key not in TIMED_STAGES:
            raise ValueError(f"key: {key!r} is not a demo stage ({list(TIMED_STAGES)})")
        clock = self

        class _Ctx:
            def __enter__(self):
                self.w, self.c = time.time(), _cpu_seconds()
                print(f"\n== {name}", flush=True)

            def __exit__(self, *exc):
                clock.stages[key] = {"wall_s": round(time.time() - self.w, 1),
                                      "cpu_s": round(_cpu_seconds() - self.c, 1)}

        return _Ctx()


# ----------------------------------------------------------------------------------- stages
def demo_configs(o: DemoOptions, synth_root: Path) -> dict:
    """The two TrainConfigs (DOEI off/on) from the demo config + overrides, on ``synth_root``."""
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
    """Train (or resume / reuse a run with the same config); returns the last epoch record. A run made with
    other settings is refused in one line naming the first settings that differ (``--fresh`` replaces it)."""
    ckpt = Path(cfg.train.out_dir) / CHECKPOINT_NAME
    resume: bool | str = False
    if not fresh and ckpt.is_file():
        try:
            stored = load_checkpoint(ckpt)["config"]
        except DoeiError as e:
            raise DoeiError(f"{e}; pass --fresh to retrain (replaces it)") from None
        if stored != cfg.to_dict():
            diff = _differing_keys(stored, cfg.to_dict())
            raise DoeiError(f"{ckpt}: a training run made with other settings ({', '.join(diff[:3])}"
                            f"{', …' if len(diff) > 3 else ''}); rerun with those settings, or pass --fresh to "
                            "retrain (replaces it)")
        resume = "auto"
    res = train(cfg, resume=resume, overwrite=fresh)
    if res.epochs_run == 0:
        print(f"reusing the finished run in {cfg.train.out_dir}")
    return res.final


def _differing_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested config dicts, each as
    ``"train.epochs: 1 there, 2 now"`` (``a`` = the stored run's, ``b`` = this one's)."""
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differing_keys(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}: {x!r} there, {y!r} now")
    return out


PIPELINE_STAGES = list(STAGES)   # the demo runs every stage of doei run


def pipeline_split(synth_root: Path, n: int) -> str:
    """The first ``n`` training ids as the split ``train_first<n>`` (``ImageSets/Segmentation``), written once.

    The later stages work on this subset of the classifier's training images: its CAMs are the seeds
    (paper Table 1 "Seed"), AffinityNet turns them into pseudo masks ("Mask") and DeepLab trains on those."""
    ids = (synth_root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    if n < 1:
        raise DoeiError(f"--pipeline-train {n}: expected a positive number of training images")
    name = f"train_first{min(n, len(ids))}"
    path = synth_root / "ImageSets" / "Segmentation" / f"{name}.txt"
    text = "\n".join(ids[:n]) + "\n"
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)
    return name


def pipeline_benchmark(o: DemoOptions, synth_root: Path, size: int) -> tuple[Path, str]:
    """``(root, split)`` the later stages run on: the first ``pipeline_train`` training scenes and the held-out
    ones, rendered at ``pipeline_px``. At the classifier's own size that is a split of the demo's benchmark;
    at another size, a second benchmark with the same seed (the generator draws each scene from ``(seed,
    split, index)`` and renders it at the size asked, so these are the same scenes, e.g. twice as fine at
    128 px: AffinityNet's stride-8 grid is then finer than the classifier's 8-px token grid, as DeiT's
    patch 16 is in the paper's setting; docs/demo.md)."""
    if o.pipeline_px == size:
        return synth_root, pipeline_split(synth_root, o.pipeline_train)
    root = o.out / f"synth-{o.pipeline_train}-{o.n_val}-s{o.seed}-px{o.pipeline_px}"
    ensure_synth(root, o.pipeline_train, o.n_val, o.seed, {"size": o.pipeline_px})
    return root, "train"


def pipeline_yaml(o: DemoOptions) -> Path:
    """``--pipeline-config``, else ``demo_pipeline[_quick][_px<N>].yaml`` beside the training config (no
    ``_px`` part for the mode's default size: 128 px, quick 64)."""
    if o.pipeline_config:
        return Path(o.pipeline_config)
    px = "" if o.pipeline_px == default_pipeline_px(o.quick) else f"_px{o.pipeline_px}"
    return o.config.parent / f"demo_pipeline{'_quick' if o.quick else ''}{px}.yaml"


# keys the demo sets itself: a --set / --pipeline-set of one would be silently replaced, so it is refused
DEMO_SETS = ("data.kind", "data.root", "train.out_dir", "train.seed", "doei.enabled")
DEMO_PIPELINE_SETS = ("run.out_dir", "run.cls_checkpoint", "run.stages", "data.kind", "data.root", "data.train_split",
                      "data.val_split", "cam.n_layers", "cam.patch_refine")


def check_pipeline_config(o: DemoOptions) -> None:
    """Parse the training and pipeline configs and their overrides before any work (a missing file, a bad key
    or value, a key the demo sets itself is one line naming it, and nothing is written); flags of the
    pipeline given with ``--no-pipeline`` are refused."""
    refuse_owned_overrides(list(o.overrides), DEMO_SETS, "--set", "use --out, --seed/--train-seed")
    refuse_owned_overrides(list(o.pipeline_overrides), DEMO_PIPELINE_SETS, "--pipeline-set",
                       "use --out, --pipeline-train, --cam-layers, --patch-refine")
    if not Path(o.config).is_file():
        raise DoeiError(f"--config {o.config}: file not found")
    d = apply_overrides(load_yaml(o.config), list(o.overrides))
    d.setdefault("data", {}).update({"kind": "synth", "root": str(Path(o.out) / "synth")})
    d.setdefault("train", {})["out_dir"] = str(Path(o.out) / "runs" / "baseline")
    resolve_device(train_config_from_dict(d, where=str(o.config)).train.device, "train.device")
    if not o.pipeline:
        given = [f for f, v in (("--ceilings", o.ceilings), ("--pipeline-config", o.pipeline_config),
                                ("--pipeline-set", o.pipeline_overrides)) if v]
        if given:
            raise DoeiError(f"{given[0]} acts on the pipeline, which --no-pipeline skips; drop one of them")
        return
    path = pipeline_yaml(o)
    if not path.is_file():
        raise DoeiError(f"{path}: pipeline config not found (pass --pipeline-config FILE or --no-pipeline)")
    cfg = pipeline_config_from_dict(apply_overrides(load_yaml(path), list(o.pipeline_overrides)), where=str(path))
    for key, dev in (("run.device", cfg.run.device), ("refine.train.device", cfg.refine.train.device),
                     ("refine.infer.device", cfg.refine.infer.device), ("seg.train.device", cfg.seg.train.device),
                     ("seg.infer.device", cfg.seg.infer.device)):
        resolve_device(dev, f"{path}: {key}")


def default_pipeline_px(quick: bool) -> int:
    """The pipeline benchmark's image side: 128 px (a stride-8 affinity grid twice as fine as the CAMs');
    ``--quick``: the classifier's 64 px (a smoke test of the stages, not of what they add)."""
    return 64 if quick else 128


def _side_by_side(jobs: int) -> str:
    return f" [{jobs} processes side by side]" if jobs > 1 else ""


def pipeline_config(o: DemoOptions, run: str, synth_root: Path, split: str, checkpoint: Path, patch_refine: bool):
    """The ``doei run`` config of one demo run: the pipeline YAML + ``--pipeline-set`` overrides, on the demo's
    benchmark and subset, with the demo's classifier (``run.cls_checkpoint``) and CAM read-out."""
    path = pipeline_yaml(o)
    if not path.is_file():
        raise DoeiError(f"{path}: pipeline config not found (pass --pipeline-config FILE or --no-pipeline)")
    d = apply_overrides(load_yaml(path), list(o.pipeline_overrides))
    d.setdefault("run", {}).update({"out_dir": str(o.out / "pipeline" / run), "cls_checkpoint": str(checkpoint),
                                    "stages": list(PIPELINE_STAGES)})
    d.setdefault("data", {}).update({"kind": "synth", "root": str(synth_root), "train_split": split,
                                     "val_split": "val"})

    model = load_classifier(checkpoint)[0]          # as write_cams: at most its depth, the options its CAMs read
    wanted = {"n_layers": min(o.cam_layers, model.depth), "patch_refine": patch_refine}
    cam = d.setdefault("cam", {})
    for k in wanted:                    # the demo's one pipeline recipe serves every family: it keeps only
        cam.pop(k, None)                # the CAM options this family reads (TS-CAM reads neither)
    cam.update({k: v for k, v in wanted.items() if k in model.cam_options})
    return pipeline_config_from_dict(d, where=str(path))


def run_demo(o: DemoOptions) -> str:
    """Run every stage; write ``report.md``, ``metrics.json`` and the figures; return a short summary."""
    if o.model not in MODELS:
        raise DoeiError(f"--model {o.model!r}: expected one of {', '.join(MODELS)}")
    patch_refine = MODELS[o.model][2] if o.patch_refine is None else o.patch_refine
    # absolute paths in every config: `--out demo_out` and `--out $PWD/demo_out` are the same runs
    o = dataclasses.replace(o, out=o.out.resolve(), config=o.config.resolve())
    o.out.mkdir(parents=True, exist_ok=True)
    clock = _Clock()
    t0 = time.time()
    n_stages = 6 if o.pipeline else 5
    synth_root = o.out / f"synth-{o.n_train}-{o.n_val}-s{o.seed}"
    with clock.stage("benchmark", f"1/{n_stages} synthetic benchmark -> {synth_root}"):
        meta = ensure_synth(synth_root, o.n_train, o.n_val, o.seed)
    class_names = list(meta["classes"])
    cfgs = demo_configs(o, synth_root)
    threads = job_threads(o.jobs)
    cls_metrics = {}
    with clock.stage("training", f"2/{n_stages} training baseline (DOEI off) and doei (DOEI on)"
                                 f"{_side_by_side(o.jobs)}"):
        finals = run_jobs([(train_or_reuse, (cfgs[run], o.fresh)) for run in RUNS], o.jobs, threads)
    for run, last in zip(RUNS, finals):
        cls_metrics[run] = {"cls_mAP": last.get("val_mAP", float("nan")), "cls_F1": last.get("val_F1", float("nan")),
                            "cls_mAP_img": last.get("val_mAP_img", float("nan"))}
    cam_root = o.out / "cams"
    ids: list[str] = []
    with clock.stage("cams", f"3/{n_stages} CAMs of the held-out split"):
        for run in RUNS:
            ids = write_cams(Path(cfgs[run].train.out_dir) / "checkpoint.pt", synth_root, cam_root / run,
                             o.cam_layers, o.batch, patch_refine, overwrite=o.fresh)
        write_reference_cams(synth_root, cam_root)
    results = {}
    with clock.stage("evaluation", f"4/{n_stages} evaluation (beta sweep)"):
        for name in (*RUNS, *REFERENCES):
            results[name] = evaluate_cams(cam_root / name, synth_root, ids, class_names, o.betas)
    pipeline: dict = {}
    proot = synth_root
    if o.pipeline:
        with clock.stage("pipeline_benchmark", f"5/{n_stages} pipeline benchmark ({o.pipeline_px} px)"):
            proot, split = pipeline_benchmark(o, synth_root, int(meta["params"]["size"]))
        stride = ORACLE_STRIDE * o.pipeline_px // int(meta["params"]["size"])   # the token grid at this size
        pcfgs = {run: pipeline_config(o, run, proot, split, Path(cfgs[run].train.out_dir) / "checkpoint.pt",
                                      patch_refine) for run in RUNS}
        with clock.stage("pipeline", f"5/{n_stages} pipeline baseline and doei: cam -> refine -> train-seg -> "
                                     "infer-seg -> eval"
                         f"{_side_by_side(o.jobs)}"):
            tables = run_jobs([(run_pipeline_stages, (pcfgs[run],)) for run in RUNS], o.jobs, threads)
        pipeline.update(zip(RUNS, tables))
        if o.ceilings:
            with clock.stage("ceilings", f"5/{n_stages} pipeline ceilings: true seeds -> random walk, true masks "
                                         "-> DeepLab"
                             f"{_side_by_side(o.jobs)}"):
                pipeline["ceilings"] = run_ceilings(pcfgs["baseline"], o.out / "pipeline", stride, o.jobs, threads)
        pipeline["settings"] = {"config": str(pipeline_yaml(o)), "px": o.pipeline_px, "root": str(proot),
                                "oracle_stride": stride,
                                "overrides": list(o.pipeline_overrides), "pipeline_train": o.pipeline_train,
                                "split": split, "out": str(o.out / "pipeline")}
    with clock.stage("report", f"{n_stages}/{n_stages} figures and report"):
        fig_dir = o.out / "figures"
        figure_overlays(fig_dir / "cam_overlays.png", synth_root, cam_root, class_names, o.overlay_classes)
        figure_sweep(fig_dir / "beta_sweep.png", results)
        if o.pipeline:
            final = {run: Path(pcfgs[run].seg.infer.out_dir) / ("pred_crf" if pcfgs[run].seg.infer.crf else "pred")
                     for run in RUNS}
            figure_segmentation(fig_dir / "segmentation.png", proot, final, class_names, o.overlay_classes)
    c = cfgs["baseline"]
    metrics = {
        "baseline": {**results["baseline"], **cls_metrics["baseline"]},
        "doei": {**results["doei"], **cls_metrics["doei"], "doei_config": dataclasses.asdict(cfgs["doei"].doei)},
        "references": {k: results[k] for k in REFERENCES},
        **({"pipeline": pipeline} if pipeline else {}),
        "settings": {"family": o.model, "train_seed": cfgs["baseline"].train.seed, "quick": o.quick, "n_train": o.n_train, "n_val": o.n_val, "seed": o.seed,
                     "synth_px": int(meta["params"]["size"]),
                     "synth_root": str(synth_root), "config": str(o.config), "overrides": list(o.overrides),
                     "model": c.model.name, "epochs": c.train.epochs, "batch_size": c.train.batch_size,
                     "peak_lr": c.peak_lr(), "cam_layers": o.cam_layers, "patch_refine": patch_refine, "betas": o.betas,
                     "threads": torch.get_num_threads(), "jobs": o.jobs, "threads_per_job": threads},
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


__all__ = ["DemoOptions", "MODELS", "RUNS", "run_demo", "demo_configs", "train_or_reuse", "pipeline_split",
           "pipeline_benchmark", "check_pipeline_config", "pipeline_config", "pipeline_yaml", "default_pipeline_px", "run_pipeline_stages"]
