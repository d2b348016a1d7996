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
from doei.utils import cliargs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("Examples::")[1].split("The YAML")[0]
    sub = p.add_subparsers(dest="action", required=True, metavar="{train,infer}",
                           help="train: AffinityNet on the CAM seeds' affinities; infer: random-walk pseudo masks")
    train = sub.add_parser("train", help="train AffinityNet on the affinity labels of the CAM seeds",
                           description="Train AffinityNet (PSA) on the affinity labels of the CAM seeds; writes "
                                       "checkpoint.pt, config.yaml and metrics.jsonl into refine.train.out_dir.")
    infer = sub.add_parser("infer", help="random-walk the CAMs into pseudo masks <refine.infer.out_dir>/<id>.png",
                           description="Random-walk the CAMs with the trained AffinityNet into pseudo masks "
                                       "(one palette PNG per image, resumable).")
    for q, stage in ((train, "train"), (infer, "infer")):
        q.add_argument("--config", required=True, help="pipeline YAML (see configs/demo_pipeline.yaml, docs/pipeline.md)")
        q.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help=f"override a config value, e.g. --set refine.{stage}.device=cpu (repeatable)")
        cliargs.add_data_root(q, help="dataset folder (sets data.root)")
        cliargs.add_device(q, f"refine.{stage}.device")
        cliargs.add_no_progress(q)
    train.add_argument("--resume", action="store_true", help="continue from <refine.train.out_dir>/checkpoint.pt")
    train.add_argument("--overwrite", action="store_true", help="start afresh even if <refine.train.out_dir> "
                       "holds a run (it is replaced); without it that is refused")
    infer.add_argument("--limit", type=int, default=None, help="only the first N ids of the split (smoke tests)")


def run(args: argparse.Namespace) -> int:
    stage = f"refine.{args.action}"
    sets = list(args.overrides) + cliargs.overrides(args, {"device": (f"{stage}.device",),
                                                          "progress": (f"{stage}.progress",)})
    if args.data_root:
        sets.append(f"data.root={args.data_root}")
    cfg = load_pipeline_config(args.config, sets)
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


