"""Helpers shared by the benchmark scripts: interleaved timing, spread, paired ratios, noise floor, results.

How the timing scripts resolve a few per cent on a shared machine:

* every contender runs once per round, rounds interleaved, so slow drifts of the machine hit all alike;
* ratios are PAIRED: the ratio of two contenders is computed within each round, and the median and
  inter-quartile range of those per-round ratios are reported (not a ratio of two medians);
* the noise floor is measured in the same run: the baseline against an identical copy of itself
  (same weights, same optimiser, its own tensors); its per-round ratio should be 1.00 and its spread
  is what this run can resolve;
* ``clock="cpu"`` (the default) measures this process's CPU time (``time.process_time``) with one
  compute thread: other processes' load does not enter it, only their effect on caches and memory
  bandwidth. ``clock="wall"`` is ``time.perf_counter``.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def interleaved_times(fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 1,
                      clock: str = "cpu", progress: bool = True) -> dict[str, list[float]]:
    """Run every fn ``warmup`` times, then ``repeats`` rounds of all fns in turn; seconds per call.

    The order within a round rotates (round r starts at contender r mod n), so no contender always
    runs right after the same other one."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {list(CLOCKS)}, got {clock!r}")
    timer = CLOCKS[clock]
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in fns}
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=repeats * len(names), desc="timing", leave=False)
    for r in range(repeats):
        for j in range(len(names)):
            name = names[(r + j) % len(names)]
            t0 = timer()
            fns[name]()
            times[name].append(timer() - t0)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return times


def interleaved_medians(fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 1,
                        clock: str = "wall") -> dict[str, float]:
    """Median seconds per fn of :func:`interleaved_times` (kept for the older scripts)."""
    times = interleaved_times(fns, repeats, warmup, clock, progress=False)
    return {k: statistics.median(v) for k, v in times.items()}


def spread(values: list[float]) -> dict:
    """median, quartiles, min, max and n of a list of numbers."""
    v = sorted(values)
    if len(v) >= 2:
        q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive")
    else:
        q1 = q3 = v[0]
    return {"median": statistics.median(v), "q1": q1, "q3": q3, "min": v[0], "max": v[-1], "n": len(v)}


def paired_ratio(times: dict[str, list[float]], num: str, den: str) -> dict:
    """Spread of the per-round ratios ``times[num][r] / times[den][r]``."""
    return spread([a / b for a, b in zip(times[num], times[den])])


def noise_floor(ratio: dict) -> float:
    """What a run can resolve, from the baseline-vs-copy ratio: the larger of its median's distance
    from 1 and half its inter-quartile range."""
    return max(abs(ratio["median"] - 1.0), (ratio["q3"] - ratio["q1"]) / 2)


def fmt_ratio(r: dict) -> str:
    return f"{r['median']:.3f} [IQR {r['q1']:.3f}-{r['q3']:.3f}]"


# environment variables that change what a timing measures (threads, allocator), recorded with every result
TIMING_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "LD_PRELOAD", "GLIBC_TUNABLES")


def machine() -> dict:
    """The machine and software a result was measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=False).stdout.strip()
    except OSError:
        rev = ""
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "loadavg_at_start": load,
            "git": rev, "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "environment": {k: v for k, v in sorted(os.environ.items()) if k in TIMING_ENV or k.startswith("MALLOC_")}}


def write_result(name: str, payload: dict, out: str | os.PathLike | None = None) -> Path:
    """Write ``payload`` as JSON to ``out`` or benchmarks/results/<name>.json (atomically); returns the path."""
    from doei.utils.io import atomic_write_text

    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=1, sort_keys=False) + "\n")
    return path
