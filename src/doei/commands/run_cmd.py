"""``doei run``: the whole WSSS pipeline from one config, resumable stage by stage and image by image.

Examples::

    doei run --config configs/demo_pipeline.yaml
    doei run --config configs/demo_pipeline.yaml --set run.out_dir=demo_out/pipeline_doei --set classifier.doei.enabled=true
    doei run --config voc.yaml --set run.cls_checkpoint=MCTformerV2.pth --set run.stages=[cam,refine,train-seg,infer-seg,eval]

Stages, in order: ``train-cls`` (classifier, :mod:`doei.engine.train_cls`) → ``cam`` (CAMs of the
train split) → ``refine`` (AffinityNet training + random-walk pseudo masks) → ``train-seg``
(DeepLab on the pseudo masks) → ``infer-seg`` (val split, multi-scale + flip + CRF) → ``eval``
(Seed, Mask, Segmentation with/without CRF). Under ``torchrun`` the training stages run with DDP,
the per-image stages are sharded over the ranks and rank 0 alone writes markers, logs and the
eval table (docs/distributed.md). After a stage finishes, ``<run.out_dir>/stages/<stage>/
stage_done.json`` is written atomically; a rerun skips every stage whose marker exists (and was
made with the same stage settings — different settings are refused rather than silently mixed).
Inside an unfinished stage the work resumes too: training from the last end-of-epoch checkpoint,
per-image stages at the first image without outputs. Stage start/end/skip/fail events (with wall
times) go to ``<run.out_dir>/run_log.jsonl``; the eval table to ``<run.out_dir>/eval.json``.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Callable

from doei.errors import DoeiError
from doei.pipeline_config import STAGES, PipelineConfig

MARKER = "stage_done.json"
# settings that do not change a stage's outputs (excluded from the stage fingerprint)
_RUNTIME_KEYS = {"progress", "device", "num_workers", "crf_workers", "log_every", "workers"}
RUN_LOG = "run_log.jsonl"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("Examples::")[1].split("Stages, in order")[0]
    p.add_argument("--config", required=True, help="pipeline YAML (configs/demo_pipeline.yaml, docs/pipeline.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set refine.train.epochs=2 (repeatable)")


def run(args: argparse.Namespace) -> int:
    from doei.pipeline_config import load_pipeline_config

    cfg = load_pipeline_config(args.config, args.overrides)
    res = run_pipeline(cfg)
    if "eval" in res and res["eval"].get("table"):
        print(format_table(res["eval"]["table"]))
    return 0


# ------------------------------------------------------------------------------------ markers
def _strip_runtime(obj):
    if isinstance(obj, dict):
        return {k: _strip_runtime(v) for k, v in obj.items() if k not in _RUNTIME_KEYS}
    if isinstance(obj, list):
        return [_strip_runtime(v) for v in obj]
    return obj


def stage_settings(cfg: PipelineConfig, stage: str) -> dict:
    """The config parts that determine ``stage``'s outputs (runtime-only keys removed)."""
    d = cfg.to_dict()
    parts = {
        "train-cls": {"classifier": d["classifier"], "data": d["data"], "cls_checkpoint": d["run"]["cls_checkpoint"],
                      "seed": d["run"]["seed"]},
        "cam": {"cam": d["cam"], "data": d["data"]},
        "refine": {"refine": d["refine"]},
        "train-seg": {"seg_train": d["seg"]["train"]},
        "infer-seg": {"seg_infer": d["seg"]["infer"]},
        "eval": {"eval": {k: v for k, v in d["eval"].items() if not (k == "train_split" and v is None)}},
    }[stage]          # eval.train_split only counts when set: markers written before the key existed stay valid
    return _strip_runtime(parts)


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def marker_path(cfg: PipelineConfig, stage: str) -> Path:
    return Path(cfg.run.out_dir) / "stages" / stage / MARKER


def _read_marker(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # unreadable marker = stage not done (it is rewritten atomically when the stage finishes)


# ------------------------------------------------------------------------------------ stages
def _set_default(d: dict, path: str, value) -> None:
    node = d
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node.setdefault(keys[-1], value)


def classifier_config(cfg: PipelineConfig):
    """The TrainConfig of the train-cls stage: ``classifier`` with data/out_dir/device/seed defaults from the run."""
    from doei.train_config import train_config_from_dict

    d = copy.deepcopy(cfg.classifier)
    _set_default(d, "data.kind", cfg.data.kind)
    _set_default(d, "data.root", cfg.data.root)
    _set_default(d, "data.train_split", cfg.data.train_split)
    if cfg.data.labels_file:
        _set_default(d, "data.labels_file", cfg.data.labels_file)
    _set_default(d, "model.num_classes", cfg.data.num_classes)
    _set_default(d, "train.out_dir", str(Path(cfg.run.out_dir) / "cls"))
    _set_default(d, "train.device", cfg.run.device)
    _set_default(d, "train.seed", cfg.run.seed)
    _set_default(d, "train.progress", cfg.run.progress)
    return train_config_from_dict(d, where="classifier")


def classifier_checkpoint(cfg: PipelineConfig) -> Path:
    if cfg.run.cls_checkpoint:
        return Path(cfg.run.cls_checkpoint)
    return Path(classifier_config(cfg).train.out_dir) / "checkpoint.pt"


def stage_train_cls(cfg: PipelineConfig, log: Callable[[str], None]) -> dict:
    if cfg.run.cls_checkpoint:
        if not Path(cfg.run.cls_checkpoint).is_file():
            raise DoeiError(f"run.cls_checkpoint = {cfg.run.cls_checkpoint}: file not found")
        log(f"train-cls: using the given classifier {cfg.run.cls_checkpoint}")
        return {"checkpoint": cfg.run.cls_checkpoint, "trained": False}
    from doei.engine.train_cls import train

    res = train(classifier_config(cfg), resume="auto", log=log)
    return {"checkpoint": str(res.checkpoint), "epochs_run": res.epochs_run, "final": res.final}


def cam_config(cfg: PipelineConfig):
    """The CamConfig of the cam stage (``cam`` section + data/split/device from the run). The model keys
    stay as the section gives them: the classifier checkpoint supplies the rest
    (:func:`doei.cam.generate.load_cam_model`)."""
    from doei.cam.config import CamConfig
    from doei.config import from_dict
    from doei.pipeline_config import resolve_device

    d = dict(cfg.cam)
    d.setdefault("dataset", cfg.data.kind)
    d.setdefault("data_root", cfg.data.root)
    d.setdefault("split", cfg.data.train_split)
    d.setdefault("device", resolve_device(cfg.run.device))
    return from_dict(CamConfig, d, where="cam").validate()


def stage_cam(cfg: PipelineConfig, log: Callable[[str], None]) -> dict:
    """CAMs of the train split into ``refine.train.cam_dir`` (:func:`doei.cam.generate.generate_cams`:
    per image, resumable, sharded over the ranks under torchrun), with the classifier built by the one
    loader, exactly as ``doei cam`` builds it."""
    from doei.cam.generate import generate_cams, load_cam_model, open_dataset

    ckpt = classifier_checkpoint(cfg)
    if not ckpt.is_file():
        raise DoeiError(f"{ckpt}: classifier checkpoint not found (run the train-cls stage first)")
    ccfg = cam_config(cfg)
    ds = open_dataset(ccfg)
    model, spec, ccfg = load_cam_model(ccfg, ckpt, ds)
    s = generate_cams(model, ccfg, cfg.refine.train.cam_dir, ckpt, ds=ds, spec=spec, progress=cfg.run.progress,
                      desc="cam", what="refine.train.cam_dir")
    log(f"cam: {s['computed']} computed, {s['skipped']} already done -> {s['out_dir']}")
    return {"computed": s["computed"], "skipped": s["skipped"], "out_dir": s["out_dir"]}


def stage_refine(cfg: PipelineConfig, log: Callable[[str], None]) -> dict:
    from doei.commands.refine_cmd import infer_pseudo_masks
    from doei.engine import distributed as dist_util
    from doei.engine.train_aff import train_affinity

    res = train_affinity(cfg, resume="auto", log=log)
    dist_util.barrier()          # rank 0's final checkpoint is on disk before any rank loads it
    s = infer_pseudo_masks(cfg, log=log)
    log(f"refine: {s['computed']} pseudo masks computed, {s['skipped']} already done -> {s['out_dir']}")
    return {"train": {"checkpoint": str(res.checkpoint), "epochs_run": res.epochs_run, "final": res.final},
            "infer": s}


def stage_train_seg(cfg: PipelineConfig, log: Callable[[str], None]) -> dict:
    from doei.engine.train_seg import train_segmentation

    res = train_segmentation(cfg, resume="auto", log=log)
    return {"checkpoint": str(res.checkpoint), "epochs_run": res.epochs_run, "final": res.final}


def stage_infer_seg(cfg: PipelineConfig, log: Callable[[str], None]) -> dict:
    from doei.commands.infer_seg_cmd import infer_segmentation

    s = infer_segmentation(cfg, log=log)
    log(f"infer-seg: {s['computed']} computed, {s['skipped']} already done -> {s['out_dir']}")
    return s


def _gt_dir(cfg: PipelineConfig, split: str) -> tuple[Path | None, list[str]]:
    from doei.data.build import build_dataset
    from doei.engine.train_aff import _data_kwargs

    ds = build_dataset(cfg.data.kind, cfg.data.root, split, **_data_kwargs(cfg))
    dirs = {r.mask_path.parent for r in ds.records if r.mask_path is not None}
    if len(dirs) != 1 or not ds.has_masks:
        return None, ds.ids
    return dirs.pop(), ds.ids


def eval_rows(cfg: PipelineConfig) -> list[tuple[str, str, str, str, str, str]]:
    """The eval table's rows ``(name, producing stage, prediction folder, split, pred type, mean)``.

    Seed and Mask are scored on ``eval.train_split`` (default ``data.train_split``; the VOC paper
    configs say ``train``, the 1,464 images of the baselines' Table 1), Seg rows on ``seg.infer.split``."""
    tr, si = cfg.eval.train_split or cfg.data.train_split, cfg.seg.infer
    rows = [("Seed", "cam", cfg.refine.train.cam_dir, tr, "cam", "all"),
            ("Mask", "refine", cfg.refine.infer.out_dir, tr, "png", "all"),
            ("Seg", "infer-seg", str(Path(si.out_dir) / "pred"), si.split, "png", "present")]
    if si.crf:
        rows.append(("Seg+CRF", "infer-seg", str(Path(si.out_dir) / "pred_crf"), si.split, "png", "present"))
    return rows


def _sharded_counts(pred: str, gt: Path, ids: list[str], num_classes: int, pred_type: str, betas, workers: int):
    """:func:`doei.eval.evaluate.evaluate_dirs` over this rank's ids ``ids[rank::world]``, summed over ranks.

    Counts are integers, so the sum over ranks equals the single-process counts exactly (float64
    all-reduce: exact below 2**53 pixels per class). Every rank first checks that all files exist, so a
    missing file fails every rank alike instead of leaving the others waiting in the all-reduce."""
    import numpy as np

    from doei.engine import distributed as dist_util
    from doei.eval.evaluate import EvalCounts, evaluate_dirs
    from doei.eval.reading import PRED_EXT, check_files_exist

    rank, world = dist_util.rank(), dist_util.world_size()
    if world == 1:
        return evaluate_dirs(pred, gt, ids, num_classes=num_classes, pred_type=pred_type, betas=betas,
                             workers=workers)
    check_files_exist([Path(gt) / f"{i}.png" for i in ids], "ground truth")
    check_files_exist([Path(pred) / f"{i}{PRED_EXT[pred_type]}" for i in ids], "prediction")
    mine = dist_util.shard(ids, rank, world)
    nb = 1 if betas is None else len(betas)
    if mine:
        c = evaluate_dirs(pred, gt, mine, num_classes=num_classes, pred_type=pred_type, betas=betas, workers=workers)
        tp, p, t = c.tp, c.p, c.t
    else:
        tp = p = np.zeros((nb, num_classes), dtype=np.int64)
        t = np.zeros(num_classes, dtype=np.int64)
    flat = np.concatenate([tp.ravel(), p.ravel(), t]).astype(np.float64)
    tot = dist_util.all_reduce_sum(flat).numpy().round().astype(np.int64)
    n = nb * num_classes
    betas64 = None if betas is None else np.asarray(list(betas), dtype=np.float64)
    return EvalCounts(betas64, tot[:n].reshape(nb, num_classes), tot[n:2 * n].reshape(nb, num_classes), tot[2 * n:],
                      len(ids), pred_type)


def stage_eval(cfg: PipelineConfig, log: Callable[[str], None]) -> dict:
    """Seed (CAMs, best β), Mask (pseudo masks), Seg (val, without / with CRF) mIoU; ``<out>/eval.json``.

    Under torchrun every rank scores its shard of each row's images and the integer counts are summed
    over ranks (COCO: ~120 k images scored twice would otherwise keep the other ranks waiting at a
    barrier past the process group's timeout); rank 0 writes ``eval.json`` and returns the table, the
    other ranks return ``{}``."""
    import os

    from doei.engine import distributed as dist_util
    from doei.eval.report import build_report
    from doei.pipeline_config import eval_workers
    from doei.utils.io import atomic_write_json

    c = cfg.data.num_classes + 1
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if dist_util.world_size() > 1 else 1
    results: dict = {}
    table = []
    for name, producer, pred, split, ptype, mean in eval_rows(cfg):
        if producer not in cfg.run.stages and not Path(pred).is_dir():
            log(f"eval: {name}: stage {producer} is not in run.stages and {pred} does not exist; skipped")
            continue
        gt, ids = _gt_dir(cfg, split)
        if gt is None:
            log(f"eval: {name}: split {split!r} has no ground-truth masks; skipped")
            continue
        workers = eval_workers(cfg, len(ids) // max(1, dist_util.world_size()), per_node)   # cores shared by ranks
        counts = _sharded_counts(pred, gt, ids, c, ptype, cfg.eval.seed_betas if ptype == "cam" else None, workers)
        rep = build_report(counts, mean)
        results[name] = {k: rep[k] for k in ("mIoU", "FP", "FN", "beta", "mean_convention", "num_images")}
        results[name].update({"split": split, "pred": pred, "means": rep["means"]})
        table.append({"stage": name, "split": split, "mIoU": round(rep["mIoU"], 2), "beta": rep["beta"],
                      "mean": mean, "images": rep["num_images"]})
    if not dist_util.is_main():
        return {}
    out = {"table": table, "results": results}
    atomic_write_json(Path(cfg.run.out_dir) / "eval.json", out)
    log(format_table(table))
    return out


def format_table(table: list[dict]) -> str:
    """The Seed / Mask / Seg rows as a small text table."""
    lines = [f"{'stage':<8} {'split':<10} {'mIoU':>6}  {'beta':>5}  mean", "-" * 42]
    for r in table:
        beta = "" if r["beta"] is None else f"{r['beta']:.2f}"
        lines.append(f"{r['stage']:<8} {r['split']:<10} {r['mIoU']:>6.2f}  {beta:>5}  {r['mean']}")
    return "\n".join(lines)


def preflight(cfg: PipelineConfig, stages: list[str], log: Callable[[str], None]) -> None:
    """Cheap checks of what later ``stages`` will read, before the first (expensive) one starts.

    * ``refine.train.init_weights`` / ``seg.train.init_weights``: the file exists, its shapes fit the
      model and enough of the expected keys are in it (:mod:`doei.models.initial_weights`; the model is
      built on the meta device, so this costs a file read, not a 100M-parameter net);
    * ``eval.train_split``: its ids are part of the split the CAMs and pseudo masks are made for.
    """
    from doei.models.initial_weights import preflight_initial_weights

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
        from doei.data.build import build_dataset
        from doei.engine.train_aff import _data_kwargs

        have = set(build_dataset(cfg.data.kind, cfg.data.root, cfg.refine.infer.split, **_data_kwargs(cfg)).ids)
        ids = build_dataset(cfg.data.kind, cfg.data.root, es, **_data_kwargs(cfg)).ids
        outside = [i for i in ids if i not in have]
        if outside:
            raise DoeiError(f"eval.train_split = {es!r}: {len(outside)} of its {len(ids)} ids (e.g. {outside[0]}) are not "
                            f"in split {cfg.refine.infer.split!r}, which the CAMs and pseudo masks are made for")


STAGE_FUNCS: dict[str, Callable[[PipelineConfig, Callable[[str], None]], dict]] = {
    "train-cls": stage_train_cls, "cam": stage_cam, "refine": stage_refine, "train-seg": stage_train_seg,
    "infer-seg": stage_infer_seg, "eval": stage_eval,
}


def run_pipeline(cfg: PipelineConfig, log: Callable[[str], None] = print) -> dict:
    """Run the configured stages in order, skipping completed ones; returns ``{stage: summary}``.

    Under ``torchrun`` every rank runs every stage (training with DDP, per-image stages sharded,
    eval on rank 0 only); all ranks meet at a barrier after each stage, then rank 0 alone writes the
    stage marker and ``run_log.jsonl``, and a second barrier makes the marker and the stage's files
    visible to every rank before the next stage starts (docs/distributed.md). Other ranks do not log.
    """
    from doei.utils.outdir import check_out_dir, folder_lock

    with folder_lock(check_out_dir(cfg.run.out_dir, "run.out_dir"), "run folder"):
        return _run_stages(cfg, log)


def _run_stages(cfg: PipelineConfig, log: Callable[[str], None]) -> dict:
    from doei.engine import distributed as dist_util
    from doei.pipeline_config import resolve_device
    from doei.utils.io import append_jsonl, atomic_write_json

    rank, _ = dist_util.init_from_env(resolve_device(cfg.run.device).split(":")[0])
    main = rank == 0
    if not main:
        log = lambda *_: None  # noqa: E731 - rank 0 reports
    out = Path(cfg.run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if main:
        atomic_write_json(out / "pipeline_config.json", cfg.to_dict())
    results: dict = {}
    preflight(cfg, [st for st in STAGES if st in cfg.run.stages and _read_marker(marker_path(cfg, st)) is None], log)
    for stage in STAGES:
        if stage not in cfg.run.stages:
            continue
        marker = marker_path(cfg, stage)
        settings = stage_settings(cfg, stage)
        fp = fingerprint(settings)
        done = _read_marker(marker)
        if done is not None:
            if done.get("fingerprint") != fp:
                raise DoeiError(f"{marker}: stage {stage} was completed with other settings; use another run.out_dir "
                                f"or delete {marker.parent} (and the stages after it) to redo it")
            log(f"[{stage}] already done ({done.get('seconds', 0):.0f} s, {done.get('finished', '?')}); skipped")
            if main:
                append_jsonl(out / RUN_LOG, {"event": "skip", "stage": stage, "time": time.time()})
            results[stage] = done.get("summary", {})
            continue
        log(f"[{stage}] running")
        t0 = time.time()
        if main:
            append_jsonl(out / RUN_LOG, {"event": "start", "stage": stage, "time": t0})
        try:
            summary = STAGE_FUNCS[stage](cfg, log)
        except BaseException as e:
            if main:
                first = str(e).splitlines()[0] if str(e) else ""
                append_jsonl(out / RUN_LOG, {"event": "fail", "stage": stage, "time": time.time(),
                                             "error": f"{type(e).__name__}: {first}"})
            raise
        dist_util.barrier()          # every rank's files of this stage are written before it is marked done
        secs = time.time() - t0
        if main:
            append_jsonl(out / RUN_LOG, {"event": "end", "stage": stage, "time": time.time(),
                                         "seconds": round(secs, 3)})
            atomic_write_json(marker, {"stage": stage, "fingerprint": fp, "seconds": round(secs, 3),
                                       "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                       "summary": json.loads(json.dumps(summary, default=str))})
        dist_util.barrier()          # ... and the marker exists before any rank goes on
        log(f"[{stage}] done in {secs:.1f} s")
        results[stage] = summary
    return results
