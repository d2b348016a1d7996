"""``doei labels``: write a dataset's image-level labels file once (JSON, no pickle).

Examples::

    doei labels --dataset voc --data-root VOC2012                      # from Annotations/*.xml -> VOC2012/cls_labels.json
    doei labels --dataset voc --data-root VOC2012 --source masks --split train_aug --split val
    doei labels --dataset voc --data-root VOC2012 --from-npy cls_labels.npy --trust-pickle   # convert the official file
    doei labels --dataset coco --ann annotations/instances_train2014.json --out COCO/cls_labels_train2014.json

The VOC loader picks up ``<root>/cls_labels.json`` automatically; the COCO loader picks up
``<root>/cls_labels_<split>.json``. Format: {"format", "source", "classes", "labels": {id: [0-based classes]}}.

An existing output file is merged, never truncated: its other images keep their labels, new ids are
added, ids already there with the same labels are left alone, and an id whose labels differ is refused
(one line naming the id, the file and both label sets) unless ``--overwrite`` (then the new labels
replace those ids, the rest is still kept). So ``doei labels --split val`` adds val to a complete
``cls_labels.json`` instead of replacing it. The existing file is read (and its class names checked)
before any labels are computed; the result is written atomically, and not at all when nothing changed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from doei.data.coco import COCO_CLASSES, coco_image_ids, coco_labels, image_key, load_coco_api
from doei.data.common import read_cls_labels_npy, read_id_list, read_labels_json, write_labels_json
from doei.data.voc import available_splits, default_mask_dir, load_labels, split_file, VOC_CLASSES
from doei.errors import DoeiError
from doei.utils import cliargs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=("voc", "coco"), required=True, help="which dataset's labels")
    cliargs.add_data_root(p, help="VOC2012 folder (voc)")
    cliargs.deprecated_alias(p, "--root", "--data-root", dest="data_root")
    p.add_argument("--split", action="append", default=None,
                   help="VOC split(s) to cover (repeatable; default: every list in ImageSets/Segmentation{,Aug}/)")
    p.add_argument("--source", choices=("xml", "masks"), default="xml", help="VOC label source (default xml)")
    p.add_argument("--from-npy", default=None, help="convert an official cls_labels.npy dict (needs --trust-pickle)")
    p.add_argument("--trust-pickle", action="store_true", help="allow unpickling --from-npy (only for trusted files)")
    p.add_argument("--ann", action="append", default=None, help="COCO instances JSON (repeatable)")
    p.add_argument("--ids", choices=("annotated", "all"), default="all",
                   help="COCO images to list: all (empty label for unannotated) or annotated only (default all)")
    p.add_argument("--out", default=None, help="output JSON (default <root>/cls_labels.json for voc); an existing "
                   "file is merged: other images kept, same labels left alone, different labels refused")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the labels of ids already in --out that differ (other ids are still kept)")


def _voc(args) -> tuple[dict, list[str], str, Path]:
    if args.from_npy:
        table = read_cls_labels_npy(args.from_npy, len(VOC_CLASSES), trust_pickle=args.trust_pickle)
        out = Path(args.out) if args.out else Path(args.data_root or ".") / "cls_labels.json"
        return table, list(VOC_CLASSES), f"converted from {args.from_npy}", out
    if not args.data_root:
        raise DoeiError("--data-root is required for --dataset voc (unless --from-npy)")
    root = Path(args.data_root)
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


def _out_path(args) -> Path | None:
    """The output path as :func:`_voc`/:func:`_coco` will choose it (``None``: they will refuse first)."""
    if args.out:
        return Path(args.out)
    if args.dataset == "voc" and (args.from_npy or args.data_root):
        return Path(args.data_root or ".") / "cls_labels.json"
    return None


def _read_existing(out: Path | None, n_classes: int, names: list[str]) -> dict[str, tuple[int, ...]] | None:
    """The labels already in ``out`` (``None`` when there is no such file); class names must agree."""
    if out is None or not out.exists():
        return None
    if out.is_dir():
        raise DoeiError(f"{out}: is a directory (expected a labels JSON file path for --out)")
    try:
        return read_labels_json(out, n_classes, names)
    except DoeiError as e:
        raise DoeiError(f"--out {out} exists but cannot be merged with: {e} (move it away or choose another --out)") from None


def _fmt(classes: tuple[int, ...], names: list[str]) -> str:
    return "[" + ", ".join(names[c] if 0 <= c < len(names) else str(c) for c in classes) + "]"


def merge_labels(old: dict[str, tuple[int, ...]], new: dict[str, tuple[int, ...]], *, overwrite: bool,
                 where: Path, names: list[str], desc: str) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """``old`` updated with ``new``: ids only in ``old`` kept, new ids added, equal labels left alone;
    differing labels refused with a one-line :class:`DoeiError` unless ``overwrite``. Returns the merged
    table and the counts ``added``, ``same``, ``replaced``, ``kept``."""
    conflicts = [k for k in new if k in old and tuple(old[k]) != tuple(new[k])]
    if conflicts and not overwrite:
        k = conflicts[0]
        raise DoeiError(f"{where}: image {k!r} is labelled {_fmt(tuple(old[k]), names)} there but "
                        f"{_fmt(tuple(new[k]), names)} by {desc} ({len(conflicts)} id(s) differ); "
                        "pass --overwrite to replace them")
    merged = dict(old)
    merged.update(new)
    added = sum(1 for k in new if k not in old)
    counts = {"added": added, "same": len(new) - added - len(conflicts), "replaced": len(conflicts),
              "kept": sum(1 for k in old if k not in new)}
    return merged, counts


def run(args: argparse.Namespace) -> int:
    import json


    names0 = list(VOC_CLASSES if args.dataset == "voc" else COCO_CLASSES)
    old = _read_existing(_out_path(args), len(names0), names0)        # before any (slow) labelling
    table, names, desc, out = _voc(args) if args.dataset == "voc" else _coco(args)
    if old is None:
        write_labels_json(out, table, names, source=desc)
        n_empty = sum(1 for v in table.values() if not v)
        print(f"wrote {out}: {len(table)} images ({n_empty} without a foreground class), labels from {desc}")
        return 0
    merged, c = merge_labels(old, table, overwrite=args.overwrite, where=out, names=names, desc=desc)
    n_empty = sum(1 for v in merged.values() if not v)
    summary = (f"{len(merged)} images ({c['added']} added, {c['same']} already there with the same labels, "
               f"{c['replaced']} replaced, {c['kept']} other images kept; {n_empty} without a foreground class)")
    if not c["added"] and not c["replaced"]:
        print(f"{out} unchanged: {summary}, labels from {desc}")
        return 0
    try:
        prev = json.loads(out.read_text(encoding="utf-8")).get("source")
    except (OSError, ValueError, AttributeError):
        prev = None
    source = desc if not isinstance(prev, str) or not prev or prev == desc else f"{prev}; {desc}"
    write_labels_json(out, merged, names, source=source)
    print(f"merged into {out}: {summary}, labels from {desc}")
    return 0
