"""AffinityNet's data side: the CRF seed-score cache and the training data pipeline, serial vs parallel.

Both contenders run in the same process on the same synthetic images (``doei.data.synth``, square
``--size`` px scenes, CAMs made from their masks as the pipeline tests do):

* **CRF cache** — :func:`doei.engine.train_aff.precompute_crf_scores` with ``refine.train.crf_workers``
  = 0 (the serial loop) and = ``--workers`` (a spawned pool; same files, checked);
* **data pipeline** — one pass of a ``DataLoader`` over :class:`doei.engine.train_aff.AffinityDataset`
  at the paper's crop 448 and batch 8, ``num_workers`` = 0 (the main process, as the old default) and
  = ``--workers`` (the official script uses 8).

Each line prints both times and ``speedup=serial/parallel``. On a GPU machine the parallel loader also
overlaps with the training step, which this CPU-only script does not measure.

Run: ``.venv/bin/python benchmarks/refine_data.py [--images 8 --size 320 --workers 2]``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    from torch.utils.data import DataLoader

    from doei.data.build import build_dataset
    from doei.data.synth import SynthParams, write_synth
    from doei.engine.train_aff import AffinityDataset, precompute_crf_scores
    from tests.pipeline_common import tiny_config, write_cams_from_masks

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="doei_refine_bench_"))
    try:
        synth = tmp / "synth"
        write_synth(synth, SynthParams(seed=3, n_train=args.images, n_val=1, size=args.size))
        write_cams_from_masks(synth, tmp / "cam")
        base = build_dataset("synth", synth, "train")
        times, files = {}, {}
        for w in (0, args.workers):
            cfg = tiny_config(synth, tmp / f"run{w}", refine__train__cam_dir=str(tmp / "cam"),
                              refine__train__crf_workers=w, refine__train__crop_size=448, refine__train__radius=5)
            t0 = time.perf_counter()
            precompute_crf_scores(base, tmp / "cam", tmp / f"scores{w}", cfg.refine.train, progress=False)
            times[w] = time.perf_counter() - t0
            files[w] = sorted((tmp / f"scores{w}").glob("*.npz"))
        for a, b in zip(files[0], files[args.workers]):
            with np.load(a) as za, np.load(b) as zb:
                assert all(np.array_equal(za[k], zb[k]) for k in ("la", "ha")), a.name
        print(f"crf_cache images={args.images} size={args.size} serial={times[0]:.2f}s "
              f"pool({args.workers})={times[args.workers]:.2f}s per_image_serial={times[0] / args.images:.3f}s "
              f"speedup={times[0] / times[args.workers]:.2f}")

        sec = tiny_config(synth, tmp / "run0", refine__train__crop_size=448, refine__train__radius=5).refine.train
        ds = AffinityDataset(base, tmp / "cam", sec, tmp / "scores0")
        lt = {}
        for i in range(len(ds)):            # warm-up (file cache, lazy imports) so the first contender pays no extra
            ds[i]
        for w in (0, args.workers):
            loader = DataLoader(ds, batch_size=min(8, args.images), shuffle=False, num_workers=w,
                                persistent_workers=False)
            t0 = time.perf_counter()
            n = sum(batch[0].shape[0] for batch in loader)
            lt[w] = time.perf_counter() - t0
        print(f"aff_data crop=448 samples={n} main_process={lt[0]:.2f}s workers({args.workers})={lt[args.workers]:.2f}s "
              f"per_sample_main={lt[0] / n * 1000:.0f}ms speedup={lt[0] / lt[args.workers]:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
