"""COCO: category mapping, labels from the real instances JSON sample, mask rasterisation rules, coco-masks."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from doei.cli import main
from doei.data import build_dataset
from doei.data.coco import (CATEGORY_TO_INDEX, COCO_CATEGORY_IDS, COCO_CLASSES, category_lut, load_coco_api,
                            render_mask)
from doei.errors import DoeiError

CAT, COUCH, BED, REMOTE = 15, 57, 59, 65  # 0-based indices of COCO ids 17, 63, 65, 75


@pytest.fixture(scope="module")
def coco_mini(shared_dir):
    root = shared_dir / "data" / "coco_real_mini"
    if not root.is_dir():
        pytest.skip(f"{root} missing")
    return root


def test_category_mapping():
    assert len(COCO_CLASSES) == 80 == len(COCO_CATEGORY_IDS) == len(set(COCO_CATEGORY_IDS))
    assert COCO_CATEGORY_IDS[0] == 1 and COCO_CATEGORY_IDS[-1] == 90
    assert {12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91}.isdisjoint(COCO_CATEGORY_IDS)
    assert [CATEGORY_TO_INDEX[c] for c in (17, 63, 65, 75)] == [CAT, COUCH, BED, REMOTE]
    assert [COCO_CLASSES[i] for i in (CAT, COUCH, BED, REMOTE)] == ["cat", "couch", "bed", "remote"]
    lut = category_lut()
    assert lut[90] == 79 and lut[12] == -1 and (lut >= 0).sum() == 80


def test_labels_and_dataset_from_instances(coco_mini):
    ds = build_dataset("coco", coco_mini, "val2014", image_dir=coco_mini / "images",
                       ann_file=coco_mini / "annotations" / "instances_mini.json")
    assert ds.ids == ["000000039769"] and ds.records[0].classes == (CAT, COUCH, BED, REMOTE)
    x, y, _ = ds[0]
    assert x.shape == (3, 480, 640) and y.sum() == 4 and y[CAT] == 1


def test_render_mask_overlap_and_crowd(coco_mini, tmp_path):
    ann = coco_mini / "annotations" / "instances_mini.json"
    api = load_coco_api(ann)
    m = render_mask(api, 39769)
    assert m.shape == (480, 640) and m.dtype == np.uint8
    assert set(np.unique(m)) <= {0, CAT + 1, COUCH + 1, BED + 1, REMOTE + 1}
    for a in api.imgToAnns[39769]:  # the smallest instances (remotes) win every overlap
        if a["category_id"] == 75:
            assert (m[api.annToMask(a).astype(bool)] == REMOTE + 1).all()
    # crowd: mark the bed as crowd -> 255 where no other instance covers it
    d = json.loads(ann.read_text())
    for a in d["annotations"]:
        if a["category_id"] == 65:
            a["iscrowd"] = 1
            bed = a
    f = tmp_path / "crowd.json"
    f.write_text(json.dumps(d))
    api2 = load_coco_api(f)
    m2 = render_mask(api2, 39769)
    bed_px = api2.annToMask(bed).astype(bool)
    others = np.zeros_like(bed_px)
    for a in api2.imgToAnns[39769]:
        if a is not bed and not a.get("iscrowd"):
            others |= api2.annToMask(a).astype(bool)
    assert (m2[bed_px & ~others] == 255).all() and (bed_px & ~others).any()
    assert (render_mask(api2, 39769, crowd="class")[bed_px & ~others] == BED + 1).all()


def test_bad_category_and_image_reference(coco_mini, tmp_path):
    d = json.loads((coco_mini / "annotations" / "instances_mini.json").read_text())
    d["annotations"][0]["category_id"] = 12
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(DoeiError, match=r"bad\.json: annotation \d+ has category_id 12 outside the 80"):
        load_coco_api(tmp_path / "bad.json")
    with pytest.raises(DoeiError, match="instances JSON not found"):
        load_coco_api(tmp_path / "missing.json")


def test_coco_masks_command_resumable_checksum_and_ids(coco_mini, tmp_path, capsys):
    d = json.loads((coco_mini / "annotations" / "instances_mini.json").read_text())
    d["images"].append({"id": 5, "file_name": "COCO_val2014_000000000005.jpg", "width": 4, "height": 3})
    ann = tmp_path / "inst.json"
    ann.write_text(json.dumps(d))
    out = tmp_path / "masks"
    assert main(["coco-masks", "--ann", str(ann), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    checksum = text.split("checksum sha256: ")[1].split()[0]
    assert "1 masks (1 written, 0 already present), ids=annotated (2 images in the JSON)" in text
    assert (out / "ids.txt").read_text() == "000000039769\n"
    png = Image.open(out / "000000039769.png")
    assert png.mode == "L" and png.size == (640, 480)
    man = json.loads((out / "manifest.json").read_text())
    assert man["checksum_sha256"] == checksum and man["count"] == 1
    # rerun: resumes (nothing rewritten), same checksum
    assert main(["coco-masks", "--ann", str(ann), "--out", str(out)]) == 0
    text2 = capsys.readouterr().out
    assert "(0 written, 1 already present)" in text2 and checksum in text2
    # --ids all: the unannotated image gets an all-background mask, checksum changes
    out2 = tmp_path / "all"
    assert main(["coco-masks", "--ann", str(ann), "--out", str(out2), "--ids", "all"]) == 0
    text3 = capsys.readouterr().out
    assert "2 masks" in text3 and checksum not in text3
    assert (np.asarray(Image.open(out2 / "COCO_val2014_000000000005.png")) == 0).all()
    # labels command + loader with masks and labels file
    lab = tmp_path / "root" / "cls_labels_val2014.json"
    assert main(["labels", "--dataset", "coco", "--ann", str(ann), "--out", str(lab)]) == 0
    got = json.loads(lab.read_text())["labels"]
    assert got == {"000000039769": [CAT, COUCH, BED, REMOTE], "COCO_val2014_000000000005": []}
    shutil.copytree(coco_mini / "images", tmp_path / "root" / "val2014")
    ds = build_dataset("coco", tmp_path / "root", "val", mask_dir=out, require_masks=True)
    assert ds.ids == ["000000039769"] and "file" in ds.label_source  # annotated only by default
    s = ds.sample(0)
    assert s.mask.shape == s.image.shape[:2] == (480, 640)
    from doei.data.common import classes_in_mask
    assert classes_in_mask(s.mask) == s.classes


def _mini_json(tmp_path, edit, name="inst.json"):
    """A 2-image instances JSON (one polygon, one uncompressed-RLE crowd) after ``edit(d)``."""
    d = {"images": [{"id": 1, "file_name": "a.jpg", "height": 6, "width": 8},
                    {"id": 2, "file_name": "b.jpg", "height": 4, "width": 4}],
         "annotations": [{"id": 10, "image_id": 1, "category_id": 17, "iscrowd": 0, "area": 12.0,
                          "bbox": [1, 1, 4, 3], "segmentation": [[1, 1, 5, 1, 5, 4, 1, 4]]},
                         {"id": 11, "image_id": 2, "category_id": 63, "iscrowd": 1, "area": 4.0,
                          "bbox": [0, 0, 2, 2], "segmentation": {"size": [4, 4], "counts": [0, 2, 2, 2, 10]}}],
         "categories": [{"id": 17, "name": "cat"}, {"id": 63, "name": "couch"}]}
    edit(d)
    p = tmp_path / name
    p.write_text(json.dumps(d))
    return p


def _ann(d, k):
    return d["annotations"][k]


BAD_GEOMETRY = {
    "odd_polygon": (lambda d: _ann(d, 0)["segmentation"][0].pop(), r"annotation 10 .*polygon 0 has 7 coordinates.*even"),
    "three_numbers": (lambda d: _ann(d, 0).__setitem__("segmentation", [[1, 2, 3]]), r"annotation 10 .*3 coordinates.*>= 6"),
    "four_numbers": (lambda d: _ann(d, 0).__setitem__("segmentation", [[1, 1, 4, 4]]), r"annotation 10 .*4 coordinates"),
    "no_polygon": (lambda d: _ann(d, 0).__setitem__("segmentation", []), r"annotation 10 .*empty segmentation"),
    "nan_coordinate": (lambda d: _ann(d, 0)["segmentation"][0].__setitem__(2, float("nan")),
                       r"annotation 10 .*coordinate nan.*finite"),
    "string_coordinate": (lambda d: _ann(d, 0)["segmentation"][0].__setitem__(2, "5"), r"annotation 10 .*coordinate '5'"),
    "negative_bbox_height": (lambda d: _ann(d, 0)["bbox"].__setitem__(3, -3), r"annotation 10 .*bbox .*-3.*>= 0"),
    "inf_bbox_width": (lambda d: _ann(d, 0)["bbox"].__setitem__(2, float("inf")), r"annotation 10 .*bbox .*inf.*finite"),
    "short_bbox": (lambda d: _ann(d, 0).__setitem__("bbox", [1, 2, 3]), r"annotation 10 .*bbox \[1, 2, 3\]"),
    "nan_area": (lambda d: _ann(d, 0).__setitem__("area", float("nan")), r"annotation 10 .*area nan"),
    "rle_short": (lambda d: _ann(d, 1)["segmentation"].__setitem__("counts", [0, 2]),
                  r"annotation 11 .*RLE run lengths sum to 2, expected .*16"),
    "rle_negative": (lambda d: _ann(d, 1)["segmentation"].__setitem__("counts", [0, 2, -2, 16]),
                     r"annotation 11 .*negative run length -2"),
    "rle_wrong_size": (lambda d: _ann(d, 1)["segmentation"].__setitem__("size", [4, 5]),
                       r"annotation 11 .*RLE size \[4, 5\] differs .*\[4, 4\]"),
    "rle_bad_string": (lambda d: _ann(d, 1)["segmentation"].__setitem__("counts", "zz~"),
                       r"annotation 11 .*malformed compressed RLE"),
    "rle_string_wrong_total": (lambda d: _ann(d, 1)["segmentation"].__setitem__("counts", "52"),
                               r"annotation 11 .*sum to \d+, expected"),
    "rle_no_counts": (lambda d: _ann(d, 1).__setitem__("segmentation", {"size": [4, 4]}), r"annotation 11 .*RLE dict"),
    "unknown_image": (lambda d: _ann(d, 1).__setitem__("image_id", 99), r"annotation 11 refers to unknown image_id 99"),
    "unknown_category": (lambda d: _ann(d, 1).__setitem__("category_id", 18),
                         r"annotation 11 has category_id 18 that is not in the file's 'categories'"),
    "category_outside_80": (lambda d: _ann(d, 1).__setitem__("category_id", 12), r"annotation 11 has category_id 12 outside"),
    "no_categories": (lambda d: d.pop("categories"), r"missing 'categories'"),
    "empty_categories": (lambda d: d.__setitem__("categories", []), r"'categories' is empty"),
    "duplicate_annotation_id": (lambda d: _ann(d, 1).__setitem__("id", 10), r"annotation id 10 appears twice"),
    "duplicate_image_id": (lambda d: d["images"][1].__setitem__("id", 1), r"image id 1 appears twice"),
    "image_without_size": (lambda d: d["images"][0].pop("height"), r"image 1 has height None"),
    "crowd_flag": (lambda d: _ann(d, 0).__setitem__("iscrowd", 2), r"annotation 10 .*iscrowd 2"),
}


@pytest.mark.parametrize("case", sorted(BAD_GEOMETRY))
def test_bad_geometry_is_one_line_naming_file_and_annotation(case, tmp_path, capsys):
    edit, pattern = BAD_GEOMETRY[case]
    ann = _mini_json(tmp_path, edit)
    with pytest.raises(DoeiError, match=r"inst\.json: " + pattern) as e:
        load_coco_api(ann)
    assert "\n" not in str(e.value)
    # both commands that read the JSON refuse it with that line and write nothing
    for argv in (["coco-masks", "--ann", str(ann), "--out", str(tmp_path / "masks")],
                 ["labels", "--dataset", "coco", "--ann", str(ann), "--out", str(tmp_path / "labels.json")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and re.search(pattern, err), err
    assert not (tmp_path / "masks").exists() and not (tmp_path / "labels.json").exists()


def test_valid_mini_json_renders_polygon_and_rle(tmp_path):
    """The checks accept what pycocotools rasterises exactly: polygons, uncompressed and compressed RLE."""
    import pycocotools.mask as mask_utils

    api = load_coco_api(_mini_json(tmp_path, lambda d: None))
    assert render_mask(api, 1).sum() > 0
    m2 = render_mask(api, 2, crowd="class")
    assert (m2 == COUCH + 1).sum() == 4
    rle = mask_utils.encode(np.asfortranarray((m2 > 0).astype(np.uint8)))
    api3 = load_coco_api(_mini_json(tmp_path, lambda d: _ann(d, 1).__setitem__(
        "segmentation", {"size": [4, 4], "counts": rle["counts"].decode()}), "c.json"))
    assert np.array_equal(render_mask(api3, 2, crowd="class"), m2)
    # zero-area boxes and polygons exist in the real COCO files: accepted
    load_coco_api(_mini_json(tmp_path, lambda d: _ann(d, 0).__setitem__("bbox", [1, 1, 1.0, 0.0]), "z.json"))


def test_rle_string_counts_matches_pycocotools():
    import pycocotools.mask as mask_utils

    from doei.data.coco import rle_string_counts

    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        flat = m.flatten(order="F")
        change = np.flatnonzero(np.diff(flat)) + 1
        runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
        if flat[0] == 1:
            runs = [0] + runs
        counts = mask_utils.encode(np.asfortranarray(m))["counts"].decode()
        assert rle_string_counts(counts) == runs
