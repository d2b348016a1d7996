"""TS-CAM on a timm DeiT-III trunk (doei.models.tscam_timm): the family against timm and TS-CAM's
definition, and through doei train-cls, doei cam and doei eval with tiny options (no weights downloaded).
The registry's own tests (tests/test_models_registry.py) cover it too, without naming it."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from doei.core import DOEIConfig
from doei.errors import DoeiError
from doei.models.registry import create_model
from doei.models.timm_plugin import get_plug

TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2.0, "img_size": 32}


def _model(doei=None, seed=0):
    torch.manual_seed(seed)
    return create_model("tscam_deit3_small", num_classes=3, doei=doei, drop_path_rate=0.0, **TINY).eval()


def test_doei_off_is_the_timm_trunk_and_cams_follow_tscam():
    m = _model(DOEIConfig(enabled=False))
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    import timm

    torch.manual_seed(0)
    plain = timm.create_model("deit3_small_patch16_224", pretrained=False, num_classes=0, drop_path_rate=0.0,
                              dynamic_img_size=True, dynamic_img_pad=True,
                              **{k: v for k, v in TINY.items()}).eval()
    plain.load_state_dict(m.trunk.state_dict())
    with torch.no_grad():
        assert torch.equal(plain.forward_features(x), m.trunk.forward_features(x))     # the plug changes nothing
        out = m.forward_cams(x)
        # TS-CAM by hand: Σ over all blocks of the cls->patch attention (recorded by the plug) x head map
        p = get_plug(m.trunk)
        with p.recording(range(1, 3)):
            m(x)
            a = sum(p.recorded[i] for i in (1, 2))[:, 0, 1:].reshape(2, 1, 2, 3)
    assert out.cams.shape == (2, 3, 2, 3) and torch.allclose(out.cams, a * out.head_out, atol=1e-6)
    assert torch.allclose(out.logits, out.head_out.mean(dim=(2, 3)))
    on = _model(DOEIConfig(enabled=True))
    on.load_state_dict(m.state_dict())
    with torch.no_grad():
        assert not torch.equal(on(x), m(x))                                            # DOEI acts


def test_pretrained_trunk_weights_load_and_the_head_stays(tmp_path):
    m, other = _model(seed=0), _model(seed=1)
    sd = {f"{k}": v for k, v in m.trunk.state_dict().items()}
    sd["head.weight"] = torch.zeros(1000, 32)                      # an ImageNet classifier, dropped
    torch.save(sd, tmp_path / "w.pth")
    assert other.load_pretrained(tmp_path / "w.pth") == ["head.weight", "head.bias"]
    assert all(torch.equal(v, other.trunk.state_dict()[k]) for k, v in m.trunk.state_dict().items())
    torch.save({"blocks.0.norm1.weight": torch.ones(32)}, tmp_path / "bad.pth")
    with pytest.raises(DoeiError, match="not weights of this trunk"):
        other.load_pretrained(tmp_path / "bad.pth")


def test_cam_options_it_does_not_read_are_refused():
    from doei.cam.extractor import cam_source_for

    with pytest.raises(DoeiError, match="CAM option n_layers = 2: TimmTSCAM"):
        cam_source_for(_model(), n_layers=2)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from doei.data.synth import SynthParams, write_synth

    root = tmp_path_factory.mktemp("synth") / "s"
    write_synth(root, SynthParams(seed=2, n_train=8, n_val=3, size=32))
    return root


def test_train_cls_cam_and_eval_through_the_cli(synth, tmp_path):
    from doei.cli import main

    torch.set_num_threads(1)
    cfg = {"model": {"name": "tscam_deit3_small", "num_classes": 10, "img_size": 32, "drop_path_rate": 0.0,
                     "options": {k: v for k, v in TINY.items() if k != "img_size"}},
           "data": {"kind": "synth", "root": str(synth), "train_split": "train", "transform": "resize"},
           "optim": {"lr": 1e-3, "lr_batch_base": None, "warmup_epochs": 0.0},
           "doei": {"enabled": True, "cpdo": False},
           "train": {"epochs": 1, "batch_size": 4, "device": "cpu", "amp": False, "out_dir": str(tmp_path / "run"),
                     "progress": False}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train-cls", "--config", str(tmp_path / "c.yaml")]) == 0
    ckpt = tmp_path / "run" / "checkpoint.pt"
    assert main(["cam", "--checkpoint", str(ckpt), "--dataset", "synth", "--data-root", str(synth), "--split", "val",
                 "--out", str(tmp_path / "cams"), "--no-progress"]) == 0
    st = json.loads((tmp_path / "cams" / "cam_settings.json").read_text())
    assert (st["model"], st["kind"], st["n_layers"]) == ("tscam_deit3_small", "semantic", None)
    assert main(["eval", "--pred", str(tmp_path / "cams"), "--dataset", "synth", "--data-root", str(synth),
                 "--split", "val", "--betas", "0.5", "--no-progress", "--out", str(tmp_path / "m.json")]) == 0
    assert 0 <= json.loads((tmp_path / "m.json").read_text())["mIoU"] <= 100
