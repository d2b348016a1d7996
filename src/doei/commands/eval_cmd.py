"""``doei eval``: score seed PNGs or CAM files against ground-truth label PNGs.

Examples::

    doei eval --pred cams/ --gt VOC2012/SegmentationClass --list val.txt --out metrics.json
    doei eval --pred cams/ --gt gt/ --list val.txt --betas 0.3            # one threshold
    doei eval --pred seeds/ --gt gt/ --list val.txt --pred-type png --mean present
    doei eval --pred official_npy/ --gt gt/ --list val.txt --trust-pickle --betas 0:0.6:0.01

Prints a per-class table at the best β and the sweep, and writes the report JSON atomically
(only after every file was read without error).
"""
from __future__ import annotations

import argparse
from decimal import Decimal, InvalidOperation

from doei.errors import DoeiError

DEFAULT_BETAS = "0.05:0.95:0.05"


def parse_betas(spec: str) -> list[float]:
    """``"a:b:s"`` (a to b inclusive in steps s, computed in decimal so 0.3 is float('0.3')),
    ``"x"`` or ``"x,y,..."``. Returns sorted distinct values."""
    spec = spec.strip()
    try:
        if ":" in spec:
            parts = [Decimal(s) for s in spec.split(":")]
            if len(parts) != 3:
                raise DoeiError(f"--betas {spec!r}: expected START:END:STEP")
            start, end, step = parts
            if not all(x.is_finite() for x in parts) or step <= 0 or end < start:
                raise DoeiError(f"--betas {spec!r}: expected finite START <= END and STEP > 0")
            n = int((end - start) / step) + 1
            if n > 100000:
                raise DoeiError(f"--betas {spec!r}: {n} thresholds is too many (max 100000)")
            vals = [float(start + i * step) for i in range(n)]
        else:
            vals = [float(Decimal(s)) for s in spec.split(",") if s.strip()]
    except InvalidOperation:
        raise DoeiError(f"--betas {spec!r}: not a number list (use 0.3, 0.1,0.2 or 0.05:0.95:0.05)") from None
    if not vals or any(v != v or v in (float("inf"), float("-inf")) for v in vals):
        raise DoeiError(f"--betas {spec!r}: expected finite numbers")
    return sorted(set(vals))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", required=True, help="folder of predictions: <id>.png label maps, <id>.npz CAMs "
                   "(this project's format) or <id>.npy official CAM dicts (needs --trust-pickle)")
    p.add_argument("--gt", required=True, help="folder of ground-truth label PNGs <id>.png (255 = ignore)")
    p.add_argument("--list", required=True, help="text file with one image id per line")
    p.add_argument("--betas", default=None,
                   help=f"background thresholds for CAMs: START:END:STEP, X or X,Y,... (default {DEFAULT_BETAS})")
    p.add_argument("--num-classes", type=int, default=21, help="classes including background (21 VOC, 81 COCO)")
    p.add_argument("--out", default=None, help="write the metrics JSON here (atomically)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow reading official .npy CAM dicts (they are pickles: only for files you trust)")
    p.add_argument("--pred-type", choices=("auto", "cam", "png", "npy"), default="auto",
                   help="prediction format; auto picks from the first id's file extension")
    p.add_argument("--mean", choices=("all", "present"), default="all",
                   help="all: mean over all classes, absent = 0 (seed convention, default); "
                        "present: mean over classes present in GT or prediction (segmentation convention)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: the available cores, one per 64 images at most; counts are "
                        "exact either way)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from doei.eval.evaluate import evaluate_dirs
    from doei.eval.reading import detect_pred_type, read_id_list
    from doei.eval.report import build_report, format_report
    from doei.utils.io import atomic_write_json

    ids = read_id_list(args.list)
    pred_type = args.pred_type
    if pred_type == "auto":
        from pathlib import Path

        if not Path(args.pred).is_dir():
            raise DoeiError(f"{args.pred}: prediction directory not found")
        pred_type = detect_pred_type(args.pred, ids[0])
    if pred_type == "png":
        betas = None if args.betas is None else parse_betas(args.betas)
    else:
        betas = parse_betas(args.betas if args.betas is not None else DEFAULT_BETAS)
    if args.workers is not None and args.workers < 1:
        raise DoeiError(f"--workers {args.workers}: expected >= 1")
    from doei.pipeline_config import auto_workers

    workers = args.workers if args.workers is not None else auto_workers(len(ids))
    counts = evaluate_dirs(
        args.pred, args.gt, ids, num_classes=args.num_classes, pred_type=pred_type, betas=betas,
        trust_pickle=args.trust_pickle, workers=workers, progress=not args.no_progress,
    )
    rep = build_report(counts, args.mean)
    print(format_report(rep))
    if args.out:
        atomic_write_json(args.out, rep)
    return 0
