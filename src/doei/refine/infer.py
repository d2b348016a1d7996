"""Random-walk inference (PSA/AffinityNet): CAMs + AffinityNet features → pseudo masks, one PNG per image.

:func:`infer_pseudo_masks` writes ``refine.infer.out_dir/<id>.png`` (class-index PNGs, VOC palette)
atomically and skips images whose PNG exists, so an interrupted run resumes; its log is
``refine_infer_log.jsonl`` in the output folder. Under ``torchrun`` the images are sharded over the
ranks (byte-identical files; docs/distributed.md). ``doei refine infer`` is the command.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from doei.cam.io import load_cam
from doei.cam.visualize import save_label_png
from doei.data.build import build_dataset
from doei.engine import distributed as dist_util
from doei.engine.train_aff import _data_kwargs, build_affinity_model, normalize, require_id_files
from doei.errors import DoeiError
from doei.models.checkpoint import load_model_weights
from doei.pipeline_config import resolve_device
from doei.refine.random_walk import random_walk_refine
from doei.utils.io import append_jsonl

LOG_FILE = "refine_infer_log.jsonl"


def pad_to_stride(x: torch.Tensor, stride: int = 8) -> torch.Tensor:
    """Zero-pad ``[B,C,H,W]`` on the bottom/right to multiples of ``stride`` (the official ``infer_aff`` input)."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % stride, 0, -h % stride))


def load_affinity_model(cfg, device: str) -> torch.nn.Module:
    """The AffinityNet of ``refine.infer`` with its trained weights (ours or an official ``.pth``), in eval mode."""
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
