"""The one training loop: the classifier (:mod:`doei.engine.train_cls`), AffinityNet and DeepLab
(:mod:`doei.engine.sgd_loop`) differ only in what they hand it.

:func:`run_training` takes a built model and optimiser, a dataset, and the recipe as plain callables:

* ``loss_fn(net, batch, device) -> (loss, parts)`` — the forward pass and objective (``parts``: named
  terms, logged beside ``loss``, in sorted order);
* ``set_lr(optimizer, step) -> lr`` — the schedule, applied before every step (warm-up + cosine for the
  classifier, poly for the ResNet38 nets), returning the lr to log.

It owns everything else, identically for the three: the one-writer folder lock and the refusal to replace a
finished run (``overwrite``); per-epoch reseeding of every RNG and of the sample order from ``(seed,
epoch)`` (:mod:`doei.engine.seed`), so a run resumed after an epoch continues bit for bit on CPU;
``torchrun`` DDP with ``batch_size`` as the GLOBAL batch (each rank takes its share of every
single-process batch; logged losses are means over ranks; a batch the W processes cannot split evenly
trains on the largest W' <= W dividing it while the other ranks follow each step idle — the world-size
rule of docs/distributed.md — and BatchNorm layers optionally normalise over the global batch,
``sync_bn``); the optional GradScaler (AMP) and gradient
clipping; a non-finite loss stopping the run with one line; optional validation; the end-of-epoch
checkpoint (model, optimiser, scaler, step, RNG, config) written atomically by rank 0, ``config.yaml`` and
``metrics.jsonl`` (``{"kind": "step"|"epoch", ...}``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import yaml
from torch.utils.data import DataLoader, Dataset, RandomSampler
from tqdm import tqdm

from doei.engine import distributed as dist_util
from doei.engine.sync_bn import synchronized_batchnorm
from doei.engine.checkpoint import (CHECKPOINT_NAME, METRICS_NAME, load_checkpoint, refuse_to_replace,
                                   save_checkpoint, set_rng_state)
from doei.engine.seed import epoch_seed, loader_generator, seed_everything, set_deterministic
from doei.errors import DoeiError
from doei.utils.io import append_jsonl, atomic_write_text, truncate_jsonl_epochs
from doei.utils.outdir import folder_lock

LossFn = Callable[[nn.Module, Any, torch.device], tuple[torch.Tensor, dict[str, Any]]]


@dataclass
class TrainResult:
    """What a training call leaves behind."""

    out_dir: Path
    checkpoint: Path
    epochs_run: int          # epochs trained by THIS call (0 when the run was already complete)
    final: dict              # the last epoch record ({} when nothing ran and there is no checkpoint)
    seconds: float
    phases: dict = field(default_factory=dict)   # seconds of work done before the loop, e.g. {"crf_cache": 12.3}


@dataclass
class Recipe:
    """What one training differs in (the classifier, AffinityNet, DeepLab): the built parts and a few functions.

    ``check_resume(saved_config, path)`` refuses a checkpoint made with other settings; ``validate(epoch,
    model)`` returns extra epoch-record fields (rank 0); ``describe(record)`` / ``intro(n_params, n_images,
    steps_per_epoch, world)`` make the printed lines; ``sync_bn``: under DDP, BatchNorm layers in training
    mode normalise over the global batch (:mod:`doei.engine.sync_bn`), no effect with one process."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    dataset: Dataset
    loss_fn: LossFn
    set_lr: Callable[[torch.optim.Optimizer, int], float]
    config: dict
    check_resume: Callable[[dict, Path], None]
    scaler: Any = None
    clip_grad: float | None = None
    find_unused_parameters: bool = False
    sync_bn: bool = True
    validate: Callable[[int, nn.Module], dict] | None = None
    describe: Callable[[dict], str] | None = None
    intro: Callable[[int, int, int, int], str] | None = None
    nonfinite_hint: str = "lower the learning rate or check the data"


@dataclass
class RunSettings:
    """Where and how long one training runs. ``resume``: True = continue from ``out_dir/checkpoint.pt``
    (error if absent), ``"auto"`` = continue if it exists, False = start afresh (refused while the folder
    holds a run unless ``overwrite``). ``stop_after``: return after that many epochs of this call.
    ``max_steps`` (smoke runs): exactly that many optimiser steps of ``batch_size`` in one epoch, the
    dataset's samples repeated in order as often as needed (:class:`RepeatedDataset`); the run then counts
    as complete. ``what`` names the folder's option in messages; ``bar_desc`` prefixes bars and lines."""

    out_dir: str | Path
    epochs: int
    batch_size: int
    seed: int
    device: torch.device
    resume: bool | str = "auto"
    overwrite: bool = False
    num_workers: int = 0
    log_every: int = 10
    progress: bool = True
    deterministic: bool = True
    stop_after: int | None = None
    max_steps: int | None = None
    bar_desc: str = ""
    what: str = "out_dir"
    log: Callable[[str], None] = print


def run_training(recipe: Recipe | Callable[[], Recipe], run: RunSettings) -> TrainResult:
    """Train as the module docstring says: refuse to replace a finished run (before anything is built), lock
    the folder, build the recipe if it is a function, resume or start, then the epochs."""
    max_steps = run.max_steps
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps = {max_steps!r}: expected an int >= 1 or None")
    out_dir = Path(run.out_dir)
    if not run.resume:
        refuse_to_replace(out_dir, run.overwrite, run.what)
    with folder_lock(out_dir, "training folder"):
        return _loop(recipe if isinstance(recipe, Recipe) else recipe(), run, out_dir)


@dataclass
class _Place:
    """This process's part in the run (set up once by :func:`_loop`, read by :func:`_epochs`)."""

    net: nn.Module
    dataset: Dataset
    device: torch.device
    rank: int
    world: int
    active: int
    drop_last: bool
    steps_per_epoch: int
    epochs: int
    start_epoch: int
    end_epoch: int
    step: int
    ckpt_path: Path
    log_path: Path
    log: Callable[[str], None]


def _loop(r: Recipe, s: RunSettings, out_dir: Path) -> TrainResult:
    t_start = time.time()
    ckpt_path, log_path = out_dir / CHECKPOINT_NAME, out_dir / METRICS_NAME
    set_deterministic(s.deterministic)
    rank, world = dist_util.init_from_env(s.device.type)         # torchrun: join the group; else (0, 1)
    device = dist_util.device_for(s.device)
    is_main = rank == 0
    log = s.log if is_main else (lambda *_: None)    # rank 0 reports
    model, optimizer, scaler, dataset = r.model, r.optimizer, r.scaler, r.dataset
    epochs, batch_size, max_steps = s.epochs, s.batch_size, s.max_steps
    model.to(device)
    if max_steps is not None:                 # a smoke run: max_steps full batches, then done
        dataset, epochs = RepeatedDataset(dataset, max_steps * batch_size), 1
    n = len(dataset)
    drop_last = n > batch_size
    # the world-size rule: ranks 0..active-1 split every global batch evenly, the others wait
    active = dist_util.active_world(batch_size if drop_last else max(n, 1), world)
    dist_util.global_batch_indices(range(n), batch_size, min(rank, active - 1), active, drop_last)  # checks the split
    steps_per_epoch = n // batch_size if drop_last else 1

    start_epoch, step, last = 0, 0, {}
    if s.resume and ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path)
        r.check_resume(ckpt["config"], ckpt_path)
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            if scaler is not None and scaler.is_enabled() and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            set_rng_state(ckpt["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DoeiError(f"{ckpt_path}: cannot resume: the checkpoint does not fit this run's model/optimiser "
                            f"({first[:160]}); use another out_dir or --overwrite") from None
        start_epoch, step, last = ckpt["epoch"] + 1, ckpt["step"], dict(ckpt.get("metrics", {}))
        if is_main:
            truncate_jsonl_epochs(log_path, start_epoch)
        if start_epoch < epochs:
            log(f"resuming from {ckpt_path} after epoch {start_epoch}/{epochs} (step {step})")
    elif s.resume is True:
        raise DoeiError(f"{ckpt_path}: no checkpoint to resume from (run without --resume first)")
    elif is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if ckpt_path.exists():
            log(f"note: --overwrite: starting afresh in {out_dir} (its previous checkpoint and log are removed)")
            ckpt_path.unlink()     # never a new config and log beside the old run's weights
        atomic_write_text(log_path, "")
    if is_main:
        atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(r.config, sort_keys=False))
    if start_epoch < epochs and r.intro is not None:
        log(r.intro(sum(p.numel() for p in model.parameters()), n, steps_per_epoch, active))
        if active < world:
            log(f"global batch {batch_size if drop_last else n} does not split evenly over {world} processes: "
                f"{active} train ({(batch_size if drop_last else n) // active} images each), {world - active} wait "
                "(docs/distributed.md)")
    end_epoch = epochs if s.stop_after is None else min(epochs, start_epoch + max(0, s.stop_after))
    with dist_util.training_ranks(active) as ranks, synchronized_batchnorm(model, r.sync_bn and rank < active):
        net = model
        if active > 1 and rank < active:  # gradients averaged over the training ranks (parameters equal: same seed)
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                          find_unused_parameters=r.find_unused_parameters, process_group=ranks.group)
        place = _Place(net, dataset, device, rank, world, active, drop_last, steps_per_epoch, epochs, start_epoch,
                       end_epoch, step, ckpt_path, log_path, log)
        last = _epochs(r, s, place) or last
        if active < world and end_epoch > start_epoch:   # the waiting ranks take the trained weights
            for t in [*model.parameters(), *model.buffers()]:
                torch.distributed.broadcast(t.data, src=0)
    return TrainResult(out_dir, ckpt_path, max(0, end_epoch - start_epoch), last, time.time() - t_start)


def _epochs(r: Recipe, s: RunSettings, p: _Place) -> dict:
    """Epochs ``start_epoch..end_epoch-1``; returns the last epoch record ({} when none ran). Ranks
    ``>= active`` load nothing and compute nothing: they follow each step in the loss all-reduce."""
    model, optimizer, scaler, dataset, net, device = r.model, r.optimizer, r.scaler, p.dataset, p.net, p.device
    rank, world, active, step, log = p.rank, p.world, p.active, p.step, p.log
    seed, batch_size, epochs, bar_desc = s.seed, s.batch_size, p.epochs, s.bar_desc
    is_main = rank == 0
    training = rank < active
    group = dist_util.current_training_ranks().group
    last: dict = {}
    for epoch in range(p.start_epoch, p.end_epoch):
        suffix = "" if rank == 0 else f"/rank{rank}"            # rank 0 draws what a single process draws
        seed_everything(epoch_seed(seed, epoch, "global" + suffix))
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        # the single-process order; this rank's share of every global batch (all of it with one process)
        order = list(RandomSampler(dataset, generator=loader_generator(seed, epoch)))
        if training:
            mine = dist_util.global_batch_indices(order, batch_size, rank, active, p.drop_last)
            loader = DataLoader(dataset, batch_size=batch_size // active if p.drop_last else len(mine), sampler=mine,
                                num_workers=s.num_workers, generator=loader_generator(seed, epoch, "workers" + suffix),
                                pin_memory=device.type == "cuda")
        else:                                     # a waiting rank: one empty step per training step
            loader = [None] * p.steps_per_epoch
        model.train()
        t0 = time.time()
        sums: dict[str, float] = {}
        compute: list[float] = []
        k = 0
        lr = float("nan")
        bar = tqdm(loader, desc=f"{bar_desc}epoch {epoch + 1}/{epochs}", disable=not (s.progress and is_main),
                   dynamic_ncols=True, leave=False)
        for batch in bar:
            lr = r.set_lr(optimizer, step)
            if not training:                      # the loss of rank 0 (the only non-zero term), for the check below
                red = dist_util.all_reduce_sum([0.0], device).tolist()
                if not math.isfinite(red[0]):
                    raise DoeiError(f"{bar_desc}loss is {red[0]} at epoch {epoch + 1}, step {step + 1} "
                                    f"(lr {lr:.3g}): {r.nonfinite_hint}")
                step += 1
                continue
            tc = time.time()
            loss, parts = r.loss_fn(net, batch, device)
            keys = sorted(parts)                                  # rank-averaged (= global-batch) loss and parts
            red = [loss.item(), *(float(parts[q]) for q in keys)]
            if active > 1:
                red = (dist_util.all_reduce_sum(red, device, group=group) / active).tolist()
            if active < world:                    # the waiting ranks learn the loss (and stop with us if not finite)
                dist_util.all_reduce_sum([red[0] if is_main else 0.0], device)
            if not math.isfinite(red[0]):
                raise DoeiError(f"{bar_desc}loss is {red[0]} at epoch {epoch + 1}, step {step + 1} "
                                f"(lr {lr:.3g}): {r.nonfinite_hint}")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None and scaler.is_enabled():
                scaler.scale(loss).backward()
                if r.clip_grad:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), r.clip_grad)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                if r.clip_grad:
                    nn.utils.clip_grad_norm_(model.parameters(), r.clip_grad)
                optimizer.step()
            if s.max_steps is not None:             # smoke runs: the step's compute, without waiting for data
                compute.append(round(time.time() - tc, 3))
            step += 1
            k += 1
            vals = {"loss": red[0], **dict(zip(keys, red[1:]))}
            for key, v in vals.items():
                sums[key] = sums.get(key, 0.0) + v
            bar.set_postfix(loss=f"{vals['loss']:.4f}", lr=f"{lr:.2e}")
            if step % s.log_every == 0 and is_main:
                append_jsonl(p.log_path, {"kind": "step", "epoch": epoch, "step": step, "lr": lr, **vals})
        bar.close()
        record = {"kind": "epoch", "epoch": epoch, "step": step, "lr": lr,
                  **{key: v / max(k, 1) for key, v in sums.items()}, "train_seconds": round(time.time() - t0, 3)}
        if compute:
            record["step_compute_seconds"] = compute
        if is_main and r.validate is not None:
            record.update(r.validate(epoch, model))
        if is_main:
            save_checkpoint(p.ckpt_path, model=model, optimizer=optimizer, scaler=scaler, epoch=epoch, step=step,
                            config=r.config, metrics=record)
            append_jsonl(p.log_path, record)
        dist_util.barrier()  # nobody runs ahead of (or reads) a checkpoint rank 0 has not written yet
        last = record
        if is_main:
            log(r.describe(record) if r.describe is not None else
                f"{bar_desc}epoch {epoch + 1}/{epochs}: loss {record.get('loss', float('nan')):.4f}, lr {lr:.2e} "
                f"[{record['train_seconds']:.0f} s]")
    return last




class RepeatedDataset(Dataset):
    """The first ``length`` samples of ``base`` repeated in order (index ``i`` reads ``base[i % len(base)]``);
    ``set_epoch`` is passed on. Smoke runs use it to fill whole batches from a few images."""

    def __init__(self, base: Dataset, length: int) -> None:
        if len(base) < 1:
            raise DoeiError("the training set is empty: nothing to repeat for the capped steps")
        self.base, self.length = base, int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        return self.base[i % len(self.base)]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)


__all__ = ["run_training", "Recipe", "RunSettings", "TrainResult", "LossFn", "RepeatedDataset"]
