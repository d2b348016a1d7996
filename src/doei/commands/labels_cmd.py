"""``doei labels``: write a dataset's image-level labels file once (JSON, no pickle).

Examples::

    doei labels --dataset voc --root VOC2012                      # from Annotations/*.xml -> VOC2012/cls_labels.json
    doei labels --dataset voc --root VOC2012 --source masks --split train_aug --split val
    doei labels --dataset voc --root VOC2012 --from-npy cls_labels.npy --trust-pickle   # convert the official file
    doei labels --dataset coco --ann annotations/instances_train2014.json --out COCO/cls_labels_train2014.json

The VOC loader picks up ``<root>/cls_labels.json`` automatically; the COCO loader picks up
``<root>/cls_labels_<split>.json``. Format: {"format", "source", "classes", "labels": {id: [0-based classes]}}.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from doei.errors import DoeiError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=("voc", "coco"), required=True)
    p.add_argument("--root", default=None, help="VOC2012 folder (voc)")
    p.add_argument("--split", action="append", default=None,
                   help="VOC split(s) to cover (repeatable; default: every list in ImageSets/Segmentation{,Aug}/)")
    p.add_argument("--source", choices=("xml", "masks"), default="xml", help="VOC label source (default xml)")
    p.add_argument("--from-npy", default=None, help="convert an official cls_labels.npy dict (needs --trust-pickle)")
    p.add_argument("--trust-pickle", action="store_true", help="allow unpickling --from-npy (only for trusted files)")
    p.add_argument("--ann", action="append", default=None, help="COCO instances JSON (repeatable)")
    p.add_argument("--ids", choices=("annotated", "all"), default="all",
                   help="COCO images to list: all (empty label for unannotated) or annotated only (default all)")
    p.add_argument("--out", default=None, help="output JSON (default <root>/cls_labels.json for voc)")


def _voc(args) -> tuple[dict, list[str], str, Path]:
    from doei.data.common import read_cls_labels_npy, read_id_list
    from doei.data.voc import VOC_CLASSES, available_splits, default_mask_dir, load_labels, split_file

    if args.from_npy:
        table = read_cls_labels_npy(args.from_npy, len(VOC_CLASSES), trust_pickle=args.trust_pickle)
        out = Path(args.out) if args.out else Path(args.root or ".") / "cls_labels.json"
        return table, list(VOC_CLASSES), f"converted from {args.from_npy}", out
    if not args.root:
        raise DoeiError("--root is required for --dataset voc (unless --from-npy)")
    root = Path(args.root)
    splits = args.split or available_splits(root)
    if not splits:
        raise DoeiError(f"{root}: no split lists in ImageSets/Segmentation/; pass --split")
    ids: list[str] = []
    seen: set[str] = set()
    for s in splits:
        for i in read_id_list(split_file(root, s)):
            if i not in seen:
                seen.add(i)
                ids.append(i)
    table, desc = load_labels(root, ids, source=args.source, mask_dir=default_mask_dir(root))
    return table, list(VOC_CLASSES), f"{desc} ({', '.join(splits)})", Path(args.out) if args.out else root / "cls_labels.json"


def _coco(args) -> tuple[dict, list[str], str, Path]:
    from doei.data.coco import COCO_CLASSES, coco_image_ids, coco_labels, image_key, load_coco_api

    if not args.ann:
        raise DoeiError("--ann INSTANCES_JSON is required for --dataset coco")
    if not args.out:
        raise DoeiError("--out is required for --dataset coco")
    table: dict[str, tuple[int, ...]] = {}
    for f in args.ann:
        api = load_coco_api(f)
        nums = coco_image_ids(api, args.ids)
        lab = coco_labels(api, nums)
        for n in nums:
            k = image_key(api.imgs[n], f)
            if k in table:
                raise DoeiError(f"{f}: image id {k!r} appears in two annotation files")
            table[k] = lab[n]
    return table, list(COCO_CLASSES), f"instances {', '.join(args.ann)} ({args.ids} ids)", Path(args.out)


def run(args: argparse.Namespace) -> int:
    from doei.data.common import write_labels_json

    table, names, desc, out = _voc(args) if args.dataset == "voc" else _coco(args)
    write_labels_json(out, table, names, source=desc)
    n_empty = sum(1 for v in table.values() if not v)
    print(f"wrote {out}: {len(table)} images ({n_empty} without a foreground class), labels from {desc}")
    return 0
