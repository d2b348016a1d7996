"""The pipeline runner behind ``doei run``: the whole WSSS pipeline from one config, resumable stage by stage and image by image.

Stages, in order: ``train-cls`` (classifier, :mod:`doei.engine.train_cls`) → ``cam`` (CAMs of the
train split) → ``refine`` (AffinityNet training + random-walk pseudo masks) → ``train-seg``
(DeepLab on the pseudo masks) → ``infer-seg`` (val split, multi-scale + flip + CRF) → ``eval``
(Seed, Mask, Segmentation with/without CRF); see :mod:`doei.pipeline.markers` for how finished
stages are skipped and :mod:`doei.pipeline.stages` / :mod:`doei.pipeline.evaluation` for each stage.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from doei.data.build import dataset_from_config
from doei.engine import distributed as dist_util
from doei.errors import DoeiError
from doei.models.initial_weights import preflight_initial_weights
from doei.pipeline import smoke
from doei.pipeline.evaluation import stage_eval
from doei.pipeline.markers import RUN_LOG, fingerprint, marker_path, read_marker, stage_settings
from doei.pipeline.stages import (resolve, stage_cam, stage_infer_seg, stage_refine, stage_train_cls,
                                  stage_train_seg)
from doei.pipeline_config import STAGES, PipelineConfig
from doei.utils.device import resolve_device
from doei.utils.io import append_jsonl, atomic_write_json
from doei.utils.outdir import check_out_dir, folder_lock


def preflight(cfg: PipelineConfig, stages: list[str], log: Callable[[str], None]) -> None:
    """Cheap checks of what later ``stages`` will read, before the first (expensive) one starts.

    * ``refine.train.init_weights`` / ``seg.train.init_weights``: the file exists, its shapes fit the
      model and enough of the expected keys are in it (:mod:`doei.models.initial_weights`; the model is
      built on the meta device, so this costs a file read, not a 100M-parameter net);
    * ``eval.train_split``: its ids are part of the split the CAMs and pseudo masks are made for;
    * ``data.num_classes``: the dataset's own class count (else the eval would count absent classes as 0).
    """
    found = dataset_from_config(cfg.data, cfg.data.train_split).num_classes
    if found != cfg.data.num_classes:
        raise DoeiError(f"data.num_classes = {cfg.data.num_classes}, but {cfg.data.root} ({cfg.data.kind}) has {found} "
                        "foreground classes; every stage and the eval table count with it")
    rt, st = cfg.refine.train, cfg.seg.train
    if "refine" in stages and rt.init_weights:
        cov = preflight_initial_weights(rt.model, rt.model_options, rt.init_weights, "refine.train.init_weights")
        log(f"refine.train.init_weights: {cov.summary()}")
    if "train-seg" in stages and st.init_weights:
        cov = preflight_initial_weights(st.model, st.model_options, st.init_weights, "seg.train.init_weights",
                                        num_classes=cfg.data.num_classes + 1)
        log(f"seg.train.init_weights: {cov.summary()}")
    es = cfg.eval.train_split
    if "eval" in stages and es and es != cfg.data.train_split:
        have = set(dataset_from_config(cfg.data, cfg.refine.infer.split).ids)
        ids = dataset_from_config(cfg.data, es).ids
        outside = [i for i in ids if i not in have]
        if outside:
            raise DoeiError(f"eval.train_split = {es!r}: {len(outside)} of its {len(ids)} ids (e.g. {outside[0]}) are not "
                            f"in split {cfg.refine.infer.split!r}, which the CAMs and pseudo masks are made for")


STAGE_FUNCS: dict[str, Callable[..., dict]] = {   # stage(r: Resolved, log) -> summary
    "train-cls": stage_train_cls, "cam": stage_cam, "refine": stage_refine, "train-seg": stage_train_seg,
    "infer-seg": stage_infer_seg, "eval": stage_eval,
}


def run_pipeline(cfg: PipelineConfig, log: Callable[[str], None] = print, config_path: str | None = None) -> dict:
    """Run the configured stages in order, skipping completed ones; returns ``{stage: summary}``.

    Under ``torchrun`` every rank runs every stage (training with DDP, per-image stages sharded,
    eval on rank 0 only); all ranks meet at a barrier after each stage, then rank 0 alone writes the
    stage marker and ``run_log.jsonl``, and a second barrier makes the marker and the stage's files
    visible to every rank before the next stage starts (docs/distributed.md). Other ranks do not log.

    Every stage is measured (wall seconds, peak memory: :class:`doei.pipeline.smoke.StageMeter`; in the
    marker and the log). ``run.smoke: N`` runs in smoke mode (:mod:`doei.pipeline.smoke`): capped at N
    steps / N images per stage, random init, the per-stage table in ``smoke.json`` (and under
    ``"smoke"`` in the returned dict); ``config_path`` is recorded there.
    """
    if not isinstance(cfg, PipelineConfig):
        raise TypeError(f"cfg: expected a PipelineConfig, got {type(cfg).__name__}")
    with folder_lock(check_out_dir(cfg.run.out_dir, "run.out_dir"), "run folder"):
        return _run_stages(cfg, log, config_path)


def _run_stages(cfg: PipelineConfig, log: Callable[[str], None], config_path: str | None) -> dict:
    rank, _ = dist_util.init_from_env(resolve_device(cfg.run.device).split(":")[0])
    main = rank == 0
    if not main:
        log = lambda *_: None  # noqa: E731 - rank 0 reports
    out = Path(cfg.run.out_dir)
    smoke.check_folder(cfg)
    header = None
    if cfg.run.smoke is not None:
        cfg, changes = smoke.smoke_config(cfg)
        header = smoke.smoke_header(cfg, changes, config_path)
        log(f"SMOKE RUN: every stage capped at {cfg.run.smoke} optimiser steps and {cfg.run.smoke} images per split, "
            f"at the config's sizes; no pretrained file is read (random init); not a result")
        for line in changes:
            log(f"smoke: {line}")
    resolved = resolve(cfg)      # the classifier and cam sections as typed configs, checked before any stage
    preflight(cfg, [st for st in STAGES if st in cfg.run.stages and read_marker(marker_path(cfg, st)) is None], log)
    out.mkdir(parents=True, exist_ok=True)
    if main:
        if header is not None:
            smoke.write_smoke_table(cfg, header, [])   # marks the folder before any stage writes
        atomic_write_json(out / "pipeline_config.json", cfg.to_dict())
    results: dict = {}
    markers: dict = {}
    for stage in STAGES:
        if stage not in cfg.run.stages:
            continue
        marker = marker_path(cfg, stage)
        settings = stage_settings(cfg, stage)
        fp = fingerprint(settings)
        done = read_marker(marker)
        if done is not None:
            if done.get("fingerprint") != fp:
                raise DoeiError(f"{marker}: stage {stage} was completed with other settings; use another run.out_dir "
                                f"or delete {marker.parent} (and the stages after it) to redo it")
            log(f"[{stage}] already done ({done.get('seconds', 0):.0f} s, {done.get('finished', '?')}); skipped")
            if main:
                append_jsonl(out / RUN_LOG, {"event": "skip", "stage": stage, "time": time.time()})
            results[stage] = done.get("summary", {})
            markers[stage] = done
            continue
        log(f"[{stage}] running")
        t0 = time.time()
        if main:
            append_jsonl(out / RUN_LOG, {"event": "start", "stage": stage, "time": t0})
        try:
            with smoke.StageMeter() as meter:
                summary = STAGE_FUNCS[stage](resolved, log)
        except BaseException as e:
            if main:
                first = str(e).splitlines()[0] if str(e) else ""
                append_jsonl(out / RUN_LOG, {"event": "fail", "stage": stage, "time": time.time(),
                                             "error": f"{type(e).__name__}: {first}"})
            raise
        dist_util.barrier()          # every rank's files of this stage are written before it is marked done
        secs = time.time() - t0
        res = meter.result
        record = {"stage": stage, "fingerprint": fp, "seconds": round(secs, 3),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "resources": res,
                  "summary": json.loads(json.dumps(summary, default=str))}
        if cfg.run.smoke is not None:
            record["smoke"] = {"smoke": cfg.run.smoke, "smoke_batch": cfg.run.smoke_batch}
        if main:
            append_jsonl(out / RUN_LOG, {"event": "end", "stage": stage, "time": time.time(),
                                         "seconds": round(secs, 3), "resources": res})
            atomic_write_json(marker, record)
        dist_util.barrier()          # ... and the marker exists before any rank goes on
        log(f"[{stage}] done in {secs:.1f} s, peak RSS {res['peak_rss_mb']:.0f} MB"
            + (f", CUDA peak {res['cuda_peak_mb']:.0f} MB" if res.get("cuda_peak_mb") is not None else ""))
        results[stage] = summary
        markers[stage] = record
        if header is not None and main:
            smoke.write_smoke_table(cfg, header, smoke.smoke_rows(cfg, markers))
    if header is not None:
        rows = smoke.smoke_rows(cfg, markers)
        if main:
            path = smoke.write_smoke_table(cfg, header, rows)
            log(f"{smoke.SMOKE_NOTE}\n{smoke.format_smoke_table(rows)}\n(table: {path})")
        results["smoke"] = {**header, "stages": rows}
    return results
