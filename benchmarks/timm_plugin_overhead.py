"""Cost of the timm plug-in in one training step: a timm DeiT with DOEI plugged (PPDO + HFA, C = 1, all
blocks) against the same timm model with its default (fused) attention and with the explicit-attention
path the plug-in switches to, interleaved repeats in one process (median).

Forward + backward + AdamW at 224×224, batch 8 (``--model``, ``--size``, ``--batch`` to change).
Prints one line with the step times, the paired per-round ratios with their spread, the noise floor
(fused against an identical copy of itself) and, last, the ratios of the medians:
``plugged_vs_fused=X plugged_vs_explicit=Y explicit_vs_fused=Z``. The clock is this process's CPU time
with one thread by default (benchmarks/_common.py). Writes benchmarks/results/timm_plugin_overhead.json.

    python benchmarks/timm_plugin_overhead.py [--model deit_small_patch16_224] [--repeats 5] [--batch 8]
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt_ratio, interleaved_times, machine, noise_floor, paired_ratio, spread, write_result  # noqa: E402

from doei.core import DOEIConfig  # noqa: E402
from doei.models.timm_plugin import plug  # noqa: E402


def make_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, sync: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.05)

    def step() -> None:
        loss = F.multilabel_soft_margin_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sync:
            torch.cuda.synchronize()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--num-classes", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clock", default="cpu", choices=["wall", "cpu"],
                    help="cpu: process CPU time (default; with --threads 1 on a busy machine; CPU only)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    y = (torch.rand(args.batch, args.num_classes) < 0.15).float().to(dev)
    kw = dict(pretrained=False, num_classes=args.num_classes, img_size=args.size)
    fused = timm.create_model(args.model, **kw).to(dev).train()
    explicit = copy.deepcopy(fused)
    for blk in explicit.blocks:
        blk.attn.fused_attn = False
    plugged = plug(copy.deepcopy(fused), DOEIConfig(enabled=True, ppdo=True, cpdo=False, hfa=True))
    sync = dev.type == "cuda"
    if args.clock == "cpu" and dev.type == "cuda":
        ap.error("--clock cpu measures CPU time; use --clock wall on CUDA")
    fused_copy = copy.deepcopy(fused)
    steps = {"fused": make_step(fused, x, y, sync), "fused_copy": make_step(fused_copy, x, y, sync),
             "explicit": make_step(explicit, x, y, sync), "plugged": make_step(plugged, x, y, sync)}
    times = interleaved_times(steps, args.repeats, warmup=1, clock=args.clock)
    med = {k: spread(v)["median"] for k, v in times.items()}
    ratios = {"plugged/fused": paired_ratio(times, "plugged", "fused"),
              "plugged/explicit": paired_ratio(times, "plugged", "explicit"),
              "explicit/fused": paired_ratio(times, "explicit", "fused"),
              "fused_copy/fused": paired_ratio(times, "fused_copy", "fused")}
    floor = noise_floor(ratios["fused_copy/fused"])
    print(f"model={args.model} device={dev.type} batch={args.batch} size={args.size} threads={args.threads} "
          f"repeats={args.repeats} clock={args.clock} fused_attn_default={fused.blocks[0].attn.fused_attn} "
          f"fused_step_s={med['fused']:.3f} explicit_step_s={med['explicit']:.3f} "
          f"plugged_step_s={med['plugged']:.3f}", flush=True)
    for k, r in ratios.items():
        print(f"  {k} = {fmt_ratio(r)}")
    print(f"  noise floor of this run: ±{floor:.3f} (the plug-in runs timm's explicit attention in its DOEI blocks)")
    print(f"plugged_vs_fused={med['plugged'] / med['fused']:.3f} "
          f"plugged_vs_explicit={med['plugged'] / med['explicit']:.3f} "
          f"explicit_vs_fused={med['explicit'] / med['fused']:.3f}")
    write_result("timm_plugin_overhead", {
        "model": args.model, "device": dev.type, "batch": args.batch, "size": args.size, "threads": args.threads,
        "repeats": args.repeats, "clock": args.clock, "step_s": {k: spread(v) for k, v in times.items()},
        "ratios": ratios, "noise_floor": floor, "machine": machine(),
        "command": "python benchmarks/timm_plugin_overhead.py " + " ".join(sys.argv[1:])})


if __name__ == "__main__":
    main()
