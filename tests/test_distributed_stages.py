"""The per-image stages under torchrun (2 gloo CPU ranks forked from the test) write exactly what one
process writes: ``doei infer-seg`` (multi-scale + flip + DenseCRF, CRF worker pools per rank),
``doei refine infer`` (random walk), ``doei run`` (cam stage sharded, eval on rank 0, markers
and run log by rank 0 between barriers) and AffinityNet's CRF score cache.

Both runs write into the SAME folder (the first result is moved aside before the second run), so
paths recorded in files agree; then every data file is compared byte for byte and every log /
marker after dropping wall times and rank tags (``dist_common.assert_same_outputs``).
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from tests.dist_common import assert_same_outputs, launch, launch_cli
from tests.pipeline_common import N_TRAIN, make_synth, tiny_config, write_cams_from_masks


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Tiny synthetic set, CAMs from its masks, random AffinityNet / DeepLab / MCTformer-V2 weights."""
    from doei.engine.train_aff import build_affinity_model
    from doei.engine.train_seg import build_seg_model
    from doei.models.registry import create_model

    root = tmp_path_factory.mktemp("dist_stages")
    synth = make_synth(root)
    write_cams_from_masks(synth, root / "cam")
    torch.manual_seed(0)
    torch.save({"model": build_affinity_model("psa_resnet38_aff_small", {"width": 0.0625}, radius=4).state_dict()},
               root / "aff.pt")
    torch.save(build_seg_model("deeplab_resnet38_small", 11, {"width": 0.0625}).state_dict(), root / "seg.pt")
    torch.save({"model": create_model("mctformer_v2_tiny_conv", num_classes=10, img_size=64, depth=2, embed_dim=32,
                                      num_heads=2).state_dict()}, root / "cls.pth")
    return root, synth


def _config_file(root, synth, out, name: str, **kw):
    """The tiny pipeline config (pointing at the fixture's CAMs/weights) as a YAML file for the CLI."""
    base = {"refine__infer__cam_dir": str(root / "cam"), "refine__infer__checkpoint": str(root / "aff.pt"),
            "refine__infer__split": "train", "seg__infer__checkpoint": str(root / "seg.pt"),
            "seg__infer__split": "train"}
    f = out.parent / f"{name}.yaml"
    f.write_text(yaml.safe_dump(tiny_config(synth, out, **{**base, **kw}).to_dict(), sort_keys=False))
    return f


def _one_then_two(out, argv_one: list[str], argv_two: list[str]):
    """Run 1 rank, move its folder to ``out``-1, run 2 ranks into the same ``out``, move it to ``out``-2."""
    one, two = out.with_name(out.name + "-1"), out.with_name(out.name + "-2")
    launch_cli(1, argv_one)
    shutil.move(out, one)
    launch_cli(2, argv_two)
    shutil.move(out, two)
    return one, two


def _image_ranks(log) -> list[int]:
    return sorted(r["rank"] for r in map(json.loads, log.read_text().splitlines()) if r["event"] == "image")


def test_infer_seg_two_ranks_byte_identical(data, tmp_path, capfd):
    root, synth = data
    out = tmp_path / "run"
    inline = _config_file(root, synth, out, "inline", seg__infer__crf_workers=0)
    pooled = _config_file(root, synth, out, "pooled", seg__infer__crf_workers=1)    # one CRF worker per rank
    one, two = _one_then_two(out, ["infer-seg", "--config", str(inline)], ["infer-seg", "--config", str(pooled)])
    files = assert_same_outputs(one, two)
    assert sum(f.suffix == ".png" for f in files) == 3 * N_TRAIN                 # pred, pred_crf, overlay
    log = two / "seg_pred" / "infer_seg_log.jsonl"
    assert _image_ranks(log) == [0, 0, 1, 1]                                      # each image once, split
    assert capfd.readouterr().out.count("doei infer-seg: 4 computed") == 2        # 1 rank + rank 0 of 2


def test_refine_infer_two_ranks_byte_identical(data, tmp_path, capfd):
    root, synth = data
    out = tmp_path / "run"
    cfg = _config_file(root, synth, out, "cfg")
    one, two = _one_then_two(out, ["refine", "infer", "--config", str(cfg)], ["refine", "infer", "--config", str(cfg)])
    files = assert_same_outputs(one, two)
    assert sum(f.suffix == ".png" for f in files) == N_TRAIN
    assert _image_ranks(two / "pseudo" / "refine_infer_log.jsonl") == [0, 0, 1, 1]
    assert capfd.readouterr().out.count("doei refine infer: 4 computed") == 2


def test_run_cam_and_eval_two_ranks_byte_identical(data, tmp_path, capfd):
    """``doei run`` with stages cam → eval: the cam stage (doei.cam.generate) is sharded, eval reads
    both ranks' CAMs (the barrier after a stage) and only rank 0 writes markers, logs, eval.json."""
    root, synth = data
    out = tmp_path / "run"
    cfg = _config_file(root, synth, out, "cfg", run__stages=["cam", "eval"], run__cls_checkpoint=str(root / "cls.pth"),
                       cam__model="mctformer_v2_tiny_conv",
                       cam__model_kwargs={"img_size": 64, "depth": 2, "embed_dim": 32, "num_heads": 2},
                       cam__save_seeds=True, cam__crf_alphas=[1.0])
    argv = ["run", "--config", str(cfg)]
    one, two = _one_then_two(out, argv, argv)
    files = assert_same_outputs(one, two, timed_names=("stage_done.json", "stage_started.json"))
    assert sum(f.suffix == ".npz" for f in files) == N_TRAIN and sum(f.suffix == ".png" for f in files) == 2 * N_TRAIN
    assert sorted(str(f.parent) for f in files if f.name == "stage_done.json") == ["stages/cam", "stages/eval"]
    assert _image_ranks(two / "cam" / "cam_log.jsonl") == [0, 0, 1, 1]
    events = [json.loads(ln)["event"] for ln in (two / "run_log.jsonl").read_text().splitlines()]
    assert events == ["start", "end", "start", "end"]                            # rank 0 only
    table = json.loads((two / "eval.json").read_text())["table"]
    assert [r["stage"] for r in table] == ["Seed"] and table[0]["images"] == N_TRAIN
    printed = capfd.readouterr().out
    assert printed.count("[cam] running") == printed.count("[eval] done") == 2  # 1 rank + rank 0 of 2
    # a rerun under 2 ranks skips both stages (markers seen by every rank) and writes nothing new
    shutil.move(two, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "run_log.jsonl"}
    launch_cli(2, argv)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "run_log.jsonl"} == before
    events = [json.loads(ln)["event"] for ln in (out / "run_log.jsonl").read_text().splitlines()]
    assert events[4:] == ["skip", "skip"]


def _score_cache(cfg, out) -> None:
    """One rank of AffinityNet's CRF score cache (what train_affinity runs before DDP training)."""
    from doei.data.build import build_dataset
    from doei.engine import distributed as dist_util
    from doei.engine.train_aff import precompute_crf_scores

    dist_util.init_from_env("cpu")
    sec = cfg.refine.train
    n = precompute_crf_scores(build_dataset("synth", cfg.data.root, sec.split), sec.cam_dir, out, sec, progress=False)
    assert n == N_TRAIN                                  # summed over the ranks, returned on every rank


def test_crf_score_cache_two_ranks_byte_identical(data, tmp_path):
    root, synth = data
    cfg = tiny_config(synth, tmp_path / "run", refine__train__cam_dir=str(root / "cam"))
    launch(1, _score_cache, cfg, tmp_path / "one")
    launch(2, _score_cache, cfg, tmp_path / "two")
    files = assert_same_outputs(tmp_path / "one", tmp_path / "two")
    assert len(files) == N_TRAIN and all(f.suffix == ".npz" for f in files)
