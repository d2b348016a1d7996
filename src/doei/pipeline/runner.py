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
from doei.config import to_dict
from doei.errors import DoeiError
from doei.models.initial_weights import preflight_initial_weights
from doei.pipeline import smoke
from doei.pipeline.evaluation import stage_eval
from doei.pipeline.fingerprints import describe_change, fingerprint_of, stage_inputs
from doei.pipeline.markers import (FORMAT, RUN_LOG, StageMarker, fingerprint, marker_path, read_marker, stage_settings,
                                   started_path, versions)
from doei.pipeline.stages import (Resolved, resolve, stage_cam, stage_infer_seg, stage_refine, stage_train_cls,
                                  stage_train_seg)
from doei.pipeline_config import STAGES, PipelineConfig
from doei.utils.device import resolve_device
from doei.utils.io import append_jsonl, atomic_write_json
from doei.utils.outdir import check_out_dir, folder_lock


def preflight(cfg: PipelineConfig, stages: list[str], log: Callable[[str], None], r: Resolved | None = None) -> None:
    """Cheap checks of what later ``stages`` will read, before the first (expensive) one starts.

    * every device key names a device this machine has (``cuda`` without one: one line naming the key);
    * every split the ``stages`` read opens (dataset present, its lists and labels readable);
    * ``run.cls_checkpoint`` exists when given;
    * ``refine.train.init_weights`` / ``seg.train.init_weights``: the file exists, its shapes fit the
      model and enough of the expected keys are in it (:mod:`doei.models.initial_weights`; the model is
      built on the meta device, so this costs a file read, not a 100M-parameter net);
    * ``eval.train_split``: its ids are part of the split the CAMs and pseudo masks are made for;
    * ``data.num_classes``: the dataset's own class count (else the eval would count absent classes as 0);
    * the cam section's model keys agree with the classifier the train-cls stage trains, which declares its
      ``cam.kind`` and reads its ``cam.n_layers`` / ``cam.patch_refine`` (:func:`check_cam_request`).
    """
    r = r or resolve(cfg)
    rt, ri, st, si = cfg.refine.train, cfg.refine.infer, cfg.seg.train, cfg.seg.infer
    for key, dev in (("run.device", cfg.run.device), ("classifier.train.device", r.classifier.train.device),
                     ("refine.train.device", rt.device), ("refine.infer.device", ri.device),
                     ("seg.train.device", st.device), ("seg.infer.device", si.device)):
        resolve_device(dev, key)
    if cfg.run.cls_checkpoint and not Path(cfg.run.cls_checkpoint).is_file():
        raise DoeiError(f"run.cls_checkpoint = {cfg.run.cls_checkpoint}: file not found")
    uses = {"train-cls": [] if cfg.run.cls_checkpoint else [r.classifier.data.train_split], "cam": [r.cam.split],
            "refine": [rt.split, ri.split], "train-seg": [st.split], "infer-seg": [si.split],
            "eval": [cfg.eval.train_split or cfg.data.train_split, si.split]}
    for split in dict.fromkeys(sp for stage in stages for sp in uses[stage]):
        dataset_from_config(cfg.data, split)
    found = dataset_from_config(cfg.data, cfg.data.train_split).num_classes
    if found != cfg.data.num_classes:
        raise DoeiError(f"data.num_classes = {cfg.data.num_classes}, but {cfg.data.root} ({cfg.data.kind}) has {found} "
                        "foreground classes; every stage and the eval table count with it")
    if "refine" in stages and rt.init_weights:
        cov = preflight_initial_weights(rt.model, rt.model_options, rt.init_weights, "refine.train.init_weights")
        log(f"refine.train.init_weights: {cov.summary()}")
    if "train-seg" in stages and st.init_weights:
        cov = preflight_initial_weights(st.model, st.model_options, st.init_weights, "seg.train.init_weights",
                                        num_classes=cfg.data.num_classes + 1)
        log(f"seg.train.init_weights: {cov.summary()}")
    if "cam" in stages:
        check_cam_request(r)
    es = cfg.eval.train_split
    if "eval" in stages and es and es != cfg.data.train_split:
        have = set(dataset_from_config(cfg.data, cfg.refine.infer.split).ids)
        ids = dataset_from_config(cfg.data, es).ids
        outside = [i for i in ids if i not in have]
        if outside:
            raise DoeiError(f"eval.train_split = {es!r}: {len(outside)} of its {len(ids)} ids (e.g. {outside[0]}) are not "
                            f"in split {cfg.refine.infer.split!r}, which the CAMs and pseudo masks are made for")


def check_cam_request(r: Resolved) -> None:
    """The cam section against the classifier the train-cls stage trains, so that a request it cannot serve
    is refused before the training, not after (one line naming ``cam.<key>``, its value and what is expected):
    its model keys (``model``, ``num_classes``, ``model_kwargs``, ``doei`` without ``override_doei``) must
    agree with the ``classifier`` section, as the cam stage requires of the checkpoint
    (:func:`doei.engine.classifier.load_classifier`); its CAM kind and options (when set) must be ones the
    model declares (:func:`doei.models.cam_source.resolve_cam_settings`; the network is built with random
    weights, a second or two for a DeiT-S, the global RNG left as it was). With ``run.cls_checkpoint`` the
    cam stage, the first one that works, checks them against the file."""
    c, m = r.cam, r.classifier.model
    if r.cfg.run.cls_checkpoint:
        return
    stated = {"model": (c.model, m.name), "num_classes": (c.num_classes, m.num_classes)}
    for key, value in (c.model_kwargs or {}).items():
        stated[f"model_kwargs.{key}"] = (value, m.img_size if key == "img_size" else m.options.get(key))
    for key, (given, trained) in stated.items():
        if given is not None and given != trained:
            raise DoeiError(f"cam.{key} = {given!r}: the classifier the train-cls stage trains has {trained!r} "
                            f"(the classifier section); leave cam.{key} unset to use it")
    if c.doei is not None and c.doei != r.classifier.doei and not c.override_doei:
        raise DoeiError("cam.doei: differs from classifier.doei, the DOEI settings the classifier is trained with; "
                        "leave cam.doei unset, or set cam.override_doei: true to run it with these")
    if c.kind is None and c.n_layers is None and c.patch_refine is None:
        return
    import torch

    from doei.models.cam_source import resolve_cam_settings
    from doei.models.registry import create_model

    with torch.random.fork_rng(devices=[]):
        try:
            model = create_model(m.name, num_classes=m.num_classes, img_size=m.img_size, **m.options)
        except (TypeError, ValueError) as e:
            raise DoeiError(f"classifier.model {m.name!r} with options {m.options}: {e}") from None
    resolve_cam_settings(model, c.kind, c.n_layers, c.patch_refine, keys="cam.")


STAGE_FUNCS: dict[str, Callable[..., dict]] = {   # stage(r: Resolved, log) -> summary
    "train-cls": stage_train_cls, "cam": stage_cam, "refine": stage_refine, "train-seg": stage_train_seg,
    "infer-seg": stage_infer_seg, "eval": stage_eval,
}


def run_pipeline(cfg: PipelineConfig, log: Callable[[str], None] = print, config_path: str | None = None) -> dict:
    """Run the configured stages in order, skipping completed ones; returns ``{stage: summary}``.

    Before anything is written (the run folder is not even created): the config, every device key, every
    split the stages read, initial weights, and each finished stage's fingerprint against its marker
    (:mod:`doei.pipeline.fingerprints`: a finished stage whose settings, input files or code version
    changed is refused in one line naming what changed, never reused). A stage that did not finish and
    was started with other settings has its partial outputs set aside (renamed ``<folder>.partial-<fp>``,
    never deleted), so a corrected rerun works in the same folder.

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
        raise TypeError(f"run_pipeline: cfg must be a doei.pipeline_config.PipelineConfig (load_pipeline_config), "
                        f"got {type(cfg).__name__}")
    if not callable(log):
        raise TypeError(f"run_pipeline: log must be callable (e.g. print), got {type(log).__name__}")
    cfg.validate("run_pipeline cfg")
    out = check_out_dir(cfg.run.out_dir, "run.out_dir")
    smoke.check_folder(cfg)
    changes: list[str] = []
    if cfg.run.smoke is not None:
        cfg, changes = smoke.smoke_config(cfg)
    resolved = resolve(cfg)      # the classifier and cam sections as typed configs, checked before any stage
    todo = [st for st in STAGES if st in cfg.run.stages and check_finished(resolved, st, log) is None]
    preflight(cfg, todo, log, resolved)
    with folder_lock(out, "run folder"):
        return _run_stages(resolved, log, changes, config_path)


def stage_outputs(r: Resolved, stage: str) -> list[Path]:
    """The folders ``stage`` writes (set aside when a rerun finds partial outputs made with other settings)."""
    cfg = r.cfg
    return [Path(p) for p in {
        "train-cls": [] if cfg.run.cls_checkpoint else [r.classifier.train.out_dir],
        "cam": [cfg.refine.train.cam_dir], "refine": [cfg.refine.train.out_dir, cfg.refine.infer.out_dir],
        "train-seg": [cfg.seg.train.out_dir], "infer-seg": [cfg.seg.infer.out_dir], "eval": []}[stage]]


def check_finished(r: Resolved, stage: str, log: Callable[[str], None]) -> StageMarker | None:
    """``stage``'s marker if it finished with today's fingerprint; ``None`` if it did not finish; a one-line
    DoeiError naming the first changed setting or file if it finished with other inputs."""
    cfg = r.cfg
    marker = marker_path(cfg, stage)
    done = read_marker(marker)
    if done is None:
        return None
    redo = (f"to redo it, delete {marker.parent} and its outputs "
            f"({', '.join(str(p) for p in stage_outputs(r, stage)) or 'eval.json'}) and those of the stages after it, "
            "or choose another run.out_dir")
    if done.format == "doei-stage-marker-v1":                     # written before input files were recorded
        if done.fingerprint != fingerprint(stage_settings(cfg, stage)):
            raise DoeiError(f"{marker}: stage {stage} finished with other settings; {redo}")
        log(f"[{stage}] note: its marker predates input-file fingerprints; its input files are not checked")
        return done
    change = inputs_change(r, stage, done)
    if change is not None:
        raise DoeiError(f"{marker}: stage {stage} finished with other inputs ({change}); its outputs are not "
                        f"reused; {redo}")
    return done


def inputs_change(r: Resolved, stage: str, done: StageMarker) -> str | None:
    """How ``stage``'s inputs today (settings, files, code: :func:`doei.pipeline.fingerprints.stage_inputs`)
    differ from those its marker ``done`` records, in words (the first change); None when they are the same.
    A recorded file that is missing now counts as unchanged (the outputs still describe the file they were
    made from). A v1 marker (settings only) is compared by its settings."""
    if done.format == "doei-stage-marker-v1":
        return None if done.fingerprint == fingerprint(stage_settings(r.cfg, stage)) else "other settings"
    settings, files = stage_inputs(r, stage)
    old_files = done.files or {}
    seen = {k: (old_files.get(k, v) if v == "missing" else v) for k, v in files.items()}
    if fingerprint_of(settings, seen) == done.fingerprint:
        return None
    return describe_change(done.settings or {}, old_files, settings, seen)


def _set_aside(r: Resolved, stage: str, started: StageMarker, settings: dict, files: dict, log) -> None:
    """Rename the partial outputs of an unfinished ``stage`` that was started with other settings."""
    out = Path(r.cfg.run.out_dir).resolve()
    change = describe_change(started.settings or {}, started.files or {}, settings, files)
    for folder in stage_outputs(r, stage):
        if not folder.exists():
            continue
        f = folder.resolve()
        if out not in f.parents:
            raise DoeiError(f"{folder}: stage {stage} did not finish and left partial outputs made with other "
                            f"inputs ({change}); it lies outside run.out_dir, so it is not moved: delete it or "
                            "choose another folder")
        n, dest = 0, f.with_name(f"{f.name}.partial-{started.fingerprint[:8]}")
        while dest.exists():
            n += 1
            dest = f.with_name(f"{f.name}.partial-{started.fingerprint[:8]}-{n}")
        f.rename(dest)
        log(f"[{stage}] partial outputs of an unfinished start with other inputs ({change}) set aside: {dest}")


def _run_stages(r: Resolved, log: Callable[[str], None], changes: list[str], config_path: str | None) -> dict:
    cfg = r.cfg
    rank, _ = dist_util.init_from_env(resolve_device(cfg.run.device, "run.device").split(":")[0])
    main = rank == 0
    if not main:
        log = lambda *_: None  # noqa: E731 - rank 0 reports
    out = Path(cfg.run.out_dir)
    header = None
    if cfg.run.smoke is not None:
        header = smoke.smoke_header(cfg, changes, config_path)
        log(f"SMOKE RUN: every stage capped at {cfg.run.smoke} optimiser steps and {cfg.run.smoke} images per split, "
            f"at the config's sizes; no pretrained file is read (random init); not a result")
        for line in changes:
            log(f"smoke: {line}")
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
        done = check_finished(r, stage, log)
        if done is not None:
            log(f"[{stage}] already done ({done.seconds:.0f} s, {done.finished or '?'}); skipped")
            if main:
                append_jsonl(out / RUN_LOG, {"event": "skip", "stage": stage, "time": time.time()})
            results[stage] = done.summary
            markers[stage] = to_dict(done)
            continue
        settings, files = stage_inputs(r, stage)
        fp = fingerprint_of(settings, files)
        started = read_marker(started_path(cfg, stage))
        if main and started is not None and started.fingerprint != fp:
            _set_aside(r, stage, started, settings, files, log)
        dist_util.barrier()          # partial outputs are set aside before any rank writes new ones
        log(f"[{stage}] running")
        t0 = time.time()
        record = {"stage": stage, "fingerprint": fp, "format": FORMAT, "settings": settings, "files": files,
                  "versions": versions(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if main:
            atomic_write_json(started_path(cfg, stage), record)
            append_jsonl(out / RUN_LOG, {"event": "start", "stage": stage, "time": t0})
        try:
            with smoke.StageMeter() as meter:
                summary = STAGE_FUNCS[stage](r, log)
        except BaseException as e:
            if main:
                first = str(e).splitlines()[0] if str(e) else ""
                append_jsonl(out / RUN_LOG, {"event": "fail", "stage": stage, "time": time.time(),
                                             "error": f"{type(e).__name__}: {first}"})
            raise
        dist_util.barrier()          # every rank's files of this stage are written before it is marked done
        secs = time.time() - t0
        res = meter.result
        record = {**record, "seconds": round(secs, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "resources": res, "summary": json.loads(json.dumps(summary, default=str))}
        if cfg.run.smoke is not None:
            record["smoke"] = {"smoke": cfg.run.smoke, "smoke_batch": cfg.run.smoke_batch}
        if main:
            append_jsonl(out / RUN_LOG, {"event": "end", "stage": stage, "time": time.time(),
                                         "seconds": round(secs, 3), "resources": res})
            atomic_write_json(marker_path(cfg, stage), record)
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
    if main and results.get("eval"):
        _paper_comparison(cfg, results["eval"], log)
    return results


def _paper_comparison(cfg: PipelineConfig, eval_out: dict, log: Callable[[str], None]) -> None:
    """Rank 0: the eval rows beside the DOEI paper's and the published baselines' numbers
    (:mod:`doei.eval.paper_numbers`), printed and written to ``<out>/paper_comparison.{json,md}``."""
    from doei.eval.paper_numbers import format_comparison, run_comparison, write_comparison

    got = run_comparison(cfg, eval_out)
    if got is None:
        if cfg.data.kind in ("voc", "coco"):
            log("paper comparison: the run's classifier is not one of the paper's (MCTformer-V2, TS-CAM, "
                "TransCAM); no table")
        return
    rows, header = got
    path = write_comparison(cfg.run.out_dir, rows, header)
    log(f"{format_comparison(rows, header['title'])}\n(table: {path})")
