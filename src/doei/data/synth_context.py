"""Context regions of the synthetic benchmark (and its co-occurrence variant), written beside the masks.

A *context region* of class c is where c's co-occurring context is: the background band of a context
class (``water`` for boat, ``rails`` for train, ``road`` for car; the band's visible pixels, i.e. where
the final mask is background), and for the companion pair the companion's pixels (``tree`` pixels in an
image that contains a ``house``). Stored per image as ``ContextClass/<id>.png``, a single-channel
label PNG in the masks' coding: 0 = no declared context, k + 1 = context of class k (0-based). The
regions of different classes never overlap on this benchmark (a band belongs to one class, tree pixels
to house). Any dataset that provides such a folder can be scored by :mod:`doei.eval.cooccurrence`.

The maps are recomputed from the benchmark's ``meta.json`` by re-rendering each scene with its own
seeded generator (:func:`doei.data.synth.render_scene` is deterministic per (seed, split, index)), and
every re-rendered mask is checked against the stored one, so a map can never be out of step with its
mask. They are written after the benchmark (not part of its checksum); ``ContextClass/done.json``
marks a complete set.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from doei.data import synth as S
from doei.errors import DoeiError

CONTEXT_DIR = "ContextClass"
DONE_NAME = "done.json"


def context_map(mask: np.ndarray, info: dict) -> np.ndarray:
    """uint8 [S, S] context map of one scene from its mask [S, S] and ``render_scene``'s info dict."""
    ctx = np.zeros(mask.shape, dtype=np.uint8)
    band = info.get("band")
    if band is not None and info.get("band_mask") is not None:
        owner = next(c for c, b in S.CONTEXTS.items() if b == band)
        ctx[info["band_mask"] & (mask == 0)] = S.SYNTH_CLASSES.index(owner) + 1
    for cls, comp in S.COMPANIONS.items():
        if np.any(mask == S.SYNTH_CLASSES.index(cls) + 1):
            ctx[mask == S.SYNTH_CLASSES.index(comp) + 1] = S.SYNTH_CLASSES.index(cls) + 1
    return ctx


def context_classes() -> dict[str, str]:
    """class → what its declared context region is (for reports)."""
    out = {c: f"{b} band" for c, b in S.CONTEXTS.items()}
    out.update({c: f"{b} pixels" for c, b in S.COMPANIONS.items()})
    return out


def write_context_maps(root: str | Path, splits: tuple[str, ...] = ("val",)) -> Path:
    """Write ``root/ContextClass/<id>.png`` for every image of ``splits``; returns the folder. Reused when
    ``done.json`` lists these splits. A re-rendered mask that differs from the stored one is an error."""
    from PIL import Image

    from doei.data.common import read_id_list, read_mask
    from doei.utils.io import atomic_save_png, atomic_write_json

    root = Path(root)
    out = root / CONTEXT_DIR
    done = out / DONE_NAME
    if done.is_file() and set(splits) <= set(json.loads(done.read_text()).get("splits", [])):
        return out
    meta = S.read_meta(root)
    p = S.params_from_meta(meta)
    grid = S._grid(p.size)
    out.mkdir(exist_ok=True)
    counts = np.zeros(len(S.SYNTH_CLASSES) + 1, dtype=np.int64)
    for split in splits:
        for iid in read_id_list(root / "ImageSets" / "Segmentation" / f"{split}.txt"):
            index = int(iid.rsplit("_", 1)[1])
            rng = np.random.default_rng([p.seed, S.SPLITS[split], index])
            _, mask, info = S.render_scene(rng, p, grid)
            stored = read_mask(root / "SegmentationClass" / f"{iid}.png")
            if not np.array_equal(stored, mask):
                raise DoeiError(f"{root}: re-rendering {iid} from meta.json does not give its stored mask "
                                "(benchmark written by another version?); regenerate it")
            ctx = context_map(mask, info)
            counts += np.bincount(ctx.ravel(), minlength=counts.size)
            im = Image.fromarray(ctx, mode="P")
            im.putpalette(S._PALETTE)
            atomic_save_png(out / f"{iid}.png", im)
    atomic_write_json(done, {"splits": list(splits), "coding": "0 none, k+1 = context of class k (0-based)",
                             "contexts": context_classes(),
                             "pixels_per_class": {c: int(n) for c, n in zip(S.SYNTH_CLASSES, counts[1:])}})
    return out
