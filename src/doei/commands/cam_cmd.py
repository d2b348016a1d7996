"""``doei cam``: multi-scale CAMs of a data split, one ``.npz`` per image (resumable, streaming).

Examples::

    doei cam --model mctformer_v2_deit_small --num-classes 20 --dataset voc \\
        --data-root VOC2012 --split train --checkpoint ckpt.pth --out cams/ --crf-alphas 1,12
    doei cam --config cam.yaml --checkpoint ckpt.pth --split val --out cams_val/ --scales 1.0,0.5,1.5
    doei eval --pred cams/ --gt VOC2012/SegmentationClass --list VOC2012/ImageSets/Segmentation/train.txt

Writes into ``--out``: ``<id>.npz`` (``doei.cam.io`` format: only the image's ground-truth classes),
optionally ``seeds/<id>.png`` (background threshold ``--seed-beta``), ``crf_alpha<A>/<id>.png`` (MCTformer's
CRF label maps, PSA's affinity labels come from α = 1 and 12) and ``overlays/<id>.png``; plus
``cam_settings.json`` and the log ``cam_log.jsonl``. Every file is written atomically. Under
``torchrun`` the ids left to do are split over the ranks (``ids[rank::world]``), each rank writes its
own ids' files (the same bytes a single process writes), rank 0 the settings and summary
(docs/distributed.md). An id whose
outputs all exist (and whose CAM file loads with the expected classes) is skipped, so an interrupted
run continues where it stopped; a rerun with different pipeline settings into the same folder is refused.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from doei.errors import DoeiError

SETTINGS_FILE = "cam_settings.json"
LOG_FILE = "cam_log.jsonl"
# settings that change the numbers in the outputs: a resumed run must use the same ones
_PIPELINE_KEYS = ("model", "num_classes", "model_kwargs", "dataset", "split", "scales", "flip", "n_layers", "kind",
                  "patch_refine", "amp", "cam_dtype", "seed_beta", "crf_image", "checkpoint")


def _floats(spec: str, flag: str) -> list[float]:
    try:
        vals = [float(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise DoeiError(f"{flag} {spec!r}: expected comma-separated numbers, e.g. 1.0,0.5,1.5") from None
    if not vals:
        raise DoeiError(f"{flag} {spec!r}: expected at least one number")
    return vals


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("Writes into")[0].split("Examples::")[1]
    p.add_argument("--config", default=None, help="YAML file with the keys of doei.cam.config.CamConfig")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--checkpoint", required=True, help="model weights (.pth; {'model': sd}, {'state_dict': sd} "
                   "or a bare state dict; 'module.' prefixes are stripped)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--split", default=None, help="split name (train, train_aug, val, ...) or an id-list .txt")
    p.add_argument("--model", default=None, help="registered model name (default mctformer_v2_deit_small)")
    p.add_argument("--num-classes", type=int, default=None, help="foreground classes (20 VOC, 80 COCO)")
    p.add_argument("--data-root", default=None, help="dataset folder (VOC2012 layout for voc/synth)")
    p.add_argument("--dataset", choices=("voc", "synth", "coco", "folder"), default=None)
    p.add_argument("--scales", default=None, help="comma-separated scales (default 1.0, MCTformer's psa run; "
                   "MCTformer's --scales option takes e.g. 1.0,0.5,1.5)")
    p.add_argument("--no-flip", action="store_true", help="do not add the horizontally flipped views")
    p.add_argument("--n-layers", type=int, default=None, help="last blocks whose attention is summed (default 3)")
    p.add_argument("--kind", choices=("fused", "patchcam", "mtatt"), default=None, help="CAM type (default fused)")
    p.add_argument("--no-patch-refine", action="store_true", help="skip the patch-affinity refinement")
    p.add_argument("--amp", action="store_true", help="fp16 autocast on CUDA, as the official code runs")
    p.add_argument("--cam-dtype", choices=("float16", "float32"), default=None, help="stored CAM dtype")
    p.add_argument("--save-seeds", action="store_true", help="also write seeds/<id>.png at --seed-beta")
    p.add_argument("--seed-beta", "--beta", type=float, default=None, dest="seed_beta",
                   help="background threshold of the seed PNGs (default 0.4)")
    p.add_argument("--crf-alphas", default=None, help="write MCTformer CRF label maps for these background "
                   "exponents, e.g. 1,12 (PSA's affinity labels)")
    p.add_argument("--crf-image", choices=("official", "original"), default=None,
                   help="CRF colour image: 'official' = the truncated de-normalised tensor (default, as the "
                        "official code), 'original' = the image's own pixels")
    p.add_argument("--save-overlays", action="store_true", help="also write overlays/<id>.png (jet heat maps)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default 1)")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader worker processes (default 0)")
    p.add_argument("--limit", type=int, default=None, help="only the first N ids of the split (smoke tests)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_config(args: argparse.Namespace):
    """Defaults <- ``--config`` file (+ ``--set``) <- explicit flags; validated."""
    from doei.cam.config import CamConfig
    from doei.config import from_dict, load_config, to_dict

    if args.config is not None:
        cfg = load_config(CamConfig, args.config, args.set)
    elif args.set:
        from doei.config import apply_overrides
        cfg = from_dict(CamConfig, apply_overrides({}, args.set), where="--set")
    else:
        cfg = CamConfig()
    d = to_dict(cfg)
    flags: dict[str, Any] = {
        "model": args.model, "num_classes": args.num_classes, "data_root": args.data_root, "dataset": args.dataset,
        "split": args.split, "n_layers": args.n_layers, "kind": args.kind, "cam_dtype": args.cam_dtype,
        "seed_beta": args.seed_beta, "crf_image": args.crf_image, "device": args.device,
        "batch_size": args.batch_size, "num_workers": args.num_workers,
        "scales": _floats(args.scales, "--scales") if args.scales is not None else None,
        "crf_alphas": _floats(args.crf_alphas, "--crf-alphas") if args.crf_alphas is not None else None,
    }
    d.update({k: v for k, v in flags.items() if v is not None})
    for flag, key, value in (("no_flip", "flip", False), ("no_patch_refine", "patch_refine", False),
                             ("amp", "amp", True), ("save_seeds", "save_seeds", True),
                             ("save_overlays", "save_overlays", True)):
        if getattr(args, flag):
            d[key] = value
    return from_dict(CamConfig, d, where="doei cam").validate()


def open_dataset(cfg):
    """The split as a ClassificationDataset (raw access via ``.sample``), through ``doei.data``."""
    from doei.data.build import build_dataset

    return build_dataset(cfg.dataset, cfg.data_root, cfg.split)


def build_model(cfg, checkpoint: str):
    from doei.models.checkpoint import load_model_weights
    from doei.models.registry import create_model

    try:
        model = create_model(cfg.model, num_classes=cfg.num_classes, **cfg.model_kwargs)
    except TypeError as e:
        raise DoeiError(f"model_kwargs {cfg.model_kwargs}: not accepted by {cfg.model} ({e})") from None
    load_model_weights(model, checkpoint, strict=True)
    return model.eval()


class _SplitItems(torch.utils.data.Dataset):
    """Index -> dict(id, image uint8 [H,W,3], label float32 [C], views: per-scale normalised [3,h,w])."""

    def __init__(self, ds, indices: list[int], scales: list[float]) -> None:
        self.ds, self.indices, self.scales = ds, indices, scales

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        from doei.cam.extractor import official_views

        s = self.ds.sample(self.indices[i], with_mask=False)
        return {"id": s.id, "image": s.image, "label": s.label, "classes": tuple(s.classes),
                "views": official_views(s.image, self.scales)}


def _as_list(batch: list) -> list:
    return batch


def _outputs(out: Path, image_id: str, cfg) -> list[Path]:
    paths = [out / f"{image_id}.npz"]
    if cfg.save_seeds:
        paths.append(out / "seeds" / f"{image_id}.png")
    paths += [out / _crf_dir(a) / f"{image_id}.png" for a in cfg.crf_alphas]
    if cfg.save_overlays:
        paths.append(out / "overlays" / f"{image_id}.png")
    return paths


def _crf_dir(alpha: float) -> str:
    return f"crf_alpha{alpha:g}"


def _is_done(out: Path, image_id: str, classes: tuple[int, ...], cfg) -> bool:
    from doei.cam.io import load_cam

    paths = _outputs(out, image_id, cfg)
    if not all(p.is_file() for p in paths):
        return False
    try:
        got, _ = load_cam(paths[0])
    except DoeiError:
        return False
    return tuple(int(k) for k in got) == tuple(classes)


def _check_settings(out: Path, settings: dict) -> None:
    f = out / SETTINGS_FILE
    if not f.is_file():
        return
    try:
        old = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise DoeiError(f"{f}: unreadable; delete it or choose another --out") from None
    for k in _PIPELINE_KEYS:
        if old.get(k) != settings.get(k):
            raise DoeiError(f"{f}: {k} was {old.get(k)!r}, now {settings.get(k)!r}; the folder holds another run "
                            "(choose another --out)")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from doei.cam.extractor import CamExtractor
    from doei.utils.io import append_jsonl, atomic_write_json

    cfg = build_config(args)
    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        raise DoeiError(f"{ckpt}: checkpoint file not found")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise DoeiError(f"--device {cfg.device}: CUDA is not available on this machine")
    ds = open_dataset(cfg)
    if ds.num_classes != cfg.num_classes:
        raise DoeiError(f"{cfg.data_root}: dataset has {ds.num_classes} classes but num_classes is {cfg.num_classes}")
    from doei.engine import distributed as dist_util

    rank, world = dist_util.init_from_env(torch.device(cfg.device).type)
    device = dist_util.device_for(torch.device(cfg.device))   # cuda -> cuda:LOCAL_RANK with several ranks
    model = build_model(cfg, str(ckpt)).to(device)
    out = Path(args.out)
    settings = {**{k: v for k, v in vars(cfg).items()}, "checkpoint": str(ckpt.resolve())}
    _check_settings(out, settings)

    indices = list(range(len(ds)))[: args.limit] if args.limit is not None else list(range(len(ds)))
    todo = [i for i in indices if not _is_done(out, ds.records[i].id, ds.records[i].classes, cfg)]
    dist_util.barrier()  # every rank has its todo list (the same one) before anything is written
    out.mkdir(parents=True, exist_ok=True)
    log = out / LOG_FILE
    if rank == 0:
        atomic_write_json(out / SETTINGS_FILE, settings)
        append_jsonl(log, {"event": "start", "time": time.time(), "images": len(indices), "todo": len(todo),
                           "settings": settings, **({"processes": world} if world > 1 else {})})
    mine = dist_util.shard(todo, rank, world)

    extractor = CamExtractor(model, scales=cfg.scales, flip=cfg.flip, n_layers=cfg.n_layers,
                             patch_refine=cfg.patch_refine, kind=cfg.kind, amp=cfg.amp)
    loader = torch.utils.data.DataLoader(_SplitItems(ds, mine, cfg.scales), batch_size=cfg.batch_size,
                                         shuffle=False, num_workers=cfg.num_workers, collate_fn=_as_list)
    t0 = time.time()
    done = 0
    with tqdm(total=len(mine), desc="doei cam", unit="img", disable=args.no_progress or rank != 0,
              dynamic_ncols=True) as bar:
        for batch in loader:
            for item, cams in _batch_cams(extractor, batch):
                t = time.time()
                _write_outputs(out, item, cams, cfg, ds.class_names)
                append_jsonl(log, {"event": "image", "id": item["id"], "classes": list(item["classes"]),
                                   "size": list(item["image"].shape[:2]), "write_s": round(time.time() - t, 4),
                                   **({"rank": rank} if world > 1 else {})})
                done += 1
                bar.update(1)
    done = int(dist_util.all_reduce_sum([done])[0])              # also waits for every rank to finish
    elapsed = time.time() - t0
    if rank != 0:
        return 0
    append_jsonl(log, {"event": "end", "time": time.time(), "computed": done, "skipped": len(indices) - len(todo),
                       "seconds": round(elapsed, 3)})
    print(f"doei cam: {done} computed, {len(indices) - len(todo)} already done, {elapsed:.1f} s -> {out}")
    return 0


def _batch_cams(extractor, batch: list[dict]):
    """Yield (item, cams float32 [C, H, W] numpy) for a batch; images of one size share forward passes."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, item in enumerate(batch):
        groups[tuple(item["image"].shape[:2])].append(i)
    results: dict[int, np.ndarray] = {}
    for size, idx in groups.items():
        views = [torch.stack([batch[i]["views"][s] for i in idx]) for s in range(len(batch[idx[0]]["views"]))]
        labels = torch.from_numpy(np.stack([batch[i]["label"] for i in idx]))
        cams = extractor.from_views(views, labels, size).cpu().numpy()
        for j, i in enumerate(idx):
            results[i] = cams[j]
    for i, item in enumerate(batch):
        yield item, results[i]


def _write_outputs(out: Path, item: dict, cams: np.ndarray, cfg, class_names) -> None:
    from doei.cam.io import save_cam
    from doei.cam.seeds import crf_label_map, crf_with_alpha, official_crf_image, seeds_from_cams
    from doei.cam.visualize import cam_panel, save_label_png
    from doei.utils.io import atomic_save_png

    image_id = item["id"]
    classes = np.asarray(item["classes"], dtype=np.int64)
    kept = cams[classes]                                             # [K, H, W] labelled classes only
    seeds = None
    if cfg.save_seeds or cfg.save_overlays:
        seeds = seeds_from_cams(kept, cfg.seed_beta, classes)
    if cfg.save_seeds:
        save_label_png(out / "seeds" / f"{image_id}.png", seeds)
    if cfg.crf_alphas:
        if cfg.crf_image == "official":
            from doei.cam.extractor import normalize_image

            crf_img = official_crf_image(normalize_image(item["image"]))
        else:
            crf_img = np.ascontiguousarray(item["image"])
        for a in cfg.crf_alphas:
            if classes.size:
                label = crf_label_map(*crf_with_alpha(crf_img, classes, kept, a))
            else:
                label = np.zeros(item["image"].shape[:2], dtype=np.uint8)
            save_label_png(out / _crf_dir(a) / f"{image_id}.png", label)
    if cfg.save_overlays:
        atomic_save_png(out / "overlays" / f"{image_id}.png",
                        cam_panel(item["image"], classes, kept, class_names, seeds=seeds))
    # the CAM file last: its presence (with the other outputs) marks the id as done
    save_cam(out / f"{image_id}.npz", classes, kept, dtype=np.float16 if cfg.cam_dtype == "float16" else np.float32)
