"""``doei demo``: DOEI end to end on the built-in synthetic benchmark, on a laptop CPU.

Steps (each prints its progress; finished steps are reused when the command is run again):

1. generate the synthetic benchmark into ``OUT/synth-<n_train>`` if absent (``doei synth``);
2. train the small classifier of ``--model`` (``mctformer``: ``configs/demo.yaml``, ``tscam``:
   ``demo_tscam.yaml``, ``transcam``: ``demo_transcam.yaml``; ``*_quick.yaml`` with ``--quick``) from
   scratch twice: DOEI off (``OUT/runs/baseline``) and on (``OUT/runs/doei``);
3. CAMs of the held-out ``val`` split for both (scale 1.0 + flip, ground-truth image labels, the
   model's own CAM through ``CamExtractor``, then ReLU + per-class min-max (TransCAM's sane "minmax"
   normalisation, not its official one). MCTformer: fused attention of the last ``--cam-layers`` blocks ×
   ReLU(conv head), no patch-affinity refinement unless ``--patch-refine``; TS-CAM: cls attention of all
   blocks × head map; TransCAM: the conv-branch CAM refined by patch-to-patch attention unless
   ``--no-patch-refine``),
   written as ``OUT/cams/<run>/<id>.npz``;
4. the same evaluation (``doei eval``'s β sweep) of both and of two trivial references: every pixel
   background, and a "uniform CAM" giving each labelled class the value 1 everywhere;
5. the rest of the pipeline for both classifiers (``doei run`` with ``configs/demo_pipeline.yaml``): the
   first ``--pipeline-train`` training scenes and the held-out ones rendered again at ``--pipeline-px``
   (128; quick: the 64-px benchmark itself), CAMs → AffinityNet + random walk → DeepLab → multi-scale +
   CRF → Seed / Mask / Seg / Seg+CRF; ``--ceilings`` adds each stage run from the truth;
6. ``OUT/report.md``, ``OUT/metrics.json`` and ``OUT/figures/{cam_overlays,beta_sweep,segmentation}.png``.

The baseline and DOEI runs of steps 2 and 5 run side by side in two processes (``--jobs``, default 2
with 2+ cores; the threads are shared out, and a run's numbers depend only on its own thread count).

Examples::

    doei demo --out demo_out            # ≤ 20 min on an idle 2-core CPU (docs/demo.md)
    doei demo --quick --out demo_quick  # ≤ 3 min smoke run
    doei demo --model transcam --quick --out demo_transcam_quick
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from doei.demo import DemoOptions, MODELS, run_demo
from doei.demo.runner import check_pipeline_config, default_pipeline_px
from doei.errors import DoeiError
from doei.utils.jobs import default_jobs
from doei.utils.outdir import check_out_dir, folder_lock
from doei.utils.repo_configs import configs_dir

# Benchmark sizes (train, val) of each mode; the config of each model and mode is in doei.demo.MODELS.
MODES = {
    "default": {"n_train": 3000, "n_val": 300, "pipeline_train": 1000},
    "quick": {"n_train": 1000, "n_val": 100, "pipeline_train": 200},
}
BETAS = "0.05:0.95:0.05"
OVERLAY_CLASSES = ("boat", "train", "car", "turtle", "house", "fish")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--quick", action="store_true", help="a smaller, shorter run (≤ 3 min on 2 cores; CI)")
    p.add_argument("--model", default="mctformer", choices=["mctformer", "tscam", "transcam"],
                   help="the baseline classifier (configs/demo[_<model>][_quick].yaml)")
    p.add_argument("--config", default=None, help="training config (default: the --model's demo config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training-config value for both runs, e.g. --set train.epochs=2")
    p.add_argument("--n-train", type=int, default=None, help="synthetic training images (default 3000; quick 1000)")
    p.add_argument("--n-val", type=int, default=None, help="synthetic held-out images (default 300; quick 100)")
    p.add_argument("--seed", type=int, default=0, help="benchmark and training seed (default 0)")
    p.add_argument("--train-seed", type=int, default=None,
                   help="training seed only (default --seed): seed repeats on one benchmark")
    p.add_argument("--cam-layers", type=int, default=3, help="blocks whose class attention forms the CAM (default 3)")
    p.add_argument("--patch-refine", action="store_true", default=None,
                   help="patch-affinity refinement of the CAMs (default: off for mctformer, where it hurts the "
                        "small model; on for transcam, whose CAM is the refined one; tscam has none)")
    p.add_argument("--no-patch-refine", dest="patch_refine", action="store_false", default=None,
                   help="no refinement (TransCAM: the plain conv-branch CAM)")
    p.add_argument("--fresh", "--overwrite", dest="fresh", action="store_true",
                   help="retrain even if finished runs exist in --out (they are replaced; without it a finished "
                        "run made with other settings is refused, one with the same settings reused)")
    p.add_argument("--no-pipeline", dest="pipeline", action="store_false",
                   help="stop after the CAMs (skip AffinityNet, DeepLab, CRF and the Seed/Mask/Seg table)")
    p.add_argument("--pipeline-config", default=None,
                   help="doei run config of the later stages (default configs/demo_pipeline[_quick].yaml)")
    p.add_argument("--pipeline-set", dest="pipeline_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a pipeline-config value for both runs, e.g. --pipeline-set seg.train.epochs=2")
    p.add_argument("--pipeline-train", type=int, default=None,
                   help="first N training images used for Seed/Mask and DeepLab (default 1000; quick 200)")
    p.add_argument("--pipeline-px", type=int, default=None,
                   help="image side of the later stages' benchmark: the same scenes rendered at this size (default "
                        "128, twice the classifier's 64 px; quick 64); its config is demo_pipeline[_quick]_px<N>.yaml "
                        "unless --pipeline-config")
    p.add_argument("--jobs", type=int, default=None,
                   help="run the baseline and DOEI trainings and pipelines side by side in this many processes, "
                        "the threads shared out (default: 2 with 2+ cores, else 1; docs/demo.md)")
    p.add_argument("--ceilings", action="store_true",
                   help="also the ceiling rows of the pipeline table: random walk from true seeds, DeepLab trained "
                        "on the true masks (doei.demo.ceilings; about 4 more CPU-minutes at the default sizes)")


def run(args: argparse.Namespace) -> int:
    mode = MODES["quick" if args.quick else "default"]
    n_train, n_val, pipeline_train = _sizes(args, mode)
    if not args.pipeline and (args.pipeline_px is not None or args.pipeline_train is not None):
        flag = "--pipeline-px" if args.pipeline_px is not None else "--pipeline-train"
        raise DoeiError(f"{flag} acts on the pipeline, which --no-pipeline skips; drop one of them")
    pipeline_px = default_pipeline_px(args.quick) if args.pipeline_px is None else args.pipeline_px
    if not 32 <= pipeline_px <= 512:
        raise DoeiError(f"--pipeline-px {pipeline_px}: expected 32..512")
    if args.jobs is not None and args.jobs < 1:
        raise DoeiError(f"--jobs {args.jobs}: expected an integer >= 1")
    jobs = default_jobs(2) if args.jobs is None else args.jobs
    config = (Path(args.config) if args.config
              else _configs_dir() / MODELS[args.model][1]["quick" if args.quick else "default"])
    opts = DemoOptions(
        out=Path(args.out), config=config, overrides=list(args.overrides), model=args.model,
        n_train=n_train, n_val=n_val, seed=args.seed,
        cam_layers=args.cam_layers, patch_refine=args.patch_refine, train_seed=args.train_seed, fresh=args.fresh, quick=args.quick, betas=BETAS,
        overlay_classes=OVERLAY_CLASSES, pipeline=args.pipeline,
        pipeline_config=Path(args.pipeline_config) if args.pipeline_config else None,
        pipeline_overrides=list(args.pipeline_overrides), pipeline_train=pipeline_train, ceilings=args.ceilings,
        pipeline_px=pipeline_px, jobs=jobs,
    )

    check_pipeline_config(opts)
    t0 = time.time()
    with folder_lock(check_out_dir(opts.out), "demo folder"):
        summary = run_demo(opts)
    print(f"\ndemo finished in {time.time() - t0:.0f} s: {opts.out / 'report.md'}")
    print(summary)
    return 0


def _sizes(args: argparse.Namespace, mode: dict) -> tuple[int, int, int]:
    """``(n_train, n_val, pipeline_train)``: a given value is used as given (never replaced by the
    default: 0 is not "unset"), and every integer option is checked before anything is written."""
    for flag, value, low in (("--n-train", args.n_train, 1), ("--n-val", args.n_val, 1),
                             ("--pipeline-train", args.pipeline_train, 1), ("--cam-layers", args.cam_layers, 1),
                             ("--seed", args.seed, 0), ("--train-seed", args.train_seed, 0)):
        if value is not None and value < low:
            raise DoeiError(f"{flag} {value}: expected an integer >= {low}")
    n_train = mode["n_train"] if args.n_train is None else args.n_train
    n_val = mode["n_val"] if args.n_val is None else args.n_val
    if args.pipeline_train is not None and args.pipeline_train > n_train:
        raise DoeiError(f"--pipeline-train {args.pipeline_train}: expected at most --n-train ({n_train}) "
                        "training images")
    pipeline_train = mode["pipeline_train"] if args.pipeline_train is None else args.pipeline_train
    return n_train, n_val, pipeline_train


def _configs_dir() -> Path:
    """The repository's ``configs/`` folder (the package is installed in editable mode by the Makefile)."""
    return configs_dir()
