"""Dataset kind ``csv`` (one labels CSV: image,labels[,mask] with ';'-separated class names): names from
classes.txt or the CSV, optional masks, id lists, one-line errors; its options travel through a config."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from doei.data import build_dataset
from doei.data.build import dataset_class_names
from doei.errors import DoeiError


def _img(path, value, mask=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.full((10, 14), value, np.uint8) if mask else np.full((10, 14, 3), value, np.uint8)
    Image.fromarray(a).save(path)


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "mine"
    _img(r / "photos" / "c1.jpg", 10)
    _img(r / "photos" / "street.png", 20)
    _img(r / "photos" / "empty.jpg", 30)
    _img(r / "masks" / "c1.png", 1, mask=True)
    (r / "labels.csv").write_text("image,labels,mask\nphotos/c1.jpg,dog;cat,masks/c1.png\n"
                                  "photos/street.png, car ,\n\nphotos/empty.jpg,,\n")
    return r


def test_rows_become_records(root):
    ds = build_dataset("csv", root, None)
    assert ds.class_names == ["car", "cat", "dog"] == dataset_class_names("csv", root)
    assert [(r.id, r.classes) for r in ds.records] == [("c1", (1, 2)), ("street", (0,)), ("empty", ())]
    assert ds.records[0].mask_path == root / "masks" / "c1.png" and ds.records[1].mask_path is None
    (root / "val.txt").write_text("street\nc1\n")
    assert build_dataset("csv", root, "val").ids == ["street", "c1"]
    (root / "classes.txt").write_text("dog\ncat\ncar\nbird\n")
    assert build_dataset("csv", root, None).records[0].classes == (0, 1)


def test_options_and_errors(root, tmp_path):
    (tmp_path / "other.csv").write_text("Image,Labels\nphotos/street.png,bus\n")
    with pytest.raises(DoeiError, match=r"other.csv:2: class 'bus' is not one of the 3 class names"):
        build_dataset("csv", root, None, csv_file=tmp_path / "other.csv", classes_file=_names(tmp_path))
    assert build_dataset("csv", root, None, csv_file=tmp_path / "other.csv").class_names == ["bus"]
    with pytest.raises(DoeiError, match="no mask for 'street'"):
        build_dataset("csv", root, None, require_masks=True)
    (tmp_path / "dup.csv").write_text("image,labels\nphotos/c1.jpg,cat\nphotos/c1.jpg,dog\n")
    with pytest.raises(DoeiError, match="dup.csv:3: image id 'c1'"):
        build_dataset("csv", root, None, csv_file=tmp_path / "dup.csv")
    (tmp_path / "hdr.csv").write_text("file,tags\nx.jpg,cat\n")
    with pytest.raises(DoeiError, match="must name the columns 'image' and 'labels'"):
        build_dataset("csv", root, None, csv_file=tmp_path / "hdr.csv")


def _names(tmp_path):
    (tmp_path / "names.txt").write_text("car\ncat\ndog\n")
    return tmp_path / "names.txt"


def test_its_options_are_config_keys(root, tmp_path):
    from doei.data.build import dataset_from_config
    from doei.train_config import train_config_from_dict

    (tmp_path / "sub.csv").write_text("image,labels\nphotos/street.png,car\n")
    cfg = train_config_from_dict({"data": {"kind": "csv", "root": str(root), "train_split": "",
                                           "csv_file": str(tmp_path / "sub.csv")}})
    assert dataset_from_config(cfg.data, None).ids == ["street"]
    with pytest.raises(DoeiError, match=r"dataset kind 'csv' does not take option 'mask_dir' \(it accepts: csv_file"):
        train_config_from_dict({"data": {"kind": "csv", "root": str(root), "mask_dir": "m"}})
