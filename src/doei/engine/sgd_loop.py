"""The SGD + poly training loop shared by AffinityNet (:mod:`doei.engine.train_aff`) and DeepLab
(:mod:`doei.engine.train_seg`): the baselines' ``PolyOptimizer`` recipe with this project's
checkpoint/resume guarantees.

Learning rate of group ``g`` at optimiser step ``t`` (0-based) of ``T = epochs * steps_per_epoch``::

    lr_g(t) = base_lr * lr_mult_g * (1 - t / T) ** power

(PSA/MCTformer ``PolyOptimizer``: ``power`` 0.9, applied before each step.) Reproducibility as the
classifier engine (:mod:`doei.engine.train_cls`): every epoch reseeds all RNGs and the sample order
from ``(seed, epoch)`` (:mod:`doei.engine.seed`), datasets draw their augmentation from
``(seed, epoch, index)``, and the end-of-epoch checkpoint (:mod:`doei.engine.checkpoint`) holds
model/optimiser/step, so resuming after an epoch continues bit for bit on CPU.
Outputs in ``out_dir``: ``checkpoint.pt``, ``config.yaml``, ``metrics.jsonl``
(``{"kind": "step"|"epoch", ...}``). Under ``torchrun`` the loop runs data-parallel (DDP) with
``batch_size`` as the GLOBAL batch split over ranks in the single-process order; rank 0 writes
(docs/distributed.md).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
import yaml
from torch.utils.data import DataLoader, Dataset, RandomSampler

from doei.engine.checkpoint import (CHECKPOINT_NAME, METRICS_NAME, load_checkpoint, refuse_to_replace, save_checkpoint,
                                   set_rng_state)
from doei.engine.seed import epoch_seed, loader_generator, seed_everything, set_deterministic
from doei.errors import DoeiError
from doei.utils.io import append_jsonl, atomic_write_text, truncate_jsonl_epochs
from doei.utils.outdir import folder_lock


LossFn = Callable[[nn.Module, tuple, torch.device], tuple[torch.Tensor, dict[str, float]]]


def poly_factor(step: int, max_step: int, power: float) -> float:
    """``(1 - step/max_step) ** power``, 0 at and after ``max_step``."""
    if max_step <= 0 or step >= max_step:
        return 0.0
    return (1.0 - step / max_step) ** power


def build_sgd(groups: Sequence[tuple[list[nn.Parameter], float, float]], base_lr: float,
              momentum: float, kind: str = "sgd") -> torch.optim.Optimizer:
    """SGD (or AdamW with ``kind="adamw"``; ``momentum`` unused) over ``(params, lr_mult, weight_decay)``
    groups (empty groups dropped); ``foreach=False`` keeps the update order fixed. Each group stores its
    ``lr_mult`` for :func:`set_poly_lr`."""
    pg = [{"params": p, "lr": base_lr * m, "lr_mult": m, "weight_decay": wd} for p, m, wd in groups if p]
    if not pg:
        raise DoeiError("the model has no trainable parameters")
    if kind == "adamw":
        return torch.optim.AdamW(pg, lr=base_lr, foreach=False)
    if kind != "sgd":
        raise DoeiError(f"optimizer {kind!r}: expected sgd or adamw")
    return torch.optim.SGD(pg, lr=base_lr, momentum=momentum, foreach=False)


def set_poly_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> float:
    """Set every group's lr to ``base_lr * lr_mult * factor``; returns the base group's lr."""
    for g in optimizer.param_groups:
        g["lr"] = base_lr * g.get("lr_mult", 1.0) * factor
    return base_lr * factor


@dataclass
class FitResult:
    out_dir: Path
    checkpoint: Path
    epochs_run: int          # epochs trained by THIS call
    final: dict              # last epoch record ({} when nothing ran and no checkpoint)
    seconds: float


def _check_resume(saved: dict, now: dict, fixed: Sequence[str], path: Path) -> None:
    for k in fixed:
        if saved.get(k) != now.get(k):
            raise DoeiError(f"{path}: cannot resume: setting {k} = {now.get(k)!r} differs from the checkpoint's "
                            f"{saved.get(k)!r} (use another out_dir or the same settings)")


def fit(*, model: nn.Module, dataset: Dataset, loss_fn: LossFn,
        groups: Sequence[tuple[list[nn.Parameter], float, float]], base_lr: float, momentum: float, power: float,
        epochs: int, batch_size: int, seed: int, device: torch.device, out_dir: str | Path, config: dict,
        resume_fixed: Sequence[str], resume: bool | str = "auto", num_workers: int = 0, log_every: int = 10,
        progress: bool = True, deterministic: bool = True, stop_after: int | None = None, desc: str = "train",
        log: Callable[[str], None] = print, optimizer: str = "sgd", overwrite: bool = False) -> FitResult:
    """Train ``model`` with SGD + poly lr; see the module docstring.

    ``loss_fn(model, batch, device) -> (loss, parts)``; ``dataset`` may define ``set_epoch(epoch)``
    (called before each epoch's loader is built). ``resume``: True = continue from
    ``out_dir/checkpoint.pt`` (error if absent), ``"auto"`` = continue if it exists, False = start
    afresh. ``resume_fixed``: keys of ``config`` that must equal the checkpoint's to resume.
    ``stop_after``: return after at most that many epochs in this call (as an interrupted run).
    ``overwrite``: a fresh start (``resume=False``) may replace a run in ``out_dir`` (else refused). The
    folder is locked for the call (one writer).
    """
    out_dir = Path(out_dir)
    if not resume:
        refuse_to_replace(out_dir, overwrite, f"{desc} out_dir")
    with folder_lock(out_dir, f"{desc} training folder"):
        return _fit(model, dataset, loss_fn, groups, base_lr, momentum, power, epochs, batch_size, seed, device,
                    out_dir, config, resume_fixed, resume, num_workers, log_every, progress, deterministic,
                    stop_after, desc, log, optimizer)


def _fit(model, dataset, loss_fn, groups, base_lr, momentum, power, epochs, batch_size, seed, device, out_dir,
         config, resume_fixed, resume, num_workers, log_every, progress, deterministic, stop_after, desc, log,
         optimizer) -> FitResult:
    from tqdm import tqdm

    t_start = time.time()
    ckpt_path, log_path = out_dir / CHECKPOINT_NAME, out_dir / METRICS_NAME
    set_deterministic(deterministic)
    from doei.engine import distributed as dist_util

    # torchrun: batch_size is the GLOBAL batch, split over ranks in the single-process order (docs/distributed.md)
    rank, world = dist_util.init_from_env(device.type)
    device = dist_util.device_for(device)
    is_main = rank == 0
    if not is_main:
        log = lambda *_: None  # noqa: E731 - rank 0 reports
    model.to(device)
    optimizer = build_sgd(groups, base_lr, momentum, optimizer)
    n = len(dataset)
    drop_last = n > batch_size
    dist_util.global_batch_indices(range(n), batch_size, rank, world, drop_last)  # checks the split
    steps_per_epoch = n // batch_size if drop_last else 1
    max_step = steps_per_epoch * epochs

    start_epoch, step, last = 0, 0, {}
    if resume and ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path)
        _check_resume(ckpt["config"], config, resume_fixed, ckpt_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        start_epoch, step, last = ckpt["epoch"] + 1, ckpt["step"], dict(ckpt.get("metrics", {}))
        if is_main:
            truncate_jsonl_epochs(log_path, start_epoch)
        if start_epoch < epochs:
            log(f"resuming from {ckpt_path} after epoch {start_epoch}/{epochs} (step {step})")
    elif resume is True:
        raise DoeiError(f"{ckpt_path}: no checkpoint to resume from")
    elif is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if ckpt_path.exists():
            log(f"note: --overwrite: starting afresh in {out_dir} (its previous checkpoint and log are removed)")
            ckpt_path.unlink()     # never a new config and log beside the old run's weights
        atomic_write_text(log_path, "")
    if is_main:
        atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # every trainable parameter of the ResNet38 nets is in the loss (tests/test_initial_weights.py checks
        # it), so DDP need not search the graph for unused ones after every backward
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=False)
    if start_epoch < epochs:
        n_params = sum(p.numel() for p in model.parameters())
        log(f"{desc}: {n_params / 1e6:.2f} M parameters, device {device}; {n} training images, "
            f"{steps_per_epoch} steps/epoch x {epochs} epochs, base lr {base_lr:.3g}")

    end_epoch = epochs if stop_after is None else min(epochs, start_epoch + max(0, stop_after))
    for epoch in range(start_epoch, end_epoch):
        suffix = "" if rank == 0 else f"/rank{rank}"            # rank 0 draws what a single process draws
        seed_everything(epoch_seed(seed, epoch, "global" + suffix))
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        order = list(RandomSampler(dataset, generator=loader_generator(seed, epoch)))
        mine = dist_util.global_batch_indices(order, batch_size, rank, world, drop_last)
        loader = DataLoader(dataset, batch_size=batch_size // world if drop_last else len(mine), sampler=mine,
                            num_workers=num_workers, generator=loader_generator(seed, epoch, "workers" + suffix),
                            pin_memory=device.type == "cuda")
        model.train()
        t0 = time.time()
        sums: dict[str, float] = {}
        k = 0
        lr = base_lr
        bar = tqdm(loader, desc=f"{desc} epoch {epoch + 1}/{epochs}", disable=not (progress and is_main), dynamic_ncols=True,
                   leave=False)
        for batch in bar:
            lr = set_poly_lr(optimizer, base_lr, poly_factor(step, max_step, power))
            loss, parts = loss_fn(net, batch, device)
            keys = sorted(parts)                                  # rank-averaged (= global-batch) loss and parts
            red = dist_util.all_reduce_mean([loss.item(), *(float(parts[q]) for q in keys)]).tolist()
            if not math.isfinite(red[0]):
                raise DoeiError(f"{desc}: loss is {red[0]} at epoch {epoch + 1}, step {step + 1} "
                                f"(lr {lr:.3g}): lower the learning rate or check the labels")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            k += 1
            vals = {"loss": red[0], **dict(zip(keys, red[1:]))} if world > 1 else {"loss": loss.item(), **parts}
            for key, v in vals.items():
                sums[key] = sums.get(key, 0.0) + float(v)
            bar.set_postfix(loss=f"{vals['loss']:.4f}", lr=f"{lr:.2e}")
            if step % log_every == 0 and is_main:
                append_jsonl(log_path, {"kind": "step", "epoch": epoch, "step": step, "lr": lr, **vals})
        bar.close()
        record = {"kind": "epoch", "epoch": epoch, "step": step, "lr": lr,
                  **{key: v / max(k, 1) for key, v in sums.items()}, "train_seconds": round(time.time() - t0, 3)}
        if is_main:
            save_checkpoint(ckpt_path, model=model, optimizer=optimizer, epoch=epoch, step=step, config=config,
                            metrics=record)
            append_jsonl(log_path, record)
        dist_util.barrier()  # nobody runs ahead of (or reads) a checkpoint rank 0 has not written yet
        last = record
        log(f"{desc} epoch {epoch + 1}/{epochs}: loss {record.get('loss', float('nan')):.4f}, lr {lr:.2e} "
            f"[{record['train_seconds']:.0f} s]")
    return FitResult(out_dir, ckpt_path, max(0, end_epoch - start_epoch), last, time.time() - t_start)


def is_complete(out_dir: str | Path, epochs: int) -> bool:
    """True when ``out_dir/checkpoint.pt`` exists and records the last epoch as finished."""
    p = Path(out_dir) / CHECKPOINT_NAME
    if not p.is_file():
        return False
    try:
        return int(load_checkpoint(p)["epoch"]) + 1 >= epochs
    except DoeiError:
        return False
