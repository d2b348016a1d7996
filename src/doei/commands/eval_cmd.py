"""``doei eval``: score seed PNGs or CAM files against ground-truth label PNGs.

Examples::

    doei eval --pred cams/ --gt VOC2012/SegmentationClass --list val.txt --out metrics.json
    doei eval --pred cams/ --gt gt/ --list val.txt --betas 0.3            # one threshold
    doei eval --pred seeds/ --gt gt/ --list val.txt --pred-type png --mean present
    doei eval --pred official_npy/ --gt gt/ --list val.txt --trust-pickle --betas 0:0.6:0.01
    doei eval --pred cams/ --gt data/synth/SegmentationClass --list val.txt --dataset synth --data-root data/synth
    doei eval --pred cams/ --dataset synth --data-root data/synth --split val     # ids and masks from the dataset

Prints a per-class table at the best β and the sweep, and writes the report JSON atomically
(only after every file was read without error; ``--out`` is checked to be writable before anything
is read).

Which classes are scored (C labels, background included, and their names): ``--num-classes N`` (N
FOREGROUND classes, as every verb counts them: C = N + 1), ``--classes`` (a names file) or ``--dataset`` (voc
20 + background, coco 80 + background, synth/folder from ``--data-root``); several given must agree. An N
whose labels stop exactly at N - 1 is refused: that is the old meaning of the flag (background counted). With none, C = 21 (VOC) and the evaluation is refused when the largest label seen in the
ground truth and predictions is at most (C - 1) / 2 = 10: such data is not VOC (the synthetic
benchmark uses 0..10), and its absent classes would count as 0 IoU and halve the mIoU. When C comes
from an option and that rule holds, a warning is printed instead.
"""
from __future__ import annotations

import argparse
import sys

from doei.data.build import dataset_class_names, dataset_kinds, get_dataset_spec
from doei.data.common import read_class_names
from doei.errors import DoeiError
from doei.eval.betas import DEFAULT_BETAS, parse_betas
from doei.eval.class_names import class_names
from doei.eval.cooccurrence import evaluate_cooccurrence, format_cooccurrence
from doei.eval.evaluate import evaluate_dirs
from doei.eval.reading import detect_pred_type, read_id_list
from doei.eval.report import build_report, format_report
from doei.pipeline_config import auto_workers
from doei.utils.io import atomic_write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", required=True, help="folder of predictions: <id>.png label maps, <id>.npz CAMs "
                   "(this project's format) or <id>.npy official CAM dicts (needs --trust-pickle)")
    p.add_argument("--gt", default=None, help="folder of ground-truth label PNGs <id>.png (255 = ignore); default "
                   "with --dataset/--data-root/--split: the dataset's own masks")
    p.add_argument("--list", default=None, help="text file with one image id per line; default with "
                   "--dataset/--data-root/--split: the split's ids that have a mask")
    p.add_argument("--betas", default=None,
                   help=f"background thresholds for CAMs: START:END:STEP, X or X,Y,... (default {DEFAULT_BETAS})")
    p.add_argument("--num-classes", type=int, default=None,
                   help="FOREGROUND classes, as in every verb (20 VOC, 80 COCO, 10 the synthetic benchmark); the "
                        "background is added (N + 1 labels scored). Default: from --classes or --dataset, else VOC's "
                        "20 - refused when the largest label seen in GT and predictions is <= N/2, i.e. the data is "
                        "not VOC")
    p.add_argument("--classes", default=None,
                   help="foreground class names (one per line, a JSON list, or a JSON with a 'classes' list: a "
                        "synthetic benchmark's meta.json, a `doei labels` file); C = names + 1")

    p.add_argument("--dataset", choices=dataset_kinds(), default=None,
                   help="take the classes from a dataset kind: voc (21), coco (81), synth / folder (need --data-root)")
    p.add_argument("--data-root", default=None, help="dataset folder for --dataset synth / folder")
    p.add_argument("--split", default=None, help="with --dataset and --data-root: the split whose ids and masks are "
                   "scored (no --list/--gt needed)")
    p.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the dataset's loader (e.g. mask_dir=DIR), checked against what the kind "
                        "declares; repeatable")
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
    p.add_argument("--context", default=None, metavar="DIR",
                   help="folder of context maps <id>.png (0 none, k+1 = context of class k; the synthetic benchmark "
                        "writes DATA/ContextClass): also report context leak / object FN per class at the best β "
                        "(doei.eval.cooccurrence, docs/evaluation.md)")


def resolve_classes(num_classes: int | None, classes: str | None = None, dataset: str | None = None,
                    data_root: str | None = None) -> tuple[int, list[str], str | None]:
    """``(C, names of the C classes with 'background' first, where C came from)``; ``None`` as the
    source means nothing was given and VOC's 21 is assumed (see :func:`check_class_count`)."""
    if num_classes is not None and not 1 <= num_classes <= 254:
        raise DoeiError(f"--num-classes {num_classes}: expected 1..254 foreground classes (the background is added; "
                        "255 is the ignore label)")
    found: list[tuple[list[str], str]] = []
    if classes is not None:
        found.append((read_class_names(classes), f"--classes {classes}"))
    if dataset is not None:
        from_root = get_dataset_spec(dataset).names_from_root
        if from_root and not data_root:
            raise DoeiError(f"--dataset {dataset} needs --data-root (the folder with its class names)")
        where = f" ({data_root})" if from_root else ""
        found.append((dataset_class_names(dataset, data_root), f"--dataset {dataset}{where}"))
    for names, src in found[1:]:
        if len(names) != len(found[0][0]):
            raise DoeiError(f"{src} has {len(names)} foreground classes but {found[0][1]} has {len(found[0][0])}")
    if found:
        names, src = found[0]
        c = len(names) + 1
        if num_classes is not None and num_classes + 1 != c:
            raise DoeiError(f"--num-classes {num_classes} but {src} names {len(names)} foreground classes "
                            "(--num-classes counts foreground classes)")
        return c, ["background"] + list(names), src
    if num_classes is not None:
        return num_classes + 1, class_names(num_classes + 1), f"--num-classes {num_classes}"
    return 21, class_names(21), None


def largest_label_seen(counts) -> int:
    """The highest class index with any ground-truth or predicted pixel (at any β); 0 if none."""
    import numpy as np

    seen = np.flatnonzero((counts.t > 0) | (counts.p > 0).any(axis=0))
    return int(seen.max()) if seen.size else 0


def check_class_count(counts, num_classes: int, source: str | None) -> str | None:
    """The class-count rule: when the largest label seen is <= (C - 1) / 2, at least half of the scored
    foreground classes never occur and would count as 0 IoU. Refused (DoeiError) when C was assumed
    (``source`` None); returned as a warning line when C was given."""
    m = largest_label_seen(counts)
    if source is not None and source.startswith("--num-classes") and m >= 2 and m == num_classes - 2:
        n = num_classes - 1
        raise DoeiError(f"{source} counts FOREGROUND classes (the background is added: {n + 1} labels scored), but "
                        f"the labels stop at {m}: the data has {m} foreground classes, so give --num-classes {m} "
                        "(the flag used to count the background too; or name the classes with --classes FILE)")
    if 2 * m > num_classes - 1:
        return None
    what = (f"labels in the ground truth and predictions go up to {m}, but {num_classes} classes are scored")
    if source is None:
        raise DoeiError(f"no --num-classes, --classes or --dataset given, so VOC's 21 classes were assumed; {what} "
                        f"(classes {m + 1}..{num_classes - 1} absent, counted as 0 IoU): give the data's class count "
                        f"(--num-classes N, N >= {m + 1}; or --classes FILE / --dataset KIND; the synthetic benchmark: "
                        "--dataset synth --data-root DIR), or --num-classes 21 to score VOC's classes anyway")
    return (f"{what} ({source}): classes {m + 1}..{num_classes - 1} never occur and count as 0 IoU in the "
            "'all' mean; check the class count")


def check_out_writable(out: str) -> None:
    """Refuse an ``--out`` the report could not be written to, before the evaluation runs: an existing
    directory, a path under a file, or a folder this process cannot create files in. Creates nothing
    (a probe file in the nearest existing folder is created and removed at once)."""
    import os
    import tempfile
    from pathlib import Path

    from doei.utils.outdir import check_path

    path = check_path(out, "--out", file=True)
    if path.is_dir():
        raise DoeiError(f"--out {out}: is a directory (expected a JSON file path)")
    parent = path.parent if str(path.parent) else Path(".")
    while not parent.exists():
        if parent.is_symlink():
            raise DoeiError(f"--out {out}: {parent} is a dangling link")
        parent = parent.parent
    if not parent.is_dir():
        raise DoeiError(f"--out {out}: {parent} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".tmp-probe.", dir=parent)
    except OSError as e:
        raise DoeiError(f"--out {out}: cannot write in {parent} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)


def dataset_ground_truth(kind: str | None, root: str | None, split: str | None,
                         options: list[str]) -> tuple[list[str], str]:
    """(ids with a mask, the folder of their ``<id>.png`` masks) of a dataset split, for ``doei eval`` without
    ``--list``/``--gt``; the masks must share one folder and be named ``<id>.png`` (else one line)."""
    from pathlib import Path

    from doei.config import apply_overrides
    from doei.data.build import build_dataset, check_dataset_options

    if not (kind and root and split):
        raise DoeiError("give --gt and --list, or --dataset, --data-root and --split (the dataset knows its ids "
                        "and masks)")
    opts = check_dataset_options(kind, apply_overrides({}, options), "--dataset-option")
    recs = [r for r in build_dataset(kind, root, split, **opts).records if r.mask_path is not None]
    if not recs:
        raise DoeiError(f"--dataset {kind} --data-root {root} --split {split}: no image of the split has a mask")
    folders = {Path(r.mask_path).parent for r in recs}
    if len(folders) != 1 or any(Path(r.mask_path).name != f"{r.id}.png" for r in recs):
        raise DoeiError(f"--dataset {kind} --split {split}: its masks are not one folder of <id>.png files; "
                        "give --gt and --list")
    return [r.id for r in recs], str(folders.pop())


def run(args: argparse.Namespace) -> int:
    num_classes, names, class_source = resolve_classes(args.num_classes, args.classes, args.dataset, args.data_root)
    if args.out:
        check_out_writable(args.out)
    if args.list is None or args.gt is None:
        if args.list is not None or args.gt is not None:
            raise DoeiError("give both --gt and --list, or neither (with --dataset/--data-root/--split)")
        ids, args.gt = dataset_ground_truth(args.dataset, args.data_root, args.split, args.dataset_option)
    else:
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

    workers = args.workers if args.workers is not None else auto_workers(len(ids))
    counts = evaluate_dirs(
        args.pred, args.gt, ids, num_classes=num_classes, pred_type=pred_type, betas=betas,
        trust_pickle=args.trust_pickle, workers=workers, progress=not args.no_progress,
    )
    warning = check_class_count(counts, num_classes, class_source)
    rep = build_report(counts, args.mean, names)
    rep["num_classes_from"] = class_source or "default (VOC)"
    print(format_report(rep))
    if args.context:
        if pred_type == "npy":
            raise DoeiError("--context: official .npy CAMs are not supported (convert them to .npz)")
        rep["cooccurrence"] = evaluate_cooccurrence(args.pred, args.gt, args.context, ids,
                                                    rep.get("beta") if pred_type != "png" else None,
                                                    names[1:], pred_type="png" if pred_type == "png" else "cam")
        print(format_cooccurrence(rep["cooccurrence"]))
    if warning:
        print(f"doei eval: warning: {warning}", file=sys.stderr)
    if args.out:
        atomic_write_json(args.out, rep)
    return 0
