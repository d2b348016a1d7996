"""Run a few independent CPU jobs side by side, each in its own process with its own torch thread count.

Why: the demo's networks are small (a 2.8 M-parameter ViT on 64-px images, 1/8-width ResNet38s), and
on a laptop CPU a second intra-op thread buys them almost nothing (one DeiT-tiny-sized training step
is a chain of small matrix products), while two such jobs on two cores run in the time of one. So the
demo trains its baseline and DOEI classifiers — and runs their pipelines — as two one-thread processes
instead of one after the other with two threads (``benchmarks/demo_jobs.py`` measures the ratio).

Each job is ``fn(*args)`` in a *spawned* process (no forked torch state), with
``torch.set_num_threads(threads)``, and its tqdm bars on their own terminal line (``TQDM_POSITION``,
read by tqdm when it is imported in the child). Its return value comes back pickled. A
:class:`~doei.errors.DoeiError` in a job is raised again here with its one-line message (the CLI's error
boundary); any other failure is a bug and is raised as ``RuntimeError`` carrying the child's traceback.
If one job fails, the others are stopped; if this process dies, its jobs are sent SIGTERM (Linux). The numbers a job computes depend only on its own thread
count, so a seeded job gives the same result whether it runs here or in the calling process with the
same number of threads.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import traceback
from typing import Any, Callable, Sequence

import torch

from doei.errors import DoeiError


def _die_with_parent(parent_pid: int) -> None:
    """Linux: have the kernel send this job SIGTERM when the process that started it dies (even by SIGKILL),
    so no orphaned job keeps training and writing into the output folder; elsewhere a no-op."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)                     # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:                        # the parent died before the request took effect
        os._exit(1)


def _child(conn, fn: Callable, args: tuple, threads: int, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    torch.set_num_threads(threads)
    try:
        conn.send(("ok", fn(*args)))
    except DoeiError as e:
        conn.send(("doei", str(e)))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("bug", traceback.format_exc()))
    finally:
        conn.close()


def run_jobs(tasks: Sequence[tuple[Callable, tuple]], jobs: int, threads: int) -> list[Any]:
    """``[fn(*args) for fn, args in tasks]``; with ``jobs > 1``, the tasks run at most ``jobs`` at a time in
    spawned processes with ``threads`` torch threads each; with ``jobs == 1`` here, one after the other
    (with this process's thread count). ``fn`` must be importable (a module-level function)."""
    if jobs <= 1 or len(tasks) <= 1:
        return [fn(*args) for fn, args in tasks]
    ctx = mp.get_context("spawn")
    results: list[Any] = [None] * len(tasks)
    pending = list(enumerate(tasks))
    running: dict[int, tuple[Any, Any]] = {}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                i, (fn, args) = pending.pop(0)
                parent, child = ctx.Pipe(duplex=False)
                old = os.environ.get("TQDM_POSITION")
                os.environ["TQDM_POSITION"] = str(len(running))
                try:
                    # not daemonic: a job may start its own pool (the CRF workers)
                    p = ctx.Process(target=_child, args=(child, fn, args, threads, os.getpid()))
                    p.start()
                finally:
                    if old is None:
                        del os.environ["TQDM_POSITION"]
                    else:
                        os.environ["TQDM_POSITION"] = old
                child.close()
                running[i] = (p, parent)
            ready = multiprocessing.connection.wait([conn for _, conn in running.values()])
            for i in [i for i, (_, conn) in running.items() if conn in ready]:
                p, conn = running.pop(i)
                try:
                    kind, value = conn.recv()
                except EOFError:
                    p.join()
                    raise RuntimeError(f"job {i} ({tasks[i][0].__name__}) died with exit code {p.exitcode}")
                p.join()
                if kind == "doei":
                    raise DoeiError(value)
                if kind == "bug":
                    raise RuntimeError(f"job {i} ({tasks[i][0].__name__}) failed:\n{value}")
                results[i] = value
    finally:
        for p, _ in running.values():
            p.terminate()
            p.join()
    return results


def default_jobs(n_tasks: int = 2) -> int:
    """Parallel jobs for ``n_tasks`` independent runs: one per available core, at most ``n_tasks``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(n_tasks, cores))


def job_threads(jobs: int) -> int:
    """Torch threads of each of ``jobs`` side-by-side jobs: this process's thread count shared out (at least
    one); with one job, this process's count."""
    return torch.get_num_threads() if jobs <= 1 else max(1, torch.get_num_threads() // jobs)


__all__ = ["run_jobs", "default_jobs", "job_threads"]
