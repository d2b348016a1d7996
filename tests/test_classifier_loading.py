"""One model wherever it is loaded: ``doei cam``, ``doei run``'s cam stage, the study/demo loader and the
Python API all rebuild a training checkpoint through :func:`doei.engine.classifier.load_classifier`.

The setting: a tiny MCTformer-V2 trained one epoch WITH DOEI (so its weights were learned with DOEI in the
forward pass). Before the fix ``doei cam`` built the network from its own flags without DOEI.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from doei.cli import main
from doei.core import DOEIConfig
from doei.engine.classifier import load_classifier, stored_doei
from doei.errors import DoeiError

SIZE = 32
OPTIONS = {"depth": 2, "embed_dim": 32, "num_heads": 2}
DOEI = {"enabled": True, "af_p2c": 2.0, "layers": [1]}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data root, DOEI-trained checkpoint, baseline-trained checkpoint, root)."""
    from doei.data.synth import SynthParams, write_synth
    from doei.engine.train_cls import train
    from doei.train_config import train_config_from_dict

    root = tmp_path_factory.mktemp("loading")
    data = root / "synth"
    write_synth(data, SynthParams(seed=5, n_train=4, n_val=2, size=SIZE))
    ckpts = {}
    for tag, doei in (("doei", DOEI), ("base", {})):
        cfg = train_config_from_dict({
            "model": {"name": "mctformer_v2_tiny_conv", "num_classes": 10, "img_size": SIZE, "drop_path_rate": 0.0,
                      "options": OPTIONS},
            "data": {"kind": "synth", "root": str(data), "train_split": "train", "transform": "resize"},
            "optim": {"lr": 1e-3, "lr_batch_base": None, "warmup_epochs": 0.0},
            "doei": doei,
            "train": {"epochs": 1, "batch_size": 4, "amp": False, "progress": False, "device": "cpu",
                      "out_dir": str(root / tag)}})
        ckpts[tag] = train(cfg, log=lambda *_: None).checkpoint
    return data, ckpts["doei"], ckpts["base"], root


def _cam_argv(data: Path, ckpt: Path, out: Path, *extra: str) -> list[str]:
    return ["cam", "--dataset", "synth", "--data-root", str(data), "--split", "train", "--checkpoint", str(ckpt),
            "--out", str(out), "--scales", "1.0", "--no-flip", "--n-layers", "2", "--cam-dtype", "float32",
            "--no-progress", *extra]


def _cam_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.npz"))}


def test_doei_cam_and_doei_run_write_identical_cams(trained, tmp_path):
    data, ckpt, _, _ = trained
    assert main(_cam_argv(data, ckpt, tmp_path / "cam")) == 0
    pipe = {"run": {"out_dir": str(tmp_path / "run"), "device": "cpu", "progress": False,
                    "cls_checkpoint": str(ckpt), "stages": ["cam"]},
            "data": {"kind": "synth", "root": str(data), "train_split": "train", "val_split": "val", "num_classes": 10},
            "cam": {"scales": [1.0], "flip": False, "cam_dtype": "float32", "n_layers": 2},
            "refine": {"train": {"cam_dir": str(tmp_path / "run_cams")}}}
    (tmp_path / "pipe.yaml").write_text(yaml.safe_dump(pipe))
    assert main(["run", "--config", str(tmp_path / "pipe.yaml")]) == 0
    a, b = _cam_files(tmp_path / "cam"), _cam_files(tmp_path / "run_cams")
    assert a and a == b
    settings = json.loads((tmp_path / "cam" / "cam_settings.json").read_text())
    assert settings["doei"]["enabled"] is True and settings["doei"]["af_p2c"] == 2.0 and settings["doei"]["layers"] == [1]
    assert settings["classifier"] == {"source": "training checkpoint", "doei_source": "checkpoint",
                                      "doei_enabled": True, "img_size": SIZE, "options": OPTIONS}
    assert settings["model"] == "mctformer_v2_tiny_conv" and settings["num_classes"] == 10


def test_the_cams_are_those_of_the_doei_forward(trained, tmp_path, capsys):
    """Pins the original bug: the CAM files differ from those of the same weights without DOEI, and the
    explicit ``--doei off`` override reproduces the no-DOEI ones (and says so in the settings)."""
    data, ckpt, _, _ = trained
    assert main(_cam_argv(data, ckpt, tmp_path / "on")) == 0
    capsys.readouterr()
    assert main(_cam_argv(data, ckpt, tmp_path / "off", "--doei", "off")) == 0
    err = capsys.readouterr().err
    assert "doei cam: warning: " in err and "trained with DOEI on, run with DOEI off (override_doei)" in err
    on, off = _cam_files(tmp_path / "on"), _cam_files(tmp_path / "off")
    assert on.keys() == off.keys() and on != off
    settings = json.loads((tmp_path / "off" / "cam_settings.json").read_text())
    assert settings["doei"]["enabled"] is False and settings["classifier"]["doei_source"] == "override"
    assert settings["doei"]["af_p2c"] == 2.0           # the stored knobs, only switched off


def test_python_api_study_loader_and_cam_build_the_same_network(trained):
    from doei.engine.train_cls import load_trained_model

    _, ckpt, _, _ = trained
    a, spec = load_classifier(ckpt)
    b, _ = load_trained_model(ckpt)
    assert spec.doei == DOEIConfig(**DOEI) and spec.source == "training checkpoint"
    torch.manual_seed(0)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert all(torch.equal(u, v) for u, v in zip(a(x), b(x)))
    assert stored_doei(ckpt) == DOEIConfig(**DOEI)


@pytest.mark.parametrize("extra, pattern", [
    (["--model", "tscam_tiny_conv"], r"model = 'tscam_tiny_conv' disagrees with .*checkpoint\.pt.*mctformer_v2_tiny_conv"),
    (["--num-classes", "20"], r"dataset has 10 classes but the classifier has 20"),    # the cheap check first
    (["--set", "model_kwargs.depth=3"], r"model_kwargs\.depth = 3 disagrees with .*depth = 2"),
    (["--set", "doei.enabled=false"], r"doei\.af_p2c = 1\.0 disagrees .*override_doei"),
])
def test_stated_flags_that_disagree_with_the_checkpoint_are_refused(trained, tmp_path, capsys, extra, pattern):
    import re

    data, ckpt, _, _ = trained
    assert main(_cam_argv(data, ckpt, tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("doei cam: error: ") and re.search(pattern, err), err
    assert not (tmp_path / "out").exists()


def test_flags_that_agree_are_accepted(trained, tmp_path):
    data, ckpt, _, _ = trained
    argv = _cam_argv(data, ckpt, tmp_path / "out", "--model", "mctformer_v2_tiny_conv", "--num-classes", "10",
                     "--set", "model_kwargs.depth=2")
    assert main(argv) == 0


def test_external_weights_with_a_doei_section_run_with_doei(trained, tmp_path):
    """Official weights (a bare state dict) say nothing about DOEI: a ``doei:`` section turns it on."""
    data, ckpt, _, _ = trained
    sd = torch.load(ckpt, weights_only=True)["model"]
    torch.save({"model": sd}, tmp_path / "official.pth")
    cfg = {"model": "mctformer_v2_tiny_conv", "model_kwargs": {"img_size": SIZE, **OPTIONS}, "doei": DOEI}
    (tmp_path / "cam.yaml").write_text(yaml.safe_dump(cfg))
    assert main(_cam_argv(data, tmp_path / "official.pth", tmp_path / "ext", "--config", str(tmp_path / "cam.yaml"))) == 0
    assert main(_cam_argv(data, ckpt, tmp_path / "ours")) == 0
    assert _cam_files(tmp_path / "ext") == _cam_files(tmp_path / "ours")
    settings = json.loads((tmp_path / "ext" / "cam_settings.json").read_text())
    assert settings["classifier"]["source"] == "weights file" and settings["doei"]["enabled"] is True


def test_run_with_a_checkpoint_of_another_class_count_is_one_line(trained, tmp_path, capsys):
    data, ckpt, _, root = trained
    pipe = {"run": {"out_dir": str(tmp_path / "run"), "device": "cpu", "progress": False,
                    "cls_checkpoint": str(ckpt), "stages": ["cam"]},
            "data": {"kind": "voc", "root": str(data), "train_split": "train", "val_split": "val", "num_classes": 20}}
    (tmp_path / "pipe.yaml").write_text(yaml.safe_dump(pipe))
    assert main(["run", "--config", str(tmp_path / "pipe.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("doei run: error: "), err


def test_load_classifier_refuses_a_stated_class_count_that_differs(trained):
    _, ckpt, _, _ = trained
    with pytest.raises(DoeiError, match=r"cam: num_classes = 20 disagrees with .*num_classes = 10"):
        load_classifier(ckpt, num_classes=20, where="cam: ")


def test_load_classifier_external_needs_a_class_count(trained, tmp_path):
    _, ckpt, _, _ = trained
    torch.save({"model": torch.load(ckpt, weights_only=True)["model"]}, tmp_path / "w.pth")
    with pytest.raises(DoeiError, match="num_classes: not given"):
        load_classifier(tmp_path / "w.pth", name="mctformer_v2_tiny_conv", options={"img_size": SIZE, **OPTIONS})
    model, spec = load_classifier(tmp_path / "w.pth", name="mctformer_v2_tiny_conv", default_num_classes=10,
                                  options={"img_size": SIZE, **OPTIONS})
    assert spec.num_classes == 10 and spec.doei.enabled is False and np.isfinite(
        model(torch.zeros(1, 3, SIZE, SIZE))[0].detach().numpy()).all()


def test_doei_settings_that_do_nothing_are_said(tmp_path, capsys):
    """A doei section without ``enabled: true`` (silently off before) and CPDO with one class token (inert
    beside PPDO) each print one ``warning:`` line; the run goes on."""
    import warnings

    from doei.engine.classifier import build_classifier
    from doei.errors import DoeiWarning
    from doei.train_config import train_config_from_dict

    base = {"model": {"name": "tscam_tiny_conv", "num_classes": 10, "img_size": SIZE, "options": OPTIONS},
            "data": {"root": str(tmp_path)}}
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        cfg = train_config_from_dict({**base, "doei": {"af_p2c": 2.0}})
        assert cfg.doei.enabled is False
        build_classifier(train_config_from_dict({**base, "doei": {"enabled": True}}))
    msgs = [str(w.message) for w in got if issubclass(w.category, DoeiWarning)]
    assert any("sets ['af_p2c'] but not enabled: true, so DOEI is OFF" in m for m in msgs), msgs
    assert any("CPDO is on but does nothing (the model has 1 class token" in m for m in msgs), msgs


def test_a_cam_folder_refuses_a_retrained_checkpoint_at_the_same_path(trained, tmp_path, capsys):
    """The settings record the checkpoint's SHA-256, not only its path: a retrained file at the same path
    cannot silently continue (or be skipped into) a folder of the old classifier's CAMs."""
    import shutil

    data, ckpt, _, _ = trained
    path = tmp_path / "classifier.pt"
    shutil.copy(ckpt, path)
    assert main(_cam_argv(data, path, tmp_path / "cams")) == 0
    obj = torch.load(ckpt, weights_only=True)          # "retrained": same settings, other weights
    obj["model"]["head.weight"] = obj["model"]["head.weight"] + 0.01
    torch.save(obj, path)
    capsys.readouterr()
    assert main(_cam_argv(data, path, tmp_path / "cams")) == 2
    assert "checkpoint_sha256 was" in capsys.readouterr().err


def test_the_heldout_readout_is_doei_cams_writer_with_relu_minmax(trained, tmp_path):
    """The demo/study read-out (cam.heldout.write_cams) goes through generate_cams; its files equal the
    label-masked sum of the views, ReLU'd and min-maxed per class, computed here directly."""
    from doei.cam.extractor import CamExtractor, minmax_labelled
    from doei.cam.heldout import write_cams
    from doei.cam.io import load_cam
    from doei.data.build import build_dataset
    from doei.data.transforms import cam_transform

    data, ckpt, _, _ = trained
    ids = write_cams(ckpt, data, tmp_path / "cams", cam_layers=2, batch=2, progress=False)
    model, _ = load_classifier(ckpt)
    ext = CamExtractor(model, scales=(1.0,), flip=True, n_layers=2, patch_refine=False, normalize=False)
    ds = build_dataset("synth", data, "val", transform=cam_transform())
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.stack([ds[i][1] for i in range(len(ds))])
    want = minmax_labelled(torch.relu(ext(x, y)), y)
    for i, iid in enumerate(ids):
        classes, cams = load_cam(tmp_path / "cams" / f"{iid}.npz")
        ref = want[i][torch.as_tensor(classes)].numpy().astype(np.float16)
        assert np.array_equal(cams.astype(np.float16), ref), iid
    assert json.loads((tmp_path / "cams" / "cam_settings.json").read_text())["normalize"] == "relu_minmax"
