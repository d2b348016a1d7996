"""Training the WSSS classifier (MCTformer-V2 and friends) through the one loop (:mod:`doei.engine.loop`).

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

from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.data import DataLoader

from doei.data.build import dataset_from_config

from doei.engine.checkpoint import load_checkpoint
from doei.engine.classifier import build_classifier, load_classifier
from doei.engine.loop import Recipe, RunSettings, TrainResult, run_training
from doei.engine.losses import classification_loss, prediction_logits
from doei.engine.optim import build_optimizer, lr_at, set_lr
from doei.engine.per_image import first_images
from doei.engine.seed import epoch_seed, seed_everything
from doei.errors import DoeiError
from doei.models.registry import forward_errors
from doei.eval.classification import classification_metrics
from doei.train_config import TrainConfig, train_config_from_dict
from doei.utils.device import resolve_device

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


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool = False,
                   progress: bool = False) -> tuple[Tensor, Tensor]:
    """Class-token logits and targets of a whole loader: ([N, C], [N, C]) float32 on the CPU."""
    from tqdm import tqdm

    model.eval()
    outs, ys = [], []
    for x, y, *_ in tqdm(loader, desc="val", leave=False, disable=not progress, dynamic_ncols=True):
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"), \
                forward_errors(model, x):
            out = model(x.to(device))
        out = prediction_logits(model, out)  # TransCAM: conv + trans logits; MCTformer: class tokens
        outs.append(out.float().cpu())
        ys.append(y.float())
    return torch.cat(outs), torch.cat(ys)


def load_trained_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, TrainConfig]:
    """The network of a training checkpoint (through :func:`doei.engine.classifier.load_classifier`, the one
    loader) and its stored training config."""
    model, _ = load_classifier(path, device=device)
    return model, train_config_from_dict(load_checkpoint(path)["config"], where=f"{path}:config")


def _check_resume_config(saved: dict, now: dict, path: Path) -> None:
    # compare as today's config records them (an older checkpoint kept an empty doei section as {})
    saved = train_config_from_dict(saved, where=f"{path}:config").to_dict()
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


# ------------------------------------------------------------------------------------ training
def classifier_loss(model: nn.Module, use_amp: bool, net: nn.Module, batch, dev: torch.device):
    """The classifier's step: forward (``net``: the model or its DDP wrapper; fp16 autocast with AMP) and its
    family's objective (:func:`doei.engine.losses.classification_loss`) -> (loss, logged parts)."""
    x, y = batch[0].to(dev, non_blocking=True), batch[1].to(dev, non_blocking=True).float()
    with torch.autocast(dev.type, dtype=torch.float16, enabled=use_amp), forward_errors(model, x):
        outputs = net(x)
    loss, l_cls, l_pat = classification_loss(model, outputs, y)
    return loss, {"loss_cls": l_cls.detach(), "loss_patch": l_pat.detach()}


def train(cfg: TrainConfig, resume: bool | str = False, log: Callable[[str], None] = print,
          stop_after: int | None = None, overwrite: bool = False, limit: int | None = None,
          max_steps: int | None = None) -> TrainResult:
    """Train the classifier of ``cfg`` through the one loop (:func:`doei.engine.loop.run_training`).
    ``resume``: True = continue from ``out_dir/checkpoint.pt`` (error if absent), ``"auto"`` = continue if
    it exists, False = start afresh — refused when the folder holds a run unless ``overwrite``, which
    replaces it (before anything is built: the recipe is built inside the loop's lock). ``stop_after``:
    return after at most that many epochs in this call (the schedule still spans ``train.epochs``; a later
    ``resume`` continues), as an interrupted run would. The folder is locked for the call (a second writer is
    refused at once). A capped (smoke) run: ``limit`` = only the first N images of the train and val splits,
    ``max_steps`` = exactly that many optimiser steps of ``train.batch_size`` (images repeated as needed), then
    one validation (:func:`doei.engine.loop.run_training`)."""
    tc = cfg.train
    device = torch.device(resolve_device(tc.device, "train.device"))
    run = RunSettings(out_dir=tc.out_dir, epochs=tc.epochs, batch_size=tc.batch_size, seed=tc.seed, device=device,
                      resume=resume, overwrite=overwrite, num_workers=tc.num_workers, log_every=tc.log_every,
                      progress=tc.progress, deterministic=tc.deterministic, stop_after=stop_after,
                      max_steps=max_steps, what="train.out_dir", log=log)
    return run_training(lambda: classifier_recipe(cfg, device, limit, max_steps), run)


def classifier_recipe(cfg: TrainConfig, device: torch.device, limit: int | None = None,
                      max_steps: int | None = None) -> Recipe:
    """What the classifier hands the loop: the network (init seeded from the run seed), AdamW, the data, the
    family's loss, warm-up + cosine, the resume check, validation (mAP/F1) and its printed lines."""
    tc = cfg.train
    use_amp = bool(tc.amp and device.type == "cuda")
    cfg_dict = cfg.to_dict()
    seed_everything(epoch_seed(tc.seed, -1, "init"))      # not from whatever ran before
    model = build_classifier(cfg)
    peak_lr = cfg.peak_lr()
    optimizer = build_optimizer(model, peak_lr, cfg.optim.weight_decay, tuple(cfg.optim.betas), cfg.optim.eps)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    train_ds = first_images(dataset_from_config(cfg.data, cfg.data.train_split, transform=train_transform(cfg)),
                            limit)
    val_ds = None
    if cfg.data.val_split:
        from doei.data.transforms import eval_transform, resize_transform

        # MCTformer validates on Resize(size·256/224) + CenterCrop(size); small models on a plain resize
        vt = eval_transform if cfg.data.transform == "mctformer" else resize_transform
        val_ds = first_images(dataset_from_config(cfg.data, cfg.data.val_split, transform=vt(cfg.model.img_size)),
                              limit)
    n_classes = getattr(train_ds, "num_classes", cfg.model.num_classes)
    if n_classes != cfg.model.num_classes:
        raise DoeiError(f"model.num_classes = {cfg.model.num_classes} but {cfg.data.root} has {n_classes} classes")
    steps_per_epoch = len(train_ds) // tc.batch_size if len(train_ds) > tc.batch_size else 1

    def set_schedule(opt: torch.optim.Optimizer, step: int) -> float:
        lr = lr_at(step / steps_per_epoch, peak_lr, tc.epochs, cfg.optim.warmup_epochs, cfg.optim.warmup_lr,
                   cfg.optim.min_lr)
        set_lr(opt, lr)
        return lr

    def validate(epoch: int, net: nn.Module) -> dict:
        due = (epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs or max_steps is not None
        if val_ds is None or not due:
            return {}
        vloader = DataLoader(val_ds, batch_size=2 * tc.batch_size, shuffle=False, num_workers=tc.num_workers)
        logits, targets = predict_logits(net, vloader, next(net.parameters()).device, use_amp, tc.progress)
        return {f"val_{k}": v for k, v in classification_metrics(logits, targets).items()}

    def describe(r: dict) -> str:
        msg = (f"epoch {r['epoch'] + 1}/{tc.epochs}: loss {r['loss']:.4f} (cls {r['loss_cls']:.4f}, patch "
               f"{r['loss_patch']:.4f}), lr {r['lr']:.2e}")
        if "val_mAP" in r:
            msg += f", val mAP {r['val_mAP']:.1f} F1 {r['val_F1']:.1f}"
        return msg + f" [{r['train_seconds']:.0f} s]"

    def intro(n_params: int, n: int, spe: int, world: int) -> str:
        return (f"{cfg.model.name}: {n_params / 1e6:.2f} M parameters, DOEI {'on' if cfg.doei.enabled else 'off'}, "
                f"device {device}{' (AMP fp16)' if use_amp else ''}; {n} training images, "
                f"{spe} steps/epoch x {tc.epochs} epochs, peak lr {peak_lr:.3g}"
                + (f"; {world} processes x {tc.batch_size // world} images per step" if world > 1 else ""))

    return Recipe(model=model, optimizer=optimizer, dataset=train_ds, loss_fn=partial(classifier_loss, model, use_amp),
                  set_lr=set_schedule, config=cfg_dict,
                  check_resume=lambda saved, path: _check_resume_config(saved, cfg_dict, path), scaler=scaler,
                  clip_grad=cfg.optim.clip_grad,
                  # some families leave parameters out of the training loss (e.g. MCTformer's unused tokens/heads)
                  find_unused_parameters=True, sync_bn=tc.sync_bn, validate=validate, describe=describe,
                  intro=intro, nonfinite_hint="lower optim.lr or check the data")


__all__ = ["train", "classifier_recipe", "classifier_loss", "TrainResult", "train_transform", "load_trained_model", "predict_logits"]
