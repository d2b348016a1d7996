"""Random walk: banded stencil (doei.refine.random_walk) vs the official dense matrix power.

Both start from the same sparse AffinityNet affinities ``[34, n_from]`` of a VOC-sized image
(500×375 → 63×47 = 2961 positions at stride 8) and produce the walked scores
``cam_vec @ T^(2^logt)`` ``[21, N]``; the dense side builds the ``[N,N]`` matrix and squares it
``logt`` times exactly as PSA / MCTformer ``infer_aff.py`` do. Both variants are measured in the
same run (MCTformer: constant background, logt 6; PSA: ``(1-max)^16``, logt 8), and the last line
is ``speedup=X`` = the smaller of the two dense/stencil time ratios.

Correctness: the stencil output must match the dense formula evaluated in float64 (untimed) to
1e-5 (it does to ~1e-12, the stencil accumulates in float64). The timed float32 dense result is
compared too and printed: its own float32 rounding after ``2^logt``-fold amplification is ~1e-5 at
logt 8, so it is not a 1e-5 reference by itself.

Run: ``.venv/bin/python benchmarks/random_walk.py [--height 375 --width 500 --repeat 2]``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from doei.models.affinity import affinity_from_features, dense_affinity
from doei.refine.random_walk import (cam_vector, cam_with_background, random_walk_dense, random_walk_stencil,
                                     stencil_weights)


def synthetic_inputs(height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Region-structured AffinityNet-like features [448,h,w] and two blob CAMs [2,H,W]."""
    g = np.random.default_rng(seed)
    h, w = -(-height // 8), -(-width // 8)
    centres = g.uniform([0, 0], [h, w], size=(12, 2))
    yy, xx = np.mgrid[0:h, 0:w]
    region = np.argmin((yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2, axis=-1)
    emb = g.normal(0, 1.0, size=(12, 448)).astype(np.float32)
    feats = emb[region].transpose(2, 0, 1) + g.normal(0, 0.05, size=(448, h, w)).astype(np.float32)
    Y, X = np.mgrid[0:height, 0:width]
    cams = np.stack([np.exp(-((Y - cy) ** 2 + (X - cx) ** 2) / (2 * s ** 2))
                     for cy, cx, s in ((height * 0.4, width * 0.3, 60), (height * 0.6, width * 0.7, 80))]).astype(np.float32)
    return torch.from_numpy(feats), cams, np.array([2, 14])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--height", type=int, default=375)
    ap.add_argument("--width", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=2, help="best-of repeats for each side")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    feats, cams, classes = synthetic_inputs(args.height, args.width)
    h, w = feats.shape[1:]
    aff = affinity_from_features(feats[None])[0]
    print(f"image {args.height}x{args.width}, grid {h}x{w} = {h * w} positions, threads {args.threads}")
    ratios = []
    for name, bg, logt in (("mctformer", dict(bg_mode="constant", bg_threshold=0.39), 6),
                           ("psa", dict(bg_mode="power", alpha=16.0), 8)):
        vec = cam_vector(cam_with_background(cams, classes, 21, **bg))
        t_dense, t_sten = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            ref, _ = random_walk_dense(vec, dense_affinity(aff, h, w), 8, logt)
            t_dense.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            out = random_walk_stencil(vec, stencil_weights(aff, h, w, 8), logt)
            t_sten.append(time.perf_counter() - t0)
        exact, _ = random_walk_dense(vec.double(), dense_affinity(aff.double(), h, w), 8, logt)
        diff = float((out.double() - exact).abs().max())
        diff32 = float((out - ref).abs().max())
        err32 = float((ref.double() - exact).abs().max())
        agree = (out.argmax(0) == ref.argmax(0)).float().mean().item()
        ratio = min(t_dense) / min(t_sten)
        ratios.append(ratio)
        print(f"{name}: logt={logt} dense {min(t_dense):.3f}s stencil {min(t_sten):.3f}s ratio {ratio:.1f}x | "
              f"stencil vs dense-float64 max|diff|={diff:.1e}; vs dense-float32 {diff32:.1e} "
              f"(dense-float32's own error {err32:.1e}); argmax agreement {agree:.4f}")
        if diff > 1e-5:
            raise SystemExit(f"{name}: stencil and dense random walk differ by {diff:.2e} > 1e-5")
    print(f"speedup={min(ratios):.1f}")


if __name__ == "__main__":
    main()
