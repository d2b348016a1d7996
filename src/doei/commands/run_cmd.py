"""``doei run``: the whole WSSS pipeline from one config, resumable stage by stage and image by image.

Examples::

    doei run --config configs/demo_pipeline.yaml
    doei run --config configs/demo_pipeline.yaml --set run.out_dir=demo_out/pipeline_doei --set classifier.doei.enabled=true
    doei run --config voc.yaml --set run.cls_checkpoint=MCTformerV2.pth --set run.stages=[cam,refine,train-seg,infer-seg,eval]
    doei run --config configs/paper/voc_mctformer_v2_doei.yaml --smoke 1 --set run.out_dir=runs/smoke/voc_v2_doei

Smoke mode (``--smoke N`` = ``run.smoke: N``; docs/pipeline.md): every stage at the config's own sizes,
capped at N optimiser steps and N images per split, random init (no pretrained file read); prints and
writes ``<run.out_dir>/smoke.json`` (per stage: wall seconds, s/step or s/image, peak memory). Training
stages use their configured batch unless ``--smoke-batch B``. Never a result: a real run refuses its folder.


Stages, in order: ``train-cls`` (classifier, :mod:`doei.engine.train_cls`) → ``cam`` (CAMs of the
train split) → ``refine`` (AffinityNet training + random-walk pseudo masks) → ``train-seg``
(DeepLab on the pseudo masks) → ``infer-seg`` (val split, multi-scale + flip + CRF) → ``eval``
(Seed, Mask, Segmentation with/without CRF). Under ``torchrun`` the training stages run with DDP,
the per-image stages are sharded over the ranks and rank 0 alone writes markers, logs and the
eval table (docs/distributed.md). After a stage finishes, ``<run.out_dir>/stages/<stage>/
stage_done.json`` is written atomically with the stage's fingerprint (its settings, the files it
reads, its code version); a rerun skips a stage whose fingerprint is unchanged and refuses one
whose inputs changed, naming the first change (docs/reliability.md, "Fingerprints"). A stage that
did not finish and is rerun with other settings has its partial outputs set aside (renamed).
Inside an unfinished stage the work resumes too: training from the last end-of-epoch checkpoint,
per-image stages at the first image without outputs. Stage start/end/skip/fail events (with wall
times) go to ``<run.out_dir>/run_log.jsonl``; the eval table to ``<run.out_dir>/eval.json``.
"""
from __future__ import annotations

import argparse

from doei.pipeline import format_table, run_pipeline
from doei.pipeline_config import load_pipeline_config
from doei.utils import cliargs

DEVICE_KEYS = ('run.device', 'refine.train.device', 'refine.infer.device', 'seg.train.device', 'seg.infer.device')
PROGRESS_KEYS = ('run.progress', 'refine.train.progress', 'refine.infer.progress', 'seg.train.progress', 'seg.infer.progress')


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("Examples::")[1].split("Stages, in order")[0]
    p.add_argument("--config", required=True, help="pipeline YAML (configs/demo_pipeline.yaml, docs/pipeline.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set refine.train.epochs=2 (repeatable)")
    p.add_argument("--smoke", type=int, default=None, metavar="N",
                   help="smoke mode: every stage at real size, capped at N steps / N images, random init (= run.smoke)")
    p.add_argument("--smoke-batch", type=int, default=None, metavar="B",
                   help="smoke mode only: batch B for the three training stages (= run.smoke_batch)")
    cliargs.add_data_root(p, help="dataset folder (sets data.root)")
    cliargs.add_device(p, "run.device and every stage's device")
    cliargs.add_no_progress(p)


def run(args: argparse.Namespace) -> int:
    extra = [f"run.smoke={args.smoke}"] if args.smoke is not None else []
    extra += [f"run.smoke_batch={args.smoke_batch}"] if args.smoke_batch is not None else []
    extra += cliargs.overrides(args, {"device": DEVICE_KEYS, "progress": PROGRESS_KEYS})
    if args.data_root:
        extra.append(f"data.root={args.data_root}")
    cfg = load_pipeline_config(args.config, list(args.overrides) + extra)
    said: list[str] = []

    def log(msg: str) -> None:
        said.append(msg)
        print(msg, flush=True)

    res = run_pipeline(cfg, log=log, config_path=str(args.config))
    if "eval" in res and res["eval"].get("table"):
        table = format_table(res["eval"]["table"])
        if table not in said:          # the eval stage prints it when it runs; a skipped one does not
            print(table)
    return 0
