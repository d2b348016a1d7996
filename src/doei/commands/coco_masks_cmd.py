"""``doei coco-masks``: COCO ground-truth PNGs, from the instances JSON or from COCO-Stuff's stuffthingmaps.

Examples::

    doei coco-masks --ann COCO/annotations/instances_val2014.json --out COCO/SegmentationClass/val2014
    doei coco-masks --source stuff --stuff-dir COCO/stuffthingmaps_trainval2017 \
        --ann COCO/annotations/instances_val2014.json --out COCO/SegmentationClassStuff/val2014   # the paper's GT
    doei coco-masks --ann ... --out ... --ids all          # every image (82,783 / 40,504), not only annotated

Per image ``<out>/<id>.png`` (mode 'L'): 0 background, 1..80 = class index + 1 (COCO category ids
mapped to 0..79 in ascending order), 255 ignore. ``--source instances`` (default) rasterises the
instance polygons: 255 = crowd regions not covered by a non-crowd instance (``--crowd ignore``,
default; ``--crowd class`` paints them with their class); overlapping instances: the smaller one (by
annotation area) is painted last and wins. ``--source stuff`` converts COCO-Stuff's stuffthingmaps
(:mod:`doei.data.coco_stuff`: things -> their class, stuff -> background, unlabeled -> 255), found by
image id under ``--stuff-dir`` (``train2017/`` or ``val2017/``, COCO 2014 ids being COCO 2017 ids); the
instances JSON still says which images (and their sizes, checked). ``--ids annotated`` (default) keeps
images with at least one annotation (82,081 train2014 / 40,137 val2014); ``--ids all`` also writes the
rest. Writes ``<out>/ids.txt`` (the converted ids in image-id order) and ``<out>/manifest.json``, and
prints a checksum: sha256 over, for each id in sorted order, the sha256 of (id, shape, raw pixels) - it
depends on the label values only, not on the PNG encoder, so two users can compare their ground truth.

Safe reruns: the manifest records the settings (source, ids, crowd, the JSON's file name) before the
first PNG is written; a rerun into the folder with other settings is refused with one line (another
``--out``, or ``--overwrite`` to redo every PNG), with the same settings it keeps the existing PNGs
(resumable; ``--overwrite`` redoes them). Every PNG is written atomically; the checksum always covers
the decoded files on disk.
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from doei.config import check_type, read_json
from doei.data.coco import coco_image_ids, image_key, load_coco_api, mask_content_hash, render_mask
from doei.data.coco_stuff import find_stuffthingmap, read_stuffthingmap
from doei.data.common import read_mask
from doei.errors import DoeiError
from doei.utils.io import atomic_save_png, atomic_write_json, atomic_write_text
from doei.utils.outdir import check_out_dir, folder_lock


MANIFEST_FORMAT = "doei-coco-masks-v1"
VALUES = {"instances": "0 background, 1..80 class index + 1 (category ids ascending), 255 crowd (if --crowd ignore)",
          "stuff": "0 background (COCO-Stuff stuff classes), 1..80 class index + 1 (thing id = value + 1), "
                   "255 COCO-Stuff unlabeled"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ann", required=True, help="COCO instances JSON (e.g. instances_train2014.json): which images")
    p.add_argument("--out", required=True, help="output folder for <id>.png masks")
    p.add_argument("--source", choices=("instances", "stuff"), default="instances",
                   help="instances: rasterise the JSON's polygons (default); stuff: convert COCO-Stuff "
                        "stuffthingmaps (the paper's ground truth; needs --stuff-dir)")
    p.add_argument("--stuff-dir", default=None,
                   help="with --source stuff: the unzipped stuffthingmaps_trainval2017 folder (train2017/, val2017/)")
    p.add_argument("--ids", choices=("annotated", "all"), default="annotated",
                   help="annotated: images with >=1 annotation (default); all: every image in the JSON")
    p.add_argument("--crowd", choices=("ignore", "class"), default="ignore",
                   help="crowd regions: 255 ignore (default) or their class")
    p.add_argument("--overwrite", action="store_true", help="re-render masks that already exist")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def settings(args: argparse.Namespace) -> dict:
    """What the PNGs depend on (the manifest's ``settings``; a rerun must match them)."""
    from doei.pipeline.fingerprints import file_sha256

    return {"source": args.source, "ids": args.ids, "crowd": args.crowd if args.source == "instances" else None,
            "ann_name": Path(args.ann).name, "ann_sha256": file_sha256(args.ann)}   # the JSON by content too


def _check_settings(out: Path, now: dict, overwrite: bool) -> None:
    """Refuse a folder whose manifest records other settings (before anything is written)."""
    man = out / "manifest.json"
    if overwrite or not man.is_file():
        return
    old = read_json(man, dict, what="coco-masks manifest")        # the one schema check of what is read back
    was = check_type(old.get("settings") or {}, dict, f"coco-masks manifest {man}: settings") or {"source": "instances", "ids": old.get("ids"), "crowd": old.get("crowd"),
                                  "ann_name": Path(str(old.get("ann_file", ""))).name}   # manifests before --source
    for k, v in now.items():
        if k == "ann_sha256" and k not in was:      # a manifest written before the content was recorded
            continue
        if was.get(k) != v:
            raise DoeiError(f"{man}: the masks in {out} were made with {k} = {was.get(k)!r}, this run has {v!r}; "
                            "use another --out, or --overwrite to redo every mask")


def run(args: argparse.Namespace) -> int:
    if args.source == "stuff" and not args.stuff_dir:
        raise DoeiError("--source stuff needs --stuff-dir (the unzipped stuffthingmaps_trainval2017 folder)")
    if args.source == "instances" and args.stuff_dir:
        raise DoeiError("--stuff-dir is only read with --source stuff")
    if args.stuff_dir and not Path(args.stuff_dir).is_dir():
        raise DoeiError(f"--stuff-dir {args.stuff_dir}: folder not found")
    out = check_out_dir(args.out)
    api = load_coco_api(args.ann)
    with folder_lock(out, "mask folder"):
        now = settings(args)
        _check_settings(out, now, args.overwrite)
        return _write_masks(args, api, out, now)


def _write_masks(args: argparse.Namespace, api, out: Path, now: dict) -> int:
    from PIL import Image
    from tqdm import tqdm


    nums = coco_image_ids(api, args.ids)
    if not nums:
        raise DoeiError(f"{args.ann}: no images to convert (--ids {args.ids})")
    keys = [image_key(api.imgs[n], args.ann) for n in nums]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise DoeiError(f"{args.ann}: two images share the file name stem {dup!r}")
    if args.source == "stuff":        # every map is found, and the first one read, before any file is written
        maps = {n: find_stuffthingmap(args.stuff_dir, n) for n in nums}
        read_stuffthingmap(maps[nums[0]], (int(api.imgs[nums[0]]["height"]), int(api.imgs[nums[0]]["width"])))
    manifest = {"format": MANIFEST_FORMAT, "settings": now, "ann_file": str(args.ann), "ids": args.ids,
                "source": args.source, "values": VALUES[args.source]}
    if args.source == "instances":
        manifest.update({"crowd": args.crowd, "overlap_rule": "instances painted largest area first; the smaller "
                                                              "instance wins overlaps"})
    else:
        manifest["stuff_dir"] = str(args.stuff_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "manifest.json", {**manifest, "complete": False})   # the settings, before any PNG
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
            if args.source == "stuff":
                mask = read_stuffthingmap(maps[n], (int(img["height"]), int(img["width"])))
            else:
                mask = render_mask(api, n, crowd=args.crowd)
            atomic_save_png(path, Image.fromarray(mask, mode="L"))
            written += 1
        digest.update(mask_content_hash(k, mask))
    checksum = digest.hexdigest()
    atomic_write_text(out / "ids.txt", "".join(f"{k}\n" for k in keys))
    atomic_write_json(out / "manifest.json", {
        **manifest, "complete": True, "count": len(keys), "checksum_sha256": checksum,
        "checksum_rule": "sha256 over sha256(id + NUL + int64 shape + raw uint8 pixels) in ids.txt order",
    })
    how = f"crowd={args.crowd}" if args.source == "instances" else f"from COCO-Stuff {args.stuff_dir}"
    print(f"{out}: {len(keys)} masks ({written} written, {skipped} already present), ids={args.ids} "
          f"({len(api.imgs)} images in the JSON), source={args.source}, {how}")
    print(f"checksum sha256: {checksum}")
    return 0
