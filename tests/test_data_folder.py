"""User folder datasets: CSV/JSON labels, class names, optional masks, odd image modes, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from doei.data import build_dataset
from doei.errors import DoeiError


def _folder(tmp, csv_text="id,labels\nimg1,cat;dog\nimg2.png,2\nimg3,\n"):
    (tmp / "images").mkdir(parents=True)
    (tmp / "classes.txt").write_text("cat\ndog\ntraffic light\n")
    (tmp / "labels.csv").write_text(csv_text)
    rgb = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(tmp / "images" / "img1.jpg")
    Image.fromarray(rgb).convert("LA").save(tmp / "images" / "img2.png")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(tmp / "images" / "img3.tif")
    return tmp


def test_folder_csv_names_indices_modes(tmp_path):
    root = _folder(tmp_path)
    ds = build_dataset("folder", root, None)
    assert ds.ids == ["img1", "img2", "img3"] and ds.class_names == ["cat", "dog", "traffic light"]
    assert [r.classes for r in ds.records] == [(0, 1), (2,), ()]
    assert not ds.has_masks
    for i in range(3):
        x, y, _ = ds[i]
        assert x.shape == (3, 5, 6) and y.shape == (3,)
    np.testing.assert_array_equal(ds.sample(2).image[..., 0],
                                  np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)[..., 0])
    (root / "labels.csv").write_text("filename,labels\nimg1.jpg,traffic light;cat\n")
    assert build_dataset("folder", root, None).records[0].classes == (0, 2)


def test_folder_json_split_and_masks(tmp_path):
    root = _folder(tmp_path)
    (root / "labels.csv").unlink()
    (root / "labels.json").write_text(json.dumps({"img1": [0], "img2": [1, 2], "img3": []}))
    (root / "val.txt").write_text("img2\n")
    (root / "masks").mkdir()
    Image.fromarray(np.array([[0, 2, 3, 255, 0, 0]] * 5, np.uint8), "L").save(root / "masks" / "img2.png")
    ds = build_dataset("folder", root, "val", require_masks=True)
    assert ds.ids == ["img2"] and ds.has_masks
    assert set(np.unique(ds.sample("img2").mask)) == {0, 2, 3, 255}
    Image.fromarray(np.full((5, 6), 4, np.uint8), "L").save(root / "masks" / "img2.png")
    with pytest.raises(DoeiError, match=r"img2\.png: label 4 outside 0\.\.3 \(or 255\)"):
        ds.sample("img2")


@pytest.mark.parametrize("csv_text, msg", [
    ("id,labels\nimg1,cat;horse\n", r"labels\.csv:2: 'horse' is neither a class name"),
    ("id,labels\nimg1,7\n", r"labels\.csv:2: class index 7 outside 0\.\.2"),
    ("id,labels\nimg1,0\nimg1,1\n", r"labels\.csv:3: duplicate image id 'img1'"),
    ("id,labels\n../img1,0\n", r"labels\.csv:2: image id '\.\./img1'"),
    ("name,classes\nimg1,0\n", r"header .* must name an id column"),
    ("id,labels\nimg9,0\n", r"images/img9\.jpg: image file not found for id 'img9'"),
    ("id,labels\n", r"no label rows"),
])
def test_folder_errors(tmp_path, csv_text, msg):
    root = _folder(tmp_path, csv_text)
    with pytest.raises(DoeiError, match=msg):
        build_dataset("folder", root, None)


def test_folder_missing_pieces(tmp_path):
    root = _folder(tmp_path)
    with pytest.raises(DoeiError, match=r"val\.txt: id list not found"):
        build_dataset("folder", root, "val")
    (root / "classes.txt").unlink()
    with pytest.raises(DoeiError, match="no classes.txt or classes.json"):
        build_dataset("folder", root, None)
    with pytest.raises(DoeiError, match="dataset kind 'foo' unknown"):
        build_dataset("foo", root, None)
