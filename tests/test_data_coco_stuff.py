"""COCO ground truth from COCO-Stuff stuffthingmaps (the paper's): label numbering against the published
list, conversion of PNGs this test writes, `doei coco-masks --source stuff` (safe reruns, one-line
errors, nothing written on bad input) and the loader's `gt_source`."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from doei.cli import main
from doei.data import build_dataset
from doei.data.coco import COCO_CLASSES
from doei.data.coco_stuff import UNUSED_THING_IDS, convert_stuffthingmap, read_stuffthingmap, stuff_lut
from doei.errors import DoeiError
from doei.pipeline.fingerprints import file_sha256

# COCO-Stuff's published label list (github.com/nightrome/cocostuff, labels.txt): ids 1..91 are the COCO
# thing ids with their names, 92..182 the 91 stuff classes, 0 'unlabeled'. The README: the stuffthingmaps
# PNGs store id - 1 (0..181) and 255 for unlabeled.
PUBLISHED_THINGS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep",
    "cow", "elephant", "bear", "zebra", "giraffe", "hat", "backpack", "umbrella", "shoe", "eye glasses",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "plate", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza",
    "donut", "cake", "chair", "couch", "potted plant", "bed", "mirror", "dining table", "window", "desk", "toilet",
    "door", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "blender", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
    "hair brush",
)   # ids 1..91 in order


def test_label_numbering_matches_the_published_list():
    things = PUBLISHED_THINGS
    assert len(things) == 91 and things[0] == "person" and things[89] == "toothbrush" and things[90] == "hair brush"
    lut = stuff_lut()
    for thing_id, name in enumerate(things, start=1):
        value = thing_id - 1                                    # stuffthingmaps store id - 1
        if name in COCO_CLASSES:
            assert lut[value] == COCO_CLASSES.index(name) + 1, (thing_id, name)
        else:                                                   # the 11 ids COCO never annotated
            assert UNUSED_THING_IDS[thing_id] == name and lut[value] == 254, (thing_id, name)
    assert sorted(n for n in things if n in COCO_CLASSES) == sorted(COCO_CLASSES)
    assert (lut[91:182] == 0).all() and lut[255] == 255 and (lut[182:255] == 254).all()


def test_convert_a_png_the_test_writes(tmp_path):
    values = np.array([[0, 89, 61, 91], [181, 255, 140, 2]], dtype=np.uint8)   # person, toothbrush, chair, stuff...
    want = np.array([[1, 80, COCO_CLASSES.index("chair") + 1, 0], [0, 255, 0, 3]], dtype=np.uint8)
    assert (convert_stuffthingmap(values) == want).all()
    for mode in ("L", "P"):
        p = tmp_path / f"m_{mode}.png"
        if mode == "L":
            Image.fromarray(values, mode="L").save(p)
        else:               # an indexed PNG whose palette index IS the label (as COCO-Stuff ships them)
            im = Image.new("P", (4, 2))
            im.putdata(values.ravel().tolist())
            im.putpalette([c for i in range(256) for c in (i, i, i)])
            im.save(p)
        assert (read_stuffthingmap(p, (2, 4)) == want).all(), mode
    with pytest.raises(DoeiError, match=r"value 90 at 1 pixels: thing id 91 \(hair brush\) has no COCO annotation"):
        convert_stuffthingmap(np.array([[0, 90]], dtype=np.uint8), "x.png")
    with pytest.raises(DoeiError, match=r"x.png: value 200 .* not a COCO-Stuff label"):
        convert_stuffthingmap(np.array([[200]], dtype=np.uint8), "x.png")
    Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DoeiError, match="mode RGB, expected a single-channel"):
        read_stuffthingmap(tmp_path / "rgb.png")
    with pytest.raises(DoeiError, match="size 4x2 differs from the instances JSON's 5x2"):
        read_stuffthingmap(tmp_path / "m_L.png", (2, 5))


# ------------------------------------------------------------------------------------ doei coco-masks --source stuff
def _instances(tmp_path):
    """Two val2014 images (6x4, 5x3), each with one small polygon (the JSON says which images and sizes)."""
    poly = [[0.0, 0.0, 3.0, 0.0, 3.0, 2.0]]
    d = {"categories": [{"id": 1, "name": "person"}, {"id": 62, "name": "chair"}],
         "images": [{"id": 139, "file_name": "COCO_val2014_000000000139.jpg", "width": 6, "height": 4},
                    {"id": 285, "file_name": "COCO_val2014_000000000285.jpg", "width": 5, "height": 3}],
         "annotations": [{"id": 1, "image_id": 139, "category_id": 1, "segmentation": poly, "area": 3.0,
                          "bbox": [0, 0, 3, 2], "iscrowd": 0},
                         {"id": 2, "image_id": 285, "category_id": 62, "segmentation": poly, "area": 3.0,
                          "bbox": [0, 0, 3, 2], "iscrowd": 0}]}
    p = tmp_path / "instances_val2014.json"
    p.write_text(json.dumps(d))
    return p


def _stuff_dir(tmp_path):
    """stuffthingmaps_trainval2017 as unzipped: 139 in val2017/, 285 in train2017/ (2014 val spans both)."""
    root = tmp_path / "stuffthingmaps_trainval2017"
    a = np.full((4, 6), 120, np.uint8)           # stuff
    a[0, :3], a[3, 5] = 0, 255                   # person; unlabeled
    b = np.full((3, 5), 61, np.uint8)            # chair
    b[2] = 100
    for sub, n, arr in (("val2017", 139, a), ("train2017", 285, b)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr, mode="L").save(root / sub / f"{n:012d}.png")
    return root


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


def test_coco_masks_from_stuff_safe_reruns(tmp_path, capsys):
    ann, stuff = _instances(tmp_path), _stuff_dir(tmp_path)
    out = tmp_path / "SegmentationClassStuff" / "val2014"
    argv = ["coco-masks", "--source", "stuff", "--stuff-dir", str(stuff), "--ann", str(ann), "--out", str(out),
            "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "2 masks (2 written, 0 already present)" in text and "source=stuff" in text
    checksum = text.split("checksum sha256: ")[1].split()[0]
    m139 = np.asarray(Image.open(out / "COCO_val2014_000000000139.png"))
    assert m139.shape == (4, 6) and m139[0, 0] == 1 and m139[1, 1] == 0 and m139[3, 5] == 255
    chair = COCO_CLASSES.index("chair") + 1
    assert (np.asarray(Image.open(out / "COCO_val2014_000000000285.png")) == [[chair] * 5, [chair] * 5, [0] * 5]).all()
    man = json.loads((out / "manifest.json").read_text())
    assert man["source"] == "stuff" and man["complete"] and man["checksum_sha256"] == checksum
    assert man["settings"] == {"source": "stuff", "ids": "annotated", "crowd": None, "ann_name": ann.name,
                               "ann_sha256": file_sha256(ann)}
    # same settings: resumes, same checksum
    assert main(argv) == 0
    assert "(0 written, 2 already present)" in (t := capsys.readouterr().out) and checksum in t
    # other settings into the same folder: refused, one line, nothing changed
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for other in (["coco-masks", "--ann", str(ann), "--out", str(out)],
                  [*argv[:-1], "--ids", "all"]):
        assert main(other) == 2
        err = _one_line(capsys)
        assert re.search(r"manifest\.json: the masks in .* were made with (source = 'stuff'|ids = 'annotated')", err), err
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # --overwrite redoes every mask with the new settings
    assert main(["coco-masks", "--ann", str(ann), "--out", str(out), "--overwrite"]) == 0
    assert "(2 written" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["source"] == "instances"


def test_coco_masks_stuff_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    ann, stuff = _instances(tmp_path), _stuff_dir(tmp_path)
    out = tmp_path / "out"
    base = ["coco-masks", "--ann", str(ann), "--out", str(out)]
    assert main([*base, "--source", "stuff"]) == 2
    assert "--source stuff needs --stuff-dir" in _one_line(capsys)
    assert main([*base, "--stuff-dir", str(stuff)]) == 2
    assert "--stuff-dir is only read with --source stuff" in _one_line(capsys)
    (stuff / "train2017" / "000000000285.png").unlink()
    assert main([*base, "--source", "stuff", "--stuff-dir", str(stuff)]) == 2
    assert "no stuffthingmap for COCO image 285 (looked for train2017/000000000285.png" in _one_line(capsys)
    Image.fromarray(np.full((3, 5), 90, np.uint8), mode="L").save(stuff / "val2017" / "000000000285.png")
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(stuff / "val2017" / "000000000139.png")
    assert main([*base, "--source", "stuff", "--stuff-dir", str(stuff)]) == 2
    assert "000000000139.png: mode RGB, expected a single-channel" in _one_line(capsys)
    assert not out.exists() or not any(out.iterdir())


def test_loader_gt_source_picks_and_checks_the_folder(tmp_path, capsys):
    ann, stuff = _instances(tmp_path), _stuff_dir(tmp_path)
    root = tmp_path / "COCO"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2014.json").write_text(ann.read_text())
    (root / "val2014").mkdir()
    for n, (w, h) in ((139, (6, 4)), (285, (5, 3))):
        Image.new("RGB", (w, h)).save(root / "val2014" / f"COCO_val2014_{n:012d}.jpg")
    for src, sub in (("stuff", "SegmentationClassStuff"), ("instances", "SegmentationClass")):
        extra = ["--source", "stuff", "--stuff-dir", str(stuff)] if src == "stuff" else []
        assert main(["coco-masks", "--ann", str(ann), "--out", str(root / sub / "val2014"), "--no-progress", *extra]) == 0
    capsys.readouterr()
    ds = build_dataset("coco", root, "val", gt_source="stuff", require_masks=True)
    assert ds.records[0].mask_path.parent.parent.name == "SegmentationClassStuff"
    assert build_dataset("coco", root, "val").records[0].mask_path.parent.parent.name == "SegmentationClass"
    # a folder made from the other source is refused when the config names one
    with pytest.raises(DoeiError, match=r"come from source 'instances', the config asks for gt_source 'stuff'"):
        build_dataset("coco", root, "val", gt_source="stuff", mask_dir=root / "SegmentationClass" / "val2014")
    with pytest.raises(DoeiError, match="gt_source 'cocostuff'"):
        build_dataset("coco", root, "val", gt_source="cocostuff")
