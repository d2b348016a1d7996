"""The world-size rule and global-batch statistics under DDP (gloo, W = 3 and W = 8 forked ranks).

A global batch that W processes cannot split evenly trains on the largest W' <= W dividing it
(docs/distributed.md): the ranks 0..W'-1 take equal shares, the others follow each step idle and
receive the weights at the end. BatchNorm in training mode normalises over the global batch
(``sync_bn``, :mod:`doei.engine.sync_bn`) and the ratio losses (DeepLab's cross-entropy over valid
pixels, AffinityNet's pair-count-normalised terms) divide by the global count
(:func:`doei.engine.distributed.global_ratio`), so each run below must equal one process up to the
floating-point order of the sums. Tiny models, few steps: a W = 8 launch is ~2 s on 2 cores.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from doei.engine.distributed import active_world
from doei.models.registry import register_model
from tests.dist_common import launch

ATOL = 2e-6
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def one_thread():
    """The single-process reference on one thread, as each forked rank runs (tests/dist_common.py): on a
    loaded 2-core machine two intra-op threads made the tiny Conformer's 4 steps take 30 s instead of 1 s."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------ the rule
def test_active_world_is_the_largest_divisor_not_above_w():
    # the paper configs' global batches (DeepLab 4 / 10, AffinityNet 8, classifier 8 / 64) at 1..8 processes
    table = {b: [active_world(b, w) for w in range(1, 9)] for b in (4, 8, 10, 64)}
    assert table == {4: [1, 2, 2, 4, 4, 4, 4, 4], 8: [1, 2, 2, 4, 4, 4, 4, 8],
                     10: [1, 2, 2, 2, 5, 5, 5, 5], 64: [1, 2, 2, 4, 4, 4, 4, 8]}
    assert active_world(7, 3) == 1 and active_world(12, 12) == 12 and active_world(3, 8) == 3
    for bad in (0, -2):
        with pytest.raises(ValueError, match="batch_size"):
            active_world(bad, 2)
    with pytest.raises(TypeError, match="world"):
        active_world(4, 2.0)


def test_docs_table_of_training_ranks_matches_the_rule():
    """docs/distributed.md's table (training ranks per paper batch and W) is what the code does."""
    text = (REPO / "docs" / "distributed.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d+) \([^)]*\) \| ([\d |]+)\|$", text, flags=re.M)
    assert len(rows) >= 4, "docs/distributed.md: the W' table is missing"
    for batch, cells in rows:
        got = [int(c) for c in cells.split("|") if c.strip()]
        assert got == [active_world(int(batch), w) for w in range(1, 9)], batch
    from doei.pipeline_config import load_pipeline_config

    batches = set()
    for f in sorted((REPO / "configs" / "paper").glob("*_*.yaml")):
        if f.name.startswith(("ablate_", "sweep_")):
            continue
        cfg = load_pipeline_config(f)
        batches |= {cfg.classifier.get("train", {}).get("batch_size", 64), cfg.refine.train.batch_size,
                    cfg.seg.train.batch_size}
    assert batches <= {int(b) for b, _ in rows}, f"paper batches {sorted(batches)} not all in the docs table"


def test_every_paper_config_splits_on_1_2_4_8_processes():
    """Each training stage's global batch of every paper config, at W = 1, 2, 4, 8: the training ranks'
    shares rebuild the single-process batches exactly (a 1,000-image epoch in the single-process order)."""
    from doei.engine.distributed import global_batch_indices
    from doei.pipeline_config import load_pipeline_config

    order = torch.randperm(1000, generator=torch.Generator().manual_seed(0)).tolist()
    seen = set()
    for f in sorted((REPO / "configs" / "paper").glob("*.yaml")):
        if f.name.startswith(("ablate_", "sweep_")):
            continue
        cfg = load_pipeline_config(f)
        for b in (cfg.classifier.get("train", {}).get("batch_size", 64), cfg.refine.train.batch_size,
                  cfg.seg.train.batch_size):
            for w in (1, 2, 4, 8):
                if (b, w) in seen:
                    continue
                seen.add((b, w))
                a = active_world(b, w)
                parts = [global_batch_indices(order, b, r, a) for r in range(a)]
                steps = len(order) // b
                assert all(len(p) == steps * (b // a) for p in parts), (f.name, b, w)
                for i in range(steps):
                    assert sum((p[i * (b // a):(i + 1) * (b // a)] for p in parts), []) == order[i * b:(i + 1) * b]
    assert {b for b, _ in seen} == {4, 8, 10, 64}


# ------------------------------------------------------------------------------------ SGD loop: BN + ratio losses
def _seg_net() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 3, 1))


def _seg_data():
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (12, 8, 8), generator=g)
    y[torch.rand(12, 8, 8, generator=g) < 0.3] = 255               # ignored pixels: unequal counts per image
    y[3, :6] = 255
    return TensorDataset(torch.randn(12, 3, 8, 8, generator=g) * 2 + 1, y)


class _AffNet(torch.nn.Module):
    """Affinities in (0, 1) from a conv feature (the shape of AffinityNet's output, [B, D, n])."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv = torch.nn.Conv2d(3, 5, 1)

    def forward(self, x):
        return torch.sigmoid(self.conv(x).flatten(2))


def _aff_data():
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(4)
    labels = (torch.rand(8, 3, 5, 16, generator=g) < torch.tensor([0.2, 0.4, 0.3]).view(1, 3, 1, 1)).float()
    return TensorDataset(torch.randn(8, 3, 4, 4, generator=g), labels)


def _aff_loss(model, batch, device):
    from doei.refine.loss import affinity_loss

    x, lab = batch
    return affinity_loss(model(x), lab[:, 0], lab[:, 1], lab[:, 2])


def _fits(out: str, sync_bn_off: bool) -> None:
    """One rank: DeepLab-like (BN trained, CE over valid pixels) at batch 6, AffinityNet-like at batch 4;
    each rank saves its final weights (the waiting ranks' must be the trained ones)."""
    from doei.engine import distributed as du
    from doei.engine.sgd_loop import fit
    from doei.engine.train_seg import seg_loss_fn

    quiet = dict(progress=False, log=lambda *_: None, log_every=1, resume=False, seed=3, device=torch.device("cpu"),
                 config={"x": 1}, resume_fixed=["x"], momentum=0.9, power=0.9)
    runs = [("seg", _seg_net, _seg_data, seg_loss_fn, 6, True), ("aff", _AffNet, _aff_data, _aff_loss, 4, True)]
    if sync_bn_off:
        runs.append(("seg_nosync", _seg_net, _seg_data, seg_loss_fn, 6, False))
    for name, net, data, loss_fn, batch, sync in runs:
        model = net()
        fit(model=model, dataset=data(), loss_fn=loss_fn, groups=[(list(model.parameters()), 1.0, 1e-4)],
            base_lr=0.05, epochs=2, batch_size=batch, out_dir=f"{out}/{name}", sync_bn=sync, **quiet)
        torch.save(model.state_dict(), f"{out}/{name}/rank{du.rank()}.pt")


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((v.double() - b[k].double()).abs().max().item() for k, v in a.items())


@pytest.fixture(scope="module")
def single_fits(tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _fits(str(out), False)
    finally:
        torch.set_num_threads(n)
    return out


@pytest.mark.parametrize("world", [3, 8])
def test_sgd_loop_w_processes_equal_one_process(single_fits, tmp_path, world):
    from doei.engine.checkpoint import load_checkpoint

    launch(world, _fits, str(tmp_path), world == 3)
    rec = lambda p: [json.loads(ln) for ln in p.read_text().splitlines()]  # noqa: E731
    for name, batch in (("seg", 6), ("aff", 4)):
        one, many = load_checkpoint(single_fits / name / "checkpoint.pt"), load_checkpoint(tmp_path / name / "checkpoint.pt")
        assert one["step"] == many["step"] == 2 * (len(_seg_data() if name == "seg" else _aff_data()) // batch)
        worst = _max_diff(one["model"], many["model"])
        print(f"W={world} {name} (batch {batch}, {active_world(batch, world)} training ranks): "
              f"max |w_1 - w_W| = {worst:.3g}")
        assert worst <= ATOL, (name, worst)
        # every rank ends with the trained weights (the waiting ones by broadcast)
        for r in range(world):
            assert _max_diff(many["model"], torch.load(tmp_path / name / f"rank{r}.pt")) == 0.0, (name, r)
        # the logged losses and parts (global counts, global-batch loss) are the single-process ones
        la, lb = rec(single_fits / name / "metrics.jsonl"), rec(tmp_path / name / "metrics.jsonl")
        assert len(la) == len(lb)
        for ra, rb in zip(la, lb):
            for k, v in ra.items():
                if isinstance(v, float) and k != "train_seconds":
                    assert rb[k] == pytest.approx(v, rel=1e-5, abs=1e-6), (name, k)
    if world == 3:   # without sync_bn every rank normalises its 2 images alone: visibly not one process
        off = load_checkpoint(tmp_path / "seg_nosync" / "checkpoint.pt")
        assert _max_diff(off["model"], load_checkpoint(single_fits / "seg" / "checkpoint.pt")["model"]) > 1e-3


# ------------------------------------------------------------------------------------ the Conformer classifier
@register_model
def ddp_test_conformer_tiny(num_classes: int = 10, doei=None, img_size: int | None = None, drop_rate: float = 0.0,
                            drop_path_rate: float = 0.0):
    """A 58 k-parameter Conformer (22 BatchNorm layers in its CNN branch) for the parity test."""
    from doei.models.conformer import Conformer

    return Conformer(num_classes=num_classes, patch_size=16, stem_channels=8, base_channel=8, channel_ratio=2,
                     embed_dim=32, depth=3, num_heads=2, mlp_ratio=2.0, qkv_bias=True, drop_rate=0.0,
                     drop_path_rate=0.0, stem_pool=False, doei=doei)


def _cls_cfg(root: Path, out: Path) -> dict:
    return {"model": {"name": "ddp_test_conformer_tiny", "num_classes": 10, "img_size": 32, "drop_path_rate": 0.0},
            "data": {"kind": "synth", "root": str(root), "train_split": "train", "val_split": "val",
                     "transform": "resize"},
            # AdamW's eps 1e-5 (default 1e-8): a parameter whose gradient is zero in exact arithmetic (a conv bias
            # before BatchNorm, the key bias of attention) gets float noise ~1e-10 as gradient, which g/sqrt(v)
            # turns into full lr-sized steps of either sign: 5e-4 apart after 4 steps at eps 1e-8
            "optim": {"lr": 1e-3, "lr_batch_base": None, "warmup_epochs": 0.5, "eps": 1e-5},
            "doei": {"enabled": True, "layers": [1, 2]},
            "train": {"epochs": 2, "batch_size": 4, "seed": 11, "device": "cpu", "out_dir": str(out),
                      "progress": False, "log_every": 1, "amp": False, "eval_every": 2}}


def _cls_rank(cfg: dict) -> None:
    """Killed after epoch 1 and resumed, as tests/test_engine_distributed.py does."""
    from doei.engine.train_cls import train
    from doei.train_config import train_config_from_dict

    quiet = lambda *_: None  # noqa: E731
    train(train_config_from_dict(cfg), log=quiet, stop_after=1)
    train(train_config_from_dict(cfg), resume=True, log=quiet)


def test_conformer_classifier_three_processes_equal_one(tmp_path, one_thread):
    """TransCAM's Conformer (BatchNorm trained) with batch 4 on W = 3: 2 ranks train with synchronised
    BatchNorm, 1 waits; the weights after 2 epochs (killed after 1, resumed) are the single-process ones."""
    from doei.data.synth import SynthParams, write_synth
    from doei.engine.checkpoint import load_checkpoint

    root = tmp_path / "synth"
    write_synth(root, SynthParams(seed=5, n_train=8, n_val=4, size=32))
    _cls_rank(_cls_cfg(root, tmp_path / "one"))
    import torch._inductor  # noqa: F401 - imported once here rather than in each forked rank

    launch(3, _cls_rank, _cls_cfg(root, tmp_path / "three"))
    a, b = load_checkpoint(tmp_path / "one" / "checkpoint.pt"), load_checkpoint(tmp_path / "three" / "checkpoint.pt")
    assert a["step"] == b["step"] == 4
    worst = _max_diff(a["model"], b["model"])
    print(f"Conformer W=3 (2 training ranks, sync_bn): max |w_1 - w_3| = {worst:.3g}")
    assert worst <= 1e-5
    assert abs(a["metrics"]["val_mAP"] - b["metrics"]["val_mAP"]) < 1e-3


def test_synchronized_batchnorm_is_a_no_op_with_one_process():
    from doei.engine.sync_bn import synchronized_batchnorm

    net = _seg_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with synchronized_batchnorm(net) as n:
        assert n == 0 and type(net[1]) is torch.nn.BatchNorm2d
    assert net.state_dict().keys() == before.keys()
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        with synchronized_batchnorm("net"):
            pass
