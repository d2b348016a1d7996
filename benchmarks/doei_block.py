"""DOEI's cost inside one block, forward + backward, against the fused attention it sits on, in one run.

At the shapes of the paper models' 224² training step (batch 8, 6 heads of 64, 196 patches; MCTformer-V2:
C = 20 class tokens, PPDO + CPDO + HFA; TS-CAM / TransCAM: C = 1, PPDO + HFA) it times, interleaved,

    fused        the block's attention by F.scaled_dot_product_attention (DOEI off), forward + backward
    fused_copy   the same again: this run's noise floor
    class        doei.core.attention.class_attention: the fused output plus the class rows/columns DOEI
                 reads, forward + backward with a gradient on all three (what a DOEI block computes)
    eager        the official eager softmax(q kᵀ) path with the head mean DOEI reads, forward + backward
    update       doei.core.doei_update (the token update between blocks), forward + backward

with q, k, v taken as views of one [B, T, 3, H, d] projection output, as the models do, and prints
milliseconds per block (CPU time, one thread) and the extra cost of a DOEI block over a fused one. The
whole step is benchmarks/doei_overhead.py; this script says which part of the difference is which.
Writes benchmarks/results/doei_block.json.

    python benchmarks/doei_block.py [--shapes mctformer,tscam] [--repeats 25] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved_times, machine, noise_floor, paired_ratio, spread, write_result  # noqa: E402

from doei.core import DOEIConfig, doei_update  # noqa: E402
from doei.core.attention import ClassAttention, class_attention, eager_attention, fused_attention  # noqa: E402

# name: (class tokens C, DOEI parts) at B = 8, H = 6, d = 64, P = 196, DOEI after block 3 of 12
SHAPES = {"mctformer": (20, dict(ppdo=True, cpdo=True, hfa=True)),
          "tscam": (1, dict(ppdo=True, cpdo=False, hfa=True))}
B, H, D_HEAD, P = 8, 6, 64, 196


def contenders(c: int, parts: dict) -> dict:
    t, scale = c + P, D_HEAD ** -0.5
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(B, t, 3, H, D_HEAD, generator=g).requires_grad_(True)
    g_out = torch.randn(B, t, H, D_HEAD, generator=g).transpose(1, 2)       # the layout a projection hands back
    g_rows, g_cols = torch.randn(B, c, t, generator=g), torch.randn(B, P, c, generator=g)
    g_mean = torch.randn(B, t, t, generator=g)

    def views():
        return [z.transpose(1, 2) for z in qkv.unbind(2)]

    def fused():
        torch.autograd.backward(fused_attention(*views(), scale), g_out)
        qkv.grad = None

    def class_():
        out, part = class_attention(*views(), scale, c)
        torch.autograd.backward([out, part.rows, part.cols], [g_out, g_rows, g_cols])
        qkv.grad = None

    def eager():
        out, attn = eager_attention(*views(), scale)
        torch.autograd.backward([out, attn.mean(dim=1)], [g_out, g_mean])
        qkv.grad = None

    cfg = DOEIConfig(enabled=True, **parts)
    q, k, v = (z.detach() for z in views())
    with torch.no_grad():
        _, part = class_attention(q, k, v, scale, c)
    rows, cols = part.rows.clone().requires_grad_(True), part.cols.clone().requires_grad_(True)
    x = torch.randn(B, t, H * D_HEAD, generator=g).requires_grad_(True)
    g_hat = torch.softmax(torch.randn(B, P, P, generator=g), dim=-1)
    g_x = torch.randn(B, t, H * D_HEAD, generator=g)

    def update():
        doei_update(x, ClassAttention(rows, cols), c, 3, 12, cfg, g_hat).backward(g_x)
        x.grad = rows.grad = cols.grad = None

    return {"fused": fused, "fused_copy": fused, "class": class_, "eager": eager, "update": update}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="mctformer,tscam", help=f"comma-separated, of {list(SHAPES)}")
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="result file (default benchmarks/results/doei_block.json)")
    args = ap.parse_args(argv)
    names = [s for s in args.shapes.split(",") if s]
    bad = [s for s in names if s not in SHAPES]
    if bad or not names or args.repeats < 3 or args.threads < 1:
        print(f"doei_block: --shapes must name some of {list(SHAPES)} (got {args.shapes!r}), --repeats >= 3, "
              f"--threads >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    results = {}
    for name in names:
        c, parts = SHAPES[name]
        times = interleaved_times(contenders(c, parts), args.repeats, warmup=2, clock="cpu")
        ms = {k: spread([1e3 * s for s in v]) for k, v in times.items()}
        floor = noise_floor(paired_ratio(times, "fused_copy", "fused"))
        extra = {k: spread([1e3 * (a - b) for a, b in zip(times[k], times["fused"])]) for k in ("class", "eager")}
        results[name] = {"class_tokens": c, "doei": parts, "batch": B, "heads": H, "patches": P,
                         "ms_per_block": ms, "extra_ms_over_fused": extra,
                         "class_over_fused": paired_ratio(times, "class", "fused"),
                         "eager_over_fused": paired_ratio(times, "eager", "fused"), "noise_floor": floor}
        print(f"{name}: C={c} B={B} H={H} T={c + P}, ms per block (median), one thread, CPU time")
        for k, s in ms.items():
            print(f"  {k:<11} {s['median']:7.2f}  [IQR {s['q1']:.2f}-{s['q3']:.2f}]")
        print(f"  class - fused {extra['class']['median']:+.2f} ms, eager - fused {extra['eager']['median']:+.2f} ms, "
              f"update {ms['update']['median']:.2f} ms; noise floor of the fused ratio ±{floor:.3f}")
    path = write_result("doei_block", {"results": results, "repeats": args.repeats, "threads": args.threads,
                                       "clock": "cpu", "machine": machine(),
                                       "command": "python benchmarks/doei_block.py " + " ".join(argv or sys.argv[1:])},
                        args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
