"""The stages of ``doei run`` before the evaluation: each ``stage_<name>(r, log) -> summary`` calls the
library function that does the work (training loops in :mod:`doei.engine`, CAMs in :mod:`doei.cam`, the
random walk in :mod:`doei.refine`, segmentation inference in :mod:`doei.seg`).

``r`` is a :class:`Resolved` pipeline: the config with its free-form ``classifier`` and ``cam`` sections
turned once (:func:`resolve`) into a validated :class:`~doei.train_config.TrainConfig` and
:class:`~doei.cam.config.CamConfig`, their data/out_dir/device defaults filled from the run."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from doei.cam.config import CamConfig
from doei.cam.generate import generate_cams, load_cam_model, open_dataset
from doei.config import from_dict
from doei.engine import distributed as dist_util
from doei.engine.train_aff import train_affinity
from doei.engine.train_cls import train
from doei.engine.train_seg import train_segmentation
from doei.errors import DoeiError
from doei.pipeline_config import PipelineConfig
from doei.refine.infer import infer_pseudo_masks
from doei.seg.infer import infer_segmentation
from doei.train_config import TrainConfig, train_config_from_dict
from doei.utils.device import resolve_device


def _set_default(d: dict, path: str, value) -> None:
    node = d
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node.setdefault(keys[-1], value)


def classifier_config(cfg: PipelineConfig) -> TrainConfig:
    """The TrainConfig of the train-cls stage: ``classifier`` with data/out_dir/device/seed defaults from the run."""
    d = copy.deepcopy(cfg.classifier)
    _set_default(d, "data.kind", cfg.data.kind)
    _set_default(d, "data.root", cfg.data.root)
    _set_default(d, "data.train_split", cfg.data.train_split)
    if cfg.data.labels_file:
        _set_default(d, "data.labels_file", cfg.data.labels_file)
    if cfg.data.options:
        _set_default(d, "data.options", dict(cfg.data.options))
    _set_default(d, "model.num_classes", cfg.data.num_classes)
    _set_default(d, "train.out_dir", str(Path(cfg.run.out_dir) / "cls"))
    _set_default(d, "train.device", cfg.run.device)
    _set_default(d, "train.seed", cfg.run.seed)
    _set_default(d, "train.progress", cfg.run.progress)
    return train_config_from_dict(d, where="classifier")


@dataclass(frozen=True)
class Resolved:
    """A pipeline config with its stage configs resolved once (the typed hand-off to every stage)."""

    cfg: PipelineConfig
    classifier: TrainConfig      # the train-cls stage's config (also names the classifier checkpoint)
    cam: CamConfig               # the cam stage's config (model keys: as given; the checkpoint supplies the rest)

    @property
    def checkpoint(self) -> Path:
        """The classifier the cam stage reads: ``run.cls_checkpoint``, else the train-cls stage's output."""
        if self.cfg.run.cls_checkpoint:
            return Path(self.cfg.run.cls_checkpoint)
        return Path(self.classifier.train.out_dir) / "checkpoint.pt"


def resolve(cfg: PipelineConfig) -> Resolved:
    """Turn the ``classifier`` and ``cam`` sections into typed, validated configs (one-line errors)."""
    return Resolved(cfg, classifier_config(cfg), cam_config(cfg))


def stage_train_cls(r: Resolved, log: Callable[[str], None]) -> dict:
    cfg = r.cfg
    if cfg.run.cls_checkpoint:
        if not Path(cfg.run.cls_checkpoint).is_file():
            raise DoeiError(f"run.cls_checkpoint = {cfg.run.cls_checkpoint}: file not found")
        log(f"train-cls: using the given classifier {cfg.run.cls_checkpoint}")
        return {"checkpoint": cfg.run.cls_checkpoint, "trained": False}

    n = cfg.run.smoke
    res = train(r.classifier, resume="auto", log=log, limit=n, max_steps=n)
    return {"checkpoint": str(res.checkpoint), "epochs_run": res.epochs_run, "final": res.final,
            "batch_size": r.classifier.train.batch_size}


def cam_config(cfg: PipelineConfig) -> CamConfig:
    """The CamConfig of the cam stage (``cam`` section + data/split/device from the run). The model keys
    stay as the section gives them: the classifier checkpoint supplies the rest
    (:func:`doei.cam.generate.load_cam_model`)."""
    d = dict(cfg.cam)
    d.setdefault("dataset", cfg.data.kind)
    d.setdefault("data_root", cfg.data.root)
    d.setdefault("split", cfg.data.train_split)
    opts = dict(cfg.data.options)                   # the data section's loader options, as every stage gets them
    if cfg.data.labels_file:
        opts.setdefault("labels_file", cfg.data.labels_file)
    if opts:
        d.setdefault("dataset_options", opts)
    d.setdefault("device", resolve_device(cfg.run.device, "run.device"))
    return from_dict(CamConfig, d, where="cam").validate()


def stage_cam(r: Resolved, log: Callable[[str], None]) -> dict:
    """CAMs of the train split into ``refine.train.cam_dir`` (:func:`doei.cam.generate.generate_cams`:
    per image, resumable, sharded over the ranks under torchrun), with the classifier built by the one
    loader, exactly as ``doei cam`` builds it."""
    ckpt = r.checkpoint
    if not ckpt.is_file():
        raise DoeiError(f"{ckpt}: classifier checkpoint not found (run the train-cls stage first)")
    ds = open_dataset(r.cam)
    model, spec, ccfg = load_cam_model(r.cam, ckpt, ds)
    s = generate_cams(model, ccfg, r.cfg.refine.train.cam_dir, ckpt, ds=ds, spec=spec, progress=r.cfg.run.progress,
                      desc="cam", what="refine.train.cam_dir", limit=r.cfg.run.smoke)
    log(f"cam: {s['computed']} computed, {s['skipped']} already done -> {s['out_dir']}")
    return {"computed": s["computed"], "skipped": s["skipped"], "out_dir": s["out_dir"],
            "seconds": round(s["seconds"], 3)}


def stage_refine(r: Resolved, log: Callable[[str], None]) -> dict:
    n = r.cfg.run.smoke
    res = train_affinity(r.cfg, resume="auto", log=log, limit=n, max_steps=n)
    dist_util.barrier()          # rank 0's final checkpoint is on disk before any rank loads it
    s = infer_pseudo_masks(r.cfg, limit=n, log=log)
    log(f"refine: {s['computed']} pseudo masks computed, {s['skipped']} already done -> {s['out_dir']}")
    return {"train": {"checkpoint": str(res.checkpoint), "epochs_run": res.epochs_run, "final": res.final,
                      "phases": res.phases, "batch_size": r.cfg.refine.train.batch_size}, "infer": s}


def stage_train_seg(r: Resolved, log: Callable[[str], None]) -> dict:
    n = r.cfg.run.smoke
    res = train_segmentation(r.cfg, resume="auto", log=log, limit=n, max_steps=n)
    return {"checkpoint": str(res.checkpoint), "epochs_run": res.epochs_run, "final": res.final,
            "batch_size": r.cfg.seg.train.batch_size}


def stage_infer_seg(r: Resolved, log: Callable[[str], None]) -> dict:
    s = infer_segmentation(r.cfg, limit=r.cfg.run.smoke, log=log)
    log(f"infer-seg: {s['computed']} computed, {s['skipped']} already done -> {s['out_dir']}")
    return s


