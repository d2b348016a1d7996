"""The ``eval`` stage of ``doei run``: the Seed / Mask / Seg (+CRF) rows, each scored against ground
truth on its split, sharded over torchrun ranks (integer counts summed), written to ``eval.json``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from doei.data.build import dataset_from_config
from doei.engine import distributed as dist_util
from doei.eval.evaluate import EvalCounts, evaluate_dirs
from doei.eval.reading import PRED_EXT, check_files_exist
from doei.eval.report import build_report
from doei.pipeline_config import PipelineConfig, eval_workers
from doei.utils.io import atomic_write_json


def _gt_dir(cfg: PipelineConfig, split: str) -> tuple[Path | None, list[str]]:
    ds = dataset_from_config(cfg.data, split)
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


def stage_eval(r, log: Callable[[str], None]) -> dict:
    """Seed (CAMs, best β), Mask (pseudo masks), Seg (val, without / with CRF) mIoU; ``<out>/eval.json``.

    Under torchrun every rank scores its shard of each row's images and the integer counts are summed
    over ranks (COCO: ~120 k images scored twice would otherwise keep the other ranks waiting at a
    barrier past the process group's timeout); rank 0 writes ``eval.json`` and returns the table, the
    other ranks return ``{}``. ``r``: the :class:`doei.pipeline.stages.Resolved` pipeline."""
    cfg = r.cfg
    c = cfg.data.num_classes + 1
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if dist_util.world_size() > 1 else 1
    results: dict = {}
    table = []
    smoke = cfg.run.smoke
    for name, producer, pred, split, ptype, mean in eval_rows(cfg):
        if smoke is not None and producer in ("cam", "refine"):
            # a smoke run made CAMs / pseudo masks for the first images of their own split only
            split = r.cam.split if producer == "cam" else cfg.refine.infer.split
        if producer not in cfg.run.stages and not Path(pred).is_dir():
            log(f"eval: {name}: stage {producer} is not in run.stages and {pred} does not exist; skipped")
            continue
        gt, ids = _gt_dir(cfg, split)
        ids = ids if smoke is None else ids[:smoke]
        if gt is None:
            log(f"eval: {name}: split {split!r} has no ground-truth masks; skipped")
            continue
        workers = eval_workers(cfg, len(ids) // max(1, dist_util.world_size()), per_node)   # cores shared by ranks
        counts = _sharded_counts(pred, gt, ids, c, ptype, cfg.eval.seed_betas if ptype == "cam" else None, workers)
        rep = build_report(counts, mean)
        results[name] = {k: rep[k] for k in ("mIoU", "FP", "FN", "beta", "mean_convention", "num_images")}
        results[name].update({"split": split, "pred": pred, "means": rep["means"],
                              "per_class_IoU": {c["name"]: c["IoU"] for c in rep["per_class"]}})
        if "sweep" in rep:              # CAM rows: every beta (the study's fixed-beta table reads it)
            results[name]["sweep"] = rep["sweep"]
        table.append({"stage": name, "split": split, "mIoU": round(rep["mIoU"], 2), "beta": rep["beta"],
                      "mean": mean, "images": rep["num_images"]})
    if not dist_util.is_main():
        return {}
    out = {"table": table, "results": results}
    if smoke is not None:
        out = {"smoke": smoke, "note": "smoke run: capped, random init; not a result", **out}
        log(f"eval: smoke run: the rows score the first {smoke} images of each split; not results")
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


