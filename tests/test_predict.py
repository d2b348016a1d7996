"""doei predict: masks, legend overlays and CAMs for images in no dataset split, from a trained classifier
and/or DeepLab; given labels where known, the classifier's predicted classes otherwise (and it says so)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from doei.cli import main
from doei.pipeline.predict import PredictSettings, list_images, predict


def test_predict_real_photos_given_and_predicted_labels_resume(tiny_run, tmp_path, capsys):
    work, data, ckpt = tiny_run
    photos = tmp_path / "photos"
    photos.mkdir()
    ids = sorted(p.stem for p in (data / "images").glob("*.jpg"))[:3]
    for i in ids:
        shutil.copy(data / "images" / f"{i}.jpg", photos / f"{i}.jpg")
    labels = tmp_path / "labels.csv"                      # only the first image has a known label
    row = next(ln for ln in (data / "labels.csv").read_text().splitlines() if ln.startswith(ids[0]))
    labels.write_text("id,labels\n" + row + "\n")
    out = tmp_path / "pred"
    argv = ["predict", str(photos), "--classifier", str(ckpt), "--out", str(out), "--labels", str(labels),
            "--classes", str(data / "classes.txt"), "--save-cams", "--threshold", "0.6", "--no-progress"]
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "3 computed" in said and "1 given" in said and "2 predicted" in said and "threshold 0.6" in said
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0] == "id,source,classes,mask,overlay" and len(rows) == 4
    for i in ids:
        mask = np.asarray(Image.open(out / "masks" / f"{i}.png"))
        img = Image.open(photos / f"{i}.jpg")
        assert mask.shape == (img.size[1], img.size[0]) and Image.open(out / "masks" / f"{i}.png").mode == "P"
        rec = json.loads((out / "labels" / f"{i}.json").read_text())
        assert rec["source"] == ("given" if i == ids[0] else "predicted") and rec["classes"]
        if rec["source"] == "predicted":               # >= threshold, and at least the top class
            top = max(rec["scores"], key=rec["scores"].get)
            assert top in rec["names"] and all(v >= 0.6 or n == top for n, v in rec["scores"].items()
                                               if n in rec["names"])
        for f in (out / "overlays" / f"{i}.png", out / "cams" / f"{i}.png", out / "cams" / f"{i}.npz"):
            assert f.is_file()
        assert np.asarray(Image.open(out / "overlays" / f"{i}.png")).shape[1] >= 2 * 320
    # resumable: a rerun does nothing; other settings are refused in one line; --overwrite redoes everything
    assert main(argv) == 0 and "0 computed, 3 already done" in capsys.readouterr().out
    assert main(argv[:-3] + ["--threshold", "0.7", "--no-progress"]) == 2
    assert "made with other settings (threshold)" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0 and "3 computed" in capsys.readouterr().out


def test_predict_refuses_bad_input_before_writing(tiny_run, tmp_path, capsys):
    work, data, ckpt = tiny_run
    img = next((data / "images").glob("*.jpg"))
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\n")
    out = tmp_path / "out"
    assert main(["predict", str(img), "--classifier", str(ckpt), "--classes", str(names), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "3 class names are given" in err and not out.exists()
    assert main(["predict", str(tmp_path / "nope.jpg"), "--classifier", str(ckpt), "--out", str(out)]) == 2
    assert "no such image, folder or .txt list" in capsys.readouterr().err and not out.exists()
    assert main(["predict", str(img), "--out", str(out)]) == 2
    assert "give a classifier checkpoint" in capsys.readouterr().err


def test_predict_with_a_deeplab_and_image_lists(tiny_run, tmp_path):
    from doei.engine.train_seg import build_seg_model

    work, data, ckpt = tiny_run
    names = (data / "classes.txt").read_text().split()
    torch.manual_seed(0)
    seg = build_seg_model("deeplab_resnet38_small", len(names) + 1, {"width": 0.0625})
    torch.save(seg.state_dict(), tmp_path / "seg.pth")                 # external weights: model named by the caller
    files = sorted((data / "images").glob("*.jpg"))[:2]
    (tmp_path / "list.txt").write_text("\n".join(str(f) for f in files) + "\n")
    assert [i for i, _ in list_images([str(tmp_path / "list.txt")])] == [f.stem for f in files]
    s = PredictSettings(seg_checkpoint=str(tmp_path / "seg.pth"), seg_model="deeplab_resnet38_small",
                        seg_model_options={"width": 0.0625}, class_names=names, device="cpu")
    res = predict([str(tmp_path / "list.txt")], s, tmp_path / "out", progress=False)
    assert res["computed"] == 2 and res["sources"] == {"none (no classifier, no labels)": 2}
    for f in files:
        m = np.asarray(Image.open(tmp_path / "out" / "masks" / f"{f.stem}.png"))
        assert m.max() <= len(names)
    with pytest.raises(Exception, match="duplicate image id"):
        list_images([str(files[0]), str(files[0])])
