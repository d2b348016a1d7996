"""SIGKILL a ``doei train-cls`` run (6 epochs x 2 steps) at 6 seeded random moments, resume each time, and finish with the
weights, optimiser state and metrics log of an uninterrupted run; every file left after every kill
loads (checkpoints weights-only, logs line by line)."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from fault_common import check_readable, doei, kill_points, kill_resume_cycle

N_KILLS = 6


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from doei.data.synth import SynthParams, write_synth

    root = tmp_path_factory.mktemp("synth") / "synth"
    write_synth(root, SynthParams(seed=4, n_train=8, n_val=2, size=32))
    return root


def _config(root, out, path):
    cfg = {"model": {"name": "mctformer_v2_tiny_conv", "num_classes": 10, "img_size": 32, "drop_path_rate": 0.1,
                     "options": {"depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 8}},
           "data": {"kind": "synth", "root": str(root), "train_split": "train", "val_split": "val",
                    "transform": "simple", "crop_scale": [0.5, 1.0]},
           "optim": {"lr": 1e-3, "lr_batch_base": None, "warmup_epochs": 1.0},
           "doei": {"enabled": True, "layers": [1, 2]},
           "train": {"epochs": 6, "batch_size": 4, "seed": 3, "device": "cpu", "out_dir": str(out),
                     "progress": False, "log_every": 1, "amp": False}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _records(path):
    return [{k: v for k, v in json.loads(ln).items() if k != "train_seconds"} for ln in path.read_text().splitlines()]


def test_train_cls_survives_sigkill(synth_root, tmp_path):
    from doei.engine.checkpoint import load_checkpoint

    ref_cfg = _config(synth_root, tmp_path / "ref", tmp_path / "ref.yaml")
    rc, wall, err = doei(["train-cls", "--config", str(ref_cfg)], tmp_path / "ref.log")
    assert rc == 0, err
    out = tmp_path / "killed"
    cfg = _config(synth_root, out, tmp_path / "killed.yaml")

    def argv():
        return ["train-cls", "--config", str(cfg)] + (["--resume"] if (out / "checkpoint.pt").is_file() else [])

    # each attempt is killed a random 0-1.5 step-times after it logged its first new optimiser step
    delays = kill_points(seed=7, n=N_KILLS, wall=1.5 * wall / (6 * 2), lo=0.0, hi=1.0)

    def ready_for():
        start = load_checkpoint(out / "checkpoint.pt")["step"] if (out / "checkpoint.pt").is_file() else 0

        def ready():
            try:
                lines = (out / "metrics.jsonl").read_text().splitlines()
            except FileNotFoundError:
                return False
            for ln in lines:
                try:
                    if json.loads(ln).get("step", 0) > start:
                        return True
                except json.JSONDecodeError:
                    pass
            return False

        return ready

    hits, tmps = kill_resume_cycle(argv, out, delays, tmp_path / "killed.log", ready_for)
    print(f"train-cls: {hits}/{N_KILLS} kills hit a running process at {delays} s (uninterrupted {wall:.1f} s); "
          f"stray temporary files after a kill: {tmps}")
    assert hits >= 5
    a, b = load_checkpoint(tmp_path / "ref" / "checkpoint.pt"), load_checkpoint(out / "checkpoint.pt")
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"] == 5
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for i, s in a["optimizer"]["state"].items():
        for k, v in s.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["optimizer"]["state"][i][k])), (i, k)
    assert _records(tmp_path / "ref" / "metrics.jsonl") == _records(out / "metrics.jsonl")
    counts = check_readable(out)
    assert counts.get(".pt") == 1 and counts.get(".jsonl") == 1
