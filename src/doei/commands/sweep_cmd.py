"""``doei sweep``: one-parameter DOEI sweeps, each value × seeds, on the synthetic benchmark or, given a
pipeline config (``doei run``'s, any dataset), as ``doei run``s scored on one eval row (Fig. 4 on VOC).

``--param NAME=V1,V2,...`` (repeatable) with NAME one of st_p2c, af_p2c, sf_p2c, st_c2c, af_c2c, sf_c2c,
alpha, layers (K = DOEI after the first K blocks) or suppress (rest, bottom); the other knobs stay at the
config's ``doei`` section (a pipeline config: ``classifier.doei``; without ``--param``, its ``study.sweep``). Writes ``OUT/sweep_<NAME>.json`` and ``OUT/sweep_<NAME>.png`` (mIoU, FP, FN
against the value, the baseline as a band, k and ‖Δ‖/‖X‖ per block beside each point) and ``OUT/sweep.md``.
Finished runs are skipped (shared with ``doei ablate`` when the same ``--out`` is used).

Example::

    doei sweep --config configs/ablate.yaml --param af_p2c=0.1,0.3,1,3,10 --param layers=1,2,4 --out /tmp/sweep
    torchrun --nproc_per_node 8 -m doei.cli sweep --config configs/paper/sweep_voc_mctformer_v2.yaml \\
        --set data.root=/data/VOC2012 --out runs/fig4 --seeds 1
"""
from __future__ import annotations

import argparse
from pathlib import Path

from doei.errors import DoeiError
from doei.study.grid import parse_param, sweep_doei
from doei.study.runner import QUICK_HELP, check_plan, load_study, refuse_run_sets
from doei.study.sweep import run_sweep, sweep_runs
from doei.utils.outdir import check_out_dir, folder_lock
from doei.utils.repo_configs import find_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None,
                   help="study config (default: the repository's configs/ablate.yaml, found from any folder; a "
                        "relative path missing from the working directory is looked up in the repository)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=V1,V2,...", help="a parameter to sweep")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seeds", type=int, default=1, help="training seeds 0..N-1 per value (default 1)")
    p.add_argument("--first-seed", type=int, default=0, help="first training seed (default 0)")
    p.add_argument("--quick", action="store_true", help=QUICK_HELP)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value for every run, e.g. --set doei.suppress=bottom")
    p.add_argument("--smoke", type=int, default=None, metavar="N",
                   help="pipeline config only: every run in smoke mode (doei run --smoke N: real sizes, N steps / "
                        "N images per stage, random init; timings, not results)")
    p.add_argument("--smoke-batch", type=int, default=None, metavar="B",
                   help="with --smoke: batch B for the training stages (= run.smoke_batch)")


def run(args: argparse.Namespace) -> int:
    if args.seeds < 1:
        raise DoeiError(f"--seeds {args.seeds}: expected at least 1")
    if args.first_seed < 0:
        raise DoeiError(f"--first-seed {args.first_seed}: expected an integer >= 0")
    params = [parse_param(s) for s in args.param]


    study = load_study(find_config(args.config, "ablate.yaml"), check_out_dir(args.out), args.overrides,
                       quick=args.quick, smoke=args.smoke, smoke_batch=args.smoke_batch)
    params = params or list(getattr(study, "sweep", ()))
    if not params:
        raise DoeiError("--param: give at least one NAME=V1,V2,... (e.g. af_p2c=0.1,0.3,1); a pipeline config "
                        "may list them in study.sweep")
    refuse_run_sets(study, args.overrides, params=[name for name, _ in params])   # a --set the points replace
    for name, values in params:           # every sweep point's DOEI settings, before anything is written
        for v in values:
            sweep_doei(study.base_doei, name, v)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    check_plan(study, sweep_runs(study, params, seeds))     # bad input: one line, nothing written
    with folder_lock(args.out, "study folder"):
        docs = run_sweep(study, params, seeds)
    if docs:                                      # {} on the other ranks under torchrun: rank 0 prints
        print((Path(args.out) / "sweep.md").read_text())
    return 0
