"""Vectorised numpy rasterisation for the synthetic benchmark: shapes, textures, colours, backgrounds.

Every shape function takes a :class:`Grid` (pixel-centre coordinates of an S x S canvas) and returns a
``bool [S, S]`` mask computed over the whole canvas at once (no per-pixel Python loops); textures
return ``float32 [S, S]`` patterns in [0, 1]; :func:`shade` turns a base colour and a pattern into a
``float32 [S, S, 3]`` colour field.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """Pixel-centre coordinates ``y``, ``x`` (float32 [S, S]) of an S x S canvas."""

    y: np.ndarray
    x: np.ndarray
    size: int

    @staticmethod
    def make(size: int) -> "Grid":
        y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
        return Grid(y, x, size)


# ------------------------------------------------------------------------------------- colours
def hsv(h: float, s: float, v: float) -> np.ndarray:
    """HSV (h wraps around 1) -> float32 [3] RGB in 0..255."""
    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def sample_colour(rng: np.random.Generator, hue_centre: float, hue_halfwidth: float,
                  s_range: tuple[float, float] = (0.35, 0.9), v_range: tuple[float, float] = (0.45, 0.95)) -> np.ndarray:
    """A random colour whose hue lies within ``hue_centre +- hue_halfwidth``."""
    h = hue_centre + rng.uniform(-hue_halfwidth, hue_halfwidth)
    return hsv(h, rng.uniform(*s_range), rng.uniform(*v_range))


def shade(base: np.ndarray, pattern: np.ndarray | None = None, contrast: float = 0.45) -> np.ndarray:
    """Colour field float32 [S, S, 3]: ``base`` darkened by ``contrast`` where ``pattern`` is 1."""
    if pattern is None:
        return np.broadcast_to(base, (1, 1, 3))
    return base[None, None, :] * (1.0 - contrast * pattern[..., None])


# ------------------------------------------------------------------------------------- shapes
def _rot(g: Grid, cx: float, cy: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates relative to (cx, cy) rotated by -angle (so shapes drawn in them rotate by +angle)."""
    dx, dy = g.x - cx, g.y - cy
    c, s = np.cos(angle), np.sin(angle)
    return c * dx + s * dy, -s * dx + c * dy


def ellipse(g: Grid, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0) -> np.ndarray:
    u, v = _rot(g, cx, cy, angle)
    return (u / max(rx, 0.5)) ** 2 + (v / max(ry, 0.5)) ** 2 <= 1.0


def rect(g: Grid, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return (g.x >= x0) & (g.x < x1) & (g.y >= y0) & (g.y < y1)


def rotated_rect(g: Grid, cx: float, cy: float, hw: float, hh: float, angle: float) -> np.ndarray:
    u, v = _rot(g, cx, cy, angle)
    return (np.abs(u) <= hw) & (np.abs(v) <= hh)


def polygon(g: Grid, pts: np.ndarray) -> np.ndarray:
    """Convex polygon given by vertices float [K, 2] (x, y), either winding."""
    pts = np.asarray(pts, dtype=np.float32)
    nxt = np.roll(pts, -1, axis=0)
    crosses = [(b[0] - a[0]) * (g.y - a[1]) - (b[1] - a[1]) * (g.x - a[0]) for a, b in zip(pts, nxt)]
    cr = np.stack(crosses)
    return (cr >= 0).all(0) | (cr <= 0).all(0)


def star(g: Grid, cx: float, cy: float, r_out: float, r_in: float, angle: float, points: int = 5) -> np.ndarray:
    """A regular star polygon (``points`` tips), computed in polar coordinates folded onto one edge."""
    u, v = _rot(g, cx, cy, angle)
    rho = np.hypot(u, v)
    sector = 2 * np.pi / points
    phi = np.abs(np.mod(np.arctan2(v, u), sector) - sector / 2)  # 0 at the inner vertex .. sector/2 at a tip
    phi = sector / 2 - phi  # 0 at a tip
    px, py = rho * np.cos(phi), rho * np.sin(phi)
    ax, ay = r_out, 0.0
    bx, by = r_in * np.cos(sector / 2), r_in * np.sin(sector / 2)
    side = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
    origin_side = (bx - ax) * (0 - ay) - (by - ay) * (0 - ax)
    return (side * origin_side >= 0) | (rho < 0.5)


def line(g: Grid, x0: float, y0: float, x1: float, y1: float, width: float = 1.0) -> np.ndarray:
    """A segment of the given width (distance to the segment <= width / 2)."""
    dx, dy = x1 - x0, y1 - y0
    L2 = max(dx * dx + dy * dy, 1e-6)
    t = np.clip(((g.x - x0) * dx + (g.y - y0) * dy) / L2, 0.0, 1.0)
    return np.hypot(g.x - (x0 + t * dx), g.y - (y0 + t * dy)) <= width / 2


# ------------------------------------------------------------------------------------ textures
def stripes(g: Grid, period: float, angle: float, phase: float = 0.0, duty: float = 0.5) -> np.ndarray:
    t = (g.x * np.cos(angle) + g.y * np.sin(angle)) / period + phase
    return (np.mod(t, 1.0) < duty).astype(np.float32)


def checker(g: Grid, period: float, angle: float = 0.0) -> np.ndarray:
    u, v = _rot(g, 0.0, 0.0, angle)
    return (np.mod(np.floor(u / period) + np.floor(v / period), 2) == 1).astype(np.float32)


def dots(g: Grid, period: float, radius: float, ox: float = 0.0, oy: float = 0.0) -> np.ndarray:
    fx = np.mod(g.x - ox, period) - period / 2
    fy = np.mod(g.y - oy, period) - period / 2
    return (fx * fx + fy * fy <= radius * radius).astype(np.float32)


def waves(g: Grid, period: float, amp: float, wavelength: float, phase: float) -> np.ndarray:
    t = (g.y + amp * np.sin(2 * np.pi * g.x / wavelength + phase)) / period
    return (np.mod(t, 1.0) < 0.35).astype(np.float32)


def bricks(g: Grid, bh: float, bw: float, oy: float) -> np.ndarray:
    row = np.floor((g.y - oy) / bh)
    mortar_h = np.mod(g.y - oy, bh) < 1.0
    mortar_v = np.mod(g.x + (row % 2) * bw / 2, bw) < 1.0
    return (mortar_h | mortar_v).astype(np.float32)


def smooth_noise(rng: np.random.Generator, size: int, cells: int = 4) -> np.ndarray:
    """Low-frequency noise float32 [S, S] in [-1, 1]: a random (cells+1)^2 grid, bilinearly upsampled."""
    c = rng.uniform(-1, 1, size=(cells + 1, cells + 1)).astype(np.float32)
    t = (np.arange(size, dtype=np.float32) + 0.5) / size * cells
    i = np.minimum(t.astype(np.int64), cells - 1)
    f = t - i
    rows = c[i] * (1 - f)[:, None] + c[i + 1] * f[:, None]          # [S, cells+1]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]  # [S, S]
