"""The public Python API checks its arguments at the call: a wrong type is a TypeError naming the function,
the argument and the type expected; a bad value a ValueError (or DoeiError) in one sentence."""
from __future__ import annotations

import re

import pytest
import torch

from doei.errors import DoeiError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from doei.models.registry import create_model

    torch.manual_seed(0)
    m = create_model("mctformer_v2_tiny_conv", num_classes=3, img_size=32, depth=2, embed_dim=32, num_heads=2)
    path = tmp_path_factory.mktemp("api") / "w.pth"
    torch.save({"model": m.state_dict()}, path)
    return m, path


def _timm_vit():
    timm = pytest.importorskip("timm")
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, depth=2)


def _cases(tiny):
    from doei.cam.api import AttentionCAM
    from doei.cam.config import CamConfig
    from doei.cam.generate import generate_cams
    from doei.engine.classifier import load_classifier
    from doei.models.registry import create_model
    from doei.models.timm_plugin import plug, unplug
    from doei.pipeline import run_pipeline

    m, path = tiny
    kw = {"name": "mctformer_v2_tiny_conv", "num_classes": 3, "img_size": 32,
          "options": {"depth": 2, "embed_dim": 32, "num_heads": 2}}
    return {
        "plug_a_name": (lambda: plug("deit_small_patch16_224"), TypeError, r"plug: model must be a torch\.nn\.Module"),
        "plug_a_dict_config": (lambda: plug(_timm_vit(), {"enabled": True}), TypeError, r"plug: cfg must be a .*DOEIConfig"),
        "unplug_a_string": (lambda: unplug("model"), TypeError, r"unplug: model must be a torch\.nn\.Module"),
        "attention_cam_a_name": (lambda: AttentionCAM("vit"), TypeError, r"AttentionCAM: model must be"),
        "attention_cam_zero_layers": (lambda: AttentionCAM(m, n_layers=0), ValueError, r"n_layers=0"),
        "attention_cam_inf_scale": (lambda: AttentionCAM(m, scales=[1.0, float("inf")]), ValueError, r"scales="),
        "load_classifier_negative_classes": (lambda: load_classifier(path, **{**kw, "num_classes": -1}), ValueError,
                                             r"load_classifier: num_classes=-1 is out of range"),
        "load_classifier_device_gpu": (lambda: load_classifier(path, **kw, device="gpu"), ValueError,
                                       r"load_classifier: device='gpu' is not a device"),
        "load_classifier_path_int": (lambda: load_classifier(3), TypeError, r"load_classifier: path must be a file path"),
        "create_model_not_a_name": (lambda: create_model(m), TypeError, r"create_model: name must be"),
        "create_model_zero_classes": (lambda: create_model("mctformer_v2_tiny_conv", num_classes=0), ValueError,
                                      r"create_model: num_classes=0"),
        "create_model_unknown": (lambda: create_model("nope"), DoeiError, r"unknown model 'nope'"),
        "run_pipeline_a_dict": (lambda: run_pipeline({"run": {}}), TypeError, r"PipelineConfig"),
        "generate_cams_a_path_as_model": (lambda: generate_cams("ckpt.pth", CamConfig(), "out", "ckpt.pth"), TypeError,
                                          r"generate_cams: model must be a torch\.nn\.Module"),
        "generate_cams_a_dict_config": (lambda: generate_cams(m, {"split": "train"}, "out", "ckpt.pth"), TypeError,
                                        r"generate_cams: cfg must be a doei\.cam\.config\.CamConfig"),
    }


API_CASES = ["plug_a_name", "plug_a_dict_config", "unplug_a_string", "attention_cam_a_name", "attention_cam_zero_layers",
             "attention_cam_inf_scale", "load_classifier_negative_classes", "load_classifier_device_gpu",
             "load_classifier_path_int", "create_model_not_a_name", "create_model_zero_classes", "create_model_unknown",
             "run_pipeline_a_dict", "generate_cams_a_path_as_model", "generate_cams_a_dict_config"]


@pytest.mark.parametrize("case", API_CASES)
def test_api_argument_is_checked_at_the_call(case, tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fn, exc, pattern = _cases(tiny)[case]
    with pytest.raises(exc) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and re.search(pattern, msg), msg
    assert not list(tmp_path.iterdir())                               # nothing written
