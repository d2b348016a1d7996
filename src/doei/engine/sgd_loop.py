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

from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from doei.engine.checkpoint import CHECKPOINT_NAME, load_checkpoint
from doei.engine.loop import LossFn, Recipe, RunSettings, TrainResult, run_training
from doei.errors import DoeiError


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


def _check_resume(saved: dict, now: dict, fixed: Sequence[str], path: Path) -> None:
    for k in fixed:
        if saved.get(k) != now.get(k):
            raise DoeiError(f"{path}: cannot resume: setting {k} = {now.get(k)!r} differs from the checkpoint's "
                            f"{saved.get(k)!r} (use another out_dir or the same settings)")


Groups = Sequence[tuple[list[nn.Parameter], float, float]]


def fit(*, model: nn.Module | None = None, dataset: Dataset | None = None, loss_fn: LossFn,
        groups: Groups | None = None, base_lr: float, momentum: float, power: float,
        epochs: int, batch_size: int, seed: int, device: torch.device, out_dir: str | Path, config: dict,
        resume_fixed: Sequence[str], resume: bool | str = "auto", num_workers: int = 0, log_every: int = 10,
        progress: bool = True, deterministic: bool = True, stop_after: int | None = None, desc: str = "train",
        log: Callable[[str], None] = print, optimizer: str = "sgd", overwrite: bool = False,
        max_steps: int | None = None, sync_bn: bool = True,
        build: Callable[[], tuple[nn.Module, Dataset, Groups]] | None = None, what: str = "") -> TrainResult:
    """Train ``model`` with SGD (or AdamW) + poly lr through the one loop (:func:`doei.engine.loop.run_training`).

    Either ``model``, ``dataset`` and ``groups`` built, or ``build() -> (model, dataset, groups)``: then
    nothing is built (no data read, no net made) until the loop has checked that a fresh start may
    replace what ``out_dir`` holds and has locked the folder — the one refusal of a finished run
    (:func:`doei.engine.checkpoint.refuse_to_replace`), before any work.
    ``loss_fn(model, batch, device) -> (loss, parts)``; ``dataset`` may define ``set_epoch(epoch)``
    (called before each epoch's loader is built). ``resume``: True = continue from
    ``out_dir/checkpoint.pt`` (error if absent), ``"auto"`` = continue if it exists, False = start
    afresh. ``resume_fixed``: keys of ``config`` that must equal the checkpoint's to resume.
    ``stop_after``: return after at most that many epochs in this call (as an interrupted run).
    ``overwrite``: a fresh start (``resume=False``) may replace a run in ``out_dir`` (else refused). The
    folder is locked for the call (one writer). ``max_steps``: a capped (smoke) run, see
    :func:`doei.engine.loop.run_training`. ``sync_bn``: under DDP, BatchNorm layers in training mode
    normalise over the global batch (:mod:`doei.engine.sync_bn`). ``what``: the option that named
    ``out_dir``, for messages (default ``"<desc> out_dir"``).
    """
    given = [v is not None for v in (model, dataset, groups)]
    if not (all(given) if build is None else not any(given)):
        raise TypeError("fit: give either model, dataset and groups, or build (a function returning them)")

    def intro(n_params: int, n_images: int, spe: int, world: int) -> str:
        return (f"{desc}: {n_params / 1e6:.2f} M parameters, device {device}; {n_images} training images, "
                f"{spe} steps/epoch x {epochs} epochs, base lr {base_lr:.3g}")

    def recipe() -> Recipe:
        net, data, pgroups = build() if build is not None else (model, dataset, groups)
        opt = build_sgd(pgroups, base_lr, momentum, optimizer)
        n = len(data)
        max_step = (n // batch_size if n > batch_size else 1) * epochs
        return Recipe(model=net, optimizer=opt, dataset=data, loss_fn=loss_fn,
                      set_lr=lambda o, step: set_poly_lr(o, base_lr, poly_factor(step, max_step, power)),
                      config=config, sync_bn=sync_bn, intro=intro,
                      check_resume=lambda saved, path: _check_resume(saved, config, resume_fixed, path),
                      nonfinite_hint="lower the learning rate or check the labels")

    run = RunSettings(out_dir=out_dir, epochs=epochs, batch_size=batch_size, seed=seed, device=device, resume=resume,
                      overwrite=overwrite, num_workers=num_workers, log_every=log_every, progress=progress,
                      deterministic=deterministic, stop_after=stop_after, max_steps=max_steps, bar_desc=f"{desc} ",
                      what=what or f"{desc} out_dir", log=log)
    return run_training(recipe, run)


def is_complete(out_dir: str | Path, epochs: int) -> bool:
    """True when ``out_dir/checkpoint.pt`` exists and records the last epoch as finished."""
    p = Path(out_dir) / CHECKPOINT_NAME
    if not p.is_file():
        return False
    try:
        return int(load_checkpoint(p)["epoch"]) + 1 >= epochs
    except DoeiError:
        return False
