"""Where a training step's time goes, DOEI off vs on, per operator (torch.profiler), in one run.

Profiles ``--steps`` interleaved training steps (forward + backward + AdamW, 224², batch 8, one thread)
of two contenders of one model and prints, per operator, the self CPU time per step of each and the
difference, largest differences first; writes benchmarks/results/doei_profile_<model>_<a>_<b>.json.
Contenders as in benchmarks/doei_overhead.py (off_eager, off_fused, on_eager, on_fused). This is
how docs/benchmarks.md explains the old TS-CAM reading (DOEI "faster" than no DOEI).

    python benchmarks/doei_profile.py [--model tscam] [--a off_eager] [--b on_eager] [--steps 4]
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_result  # noqa: E402
from doei_overhead import MODELS, make_step  # noqa: E402

from doei.core import DOEIConfig  # noqa: E402
from doei.models.registry import create_model  # noqa: E402
from doei.models.vit import set_attention_impl  # noqa: E402

KINDS = ("off_eager", "off_fused", "on_eager", "on_fused")


def build(key: str, kind: str, base: torch.nn.Module, num_classes: int) -> torch.nn.Module:
    name, doei_kwargs = MODELS[key]
    if kind.startswith("off"):
        m = copy.deepcopy(base)
    else:
        m = create_model(name, num_classes=num_classes, doei=DOEIConfig(**doei_kwargs)).train()
        m.load_state_dict(base.state_dict())
    return set_attention_impl(m, "eager") if kind.endswith("eager") else m


def profile_steps(step, n: int) -> tuple[dict[str, float], dict[str, int], float]:
    from torch.profiler import ProfilerActivity, profile

    t0 = time.process_time()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            step()
    cpu = (time.process_time() - t0) / n
    self_us: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for e in prof.key_averages():
        self_us[e.key] += e.self_cpu_time_total / n
        calls[e.key] += e.count // n
    return dict(self_us), dict(calls), cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tscam", choices=list(MODELS))
    ap.add_argument("--a", default="off_eager", choices=KINDS)
    ap.add_argument("--b", default="on_eager", choices=KINDS)
    ap.add_argument("--steps", type=int, default=4, help="profiled steps per contender (after one warm-up)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved profiling rounds (results averaged)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--num-classes", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = (torch.rand(args.batch, args.num_classes) < 0.15).float()
    base = create_model(MODELS[args.model][0], num_classes=args.num_classes).train()
    steps = {k: make_step(build(args.model, k, base, args.num_classes), x, y) for k in (args.a, args.b)}
    for s in steps.values():
        s()
    acc = {k: (defaultdict(float), {}, []) for k in steps}
    for _ in range(args.rounds):
        for k, s in steps.items():
            self_us, calls, cpu = profile_steps(s, args.steps)
            for op, us in self_us.items():
                acc[k][0][op] += us / args.rounds
            acc[k][1].update(calls)
            acc[k][2].append(cpu)
    a, b = args.a, args.b
    ops = set(acc[a][0]) | set(acc[b][0])
    rows = sorted(((acc[b][0].get(o, 0.0) - acc[a][0].get(o, 0.0), o) for o in ops), key=lambda t: -abs(t[0]))
    tot_a, tot_b = sum(acc[a][0].values()) / 1e6, sum(acc[b][0].values()) / 1e6
    print(f"model={MODELS[args.model][0]} batch={args.batch} size={args.size} threads={args.threads} "
          f"steps={args.steps}x{args.rounds}; profiled self CPU s/step: {a} {tot_a:.3f}, {b} {tot_b:.3f} "
          f"(ratio {tot_b / tot_a:.3f}); process CPU s/step (profiler on): "
          f"{a} {[round(v, 3) for v in acc[a][2]]}, {b} {[round(v, 3) for v in acc[b][2]]}")
    print(f"{'operator':<58} {a + ' ms':>12} {b + ' ms':>12} {'diff ms':>9} {'calls':>11}")
    table = []
    for d, o in rows[: args.top]:
        ca, cb = acc[a][1].get(o, 0), acc[b][1].get(o, 0)
        print(f"{o[:58]:<58} {acc[a][0].get(o, 0) / 1e3:12.1f} {acc[b][0].get(o, 0) / 1e3:12.1f} {d / 1e3:9.1f} "
              f"{ca:>5}/{cb:<5}")
    for d, o in rows:
        table.append({"op": o, a: acc[a][0].get(o, 0) / 1e3, b: acc[b][0].get(o, 0) / 1e3, "diff_ms": d / 1e3,
                      "calls": [acc[a][1].get(o, 0), acc[b][1].get(o, 0)]})
    path = write_result(f"doei_profile_{args.model}_{a}_{b}", {
        "model": MODELS[args.model][0], "a": a, "b": b, "batch": args.batch, "size": args.size,
        "threads": args.threads, "steps": args.steps, "rounds": args.rounds,
        "profiled_self_cpu_s_per_step": {a: tot_a, b: tot_b}, "process_cpu_s_per_step": {a: acc[a][2], b: acc[b][2]},
        "ops_ms_per_step": table, "machine": machine(),
        "command": "python benchmarks/doei_profile.py " + " ".join(sys.argv[1:])})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
