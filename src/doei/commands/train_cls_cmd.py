"""``doei train-cls``: train the WSSS classifier (MCTformer-V2 objective) from a YAML config.

Examples::

    doei train-cls --config configs/voc_mctformer_v2.yaml
    doei train-cls --config configs/voc_mctformer_v2_doei.yaml --set train.out_dir=runs/doei
    doei train-cls --config configs/demo.yaml --set data.root=demo_out/synth --set train.epochs=2
    doei train-cls --config configs/demo.yaml --resume          # continue after the last finished epoch

Writes ``<train.out_dir>/checkpoint.pt`` (atomically, every epoch), ``config.yaml`` and
``metrics.jsonl``. See docs/training.md. Under ``torchrun`` it trains with DDP and only rank 0 writes
and prints (docs/distributed.md).
"""
from __future__ import annotations

import argparse

from doei.engine import distributed as dist_util
from doei.engine.train_cls import train
from doei.train_config import load_train_config
from doei.utils import cliargs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML training config (see configs/ and docs/training.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue bit-for-bit from <train.out_dir>/checkpoint.pt (the config must match)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh even if <train.out_dir> holds a run (it is replaced); without it that is refused")
    cliargs.add_data_root(p, help="dataset folder (sets data.root)")
    cliargs.add_device(p, "train.device")
    cliargs.add_no_progress(p)


def run(args: argparse.Namespace) -> int:
    sets = list(args.overrides) + cliargs.overrides(args, {"device": ("train.device",), "progress": ("train.progress",)})
    if args.data_root:
        sets.append(f"data.root={args.data_root}")
    cfg = load_train_config(args.config, sets)
    res = train(cfg, resume=bool(args.resume), overwrite=bool(args.overwrite))
    if not dist_util.is_main():                     # torchrun: rank 0 reports
        return 0
    summary = ", ".join(f"{k} {v:.2f}" for k, v in res.final.items()
                        if k.startswith("val_") and isinstance(v, float))
    print(f"done: {res.checkpoint}" + (f" ({summary})" if summary else "") + f" in {res.seconds:.0f} s")
    return 0
