"""``doei synth``: generate the synthetic WSSS benchmark in the VOC layout.

Examples::

    doei synth --out data/synth                       # 3,000 train + 300 val, 64 px, seed 0
    doei synth --out data/synth96 --size 96 --max-objects 4 --seed 1 --workers 2

If ``--out`` already holds a benchmark generated with the same parameters, nothing is done (exit 0);
with different parameters it is an error unless ``--overwrite``. The output appears atomically (a
temporary folder renamed when complete). Design: docs/synthetic-benchmark.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import fields
from pathlib import Path

from doei.data.synth import params_from_meta, read_meta, SynthParams, write_synth
from doei.errors import DoeiError
from doei.utils.outdir import check_out_dir, folder_lock


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = SynthParams()
    p.add_argument("--out", required=True, help="output folder (VOC layout)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed: the benchmark is a function of it")
    p.add_argument("--n-train", type=int, default=d.n_train, help=f"train images (default {d.n_train})")
    p.add_argument("--n-val", type=int, default=d.n_val, help=f"val images (default {d.n_val})")
    p.add_argument("--size", type=int, default=d.size, help=f"image side in pixels (default {d.size})")
    p.add_argument("--min-objects", type=int, default=d.min_objects, help="fewest objects per image")
    p.add_argument("--max-objects", type=int, default=d.max_objects, help="most objects per image")
    p.add_argument("--scale", type=float, nargs=2, default=list(d.scale), metavar=("LO", "HI"),
                   help=f"object size range as a fraction of the image side (default {d.scale[0]} {d.scale[1]})")
    p.add_argument("--p-context", type=float, default=d.p_context,
                   help="probability that boat/train/car come with their water/rails/road band")
    p.add_argument("--p-context-alone", type=float, default=d.p_context_alone,
                   help="probability of each band in an image without its class")
    p.add_argument("--p-companion", type=float, default=d.p_companion, help="probability of a tree with a house")
    p.add_argument("--p-rocks", type=float, default=d.p_rocks, help="probability of headless-shell clutter")
    p.add_argument("--max-clutter", type=int, default=d.max_clutter, help="most clutter shapes per image")
    p.add_argument("--noise", type=float, default=d.noise, help="pixel noise std (0..255 scale)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes (output is identical)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing benchmark with other parameters")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def params_from_args(args: argparse.Namespace):
    kw = {f.name: getattr(args, f.name) for f in fields(SynthParams) if hasattr(args, f.name)}
    kw["scale"] = tuple(float(v) for v in kw["scale"])
    return SynthParams(**kw).validate()


def run(args: argparse.Namespace) -> int:
    p = params_from_args(args)
    if args.workers < 1:
        raise DoeiError(f"--workers {args.workers}: expected at least 1 process")
    out = check_out_dir(args.out)
    with folder_lock(out, "benchmark folder", sibling=True):
        return _write(args, p, out)


def _write(args: argparse.Namespace, p, out: Path) -> int:
    from tqdm import tqdm


    if out.exists():
        if (out / "meta.json").is_file():
            try:
                old = params_from_meta(read_meta(out))
            except (DoeiError, TypeError, KeyError):
                old = None
            if old == p and not args.overwrite:
                meta = read_meta(out)
                print(f"{out}: up to date (seed {p.seed}, {meta['splits']}), checksum {meta['checksum_sha256']}")
                return 0
            if not args.overwrite:
                raise DoeiError(f"{out}: holds a benchmark with other parameters; pass --overwrite or choose another --out")
            shutil.rmtree(out)
        elif any(out.iterdir()) if out.is_dir() else True:
            raise DoeiError(f"{out}: exists and is not a synthetic benchmark (no meta.json); refusing to touch it")
        else:
            out.rmdir()
    with tqdm(total=p.n_train + p.n_val, desc="doei synth", unit="img", disable=args.no_progress) as bar:
        meta = write_synth(out, p, workers=args.workers, progress=bar.update)
    print(f"wrote {out}: {meta['splits']['train']} train + {meta['splits']['val']} val images, "
          f"{len(meta['classes'])} classes, {p.size}px, seed {p.seed}")
    print(f"images per class: {meta['images_per_class']}")
    print(f"checksum sha256: {meta['checksum_sha256']}")
    return 0
