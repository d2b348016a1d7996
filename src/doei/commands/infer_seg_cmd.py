"""``doei infer-seg``: multi-scale (+flip) segmentation, DenseCRF in worker processes, PNGs + overlays.

Examples::

    doei infer-seg --config pipeline.yaml                                  # val split, MS + flip + CRF
    doei infer-seg --config pipeline.yaml --set seg.infer.crf_workers=8
    doei infer-seg --config pipeline.yaml --set seg.infer.scales=[1.0] --set seg.infer.crf=false
    doei eval --pred runs/pipeline/seg_pred/pred_crf --gt VOC2012/SegmentationClassAug --list val.txt --mean present

Writes into ``seg.infer.out_dir``: ``pred/<id>.png`` (argmax of the max-fused softmax, no CRF),
``pred_crf/<id>.png`` (after DenseCRF, with ``crf``), ``overlay/<id>.png`` (image | colour overlay of
the final labels, with ``overlays``) and ``infer_seg_log.jsonl``. Class-index PNGs use the VOC palette
(pixel values are the labels). Score maps are never written: each image's probabilities go to a CRF
worker in memory as float16 and are dropped once its PNG is written. Every file is atomic; an image
whose outputs all exist is skipped, so an interrupted run resumes at the image where it stopped.
Under ``torchrun`` the images are sharded over the ranks (byte-identical files; docs/distributed.md).
"""
from __future__ import annotations

import argparse

from doei.engine import distributed as dist_util
from doei.pipeline_config import load_pipeline_config
from doei.seg.infer import infer_segmentation
from doei.utils import cliargs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("Examples::")[1].split("Writes into")[0]
    p.add_argument("--config", required=True, help="pipeline YAML (sections data, seg; docs/pipeline.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set seg.infer.split=val (repeatable)")
    p.add_argument("--limit", type=int, default=None, help="only the first N ids of the split (smoke tests)")
    cliargs.add_data_root(p, help="dataset folder (sets data.root)")
    cliargs.add_device(p, "seg.infer.device")
    cliargs.add_no_progress(p)


def run(args: argparse.Namespace) -> int:
    sets = list(args.overrides) + cliargs.overrides(args, {"device": ("seg.infer.device",),
                                                          "progress": ("seg.infer.progress",)})
    if args.data_root:
        sets.append(f"data.root={args.data_root}")
    cfg = load_pipeline_config(args.config, sets)
    s = infer_segmentation(cfg, limit=args.limit)
    if dist_util.is_main():
        print(f"doei infer-seg: {s['computed']} computed, {s['skipped']} already done, {s['seconds']:.1f} s "
              f"-> {s['out_dir']}")
    return 0


