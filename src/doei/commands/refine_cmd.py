"""``doei refine``: PSA/AffinityNet refinement of CAM seeds into pseudo masks.

Examples::

    doei refine train --config pipeline.yaml                 # AffinityNet on the affinity labels of the CAMs
    doei refine train --config pipeline.yaml --resume        # continue after the last finished epoch
    doei refine infer --config pipeline.yaml                 # random walk -> <refine.infer.out_dir>/<id>.png
    doei refine infer --config pipeline.yaml --set refine.infer.bg_mode=power --set refine.infer.logt=8  # PSA

The YAML is the pipeline config (``doei.pipeline_config``; sections ``data`` and ``refine``).
``train`` writes ``checkpoint.pt`` (every epoch, atomically), ``config.yaml`` and ``metrics.jsonl``
into ``refine.train.out_dir``. ``infer`` writes one class-index PNG per image (VOC palette: values
are labels) atomically and skips images whose PNG exists, so an interrupted run resumes; its log
is ``refine_infer_log.jsonl`` in the output folder. Under ``torchrun``, ``train`` runs with DDP and
``infer`` shards the images over the ranks (byte-identical files; docs/distributed.md).
"""
from __future__ import annotations

import argparse

from doei.engine import distributed as dist_util
from doei.engine.train_aff import train_affinity
from doei.pipeline_config import load_pipeline_config
from doei.refine.infer import infer_pseudo_masks


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("Examples::")[1].split("The YAML")[0]
    p.add_argument("action", choices=("train", "infer"), help="train AffinityNet, or infer pseudo masks by random walk")
    p.add_argument("--config", required=True, help="pipeline YAML (see configs/demo_pipeline.yaml, docs/pipeline.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set refine.train.epochs=2 (repeatable)")
    p.add_argument("--resume", action="store_true", help="train: continue from <refine.train.out_dir>/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true", help="train: start afresh even if <refine.train.out_dir> "
                   "holds a run (it is replaced); without it that is refused")
    p.add_argument("--limit", type=int, default=None, help="infer: only the first N ids of the split (smoke tests)")


def run(args: argparse.Namespace) -> int:
    cfg = load_pipeline_config(args.config, args.overrides)
    if args.action == "train":
        res = train_affinity(cfg, resume=bool(args.resume), overwrite=bool(args.overwrite))
        if dist_util.is_main():
            print(f"done: {res.checkpoint} ({res.epochs_run} epochs run) in {res.seconds:.0f} s")
        return 0
    summary = infer_pseudo_masks(cfg, limit=args.limit)
    if dist_util.is_main():
        print(f"doei refine infer: {summary['computed']} computed, {summary['skipped']} already done, "
              f"{summary['seconds']:.1f} s -> {summary['out_dir']}")
    return 0


