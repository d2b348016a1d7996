"""Dataset kind ``class_folders`` (root/<split>/<class>/<image>, the ImageNet / CUB layout): labels from the
folders, class names from classes.txt or the folder names, optional masks, through doei eval's dataset path."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from doei.data import build_dataset
from doei.data.build import dataset_class_names, dataset_kinds
from doei.errors import DoeiError


def _img(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 16, 3), value, np.uint8)).save(path)


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "cub"
    _img(r / "train" / "warbler" / "w1.jpg", 10)
    _img(r / "train" / "warbler" / "w2.png", 20)
    _img(r / "train" / "albatross" / "a1.jpg", 30)
    (r / "train" / "albatross" / "notes.txt").write_text("not an image")
    _img(r / "val" / "albatross" / "a9.jpg", 40)
    (r / "masks").mkdir()
    m = np.zeros((12, 16), np.uint8)
    m[2:8, 3:9] = 1
    Image.fromarray(m).save(r / "masks" / "a9.png")
    return r


def test_labels_come_from_the_folders(root):
    assert "class_folders" in dataset_kinds()
    ds = build_dataset("class_folders", root, None)                 # default split: train
    assert ds.class_names == ["albatross", "warbler"] == dataset_class_names("class_folders", root)
    assert [(r.id, r.classes) for r in ds.records] == [("a1", (0,)), ("w1", (1,)), ("w2", (1,))]
    x, y, iid = ds[0]
    assert x.shape == (3, 12, 16) and y.tolist() == [1.0, 0.0] and iid == "a1"
    val = build_dataset("class_folders", root, "val", require_masks=True)
    assert val.ids == ["a9"] and val.mask("a9").max() == 1


def test_class_names_file_fixes_the_order_and_refuses_strangers(root, tmp_path):
    (root / "classes.txt").write_text("warbler\nalbatross\ngull\n")
    ds = build_dataset("class_folders", root, "train")
    assert ds.class_names == ["warbler", "albatross", "gull"] and ds.records[0].classes == (1,)
    (tmp_path / "other.txt").write_text("warbler\n")
    with pytest.raises(DoeiError, match="albatross: class folder not listed in"):
        build_dataset("class_folders", root, "train", classes_file=tmp_path / "other.txt")


def test_bad_layouts_are_one_line(root):
    _img(root / "train" / "albatross" / "w1.jpg", 50)
    with pytest.raises(DoeiError, match="image id 'w1' also names"):
        build_dataset("class_folders", root, "train")
    with pytest.raises(DoeiError, match="split folder not found"):
        build_dataset("class_folders", root, "test")
    with pytest.raises(DoeiError, match="mask missing"):
        build_dataset("class_folders", root, "train", require_masks=True)
    with pytest.raises(DoeiError, match="option 'labels_file' unknown"):
        build_dataset("class_folders", root, "val", labels_file="x")
