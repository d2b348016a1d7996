"""Multi-process runs on CPU (gloo): sharding helpers, DDP training parity with one process, sharded CAMs.

Parity model: a tiny MCTformer-V2 with the plain patch-embedding stem (no BatchNorm: BN in the conv
stem would compute per-rank batch statistics on CPU, where SyncBatchNorm is unavailable), no
drop-path and the deterministic ``resize`` transform, so that the only difference between 2 × 2
samples and 1 × 4 samples per step is the floating-point order of the gradient sum.
Tolerance: atol 1e-6 on every weight after 6 steps (observed max |diff| is printed).
"""
from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from doei.engine.distributed import global_batch_indices, shard
from doei.errors import DoeiError
from doei.models.registry import register_model
from tests.dist_common import free_port, launch, launch_cli

ATOL = 1e-6


@register_model
def ddp_test_mctformer_patch(num_classes: int = 10, doei=None, img_size: int = 32, drop_rate: float = 0.0,
                             drop_path_rate: float = 0.0):
    """A BN-free tiny MCTformer-V2 (patch stem) for the parity test."""
    from doei.models.mctformer import MCTformerV2

    return MCTformerV2(num_classes=num_classes, img_size=img_size, patch_size=8, embed_dim=32, depth=2,
                       num_heads=2, mlp_ratio=2.0, qkv_bias=True, drop_rate=0.0, drop_path_rate=0.0,
                       stem="patch", doei=doei)


# ------------------------------------------------------------------------------------ pure helpers
def test_shard_is_disjoint_covering_and_deterministic():
    items = list(range(11))
    for strided in (True, False):
        parts = [shard(items, r, 3, strided=strided) for r in range(3)]
        assert sorted(sum(parts, [])) == items
        assert [len(p) for p in parts] == [4, 4, 3]
        assert parts == [shard(items, r, 3, strided=strided) for r in range(3)]
    assert shard(items, 1, 3) == [1, 4, 7, 10]
    assert shard(items, 1, 3, strided=False) == [4, 5, 6, 7]
    with pytest.raises(DoeiError, match="rank 3 outside"):
        shard(items, 3, 3)


def test_global_batch_indices_rebuild_the_single_process_batches():
    order = torch.randperm(23, generator=torch.Generator().manual_seed(0)).tolist()
    B, W = 6, 3
    per_rank = [global_batch_indices(order, B, r, W) for r in range(W)]
    b = B // W
    for i in range(len(order) // B):
        union = sum((p[i * b:(i + 1) * b] for p in per_rank), [])
        assert union == order[i * B:(i + 1) * B]
    assert global_batch_indices(order, B, 0, 1) == order[: (23 // B) * B]
    with pytest.raises(DoeiError, match="divisible by the number of processes"):
        global_batch_indices(order, 5, 0, 2)
    assert global_batch_indices(order[:4], 6, 1, 2, drop_last=False) == order[2:4]
    with pytest.raises(DoeiError, match="split evenly"):
        global_batch_indices(order[:5], 6, 1, 2, drop_last=False)


# ------------------------------------------------------------------------------------ DDP training
@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from doei.data.synth import SynthParams, write_synth

    root = tmp_path_factory.mktemp("synth") / "synth"
    write_synth(root, SynthParams(seed=5, n_train=12, n_val=4, size=32))
    return root


def _cfg_dict(root: Path, out_dir: Path) -> dict:
    return {
        "model": {"name": "ddp_test_mctformer_patch", "num_classes": 10, "img_size": 32, "drop_path_rate": 0.0},
        "data": {"kind": "synth", "root": str(root), "train_split": "train", "val_split": "val",
                 "transform": "resize"},
        "optim": {"lr": 1e-3, "lr_batch_base": None, "warmup_epochs": 0.5},
        "doei": {"enabled": True, "layers": [1, 2]},
        "train": {"epochs": 2, "batch_size": 4, "seed": 11, "device": "cpu", "out_dir": str(out_dir),
                  "progress": False, "log_every": 1, "amp": False},
    }


def _ddp_train(cfg: dict) -> None:
    """One rank: train, "killed" after epoch 1, then resumed under DDP."""
    from doei.engine.train_cls import train
    from doei.train_config import train_config_from_dict

    quiet = lambda *_: None  # noqa: E731
    train(train_config_from_dict(cfg), log=quiet, stop_after=1)          # "killed" after epoch 1 ...
    train(train_config_from_dict(cfg), resume=True, log=quiet)           # ... and resumed under DDP


def test_ddp_two_processes_match_one_process(synth_root, tmp_path):
    from doei.engine.checkpoint import load_checkpoint
    from doei.engine.train_cls import train
    from doei.train_config import train_config_from_dict

    assert "WORLD_SIZE" not in os.environ
    single = train(train_config_from_dict(_cfg_dict(synth_root, tmp_path / "one")), log=lambda *_: None)
    import torch._inductor  # noqa: F401 - imported once here rather than in each forked rank

    # fork: the ranks start in milliseconds from this (torch-importing) process; the model is registered here
    launch(2, _ddp_train, _cfg_dict(synth_root, tmp_path / "two"))

    a, b = load_checkpoint(single.checkpoint), load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    assert a["step"] == b["step"] == 2 * (12 // 4)
    assert a["model"].keys() == b["model"].keys()                       # no "module." prefixes
    diffs = {k: (v - b["model"][k]).abs().max().item() for k, v in a["model"].items()}
    worst = max(diffs.values())
    print(f"DDP parity: max |w_1proc - w_2proc| = {worst:.3g} over {len(diffs)} tensors")
    assert worst <= ATOL, max(diffs, key=diffs.get)
    # the logged (rank-averaged) losses are the global-batch losses; only rank 0 wrote the log
    rec = lambda p: [json.loads(ln) for ln in p.read_text().splitlines()]  # noqa: E731
    la, lb = rec(tmp_path / "one" / "metrics.jsonl"), rec(tmp_path / "two" / "metrics.jsonl")
    assert [r["kind"] for r in la] == [r["kind"] for r in lb] and len(la) == 2 * 3 + 2
    for ra, rb in zip(la, lb):
        assert ra["step"] == rb["step"] and abs(ra["loss"] - rb["loss"]) < 1e-5
        if "val_mAP" in ra:
            assert abs(ra["val_mAP"] - rb["val_mAP"]) < 1e-3
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["checkpoint.pt", "config.yaml", "metrics.jsonl"]


# ------------------------------------------------------------------------------------ sharded CAMs
def test_sharded_cam_generation_is_byte_identical(synth_root, tmp_path):
    from doei.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("mctformer_v2_tiny_conv", num_classes=10, img_size=32, depth=2, embed_dim=32, num_heads=2)
    torch.save({"model": model.state_dict()}, tmp_path / "ckpt.pth")
    cfg = tmp_path / "cam.yaml"
    cfg.write_text("model_kwargs: {img_size: 32, depth: 2, embed_dim: 32, num_heads: 2}\n")
    base = ["cam", "--config", str(cfg), "--model", "mctformer_v2_tiny_conv", "--num-classes", "10",
            "--dataset", "synth", "--data-root", str(synth_root), "--split", "train", "--checkpoint",
            str(tmp_path / "ckpt.pth"), "--scales", "1.0,0.5", "--n-layers", "2", "--save-seeds", "--crf-alphas", "1",
            "--no-progress", "--device", "cpu"]
    runs = {}
    for nproc in (1, 2):
        out = tmp_path / f"out{nproc}"
        launch_cli(nproc, [*base, "--out", str(out)])
        runs[nproc] = out
    files1 = sorted(p.relative_to(runs[1]) for p in runs[1].rglob("*") if p.is_file())
    files2 = sorted(p.relative_to(runs[2]) for p in runs[2].rglob("*") if p.is_file())
    assert files1 == files2
    data = [f for f in files1 if f.suffix in (".npz", ".png")]
    assert len(data) == 12 * 3                                             # npz + seed + CRF per image
    for f in data:
        assert filecmp.cmp(runs[1] / f, runs[2] / f, shallow=False), f
    assert not [p for p in runs[2].rglob(".tmp-*")]
    log = [json.loads(ln) for ln in (runs[2] / "cam_log.jsonl").read_text().splitlines()]
    ranks = [r["rank"] for r in log if r["event"] == "image"]
    assert sorted(ranks) == [0] * 6 + [1] * 6                               # each image computed once, split
    assert [r["event"] for r in log if r["event"] != "image"] == ["start", "end"]


def test_torchrun_smoke_train_cls(synth_root, tmp_path):
    """The real launcher: ``torchrun --nproc_per_node 2 -m doei.cli train-cls`` (gloo) runs and only
    rank 0 writes (a registered test model cannot cross into torchrun's fresh interpreters, so this
    uses the tiny conv-stem model: BatchNorm statistics are per rank, no parity asserted here)."""
    import yaml

    cfg = _cfg_dict(synth_root, tmp_path / "tr")
    cfg["model"] = {"name": "mctformer_v2_tiny_conv", "num_classes": 10, "img_size": 32, "drop_path_rate": 0.0,
                    "options": {"depth": 2, "embed_dim": 16, "num_heads": 2, "patch_size": 8}}
    cfg["train"]["epochs"] = 1
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                           "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "doei.cli", "train-cls",
                           "--config", str(tmp_path / "c.yaml")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("2 processes x 2 images per step") == 1         # the loop logs on rank 0 only
    assert proc.stdout.count("epoch 1/1: loss") == 1
    assert proc.stdout.count("done: ") == 1                                   # train-cls's final line: rank 0
    assert sorted(p.name for p in (tmp_path / "tr").iterdir()) == ["checkpoint.pt", "config.yaml", "metrics.jsonl"]


# ------------------------------------------------------------------------------------ SGD loop (AffinityNet/DeepLab)
def _sgd_fit(out_dir: str) -> None:
    from torch.utils.data import TensorDataset

    from doei.engine.sgd_loop import fit

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(12, 3, 8, 8, generator=g), torch.randn(12, 2, generator=g))
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2))

    def loss_fn(m, batch, device):
        loss = torch.nn.functional.mse_loss(m(batch[0].to(device)), batch[1].to(device))
        return loss, {"mse": loss.item()}

    fit(model=model, dataset=data, loss_fn=loss_fn, groups=[(list(model.parameters()), 1.0, 1e-4)], base_lr=0.05,
        momentum=0.9, power=0.9, epochs=2, batch_size=4, seed=3, device=torch.device("cpu"), out_dir=out_dir,
        config={"x": 1}, resume_fixed=["x"], resume=False, progress=False, log=lambda *_: None, log_every=1)


def test_sgd_loop_ddp_matches_one_process(tmp_path):
    from doei.engine.checkpoint import load_checkpoint

    _sgd_fit(str(tmp_path / "one"))
    launch(2, _sgd_fit, str(tmp_path / "two"))
    a, b = load_checkpoint(tmp_path / "one" / "checkpoint.pt"), load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    assert a["step"] == b["step"] == 6
    worst = max((v - b["model"][k]).abs().max().item() for k, v in a["model"].items())
    print(f"SGD-loop DDP parity: max |w_1proc - w_2proc| = {worst:.3g}")
    assert worst <= ATOL
    la = [json.loads(ln) for ln in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(ln) for ln in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(la) == len(lb) == 6 + 2
    assert all(abs(x["loss"] - y["loss"]) < 1e-6 and abs(x["mse"] - y["mse"]) < 1e-6 for x, y in zip(la, lb))


# ------------------------------------------------------------------------------------ process-group timeout
def test_process_group_timeout_from_env(monkeypatch):
    import datetime

    from doei.engine.distributed import DEFAULT_TIMEOUT_MIN, TIMEOUT_ENV, process_group_timeout

    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    assert process_group_timeout() == datetime.timedelta(minutes=DEFAULT_TIMEOUT_MIN)
    assert DEFAULT_TIMEOUT_MIN > 30                       # above PyTorch's defaults (NCCL 10, gloo 30 min)
    monkeypatch.setenv(TIMEOUT_ENV, " 240 ")
    assert process_group_timeout() == datetime.timedelta(hours=4)
    monkeypatch.setenv(TIMEOUT_ENV, "0.5")
    assert process_group_timeout() == datetime.timedelta(seconds=30)
    for bad in ("0", "-5", "ten", "inf", "nan"):
        monkeypatch.setenv(TIMEOUT_ENV, bad)
        with pytest.raises(DoeiError, match=f"{TIMEOUT_ENV}='{bad}': expected a positive number of minutes"):
            process_group_timeout()


def _timeout_rank(out_dir: str, minutes: str, late_s: float) -> None:
    """Join with DOEI_DIST_TIMEOUT_MIN=minutes, recording what init_process_group receives; then rank 0
    waits at a barrier that rank 1 never reaches (it sleeps ``late_s`` and leaves)."""
    import time

    import torch.distributed as tdist

    from doei.engine import distributed as du

    os.environ["DOEI_DIST_TIMEOUT_MIN"] = minutes
    seen: dict = {}
    real = tdist.init_process_group

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    tdist.init_process_group = spy
    try:
        du.init_from_env("cpu")
    finally:
        tdist.init_process_group = real
    result = {"timeout_s": seen["timeout"].total_seconds()}
    if du.rank() == 1:
        time.sleep(late_s)
    else:
        t0 = time.monotonic()
        try:
            du.barrier()
            result["barrier"] = "returned"
        except Exception as e:  # noqa: BLE001 - gloo raises a RuntimeError subclass naming the timeout
            result["barrier"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        result["waited_s"] = time.monotonic() - t0
    Path(out_dir, f"rank{du.rank()}.json").write_text(json.dumps(result))


def test_process_group_timeout_reaches_init_process_group(tmp_path):
    """2 gloo ranks: the env var's timeout is what ``init_process_group`` gets, and a barrier that
    waits for a rank that does not come fails after it (2.4 s), not after PyTorch's 30 minutes."""
    launch(2, _timeout_rank, str(tmp_path), "0.04", 4.5)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["timeout_s"] == r1["timeout_s"] == pytest.approx(2.4)
    assert r0["barrier"] != "returned", r0
    assert 2.0 <= r0["waited_s"] < 4.4, r0
