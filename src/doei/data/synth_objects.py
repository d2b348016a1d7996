"""The synthetic benchmark's drawings: the ten object classes, the background, context bands, clutter.

Every drawer takes a :class:`doei.data.synth_draw.Grid`, a box ``(cx, cy, w, h)``, the scene's RNG and a
base colour and returns a list of :data:`Part` (mask, colour field) painted in order. The scene
composition (which classes, where, with which band) is :func:`doei.data.synth.render_scene`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from doei.data import synth_draw as D

# ------------------------------------------------------------------------------ object drawers
Part = tuple[np.ndarray, np.ndarray]  # (bool mask [S,S], colour field broadcastable to [S,S,3])


def _draw_boat(g, b, rng, col) -> list[Part]:
    cx, cy, w, h = b
    y0, ym, y1 = cy - h / 2, cy + 0.1 * h, cy + h / 2
    hull = D.polygon(g, [(cx - w / 2, ym), (cx + w / 2, ym), (cx + 0.3 * w, y1), (cx - 0.3 * w, y1)])
    side = rng.choice([-1.0, 1.0])
    mast_x = cx - side * 0.05 * w
    sail = D.polygon(g, [(mast_x, y0), (mast_x, ym - 1), (mast_x + side * 0.42 * w, ym - 1)])
    mast = D.rect(g, mast_x - 0.6, y0, mast_x + 0.6, ym)
    sail_col = D.hsv(rng.uniform(0, 1), rng.uniform(0.0, 0.25), rng.uniform(0.85, 1.0))
    planks = D.stripes(g, max(2.0, h / 8), np.pi / 2)
    return [(hull, D.shade(col, planks, 0.3)), (sail, D.shade(sail_col)), (mast, D.shade(col * 0.4))]


def _draw_train(g, b, rng, col) -> list[Part]:
    cx, cy, w, h = b
    x0, x1, y0, y1 = cx - w / 2, cx + w / 2, cy - h / 2, cy + h / 2
    body = D.rect(g, x0, y0, x1, y1 - 0.18 * h) | D.ellipse(g, x1 - 0.1 * w, cy - 0.09 * h, 0.12 * w, 0.41 * h)
    body &= g.x < x1
    per = max(3.0, h / 2.6)
    win = body & D.rect(g, x0 + per * 0.5, y0 + 0.2 * h, x1 - per, y0 + 0.5 * h) \
        & (np.mod(g.x - x0, per) < per * 0.55)
    wheels = np.zeros_like(body)
    for fx in (0.15, 0.35, 0.65, 0.85):
        wheels |= D.ellipse(g, x0 + fx * w, y1 - 0.16 * h, 0.12 * h + 0.5, 0.16 * h + 0.5)
    return [(body, D.shade(col)), (win, D.shade(np.minimum(col * 1.6 + 60, 255))), (wheels, D.shade(col * 0.25))]


def _draw_car(g, b, rng, col) -> list[Part]:
    cx, cy, w, h = b
    y0, y1 = cy - h / 2, cy + h / 2
    body = D.rect(g, cx - w / 2, cy - 0.05 * h, cx + w / 2, y1 - 0.2 * h)
    cabin = D.polygon(g, [(cx - 0.3 * w, y0), (cx + 0.2 * w, y0), (cx + 0.35 * w, cy - 0.05 * h),
                          (cx - 0.4 * w, cy - 0.05 * h)])
    glass = cabin & D.polygon(g, [(cx - 0.25 * w, y0 + 0.12 * h), (cx + 0.17 * w, y0 + 0.12 * h),
                                  (cx + 0.27 * w, cy - 0.1 * h), (cx - 0.33 * w, cy - 0.1 * h)])
    r = 0.2 * h
    wheels = D.ellipse(g, cx - 0.28 * w, y1 - r, r, r) | D.ellipse(g, cx + 0.28 * w, y1 - r, r, r)
    return [(body | cabin, D.shade(col)), (glass, D.shade(np.array([200, 220, 235], np.float32))),
            (wheels, D.shade(np.array([25, 25, 25], np.float32)))]


def shell(g, b, rng, col) -> list[Part]:
    """The turtle's shell (also the 'rock' clutter): a dome with a rotated checker texture."""
    cx, cy, w, h = b
    dome = D.ellipse(g, cx, cy + 0.3 * h, 0.4 * w, 0.75 * h) & (g.y <= cy + 0.3 * h)
    tex = D.checker(g, max(2.5, w / 6), np.pi / 4)
    return [(dome, D.shade(col, tex, 0.4))]


def _draw_turtle(g, b, rng, col) -> list[Part]:
    cx, cy, w, h = b
    side = rng.choice([-1.0, 1.0])
    hr = max(2.0, 0.1 * w)
    hx, hy = cx + side * (0.4 * w + 0.7 * hr), cy + 0.3 * h - hr
    head_col = D.hsv(rng.uniform(0, 1), rng.uniform(0.3, 0.8), rng.uniform(0.6, 0.95))
    head = D.ellipse(g, hx, hy, hr * 1.2, hr)
    eye = D.ellipse(g, hx + side * 0.4 * hr, hy - 0.3 * hr, 0.7, 0.7)
    return shell(g, b, rng, col) + [(head, D.shade(head_col)), (eye, D.shade(np.zeros(3, np.float32)))]


def _draw_house(g, b, rng, col) -> list[Part]:
    cx, cy, w, h = b
    wall = D.rect(g, cx - 0.4 * w, cy - 0.05 * h, cx + 0.4 * w, cy + h / 2)
    roof = D.polygon(g, [(cx, cy - h / 2), (cx + w / 2, cy - 0.05 * h), (cx - w / 2, cy - 0.05 * h)])
    door = D.rect(g, cx - 0.08 * w, cy + 0.22 * h, cx + 0.08 * w, cy + h / 2)
    roof_col = D.hsv(rng.uniform(0, 1), rng.uniform(0.3, 0.8), rng.uniform(0.3, 0.6))
    brick = D.bricks(g, max(2.0, h / 9), max(3.0, w / 5), cy)
    return [(wall, D.shade(col, brick, 0.45)), (roof, D.shade(roof_col)), (door, D.shade(col * 0.3))]


def _draw_tree(g, b, rng, col) -> list[Part]:
    cx, cy, w, h = b
    trunk = D.rect(g, cx - 0.09 * w, cy, cx + 0.09 * w, cy + h / 2)
    canopy = D.ellipse(g, cx, cy - 0.12 * h, 0.5 * w, 0.38 * h)
    tex = D.dots(g, max(3.0, w / 4), max(0.8, w / 14), cx, cy)
    trunk_col = D.hsv(rng.uniform(0.03, 0.1), rng.uniform(0.4, 0.7), rng.uniform(0.25, 0.45))
    return [(trunk, D.shade(trunk_col)), (canopy, D.shade(col, tex, 0.5))]


def _draw_fish(g, b, rng, col) -> list[Part]:
    cx, cy, w, h = b
    side = rng.choice([-1.0, 1.0])
    body = D.ellipse(g, cx - side * 0.1 * w, cy, 0.38 * w, 0.42 * h)
    tail = D.polygon(g, [(cx + side * 0.22 * w, cy), (cx + side * 0.5 * w, cy - 0.45 * h),
                         (cx + side * 0.5 * w, cy + 0.45 * h)])
    tex = D.stripes(g, max(2.5, w / 7), np.pi / 3)
    eye = D.ellipse(g, cx - side * 0.33 * w, cy - 0.1 * h, 0.8, 0.8)
    return [(body | tail, D.shade(col, tex, 0.4)), (eye, D.shade(np.zeros(3, np.float32)))]


def _draw_star(g, b, rng, col) -> list[Part]:
    cx, cy, w, h = b
    r = 0.5 * min(w, h)
    return [(D.star(g, cx, cy, r, 0.45 * r, rng.uniform(0, 2 * np.pi)), D.shade(col))]


def _draw_ring(g, b, rng, col) -> list[Part]:
    cx, cy, w, h = b
    r = 0.5 * min(w, h)
    ring = D.ellipse(g, cx, cy, r, r) & ~D.ellipse(g, cx, cy, 0.55 * r, 0.55 * r)
    ang = np.arctan2(g.y - cy, g.x - cx) + rng.uniform(0, np.pi)
    sectors = (np.mod(np.floor(ang / (np.pi / 4)), 2) == 1).astype(np.float32)
    return [(ring, D.shade(col, sectors, 0.55))]


def _draw_kite(g, b, rng, col) -> list[Part]:
    cx, cy, w, h = b
    kh = 0.72 * h
    top = cy - h / 2
    ky = top + 0.4 * kh
    diamond = D.polygon(g, [(cx, top), (cx + w / 2, ky), (cx, top + kh), (cx - w / 2, ky)])
    cross = diamond & (D.line(g, cx, top, cx, top + kh, 1.0) | D.line(g, cx - w / 2, ky, cx + w / 2, ky, 1.0))
    bend = rng.choice([-1.0, 1.0]) * 0.25 * w
    tail = D.line(g, cx, top + kh, cx + bend, cy + 0.38 * h, 1.2) | D.line(g, cx + bend, cy + 0.38 * h, cx, cy + h / 2, 1.2)
    return [(diamond | tail, D.shade(col)), (cross, D.shade(col * 0.35))]


DRAWERS: dict[str, Callable] = {
    "boat": _draw_boat, "train": _draw_train, "car": _draw_car, "turtle": _draw_turtle, "house": _draw_house,
    "tree": _draw_tree, "fish": _draw_fish, "star": _draw_star, "ring": _draw_ring, "kite": _draw_kite,
}


# ------------------------------------------------------------------------------ backgrounds
def background(g: D.Grid, rng: np.random.Generator) -> np.ndarray:
    s = g.size
    c0 = D.hsv(rng.uniform(0, 1), rng.uniform(0.05, 0.5), rng.uniform(0.45, 0.9))
    c1 = D.hsv(rng.uniform(0, 1), rng.uniform(0.05, 0.5), rng.uniform(0.45, 0.9))
    t = (g.y if rng.random() < 0.5 else g.x) / s
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    return (img + 18.0 * D.smooth_noise(rng, s, 4)[..., None]).astype(np.float32)


def band(g: D.Grid, rng: np.random.Generator, kind: str, top: float, bottom: float) -> Part:
    """A background context band spanning rows [top, bottom)."""
    m = D.rect(g, -1, top, g.size + 1, bottom)
    if kind == "water":
        col = D.hsv(rng.uniform(0.45, 0.7), rng.uniform(0.35, 0.8), rng.uniform(0.45, 0.85))
        tex = D.waves(g, max(2.5, g.size / 20), rng.uniform(0.8, 1.6), rng.uniform(8, 14), rng.uniform(0, 6.3))
        return m, D.shade(col, tex, -0.35)
    if kind == "rails":
        col = D.hsv(rng.uniform(0.0, 0.15), rng.uniform(0.1, 0.4), rng.uniform(0.35, 0.6))
        gap = (bottom - top)
        rail = D.rect(g, -1, top + 0.2 * gap, g.size + 1, top + 0.2 * gap + 1) | \
            D.rect(g, -1, top + 0.7 * gap, g.size + 1, top + 0.7 * gap + 1)
        sleeper = D.stripes(g, max(3.0, g.size / 16), 0.0, rng.uniform(0, 1), 0.35)
        return m, D.shade(col, np.maximum(rail.astype(np.float32), 0.6 * sleeper), 0.7)
    if kind == "road":
        col = D.hsv(rng.uniform(0, 1), rng.uniform(0.0, 0.12), rng.uniform(0.2, 0.4))
        mid = (top + bottom) / 2
        dash = D.rect(g, -1, mid - 0.5, g.size + 1, mid + 0.7) & (D.stripes(g, max(5.0, g.size / 8), 0.0,
                                                                             rng.uniform(0, 1), 0.5) > 0)
        return m, D.shade(col, dash.astype(np.float32), -1.8)
    raise ValueError(kind)


def clutter(g: D.Grid, rng: np.random.Generator) -> Part:
    s = g.size
    cx, cy = rng.uniform(0, s, size=2)
    r = rng.uniform(0.05, 0.1) * s
    kind = rng.integers(3)
    if kind == 0:
        m = D.ellipse(g, cx, cy, r, r * rng.uniform(0.5, 1.0), rng.uniform(0, np.pi))
    elif kind == 1:
        m = D.rotated_rect(g, cx, cy, r * 1.6, max(0.8, r * 0.25), rng.uniform(0, np.pi))
    else:
        a = rng.uniform(0, 2 * np.pi)
        m = D.polygon(g, [(cx + r * np.cos(a + k * 2.1), cy + r * np.sin(a + k * 2.1)) for k in range(3)])
    return m, D.shade(D.hsv(rng.uniform(0, 1), rng.uniform(0.2, 0.9), rng.uniform(0.3, 0.95)))


__all__ = ["Part", "DRAWERS", "shell", "background", "band", "clutter"]
