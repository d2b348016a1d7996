"""The demo's two runs one after the other with all threads (``--jobs 1``) against side by side with the
threads shared out (``--jobs 2``, ``doei.utils.jobs``), measured on the demo itself, in the same run.

Each arrangement is a shrunk ``doei demo`` (its own benchmark of ``--n-train`` 64-px scenes, one training
epoch of the demo's classifier at batch 64, and the 128-px pipeline on ``--pipeline-train`` scenes with one
AffinityNet and one DeepLab epoch) into a temporary folder; the arrangements alternate ``--repeats``
times and the medians of the two side-by-side stages' wall seconds (training; pipeline) are compared.
The data loading, the Python work between kernels and the evaluation are part of what is measured, as in
a real demo; at these small sizes the start of two processes (about 4 s each: importing torch, building the
datasets) is a large part of the side-by-side training time. Prints each measurement and, last, ``training_speedup=X pipeline_speedup=Y`` (one after the
other / side by side; above 1: side by side is faster).

    python benchmarks/demo_jobs.py [--n-train 640] [--pipeline-train 96] [--repeats 2]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
from pathlib import Path

from doei.cli import main as cli_main


def one_demo(out: Path, jobs: int, n_train: int, pipeline_train: int) -> dict[str, float]:
    """Run the shrunk demo into ``out``; ``{training, pipeline}`` wall seconds of its two side-by-side stages."""
    args = ["demo", "--out", str(out), "--jobs", str(jobs), "--n-train", str(n_train), "--n-val", "32",
            "--set", "train.epochs=1", "--set", "train.progress=false", "--pipeline-train", str(pipeline_train),
            "--pipeline-set", "refine.train.epochs=1", "--pipeline-set", "seg.train.epochs=1",
            "--pipeline-set", "run.progress=false"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli_main(args) == 0
    t = json.loads((out / "metrics.json").read_text())["timings"]
    return {"training": next(v["wall_s"] for k, v in t.items() if k.startswith("2/")),
            "pipeline": next(v["wall_s"] for k, v in t.items() if "cam -> refine" in k)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-train", type=int, default=640)
    ap.add_argument("--pipeline-train", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    times: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            for jobs in (1, 2):
                t = one_demo(Path(tmp) / f"r{r}_j{jobs}", jobs, a.n_train, a.pipeline_train)
                times[jobs].append(t)
                print(f"repeat {r} --jobs {jobs}: training {t['training']:.1f} s, pipeline {t['pipeline']:.1f} s wall",
                      flush=True)
    med = {j: {k: statistics.median(t[k] for t in times[j]) for k in ("training", "pipeline")} for j in times}
    print(" ".join(f"{k}_speedup={med[1][k] / med[2][k]:.2f}" for k in ("training", "pipeline")))


if __name__ == "__main__":
    main()
