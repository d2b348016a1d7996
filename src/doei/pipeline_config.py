"""Config of the stage-2/3 pipeline (refine, train-seg, infer-seg) and of ``doei run``: strict dataclasses.

One YAML file serves every stage command (``doei refine train|infer``, ``doei train-seg``,
``doei infer-seg``) and ``doei run``; each command reads the sections it needs::

    run:        {out_dir, stages, cls_checkpoint, device, seed, progress}
    data:       {kind, root, train_split, val_split, num_classes, labels_file, mask_dir, gt_source}
    classifier: a TrainConfig mapping (doei train-cls; data/out_dir filled in by doei run)
    cam:        a CamConfig mapping (doei cam; model/data/split filled in by doei run)
    refine:     {train: RefineTrainSection, infer: RefineInferSection}
    seg:        {train: SegTrainSection, infer: SegInferSection}
    eval:       {seed_betas, workers}

Paths left empty (``null``) default to folders under ``run.out_dir`` (:func:`resolve_paths`), so a
``doei run`` config names only the dataset. Defaults are the official recipes (docs/pipeline.md):
AffinityNet = PSA ``train_aff.py`` for ResNet38 (crop 448, batch 8, 8 epochs, lr 0.1, poly 0.9,
×2/×10/×20 for biases/new layers, weight decay 5e-4 on weights), random walk = MCTformer
``infer_aff.py`` (background 0.39, β 8, logt 6), DeepLab = MCTformer ``seg/train_seg.py`` +
``run_seg.sh`` (crop 321, batch 4, 30 epochs, lr 7e-4, ×10 head, scale 0.7–1.3, flip), inference
= ``infer_seg.py`` scales (0.5, 0.75, 1.0, 1.25, 1.5) + DenseCRF ``crf_inference_inf``.
The official ``PolyOptimizer`` passes its weight decay positionally into ``torch.optim.SGD``'s
*momentum* slot, so the official runs use momentum = weight-decay value (5e-4 / 1e-5, i.e. almost
none); the ``momentum`` defaults reproduce that, see docs/pipeline.md.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

from doei.config import apply_overrides, from_dict, load_yaml
from doei.data.build import DatasetKind
from doei.errors import DoeiError

STAGES: tuple[str, ...] = ("train-cls", "cam", "refine", "train-seg", "infer-seg", "eval")


@dataclass
class RunSection:
    """``doei run`` settings. ``cls_checkpoint``: use this classifier checkpoint (train-cls is skipped)."""

    out_dir: str = "runs/pipeline"
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    cls_checkpoint: Optional[str] = None
    device: str = "auto"
    seed: int = 0
    progress: bool = True
    # smoke mode (docs/pipeline.md, "Smoke mode"): every stage at the config's own sizes, capped at `smoke`
    # optimiser steps and `smoke` images per stage, random init (no pretrained files); per-stage wall seconds,
    # s/step or s/image and peak memory in <out_dir>/smoke.json. Never a result: a real run refuses its folder
    smoke: Optional[int] = None
    smoke_batch: Optional[int] = None           # smoke only: this batch for the three training stages (default: theirs)


@dataclass
class PipelineData:
    """The dataset every stage reads (``kind``/``root`` as :func:`doei.data.build.build_dataset`).

    ``num_classes`` counts FOREGROUND classes (20 VOC, 80 COCO); label maps use 0..num_classes.
    """

    kind: DatasetKind = "voc"              # a registered kind (doei.data.build.dataset_kinds)
    root: str = ""
    train_split: str = "train_aug"
    val_split: str = "val"
    num_classes: int = 20
    labels_file: Optional[str] = None
    mask_dir: Optional[str] = None
    # COCO only: the ground truth the eval reads - "stuff" (COCO-Stuff stuffthingmaps, root/SegmentationClassStuff/
    # <split>, the paper's: doei coco-masks --source stuff) or "instances" (rasterised polygons, root/
    # SegmentationClass/<split>); unset: SegmentationClass/<split> unchecked, as before the key existed
    gt_source: Optional[Literal["instances", "stuff"]] = None
    options: dict[str, Any] = field(default_factory=dict)   # the loader's other declared options (any key)

    EXTRA_KEYS: ClassVar[str] = "options"   # unknown keys are dataset options (doei.config.from_dict)


@dataclass
class LoopSettings:
    """Settings every SGD training stage shares (seeding, device, loader, logging)."""

    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    log_every: int = 10
    deterministic: bool = True
    progress: bool = True
    # the official recipes use SGD (from ImageNet weights); AdamW (momentum ignored, decoupled weight decay)
    # is what trains these ResNet38 nets from scratch on the synthetic benchmark (docs/pipeline.md)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    # under DDP, BatchNorm layers in training mode normalise over the global batch, as one process does (and as
    # TransCAM's one-GPU DeepLab, deeplab/config.py GPUS 1); no effect with one process or frozen BatchNorm
    sync_bn: bool = True


@dataclass
class RefineTrainSection(LoopSettings):
    """AffinityNet training on affinity labels from CAM seeds (PSA ``train_aff.py``)."""

    model: str = "psa_resnet38_aff"
    model_options: dict[str, Any] = field(default_factory=dict)
    init_weights: Optional[str] = None          # e.g. converted ImageNet / PSA cls ResNet38 weights (strict=False)
    cam_dir: Optional[str] = None               # default <run>/cam
    split: Optional[str] = None                 # default data.train_split
    out_dir: Optional[str] = None               # default <run>/refine
    low_alpha: float = 1.0                      # MCTformer run_psa.sh (CRF alphas 1 / 12); PSA: 4 / 32
    high_alpha: float = 12.0
    crf: bool = True                            # CRF-refine both score stacks (official); cached once per image
    crop_size: int = 448
    batch_size: int = 8
    epochs: int = 8
    lr: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = 5e-4                      # official effective value (see module docstring)
    power: float = 0.9
    color_jitter: list[float] = field(default_factory=lambda: [0.3, 0.3, 0.3, 0.1])
    hflip: bool = True
    radius: int = 5
    # processes computing the CRF seed-score cache (0 = in this process); a runtime setting (same files
    # whatever the count). ~1.1 s per VOC image serially, so ~3 h over train_aug on one core
    crf_workers: int = 0


@dataclass
class RefineInferSection:
    """Random walk of CAMs over predicted affinities → pseudo-mask PNGs (``infer_aff.py``)."""

    checkpoint: Optional[str] = None            # default <refine.train.out_dir>/checkpoint.pt
    model: Optional[str] = None                 # default refine.train.model (+ its model_options)
    cam_dir: Optional[str] = None
    split: Optional[str] = None                 # default data.train_split
    out_dir: Optional[str] = None               # default <run>/pseudo
    bg_mode: Literal["constant", "power"] = "constant"   # MCTformer; PSA: power
    bg_threshold: float = 0.39
    alpha: float = 16.0
    beta: float = 8.0
    logt: int = 6                               # MCTformer; PSA: 8
    overlays: bool = False                      # also write overlay/<id>.png: image | pseudo mask, with a legend
    device: str = "auto"
    progress: bool = True


@dataclass
class SegTrainSection(LoopSettings):
    """DeepLab-v1 ResNet38 on pseudo masks (MCTformer ``seg/train_seg.py`` + ``run_seg.sh``)."""

    model: str = "deeplab_resnet38"
    model_options: dict[str, Any] = field(default_factory=dict)
    init_weights: Optional[str] = None
    pseudo_dir: Optional[str] = None            # default <run>/pseudo
    split: Optional[str] = None                 # default data.train_split
    out_dir: Optional[str] = None               # default <run>/seg
    crop_size: int = 321
    batch_size: int = 4
    epochs: int = 30
    lr: float = 7e-4
    head_lr_mult: float = 10.0
    weight_decay: float = 0.0                   # official effective value (see module docstring)
    momentum: float = 1e-5                      # official effective value
    power: float = 0.9
    scale_range: list[float] = field(default_factory=lambda: [0.7, 1.3])
    hflip: bool = True
    pad_label: int = 255                        # official pads the label crop with 0 (background)
    # an oracle / ceiling run: train on a copy of the ground-truth masks (refused unless true; it does not change
    # what a run computes, only whether pseudo_dir may hold ground truth, so it is not part of the stage fingerprint)
    allow_ground_truth: bool = False


@dataclass
class SegInferSection:
    """Multi-scale (+flip) inference, DenseCRF in worker processes, PNGs + colour overlays."""

    checkpoint: Optional[str] = None            # default <seg.train.out_dir>/checkpoint.pt
    model: Optional[str] = None                 # default seg.train.model (+ its model_options)
    split: Optional[str] = None                 # default data.val_split
    out_dir: Optional[str] = None               # default <run>/seg_pred
    scales: list[float] = field(default_factory=lambda: [0.5, 0.75, 1.0, 1.25, 1.5])
    flip: bool = True
    crf: bool = True
    crf_gauss_sxy: float = 4.0
    crf_gauss_compat: float = 3.0
    crf_bi_sxy: float = 83.0
    crf_bi_srgb: float = 5.0
    crf_bi_compat: float = 3.0
    crf_iterations: int = 10
    crf_workers: int = 2
    overlays: bool = True
    device: str = "auto"
    progress: bool = True


@dataclass
class RefineSection:
    train: RefineTrainSection = field(default_factory=RefineTrainSection)
    infer: RefineInferSection = field(default_factory=RefineInferSection)


@dataclass
class SegSection:
    train: SegTrainSection = field(default_factory=SegTrainSection)
    infer: SegInferSection = field(default_factory=SegInferSection)


@dataclass
class EvalSection:
    """What ``doei run``'s eval stage scores (seed CAMs over a β sweep, pseudo masks, segmentation)."""

    seed_betas: list[float] = field(default_factory=lambda: [round(0.05 * i, 2) for i in range(1, 20)])
    # the split the Seed and Mask rows are scored on (null = data.train_split); its ids must have CAMs and
    # pseudo masks, i.e. be part of the split those stages ran on. The baselines score seeds and pseudo masks
    # on VOC `train` (1,464 images; MCTformer run.sh `--list voc12/train_id.txt`, DOEI Table 1)
    train_split: Optional[str] = None
    workers: Optional[int] = None               # evaluation processes; null = the CPU cores available


@dataclass
class PipelineConfig:
    run: RunSection = field(default_factory=RunSection)
    data: PipelineData = field(default_factory=PipelineData)
    classifier: dict[str, Any] = field(default_factory=dict)
    cam: dict[str, Any] = field(default_factory=dict)
    refine: RefineSection = field(default_factory=RefineSection)
    seg: SegSection = field(default_factory=SegSection)
    eval: EvalSection = field(default_factory=EvalSection)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if not d["data"]["options"]:          # as configs without dataset options were always recorded
            del d["data"]["options"]
        return d

    def validate(self, where: str = "config") -> "PipelineConfig":
        """Range checks the types cannot express; one-line DoeiError naming the key."""
        rt, ri, st, si = self.refine.train, self.refine.infer, self.seg.train, self.seg.infer
        order = [STAGES.index(s) for s in self.run.stages if s in STAGES]  # must increase: no repeats, no reordering
        checks = [
            (self.data.num_classes >= 1, "data.num_classes", self.data.num_classes, ">= 1"),
            (self.data.gt_source is None or self.data.kind == "coco", "data.gt_source", self.data.gt_source,
             "unset unless data.kind is coco (it picks COCO's ground truth)"),
            (all(s in STAGES for s in self.run.stages), "run.stages", self.run.stages, f"names from {list(STAGES)}"),
            (bool(self.run.stages), "run.stages", self.run.stages, f"at least one stage of {list(STAGES)}"),
            (all(a < b for a, b in zip(order, order[1:])), "run.stages", self.run.stages,
             f"each stage once, in the pipeline's order {list(STAGES)} (they run in that order)"),
            (rt.crop_size >= 72 and rt.crop_size % 8 == 0, "refine.train.crop_size", rt.crop_size,
             "a multiple of 8, >= 72 (the stride-8 grid must fit the radius-5 pairs)"),
            (rt.batch_size >= 1, "refine.train.batch_size", rt.batch_size, ">= 1"),
            (rt.epochs >= 1, "refine.train.epochs", rt.epochs, ">= 1"),
            (rt.lr > 0, "refine.train.lr", rt.lr, "> 0"),
            (rt.weight_decay >= 0, "refine.train.weight_decay", rt.weight_decay, ">= 0"),
            (0 <= rt.momentum < 1, "refine.train.momentum", rt.momentum, "in [0, 1)"),
            (0 < rt.low_alpha < rt.high_alpha, "refine.train.low_alpha/high_alpha", [rt.low_alpha, rt.high_alpha],
             "0 < low_alpha < high_alpha"),
            (len(rt.color_jitter) == 4 and all(v >= 0 for v in rt.color_jitter) and rt.color_jitter[3] <= 0.5,
             "refine.train.color_jitter", rt.color_jitter, "[brightness, contrast, saturation, hue] >= 0, hue <= 0.5"),
            (rt.radius >= 2, "refine.train.radius", rt.radius, ">= 2"),
            (rt.num_workers >= 0 and rt.log_every >= 1, "refine.train.num_workers/log_every",
             [rt.num_workers, rt.log_every], ">= 0 / >= 1"),
            (ri.beta > 0, "refine.infer.beta", ri.beta, "> 0"),
            (0 <= ri.logt <= 12, "refine.infer.logt", ri.logt, "in 0..12"),
            (st.crop_size >= 16, "seg.train.crop_size", st.crop_size, ">= 16"),
            (st.batch_size >= 1, "seg.train.batch_size", st.batch_size, ">= 1"),
            (st.epochs >= 1, "seg.train.epochs", st.epochs, ">= 1"),
            (st.lr > 0 and st.head_lr_mult > 0, "seg.train.lr/head_lr_mult", [st.lr, st.head_lr_mult], "> 0"),
            (st.weight_decay >= 0, "seg.train.weight_decay", st.weight_decay, ">= 0"),
            (0 <= st.momentum < 1, "seg.train.momentum", st.momentum, "in [0, 1)"),
            (len(st.scale_range) == 2 and 0 < st.scale_range[0] <= st.scale_range[1], "seg.train.scale_range",
             st.scale_range, "[lo, hi] with 0 < lo <= hi"),
            (0 <= st.pad_label <= 255, "seg.train.pad_label", st.pad_label, "0..255"),
            (st.num_workers >= 0 and st.log_every >= 1, "seg.train.num_workers/log_every",
             [st.num_workers, st.log_every], ">= 0 / >= 1"),
            (bool(si.scales) and all(s > 0 for s in si.scales), "seg.infer.scales", si.scales, "positive numbers"),
            (si.crf_workers >= 0, "seg.infer.crf_workers", si.crf_workers, ">= 0"),
            (si.crf_iterations >= 1, "seg.infer.crf_iterations", si.crf_iterations, ">= 1"),
            (bool(self.eval.seed_betas) and all(0 <= b <= 1 for b in self.eval.seed_betas), "eval.seed_betas",
             self.eval.seed_betas, "thresholds in [0, 1]"),
            (self.eval.workers is None or self.eval.workers >= 1, "eval.workers", self.eval.workers,
             ">= 1 or null (all available cores)"),
            (rt.crf_workers >= 0, "refine.train.crf_workers", rt.crf_workers, ">= 0"),
            (self.run.smoke is None or self.run.smoke >= 1, "run.smoke", self.run.smoke,
             "a number of steps/images >= 1, or null (a real run)"),
            (self.run.smoke_batch is None or (self.run.smoke is not None and self.run.smoke_batch >= 1),
             "run.smoke_batch", self.run.smoke_batch, "null, or a batch >= 1 together with run.smoke"),
        ]
        for dev_key, dev in (("run.device", self.run.device), ("refine.train.device", rt.device),
                             ("refine.infer.device", ri.device), ("seg.train.device", st.device),
                             ("seg.infer.device", si.device)):
            checks.append((dev in ("auto", "cpu") or dev.startswith("cuda"), dev_key, dev, "auto, cpu, cuda or cuda:N"))
        for ok, key, value, expected in checks:
            if not ok:
                raise DoeiError(f"{where}: {key} = {value!r}, expected {expected}")
        if not self.data.root:
            raise DoeiError(f"{where}: data.root is empty (expected the dataset folder)")
        from doei.data.build import dataset_options

        dataset_options(self.data, where=f"{where}: data")         # options the kind's loader does not take
        return self


def resolve_paths(cfg: PipelineConfig) -> PipelineConfig:
    """Fill every empty path/split/model with its default under ``run.out_dir`` (in place; returned)."""
    out = Path(cfg.run.out_dir)
    rt, ri, st, si = cfg.refine.train, cfg.refine.infer, cfg.seg.train, cfg.seg.infer
    rt.cam_dir = rt.cam_dir or str(out / "cam")
    rt.split = rt.split or cfg.data.train_split
    rt.out_dir = rt.out_dir or str(out / "refine")
    ri.cam_dir = ri.cam_dir or rt.cam_dir
    ri.split = ri.split or cfg.data.train_split
    ri.out_dir = ri.out_dir or str(out / "pseudo")
    ri.checkpoint = ri.checkpoint or str(Path(rt.out_dir) / "checkpoint.pt")
    ri.model = ri.model or rt.model
    st.pseudo_dir = st.pseudo_dir or ri.out_dir
    st.split = st.split or cfg.data.train_split
    st.out_dir = st.out_dir or str(out / "seg")
    si.split = si.split or cfg.data.val_split
    si.out_dir = si.out_dir or str(out / "seg_pred")
    si.checkpoint = si.checkpoint or str(Path(st.out_dir) / "checkpoint.pt")
    si.model = si.model or st.model
    return cfg


def pipeline_config_from_dict(data: dict, where: str = "config") -> PipelineConfig:
    """Strict build + validation + default paths."""
    return resolve_paths(from_dict(PipelineConfig, data, where=where).validate(where))


def load_pipeline_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read YAML ``path``, apply ``--set key=value`` overrides, build, validate, resolve default paths."""
    data = apply_overrides(load_yaml(path), overrides or [])
    return pipeline_config_from_dict(data, where=str(path))


def available_cpus() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one, else ``os.cpu_count()``)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def auto_workers(n_items: int, per_worker: int = 64) -> int:
    """Evaluation processes when none are configured: the available cores, but no more than one per
    ``per_worker`` items (a pool costs more to start than a few dozen images take to score)."""
    return max(1, min(available_cpus(), n_items // per_worker))


def eval_workers(cfg: "PipelineConfig", n_items: int, ranks_per_node: int = 1) -> int:
    """``eval.workers``, or :func:`auto_workers` shared by the ranks of a node when it is null (counts are
    integers: the result is the same for any number)."""
    if cfg.eval.workers is not None:
        return cfg.eval.workers
    return max(1, auto_workers(n_items) // max(1, ranks_per_node))


