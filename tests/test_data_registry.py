"""The dataset registry: every kind builds on a tiny example, bad kinds/options are one-line errors, and a
dataset registered in this file is usable everywhere a kind is named (one module plus its test)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from doei.data.build import (build_dataset, dataset_class_names, dataset_kinds, dataset_options,
                             get_dataset_spec, register_dataset, unregister_dataset)
from doei.errors import DoeiError

BUILTIN = ("coco", "folder", "synth", "voc")


def _img(path: Path, seed: int, size=(6, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def _mask(path: Path, values: list[int], size=(6, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros(size, dtype=np.uint8)
    for j, v in enumerate(values):
        m[j, :] = v
    Image.fromarray(m, mode="L").save(path)


def _voc(root: Path) -> tuple[str, dict, list[tuple[int, ...]]]:
    for k, vals in enumerate(([1, 15], [7])):   # aeroplane+person, car (labels from the masks)
        _img(root / "JPEGImages" / f"v{k}.png", k)
        _mask(root / "SegmentationClass" / f"v{k}.png", vals)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("v0\nv1\n")
    return "train", {"require_masks": True}, [(0, 14), (6,)]


def _synth(root: Path) -> tuple[str, dict, list[tuple[int, ...]]]:
    from doei.data.synth import SynthParams, write_synth

    write_synth(root, SynthParams(n_train=2, n_val=1, size=32))
    return "val", {"require_masks": True}, None     # labels: the generated masks' classes


def _coco(root: Path) -> tuple[str, dict, list[tuple[int, ...]]]:
    ids = ["COCO_val2014_000000000001", "COCO_val2014_000000000002"]
    for k, i in enumerate(ids):
        _img(root / "val2014" / f"{i}.jpg", k)
    (root / "cls_labels_val2014.json").write_text(json.dumps({ids[0]: [0, 2], ids[1]: [79]}))
    return "val", {}, [(0, 2), (79,)]


def _folder(root: Path) -> tuple[str, dict, list[tuple[int, ...]]]:
    for k in range(2):
        _img(root / "images" / f"f{k}.jpg", k)
    (root / "classes.txt").write_text("cat\ndog\n")
    (root / "labels.csv").write_text("id,labels\nf0,cat;dog\nf1,1\n")
    return None, {"classes_file": str(root / "classes.txt")}, [(0, 1), (1,)]


EXAMPLES = {"voc": _voc, "synth": _synth, "coco": _coco, "folder": _folder}


def test_builtin_kinds_are_registered_and_have_examples():
    assert set(BUILTIN) <= set(dataset_kinds())
    assert set(EXAMPLES) == set(BUILTIN)
    assert list(dataset_kinds()) == sorted(dataset_kinds())


@pytest.mark.parametrize("kind", dataset_kinds())
def test_every_registered_kind_builds(kind, tmp_path):
    if kind not in EXAMPLES:
        pytest.skip(f"dataset kind {kind!r} is not a built-in one: its own test file covers it")
    split, options, classes = EXAMPLES[kind](tmp_path / kind)
    ds = build_dataset(kind, tmp_path / kind, split, **options)
    assert len(ds) >= 1
    if classes is not None:
        assert [r.classes for r in ds.records] == classes
    assert ds.class_names == dataset_class_names(kind, tmp_path / kind)
    x, y, _ = ds[0]
    assert x.ndim == 3 and y.shape == (ds.num_classes,)
    spec = get_dataset_spec(kind)
    assert set(spec.config_options) <= set(spec.options)


def test_default_split_is_used_for_an_empty_split(tmp_path):
    root = tmp_path / "voc"
    _voc(root)
    (root / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("v1\n")
    assert build_dataset("voc", root, None).ids == ["v1"] == build_dataset("voc", root, "").ids


def test_unknown_kind_and_option_are_one_line_errors(tmp_path):
    with pytest.raises(DoeiError) as e:
        build_dataset("imagenet", tmp_path, None)
    msg = str(e.value)
    assert "\n" not in msg and "'imagenet'" in msg and all(k in msg for k in BUILTIN)
    with pytest.raises(DoeiError) as e:
        build_dataset("voc", tmp_path, "train", classes_file="c.txt")
    msg = str(e.value)
    assert "\n" not in msg and "'classes_file'" in msg and "labels_file" in msg and "mask_dir" in msg
    with pytest.raises(DoeiError, match="unknown"):
        dataset_class_names("imagenet")
    with pytest.raises(DoeiError, match="dataset folder"):
        dataset_class_names("synth")


def test_dataset_options_pass_only_what_the_kind_declares():
    from doei.pipeline_config import PipelineData
    from doei.train_config import DataSection

    d = DataSection(kind="voc", labels_file="l.json", mask_dir="")
    assert dataset_options(d) == {"labels": "auto", "labels_file": "l.json"}
    assert dataset_options(d, "folder") == {"labels_file": "l.json"}
    assert dataset_options(d, "coco") == {"labels_file": "l.json"}     # COCO's loader declares it: passed
    with pytest.raises(DoeiError, match=r"data.classes_file: dataset kind 'voc' does not take option 'classes_file' "
                                        r"\(it accepts: "):
        dataset_options(DataSection(kind="voc", classes_file="c.txt"))   # set for a loader without it: refused
    p = PipelineData(kind="synth", labels_file="l.json", mask_dir="m")
    assert dataset_options(p) == {"labels_file": "l.json", "mask_dir": "m"}
    with pytest.raises(DoeiError, match="'folder' does not take option 'labels'"):
        dataset_options({"kind": "folder", "mask_dir": "m", "labels": "xml"})


def test_dataset_options_travel_to_every_configured_dataset(tmp_path):
    """A loader's declared option is a key of any data section (train-cls, run, cam); others are refused."""
    from doei.cam.config import CamConfig
    from doei.config import apply_overrides, from_dict
    from doei.pipeline_config import pipeline_config_from_dict
    from doei.train_config import train_config_from_dict

    cfg = train_config_from_dict(apply_overrides({"data": {"kind": "coco", "root": "r"}}, ["data.image_dir=imgs"]))
    assert cfg.data.options == {"image_dir": "imgs"} and dataset_options(cfg.data)["image_dir"] == "imgs"
    assert cfg.to_dict()["data"]["options"] == {"image_dir": "imgs"}
    assert "options" not in train_config_from_dict({"data": {"root": "r"}}).to_dict()["data"]   # as recorded before
    with pytest.raises(DoeiError, match=r"data.image_dir: dataset kind 'voc' does not take option 'image_dir' "
                                        r"\(it accepts: labels, "):
        train_config_from_dict({"data": {"kind": "voc", "root": "r", "image_dir": "imgs"}})
    run = pipeline_config_from_dict({"data": {"kind": "coco", "root": "r", "image_dir": "imgs"}})
    assert run.data.options == {"image_dir": "imgs"}
    from doei.pipeline.stages import cam_config, classifier_config

    assert classifier_config(run).data.options == {"image_dir": "imgs"}
    assert cam_config(run).dataset_options == {"image_dir": "imgs"}
    with pytest.raises(DoeiError, match="'synth' does not take option 'image_dir'"):
        pipeline_config_from_dict({"data": {"kind": "synth", "root": "r", "image_dir": "imgs"}})
    cam = from_dict(CamConfig, apply_overrides({"data_root": "r"}, ["mask_dir=m"]))
    assert cam.validate().dataset_options == {"mask_dir": "m"}
    with pytest.raises(DoeiError, match="unknown key 'scale': neither a doei cam setting nor an option of dataset kind 'voc'"):
        from_dict(CamConfig, {"data_root": "r", "scale": 2}).validate()


def test_doei_eval_takes_ids_and_masks_from_the_dataset(tmp_path, capsys):
    from doei.cli import main
    from doei.data.synth import SynthParams, write_synth
    from doei.cam.io import save_cam

    root = tmp_path / "s"
    write_synth(root, SynthParams(seed=1, n_train=2, n_val=3, size=32))
    val = build_dataset("synth", root, "val")
    for r in val.records:
        m = val.mask(r.id)
        cls = np.asarray(r.classes, np.int64)
        save_cam(tmp_path / "cams" / f"{r.id}.npz", cls, np.stack([(m == c + 1) for c in cls]).astype(np.float32))
    base = ["eval", "--pred", str(tmp_path / "cams"), "--dataset", "synth", "--data-root", str(root),
            "--no-progress", "--betas", "0.5", "--mean", "present"]
    assert main([*base, "--split", "val", "--out", str(tmp_path / "m.json")]) == 0
    rep = json.loads((tmp_path / "m.json").read_text())
    assert rep["mIoU"] > 99.0
    capsys.readouterr()
    assert main(base) == 2 and "--dataset, --data-root and --split" in capsys.readouterr().err
    assert main([*base, "--split", "val", "--dataset-option", "image_dir=x"]) == 2
    assert "'synth' does not take option 'image_dir'" in capsys.readouterr().err


def test_registration_mistakes_are_refused():
    def loader(root, split, *, transform=None, labels_file=None):
        raise AssertionError

    with pytest.raises(ValueError, match="no parameter 'mask_dir'"):
        register_dataset("t_bad", options=("labels_file", "mask_dir"))(loader)
    with pytest.raises(ValueError, match="reserved"):
        register_dataset("t_bad", options=("root",))
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("voc")(loader)
    assert "t_bad" not in dataset_kinds()


def test_registry_loads_without_torch():
    code = ("import sys, doei.data.build, doei.pipeline_config; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ----------------------------------------------------------------- a dataset defined here, used everywhere
@pytest.fixture
def tiny_kind():
    """Kind ``tiny_test``: ``root/<id>.png`` images, labels from ``root/labels.json``, 3 classes."""
    from doei.data.common import read_labels_json
    from doei.data.dataset import ClassificationDataset, ImageRecord

    names = ("red", "green", "blue")

    @register_dataset("tiny_test", options=("labels_file", "mask_dir"), default_split="all", class_names=names)
    def tiny_dataset(root, split, *, transform=None, labels_file=None, mask_dir=None):
        root = Path(root)
        table = read_labels_json(Path(labels_file) if labels_file else root / "labels.json", 3, names)
        recs = [ImageRecord(i, root / f"{i}.png", table[i], Path(mask_dir) / f"{i}.png" if mask_dir else None)
                for i in sorted(table)]
        return ClassificationDataset(recs, names, transform=transform, name=f"tiny:{split}")

    yield "tiny_test"
    unregister_dataset("tiny_test")


def _tiny_root(tmp_path: Path) -> Path:
    root = tmp_path / "tiny"
    for k in range(2):
        _img(root / f"t{k}.png", k, (16, 16))
    (root / "labels.json").write_text(json.dumps({"t0": [0, 2], "t1": [1]}))
    (root / "other.json").write_text(json.dumps({"t0": [1], "t1": [1]}))
    return root


def test_a_registered_dataset_builds(tiny_kind, tmp_path):
    root = _tiny_root(tmp_path)
    assert tiny_kind in dataset_kinds()
    ds = build_dataset(tiny_kind, root, None)
    assert ds.name == "tiny:all" and [r.classes for r in ds.records] == [(0, 2), (1,)]
    assert build_dataset(tiny_kind, root, "x", labels_file=root / "other.json").records[0].classes == (1,)
    assert dataset_class_names(tiny_kind) == ["red", "green", "blue"]
    from doei.eval.class_names import class_names

    assert class_names(4) == ["background", "red", "green", "blue"]      # reports name its classes too
    assert class_names(21)[1] == "aeroplane" and class_names(81)[-1] == "toothbrush"
    with pytest.raises(DoeiError, match="option 'labels' unknown"):
        build_dataset(tiny_kind, root, None, labels="xml")


def test_a_registered_dataset_in_configs(tiny_kind, tmp_path):
    from doei.cam.config import CamConfig
    from doei.cam.generate import open_dataset
    from doei.config import from_dict
    from doei.data.build import dataset_from_config
    from doei.pipeline_config import PipelineData
    from doei.train_config import train_config_from_dict

    root = _tiny_root(tmp_path)
    cfg = train_config_from_dict({"data": {"kind": tiny_kind, "root": str(root), "train_split": "all",
                                           "labels_file": str(root / "other.json")}})
    ds = dataset_from_config(cfg.data, cfg.data.train_split)
    assert ds.ids == ["t0", "t1"] and ds.records[0].classes == (1,)      # the data section's labels_file
    cam = from_dict(CamConfig, {"dataset": tiny_kind, "data_root": str(root), "split": "all", "num_classes": 3})
    assert open_dataset(cam).records[0].classes == (0, 2)
    assert from_dict(PipelineData, {"kind": tiny_kind}, where="data").kind == tiny_kind


@pytest.mark.parametrize("make", ["train", "cam", "pipeline"])
def test_a_bad_kind_in_a_config_names_key_value_and_kinds(make):
    from doei.cam.config import CamConfig
    from doei.config import from_dict
    from doei.pipeline_config import pipeline_config_from_dict
    from doei.train_config import train_config_from_dict

    with pytest.raises(DoeiError) as e:
        if make == "train":
            train_config_from_dict({"data": {"kind": "imagenet", "root": "d"}}, where="c.yaml")
        elif make == "cam":
            from_dict(CamConfig, {"dataset": "imagenet"}, where="doei cam")
        else:
            pipeline_config_from_dict({"data": {"kind": "imagenet", "root": "d"}}, where="p.yaml")
    msg = str(e.value)
    key = {"train": "c.yaml.data.kind", "cam": "doei cam.dataset", "pipeline": "p.yaml.data.kind"}[make]
    assert "\n" not in msg and msg.startswith(key) and "'imagenet'" in msg and all(k in msg for k in BUILTIN)
