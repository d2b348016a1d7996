"""Classifier training: bit-for-bit resume, seeded determinism, checkpoints, config errors, CLI."""
from __future__ import annotations

import json

import pytest
import torch

from doei.cli import main as cli_main
from doei.engine.checkpoint import load_checkpoint
from doei.engine.train_cls import load_trained_model, train
from doei.errors import DoeiError
from doei.train_config import train_config_from_dict

TINY_MODEL = {"name": "mctformer_v2_tiny_conv", "num_classes": 10, "img_size": 32, "drop_path_rate": 0.1,
              "options": {"depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 8}}


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from doei.data.synth import SynthParams, write_synth

    root = tmp_path_factory.mktemp("synth") / "synth"
    write_synth(root, SynthParams(seed=3, n_train=10, n_val=4, size=32))
    return root


def tiny_cfg(root, out_dir, **train_kw):
    d = {
        "model": dict(TINY_MODEL),
        "data": {"kind": "synth", "root": str(root), "train_split": "train", "val_split": "val",
                 "transform": "simple", "crop_scale": [0.5, 1.0]},
        "optim": {"lr": 1e-3, "lr_batch_base": None, "warmup_epochs": 1.0},
        "doei": {"enabled": True, "layers": [1, 2]},
        "train": {"epochs": 2, "batch_size": 4, "seed": 7, "device": "cpu", "out_dir": str(out_dir),
                  "progress": False, "log_every": 1, **train_kw},
    }
    return train_config_from_dict(d)


def _epoch_records(path):
    recs = [json.loads(ln) for ln in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in recs]


def test_resume_is_bit_for_bit(synth_root, tmp_path):
    quiet = lambda *_: None  # noqa: E731
    straight = train(tiny_cfg(synth_root, tmp_path / "a"), log=quiet)
    assert straight.epochs_run == 2
    first = train(tiny_cfg(synth_root, tmp_path / "b"), log=quiet, stop_after=1)
    assert first.epochs_run == 1 and load_checkpoint(first.checkpoint)["epoch"] == 0
    resumed = train(tiny_cfg(synth_root, tmp_path / "b"), resume=True, log=quiet)
    assert resumed.epochs_run == 1
    a, b = load_checkpoint(straight.checkpoint), load_checkpoint(resumed.checkpoint)
    assert a["step"] == b["step"] == 2 * (10 // 4)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"])
    # the metrics log of the resumed run equals the straight run's (times aside)
    assert _epoch_records(tmp_path / "a" / "metrics.jsonl") == _epoch_records(tmp_path / "b" / "metrics.jsonl")
    # resuming a finished run trains nothing
    assert train(tiny_cfg(synth_root, tmp_path / "b"), resume=True, log=quiet).epochs_run == 0


def test_training_moves_weights_and_logs(synth_root, tmp_path):
    cfg = tiny_cfg(synth_root, tmp_path / "r", epochs=1)
    res = train(cfg, log=lambda *_: None)
    ckpt = torch.load(res.checkpoint, map_location="cpu", weights_only=True)  # no pickle needed
    assert set(ckpt) >= {"model", "optimizer", "epoch", "step", "config", "rng", "metrics"}
    model, cfg2 = load_trained_model(res.checkpoint)
    stored = cfg2.to_dict()["doei"]
    assert stored["enabled"] is True and stored["layers"] == [1, 2] and "sf_c2c" in stored  # completed record
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    cls, patch = model(x)
    assert cls.shape == patch.shape == (2, 10) and torch.isfinite(cls).all()
    recs = [json.loads(ln) for ln in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if r["kind"] == "step"]
    epochs = [r for r in recs if r["kind"] == "epoch"]
    assert len(steps) == 2 and len(epochs) == 1
    assert all(r["loss"] > 0 and abs(r["loss"] - r["loss_cls"] - r["loss_patch"]) < 1e-6 for r in steps)
    assert 0 <= epochs[0]["val_mAP"] <= 100 and 0 <= epochs[0]["val_F1"] <= 100
    # the lr grows during warm-up
    assert steps[0]["lr"] < steps[1]["lr"]


def test_resume_refuses_changed_config_and_missing_checkpoint(synth_root, tmp_path):
    train(tiny_cfg(synth_root, tmp_path / "c"), log=lambda *_: None, stop_after=1)
    changed = tiny_cfg(synth_root, tmp_path / "c")
    changed.optim.lr = 2e-3
    with pytest.raises(DoeiError, match="optim.lr"):
        train(changed, resume=True, log=lambda *_: None)
    with pytest.raises(DoeiError, match="no checkpoint"):
        train(tiny_cfg(synth_root, tmp_path / "nothing"), resume=True, log=lambda *_: None)


def test_num_classes_must_match_dataset(synth_root, tmp_path):
    cfg = tiny_cfg(synth_root, tmp_path / "d")
    cfg.model.num_classes = 20
    with pytest.raises(DoeiError, match="num_classes"):
        train(cfg, log=lambda *_: None)


def test_config_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: mctformer_v2_tiny_conv}\ntrain: {epochz: 3}\n")
    assert cli_main(["train-cls", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "epochz" in err and len(err.splitlines()) == 1
    bad.write_text("data: {root: x}\noptim: {lr: -1}\n")
    assert cli_main(["train-cls", "--config", str(bad)]) == 2
    assert "optim.lr" in capsys.readouterr().err
    bad.write_text("data: {root: x}\ndoei: {enabled: true, alpha: 3}\n")
    assert cli_main(["train-cls", "--config", str(bad)]) == 2
    assert "alpha" in capsys.readouterr().err
    assert cli_main(["train-cls", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_cli_trains_and_resumes(synth_root, tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(tiny_cfg(synth_root, tmp_path / "cli", epochs=1).to_dict()))
    assert cli_main(["train-cls", "--config", str(cfg), "--set", "train.eval_every=1"]) == 0
    assert (tmp_path / "cli" / "checkpoint.pt").is_file() and (tmp_path / "cli" / "config.yaml").is_file()
    assert "done:" in capsys.readouterr().out
    # a changed seed cannot resume
    assert cli_main(["train-cls", "--config", str(cfg), "--resume", "--set", "train.seed=8"]) == 2


def test_checkpoint_records_every_doei_knob_and_old_partial_records_warn(tmp_path):
    """The stored config names every DOEIConfig field (a later default change cannot alter what an old
    checkpoint rebuilds); a checkpoint with a partial DOEI record still loads, with a warning."""
    import warnings
    from dataclasses import fields

    from doei.core import DOEIConfig
    from doei.engine.checkpoint import save_checkpoint
    from doei.engine.classifier import build_classifier as build_model

    cfg = train_config_from_dict({"model": {"name": "mctformer_v2_tiny_conv", "num_classes": 3, "img_size": 32,
                                            "options": {"depth": 2, "embed_dim": 32, "num_heads": 2}},
                                  "data": {"kind": "synth", "root": str(tmp_path)},
                                  "doei": {"enabled": True, "cpdo": False}})
    assert isinstance(cfg.doei, DOEIConfig) and set(cfg.to_dict()["doei"]) == {f.name for f in fields(DOEIConfig)}
    assert cfg.doei.cpdo is False and cfg.doei.sf_c2c == DOEIConfig().sf_c2c         # typed, every field recorded
    assert train_config_from_dict({"data": {"root": "x"}}).doei == DOEIConfig()   # empty = DOEI off
    model = build_model(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def save(path, config):
        save_checkpoint(path, model=model, optimizer=opt, epoch=1, step=1, config=config)

    save(tmp_path / "full.pt", cfg.to_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rebuilt, rcfg = load_trained_model(tmp_path / "full.pt")
    assert rcfg.doei == cfg.doei
    old = cfg.to_dict()
    old["doei"] = {"enabled": True, "ppdo": True, "cpdo": True, "hfa": True}
    save(tmp_path / "partial.pt", old)
    with pytest.warns(UserWarning, match="predate"):
        load_trained_model(tmp_path / "partial.pt")
