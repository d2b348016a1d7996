"""``doei cam``: multi-scale CAMs of a data split, one ``.npz`` per image (resumable, streaming).

Examples::

    doei cam --model mctformer_v2_deit_small --num-classes 20 --dataset voc \\
        --data-root VOC2012 --split train --checkpoint ckpt.pth --out cams/ --crf-alphas 1,12
    doei cam --config cam.yaml --checkpoint ckpt.pth --split val --out cams_val/ --scales 1.0,0.5,1.5
    doei eval --pred cams/ --gt VOC2012/SegmentationClass --list VOC2012/ImageSets/Segmentation/train.txt

Writes into ``--out``: ``<id>.npz`` (``doei.cam.io`` format: only the image's ground-truth classes),
optionally ``seeds/<id>.png`` (background threshold ``--seed-beta``), ``crf_alpha<A>/<id>.png`` (MCTformer's
CRF label maps, PSA's affinity labels come from α = 1 and 12) and ``overlays/<id>.png``; plus
``cam_settings.json`` and the log ``cam_log.jsonl``. Every file is written atomically. The work is
done by :func:`doei.cam.generate.generate_cams` (also the ``cam`` stage of ``doei run``). Under
``torchrun`` the ids left to do are split over the ranks (``ids[rank::world]``), each rank writes its
own ids' files (the same bytes a single process writes), rank 0 the settings and summary
(docs/distributed.md). An id whose
outputs all exist (and whose CAM file loads with the expected classes) is skipped, so an interrupted
run continues where it stopped; a rerun with different pipeline settings into the same folder is refused.
"""
from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path
from typing import Any

import torch

from doei.cam.config import CamConfig
from doei.cam.generate import generate_cams, load_cam_model, open_dataset
from doei.config import apply_overrides, from_dict, load_config, to_dict
from doei.core import DOEIConfig
from doei.data.build import dataset_kinds
from doei.engine import distributed as dist_util
from doei.engine.classifier import stored_doei
from doei.errors import DoeiError, DoeiWarning
from doei.utils.outdir import check_out_dir


def _floats(spec: str, flag: str) -> list[float]:
    try:
        vals = [float(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise DoeiError(f"{flag} {spec!r}: expected comma-separated numbers, e.g. 1.0,0.5,1.5") from None
    if not vals:
        raise DoeiError(f"{flag} {spec!r}: expected at least one number")
    bad = next((v for v in vals if not math.isfinite(v)), None)
    if bad is not None:
        raise DoeiError(f"{flag} {spec!r}: {bad} is not a finite number")
    return vals


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("Writes into")[0].split("Examples::")[1]
    p.add_argument("--config", default=None, help="YAML file with the keys of doei.cam.config.CamConfig")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--checkpoint", required=True, help="model weights (.pth; {'model': sd}, {'state_dict': sd} "
                   "or a bare state dict; 'module.' prefixes are stripped)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--split", default=None, help="split name (train, train_aug, val, ...) or an id-list .txt")
    p.add_argument("--model", default=None, help="registered model name: a doei training checkpoint records its "
                   "own (a different one is refused); for external weights default mctformer_v2_deit_small")
    p.add_argument("--num-classes", type=int, default=None, help="foreground classes (default: the checkpoint's, "
                   "or for external weights the dataset's: 20 VOC, 80 COCO)")
    p.add_argument("--doei", choices=("on", "off"), default=None, help="run the weights with DOEI on/off, as an "
                   "explicit override of what a training checkpoint was trained with (default: as trained; "
                   "external weights: off unless the config has a doei section)")
    p.add_argument("--data-root", default=None, help="dataset folder (VOC2012 layout for voc/synth)")

    p.add_argument("--dataset", choices=dataset_kinds(), default=None, help="registered dataset kind (default voc)")
    p.add_argument("--scales", default=None, help="comma-separated scales (default 1.0, MCTformer's psa run; "
                   "MCTformer's --scales option takes e.g. 1.0,0.5,1.5)")
    p.add_argument("--no-flip", action="store_true", help="do not add the horizontally flipped views")
    p.add_argument("--kind", default=None, help="CAM kind: one of the model's cam_kinds (default its first; "
                   "MCTformer-V2 fused|patchcam|mtatt, TS-CAM semantic, TransCAM transcam|clsattn|attnagg|convcam); "
                   "another is refused naming the model's")
    p.add_argument("--n-layers", type=int, default=None, help="last blocks whose attention is summed, for a model "
                   "whose CAMs read it (MCTformer-V2, default 3); refused for one that does not")
    p.add_argument("--no-patch-refine", action="store_true", help="skip the patch-affinity refinement (a model "
                   "whose CAMs read it: MCTformer-V2, TransCAM); refused for one that does not")
    p.add_argument("--amp", action="store_true", help="fp16 autocast on CUDA, as the official code runs")
    p.add_argument("--cam-dtype", choices=("float16", "float32"), default=None, help="stored CAM dtype")
    p.add_argument("--save-seeds", action="store_true", help="also write seeds/<id>.png at --seed-beta")
    p.add_argument("--seed-beta", "--beta", type=float, default=None, dest="seed_beta",
                   help="background threshold of the seed PNGs (default 0.4)")
    p.add_argument("--crf-alphas", default=None, help="write MCTformer CRF label maps for these background "
                   "exponents, e.g. 1,12 (PSA's affinity labels)")
    p.add_argument("--crf-image", choices=("official", "original"), default=None,
                   help="CRF colour image: 'official' = the truncated de-normalised tensor (default, as the "
                        "official code), 'original' = the image's own pixels")
    p.add_argument("--save-overlays", action="store_true", help="also write overlays/<id>.png (jet heat maps)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default auto: cuda when available, else cpu)")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default 1)")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader worker processes (default 0)")
    p.add_argument("--limit", type=int, default=None, help="only the first N ids of the split (smoke tests)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_config(args: argparse.Namespace):
    """Defaults <- ``--config`` file (+ ``--set``) <- explicit flags; validated."""
    if args.config is not None:
        cfg = load_config(CamConfig, args.config, args.set)
    elif args.set:
        cfg = from_dict(CamConfig, apply_overrides({}, args.set), where="--set")
    else:
        cfg = CamConfig()
    d = to_dict(cfg)
    flags: dict[str, Any] = {
        "model": args.model, "num_classes": args.num_classes, "data_root": args.data_root, "dataset": args.dataset,
        "split": args.split, "n_layers": args.n_layers, "kind": args.kind, "cam_dtype": args.cam_dtype,
        "seed_beta": args.seed_beta, "crf_image": args.crf_image, "device": args.device,
        "batch_size": args.batch_size, "num_workers": args.num_workers,
        "scales": _floats(args.scales, "--scales") if args.scales is not None else None,
        "crf_alphas": _floats(args.crf_alphas, "--crf-alphas") if args.crf_alphas is not None else None,
    }
    names = {k: f"--{k.replace('_', '-')}" for k in flags}
    for flag, key, value in (("no_flip", "flip", False), ("no_patch_refine", "patch_refine", False),
                             ("amp", "amp", True), ("save_seeds", "save_seeds", True),
                             ("save_overlays", "save_overlays", True)):
        if getattr(args, flag):
            flags[key] = value
            names[key] = f"--{flag.replace('_', '-')}"
    set_keys = {str(item).split("=", 1)[0].strip() for item in args.set}
    for k, v in flags.items():        # a --set the flag would silently replace
        if v is not None and k in set_keys and d.get(k) != v:
            raise DoeiError(f"--set {k}={d.get(k)!r} and the flag {names[k]} ({v!r}) disagree; give one")
    d.update({k: v for k, v in flags.items() if v is not None})
    try:
        return from_dict(CamConfig, d, where="doei cam").validate()
    except DoeiError as e:            # a key that is neither a setting nor a dataset option: say where it came from
        extra = set(d.get("dataset_options") or {})
        if args.config is not None and extra and str(e).startswith("unknown key"):
            source = "--set" if extra <= set_keys else args.config
            raise DoeiError(f"{source}: {e}") from None
        raise


def run(args: argparse.Namespace) -> int:
    cfg = build_config(args)
    check_out_dir(args.out)
    if args.limit is not None and args.limit < 0:
        raise DoeiError(f"--limit {args.limit}: expected a number of images >= 0")
    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        raise DoeiError(f"{ckpt}: checkpoint file not found")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise DoeiError(f"--device {cfg.device}: CUDA is not available on this machine")
    if args.doei is not None:
        cfg = _switch_doei(cfg, ckpt, args.doei == "on")
    ds = open_dataset(cfg)
    model, spec, cfg = load_cam_model(cfg, ckpt, ds)
    records = ds.records if args.limit is None else ds.records[:args.limit]
    unlabelled = [r.id for r in records if not r.classes]
    if unlabelled and dist_util.is_main():
        warnings.warn(f"{len(unlabelled)} image(s) have no image-level label (e.g. {unlabelled[0]}): their CAM files "
                      "hold no class; `doei predict` uses the classifier's predicted classes instead", DoeiWarning,
                      stacklevel=2)
    for line in setting_warnings(cfg, spec, ckpt, ds, _refine_given(args)):
        warnings.warn(line, DoeiWarning, stacklevel=2)
    s = generate_cams(model, cfg, args.out, ckpt, ds=ds, spec=spec, limit=args.limit, progress=not args.no_progress)
    if dist_util.is_main():
        print(f"doei cam: {s['computed']} computed, {s['skipped']} already done, {s['seconds']:.1f} s "
              f"-> {s['out_dir']}")
    return 0


RATIO = 2.5   # CAM views this many times larger (or smaller) than the training crops: said once


def setting_warnings(cfg, spec, ckpt: Path, ds, refine_given: bool) -> list[str]:
    """One line each where the CAMs are taken unlike the checkpoint was trained: views at another resolution
    than its training crops (by more than ``RATIO`` x, judged on the first image), and MCTformer's
    patch-affinity refinement (on by default, as the official code) for a classifier trained from scratch,
    where docs/demo.md measured it hurting."""
    out: list[str] = []
    if not is_main() or spec is None or spec.source != "training checkpoint" or len(ds) == 0:
        return out
    from doei.data.common import read_image_size
    from doei.models.weights import load_weights_only

    if spec.img_size:
        h, w = read_image_size(ds.records[0].image_path)
        sides = [max(h, w) * s for s in cfg.scales]
        off = [x for x in sides if not spec.img_size / RATIO <= x <= spec.img_size * RATIO]
        if off:
            out.append(f"CAMs are taken at {w}x{h} px x scales {list(cfg.scales)} (the first image), the checkpoint "
                       f"was trained on {spec.img_size}-px crops ({max(off) / spec.img_size:.1f}x); a classifier reads "
                       "best near its training size: --scales to bring the views closer")
    if cfg.patch_refine and not refine_given:
        model = ((load_weights_only(ckpt).get("config") or {}).get("model") or {})
        if not model.get("pretrained"):
            out.append("patch-affinity refinement is on (the official default) for a classifier trained from "
                       "scratch (no model.pretrained); docs/demo.md measured it hurting such models: "
                       "--no-patch-refine to turn it off, or set patch_refine in the config to keep it quietly")
    return out


def is_main() -> bool:
    return dist_util.is_main()


def _refine_given(args: argparse.Namespace) -> bool:
    """Whether patch refinement was chosen explicitly (flag, --set or the config file)."""
    if args.no_patch_refine or any(s.split("=")[0].strip() == "patch_refine" for s in args.set):
        return True
    if args.config:
        from doei.config import load_yaml

        return "patch_refine" in (load_yaml(args.config) or {})
    return False


def _switch_doei(cfg, ckpt: Path, on: bool):
    """``--doei on|off``: the checkpoint's (or the config's) DOEI settings with ``enabled`` set, applied as an
    explicit override (logged, and recorded in ``cam_settings.json``)."""
    import dataclasses


    base = cfg.doei or stored_doei(ckpt) or DOEIConfig()
    return dataclasses.replace(cfg, doei=dataclasses.replace(base, enabled=on), override_doei=True)
