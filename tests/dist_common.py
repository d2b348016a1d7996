"""Shared helpers of the multi-process tests (tests/test_engine_distributed.py, tests/test_distributed_stages.py):
torchrun-style ranks forked from the test process (gloo on CPU) and an output-folder comparison.

Forking (instead of ``torchrun``'s fresh interpreters) starts a rank in milliseconds and lets ranks
use models registered by the test module; each rank gets the environment torchrun would set.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Callable

import torch

# log/marker fields that legitimately differ between two runs (wall times, which rank did an image)
VOLATILE = {"time", "seconds", "write_s", "crf_seconds", "finished", "rank", "processes", "train_seconds",
            # stage markers: the start time, and the input-file digests (path + size + mtime of folders of
            # per-image files, so two runs of the same files differ in them) with the fingerprint over them
            "started", "files", "fingerprint",
            "resources"}   # per-stage wall time and peak memory (doei.pipeline.smoke.StageMeter)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_rank_env(rank: int, world: int, port: int) -> None:
    """The variables torchrun sets for a rank on one node; one thread per rank (2-core CI)."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)


def _rank_main(rank: int, world: int, port: int, fn: Callable, args: tuple) -> None:
    set_rank_env(rank, world, port)
    fn(*args)


def launch(nproc: int, fn: Callable, *args) -> None:
    """Run ``fn(*args)`` in ``nproc`` forked ranks of one process group; raises if any rank fails."""
    import torch.multiprocessing as mp

    mp.start_processes(_rank_main, args=(nproc, free_port(), fn, args), nprocs=nproc, join=True, start_method="fork")


def _cli(argv: list[str]) -> None:
    from doei.cli import main

    rc = main(argv)
    if rc:
        raise SystemExit(rc)


def launch_cli(nproc: int, argv: list[str]) -> None:
    """``doei <argv>`` as ``torchrun --nproc_per_node nproc -m doei.cli <argv>`` would run it."""
    launch(nproc, _cli, argv)


def _normalised(path: Path) -> object:
    """A JSON/JSONL file without its volatile fields; JSONL as a sorted list (ranks interleave lines)."""
    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in VOLATILE}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    if path.suffix == ".jsonl":
        recs = [strip(json.loads(ln)) for ln in path.read_text(encoding="utf-8").splitlines()]
        return sorted(json.dumps(r, sort_keys=True) for r in recs)
    return strip(json.loads(path.read_text(encoding="utf-8")))


def assert_same_outputs(a: Path, b: Path, timed: tuple[str, ...] = (".jsonl",),
                        timed_names: tuple[str, ...] = ()) -> list[Path]:
    """Every file under ``a`` and ``b`` (the same relative names): byte-identical, except logs
    (suffix in ``timed``) and files named in ``timed_names``, which must be equal once wall times
    and rank tags are removed. No temporary file may be left. Returns the relative paths."""
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert not [f for f in files if f.name.startswith(".tmp-")]
    for f in files:
        if f.suffix in timed or f.name in timed_names:
            assert _normalised(a / f) == _normalised(b / f), f
        else:
            assert (a / f).read_bytes() == (b / f).read_bytes(), f
    return files
