"""``doei predict``: masks, overlays with a legend (and CAMs) for your own images, from a trained pipeline.

Examples::

    doei predict photos/ --config configs/folder_pipeline.yaml --out pred/      # the run's classifier + DeepLab
    doei predict photos/ --classifier runs/cls/checkpoint.pt --out pred/ --save-cams
    doei predict a.jpg b.jpg --seg runs/seg/checkpoint.pt --classes classes.txt --out pred/
    doei predict list.txt --classifier ckpt.pt --labels labels.csv --out pred/   # given labels where present
    torchrun --nproc_per_node 4 -m doei.cli predict photos/ --config voc.yaml --out pred/

IMAGES are image files, folders of images or .txt lists of image paths; an image's id is its file name
without the extension. Writes ``masks/<id>.png`` (palette PNG, values are labels), ``overlays/<id>.png``
(image | mask, legend), ``labels/<id>.json`` (classes used and where they came from), with
``--save-cams`` ``cams/<id>.npz`` + ``cams/<id>.png``, and ``predictions.csv``. The mask is DeepLab's
when a segmentation checkpoint is known (``--seg`` or the config's run; only background and the photo's
classes compete unless ``--no-restrict``), else the CAM seeds. Images in
``--labels`` use their given classes; the others use the classifier's: every class with sigmoid score
>= ``--threshold`` (default 0.5), and at least the top one; each overlay says which. Resumable (an image
whose files exist is skipped; ``--overwrite`` redoes all), progress bar, ``predict_log.jsonl``, sharded
under torchrun (docs/your-data.md).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from doei.data.build import dataset_class_names, dataset_kinds
from doei.data.common import read_class_names, read_labels_json
from doei.data.folder import read_labels_csv
from doei.engine import distributed as dist_util
from doei.errors import DoeiError
from doei.pipeline.predict import PredictSettings, class_names_of_checkpoint, predict
from doei.utils import cliargs


def _floats(spec: str, flag: str) -> list[float]:
    try:
        vals = [float(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        vals = []
    if not vals or any(v <= 0 for v in vals):
        raise DoeiError(f"{flag} {spec!r}: expected comma-separated positive numbers, e.g. 1.0,0.5,1.5")
    return vals


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("Examples::")[1].split("IMAGES are")[0]
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders of images, .txt lists of paths")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", default=None, help="pipeline YAML of a finished `doei run`: its classifier, DeepLab, "
                   "CAM and inference settings and class names (flags below override)")
    p.add_argument("--classifier", default=None, help="classifier checkpoint (doei train-cls, or external weights)")
    p.add_argument("--seg", default=None, help="DeepLab checkpoint (doei train-seg, or external weights)")
    p.add_argument("--seg-model", default="deeplab_resnet38", help="DeepLab model for an external --seg weights file")
    p.add_argument("--labels", default=None, help="image-level labels where known: labels.csv (id,labels) or a "
                   "labels JSON; images not in it use the classifier's predicted classes")
    p.add_argument("--classes", default=None, help="foreground class names (one per line or a JSON list)")
    p.add_argument("--dataset", choices=dataset_kinds(), default=None, help="take the class names from a dataset kind")
    cliargs.add_data_root(p, help="dataset folder: of --config's run (sets data.root), or of --dataset synth/folder")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="sigmoid score from which a class counts as present in an unlabelled image")
    p.add_argument("--seed-beta", type=float, default=None,
                   help="background threshold of the CAM seeds used as the mask without DeepLab (default 0.4 "
                        "or the config's cam.seed_beta)")
    p.add_argument("--save-cams", action="store_true", help="also write cams/<id>.npz and cams/<id>.png")
    p.add_argument("--cam-scales", default=None, help="CAM scales, e.g. 1.0,0.5,1.5 (default 1.0 or the config's)")
    p.add_argument("--n-layers", type=int, default=None,
                   help="last blocks whose attention forms the CAM (default min(3, depth), or the config's)")
    p.add_argument("--seg-scales", default=None, help="DeepLab scales (default 1.0, or the config's seg.infer.scales)")
    p.add_argument("--crf", action=argparse.BooleanOptionalAction, default=None,
                   help="DenseCRF on DeepLab's probabilities (default off, or the config's seg.infer.crf)")
    p.add_argument("--restrict", action=argparse.BooleanOptionalAction, default=None,
                   help="DeepLab: only background and the image's classes (given or predicted) compete (default on)")
    p.add_argument("--patch-refine", action=argparse.BooleanOptionalAction, default=None,
                   help="MCTformer's patch-affinity refinement of the CAMs (default on, or the config's cam section)")
    cliargs.add_device(p)
    cliargs.add_no_progress(p)
    cliargs.add_overwrite(p, "recompute every image (and replace the settings of a previous run in --out)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images (smoke tests)")


def settings_from_args(args: argparse.Namespace) -> PredictSettings:
    """Defaults <- the pipeline config (``--config``) <- flags."""
    if not (args.config or args.classifier or args.seg):
        PredictSettings().check()                     # the one-line "give a classifier ..." message
    s = PredictSettings()
    names_from: list[str] = []
    if args.config:
        from doei.pipeline.stages import resolve
        from doei.pipeline_config import load_pipeline_config

        r = resolve(load_pipeline_config(args.config, [f"data.root={args.data_root}"] if args.data_root else []))
        cam, si = r.cam, r.cfg.seg.infer
        s = dataclasses.replace(
            s, classifier=str(r.checkpoint) if r.checkpoint.is_file() else None,
            seg_checkpoint=si.checkpoint if si.checkpoint and Path(si.checkpoint).is_file() else None,
            seed_beta=cam.seed_beta, cam_scales=list(cam.scales), cam_flip=cam.flip, n_layers=cam.n_layers,
            kind=cam.kind, patch_refine=cam.patch_refine, cam_normalize=cam.normalize,
            seg_scales=list(si.scales), seg_flip=si.flip, crf=si.crf, device=r.cfg.run.device)
        names_from = dataset_class_names(r.cfg.data.kind, r.cfg.data.root)
    rep = {"classifier": args.classifier, "seg_checkpoint": args.seg, "threshold": args.threshold,
           "seed_beta": args.seed_beta, "crf": args.crf, "restrict": args.restrict, "n_layers": args.n_layers, "patch_refine": args.patch_refine, "device": args.device,
           "cam_scales": _floats(args.cam_scales, "--cam-scales") if args.cam_scales else None,
           "seg_scales": _floats(args.seg_scales, "--seg-scales") if args.seg_scales else None}
    s = dataclasses.replace(s, save_cams=bool(args.save_cams), seg_model=args.seg_model,
                            **{k: v for k, v in rep.items() if v is not None})
    if args.classes:
        names = read_class_names(args.classes)
    elif args.dataset:
        names = dataset_class_names(args.dataset, args.data_root)
    elif names_from:
        names = names_from
    else:
        names = class_names_of_checkpoint(s.classifier) if s.classifier else None
        if names is None:
            raise DoeiError("no class names: give --classes FILE, --dataset KIND (--data-root DIR) or --config "
                            "(a classifier trained by doei train-cls names its dataset itself)")
    labels: dict[str, list[int]] = {}
    if args.labels:
        path = Path(args.labels)
        table = read_labels_csv(path, names) if path.suffix.lower() == ".csv" else read_labels_json(path, len(names), names)
        labels = {k: list(v) for k, v in table.items()}
    return dataclasses.replace(s, class_names=list(names), labels=labels).check()


def run(args: argparse.Namespace) -> int:
    s = settings_from_args(args)
    res = predict(args.images, s, args.out, progress=not args.no_progress, overwrite=args.overwrite, limit=args.limit)
    if dist_util.is_main():
        src = ", ".join(f"{n} {k}" for k, n in sorted(res.get("sources", {}).items()))
        print(f"doei predict: {res['computed']} computed, {res['skipped']} already done, {res['seconds']:.1f} s "
              f"-> {res['out_dir']} (classes: {src or 'none'}; threshold {s.threshold:g}); {res['predictions']}")
    return 0
