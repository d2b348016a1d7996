"""Cost of DOEI in one training step: 224×224, batch 8, forward + backward + AdamW, DOEI on all 12 blocks
against DOEI off, interleaved repeats in one process (median).

Models: MCTformer-V2 DeiT-S (CPDO + PPDO + HFA), TS-CAM DeiT-S and TransCAM Conformer-S (PPDO + HFA;
C = 1). Prints one ``model=... overhead_ratio=X`` line per model and, last, ``overhead_ratio=X``
(the largest of them; goal <= 1.10).

    python benchmarks/doei_overhead.py [--model mctformer|tscam|transcam|all] [--repeats 5] [--batch 8]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved_medians  # noqa: E402

from doei.core import DOEIConfig  # noqa: E402
from doei.models.registry import create_model  # noqa: E402


MODELS = {
    "mctformer": ("mctformer_v2_deit_small", dict(enabled=True, ppdo=True, cpdo=True, hfa=True)),
    "tscam": ("tscam_deit_small", dict(enabled=True, ppdo=True, cpdo=False, hfa=True)),
    "transcam": ("transcam_conformer_small", dict(enabled=True, ppdo=True, cpdo=False, hfa=True)),
}


def make_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.05)

    def step() -> None:
        out = model(x)
        outs = out if isinstance(out, tuple) else (out,)
        loss = sum(F.multilabel_soft_margin_loss(o, y) for o in outs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="mctformer", choices=[*MODELS, "all"])
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="cpu: process CPU time (use with --threads 1 on a busy machine)")
    ap.add_argument("--num-classes", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = (torch.rand(args.batch, args.num_classes) < 0.15).float()
    ratios = []
    for key in (MODELS if args.model == "all" else [args.model]):
        name, doei_kwargs = MODELS[key]
        torch.manual_seed(0)
        base = create_model(name, num_classes=args.num_classes).train()
        doei = create_model(name, num_classes=args.num_classes, doei=DOEIConfig(**doei_kwargs)).train()
        doei.load_state_dict(base.state_dict())
        med = interleaved_medians({"baseline": make_step(base, x, y), "doei": make_step(doei, x, y)}, args.repeats,
                                  clock=args.clock)
        ratios.append(med["doei"] / med["baseline"])
        print(f"model={name} batch={args.batch} size={args.size} threads={args.threads} repeats={args.repeats} "
              f"clock={args.clock} baseline_step_s={med['baseline']:.3f} doei_step_s={med['doei']:.3f} overhead_ratio={ratios[-1]:.3f}",
              flush=True)
    print(f"overhead_ratio={max(ratios):.3f}")


if __name__ == "__main__":
    main()
