"""``doei compare A B``: two CAM or mask folders side by side, on any dataset.

Examples::

    doei compare cams_off/ cams_on/ --dataset voc --data-root VOC2012 --split val --out cmp/ --names baseline,DOEI
    doei compare runA/pseudo runB/pseudo --dataset folder --data-root mydata --out cmp/
    doei compare segA/ segB/ --images photos/ --classes classes.txt --out cmp/      # no ground truth

A and B hold ``<id>.npz`` CAMs or ``<id>.png`` label maps (either kind in each). With ground truth
(``--dataset`` with masks, or ``--gt DIR``) both are scored as ``doei eval`` scores them (a CAM folder at its
own best beta of ``--betas``) and shown side by side: mIoU / FP / FN, per-class IoU and its difference,
and a gallery of the images with the largest per-image mIoU gap (image | A | B | difference | ground truth,
legends). Without, the two are compared with each other (per-class IoU of B against A, pixel agreement;
CAMs at ``--beta``). Writes ``report.md`` (+ ``per_class.png``, ``gallery/<id>.png``), ``report.html``
(one self-contained page: open it in any browser, no server) and ``compare.json``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from doei.data.build import build_dataset, dataset_kinds
from doei.data.common import find_image_file, read_class_names, read_image
from doei.errors import DoeiError
from doei.eval.betas import DEFAULT_BETAS
from doei.eval.class_names import class_names
from doei.eval.compare import compare_folders
from doei.eval.compare_report import write_report
from doei.utils import cliargs
from doei.utils.outdir import check_out_dir, folder_lock


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("Examples::")[1].split("A and B hold")[0]
    p.add_argument("a", metavar="A", help="first folder of <id>.npz CAMs or <id>.png label maps (the reference)")
    p.add_argument("b", metavar="B", help="second folder (differences are B - A)")
    p.add_argument("--out", required=True, help="report folder (report.md, report.html, compare.json, PNGs)")
    p.add_argument("--names", default="A,B", metavar="NAME_A,NAME_B", help="what to call A and B in the report")
    p.add_argument("--dataset", choices=dataset_kinds(), default=None,
                   help="the dataset the folders were made from: images, ground-truth masks and class names")
    cliargs.add_data_root(p, help="dataset folder of --dataset")
    p.add_argument("--split", default=None, help="split of --dataset (default: the kind's; folder: every image)")
    p.add_argument("--gt", default=None, help="ground-truth label PNGs <id>.png (without --dataset)")
    p.add_argument("--images", default=None, help="folder of the images <id>.jpg/.png (without --dataset)")
    p.add_argument("--classes", default=None, help="foreground class names, one per line (without --dataset)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="FOREGROUND classes, as every verb counts them (names then numbered; without --dataset/--classes)")
    p.add_argument("--betas", default=DEFAULT_BETAS, help="with ground truth: the sweep picking each CAM folder's beta")
    p.add_argument("--beta", type=float, default=0.4, help="without ground truth: the CAMs' background threshold")
    p.add_argument("--mean", choices=("all", "present"), default="all",
                   help="mIoU over all classes (seeds, default) or over the classes present (segmentation)")
    p.add_argument("--top", type=int, default=8, help="images in the gallery (where A and B differ most)")
    p.add_argument("--workers", type=int, default=1, help="scoring processes (counts are exact either way)")
    cliargs.add_no_progress(p)
    cliargs.add_overwrite(p, "replace a report already in --out (without it that is refused)")


def run(args: argparse.Namespace) -> int:
    labels = tuple(s.strip() for s in args.names.split(","))
    if len(labels) != 2 or not all(labels) or labels[0] == labels[1]:
        raise DoeiError(f"--names {args.names!r}: expected two different names, e.g. baseline,DOEI")
    if args.top < 0:
        raise DoeiError(f"--top {args.top}: expected a number of images >= 0")
    out = check_out_dir(args.out)
    if (out / "report.md").exists() and not args.overwrite:
        raise DoeiError(f"{out}: holds a report already; pass --overwrite or choose another --out")
    a, b = Path(args.a), Path(args.b)
    ids, gt, image_of, fg = None, Path(args.gt) if args.gt else None, None, None
    if args.dataset:
        if args.gt or args.images or args.classes:
            raise DoeiError("--dataset gives the images, ground truth and class names: drop --gt/--images/--classes")
        ds = build_dataset(args.dataset, args.data_root or "", args.split)
        fg = list(ds.class_names)
        ids = list(ds.ids)
        recs = {r.id: r for r in ds.records}
        masked = [i for i in ids if recs[i].mask_path is not None]
        if masked:
            gt = _mask_dir(recs, masked)
            ids = masked

        def image_of(i: str):
            return read_image(recs[i].image_path)
    else:
        if args.classes:
            fg = read_class_names(args.classes)
        elif args.num_classes is not None:
            if args.num_classes < 1:
                raise DoeiError(f"--num-classes {args.num_classes}: expected >= 1 foreground classes")
            fg = class_names(args.num_classes + 1)[1:]
        else:
            raise DoeiError("give the classes: --dataset KIND --data-root DIR, --classes FILE or --num-classes N")
        if args.images is None:
            raise DoeiError("give the images for the overlays: --dataset KIND --data-root DIR, or --images DIR")
        idir = Path(args.images)
        if not idir.is_dir():
            raise DoeiError(f"--images {idir}: folder not found")

        def image_of(i: str):
            return read_image(find_image_file(idir, i))
    if args.num_classes is not None and args.num_classes != len(fg):
        raise DoeiError(f"--num-classes {args.num_classes} but the class names count {len(fg)} foreground classes")
    with folder_lock(out, "report folder"):
        cmp = compare_folders(a, b, ["background", *fg], gt=gt, ids=ids, labels=labels, betas=args.betas,
                              beta=args.beta, mean=args.mean, workers=args.workers, progress=not args.no_progress)
        res = write_report(cmp, out, image_of=image_of, a=a, b=b, gt=gt, top=args.top)
    if cmp.reports:
        ra, rb = cmp.reports
        print(f"{labels[0]}: mIoU {ra['mIoU']:.2f}   {labels[1]}: mIoU {rb['mIoU']:.2f}   "
              f"({len(cmp.ids)} images, ground truth {gt})")
    else:
        print(f"{labels[0]} and {labels[1]} agree on {cmp.agreement:.2f} % of pixels ({len(cmp.ids)} images, "
              "no ground truth)")
    print(f"doei compare: {res['markdown']}, {res['html']} ({len(res['gallery'])} images in the gallery)")
    return 0


def _mask_dir(recs: dict, ids: list[str]) -> Path:
    """The one folder holding the dataset's masks of ``ids`` as ``<id>.png`` (what the scorer reads)."""
    dirs = {Path(recs[i].mask_path).parent for i in ids}
    if len(dirs) != 1 or any(Path(recs[i].mask_path).name != f"{i}.png" for i in ids):
        raise DoeiError("the dataset's masks are not one folder of <id>.png files: pass --gt DIR instead of --dataset")
    return dirs.pop()
