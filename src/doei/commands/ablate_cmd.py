"""``doei ablate``: the paper's Table 4 component grid (baseline; CPDO; PPDO; CPDO+PPDO; CPDO+HFA;
PPDO+HFA; CPDO+PPDO+HFA) × seeds, on the synthetic benchmark or, given a pipeline config (``doei run``'s,
any dataset), as resumable ``doei run``s of the stages the scored row needs (Table 4: Seed on VOC train;
:mod:`doei.study.pipeline_study`), also under ``torchrun`` (rank 0 writes).

On the benchmark each run trains a seeded classifier, writes CAMs of the held-out split and sweeps β; ``OUT/ablation.json``
and ``OUT/ablation.md`` give per row the seed mean ± std of mIoU, FP, FN (at each run's best β and at one
fixed β chosen on the baseline), the paired difference to the baseline with the same seed and the wins,
plus k and ‖Δ‖/‖X‖ per block. Re-running the command skips finished runs (``OUT/runs/<key>/result.json``).
The config's ``study.rows`` picks a subset of the rows (TS-CAM/TransCAM: baseline, PPDO, PPDO + HFA).

Examples::

    doei ablate --config configs/ablate.yaml --out /tmp/ablate --seeds 3
    doei ablate --config configs/ablate.yaml --out /tmp/abl_quick --seeds 2 --quick
    doei ablate --config configs/ablate_tscam.yaml --out /tmp/abl_tscam --seeds 3
    torchrun --nproc_per_node 8 -m doei.cli ablate --config configs/paper/ablate_voc_mctformer_v2.yaml \\
        --set data.root=/data/VOC2012 --out runs/table4 --seeds 3
"""
from __future__ import annotations

import argparse
from pathlib import Path

from doei.errors import DoeiError
from doei.study.ablation import ablation_runs, run_ablation
from doei.study.grid import select_rows
from doei.study.runner import QUICK_HELP, check_plan, load_study, refuse_run_sets
from doei.utils.outdir import check_out_dir, folder_lock
from doei.utils.repo_configs import find_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None,
                   help="study config (default: the repository's configs/ablate.yaml, found from any folder; a "
                        "relative path missing from the working directory is looked up in the repository)")
    p.add_argument("--out", required=True, help="output folder (runs, benchmark, ablation.json/.md)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 per row (default 3)")
    p.add_argument("--first-seed", type=int, default=0, help="first training seed (default 0)")
    p.add_argument("--quick", action="store_true", help=QUICK_HELP)
    p.add_argument("--rows", default=None, metavar="A,B,...",
                   help="run only these rows of the config's table (names as in study.rows; must include baseline)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: tabulate the runs already finished in --out (e.g. while a study runs)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value for every run, e.g. --set train.epochs=3 or doei.af_p2c=0.3")
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


    study = load_study(find_config(args.config, "ablate.yaml"), check_out_dir(args.out), args.overrides,
                       quick=args.quick, smoke=args.smoke, smoke_batch=args.smoke_batch)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    rows = None
    if args.rows:
        rows = select_rows([r.strip() for r in args.rows.split(",") if r.strip()], where=f"--rows {args.rows}")
    refuse_run_sets(study, args.overrides, rows=rows or study.rows)     # a --set the rows would replace
    check_plan(study, ablation_runs(study, seeds, rows))     # bad input: one line, nothing written
    with folder_lock(args.out, "study folder"):
        doc = run_ablation(study, seeds, rows=rows, report_only=args.report_only)
    if not doc:                                   # another rank under torchrun: rank 0 prints
        return 0
    print((Path(args.out) / "ablation.md").read_text())
    print(f"ablation finished ({doc['wall_s_this_call']:.0f} s this call): {Path(args.out) / 'ablation.md'}")
    return 0
