"""SIGKILL ``doei cam`` at 6 seeded random moments, rerun each time (it resumes at the first image
without outputs), and finish with files byte-identical to an uninterrupted run; after every kill
each CAM/PNG present loads (atomic writes: never a half-written file at a final path)."""
from __future__ import annotations

import pytest
import torch
import yaml
from fault_common import check_readable, doei, files_of, kill_points, kill_resume_cycle

N_KILLS = 6
TINY = {"img_size": 32, "depth": 2, "embed_dim": 32, "num_heads": 2}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from doei.data.synth import SynthParams, write_synth
    from doei.models.registry import create_model

    root = tmp_path_factory.mktemp("camfault")
    write_synth(root / "synth", SynthParams(seed=6, n_train=24, n_val=2, size=32))
    torch.manual_seed(0)
    torch.save({"model": create_model("mctformer_v2_tiny_conv", num_classes=10, **TINY).state_dict()},
               root / "ckpt.pth")
    (root / "cam.yaml").write_text(yaml.safe_dump({"model_kwargs": TINY}))
    return root


def _argv(root, out):
    return ["cam", "--config", str(root / "cam.yaml"), "--model", "mctformer_v2_tiny_conv", "--num-classes", "10",
            "--dataset", "synth", "--data-root", str(root / "synth"), "--split", "train", "--n-layers", "2",
            "--checkpoint", str(root / "ckpt.pth"), "--scales", "1.0,0.5", "--save-seeds", "--crf-alphas", "1,12",
            "--save-overlays", "--no-progress", "--device", "cpu", "--out", str(out)]


def test_cam_survives_sigkill(setup, tmp_path):
    rc, wall, err = doei(_argv(setup, tmp_path / "ref"), tmp_path / "ref.log")
    assert rc == 0, err
    out = tmp_path / "killed"
    # each attempt is killed a random 0-2 image-times after it wrote its first new CAM file
    delays = kill_points(seed=11, n=N_KILLS, wall=2 * wall / 24, lo=0.0, hi=1.0)

    def ready_for():
        before = len(list(out.glob("*.npz"))) if out.exists() else 0
        return lambda: out.exists() and len(list(out.glob("*.npz"))) > before

    hits, tmps = kill_resume_cycle(lambda: _argv(setup, out), out, delays, tmp_path / "killed.log", ready_for)
    print(f"cam: {hits}/{N_KILLS} kills hit a running process at {delays} s (uninterrupted {wall:.1f} s); "
          f"stray temporary files after a kill: {tmps}")
    assert hits >= 5
    ref, got = files_of(tmp_path / "ref", (".npz", ".png")), files_of(out, (".npz", ".png"))
    assert len(ref) == 24 * 5                                         # npz + seeds + 2 CRF maps + overlay
    assert ref.keys() == got.keys()
    assert [k for k in ref if ref[k] != got[k]] == []
    check_readable(out)
