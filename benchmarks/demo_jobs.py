"""Two demo-sized jobs one after the other with all threads, against side by side with the threads shared
out (``doei.utils.jobs.run_jobs``, what ``doei demo --jobs 2`` does), in the same run.

A job is ``--steps`` training steps (forward + backward + AdamW) of a demo network on fixed random data:
``cls`` = the demo classifier (``mctformer_v2_tiny_conv``, 64 px, batch 64, DOEI on), ``seg`` = the
pipeline's DeepLab (``deeplab_resnet38_small``, 1/8 width, 128-px crops, batch 8). Prints the wall time of
each arrangement and, last, per network ``side_by_side_speedup=X`` (sequential wall / side-by-side wall;
above 1: side by side is faster) and ``thread_speedup=Y`` (one job's steps with half the threads / with
all of them: what the extra threads buy one run). The sequential arrangement uses this process's thread count (default:
the cores), side by side gives each of the two jobs half of it.

    python benchmarks/demo_jobs.py [--net cls seg] [--steps 20]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import doei.models.resnet38_small  # noqa: F401  (registers the reduced-width factories)
from doei.core import DOEIConfig
from doei.models.registry import create_model
from doei.utils.jobs import job_threads, run_jobs


def train_steps(net: str, steps: int) -> float:
    """``steps`` seeded training steps of ``net``; returns the wall seconds of the steps (not the build)."""
    torch.manual_seed(0)
    if net == "cls":
        model = create_model("mctformer_v2_tiny_conv", num_classes=10, img_size=64, doei=DOEIConfig(enabled=True))
        x, y = torch.randn(64, 3, 64, 64), (torch.rand(64, 10) < 0.3).float()

        def loss_fn():
            return model.classification_loss(model(x), y)[0]
    else:
        model = create_model("deeplab_resnet38_small", num_classes=11, width=0.125, frozen_bn=False)
        x, y = torch.randn(8, 3, 128, 128), torch.randint(0, 11, (8, 16, 16))

        def loss_fn():
            return F.cross_entropy(model(x), y)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn().backward()                              # warm-up step, not timed
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--net", nargs="+", default=["cls", "seg"], choices=["cls", "seg"])
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    ratios = []
    for net in a.net:
        t0 = time.perf_counter()
        run_jobs([(train_steps, (net, a.steps))] * 2, 1, torch.get_num_threads())
        seq = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_jobs([(train_steps, (net, a.steps))] * 2, 2, job_threads(2))
        par = time.perf_counter() - t0
        full = train_steps(net, a.steps)                                          # one job, all the threads
        threads = torch.get_num_threads()
        torch.set_num_threads(job_threads(2))
        one = train_steps(net, a.steps)                                           # one job, half the threads
        torch.set_num_threads(threads)
        print(f"{net}: 2 jobs x {a.steps} steps: sequential with {torch.get_num_threads()} threads {seq:.1f} s, "
              f"side by side with {job_threads(2)} each {par:.1f} s (incl. process start); one job's steps: "
              f"{full:.1f} s with {threads} threads, {one:.1f} s with {job_threads(2)}", flush=True)
        ratios.append(f"{net}_side_by_side_speedup={seq / par:.2f} {net}_thread_speedup={one / full:.2f}")
    print(" ".join(ratios))


if __name__ == "__main__":
    main()
