"""``doei train-seg``: train DeepLab-v1 (ResNet38) on pseudo masks from the pipeline config.

Examples::

    doei train-seg --config pipeline.yaml
    doei train-seg --config pipeline.yaml --set seg.train.pseudo_dir=runs/pipeline/pseudo --set seg.train.epochs=10
    doei train-seg --config pipeline.yaml --resume          # continue after the last finished epoch

Writes ``checkpoint.pt`` (atomically, every epoch), ``config.yaml`` and ``metrics.jsonl`` into
``seg.train.out_dir``. A pseudo-label folder that is the dataset's ground truth is refused.
"""
from __future__ import annotations

import argparse

from doei.engine import distributed as dist_util
from doei.engine.train_seg import train_segmentation
from doei.pipeline_config import load_pipeline_config
from doei.utils import cliargs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="pipeline YAML (sections data, seg; docs/pipeline.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set seg.train.lr=1e-3 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue bit-for-bit from <seg.train.out_dir>/checkpoint.pt (the settings must match)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh even if <seg.train.out_dir> holds a run (it is replaced); without it that is refused")
    cliargs.add_data_root(p, help="dataset folder (sets data.root)")
    cliargs.add_device(p, "seg.train.device")
    cliargs.add_no_progress(p)


def run(args: argparse.Namespace) -> int:
    sets = list(args.overrides) + cliargs.overrides(args, {"device": ("seg.train.device",),
                                                          "progress": ("seg.train.progress",)})
    if args.data_root:
        sets.append(f"data.root={args.data_root}")
    cfg = load_pipeline_config(args.config, sets)
    res = train_segmentation(cfg, resume=bool(args.resume), overwrite=bool(args.overwrite))
    if dist_util.is_main():
        print(f"done: {res.checkpoint} ({res.epochs_run} epochs run) in {res.seconds:.0f} s")
    return 0
