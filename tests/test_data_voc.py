"""VOC loader: real VOC masks/images from ../shared/data/voc_real_mini, XML labels, validation errors."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from doei.cli import main
from doei.data import build_dataset
from doei.data.common import voc_palette
from doei.data.voc import VOC_CLASSES, labels_from_xml, voc_dataset
from doei.errors import DoeiError


@pytest.fixture(scope="module")
def voc_mini(shared_dir):
    root = shared_dir / "data" / "voc_real_mini"
    if not root.is_dir():
        pytest.skip(f"{root} missing")
    return root


def test_real_mini_labels_from_masks_match_reference(voc_mini):
    ref = json.loads((voc_mini / "cls_labels_from_masks.json").read_text())
    for split in ("val", "train_aug"):
        ds = build_dataset("voc", voc_mini, split)
        assert len(ds) == 19 and ds.has_masks and ds.num_classes == 20
        assert "masks" in ds.label_source and "SegmentationClassAug" in ds.label_source
        for r in ds.records:
            assert r.classes == tuple(ref[r.id])
        lm = ds.label_matrix()
        assert lm.shape == (19, 20) and lm.sum() == sum(len(ref[i]) for i in ds.ids)


def test_real_mini_items_and_samples(voc_mini):
    ds = voc_dataset(voc_mini, "val", labels_file=voc_mini / "cls_labels_from_masks.json")
    assert ds.label_source.startswith("file ")
    x, y, iid = ds[0]
    assert iid == "2007_001311" and x.dtype == torch.float32 and x.shape == (3, 319, 500)
    assert y.dtype == torch.float32 and y.tolist() == [1.0 if k in (1, 14) else 0.0 for k in range(20)]
    s = ds.sample("2007_001311")
    assert s.image.shape == (319, 500, 3) and s.image.dtype == np.uint8
    assert s.mask.shape == (319, 500) and set(np.unique(s.mask)) == {0, 2, 15, 255}
    assert s.classes == (1, 14)
    # normalisation round trip: the tensor is the ImageNet-normalised image
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    back = ((x * std + mean) * 255).round().permute(1, 2, 0).numpy().astype(np.uint8)
    np.testing.assert_array_equal(back, s.image)
    loader = torch.utils.data.DataLoader(ds, batch_size=1)
    xb, yb, ib = next(iter(loader))
    assert xb.shape == (1, 3, 319, 500) and list(ib) == ["2007_001311"]


def _mini_voc(tmp, ids=("a_1", "a_2"), xml=True, masks=True):
    (tmp / "JPEGImages").mkdir(parents=True)
    (tmp / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp / "ImageSets" / "Segmentation" / "train.txt").write_text("".join(f"{i}\n" for i in ids))
    objs = {ids[0]: ["dog", "person", "dog"], ids[1]: ["tvmonitor"]}
    for k, i in enumerate(ids):
        Image.fromarray(np.full((6, 8, 3), 40 * k, np.uint8)).save(tmp / "JPEGImages" / f"{i}.jpg")
        if xml:
            (tmp / "Annotations").mkdir(exist_ok=True)
            body = "".join(f"<object><name>{n}</name><part><name>head</name></part><difficult>1</difficult></object>"
                           for n in objs.get(i, []))
            (tmp / "Annotations" / f"{i}.xml").write_text(f"<annotation><filename>{i}.jpg</filename>{body}</annotation>")
        if masks:
            (tmp / "SegmentationClass").mkdir(exist_ok=True)
            m = np.zeros((6, 8), np.uint8)
            m[1:3, 1:3] = 12 if k == 0 else 20
            im = Image.fromarray(m, "P")
            im.putpalette(voc_palette().reshape(-1).tolist())
            im.save(tmp / "SegmentationClass" / f"{i}.png")
    return tmp


def test_xml_labels_and_auto_source(tmp_path):
    root = _mini_voc(tmp_path)
    ds = voc_dataset(root, "train")
    assert ds.label_source == "xml"
    assert [r.classes for r in ds.records] == [(11, 14), (19,)]  # dog=11, person=14, tvmonitor=19; parts ignored
    ds_m = voc_dataset(root, "train", labels="masks")
    assert [r.classes for r in ds_m.records] == [(11,), (19,)]
    (root / "Annotations" / "a_2.xml").write_text("<annotation><object><name>unicorn</name></object></annotation>")
    with pytest.raises(DoeiError, match=r"a_2\.xml: object name 'unicorn' is not a class"):
        labels_from_xml(root / "Annotations" / "a_2.xml")
    (root / "Annotations" / "a_2.xml").write_text("<annotation><object>")
    with pytest.raises(DoeiError, match=r"a_2\.xml: unreadable annotation XML"):
        voc_dataset(root, "train")


def test_labels_command_writes_file_the_loader_picks_up(tmp_path, voc_mini, capsys):
    root = _mini_voc(tmp_path / "v")
    assert main(["labels", "--dataset", "voc", "--data-root", str(root)]) == 0
    ds = voc_dataset(root, "train")
    assert ds.label_source.startswith("file ") and [r.classes for r in ds.records] == [(11, 14), (19,)]
    out = tmp_path / "real.json"
    assert main(["labels", "--dataset", "voc", "--data-root", str(voc_mini), "--source", "masks", "--out", str(out)]) == 0
    ref = json.loads((voc_mini / "cls_labels_from_masks.json").read_text())
    got = json.loads(out.read_text())
    assert got["classes"] == list(VOC_CLASSES) and got["labels"] == {k: ref[k] for k in sorted(ref)}


def test_validation_errors(tmp_path):
    root = _mini_voc(tmp_path)
    lst = root / "ImageSets" / "Segmentation" / "train.txt"
    with pytest.raises(DoeiError, match=r"split 'nope' not found .*available: train"):
        voc_dataset(root, "nope")
    lst.write_text("a_1\n../a_2\n")
    with pytest.raises(DoeiError, match=r"train\.txt:2: image id '\.\./a_2'"):
        voc_dataset(root, "train")
    lst.write_text("a_1\na_1\n")
    with pytest.raises(DoeiError, match="duplicate image id 'a_1'"):
        voc_dataset(root, "train")
    lst.write_text("\n")
    with pytest.raises(DoeiError, match="id list is empty"):
        voc_dataset(root, "train")
    lst.write_text("a_1\na_3\n")
    with pytest.raises(DoeiError, match=r"a_3\.xml: annotation XML not found"):
        voc_dataset(root, "train")
    with pytest.raises(DoeiError, match=r"JPEGImages/a_3\.jpg: image file not found for id 'a_3'"):
        voc_dataset(root, "train", labels_file=_labels(root, {"a_1": [0], "a_3": [1]}))
    lst.write_text("a_1\na_2\n")
    with pytest.raises(DoeiError, match=r"no labels for image id 'a_2'"):
        voc_dataset(root, "train", labels_file=_labels(root, {"a_1": [0]}))
    with pytest.raises(DoeiError, match=r"a_1: class index 20 outside 0\.\.19"):
        voc_dataset(root, "train", labels_file=_labels(root, {"a_1": [20], "a_2": [0]}))
    (root / "SegmentationClass" / "a_2.png").unlink()
    assert voc_dataset(root, "train").records[1].mask_path is None
    with pytest.raises(DoeiError, match=r"a_2\.png: ground-truth mask not found for id 'a_2'"):
        voc_dataset(root, "train", require_masks=True)
    (root / "JPEGImages" / "a_1.jpg").write_bytes(b"\xff\xd8garbage")
    ds = voc_dataset(root, "train")
    with pytest.raises(DoeiError, match=r"a_1\.jpg: unreadable image"):
        ds[0]


def test_mask_size_mismatch_is_reported(tmp_path):
    root = _mini_voc(tmp_path)
    Image.fromarray(np.zeros((5, 5), np.uint8), "L").save(root / "SegmentationClass" / "a_1.png")
    ds = voc_dataset(root, "train")
    with pytest.raises(DoeiError, match=r"a_1\.png: mask size 5x5 differs from image a_1\.jpg size 8x6"):
        ds.sample("a_1")
    with pytest.raises(DoeiError, match="no image with id 'zz'"):
        ds.sample("zz")


def _labels(root, table):
    f = root / "labels_test.json"
    f.write_text(json.dumps(table))
    return f


def test_labels_split_merges_into_the_existing_file(tmp_path, capsys):
    """`doei labels --split X` with the default --out adds X to a complete file instead of replacing it."""
    root = _mini_voc(tmp_path / "v", ids=("a_1", "a_2"))
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("a_1\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("a_2\n")
    out = root / "cls_labels.json"
    assert main(["labels", "--dataset", "voc", "--data-root", str(root)]) == 0      # every split
    full = json.loads(out.read_text())["labels"]
    assert full == {"a_1": [11, 14], "a_2": [19]}
    capsys.readouterr()
    # the same split again: nothing changes, the file is not even rewritten
    mtime = out.stat().st_mtime_ns
    assert main(["labels", "--dataset", "voc", "--data-root", str(root), "--split", "val"]) == 0
    assert "unchanged: 2 images (0 added, 1 already there with the same labels, 0 replaced, 1 other" in capsys.readouterr().out
    assert out.stat().st_mtime_ns == mtime and json.loads(out.read_text())["labels"] == full
    # a split with a new image is added, the others kept
    (root / "Annotations" / "a_3.xml").write_text("<annotation><object><name>cat</name></object></annotation>")
    (root / "ImageSets" / "Segmentation" / "extra.txt").write_text("a_3\n")
    assert main(["labels", "--dataset", "voc", "--data-root", str(root), "--split", "extra"]) == 0
    assert "3 images (1 added, 0 already there with the same labels, 0 replaced, 2 other" in capsys.readouterr().out
    got = json.loads(out.read_text())
    assert got["labels"] == {**full, "a_3": [7]} and got["source"] == "xml (train, val); xml (extra)"
    # labels that differ (masks say only dog for a_1) are refused, file untouched ...
    before = out.read_bytes()
    assert main(["labels", "--dataset", "voc", "--data-root", str(root), "--split", "train", "--source", "masks"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and re.search(r"cls_labels\.json: image 'a_1' is labelled \[dog, person\] there but \[dog\] "
                                         r"by masks .*1 id\(s\) differ.*--overwrite", err), err
    assert out.read_bytes() == before
    # ... and replaced with --overwrite, every other image still kept
    assert main(["labels", "--dataset", "voc", "--data-root", str(root), "--split", "train", "--source", "masks",
                 "--overwrite"]) == 0
    assert "1 replaced, 2 other images kept" in capsys.readouterr().out
    assert json.loads(out.read_text())["labels"] == {"a_1": [11], "a_2": [19], "a_3": [7]}
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]


def test_labels_refuses_an_existing_file_it_cannot_merge(tmp_path, capsys):
    root = _mini_voc(tmp_path / "v")
    out = root / "cls_labels.json"
    for text, pattern in (('{"labels": {"a_1": [', r"not a readable JSON"),
                          (json.dumps({"format": "doei-image-labels-v1", "classes": ["x"], "labels": {}}), r"class names")):
        out.write_text(text)
        assert main(["labels", "--dataset", "voc", "--data-root", str(root)]) == 2
        err = capsys.readouterr().err.strip()
        assert re.search(r"--out .*cls_labels\.json exists but cannot be merged.*" + pattern, err), err
        assert out.read_text() == text
