"""``doei predict`` as a library: masks, legend overlays and (optionally) CAMs for images that are in no
dataset split, from a trained classifier and/or a trained DeepLab.

Per image (``OUT/`` = the output folder):

* ``masks/<id>.png`` — the label map (VOC-palette PNG, pixel values are labels: 0 background, k + 1 class k):
  DeepLab's argmax when a segmentation checkpoint is given (multi-scale + flip as configured, DenseCRF
  with ``crf``; with ``restrict``, the default, only background and the image's classes compete), else the
  CAM seeds at ``seed_beta``;
* ``overlays/<id>.png`` — image | mask over it, titled, with a legend of the classes present and a line
  saying where the image-level classes came from;
* ``labels/<id>.json`` — the classes used, where they came from (``given`` in the labels file, or
  ``predicted``: classifier sigmoid score >= ``threshold``, at least the top class) and every score;
* with ``save_cams``: ``cams/<id>.npz`` (the ``doei.cam.io`` format) and ``cams/<id>.png`` (the CAM figure
  with its colour bar).

``predictions.csv`` (id, source, classes) is written at the end from the per-image files. The loop is
:class:`doei.engine.per_image.PerImageJob`: progress bar, ``predict_log.jsonl``, resumable per image,
sharded over the ranks under ``torchrun``; ``predict_settings.json`` records the settings, and a rerun
into the same folder with other settings is refused unless ``overwrite`` (which recomputes everything).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from doei.cam.extractor import CamExtractor, minmax_labelled, official_views
from doei.cam.io import save_cam
from doei.cam.seeds import seeds_from_cams
from doei.cam.visualize import cam_figure, label_figure, save_label_png
from doei.data.common import IMAGE_EXTENSIONS, check_id, check_unique, read_image
from doei.engine import distributed as dist_util
from doei.engine.classifier import load_classifier
from doei.engine.per_image import PerImageJob, first_n
from doei.errors import DoeiError
from doei.utils.device import resolve_device
from doei.utils.io import atomic_save_png, atomic_write_json, atomic_write_text

SETTINGS_FILE = "predict_settings.json"
LOG_FILE = "predict_log.jsonl"


@dataclass
class PredictSettings:
    """What ``doei predict`` runs with (the CLI builds it from flags, or from a pipeline config)."""

    classifier: str | None = None          # classifier checkpoint (image-level classes, CAMs)
    seg_checkpoint: str | None = None      # DeepLab checkpoint (masks); its model is read from the checkpoint
    seg_model: str = "deeplab_resnet38"    # for an external DeepLab weights file
    seg_model_options: dict = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)   # foreground classes
    labels: dict[str, list[int]] = field(default_factory=dict)   # given image-level labels (id -> classes)
    threshold: float = 0.5
    seed_beta: float = 0.4
    cam_scales: list[float] = field(default_factory=lambda: [1.0])
    cam_flip: bool = True
    n_layers: int | None = None            # last blocks whose attention forms the CAM (default min(3, depth))
    kind: str = "fused"
    patch_refine: bool = True
    cam_normalize: str = "official"
    seg_scales: list[float] = field(default_factory=lambda: [1.0])
    seg_flip: bool = True
    crf: bool = False
    restrict: bool = True                  # DeepLab's argmax over background + the image's classes only
    save_cams: bool = False
    device: str = "auto"

    def check(self) -> "PredictSettings":
        if self.classifier is None and self.seg_checkpoint is None:
            raise DoeiError("give a classifier checkpoint (--classifier), a DeepLab checkpoint (--seg) or a pipeline "
                            "--config whose run trained them")
        for what, f in (("classifier", self.classifier), ("segmentation", self.seg_checkpoint)):
            if f is not None and not Path(f).is_file():
                raise DoeiError(f"{f}: {what} checkpoint not found")
        if not 0.0 < self.threshold < 1.0:
            raise DoeiError(f"--threshold {self.threshold}: expected a sigmoid score strictly between 0 and 1")
        if not 0.0 <= self.seed_beta <= 1.0:
            raise DoeiError(f"--seed-beta {self.seed_beta}: expected a background threshold in [0, 1]")
        if self.save_cams and self.classifier is None:
            raise DoeiError("--save-cams needs a classifier checkpoint (--classifier)")
        return self


def list_images(sources: Sequence[str]) -> list[tuple[str, Path]]:
    """``(id, path)`` of every image named by ``sources``: image files, folders (their images, sorted by name,
    not recursive) and ``.txt`` lists (one path per line, relative to the list's folder). The id is the file
    stem; two images with one stem are refused."""
    out: list[tuple[str, Path]] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise DoeiError(f"{p}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
        elif p.suffix.lower() == ".txt" and p.is_file():
            lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
            files = [(p.parent / ln) if not Path(ln).is_absolute() else Path(ln) for ln in lines]
            for n, f in enumerate(files, start=1):
                if not f.is_file():
                    raise DoeiError(f"{p}:{n}: image {f} not found")
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DoeiError(f"{p}: not an image ({', '.join(IMAGE_EXTENSIONS)}), folder or .txt list")
            files = [p]
        else:
            raise DoeiError(f"{p}: no such image, folder or .txt list")
        out += [(check_id(f.stem, str(f)), f) for f in files]
    if not out:
        raise DoeiError("no images given")
    check_unique([i for i, _ in out], "the images given")
    return out


def load_seg(settings: PredictSettings, num_classes: int, device: str) -> torch.nn.Module:
    """DeepLab of ``settings.seg_checkpoint``: a ``doei train-seg`` checkpoint names its model, options and
    class count; an external weights file is built from ``seg_model`` / ``seg_model_options``."""
    from doei.engine.train_seg import build_seg_model
    from doei.models.weights import load_model_weights, load_weights_only

    obj = load_weights_only(settings.seg_checkpoint)
    name, options, c = settings.seg_model, settings.seg_model_options, num_classes
    cfg = obj.get("config") if isinstance(obj, dict) else None
    if isinstance(cfg, dict) and "model" in cfg:
        name, options = cfg["model"], cfg.get("model_options") or {}
        stored = (cfg.get("data") or {}).get("num_classes")
        if stored is not None and int(stored) != num_classes:
            raise DoeiError(f"{settings.seg_checkpoint}: DeepLab trained for {stored} foreground classes, but "
                            f"{num_classes} class names are given")
    model = build_seg_model(name, c + 1, options)
    load_model_weights(model, settings.seg_checkpoint, strict=True)
    return model.to(device).eval()


def class_names_of_checkpoint(path: str | Path) -> list[str] | None:
    """The foreground names of the dataset a ``doei train-cls`` checkpoint was trained on (None if unknown)."""
    from doei.data.build import dataset_class_names
    from doei.models.weights import load_weights_only

    obj = load_weights_only(path)
    data = ((obj.get("config") or {}).get("data") or {}) if isinstance(obj, dict) else {}
    try:
        return dataset_class_names(data["kind"], data.get("root") or None) if data.get("kind") else None
    except (DoeiError, OSError):
        return None


class PredictJob(PerImageJob):
    """Per image: classes (given or predicted), CAMs, mask, overlay (see the module docstring)."""

    desc = "doei predict"
    log_name = LOG_FILE
    what = "prediction folder"

    def __init__(self, images: list[tuple[str, Path]], settings: PredictSettings, out: str | Path,
                 progress: bool = True, overwrite: bool = False) -> None:
        self.images, self.s = images, settings.check()
        self.names = list(settings.class_names)
        self.overwrite = overwrite
        self.record = {**dataclasses.asdict(settings), "labels": len(settings.labels)}
        for key in ("classifier", "seg_checkpoint"):
            if self.record[key]:
                self.record[key] = str(Path(self.record[key]).resolve())
        super().__init__(out, len(images), resolve_device(settings.device), progress, "--out")
        self._check_folder()

    def _check_folder(self) -> None:
        f = self.out / SETTINGS_FILE
        if not f.is_file() or self.overwrite:
            return
        try:
            old = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            raise DoeiError(f"{f}: unreadable; delete it or pass --overwrite") from None
        diff = sorted(k for k in self.record if old.get(k) != self.record[k])
        if diff:
            raise DoeiError(f"{f}: made with other settings ({', '.join(diff)}); pass --overwrite to redo every "
                            "image, or choose another --out")

    def outputs(self, i: int) -> list[Path]:
        iid = self.images[i][0]
        paths = [self.out / "masks" / f"{iid}.png", self.out / "overlays" / f"{iid}.png",
                 self.out / "labels" / f"{iid}.json"]
        if self.s.save_cams:
            paths += [self.out / "cams" / f"{iid}.npz", self.out / "cams" / f"{iid}.png"]
        return paths

    def is_done(self, i: int) -> bool:
        return not self.overwrite and super().is_done(i)

    def start_fields(self, todo: list[int]) -> dict:
        atomic_write_json(self.out / SETTINGS_FILE, self.record)
        return {"settings": self.record}

    def load(self) -> None:
        """Build the networks on the CPU (before anything is written: a bad checkpoint is one line, no files)."""
        s = self.s
        self.cls = self.spec = self.extractor = self.seg = None
        if s.classifier:
            self.cls, self.spec = load_classifier(s.classifier, device="cpu", where="predict: ")
            if self.spec.num_classes != len(self.names):
                raise DoeiError(f"{s.classifier}: classifier of {self.spec.num_classes} foreground classes, but "
                                f"{len(self.names)} class names are given")
            depth = int(getattr(self.cls, "depth", 0) or 0) or 3
            n_layers = s.n_layers if s.n_layers is not None else min(3, depth)
            self.extractor = CamExtractor(self.cls, scales=s.cam_scales, flip=s.cam_flip, n_layers=n_layers,
                                          patch_refine=s.patch_refine, kind=s.kind,
                                          normalize=s.cam_normalize == "official")
        if s.seg_checkpoint:
            self.seg = load_seg(s, len(self.names), "cpu")

    def prepare(self) -> None:
        if self.cls is not None:
            self.cls.to(self.device)
        if self.seg is not None:
            self.seg.to(self.device)

    @torch.no_grad()
    def _scores(self, image: np.ndarray) -> np.ndarray:
        """Sigmoid class scores [K]: the whole image resized to the classifier's training size (a square, as
        it saw its crops; the image's own size when the checkpoint does not record one)."""
        from PIL import Image

        side = self.spec.img_size
        img = image if not side else np.asarray(Image.fromarray(image).resize((side, side), Image.BICUBIC))
        x = official_views(img, [1.0])[0][None].to(self.device)
        outputs = self.cls(x)
        logits = self.cls.prediction_logits(outputs) if hasattr(self.cls, "prediction_logits") else outputs
        return torch.sigmoid(logits.float())[0].cpu().numpy()

    def process(self, i: int) -> dict:
        t0 = time.time()
        iid, path = self.images[i]
        image = read_image(path)
        s, k = self.s, len(self.names)
        scores = self._scores(image) if self.cls is not None else None
        if iid in s.labels:
            classes, source = sorted(s.labels[iid]), "given"
        elif scores is not None:
            classes = sorted(set(np.flatnonzero(scores >= s.threshold).tolist()) | {int(scores.argmax())})
            source = "predicted"
        else:
            classes, source = [], "none (no classifier, no labels)"
        cams = None
        if self.extractor is not None:
            cams = self._cams(image, classes)
        if self.seg is not None:
            mask = self._segment(image, classes if s.restrict and source != "none (no classifier, no labels)" else None)
        else:
            mask = seeds_from_cams(cams, s.seed_beta, classes) if classes else np.zeros(image.shape[:2], np.uint8)
        listed = ", ".join(self.names[c] + (f" {scores[c]:.2f}" if scores is not None and source == "predicted" else "")
                           for c in classes) or "none"
        note = {"given": f"classes {listed}: given in the labels file",
                "predicted": f"classes {listed}: predicted by the classifier (score >= {s.threshold:g}, at least the "
                             "top one)"}.get(source, "classes: none given and no classifier")
        restricted = s.restrict and self.seg is not None and source != "none (no classifier, no labels)"
        what = ("DeepLab" + (" + CRF" if s.crf else "") + (", restricted" if restricted else "")) \
            if self.seg is not None else f"mask (CAM seeds, beta {s.seed_beta:g})"
        if restricted:
            note += "; DeepLab chose among background and these classes only (--no-restrict: all classes)"
        if s.save_cams:
            kept = cams if cams is not None else np.zeros((0, *image.shape[:2]), np.float32)
            atomic_save_png(self.out / "cams" / f"{iid}.png",
                            cam_figure(image, classes, kept, self.names, title=iid,
                                       scores=[float(scores[c]) for c in classes] if scores is not None else None))
            save_cam(self.out / "cams" / f"{iid}.npz", np.asarray(classes, np.int64), kept, dtype=np.float16)
        atomic_save_png(self.out / "overlays" / f"{iid}.png",
                        label_figure(image, mask, self.names, title=iid, what=what, note=note))
        save_label_png(self.out / "masks" / f"{iid}.png", mask)
        rec = {"id": iid, "image": str(path), "source": source, "classes": classes,
               "names": [self.names[c] for c in classes if c < k],
               "scores": None if scores is None else {self.names[c]: round(float(v), 4) for c, v in enumerate(scores)}}
        atomic_write_json(self.out / "labels" / f"{iid}.json", rec)
        return {"id": iid, "source": source, "classes": classes, "seconds": round(time.time() - t0, 4)}

    def _cams(self, image: np.ndarray, classes: list[int]) -> np.ndarray:
        """[len(classes), H, W] float32 in [0, 1]: the CAM of each class used."""
        k = len(self.names)
        labels = torch.zeros(1, k)
        labels[0, classes] = 1.0
        views = [v[None] for v in official_views(image, self.s.cam_scales)]
        cams = self.extractor.from_views(views, labels, image.shape[:2])
        if self.s.cam_normalize == "relu_minmax":
            cams = minmax_labelled(torch.relu(cams), labels.to(cams.device))
        return cams[0, classes].float().cpu().numpy()

    def _segment(self, image: np.ndarray, classes: list[int] | None) -> np.ndarray:
        """DeepLab's label map; with ``classes``, only background and those classes compete (the image-level
        labels, given or predicted, rule out the rest)."""
        from doei.seg.multiscale import multiscale_predict

        probs = multiscale_predict(self.seg, image, self.s.seg_scales, flip=self.s.seg_flip)
        if classes is not None:
            keep = torch.zeros(probs.shape[0], dtype=torch.bool)
            keep[0] = True
            keep[[c + 1 for c in classes]] = True
            probs = probs * keep.view(-1, 1, 1).to(probs.dtype)
        if self.s.crf:
            from doei.seg.crf import crf_refine

            probs = torch.from_numpy(crf_refine(image, probs.numpy()))
        return probs.argmax(dim=0).numpy().astype(np.uint8)


def predict(sources: Sequence[str], settings: PredictSettings, out: str | Path, *, progress: bool = True,
            overwrite: bool = False, limit: int | None = None) -> dict:
    """Run :class:`PredictJob` over the images of ``sources`` (:func:`list_images`); returns the job summary
    plus ``predictions`` (the ``predictions.csv`` path, written by rank 0)."""
    images = first_n(list_images(sources), limit)
    job = PredictJob(images, settings, out, progress=progress, overwrite=overwrite)
    job.load()
    summary = job.run()
    if dist_util.is_main():
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["id", "source", "classes", "mask", "overlay"])
        counts: dict[str, int] = {}
        for iid, _ in images:
            rec = json.loads((job.out / "labels" / f"{iid}.json").read_text(encoding="utf-8"))
            counts[rec["source"]] = counts.get(rec["source"], 0) + 1
            w.writerow([iid, rec["source"], ";".join(rec["names"]), f"masks/{iid}.png", f"overlays/{iid}.png"])
        atomic_write_text(job.out / "predictions.csv", buf.getvalue())
        summary["sources"] = counts
    summary["predictions"] = str(job.out / "predictions.csv")
    return summary


__all__ = ["PredictSettings", "PredictJob", "predict", "list_images", "class_names_of_checkpoint", "load_seg"]
