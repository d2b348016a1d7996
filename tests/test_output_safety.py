"""Nothing that exists is lost, and every output location is checked before the work.

Pins: output paths that cannot be folders (an existing file, a path under a file) are one-line errors in
every command that writes a folder; a finished training run is never replaced without ``--overwrite``
(and a failed ``--overwrite`` start leaves it byte-identical); one writer per folder (a second process
is refused at once; a SIGKILLed holder releases the lock); files honour the umask; ``--set`` values that
are not YAML and duplicate YAML keys are one-line errors.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import re
import signal
import stat

import pytest
import torch
import yaml

from doei.cli import main
from doei.utils.io import atomic_write_json
from doei.utils.outdir import LOCK_NAME, folder_lock

SIZE = 32
TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from doei.data.synth import SynthParams, write_synth

    root = tmp_path_factory.mktemp("safety")
    data = root / "synth"
    write_synth(data, SynthParams(seed=2, n_train=4, n_val=2, size=SIZE))
    return {"root": root, "data": data}


def _train_yaml(base, tmp_path, out, **edits) -> str:
    cfg = {"model": {"name": "mctformer_v2_tiny_conv", "num_classes": 10, "img_size": SIZE, "options": TINY},
           "data": {"kind": "synth", "root": str(base["data"]), "train_split": "train", "transform": "resize"},
           "optim": {"lr": 1e-3, "lr_batch_base": None, "warmup_epochs": 0.0},
           "train": {"epochs": 1, "batch_size": 4, "device": "cpu", "progress": False, "amp": False, "out_dir": str(out)}}
    for k, v in edits.items():
        sec, key = k.split("__")
        cfg[sec][key] = v
    p = tmp_path / "train.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def _one_line_error(capsys, verb: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"doei {verb}: error: "), err
    return err


def _argv(verb: str, base, tmp_path, out) -> list[str]:
    if verb == "train-cls":
        return ["train-cls", "--config", _train_yaml(base, tmp_path, out)]
    if verb == "cam":
        return ["cam", "--dataset", "synth", "--data-root", str(base["data"]), "--checkpoint", str(tmp_path / "x.pth"),
                "--out", str(out)]
    if verb == "run":
        p = tmp_path / "pipe.yaml"
        p.write_text(yaml.safe_dump({"run": {"out_dir": str(out), "stages": ["eval"]},
                                     "data": {"kind": "synth", "root": str(base["data"]), "num_classes": 10}}))
        return ["run", "--config", str(p)]
    if verb == "synth":
        return ["synth", "--out", str(out), "--n-train", "2", "--n-val", "1"]
    if verb == "coco-masks":
        return ["coco-masks", "--ann", str(tmp_path / "inst.json"), "--out", str(out)]
    if verb == "ablate":
        return ["ablate", "--config", "configs/ablate.yaml", "--out", str(out), "--quick"]
    return ["demo", "--out", str(out), "--quick"]


VERBS = ["train-cls", "cam", "run", "synth", "coco-masks", "ablate", "demo"]


@pytest.mark.parametrize("where", ["is_a_file", "under_a_file"])
@pytest.mark.parametrize("verb", VERBS)
def test_output_folder_that_cannot_be_one_is_refused_first(base, tmp_path, capsys, verb, where, monkeypatch):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me\n")
    out = blocker if where == "is_a_file" else blocker / "sub" / "out"
    assert main(_argv(verb, base, tmp_path, out)) == 2
    err = _one_line_error(capsys, verb)
    assert str(blocker) in err and "file" in err, err
    assert blocker.read_text() == "keep me\n"


def _finished_run(base, tmp_path):
    out = tmp_path / "run"
    assert main(["train-cls", "--config", _train_yaml(base, tmp_path, out)]) == 0
    return out, {p.name: p.read_bytes() for p in out.iterdir()}


def test_a_finished_training_run_is_never_replaced_unasked(base, tmp_path, capsys):
    out, before = _finished_run(base, tmp_path)
    capsys.readouterr()
    assert main(["train-cls", "--config", _train_yaml(base, tmp_path, out)]) == 2
    assert "holds a training run" in _one_line_error(capsys, "train-cls")
    # a failed --overwrite start (the dataset is missing) leaves it exactly as it was
    bad = _train_yaml(base, tmp_path, out, data__root=str(tmp_path / "nowhere"))
    assert main(["train-cls", "--config", bad, "--overwrite"]) == 2
    _one_line_error(capsys, "train-cls")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # --overwrite replaces it (same seed: the same weights again, a new log)
    assert main(["train-cls", "--config", _train_yaml(base, tmp_path, out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(before)


def _hold(folder: str, ready, release) -> None:
    with folder_lock(folder):
        ready.set()
        release.wait(30)


def test_one_writer_per_folder_and_a_killed_holder_releases(base, tmp_path, capsys):
    out = tmp_path / "run"
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold, args=(str(out), ready, release))
    child.start()
    try:
        assert ready.wait(30)
        assert main(["train-cls", "--config", _train_yaml(base, tmp_path, out)]) == 2
        err = _one_line_error(capsys, "train-cls")
        assert re.search(rf"another doei process \(pid {child.pid}, since .*\) is writing", err), err
        assert not (out / "checkpoint.pt").exists()
    finally:
        os.kill(child.pid, signal.SIGKILL)          # a crash: the kernel drops the flock
        child.join()
    assert (out / LOCK_NAME).exists()               # the stale file stays, harmless
    assert main(["train-cls", "--config", _train_yaml(base, tmp_path, out)]) == 0
    assert not (out / LOCK_NAME).exists()


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    with folder_lock(tmp_path / "a"):
        with folder_lock(tmp_path / "a"):
            pass
        assert (tmp_path / "a" / LOCK_NAME).exists()
    assert not (tmp_path / "a" / LOCK_NAME).exists()


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_honour_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        atomic_write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == mode


def test_set_value_that_is_not_yaml_and_duplicate_keys(base, tmp_path, capsys):
    cfg = _train_yaml(base, tmp_path, tmp_path / "o")
    assert main(["train-cls", "--config", cfg, "--set", "optim.lr=[1,"]) == 2
    assert "--set 'optim.lr=[1,': the value is not valid YAML" in _one_line_error(capsys, "train-cls")
    text = open(cfg).read() + "optim:\n  lr: 0.5\n"
    (tmp_path / "dup.yaml").write_text(text)
    assert main(["train-cls", "--config", str(tmp_path / "dup.yaml")]) == 2
    assert re.search(r"dup\.yaml: not valid YAML \(duplicate key 'optim' \(first on line \d+\), line \d+\)",
                     _one_line_error(capsys, "train-cls"))
    assert not (tmp_path / "o").exists()


def test_a_start_that_fails_before_writing_leaves_no_folder(tmp_path):
    from doei.utils.outdir import folder_lock

    out = tmp_path / "new" / "run"
    with pytest.raises(RuntimeError):
        with folder_lock(out, "training folder"):
            raise RuntimeError("the model could not be built")
    assert not out.exists()
    with pytest.raises(RuntimeError):           # a folder that holds something stays, whatever fails
        with folder_lock(out, "training folder"):
            (out / "log.jsonl").write_text("{}\n")
            raise RuntimeError("failed later")
    assert (out / "log.jsonl").is_file()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(RuntimeError):           # a folder that was there before is never removed
        with folder_lock(existing):
            raise RuntimeError("x")
    assert existing.is_dir()
