"""Shared harness of tests/test_faults_*.py: run a ``doei`` command in a child process, SIGKILL it at
seeded random moments, check that what it left on disk is readable, resume, and compare the final
outputs with an uninterrupted run.

Kill moments: uniform in ``[lo, hi]`` × a time scale from the uninterrupted run's wall time
(measured in the same test, so the points land inside the real work on any machine), drawn from
``random.Random(seed)``; optionally counted from the moment an attempt has made some progress.
A SIGKILL cannot be caught: whatever the command had not renamed into place is at most a stray
``.tmp-*`` file, which :func:`check_readable` ignores as every reader does (and counts).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

FORK = multiprocessing.get_context("fork")


def prewarm() -> None:
    """Import in the parent what every child would import: doei's commands, and torch._inductor, which
    ``torch.use_deterministic_algorithms`` (called by every training loop) imports on first use
    (~several seconds on a loaded 2-core machine)."""
    import torch._inductor  # noqa: F401

    import doei.cli  # noqa: F401
    import doei.commands.cam_cmd  # noqa: F401
    import doei.commands.run_cmd  # noqa: F401
    import doei.pipeline  # noqa: F401
    import doei.engine.train_cls  # noqa: F401


def _child(argv: list[str], log: str) -> None:
    """Forked child: one thread (bitwise-stable CPU maths), output to ``log``, exit with doei's status."""
    import torch

    from doei.cli import main

    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    torch.set_num_threads(1)
    try:
        rc = main(list(argv))
    except BaseException:  # noqa: BLE001 - report and fail
        import traceback

        traceback.print_exc()
        rc = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def _start(argv: list[str], log: Path):
    # a fork of the test process, which has imported torch and doei already: starting costs
    # milliseconds instead of the seconds of a fresh interpreter, so many kill points stay cheap
    p = FORK.Process(target=_child, args=(list(argv), str(log)), daemon=True)
    p.start()
    return p


def doei(argv: list[str], log: Path, timeout: float = 300) -> tuple[int, float, str]:
    """Run ``doei argv`` in a forked child to completion: (exit status, wall seconds, its output)."""
    prewarm()
    t0 = time.time()
    p = _start(argv, log)
    p.join(timeout)
    if p.is_alive():
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        raise AssertionError(f"doei {argv[0]} did not finish in {timeout} s")
    return p.exitcode, time.time() - t0, log.read_text() if log.exists() else ""


def doei_killed(argv: list[str], delay: float, log: Path, ready: Callable[[], bool] | None = None) -> bool:
    """Start ``doei argv`` in a forked child and SIGKILL it ``delay`` s after ``ready()`` first holds
    (polled every 10 ms; immediately without ``ready``); True if it was still running then."""
    p = _start(argv, log)
    if ready is not None:
        while p.is_alive() and not ready():
            time.sleep(0.01)
    p.join(delay)
    if not p.is_alive():
        return False
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    return True


def kill_points(seed: int, n: int, wall: float, lo: float = 0.35, hi: float = 0.95) -> list[float]:
    """``n`` seeded delays in seconds, uniform in ``[lo, hi] × wall``."""
    rng = random.Random(seed)
    return [round(wall * rng.uniform(lo, hi), 3) for _ in range(n)]


def check_readable(root: Path) -> dict[str, int]:
    """Open every file under ``root`` with the reader its kind has; stray ``.tmp-*`` files are counted,
    not read (every reader in doei ignores them). Returns counts per kind; raises on a bad file."""
    import torch
    import yaml
    from PIL import Image

    from doei.cam.io import load_cam

    counts: dict[str, int] = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        kind = "tmp" if p.name.startswith(".tmp-") else p.suffix
        counts[kind] = counts.get(kind, 0) + 1
        if kind == "tmp":
            continue
        if p.suffix == ".npz":
            if {"classes", "cams"} <= set(np.load(p).files):
                load_cam(p)
            else:
                dict(np.load(p, allow_pickle=False))
        elif p.suffix == ".png":
            with Image.open(p) as im:
                im.load()
        elif p.suffix == ".pt":
            torch.load(p, map_location="cpu", weights_only=True)
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix in (".yaml", ".yml"):
            yaml.safe_load(p.read_text())
        elif p.suffix == ".jsonl":
            lines = p.read_text().splitlines()
            for i, ln in enumerate(lines):
                try:
                    json.loads(ln)
                except json.JSONDecodeError:
                    assert i == len(lines) - 1, f"{p}: corrupt line {i + 1} (only a torn LAST line is allowed)"
    return counts


def kill_resume_cycle(argv_for: Callable[[], list[str]], out: Path, delays: list[float], log: Path,
                      ready_for: Callable[[], Callable[[], bool]] | None = None) -> tuple[int, int]:
    """Kill at each delay (checking the folder after each kill), then run to completion.

    ``argv_for()`` builds the command for the next attempt (e.g. adds ``--resume`` once a checkpoint
    exists); ``ready_for()`` (optional) builds the attempt's "progress made" predicate, after which
    the delay starts (so that resumed attempts, with less work left, are still killed mid-work). Returns (kills that hit a running process, stray temporary files seen)."""
    hits, tmps = 0, 0
    for d in delays:
        hits += doei_killed(argv_for(), d, log, ready_for() if ready_for else None)
        if out.exists():
            tmps = max(tmps, check_readable(out).get("tmp", 0))
    rc, _, err = doei(argv_for(), log)
    assert rc == 0, err[-3000:]
    return hits, tmps


def files_of(root: Path, suffixes: tuple[str, ...]) -> dict[str, bytes]:
    """Relative path -> bytes of the non-temporary files with these suffixes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix in suffixes and not p.name.startswith(".tmp-")}
