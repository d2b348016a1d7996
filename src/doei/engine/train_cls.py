"""Training the WSSS classifier (MCTformer-V2 and friends): one plain, linear loop.

Objective (MCTformer-V2, official engine.py): ``multilabel_soft_margin_loss(cls_logits, y) +
multilabel_soft_margin_loss(patch_logits, y)`` with ``cls_logits`` from the class tokens and
``patch_logits`` from the conv head on the patch tokens; a model returning one tensor uses the first
term only. AdamW + warm-up + cosine (:mod:`doei.engine.optim`), AMP (fp16 autocast + GradScaler) on
CUDA only, DOEI on or off from the config's ``doei`` section (it acts inside the forward pass, in
training as in inference).

Reproducibility: every epoch reseeds all RNGs and the loader order from ``(seed, epoch)``
(:mod:`doei.engine.seed`), the checkpoint written atomically at the end of every epoch holds
model/optimiser/scaler/step, so ``resume=True`` continues bit for bit (CPU; CUDA with
``train.deterministic``). Outputs in ``train.out_dir``: ``checkpoint.pt``, ``config.yaml``,
``metrics.jsonl`` (``{"kind": "step"|"epoch", ...}`` records).

Multi-process (``torchrun``, docs/distributed.md): ``train.batch_size`` is the GLOBAL batch; each of
the W processes takes ``batch_size / W`` samples of every single-process batch (same epoch order),
the model is wrapped in DistributedDataParallel (gradients averaged), logged losses are averaged over
ranks, and only rank 0 validates and writes the checkpoint, config and log.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import yaml
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler

from doei.engine import distributed as dist_util
from doei.engine.checkpoint import (CHECKPOINT_NAME, METRICS_NAME, load_checkpoint, refuse_to_replace, save_checkpoint,
                                   set_rng_state)
from doei.engine.classifier import build_classifier, load_classifier
from doei.engine.losses import classification_loss, prediction_logits
from doei.engine.optim import build_optimizer, lr_at, set_lr
from doei.engine.seed import epoch_seed, loader_generator, seed_everything, set_deterministic
from doei.errors import DoeiError
from doei.train_config import TrainConfig, train_config_from_dict
from doei.utils.device import resolve_device
from doei.utils.io import append_jsonl, atomic_write_text, truncate_jsonl_epochs
from doei.utils.outdir import folder_lock

# Config sections that must not change when resuming (they change what the epochs compute).
_RESUME_FIXED = ("model", "data", "optim", "doei")
_RESUME_FIXED_TRAIN = ("batch_size", "seed", "epochs", "num_workers", "amp")


# ------------------------------------------------------------------------------- building blocks
def train_transform(cfg: TrainConfig) -> Callable:
    """The training augmentation named by ``data.transform`` (the data module's implementations)."""
    from doei.data import transforms as T

    d, size = cfg.data, cfg.model.img_size
    if d.transform == "mctformer":
        return T.mctformer_train_transform(size)
    if d.transform == "simple":
        return T.simple_train_transform(size, scale=tuple(d.crop_scale), hflip=d.hflip, color_jitter=d.color_jitter)
    return T.resize_transform(size)


def build_dataset(cfg: TrainConfig, split: str, transform: Callable | None) -> Dataset:
    """A :class:`doei.data.dataset.ClassificationDataset` for ``split`` of the configured source
    (through :func:`doei.data.build.build_dataset`, with the data-section options its kind declares)."""
    from doei.data.build import build_dataset as build
    from doei.data.build import dataset_options

    d = cfg.data
    return build(d.kind, d.root, split, transform=transform, **dataset_options(d))


def average_precision(scores: Tensor, targets: Tensor) -> Tensor:
    """AP per column: scores, targets [N, K] → [K] (NaN for a column without positives).

    Non-interpolated AP = mean over positives of the precision at their rank (ranks by descending
    score, ties in index order; scikit-learn groups tied scores instead, which differs only on ties).
    """
    n = scores.shape[0]
    order = scores.argsort(dim=0, descending=True, stable=True)
    t = targets.gather(0, order).double()
    hits = t.cumsum(0)
    precision = hits / torch.arange(1, n + 1, dtype=torch.float64, device=scores.device)[:, None]
    pos = t.sum(0)
    return torch.where(pos > 0, (precision * t).sum(0) / pos.clamp_min(1), torch.full_like(pos, float("nan")))


def classification_metrics(logits: Tensor, targets: Tensor) -> dict[str, float]:
    """``mAP`` (per-class AP averaged over classes with a positive), ``mAP_img`` (per-image AP averaged
    over images with a label: the number MCTformer's evaluate() prints), micro ``F1`` / ``precision`` /
    ``recall`` at sigmoid ≥ 0.5. logits, targets [N, C]; percent."""
    probs = logits.float().sigmoid()
    ap_c = average_precision(probs, targets)
    ap_i = average_precision(probs.T, targets.T)
    pred = probs >= 0.5
    tp = (pred & (targets > 0)).sum().item()
    p, t = pred.sum().item(), (targets > 0).sum().item()
    prec = tp / p if p else 0.0
    rec = tp / t if t else 0.0
    f1 = 2 * tp / (p + t) if p + t else 0.0
    nanmean = lambda v: float(v[~v.isnan()].mean()) if (~v.isnan()).any() else float("nan")  # noqa: E731
    return {"mAP": 100 * nanmean(ap_c), "mAP_img": 100 * nanmean(ap_i), "F1": 100 * f1,
            "precision": 100 * prec, "recall": 100 * rec}


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool = False,
                   progress: bool = False) -> tuple[Tensor, Tensor]:
    """Class-token logits and targets of a whole loader: ([N, C], [N, C]) float32 on the CPU."""
    from tqdm import tqdm

    model.eval()
    outs, ys = [], []
    for x, y, *_ in tqdm(loader, desc="val", leave=False, disable=not progress, dynamic_ncols=True):
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
            out = model(x.to(device))
        out = prediction_logits(model, out)  # TransCAM: conv + trans logits; MCTformer: class tokens
        outs.append(out.float().cpu())
        ys.append(y.float())
    return torch.cat(outs), torch.cat(ys)


@dataclass
class TrainResult:
    """What :func:`train` leaves behind."""

    out_dir: Path
    checkpoint: Path
    epochs_run: int          # epochs trained by THIS call (0 when the run was already complete)
    final: dict              # the last epoch record
    seconds: float


def load_trained_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, TrainConfig]:
    """The network of a training checkpoint (through :func:`doei.engine.classifier.load_classifier`, the one
    loader) and its stored training config."""
    model, _ = load_classifier(path, device=device)
    return model, train_config_from_dict(load_checkpoint(path)["config"], where=f"{path}:config")


def _check_resume_config(saved: dict, now: dict, path: Path) -> None:
    for sec in _RESUME_FIXED:
        if saved.get(sec) != now.get(sec):
            keys = sorted(k for k in set(saved.get(sec, {})) | set(now.get(sec, {}))
                          if saved.get(sec, {}).get(k) != now.get(sec, {}).get(k))
            raise DoeiError(f"{path}: cannot resume: config {sec}.{keys[0] if keys else '?'} differs from the "
                            f"checkpoint's ({saved.get(sec, {}).get(keys[0]) if keys else '?'!r})")
    for k in _RESUME_FIXED_TRAIN:
        if saved["train"].get(k) != now["train"].get(k):
            raise DoeiError(f"{path}: cannot resume: config train.{k} = {now['train'].get(k)!r} differs from the "
                            f"checkpoint's {saved['train'].get(k)!r}")


# ------------------------------------------------------------------------------------ the loop
def train(cfg: TrainConfig, resume: bool | str = False, log: Callable[[str], None] = print,
          stop_after: int | None = None, overwrite: bool = False) -> TrainResult:
    """Train the classifier of ``cfg``. ``resume``: True = continue from ``out_dir/checkpoint.pt``
    (error if absent), ``"auto"`` = continue if it exists, False = start afresh — refused when the folder
    holds a run (a checkpoint or a non-empty metrics log) unless ``overwrite``, which replaces it.
    ``stop_after``: return after at most that many epochs in this call (the schedule still spans
    ``train.epochs``; a later ``resume`` continues), as an interrupted run would. The folder is locked
    for the call (:func:`doei.utils.outdir.folder_lock`: a second writer is refused at once)."""
    out_dir = Path(cfg.train.out_dir)
    if not resume:
        refuse_to_replace(out_dir, overwrite, "train.out_dir")
    with folder_lock(out_dir, "training folder"):
        return _train(cfg, resume, log, stop_after)


def _train(cfg: TrainConfig, resume: bool | str, log: Callable[[str], None], stop_after: int | None) -> TrainResult:
    t_start = time.time()
    from tqdm import tqdm

    tc = cfg.train
    out_dir = Path(tc.out_dir)
    ckpt_path, log_path = out_dir / CHECKPOINT_NAME, out_dir / METRICS_NAME
    device = torch.device(resolve_device(tc.device, "train.device"))
    rank, world = dist_util.init_from_env(device.type)        # torchrun: join the group; else (0, 1)
    device = dist_util.device_for(device)
    is_main = rank == 0
    if not is_main:
        log = lambda *_: None  # noqa: E731 - rank 0 reports
    use_amp = bool(tc.amp and device.type == "cuda")
    set_deterministic(tc.deterministic)
    cfg_dict = cfg.to_dict()

    # -- model and optimiser (init seeded from the run seed, not from whatever ran before)
    seed_everything(epoch_seed(tc.seed, -1, "init"))
    model = build_classifier(cfg).to(device)
    peak_lr = cfg.peak_lr()
    optimizer = build_optimizer(model, peak_lr, cfg.optim.weight_decay, tuple(cfg.optim.betas), cfg.optim.eps)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    # -- data: per-epoch seeded order; workers seeded from the same generator
    train_ds = build_dataset(cfg, cfg.data.train_split, train_transform(cfg))
    val_ds = None
    if cfg.data.val_split:
        from doei.data.transforms import eval_transform, resize_transform

        # MCTformer validates on Resize(size·256/224) + CenterCrop(size); small models on a plain resize
        vt = eval_transform if cfg.data.transform == "mctformer" else resize_transform
        val_ds = build_dataset(cfg, cfg.data.val_split, vt(cfg.model.img_size))
    n_classes = getattr(train_ds, "num_classes", cfg.model.num_classes)
    if n_classes != cfg.model.num_classes:
        raise DoeiError(f"model.num_classes = {cfg.model.num_classes} but {cfg.data.root} has {n_classes} classes")
    drop_last = len(train_ds) > tc.batch_size
    dist_util.global_batch_indices(range(len(train_ds)), tc.batch_size, rank, world, drop_last)  # checks the split
    steps_per_epoch = len(train_ds) // tc.batch_size if drop_last else 1

    # -- resume
    start_epoch, step, last = 0, 0, {}
    if resume and ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path)
        _check_resume_config(ckpt["config"], cfg_dict, ckpt_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if use_amp and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        start_epoch, step, last = ckpt["epoch"] + 1, ckpt["step"], dict(ckpt.get("metrics", {}))
        if is_main:
            truncate_jsonl_epochs(log_path, start_epoch)
        log(f"resuming from {ckpt_path} after epoch {ckpt['epoch'] + 1}/{tc.epochs} (step {step})")
    elif resume is True:
        raise DoeiError(f"{ckpt_path}: no checkpoint to resume from (run without --resume first)")
    elif is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if ckpt_path.exists():
            log(f"note: --overwrite: starting afresh in {out_dir} (its previous checkpoint and log are removed)")
            ckpt_path.unlink()     # never a new config and log beside the old run's weights
        atomic_write_text(log_path, "")
    if is_main:
        atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(cfg_dict, sort_keys=False))
    net = model
    if world > 1:  # gradients averaged over ranks; parameters broadcast from rank 0 (equal anyway: same seed)
        from torch.nn.parallel import DistributedDataParallel

        # find_unused_parameters: some families leave parameters out of the training loss (e.g. MCTformer's
        # unused tokens/heads); DDP must not wait for their gradients
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=True)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{cfg.model.name}: {n_params / 1e6:.2f} M parameters, DOEI {'on' if cfg.doei_config().enabled else 'off'}, "
        f"device {device}{' (AMP fp16)' if use_amp else ''}; {len(train_ds)} training images, "
        f"{steps_per_epoch} steps/epoch x {tc.epochs} epochs, peak lr {peak_lr:.3g}"
        + (f"; {world} processes x {tc.batch_size // world} images per step" if world > 1 else ""))

    end_epoch = tc.epochs if stop_after is None else min(tc.epochs, start_epoch + max(0, stop_after))
    for epoch in range(start_epoch, end_epoch):
        suffix = "" if rank == 0 else f"/rank{rank}"            # rank 0 draws what a single process draws
        seed_everything(epoch_seed(tc.seed, epoch, "global" + suffix))
        # the single-process order; this rank's share of every global batch (all of it with one process)
        order = list(RandomSampler(train_ds, generator=loader_generator(tc.seed, epoch)))
        mine = dist_util.global_batch_indices(order, tc.batch_size, rank, world, drop_last)
        loader = DataLoader(train_ds, batch_size=tc.batch_size // world if drop_last else len(mine), sampler=mine,
                            num_workers=tc.num_workers, generator=loader_generator(tc.seed, epoch, "workers" + suffix),
                            pin_memory=device.type == "cuda", persistent_workers=False)
        model.train()
        t0 = time.time()
        sums = torch.zeros(3, dtype=torch.float64)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{tc.epochs}", disable=not (tc.progress and is_main), dynamic_ncols=True,
                   leave=False)
        n = 0
        for x, y, *_ in bar:
            lr = lr_at(step / steps_per_epoch, peak_lr, tc.epochs, cfg.optim.warmup_epochs, cfg.optim.warmup_lr,
                       cfg.optim.min_lr)
            set_lr(optimizer, lr)
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True).float()
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                outputs = net(x)
            loss, l_cls, l_pat = classification_loss(model, outputs, y)  # per family: doei.engine.losses
            # global-batch means (every rank holds the same number of samples); all ranks see the same value
            vals = dist_util.all_reduce_mean(torch.stack([loss.detach(), l_cls.detach(), l_pat.detach()]).double().cpu())
            if not math.isfinite(vals[0].item()):
                raise DoeiError(f"loss is {vals[0].item()} at epoch {epoch + 1}, step {step + 1} "
                                f"(lr {lr:.3g}): lower optim.lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.optim.clip_grad:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            n += 1
            sums += vals
            bar.set_postfix(loss=f"{vals[0]:.4f}", lr=f"{lr:.2e}")
            if step % tc.log_every == 0 and is_main:
                append_jsonl(log_path, {"kind": "step", "epoch": epoch, "step": step, "lr": lr,
                                        "loss": vals[0].item(), "loss_cls": vals[1].item(),
                                        "loss_patch": vals[2].item()})
        bar.close()
        means = (sums / max(n, 1)).tolist()
        record = {"kind": "epoch", "epoch": epoch, "step": step, "lr": lr, "loss": means[0], "loss_cls": means[1],
                  "loss_patch": means[2], "train_seconds": round(time.time() - t0, 3)}
        if is_main and val_ds is not None and ((epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs):
            vloader = DataLoader(val_ds, batch_size=2 * tc.batch_size, shuffle=False, num_workers=tc.num_workers)
            logits, targets = predict_logits(model, vloader, device, use_amp, tc.progress)
            record.update({f"val_{k}": v for k, v in classification_metrics(logits, targets).items()})
        if is_main:
            save_checkpoint(ckpt_path, model=model, optimizer=optimizer, scaler=scaler, epoch=epoch, step=step,
                            config=cfg_dict, metrics=record)
            append_jsonl(log_path, record)
        dist_util.barrier()  # nobody runs ahead of (or reads) a checkpoint rank 0 has not written yet
        last = record
        msg = f"epoch {epoch + 1}/{tc.epochs}: loss {means[0]:.4f} (cls {means[1]:.4f}, patch {means[2]:.4f}), lr {lr:.2e}"
        if "val_mAP" in record:
            msg += f", val mAP {record['val_mAP']:.1f} F1 {record['val_F1']:.1f}"
        log(msg + f" [{record['train_seconds']:.0f} s]")
    return TrainResult(out_dir, ckpt_path, end_epoch - start_epoch, last, time.time() - t_start)


__all__ = ["train", "TrainResult", "build_dataset", "train_transform", "load_trained_model",
           "classification_metrics", "average_precision", "predict_logits"]
