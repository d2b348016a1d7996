"""Readers and validators of doei.data.common: image modes, masks, ids, labels files."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from doei.data.common import (check_id, classes_in_mask, multi_hot, read_class_names, read_cls_labels_npy,
                              read_id_list, read_image, read_labels_json, read_mask, voc_palette,
                              write_labels_json)
from doei.errors import DoeiError

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(7, 9, 3), dtype=np.uint8)


def test_voc_palette_known_entries():
    pal = voc_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert tuple(pal[1]) == (128, 0, 0) and tuple(pal[15]) == (192, 128, 128) and tuple(pal[255]) == (224, 224, 192)
    assert len({tuple(c) for c in pal}) == 256


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "1", "YCbCr"])
def test_read_image_converts_modes_to_rgb(tmp_path, mode):
    img = Image.fromarray(RGB).convert(mode)
    path = tmp_path / ("x.jpg" if mode in ("CMYK", "YCbCr") else "x.png")
    img.save(path) if mode != "YCbCr" else img.save(path, quality=95)
    out = read_image(path)
    assert out.shape == (7, 9, 3) and out.dtype == np.uint8
    if mode == "RGBA":  # alpha dropped, colours kept exactly
        np.testing.assert_array_equal(out, RGB)
    if mode == "L":
        g = np.asarray(img)
        assert (out == g[..., None]).all()


def test_read_image_rgba_transparent_keeps_colour(tmp_path):
    a = np.dstack([RGB, np.zeros((7, 9), np.uint8)])
    Image.fromarray(a, "RGBA").save(tmp_path / "t.png")
    np.testing.assert_array_equal(read_image(tmp_path / "t.png"), RGB)


def test_read_image_16bit_is_scaled_not_clipped(tmp_path):
    a = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    out = read_image(tmp_path / "g16.png")
    assert out.shape == (1, 3, 3)
    assert out[0, :, 0].tolist() == [0, 100, 255]


def test_read_image_missing_truncated_garbage(tmp_path):
    with pytest.raises(DoeiError, match="nope.jpg: image file not found"):
        read_image(tmp_path / "nope.jpg")
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DoeiError, match=r"cut\.jpg: unreadable image"):
        read_image(tmp_path / "cut.jpg")
    (tmp_path / "txt.png").write_text("not an image")
    with pytest.raises(DoeiError, match=r"txt\.png: unreadable image"):
        read_image(tmp_path / "txt.png")


def _palette_png(path, arr):
    im = Image.fromarray(arr.astype(np.uint8), "P")
    im.putpalette(voc_palette().reshape(-1).tolist())
    im.save(path)


def test_read_mask_palette_gray_colour_and_range(tmp_path):
    m = np.array([[0, 1, 20], [255, 15, 0]], np.uint8)
    _palette_png(tmp_path / "p.png", m)
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png", 20), m)
    Image.fromarray(m, "L").save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "l.png", 20), m)
    Image.fromarray(voc_palette()[m]).save(tmp_path / "rgb.png")  # colour-coded VOC mask
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png", 20), m)
    bad = m.copy()
    bad[0, 0] = 37
    _palette_png(tmp_path / "bad.png", bad)
    with pytest.raises(DoeiError, match=r"bad\.png: label 37 outside 0\.\.20 \(or 255\)"):
        read_mask(tmp_path / "bad.png", 20)
    rgb = voc_palette()[m]
    rgb[1, 1] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "odd.png")
    with pytest.raises(DoeiError, match=r"odd\.png: RGB mask colour \(1, 2, 3\)"):
        read_mask(tmp_path / "odd.png")
    assert classes_in_mask(m) == (0, 14, 19)


@pytest.mark.parametrize("bad", ["../x", "a/b", "a\\b", ".hidden", "..", " a", "a\tb", ""])
def test_check_id_rejects_unsafe(bad):
    with pytest.raises(DoeiError):
        check_id(bad, "list.txt:3")


def test_read_id_list(tmp_path):
    f = tmp_path / "s.txt"
    f.write_text("2007_000032\n\n/JPEGImages/2007_000039.jpg /SegmentationClassAug/2007_000039.png\n")
    assert read_id_list(f) == ["2007_000032", "2007_000039"]
    f.write_text("a\nb\na\n")
    with pytest.raises(DoeiError, match="duplicate image id 'a'"):
        read_id_list(f)
    f.write_text("\n  \n")
    with pytest.raises(DoeiError, match="id list is empty"):
        read_id_list(f)
    f.write_text("ok\n../../etc/passwd\n")
    with pytest.raises(DoeiError, match=r"s\.txt:2: image id '\.\./\.\./etc/passwd'"):
        read_id_list(f)
    with pytest.raises(DoeiError, match="id list not found"):
        read_id_list(tmp_path / "missing.txt")


def test_labels_json_roundtrip_and_validation(tmp_path):
    names = ["a", "b", "c"]
    write_labels_json(tmp_path / "l.json", {"x2": [2, 0], "x1": []}, names, source="test")
    obj = json.loads((tmp_path / "l.json").read_text())
    assert list(obj["labels"]) == ["x1", "x2"] and obj["classes"] == names
    assert read_labels_json(tmp_path / "l.json", 3, names) == {"x1": (), "x2": (0, 2)}
    with pytest.raises(DoeiError, match="class names"):
        read_labels_json(tmp_path / "l.json", 3, ["a", "b", "z"])
    (tmp_path / "bare.json").write_text(json.dumps({"i1": [1, 3]}))
    with pytest.raises(DoeiError, match=r"bare\.json: i1: class index 3 outside 0\.\.2"):
        read_labels_json(tmp_path / "bare.json", 3)
    (tmp_path / "esc.json").write_text(json.dumps({"../i1": [1]}))
    with pytest.raises(DoeiError, match="not a plain file name"):
        read_labels_json(tmp_path / "esc.json", 3)
    assert multi_hot((0, 2), 3).tolist() == [1.0, 0.0, 1.0] and multi_hot((), 3).dtype == np.float32


def test_cls_labels_npy_needs_trust(tmp_path):
    vec = np.zeros(20, np.float32)
    vec[[3, 14]] = 1
    np.save(tmp_path / "cls_labels.npy", {"2007_000032": vec, "x.jpg": np.zeros(20, np.float32)}, allow_pickle=True)
    with pytest.raises(DoeiError, match="needs pickle"):
        read_cls_labels_npy(tmp_path / "cls_labels.npy", 20)
    got = read_cls_labels_npy(tmp_path / "cls_labels.npy", 20, trust_pickle=True)
    assert got == {"2007_000032": (3, 14), "x": ()}
    with pytest.raises(DoeiError, match="has 20 entries, expected 80"):
        read_cls_labels_npy(tmp_path / "cls_labels.npy", 80, trust_pickle=True)


def test_read_class_names(tmp_path):
    (tmp_path / "c.txt").write_text("cat\n\ndog\n")
    assert read_class_names(tmp_path / "c.txt") == ["cat", "dog"]
    (tmp_path / "d.txt").write_text("cat\ncat\n")
    with pytest.raises(DoeiError, match="duplicate class name 'cat'"):
        read_class_names(tmp_path / "d.txt")
    (tmp_path / "c.json").write_text('["x", "y"]')
    assert read_class_names(tmp_path / "c.json") == ["x", "y"]
