"""A study on a pipeline config (any dataset kind): every (row, seed) is a resumable ``doei run``.

``doei ablate`` / ``doei sweep`` given a pipeline config (docs/pipeline.md; an optional ``study``
section) run each DOEI setting × seed as :func:`doei.pipeline.run_pipeline` in ``OUT/runs/<key>/run``,
with only the stages the scored row needs: ``Seed`` → train-cls, cam, eval (the CAMs are made for the
scored split only); ``Mask`` → + refine; ``Seg`` / ``Seg+CRF`` → every stage. The row's DOEI setting
replaces ``classifier.doei``; the seed is ``run.seed`` (and the seed of every training stage the run
has). Each run is resumable as ``doei run`` is (stage markers, checkpoints, per-image outputs); when its
eval stage is done, ``OUT/runs/<key>/result.json`` is written (rank 0) and the run is skipped from then
on. ``OUT/runs/<key>/run_spec.json`` records the fingerprint of the settings the run's stages are made
with; a later call whose settings differ (another ``--set``, an edited config) is refused before
anything runs, naming the run and the stage, and so is one whose input files changed (an image, a label
list, initial weights: each finished stage's fingerprint, as ``doei run`` checks it; ``result.json``
keeps a copy, so a finished run is checked even after its ``run`` folder was deleted). A ``--set`` of a key the study sets in each run (the run's
folder, seed and stages, ``classifier.doei.enabled``, a row's DOEI flags, the swept parameter) is refused
in one line naming the key, as on the synthetic benchmark (``doei.*``). Under ``torchrun`` every rank runs every pipeline (DDP
training, sharded per-image stages, exactly as ``doei run``); rank 0 alone writes results, logs, tables.

The study section of a pipeline config::

    study:
      rows: [baseline, cpdo, ppdo, ...]   # doei.study.grid row names (default: the whole Table 4)
      score: Seed                         # the eval row scored: Seed | Mask | Seg | Seg+CRF
      stats_images: 8                     # images of the scored split for DOEI's per-block statistics (0: none)
      sweep: {alpha: [0, 0.35, 1]}        # doei sweep's parameters when no --param is given
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from doei.config import apply_overrides, from_dict, read_json, refuse_owned_overrides
from doei.engine import distributed as dist_util
from doei.errors import DoeiError
from doei.pipeline import (describe_change, fingerprint, inputs_change, marker_path, preflight, read_marker, resolve,
                           run_pipeline, stage_settings)
from doei.pipeline.markers import StageMarker
from doei.pipeline.smoke import smoke_config
from doei.pipeline_config import STAGES, PipelineConfig, pipeline_config_from_dict
from doei.study.grid import TABLE4, canonical_doei, parse_param, run_key, select_rows, validate_doei
from doei.utils.io import atomic_write_json

RUN_SPEC = "run_spec.json"
# the eval row scored -> the stage that produces its predictions (doei.pipeline.evaluation.eval_rows)
SCORES = {"Seed": "cam", "Mask": "refine", "Seg": "infer-seg", "Seg+CRF": "infer-seg"}
PIPELINE_STUDY_KEYS = {"rows": None, "score": "Seed", "stats_images": 8, "sweep": None}
# keys every run sets itself (whatever the rows): a --set of one would be silently replaced; the seeds of the
# training stages only where the scored row runs them (refine, train-seg)
PIPELINE_SETS = ("run.out_dir", "run.seed", "run.stages", "classifier.train.seed", "classifier.doei.enabled")
STAGE_SEEDS = {"refine": "refine.train.seed", "train-seg": "seg.train.seed"}
# output paths the study sets per run: a config that fixes one would make every run write to the same place
_RUN_PATHS = ("refine.train.cam_dir", "refine.train.out_dir", "refine.infer.cam_dir", "refine.infer.out_dir",
              "refine.infer.checkpoint", "seg.train.pseudo_dir", "seg.train.out_dir", "seg.infer.out_dir",
              "seg.infer.checkpoint", "classifier.train.out_dir", "cam.out_dir")


def is_pipeline_config(d: dict) -> bool:
    """A ``doei run`` config (sections run/classifier/cam/...) rather than a synthetic-benchmark TrainConfig."""
    return isinstance(d, dict) and bool({"classifier", "run", "refine", "seg"} & set(d))


@dataclass
class PipelineStudy:
    """A study's fixed settings: the output folder, the pipeline config dict (overrides applied, ``study``
    removed), the base DOEI dict (its ``classifier.doei``), the rows, the scored eval row."""

    out: Path
    pipeline: dict
    base_doei: dict
    rows: tuple = TABLE4
    score: str = "Seed"
    stats_images: int = 8
    sweep: tuple = ()                   # ((param, [values]), ...) from study.sweep
    config_path: str = ""
    quick: bool = False                 # never true (the synthetic study's --quick); kept for the documents
    checked: frozenset = frozenset()    # run keys check_plan has passed

    @property
    def log_path(self) -> Path:
        return self.out / "study_log.jsonl"

    @property
    def stages(self) -> list[str]:
        """The pipeline stages up to the scored row's producer, then eval."""
        last = STAGES.index(SCORES[self.score])
        return [s for s in STAGES[:last + 1] if s != "eval"] + ["eval"]

    @property
    def scored_split(self) -> str:
        ev = self.pipeline.get("eval") or {}
        data = self.pipeline.get("data") or {}
        if self.score in ("Seed", "Mask"):
            return ev.get("train_split") or data.get("train_split") or "train_aug"
        return ((self.pipeline.get("seg") or {}).get("infer") or {}).get("split") or data.get("val_split") or "val"

    def run_dir(self, key: str) -> Path:
        return self.out / "runs" / key

    def run_config(self, doei: dict, seed: int) -> PipelineConfig:
        """The ``doei run`` config of one (DOEI setting, seed)."""
        d = copy.deepcopy(self.pipeline)
        key = run_key(doei, seed)
        run = d.setdefault("run", {})
        run.update(out_dir=str(self.run_dir(key) / "run"), seed=int(seed), stages=self.stages)
        cls = d.setdefault("classifier", {})
        cls["doei"] = canonical_doei(doei)      # the same for every setting with this run key
        if "seed" in (cls.get("train") or {}):      # an explicit classifier seed follows the study's seed too
            cls["train"]["seed"] = int(seed)
        for stage, path in (("refine", ("refine", "train")), ("train-seg", ("seg", "train"))):
            if stage in self.stages:
                d.setdefault(path[0], {}).setdefault(path[1], {})["seed"] = int(seed)
        if self.score == "Seed":       # CAMs only where they are scored (VOC: train's 1,464, not train_aug's 10,582)
            d.setdefault("cam", {}).setdefault("split", self.scored_split)
            d.setdefault("refine", {}).setdefault("infer", {}).setdefault("split", self.scored_split)  # (not run)
        return pipeline_config_from_dict(d, where=f"{self.config_path} (run {key})")

    def spec(self, cfg: PipelineConfig) -> dict:
        """What the run's outputs depend on: each stage's settings (doei.pipeline.stage_settings), with the
        run's own folder written as ``<run>`` so that the study folder may be moved."""
        settings = {st: stage_settings(cfg, st) for st in cfg.run.stages}
        smoke = {"smoke": cfg.run.smoke, "smoke_batch": cfg.run.smoke_batch}
        text = json.dumps({"stages": settings, "smoke": smoke}, sort_keys=True, default=str)
        return json.loads(text.replace(json.dumps(str(Path(cfg.run.out_dir)))[1:-1], "<run>"))

    def describe(self) -> dict:
        data, run = self.pipeline.get("data") or {}, self.pipeline.get("run") or {}
        model = ((self.pipeline.get("classifier") or {}).get("model") or {}).get("name")
        return {"kind": data.get("kind", "voc"), "root": data.get("root"), "model": model, "score": self.score,
                "split": self.scored_split, "stages": self.stages, "stats_images": self.stats_images,
                "smoke": run.get("smoke"), "smoke_batch": run.get("smoke_batch")}


def load_pipeline_study(config: Path, out: Path, d: dict, overrides: Sequence[str] = (),
                        quick: bool = False) -> PipelineStudy:
    """A :class:`PipelineStudy` from a pipeline config dict ``d`` (read from ``config``) and ``--set`` overrides."""
    if quick:
        raise DoeiError(f"--quick: {config} is a pipeline config; --quick shrinks the synthetic benchmark only "
                        "(use --set run.smoke=N or tiny --set overrides)")
    d = apply_overrides(d, list(overrides))
    study = {**PIPELINE_STUDY_KEYS, **(d.pop("study", None) or {})}
    unknown = sorted(set(study) - set(PIPELINE_STUDY_KEYS))
    if unknown:
        raise DoeiError(f"{config}: study: unknown key(s) {unknown} for a pipeline config; expected some of "
                        f"{sorted(PIPELINE_STUDY_KEYS)} (n_train, n_val, ... belong to the synthetic benchmark)")
    if study["score"] not in SCORES:
        raise DoeiError(f"{config}: study.score = {study['score']!r}, expected one of {list(SCORES)}")
    n = study["stats_images"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise DoeiError(f"{config}: study.stats_images = {n!r}, expected an integer >= 0")
    if (d.get("run") or {}).get("cls_checkpoint"):
        raise DoeiError(f"{config}: run.cls_checkpoint is set, but every row trains its own classifier; remove it")
    for path in _RUN_PATHS:
        node = d
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node:
            raise DoeiError(f"{config}: {path} = {node!r}; the study puts each run's outputs under "
                            f"{out}/runs/<key>/run, so leave it unset")
    base = validate_doei(dict((d.get("classifier") or {}).get("doei") or {}), where=f"{config}: classifier.doei")
    s = PipelineStudy(out=Path(out).resolve(), pipeline=d, base_doei=base, score=study["score"], stats_images=n,
                      rows=select_rows(study["rows"], where=f"{config}: study.rows"),
                      sweep=_sweep_params(study["sweep"], config), config_path=str(config))
    refuse_owned_overrides(overrides, [*PIPELINE_SETS, *(STAGE_SEEDS[st] for st in s.stages if st in STAGE_SEEDS)],
                           "--set", "each run's folder, seed and stages: use --out, --seeds/--first-seed, study.score;"
                           " DOEI on/off: the rows")
    if s.score == "Seg+CRF" and not ((d.get("seg") or {}).get("infer") or {}).get("crf", True):
        raise DoeiError(f"{config}: study.score = 'Seg+CRF' but seg.infer.crf is false")
    resolve(s.run_config({**base, "enabled": False}, 0))   # the config builds (typed sections, one-line errors)
    return s


def _sweep_params(v, config) -> tuple:
    if v is None:
        return ()
    if not isinstance(v, dict) or not v:
        raise DoeiError(f"{config}: study.sweep = {v!r}, expected a mapping NAME: [values] (e.g. alpha: [0, 0.35, 1])")
    out = []
    for name, values in v.items():
        if not isinstance(values, list) or not values:
            raise DoeiError(f"{config}: study.sweep.{name} = {values!r}, expected a non-empty list of values")
        out.append(parse_param(f"{name}=" + ",".join(str(x) for x in values)))
    return tuple(out)


def check_runs(study: PipelineStudy, runs: Sequence[tuple[dict, int]]) -> None:
    """Refuse, before anything runs, a planned run whose folder was made with other settings."""
    for doei, seed in runs:
        key = run_key(doei, seed)
        cfg = study.run_config(doei, seed)
        path = study.run_dir(key) / RUN_SPEC
        if not path.is_file():
            continue
        old = read_json(path, dict, what="study run spec")
        now = study.spec(cfg)
        if old.get("fingerprint") != fingerprint(now):
            before = (old.get("spec") or {}).get("stages") or {}
            what = [st for st in cfg.run.stages if before.get(st) != now["stages"].get(st)]
            first = (f"{what[0]}: " + describe_change(before.get(what[0]) or {}, {}, now["stages"][what[0]], {})
                     if what else "")
            if (old.get("spec") or {}).get("smoke") != now["smoke"]:
                what.insert(0, "run.smoke/smoke_batch")
            raise DoeiError(f"{path.parent}: made with other settings ({', '.join(what) or 'stages'} differ"
                            f"{'; ' + first if first else ''}); use another --out or delete {path.parent} to redo it")
        check_inputs(study, cfg, key)


def check_inputs(study: PipelineStudy, cfg: PipelineConfig, key: str) -> None:
    """Refuse a planned run whose finished stages were made from other inputs (a data file, a label list,
    initial weights, ... changed since), by the rule of ``doei run``'s stage fingerprints
    (:func:`doei.pipeline.inputs_change`): each stage's marker, or, where the run folder is gone, the record
    of the stages' inputs in ``result.json``. One line naming the run, the stage and the first change."""
    rdir = study.run_dir(key)
    res_path = rdir / "result.json"
    recorded = read_json(res_path, dict, what="run result").get("inputs") if res_path.is_file() else None
    if recorded is not None and not isinstance(recorded, dict):
        raise DoeiError(f"{res_path}: inputs: expected a mapping, found {type(recorded).__name__}")
    r = None
    for st in cfg.run.stages:
        done = read_marker(marker_path(cfg, st))
        if done is None and (recorded or {}).get(st) is not None:
            done = from_dict(StageMarker, recorded[st], where=f"{res_path}: inputs.{st}")
        if done is None:
            continue
        r = r or resolve(cfg)
        change = inputs_change(r, st, done)
        if change is not None:
            raise DoeiError(f"{rdir}: stage {st} finished with other inputs ({change}); its results are not "
                            f"reused; use another --out or delete {rdir} to redo it")


def check_doei_settings(study: PipelineStudy, runs: Sequence[tuple[dict, int]]) -> None:
    """Every planned DOEI setting fits the classifier: its ``layers`` within the network's depth, an active
    part for its number of class tokens (:meth:`doei.core.DOEIConfig.check_effect`). One build of the network
    (DOEI off, random init, no file read), so that a bad sweep point is refused before the first run, not
    after hours of others."""
    import copy as _copy

    from doei.core.config import DOEIConfig
    from doei.engine.classifier import build_classifier

    tcfg = _copy.deepcopy(resolve(study.run_config({"enabled": False}, 0)).classifier)
    tcfg.model.pretrained = None
    model = build_classifier(tcfg)
    depth, tokens = int(model.depth), int(model.num_cls_tokens)
    del model
    for doei, seed in runs:
        d = DOEIConfig(**canonical_doei(doei))
        try:
            d.validate_depth(depth)
            d.check_effect(tokens)
        except ValueError as e:
            raise DoeiError(f"{study.config_path}: the DOEI setting of run {run_key(doei, seed)} does not fit "
                            f"{tcfg.model.name}: {e}") from None


def check_plan(study: PipelineStudy, runs: Sequence[tuple[dict, int]]) -> None:
    """Check every planned run's settings before any runs (reads only; the commands call it before they
    take the study folder, so bad input leaves nothing behind): each builds, none contradicts a folder
    already there, each DOEI setting fits the network (:func:`check_doei_settings`), and the cheap checks
    ``doei run`` makes before its first stage pass (dataset, class count, initial-weights files;
    :func:`doei.pipeline.preflight`)."""
    check_runs(study, runs)
    check_doei_settings(study, runs)
    if runs:
        cfg = study.run_config(*runs[0])
        if cfg.run.smoke is not None:               # as the run will be made: no pretrained files read
            cfg = smoke_config(cfg)[0]
        preflight(cfg, study.stages, lambda m: None)
    study.checked = study.checked | {run_key(d, s) for d, s in runs}


def prepare(study: PipelineStudy, runs: Sequence[tuple[dict, int]]) -> None:
    """:func:`check_plan` (unless these runs were checked already) and the study folder."""
    if not {run_key(d, s) for d, s in runs} <= study.checked:
        check_plan(study, runs)
    if dist_util.env_world()[0] == 0:
        study.out.mkdir(parents=True, exist_ok=True)


def run_one(study: PipelineStudy, doei: dict, seed: int, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) one ``doei run`` and return its result (``result.json``'s content); other ranks: {}."""
    key = run_key(doei, seed)
    rdir = study.run_dir(key)
    res_path = rdir / "result.json"
    if res_path.is_file():
        return read_json(res_path, dict, what="run result")
    cfg = study.run_config(doei, seed)
    main = dist_util.env_world()[0] == 0
    if main and not (rdir / RUN_SPEC).is_file():
        spec = study.spec(cfg)
        rdir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(rdir / RUN_SPEC, {"key": key, "seed": int(seed), "doei": canonical_doei(doei), "spec": spec,
                                            "fingerprint": fingerprint(spec)})
    t0 = time.time()
    out = run_pipeline(cfg, log=log, config_path=study.config_path)
    if not main:
        return {}
    ev = (out.get("eval") or {}).get("results") or {}
    if study.score not in ev:
        raise DoeiError(f"{cfg.run.out_dir}/eval.json: no {study.score} row (split {study.scored_split!r} has no "
                        "ground-truth masks, or its stage did not run); the study scores that row")
    row = ev[study.score]
    markers = {st: read_marker(marker_path(cfg, st)) for st in cfg.run.stages}
    seconds = {st: None if m is None else m.seconds for st, m in markers.items()}
    peak = {st: None if m is None else (m.resources or {}).get("peak_rss_mb") for st, m in markers.items()}
    trained = (out.get("train-cls") or {}).get("final") or {}
    stats = []
    if study.stats_images and doei.get("enabled"):
        from doei.data.build import dataset_options
        from doei.study.runner import block_stats

        r = resolve(cfg)
        stats = block_stats(r.checkpoint, cfg.data.root, study.stats_images, kind=cfg.data.kind,
                            split=study.scored_split, img_size=r.classifier.model.img_size,
                            **dataset_options(cfg.data))
    done = [v for v in seconds.values() if v is not None]
    result = {
        "key": key, "seed": int(seed), "doei": canonical_doei(doei), "score": study.score, "split": row["split"],
        "num_images": row["num_images"], **{k: row[k] for k in ("mIoU", "FP", "FN", "beta")},
        "sweep": row.get("sweep") or [], "per_class_IoU": row.get("per_class_IoU", {}), "cooccurrence": None,
        "cls_mAP": trained.get("val_mAP"), "cls_F1": trained.get("val_F1"), "block_stats": stats,
        "run_dir": f"runs/{key}/run",
        # total_wall_s: the stages' own wall seconds (their markers), so a resumed run reports its whole cost
        "timing": {"total_wall_s": round(sum(done), 1), "stage_seconds": seconds, "stage_peak_rss_mb": peak,
                   "wall_s_this_call": round(time.time() - t0, 1)},
        "smoke": cfg.run.smoke,
        # each stage's inputs as its marker records them: a later study checks them (check_inputs) even
        # where the run folder is gone
        "inputs": {st: {k: getattr(m, k) for k in ("stage", "fingerprint", "format", "settings", "files")}
                   for st, m in markers.items() if m is not None},
    }
    atomic_write_json(res_path, result)
    return result
