"""A pretraining corpus the synthetic generator makes, different from the benchmark (issue #24).

The benchmark's classes are composite drawings (boat, train, car, …) with context bands. This corpus has
none of them: 16 classes = 4 shapes (blob: ellipse, slab: rotated bar, wedge: triangle, spark: 6-point
star) × 4 textures (plain, stripes, checks, dots), any hue (colour tells nothing), 1–4 objects per image
(multi-label), on the benchmark's gradient backgrounds overlaid with a random texture of their own and
with the benchmark's clutter, no context bands. A ViT trained long on it learns shape, texture and
"object vs background" without ever seeing a benchmark class: the pretrained *regime* (an attention with a
prior) that the from-scratch studies lack. Written in the benchmark's VOC layout (same ``meta.json`` format,
``corpus: pretrain-v1``), so ``data.kind: synth`` reads it and its masks score its CAMs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from doei.data import synth_draw as D
from doei.data.synth_objects import background, clutter
from doei.errors import DoeiError

SHAPES = ("blob", "slab", "wedge", "spark")
TEXTURES = ("plain", "stripes", "checks", "dots")
CORPUS_CLASSES: tuple[str, ...] = tuple(f"{s}_{t}" for s in SHAPES for t in TEXTURES)
CORPUS = "pretrain-v1"


@dataclass(frozen=True)
class CorpusParams:
    """Everything that determines the corpus bytes (stored in ``meta.json``)."""

    seed: int = 0
    n_train: int = 20000
    n_val: int = 500
    size: int = 64
    min_objects: int = 1
    max_objects: int = 4
    scale: tuple[float, float] = (0.25, 0.5)   # object box side / image size
    max_overlap: float = 0.2
    max_clutter: int = 3
    noise: float = 4.0

    def validate(self) -> "CorpusParams":
        if not 32 <= self.size <= 512:
            raise DoeiError(f"corpus.size {self.size}: expected 32..512")
        if self.n_train < 1 or self.n_val < 1:
            raise DoeiError(f"corpus.n_train {self.n_train} / n_val {self.n_val}: expected at least 1 image each")
        if not 1 <= self.min_objects <= self.max_objects <= 6:
            raise DoeiError(f"corpus objects {self.min_objects}..{self.max_objects}: expected 1 <= min <= max <= 6")
        if not 0.1 <= self.scale[0] <= self.scale[1] <= 0.9:
            raise DoeiError(f"corpus.scale {list(self.scale)}: expected 0.1 <= lo <= hi <= 0.9")
        if self.seed < 0 or self.max_clutter < 0 or not 0.0 <= self.noise < float("inf"):
            raise DoeiError("corpus.seed, corpus.max_clutter and corpus.noise must be >= 0")
        if not 0.0 <= self.max_overlap <= 1.0:
            raise DoeiError(f"corpus.max_overlap {self.max_overlap}: expected a fraction in [0, 1]")
        return self


def _shape(g: D.Grid, kind: str, cx: float, cy: float, r: float, rng: np.random.Generator) -> np.ndarray:
    a = rng.uniform(0, np.pi)
    if kind == "blob":
        return D.ellipse(g, cx, cy, r, r * rng.uniform(0.55, 0.9), a)
    if kind == "slab":
        return D.rotated_rect(g, cx, cy, r, r * rng.uniform(0.3, 0.45), a)
    if kind == "wedge":
        return D.polygon(g, [(cx + r * np.cos(a + k * 2.094), cy + r * np.sin(a + k * 2.094)) for k in range(3)])
    return D.star(g, cx, cy, r, r * rng.uniform(0.4, 0.55), a, points=6)


def _texture(g: D.Grid, kind: str, r: float, rng: np.random.Generator) -> np.ndarray | None:
    period = max(2.5, r * rng.uniform(0.35, 0.55))
    if kind == "stripes":
        return D.stripes(g, period, rng.uniform(0, np.pi), rng.uniform(0, 1))
    if kind == "checks":
        return D.checker(g, period * 0.8, rng.uniform(0, np.pi / 2))
    if kind == "dots":
        return D.dots(g, period, period * 0.3, rng.uniform(0, period), rng.uniform(0, period))
    return None


def render_corpus_scene(rng: np.random.Generator, p: CorpusParams, grid: D.Grid | None = None
                        ) -> tuple[np.ndarray, np.ndarray, dict]:
    """One scene -> (image uint8 [S, S, 3], mask uint8 [S, S] with class+1 / 0, info dict)."""
    s = p.size
    g = grid if grid is not None else D.Grid.make(s)
    img = background(g, rng)
    tex = _texture(g, ("stripes", "checks", "dots")[int(rng.integers(3))], s * 0.25, rng)
    img = img * (1.0 - 0.12 * tex[..., None])                       # a faint background texture of its own
    for _ in range(int(rng.integers(0, p.max_clutter + 1))):
        m, c = clutter(g, rng)
        np.copyto(img, c, where=m[..., None])
    n = int(rng.integers(p.min_objects, p.max_objects + 1))
    names = list(dict.fromkeys(CORPUS_CLASSES[int(i)] for i in rng.integers(len(CORPUS_CLASSES), size=n)))
    mask = np.zeros((s, s), dtype=np.uint8)
    boxes: list[tuple[float, float, float]] = []
    placed = []
    for name in names:
        shape, texture = name.split("_")
        for _attempt in range(25):
            r = rng.uniform(*p.scale) * s / 2
            cx, cy = rng.uniform(r, s - r), rng.uniform(r, s - r)
            inter = [max(0.0, 2 * min(r, r2) - abs(cx - x2)) * max(0.0, 2 * min(r, r2) - abs(cy - y2)) /
                     (4 * min(r, r2) ** 2) for x2, y2, r2 in boxes]
            if all(f <= p.max_overlap for f in inter):
                boxes.append((cx, cy, r))
                break
        else:
            continue
        m = _shape(g, shape, cx, cy, r, rng)
        if not m.any():
            boxes.pop()
            continue
        col = D.hsv(rng.uniform(0, 1), rng.uniform(0.35, 0.9), rng.uniform(0.45, 0.95))
        np.copyto(img, D.shade(col, _texture(g, texture, r, rng), 0.5), where=m[..., None])
        mask[m] = CORPUS_CLASSES.index(name) + 1
        placed.append(name)
    img += np.float32(p.noise) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), mask, {"placed": placed}


def render_corpus_encoded(args: tuple[CorpusParams, str, int]) -> tuple[bytes, bytes, tuple[int, ...], None]:
    """Worker for :func:`doei.data.synth.write_synth`: scene ``index`` of ``split`` encoded as PNGs."""
    from doei.data.common import classes_in_mask, voc_palette
    from doei.data.synth import SPLITS, _grid, _png_bytes

    p, split, index = args
    rng = np.random.default_rng([p.seed, SPLITS[split], index, 24])
    img, mask, _ = render_corpus_scene(rng, p, _grid(p.size))
    m = Image.fromarray(mask, mode="P")
    m.putpalette(voc_palette().reshape(-1).tolist())
    return _png_bytes(Image.fromarray(img, mode="RGB")), _png_bytes(m), classes_in_mask(mask), None


def ensure_corpus(root: str | Path, p: CorpusParams, workers: int = 1) -> dict:
    """Generate the corpus at ``root`` unless one with these parameters is there; returns its meta dict."""
    from dataclasses import asdict

    from tqdm import tqdm

    from doei.data.synth import read_meta, write_synth

    p.validate()
    root = Path(root)
    if (root / "meta.json").is_file():
        meta = read_meta(root)
        want = {**asdict(p), "scale": list(p.scale)}
        if meta.get("corpus") != CORPUS or meta.get("params") != want:
            raise DoeiError(f"{root}: holds another corpus or benchmark (params {meta.get('params')}); delete it "
                            "or use another --out")
        return meta
    notes = {"corpus": CORPUS, "design": {"classes": "4 shapes x 4 textures, any hue, 1-4 objects per image",
                                          "background": "gradient + smooth noise + faint texture, clutter, no bands"}}
    with tqdm(total=p.n_train + p.n_val, desc="corpus", unit="img", dynamic_ncols=True) as bar:
        return write_synth(root, p, workers=workers, progress=bar.update, render=render_corpus_encoded,
                           class_names=CORPUS_CLASSES, extra_meta=notes)


__all__ = ["CORPUS_CLASSES", "CorpusParams", "render_corpus_scene", "ensure_corpus"]
