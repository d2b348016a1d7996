"""Helpers shared by the benchmark scripts: interleaved timing with a median."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def interleaved_medians(fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 1,
                        clock: str = "wall") -> dict[str, float]:
    """Run every fn ``warmup`` times, then ``repeats`` rounds of all fns in turn; median seconds per fn.

    Interleaving spreads the machine's background noise evenly over the contenders. ``clock="cpu"``
    measures this process's CPU time instead of wall time: on a shared machine with one compute thread
    it is far less sensitive to other jobs.
    """
    timer = time.process_time if clock == "cpu" else time.perf_counter
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = timer()
            fn()
            times[name].append(timer() - t0)
    return {k: statistics.median(v) for k, v in times.items()}
