"""Resumable, rank-sharded CAM generation of a data split into a folder — the one implementation behind
``doei cam`` and the ``cam`` stage of ``doei run``.

:func:`generate_cams` writes, per image, ``<id>.npz`` (``doei.cam.io`` format: only the image's
ground-truth classes), optionally ``seeds/<id>.png``, ``crf_alpha<A>/<id>.png`` and
``overlays/<id>.png``; plus ``cam_settings.json`` and the log ``cam_log.jsonl``. Every file is written
atomically. An id whose outputs all exist (and whose CAM file loads with the expected classes) is
skipped, so an interrupted run continues where it stopped; a rerun with different pipeline settings
into the same folder is refused (one-line ``DoeiError``).

The loop is :class:`doei.engine.per_image.PerImageJob` (docs/distributed.md): under ``torchrun`` every
rank lists the ids still to do, all ranks meet at a barrier, the list is split ``todo[rank::world]`` and
each rank writes only its own ids' files — the same bytes a single process writes. Rank 0 writes the
settings and the start/end log records; the end record follows an all-reduce of the per-rank counts.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from doei.cam.extractor import CamExtractor, minmax_labelled, normalize_image, official_views
from doei.cam.io import load_cam, save_cam
from doei.cam.seeds import crf_label_map, crf_with_alpha, official_crf_image, seeds_from_cams
from doei.cam.transcam import square_views
from doei.cam.visualize import cam_figure, save_label_png
from doei.data.build import build_dataset
from doei.engine.classifier import load_classifier
from doei.engine.per_image import PerImageJob, first_n
from doei.config import read_json
from doei.errors import DoeiError
from doei.models.cam_source import resolve_cam_settings
from doei.utils.checks import expect_path, expect_type
from doei.utils.io import atomic_save_png, atomic_write_json

SETTINGS_FILE = "cam_settings.json"
LOG_FILE = "cam_log.jsonl"
# settings that change the numbers in the outputs: a resumed run must use the same ones
PIPELINE_KEYS = ("model", "num_classes", "model_kwargs", "doei", "normalize", "checkpoint_sha256", "dataset", "split",
                 "scales", "square_sizes", "flip", "n_layers", "kind", "patch_refine", "amp", "cam_dtype", "seed_beta",
                 "crf_image", "checkpoint")


def open_dataset(cfg):
    """The split of a ``CamConfig`` as a ClassificationDataset (raw access via ``.sample``); its class
    count must be ``cfg.num_classes`` when that is set."""
    ds = build_dataset(cfg.dataset, cfg.data_root, cfg.split, **cfg.dataset_options)
    if cfg.num_classes is not None:
        _check_classes(ds, cfg)
    return ds


def load_cam_model(cfg, checkpoint: str | Path, ds=None):
    """The classifier of ``checkpoint`` for a ``CamConfig`` through the one loader
    (:func:`doei.engine.classifier.load_classifier`): a training checkpoint is rebuilt as trained (the
    config's model keys, if set, must agree; ``doei`` + ``override_doei`` for an ablation), external
    weights are built from the config (class count default: the dataset's). Returns ``(model, spec, cfg)``
    with ``cfg``'s ``model``/``num_classes``/``doei`` resolved to what was built."""
    model, spec = load_classifier(checkpoint, name=cfg.model, num_classes=cfg.num_classes,
                                  options=cfg.model_kwargs or None, doei=cfg.doei, override_doei=cfg.override_doei,
                                  default_num_classes=ds.num_classes if ds is not None else None)
    cfg = resolve_cam_config(model, dataclasses.replace(cfg, model=spec.name, num_classes=spec.num_classes,
                                                        doei=spec.doei))
    if ds is not None:
        _check_classes(ds, cfg)
    return model, spec, cfg


def resolve_cam_config(model: torch.nn.Module, cfg):
    """``cfg`` with ``kind``/``n_layers``/``patch_refine`` resolved against what ``model`` declares
    (:func:`doei.models.cam_source.resolve_cam_settings`: its defaults filled in, an option its family
    does not read None; a kind it lacks or such an option set is a one-line DoeiError)."""
    s = resolve_cam_settings(model, cfg.kind, cfg.n_layers, cfg.patch_refine)
    return dataclasses.replace(cfg, kind=s.kind, n_layers=s.n_layers, patch_refine=s.patch_refine)


def _check_classes(ds, cfg) -> None:
    if ds.num_classes != cfg.num_classes:
        raise DoeiError(f"{cfg.data_root}: dataset has {ds.num_classes} classes but the classifier"
                        f"{' (' + cfg.model + ')' if cfg.model else ''} has {cfg.num_classes}")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (read in 8 MiB chunks), to tell a retrained checkpoint from the old one."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 23), b""):
            h.update(chunk)
    return h.hexdigest()


def crf_dir(alpha: float) -> str:
    """Sub-folder of the CRF label maps for background exponent ``alpha`` (``crf_alpha12``)."""
    return f"crf_alpha{alpha:g}"


def output_paths(out: Path, image_id: str, cfg) -> list[Path]:
    """Every file written for ``image_id``; the CAM ``.npz`` first (it is written last)."""
    paths = [out / f"{image_id}.npz"]
    if cfg.save_seeds:
        paths.append(out / "seeds" / f"{image_id}.png")
    paths += [out / crf_dir(a) / f"{image_id}.png" for a in cfg.crf_alphas]
    if cfg.save_overlays:
        paths.append(out / "overlays" / f"{image_id}.png")
    return paths


def is_done(out: Path, image_id: str, classes: tuple[int, ...], cfg) -> bool:
    """True when all of ``image_id``'s outputs exist and its CAM file loads with ``classes``."""
    paths = output_paths(out, image_id, cfg)
    if not all(p.is_file() for p in paths):
        return False
    try:
        got, _ = load_cam(paths[0])
    except DoeiError:
        return False
    return tuple(int(k) for k in got) == tuple(classes)


def check_settings(out: Path, settings: dict, what: str = "--out") -> None:
    """Refuse to continue a folder whose ``cam_settings.json`` differs in a :data:`PIPELINE_KEYS` value
    while it holds CAMs made with them; a folder with settings but no CAM yet (a start that failed) is
    simply started again. ``what`` names the option that chose the folder in the message."""
    f = out / SETTINGS_FILE
    if not f.is_file() or not any(out.glob("*.npz")):
        return
    old = read_json(f, dict, what="CAM settings")
    old.setdefault("square_sizes", [])                # folders written before the key existed: scaled views
    for k in PIPELINE_KEYS:
        if old.get(k) != settings.get(k):
            raise DoeiError(f"{f}: {k} was {old.get(k)!r}, now {settings.get(k)!r}; the folder holds CAMs of "
                            f"another run (choose another {what}, or delete the folder)")


class _SplitItems(torch.utils.data.Dataset):
    """Index -> dict(id, image uint8 [H,W,3], label float32 [C], classes, views: per-scale normalised [3,h,w]);
    with ``square_sizes`` the views are TransCAM's squares (:func:`doei.cam.transcam.square_views`)."""

    def __init__(self, ds, indices: list[int], scales: list[float], square_sizes: list[int] | None = None) -> None:
        self.ds, self.indices, self.scales, self.square_sizes = ds, indices, scales, list(square_sizes or [])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        s = self.ds.sample(self.indices[i], with_mask=False)
        return {"id": s.id, "image": s.image, "label": s.label, "classes": tuple(s.classes),
                "views": [v[0] for v in square_views(s.image, self.square_sizes)] if self.square_sizes
                else official_views(s.image, self.scales)}


def _as_list(batch: list) -> list:
    return batch


def generate_cams(model: torch.nn.Module, cfg, out: str | Path, checkpoint: str | Path, *, ds=None, spec=None,
                  limit: int | None = None, progress: bool = True, desc: str = "doei cam", what: str = "--out") -> dict:
    """CAMs of ``cfg``'s split (a validated ``doei.cam.config.CamConfig``) into ``out``; see the module docstring.

    ``model``: the classifier with its weights (any device: it is moved to ``cfg.device``, or to
    ``cuda:LOCAL_RANK`` under torchrun, and put in eval mode); ``checkpoint``: the file its weights
    came from (recorded in the settings, so another classifier cannot continue the folder); ``ds``:
    the opened split (default :func:`open_dataset`); ``spec``: the
    :class:`doei.engine.classifier.ClassifierSpec` :func:`load_cam_model` returned (recorded in
    ``cam_settings.json``: where the network and its DOEI settings came from); ``limit``: only the first N
    ids (>= 0); ``what``: the option that named ``out``, for messages. The folder is locked for the call
    (:func:`doei.utils.outdir.folder_lock`: one writer).
    Returns ``{"images", "computed", "skipped", "seconds", "out_dir", "processes"}`` on every rank
    (counts summed over ranks).
    """
    from doei.cam.config import CamConfig

    expect_type("generate_cams", "model", model, torch.nn.Module, "a torch.nn.Module (load_cam_model)")
    expect_type("generate_cams", "cfg", cfg, CamConfig, "a doei.cam.config.CamConfig")
    expect_path("generate_cams", "out", out)
    expect_path("generate_cams", "checkpoint", checkpoint)
    first_n([], limit, "limit")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise DoeiError(f"device {cfg.device}: CUDA is not available on this machine")
    ds = open_dataset(cfg) if ds is None else ds
    _check_classes(ds, cfg)
    cfg = resolve_cam_config(model, cfg)
    return CamJob(model, cfg, out, checkpoint, ds, spec, limit, progress, desc, what).run()


class CamJob(PerImageJob):
    """CAM generation as a :class:`~doei.engine.per_image.PerImageJob`: batches of images through
    :class:`doei.cam.extractor.CamExtractor`, then each image's files (:func:`_write_outputs`)."""

    log_name = LOG_FILE
    what = "CAM folder"

    def __init__(self, model, cfg, out, checkpoint, ds, spec, limit, progress, desc, what) -> None:
        self.model, self.cfg, self.ds, self.desc = model, cfg, ds, desc
        self.settings = {**dataclasses.asdict(cfg), "checkpoint": str(Path(checkpoint).resolve()),
                         "checkpoint_sha256": file_sha256(checkpoint)}   # a retrained file at the same path differs
        if spec is not None:
            self.settings["classifier"] = {"source": spec.source, "doei_source": spec.doei_source, "doei_enabled":
                                           bool(spec.doei.enabled), "img_size": spec.img_size, "options": spec.options}
        n = min(len(ds), limit) if limit is not None else len(ds)
        super().__init__(out, n, cfg.device, progress, what)
        check_settings(self.out, self.settings, what)

    def outputs(self, i: int) -> list[Path]:
        return output_paths(self.out, self.ds.records[i].id, self.cfg)

    def is_done(self, i: int) -> bool:
        return is_done(self.out, self.ds.records[i].id, self.ds.records[i].classes, self.cfg)

    def start_fields(self, todo: list[int]) -> dict:
        atomic_write_json(self.out / SETTINGS_FILE, self.settings)     # rank 0, before the start record
        return {"settings": self.settings}

    def iterate(self, mine: list[int]):
        cfg = self.cfg
        model = self.model.to(self.device).eval()
        # the scales reach the views once (_SplitItems -> official_views); from_views reads no scales of its own
        extractor = CamExtractor(model, flip=cfg.flip, n_layers=cfg.n_layers,
                                 patch_refine=cfg.patch_refine, kind=cfg.kind, amp=cfg.amp,
                                 normalize=cfg.normalize == "official")
        items = _SplitItems(self.ds, mine, cfg.scales, cfg.square_sizes)
        loader = torch.utils.data.DataLoader(items, batch_size=cfg.batch_size,
                                             shuffle=False, num_workers=cfg.num_workers, collate_fn=_as_list)
        for batch in loader:
            for item, cams in _batch_cams(extractor, batch, relu_minmax=cfg.normalize == "relu_minmax"):
                t = time.time()
                _write_outputs(self.out, item, cams, cfg, self.ds.class_names)
                yield {"id": item["id"], "classes": list(item["classes"]), "size": list(item["image"].shape[:2]),
                       "write_s": round(time.time() - t, 4)}


def _batch_cams(extractor, batch: list[dict], relu_minmax: bool = False):
    """Yield (item, cams float32 [C, H, W] numpy) for a batch; images of one size share forward passes.
    ``relu_minmax``: the extractor returns raw sums; ReLU then per-class min-max them here."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, item in enumerate(batch):
        groups[tuple(item["image"].shape[:2])].append(i)
    results: dict[int, np.ndarray] = {}
    for size, idx in groups.items():
        views = [torch.stack([batch[i]["views"][s] for i in idx]) for s in range(len(batch[idx[0]]["views"]))]
        labels = torch.from_numpy(np.stack([batch[i]["label"] for i in idx]))
        cams = extractor.from_views(views, labels, size)
        if relu_minmax:
            cams = minmax_labelled(torch.relu(cams), labels.to(cams.device, torch.float32))
        cams = cams.cpu().numpy()
        for j, i in enumerate(idx):
            results[i] = cams[j]
    for i, item in enumerate(batch):
        yield item, results[i]


def _write_outputs(out: Path, item: dict, cams: np.ndarray, cfg, class_names) -> None:
    """One image's files from its CAMs ``[C, H, W]``: seeds, CRF label maps, overlay, then the ``.npz``."""
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
            crf_img = official_crf_image(normalize_image(item["image"]))
        else:
            crf_img = np.ascontiguousarray(item["image"])
        for a in cfg.crf_alphas:
            if classes.size:
                label = crf_label_map(*crf_with_alpha(crf_img, classes, kept, a))
            else:
                label = np.zeros(item["image"].shape[:2], dtype=np.uint8)
            save_label_png(out / crf_dir(a) / f"{image_id}.png", label)
    if cfg.save_overlays:
        atomic_save_png(out / "overlays" / f"{image_id}.png",
                        cam_figure(item["image"], classes, kept, class_names, seeds=seeds, title=image_id))
    # the CAM file last: its presence (with the other outputs) marks the id as done
    save_cam(out / f"{image_id}.npz", classes, kept, dtype=np.float16 if cfg.cam_dtype == "float16" else np.float32)


__all__ = ["generate_cams", "open_dataset", "load_cam_model", "resolve_cam_config", "check_settings", "is_done", "output_paths", "crf_dir", "SETTINGS_FILE",
           "LOG_FILE", "PIPELINE_KEYS"]
