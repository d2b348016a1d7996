"""``doei refine``: PSA/AffinityNet refinement of CAM seeds into pseudo masks.

Examples::

    doei refine train --config pipeline.yaml                 # AffinityNet on the affinity labels of the CAMs
    doei refine train --config pipeline.yaml --resume        # continue after the last finished epoch
    doei refine infer --config pipeline.yaml                 # random walk -> <refine.infer.out_dir>/<id>.png
    doei refine infer --config pipeline.yaml --set refine.infer.bg_mode=power --set refine.infer.logt=8  # PSA

The YAML is the pipeline config (``doei.pipeline_config``; sections ``data`` and ``refine``).
``train`` writes ``checkpoint.pt`` (every epoch, atomically), ``config.yaml`` and ``metrics.jsonl``
into ``refine.train.out_dir``. ``infer`` writes one class-index PNG per image (VOC palette: values
are labels) atomically and skips images whose PNG exists, so an interrupted run resumes; its log
is ``refine_infer_log.jsonl`` in the output folder. Under ``torchrun``, ``train`` runs with DDP and
``infer`` shards the images over the ranks (byte-identical files; docs/distributed.md).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from doei.errors import DoeiError

LOG_FILE = "refine_infer_log.jsonl"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("Examples::")[1].split("The YAML")[0]
    p.add_argument("action", choices=("train", "infer"), help="train AffinityNet, or infer pseudo masks by random walk")
    p.add_argument("--config", required=True, help="pipeline YAML (see configs/demo_pipeline.yaml, docs/pipeline.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set refine.train.epochs=2 (repeatable)")
    p.add_argument("--resume", action="store_true", help="train: continue from <refine.train.out_dir>/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true", help="train: start afresh even if <refine.train.out_dir> "
                   "holds a run (it is replaced); without it that is refused")
    p.add_argument("--limit", type=int, default=None, help="infer: only the first N ids of the split (smoke tests)")


def run(args: argparse.Namespace) -> int:
    from doei.engine import distributed as dist_util
    from doei.pipeline_config import load_pipeline_config

    cfg = load_pipeline_config(args.config, args.overrides)
    if args.action == "train":
        from doei.engine.train_aff import train_affinity

        res = train_affinity(cfg, resume=bool(args.resume), overwrite=bool(args.overwrite))
        if dist_util.is_main():
            print(f"done: {res.checkpoint} ({res.epochs_run} epochs run) in {res.seconds:.0f} s")
        return 0
    summary = infer_pseudo_masks(cfg, limit=args.limit)
    if dist_util.is_main():
        print(f"doei refine infer: {summary['computed']} computed, {summary['skipped']} already done, "
              f"{summary['seconds']:.1f} s -> {summary['out_dir']}")
    return 0


def pad_to_stride(x: torch.Tensor, stride: int = 8) -> torch.Tensor:
    """Zero-pad ``[B,C,H,W]`` on the bottom/right to multiples of ``stride`` (the official ``infer_aff`` input)."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % stride, 0, -h % stride))


def load_affinity_model(cfg, device: str) -> torch.nn.Module:
    """The AffinityNet of ``refine.infer`` with its trained weights (ours or an official ``.pth``), in eval mode."""
    from doei.engine.train_aff import build_affinity_model
    from doei.models.checkpoint import load_model_weights

    ri, rt = cfg.refine.infer, cfg.refine.train
    options = rt.model_options if ri.model == rt.model else {}
    model = build_affinity_model(ri.model, options, radius=rt.radius)
    if not Path(ri.checkpoint).is_file():
        raise DoeiError(f"{ri.checkpoint}: AffinityNet checkpoint not found (run doei refine train first, "
                        "or set refine.infer.checkpoint)")
    load_model_weights(model, ri.checkpoint, strict=True)
    return model.to(device).eval()


def infer_pseudo_masks(cfg, limit: int | None = None, log: Callable[[str], None] = print) -> dict:
    """Random-walk pseudo masks of ``refine.infer.split`` → ``refine.infer.out_dir/<id>.png``; resumable per image.

    Per image: AffinityNet features of the normalised, zero-padded image ``[C, ceil(H/8), ceil(W/8)]``,
    then :func:`doei.refine.random_walk.random_walk_refine` of its CAMs with the configured
    background (constant 0.39 / ``(1-max)^alpha``), β and logt. Returns a summary dict.

    Under ``torchrun`` the ids left to do are split ``todo[rank::world]`` (after a barrier, so all
    ranks list the same ones) and each rank writes its own PNGs; rank 0 writes the start/end log
    records, the end record after an all-reduce of the counts (summed over ranks, on every rank).
    """
    from tqdm import tqdm

    from doei.cam.io import load_cam
    from doei.cam.visualize import save_label_png
    from doei.data.build import build_dataset
    from doei.engine import distributed as dist_util
    from doei.engine.train_aff import _data_kwargs, normalize, require_id_files
    from doei.pipeline_config import resolve_device
    from doei.refine.random_walk import random_walk_refine
    from doei.utils.io import append_jsonl

    if limit is not None and limit < 0:
        raise DoeiError(f"--limit {limit}: expected a number of images >= 0")
    ri = cfg.refine.infer
    d = cfg.data
    cam_dir, out = Path(ri.cam_dir), Path(ri.out_dir)
    base = build_dataset(d.kind, d.root, ri.split, **_data_kwargs(cfg))
    records = base.records[:limit] if limit is not None else base.records
    require_id_files(cam_dir, [r.id for r in records], ".npz", "CAM",
                     "run doei cam first, or set refine.infer.cam_dir")
    device = resolve_device(ri.device)
    rank, world = dist_util.init_from_env(device.split(":")[0])
    device = str(dist_util.device_for(torch.device(device)))
    todo = [i for i, r in enumerate(records) if not (out / f"{r.id}.png").is_file()]
    dist_util.barrier()  # every rank has the same todo list before anything is written
    mine = dist_util.shard(todo, rank, world)
    tag = {"rank": rank} if world > 1 else {}
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        append_jsonl(out / LOG_FILE, {"event": "start", "time": t0, "images": len(records), "todo": len(todo),
                                      "checkpoint": str(ri.checkpoint), "bg_mode": ri.bg_mode,
                                      "bg_threshold": ri.bg_threshold, "alpha": ri.alpha, "beta": ri.beta,
                                      "logt": ri.logt, **({"processes": world} if world > 1 else {})})
    if todo:
        model = load_affinity_model(cfg, device)     # on every rank: a bad checkpoint fails all ranks alike
        for i in tqdm(mine, desc="doei refine infer", unit="img", disable=not ri.progress or rank != 0,
                      dynamic_ncols=True):
            t = time.time()
            rid = records[i].id
            image = base.sample(i, with_mask=False).image
            classes, cams = load_cam(cam_dir / f"{rid}.npz")
            if cams.shape[1:] != image.shape[:2]:
                raise DoeiError(f"{cam_dir / (rid + '.npz')}: CAM size {cams.shape[1:]} differs from image size "
                                f"{image.shape[:2]}")
            x = torch.from_numpy(normalize(image).transpose(2, 0, 1).copy())[None]
            with torch.no_grad():
                feats = model.features(pad_to_stride(x).to(device))[0].float().cpu()
            pred = random_walk_refine(cams, classes, feats, bg_mode=ri.bg_mode, bg_threshold=ri.bg_threshold,
                                      alpha=ri.alpha, beta=ri.beta, logt=ri.logt, num_classes=d.num_classes + 1,
                                      radius=model.radius)
            save_label_png(out / f"{rid}.png", np.ascontiguousarray(pred, dtype=np.uint8))
            append_jsonl(out / LOG_FILE, {"event": "image", "id": rid, "seconds": round(time.time() - t, 4), **tag})
    computed = int(dist_util.all_reduce_sum([len(mine)])[0])       # also waits for every rank to finish
    secs = time.time() - t0
    if rank == 0:
        append_jsonl(out / LOG_FILE, {"event": "end", "time": time.time(), "computed": computed,
                                      "skipped": len(records) - len(todo), "seconds": round(secs, 3)})
    return {"computed": computed, "skipped": len(records) - len(todo), "seconds": secs, "out_dir": str(out)}
