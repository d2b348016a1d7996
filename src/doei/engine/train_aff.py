"""Training AffinityNet on affinity labels made from CAM seeds (PSA ``train_aff.py`` recipe).

Per image (:class:`AffinityDataset`): the CAMs ``[K,H,W]`` of ``doei cam`` give two score stacks
``[K+1,H,W]`` with a high / low background score (``low_alpha`` / ``high_alpha``, optionally
CRF-refined as the official la/ha CRF maps, :func:`doei.refine.labels.scores_with_background`);
the image is colour-jittered (brightness/contrast/saturation/hue 0.3/0.3/0.3/0.1), normalised,
randomly cropped to ``crop_size`` together with both stacks (zero padding: no score → ignored),
randomly flipped; the stacks are 8×8 average-pooled, turned into the three-way seed map and into
the ``(bg_pos, fg_pos, neg)`` pair labels ``[D, n_from]`` of :mod:`doei.refine.labels`.
Loss :func:`doei.refine.loss.affinity_loss`; SGD + poly (:mod:`doei.engine.sgd_loop`) with PSA's
four groups (backbone weights ×1 with weight decay, biases ×2, new layers ×10 with weight decay,
their biases ×20); BatchNorm frozen as the official net (:mod:`doei.models.resnet38`).

CRF-refined stacks cost ~1.1 s per VOC image, too slow to recompute every epoch: they are computed
once into ``<out_dir>/seed_scores_la<low>_ha<high>/<id>.npz`` (float16, resumable) before training, in
``refine.train.crf_workers`` processes (``benchmarks/refine_data.py`` times it against the serial loop).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from doei.cam.io import load_cam
from doei.data.build import dataset_from_config
from doei.engine import distributed as dist_util
from doei.engine.per_image import first_images
from doei.engine.seed import epoch_seed, seed_everything
from doei.engine.sgd_loop import fit
from doei.errors import DoeiError
from doei.models.initial_weights import load_initial_weights
from doei.models.registry import create_model
from doei.models.resnet38 import parameter_groups
from doei.pipeline_config import PipelineConfig, RefineTrainSection
from doei.refine.labels import affinity_labels_from_label, block_mean, scores_with_background, seed_label_from_scores
from doei.refine.loss import affinity_loss
from doei.utils.device import resolve_device
from doei.utils.io import atomic_save_npz

_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


# ------------------------------------------------------------------------------ augmentation
def item_rng(seed: int, epoch: int, index: int, stream: int = 0) -> np.random.Generator:
    """The augmentation RNG of one sample: a pure function of ``(seed, epoch, index)`` (worker-independent)."""
    return np.random.default_rng([int(seed) % (2 ** 32), int(epoch) + 1, int(index), stream])


def color_jitter(image: np.ndarray, strengths: list[float] | tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """torchvision-style ColorJitter (random order of brightness/contrast/saturation/hue) of uint8 ``[H,W,3]``,
    factors drawn from ``rng``."""
    import torchvision.transforms.functional as TF

    b, c, s, h = strengths
    if not any((b, c, s, h)):
        return image
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    ops = []
    if b:
        ops.append(lambda t, f=rng.uniform(max(0, 1 - b), 1 + b): TF.adjust_brightness(t, f))
    if c:
        ops.append(lambda t, f=rng.uniform(max(0, 1 - c), 1 + c): TF.adjust_contrast(t, f))
    if s:
        ops.append(lambda t, f=rng.uniform(max(0, 1 - s), 1 + s): TF.adjust_saturation(t, f))
    if h:
        ops.append(lambda t, f=rng.uniform(-h, h): TF.adjust_hue(t, f))
    for i in rng.permutation(len(ops)):
        x = ops[i](x)
    return x.permute(1, 2, 0).contiguous().numpy()


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 ``[H,W,3]`` → float32 ``[H,W,3]`` ``(x/255 - mean)/std`` (ImageNet)."""
    return (image.astype(np.float32) / 255.0 - _MEAN) / _STD


def random_crop_offsets(h: int, w: int, crop: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """``(img_top, img_left, cont_top, cont_left)``: a random window into the image when it is larger
    than ``crop``, else a random placement of the whole image in the ``crop×crop`` container
    (PSA ``imutils.RandomCrop`` semantics)."""
    if w > crop:
        img_left, cont_left = int(rng.integers(w - crop + 1)), 0
    else:
        img_left, cont_left = 0, int(rng.integers(crop - w + 1))
    if h > crop:
        img_top, cont_top = int(rng.integers(h - crop + 1)), 0
    else:
        img_top, cont_top = 0, int(rng.integers(crop - h + 1))
    return img_top, img_left, cont_top, cont_left


def crop_hwc(arr: np.ndarray, crop: int, offsets: tuple[int, int, int, int], fill: float = 0.0) -> np.ndarray:
    """Crop ``[H,W,C]`` into a ``[crop,crop,C]`` container filled with ``fill`` at ``offsets``."""
    h, w = arr.shape[:2]
    it, il, ct, cl = offsets
    ch, cw = min(crop, h), min(crop, w)
    out = np.full((crop, crop) + arr.shape[2:], fill, dtype=arr.dtype)
    out[ct:ct + ch, cl:cl + cw] = arr[it:it + ch, il:il + cw]
    return out


# ------------------------------------------------------------------------------ data
class AffinityDataset(Dataset):
    """``ds[i]`` → ``(image float32 [3,crop,crop], bg_pos, fg_pos, neg float32 [D,n_from])``.

    ``base`` is a :class:`doei.data.dataset.ClassificationDataset` (raw images via ``sample``);
    CAMs come from ``cam_dir/<id>.npz`` (:mod:`doei.cam.io`), CRF-refined stacks (when
    ``score_dir`` is given) from ``score_dir/<id>.npz`` (``la``, ``ha`` [K+1,H,W] float16).
    """

    def __init__(self, base, cam_dir: str | Path, sec: RefineTrainSection, score_dir: str | Path | None = None) -> None:
        self.base, self.cam_dir, self.sec = base, Path(cam_dir), sec
        self.score_dir = Path(score_dir) if score_dir is not None else None
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def _scores(self, i: int, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rid = self.base.records[i].id
        classes, cams = load_cam(self.cam_dir / f"{rid}.npz")
        if cams.shape[1:] != image.shape[:2]:
            raise DoeiError(f"{self.cam_dir / (rid + '.npz')}: CAM size {cams.shape[1:]} differs from image size "
                            f"{image.shape[:2]}")
        if self.score_dir is not None:
            with np.load(self.score_dir / f"{rid}.npz", allow_pickle=False) as z:
                return classes, z["la"].astype(np.float32), z["ha"].astype(np.float32)
        return (classes, scores_with_background(cams, self.sec.low_alpha),
                scores_with_background(cams, self.sec.high_alpha))

    def __getitem__(self, i: int):
        sec = self.sec
        rng = item_rng(sec.seed, self.epoch, i)
        image = self.base.sample(i, with_mask=False).image
        classes, la, ha = self._scores(i, image)
        k1 = la.shape[0]
        img = normalize(color_jitter(image, sec.color_jitter, rng))
        stack = np.concatenate([img, la.transpose(1, 2, 0), ha.transpose(1, 2, 0)], axis=2)
        stack = crop_hwc(stack, sec.crop_size, random_crop_offsets(*image.shape[:2], sec.crop_size, rng))
        if sec.hflip and rng.random() < 0.5:
            stack = stack[:, ::-1]
        img = np.ascontiguousarray(stack[..., :3].transpose(2, 0, 1))
        scores = np.ascontiguousarray(stack[..., 3:].transpose(2, 0, 1))
        pooled = block_mean(scores, 8)
        label = seed_label_from_scores(pooled[:k1], pooled[k1:], classes)
        bg, fg, neg = affinity_labels_from_label(label, sec.radius)
        return torch.from_numpy(img), bg, fg, neg


def _crf_scores_job(job: tuple) -> str:
    """Worker: the CRF-refined ``la``/``ha`` stacks of one image → ``<score_dir>/<id>.npz`` (float16)."""
    rid, image, cams, low_alpha, high_alpha, score_dir = job
    la = scores_with_background(cams, low_alpha, image)
    ha = scores_with_background(cams, high_alpha, image)
    atomic_save_npz(Path(score_dir) / f"{rid}.npz", la=la.astype(np.float16), ha=ha.astype(np.float16))
    return rid


def precompute_crf_scores(base, cam_dir: str | Path, score_dir: str | Path, sec: RefineTrainSection,
                          progress: bool = True) -> int:
    """Write ``score_dir/<id>.npz`` (``la``, ``ha`` CRF-refined ``[K+1,H,W]`` float16) for every image that
    lacks one (atomic, resumable); returns how many were computed.

    With ``sec.crf_workers > 0`` the CRFs run in that many spawned processes (as ``doei infer-seg``'s
    CRF pool): the main process reads image + CAMs and keeps at most ``2 × crf_workers`` images in
    flight; every file is computed by the same function, so the cache is identical for any count.
    Under torchrun (process group joined) the missing ids are split ``todo[rank::world]`` after a
    barrier, each rank writes its own files, and the returned count is the sum over ranks (the
    all-reduce also waits until every rank's files exist, before training reads them)."""
    import multiprocessing as mp

    from tqdm import tqdm


    score_dir = Path(score_dir)
    todo = [i for i, r in enumerate(base.records) if not (score_dir / f"{r.id}.npz").is_file()]
    dist_util.barrier()  # every rank has the same todo list before anything is written
    rank = dist_util.rank()
    mine = dist_util.shard(todo, rank, dist_util.world_size())
    workers = sec.crf_workers if len(mine) > 1 else 0
    pool = mp.get_context("spawn").Pool(workers) if workers else None
    pending: list = []
    try:
        for i in tqdm(mine, desc="seed CRF scores", disable=not progress or rank != 0, dynamic_ncols=True,
                      leave=False):
            rid = base.records[i].id
            image = np.ascontiguousarray(base.sample(i, with_mask=False).image)
            _, cams = load_cam(Path(cam_dir) / f"{rid}.npz")
            job = (rid, image, cams, sec.low_alpha, sec.high_alpha, str(score_dir))
            if pool is None:
                _crf_scores_job(job)
                continue
            pending.append(pool.apply_async(_crf_scores_job, (job,)))
            while len(pending) > 2 * workers:
                pending.pop(0).get()
        for p in pending:
            p.get()
        if pool is not None:
            pool.close()
            pool.join()
            pool = None
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return int(dist_util.all_reduce_sum([len(mine)])[0])


def affinity_loss_fn(model: nn.Module, batch: tuple, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
    """AffinityNet forward on a batch + :func:`doei.refine.loss.affinity_loss`."""
    x, bg, fg, neg = batch
    aff = model(x.to(device))
    return affinity_loss(aff, bg.to(device), fg.to(device), neg.to(device))


# ------------------------------------------------------------------------------ model
def build_affinity_model(name: str, options: dict, init_weights: str | None = None, radius: int = 5,
                         log: Callable[[str], None] | None = None) -> nn.Module:
    """A registered AffinityNet (``psa_resnet38_aff`` or ``psa_resnet38_aff_small``) whose pair radius is
    ``radius``, with optional initial weights (ImageNet ``.params`` / classification ResNet38 weights lack
    the heads ``f8_3``, ``f8_4``, ``f8_5``, ``f9``): loaded non-strictly after a coverage check
    (:mod:`doei.models.initial_weights`: too few matching keys is a one-line error), reported to ``log``."""
    import doei.models.resnet38_small  # noqa: F401  (registers the reduced-width factories)

    try:
        model = create_model(name, **options)
    except (TypeError, ValueError) as e:
        raise DoeiError(f"refine model {name!r} with options {options}: {e}") from None
    if not hasattr(model, "features") or not hasattr(model, "from_scratch_names"):
        raise DoeiError(f"refine model {name!r}: not an AffinityNet (expected psa_resnet38_aff or psa_resnet38_aff_small)")
    model.radius = radius
    if init_weights:
        cov = load_initial_weights(model, init_weights, name)
        if log is not None:
            log(f"refine.train.init_weights {init_weights}: {cov.summary()}")
    return model


def _fixed_keys() -> list[str]:
    return ["model", "model_options", "init_weights", "cam_dir", "split", "low_alpha", "high_alpha", "crf",
            "crop_size", "batch_size", "epochs", "lr", "weight_decay", "momentum", "optimizer", "power", "color_jitter",
            "hflip", "radius", "seed", "data"]


def train_affinity(cfg: PipelineConfig, resume: bool | str = "auto", stop_after: int | None = None,
                   log: Callable[[str], None] = print, overwrite: bool = False, limit: int | None = None,
                   max_steps: int | None = None):
    """Train AffinityNet as configured in ``cfg.refine.train`` on ``cfg.data``; returns a
    :class:`doei.engine.loop.TrainResult`. Writes into ``refine.train.out_dir``.
    A fresh start (``resume=False``) into a folder that holds a run is refused unless ``overwrite``; the
    folder is locked for the call (one writer). A capped (smoke) run: ``limit`` = only the first N images
    of the split (CAMs, CRF cache, training samples), ``max_steps`` = exactly that many optimiser steps
    (:func:`doei.engine.loop.run_training`). The CRF cache's seconds are in the result's ``phases``."""
    sec = cfg.refine.train
    d = cfg.data
    out_dir = Path(sec.out_dir)
    phases: dict = {}

    def build():        # called by the loop once it has refused to replace a finished run and locked the folder
        base = first_images(dataset_from_config(cfg.data, sec.split), limit)
        cam_dir = Path(sec.cam_dir)
        require_id_files(cam_dir, base.ids, ".npz", "CAM", "run doei cam first, or set refine.train.cam_dir", sec.split)
        score_dir = None
        dist_util.init_from_env(torch.device(resolve_device(sec.device)).type)  # torchrun: the score cache is sharded
        if sec.crf:
            score_dir = out_dir / f"seed_scores_la{sec.low_alpha:g}_ha{sec.high_alpha:g}"  # one cache per alpha pair
            t0 = time.time()
            n = precompute_crf_scores(base, cam_dir, score_dir, sec, sec.progress)
            phases.update(crf_cache_images=n, crf_cache_seconds=round(time.time() - t0, 3))
            if n and dist_util.is_main():
                log(f"computed CRF seed scores of {n} images into {score_dir} [{phases['crf_cache_seconds']:.0f} s]")
        ds = AffinityDataset(base, cam_dir, sec, score_dir)
        seed_everything(epoch_seed(sec.seed, -1, "init"))
        model = build_affinity_model(sec.model, sec.model_options, sec.init_weights, sec.radius,
                                     log=log if dist_util.is_main() else None)
        w, b, hw, hb = parameter_groups(model)
        return model, ds, [(w, 1.0, sec.weight_decay), (b, 2.0, 0.0), (hw, 10.0, sec.weight_decay), (hb, 20.0, 0.0)]

    config = {**{k: v for k, v in vars(sec).items()}, "data": vars(d).copy()}
    res = fit(build=build, loss_fn=affinity_loss_fn, base_lr=sec.lr, momentum=sec.momentum, optimizer=sec.optimizer,
              power=sec.power, epochs=sec.epochs, batch_size=sec.batch_size, seed=sec.seed,
              device=torch.device(resolve_device(sec.device)), out_dir=out_dir, config=config,
              resume_fixed=_fixed_keys(), resume=resume, num_workers=sec.num_workers, log_every=sec.log_every,
              progress=sec.progress, deterministic=sec.deterministic, stop_after=stop_after, desc="affinity",
              log=log, overwrite=overwrite, max_steps=max_steps, sync_bn=sec.sync_bn, what="refine.train.out_dir")
    res.phases.update(phases)
    return res

def require_id_files(folder: Path, ids: Sequence[str], suffix: str, what: str, hint: str,
                     split: str | None = None) -> None:
    """Refuse a stage's per-image input folder unless it holds ``<id><suffix>`` for every id.

    Used for the CAM ``.npz`` files read by AffinityNet training and the random walk and the pseudo
    masks read by DeepLab training, so a missing input is reported before any output is written:
    one-line ``DoeiError`` naming the folder (``hint`` says how to make it) or the first missing
    file and how many of ``ids`` (of ``split``) lack one.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DoeiError(f"{folder}: {what} folder not found ({hint})")
    missing = [i for i in ids if not (folder / f"{i}{suffix}").is_file()]
    if missing:
        of_split = f" of split {split!r}" if split is not None else ""
        raise DoeiError(f"{folder}/{missing[0]}{suffix}: {what} file missing ({len(missing)} of {len(ids)} ids"
                        f"{of_split} have none)")


__all__ = ["AffinityDataset", "train_affinity", "require_id_files", "build_affinity_model", "precompute_crf_scores",
           "color_jitter", "random_crop_offsets", "crop_hwc", "item_rng", "normalize", "affinity_loss_fn"]
