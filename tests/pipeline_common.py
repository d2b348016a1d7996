"""Shared tiny-data helpers for tests/test_pipeline_*.py: a small synthetic set, CAMs made from its
masks, and a pipeline config with reduced-width ResNet38 nets (everything runs in seconds on CPU)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from doei.pipeline_config import pipeline_config_from_dict

N_TRAIN, N_VAL, SIZE = 4, 2, 64


def make_synth(root: Path) -> Path:
    """A 6-train / 3-val synthetic set (64 px) in VOC layout under ``root/synth``."""
    from doei.data.synth import SynthParams, write_synth

    out = root / "synth"
    if not out.exists():
        write_synth(out, SynthParams(seed=3, n_train=N_TRAIN, n_val=N_VAL, size=SIZE))
    return out


def write_cams_from_masks(data_root: Path, cam_dir: Path, split: str = "train") -> None:
    """CAMs ``[K,H,W]`` for the labelled classes: each class's ground-truth mask, box-blurred and
    eroded in value (a plausible, imperfect CAM), saved with :func:`doei.cam.io.save_cam`."""
    from doei.cam.io import save_cam
    from doei.data.build import build_dataset

    ds = build_dataset("synth", data_root, split)
    for i, r in enumerate(ds.records):
        s = ds.sample(i)
        cams = []
        for k in r.classes:
            m = (s.mask == k + 1).astype(np.float32)
            pad = np.pad(m, 3, mode="edge")
            blur = sum(pad[dy:dy + m.shape[0], dx:dx + m.shape[1]] for dy in range(7) for dx in range(7)) / 49.0
            cams.append(np.clip(blur * 1.2 - 0.1, 0, 1))
        cams_arr = np.stack(cams) if cams else np.zeros((0,) + s.mask.shape, np.float32)
        mx = cams_arr.reshape(len(cams), -1).max(axis=1).reshape(-1, 1, 1) if cams else 1.0
        save_cam(cam_dir / f"{r.id}.npz", np.asarray(r.classes, np.int64), cams_arr / np.maximum(mx, 1e-8),
                 dtype=np.float32)


def tiny_config(data_root: Path, out_dir: Path, **sections) -> "object":
    """A pipeline config for the tiny set: width-1/16 nets, crop 72, radius 4, 1-2 epochs, no progress bars."""
    return pipeline_config_from_dict(tiny_dict(data_root, out_dir, **sections), where="tiny")


def tiny_dict(data_root: Path, out_dir: Path | None, **sections) -> dict:
    """:func:`tiny_config` as the plain dict a YAML file would hold (``out_dir`` None: no ``run.out_dir``, as a
    study config leaves it). ``sections``: ``sec__sub__key=value`` sets that key (``sec=value``: the section)."""
    d = {
        "run": {"out_dir": str(out_dir), "device": "cpu", "progress": False},
        "data": {"kind": "synth", "root": str(data_root), "train_split": "train", "val_split": "val",
                 "num_classes": 10},
        "classifier": {"model": {"name": "mctformer_v2_tiny_conv", "img_size": 64, "drop_path_rate": 0.0,
                                 "options": {"depth": 2, "embed_dim": 48, "num_heads": 2}},
                       "data": {"transform": "simple", "crop_scale": [0.6, 1.0]},
                       "optim": {"lr": 1e-3, "lr_batch_base": None, "warmup_epochs": 0.0},
                       "train": {"epochs": 1, "batch_size": 4, "amp": False, "progress": False}},
        "cam": {"scales": [1.0], "flip": False, "cam_dtype": "float32", "n_layers": 2},
        "refine": {"train": {"model": "psa_resnet38_aff_small", "model_options": {"width": 0.0625}, "crf": False,
                             "crop_size": 72, "radius": 4, "batch_size": 2, "epochs": 2, "lr": 0.01,
                             "progress": False, "device": "cpu"},
                   "infer": {"logt": 3, "progress": False, "device": "cpu"}},
        "seg": {"train": {"model": "deeplab_resnet38_small", "model_options": {"width": 0.0625}, "crop_size": 48,
                          "batch_size": 2, "epochs": 2, "lr": 0.01, "progress": False, "device": "cpu"},
                "infer": {"scales": [0.75, 1.0], "flip": True, "crf": True, "crf_workers": 0, "progress": False,
                          "device": "cpu"}},
    }
    for key, value in sections.items():
        sec, _, sub = key.partition("__")
        node = d.setdefault(sec, {})
        for part in sub.split("__")[:-1] if sub else []:
            node = node.setdefault(part, {})
        if sub:
            node[sub.split("__")[-1]] = value
        else:
            d[sec] = value
    if out_dir is None:
        del d["run"]["out_dir"]
    return d
