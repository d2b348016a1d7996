"""The ceiling rows of the demo's pipeline table (``doei demo --ceilings``): each later stage run from the truth.

* **random walk from true seeds**: oracle CAMs of the pipeline split (the true masks at the classifier's
  8-px token grid, :mod:`doei.cam.oracle`) → AffinityNet trained on them with the demo's recipe → random
  walk (Seed and Mask rows): how much the refinement stage adds, or loses, when its seeds are right;
* **DeepLab on the true masks**: DeepLab trained with the demo's recipe on the true masks of the same
  images (``seg.train.allow_ground_truth``) → multi-scale + CRF inference on the held-out split (Seg and
  Seg+CRF rows): the best that segmentation stage can do with perfect pseudo masks.

Both use only the ground truth, so they are the same for both classifiers and run once, with the settings
of the demo's pipeline config (``doei run`` into ``OUT/pipeline/ceiling_*``, resumable as any run)."""
from __future__ import annotations

import shutil
from pathlib import Path

from doei.cam.oracle import write_oracle_cams
from doei.data.build import build_dataset
from doei.pipeline import run_pipeline
from doei.pipeline_config import pipeline_config_from_dict
from doei.utils.jobs import run_jobs

CEILINGS = {"rw_true_seeds": "random walk from true seeds", "seg_true_masks": "DeepLab on the true masks"}
ORACLE_STRIDE = 8          # the demo classifiers' patch size at 64 px: a perfect CAM is no sharper than its token grid


def run_pipeline_stages(cfg) -> dict:
    """``doei run`` for one config; returns ``{Seed|Mask|Seg|Seg+CRF: {mIoU, FP, FN, beta, split, images,
    mean}}``. Finished stages are skipped (their markers hold the summaries), so a rerun only re-reads the
    table. Used for the demo's two runs and for the ceiling runs."""
    res = run_pipeline(cfg)
    return {k: {"mIoU": v["mIoU"], "FP": v["FP"], "FN": v["FN"], "beta": v["beta"], "split": v["split"],
                "images": v["num_images"], "mean": v["mean_convention"]}
            for k, v in res["eval"]["results"].items()}


def ceiling_configs(cfg, out: Path) -> dict:
    """The two ceiling runs' configs from one demo pipeline config ``cfg`` (its data, split and recipes)."""
    d = cfg.to_dict()
    d["run"]["cls_checkpoint"] = None
    rw = {**d, "run": {**d["run"], "out_dir": str(out / "ceiling_rw_true_seeds"), "stages": ["refine", "eval"]},
          "refine": {"train": {**d["refine"]["train"], "cam_dir": str(out / "ceiling_rw_true_seeds" / "cam"),
                               "out_dir": None},
                     "infer": {**d["refine"]["infer"], "cam_dir": None, "out_dir": None, "checkpoint": None}},
          "seg": {"train": {**d["seg"]["train"], "pseudo_dir": None, "out_dir": None},
                  "infer": {**d["seg"]["infer"], "out_dir": None, "checkpoint": None}}}
    seg_out = out / "ceiling_seg_true_masks"
    seg = {**d, "run": {**d["run"], "out_dir": str(seg_out), "stages": ["train-seg", "infer-seg", "eval"]},
           "refine": {"train": {**d["refine"]["train"], "cam_dir": None, "out_dir": None},
                      "infer": {**d["refine"]["infer"], "cam_dir": None, "out_dir": None, "checkpoint": None}},
           "seg": {"train": {**d["seg"]["train"], "pseudo_dir": str(seg_out / "true_masks"), "out_dir": None,
                             "allow_ground_truth": True},
                   "infer": {**d["seg"]["infer"], "out_dir": None, "checkpoint": None}}}
    return {"rw_true_seeds": pipeline_config_from_dict(rw, where="ceiling rw_true_seeds"),
            "seg_true_masks": pipeline_config_from_dict(seg, where="ceiling seg_true_masks")}


def run_ceilings(cfg, out: Path, stride: int = ORACLE_STRIDE, jobs: int = 1, threads: int = 1) -> dict:
    """Run both ceilings (finished stages are skipped), side by side with ``jobs > 1`` (``utils.jobs``);
    ``{name: {row: {mIoU, FP, FN, ...}}}``. ``stride``: the classifier's token grid in pixels of the
    pipeline's images (8 at 64 px, 16 at 128)."""
    cfgs = ceiling_configs(cfg, out)
    d = cfg.data
    ds = build_dataset(d.kind, d.root, d.train_split)
    rw = cfgs["rw_true_seeds"]
    write_oracle_cams(ds, rw.refine.train.cam_dir, stride)
    seg = cfgs["seg_true_masks"]
    masks = Path(seg.seg.train.pseudo_dir)
    masks.mkdir(parents=True, exist_ok=True)
    for r in ds.records:
        if not (masks / f"{r.id}.png").is_file():
            shutil.copyfile(r.mask_path, masks / f"{r.id}.png")
    return dict(zip(cfgs, run_jobs([(run_pipeline_stages, (c,)) for c in cfgs.values()], jobs, threads)))


__all__ = ["CEILINGS", "ORACLE_STRIDE", "ceiling_configs", "run_ceilings", "run_pipeline_stages"]
