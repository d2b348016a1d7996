"""``doei coco-masks``: rasterise a COCO instances JSON into single-channel ground-truth PNGs.

Examples::

    doei coco-masks --ann COCO/annotations/instances_val2014.json --out COCO/SegmentationClass/val2014
    doei coco-masks --ann ... --out ... --ids all          # every image (82,783 / 40,504), not only annotated

Per image ``<out>/<id>.png`` (mode 'L'): 0 background, 1..80 = class index + 1 (COCO category ids
mapped to 0..79 in ascending order), 255 = crowd regions not covered by a non-crowd instance
(``--crowd ignore``, default; ``--crowd class`` paints them with their class). Overlapping instances:
the smaller one (by annotation area) is painted last and wins. ``--ids annotated`` (default) keeps
images with at least one annotation (82,081 train2014 / 40,137 val2014); ``--ids all`` also writes
all-background masks for the rest. Writes ``<out>/ids.txt`` (the converted ids in image-id order)
and ``<out>/manifest.json``, and prints a checksum: sha256 over, for each id in sorted order, the
sha256 of (id, shape, raw pixels) - it depends on the label values only, not on the PNG encoder, so
two users can compare their ground truth. Every PNG is written atomically; existing PNGs are kept
(resumable; ``--overwrite`` to redo them); the checksum always covers the decoded files on disk.
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from doei.data.coco import coco_image_ids, image_key, load_coco_api, mask_content_hash, render_mask
from doei.data.common import read_mask
from doei.errors import DoeiError
from doei.utils.io import atomic_save_png, atomic_write_json, atomic_write_text
from doei.utils.outdir import check_out_dir, folder_lock


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ann", required=True, help="COCO instances JSON (e.g. instances_train2014.json)")
    p.add_argument("--out", required=True, help="output folder for <id>.png masks")
    p.add_argument("--ids", choices=("annotated", "all"), default="annotated",
                   help="annotated: images with >=1 annotation (default); all: every image in the JSON")
    p.add_argument("--crowd", choices=("ignore", "class"), default="ignore",
                   help="crowd regions: 255 ignore (default) or their class")
    p.add_argument("--overwrite", action="store_true", help="re-render masks that already exist")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    out = check_out_dir(args.out)
    api = load_coco_api(args.ann)
    with folder_lock(out, "mask folder"):
        return _write_masks(args, api, out)


def _write_masks(args: argparse.Namespace, api, out: Path) -> int:
    from PIL import Image
    from tqdm import tqdm


    nums = coco_image_ids(api, args.ids)
    if not nums:
        raise DoeiError(f"{args.ann}: no images to convert (--ids {args.ids})")
    keys = [image_key(api.imgs[n], args.ann) for n in nums]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise DoeiError(f"{args.ann}: two images share the file name stem {dup!r}")
    written = skipped = 0
    digest = hashlib.sha256()
    for n, k in tqdm(list(zip(nums, keys)), desc="doei coco-masks", unit="img", disable=args.no_progress):
        path = out / f"{k}.png"
        img = api.imgs[n]
        if path.is_file() and not args.overwrite:
            mask = read_mask(path, 80)
            if mask.shape != (int(img["height"]), int(img["width"])):
                raise DoeiError(f"{path}: existing mask size {mask.shape} differs from the JSON's "
                                f"{img['height']}x{img['width']}; rerun with --overwrite")
            skipped += 1
        else:
            mask = render_mask(api, n, crowd=args.crowd)
            atomic_save_png(path, Image.fromarray(mask, mode="L"))
            written += 1
        digest.update(mask_content_hash(k, mask))
    checksum = digest.hexdigest()
    atomic_write_text(out / "ids.txt", "".join(f"{k}\n" for k in keys))
    atomic_write_json(out / "manifest.json", {
        "format": "doei-coco-masks-v1", "ann_file": str(args.ann), "ids": args.ids, "crowd": args.crowd,
        "overlap_rule": "instances painted largest area first; the smaller instance wins overlaps",
        "values": "0 background, 1..80 class index + 1 (category ids ascending), 255 crowd (if --crowd ignore)",
        "count": len(keys), "checksum_sha256": checksum,
        "checksum_rule": "sha256 over sha256(id + NUL + int64 shape + raw uint8 pixels) in ids.txt order",
    })
    print(f"{out}: {len(keys)} masks ({written} written, {skipped} already present), ids={args.ids} "
          f"({len(api.imgs)} images in the JSON), crowd={args.crowd}")
    print(f"checksum sha256: {checksum}")
    return 0
