"""Benchmark: the β sweep in ONE pass over the files against one pass per β (same code, same loader).

Generates ``--n`` (default 1,464 = VOC train) random CAM files in this project's ``.npz`` format
(float16, VOC-like sizes around 500x375, 21 classes, 1-3 classes per image, smooth blobs) and
their ground-truth PNGs (with 255 borders) once into a temporary directory, using worker processes.
Then it times

* sweep:    ``evaluate_dirs(..., betas=B)`` with the 19 betas 0.05..0.95, one pass;
* per-beta: ``evaluate_dirs(..., betas=[b])`` for each b, i.e. 19 passes (each reloads the files),

checks that both give identical counts, and prints as its last line
``speedup=X images_per_s=Y`` (Y = images per second of the one-pass sweep).

Usage: ``python benchmarks/eval_speed.py [--n 1464] [--workers 2]``
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from doei.cam.io import save_cam
from doei.eval.evaluate import evaluate_dirs
from doei.eval.sweep import foreground_max, labels_at

SIZES = [(375, 500), (500, 375), (333, 500), (500, 333), (366, 500), (281, 500), (400, 500)]
BETAS = [round(0.05 * i, 2) for i in range(1, 20)]  # 0.05 .. 0.95


def _make_one(args: tuple[Path, str, int]) -> None:
    root, name, seed = args
    rng = np.random.default_rng(seed)
    h, w = SIZES[int(rng.integers(len(SIZES)))]
    k = int(rng.integers(1, 4))
    classes = np.sort(rng.choice(20, size=k, replace=False))
    cams = np.empty((k, h, w), dtype=np.float32)
    for j in range(k):  # smooth blob map: a coarse random field upsampled bilinearly, squashed to [0, 1]
        coarse = rng.random((int(rng.integers(3, 9)), int(rng.integers(3, 9)))).astype(np.float32)
        up = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))
        cams[j] = np.clip((up - up.min()) / (up.max() - up.min() + 1e-6), 0, 1)
    save_cam(root / "cams" / f"{name}.npz", classes, cams, dtype=np.float16)
    cams16 = cams.astype(np.float16).astype(np.float32)
    m, a = foreground_max(classes, cams16, 21)
    gt = labels_at(m, a, rng.uniform(0.3, 0.6)).astype(np.uint8)
    noise = rng.random((h, w)) < 0.05
    gt[noise] = rng.choice(np.append(classes + 1, 0), size=int(noise.sum()))
    gt[:, :3] = 255  # an ignore band
    Image.fromarray(gt).save(root / "gt" / f"{name}.png")


def generate(root: Path, n: int, workers: int) -> list[str]:
    (root / "cams").mkdir(parents=True, exist_ok=True)
    (root / "gt").mkdir(parents=True, exist_ok=True)
    names = [f"bench_{i:06d}" for i in range(n)]
    jobs = [(root, nm, i) for i, nm in enumerate(names)]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            list(ex.map(_make_one, jobs, chunksize=16))
    else:
        for j in jobs:
            _make_one(j)
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1464, help="number of images (default 1464)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes for generation")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="doei-eval-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        names = generate(root, args.n, args.workers)
        size_mb = sum(f.stat().st_size for f in (root / "cams").iterdir()) / 2**20
        print(f"generated {args.n} CAM files ({size_mb:.0f} MiB) + GT PNGs in {time.perf_counter() - t0:.1f}s",
              flush=True)

        def run(betas):
            return evaluate_dirs(root / "cams", root / "gt", names, 21, "cam", betas)

        run(BETAS[:1])  # warm the page cache and imports
        t0 = time.perf_counter()
        sweep = run(BETAS)
        t_sweep = time.perf_counter() - t0
        print(f"one-pass sweep ({len(BETAS)} betas): {t_sweep:.2f}s", flush=True)

        t0 = time.perf_counter()
        singles = [run([b]) for b in BETAS]
        t_single = time.perf_counter() - t0
        print(f"per-beta passes ({len(BETAS)} x 1 beta): {t_single:.2f}s", flush=True)

        for j, s in enumerate(singles):
            if not (np.array_equal(s.tp[0], sweep.tp[j]) and np.array_equal(s.p[0], sweep.p[j])
                    and np.array_equal(s.t, sweep.t)):
                print(f"MISMATCH at beta={BETAS[j]}", file=sys.stderr)
                return 1
        print("counts identical for every beta")
    print(f"speedup={t_single / t_sweep:.2f} images_per_s={args.n / t_sweep:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
