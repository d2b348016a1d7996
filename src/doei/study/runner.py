"""One study run — train a seeded classifier → CAMs of the held-out split → β-sweep evaluation — and the
loop over many runs, resumable.

Every run lives in ``OUT/runs/<key>/`` where ``key`` = :func:`doei.study.grid.run_key` (effective DOEI
setting + seed), so settings that compute the same network (e.g. CPDO+HFA and CPDO: HFA only acts on
PPDO's scores) share one run, and an ablation and a sweep writing to the same OUT share their runs.
``result.json`` is written atomically last; a run whose ``result.json`` exists is skipped. An interrupted
training resumes from its checkpoint (``train(resume="auto")``). Progress: a tqdm bar over runs and
``OUT/study_log.jsonl`` (one record per run start / skip / end).

The pieces are the project's public ones: :func:`doei.engine.train_cls.train`, and the demo's CAM
writer and evaluator (:func:`doei.cam.heldout.write_cams`, :func:`doei.cam.heldout.evaluate_cams`,
which wrap :class:`doei.cam.extractor.CamExtractor` and ``doei eval``'s sweep).
"""
from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from doei.cam.heldout import evaluate_cams, write_cams
from doei.config import apply_overrides, load_yaml, read_json, refuse_owned_overrides, section, to_dict
from doei.data.benchmark import ensure_synth
from doei.data.build import build_dataset
from doei.data.cooccurrence import variant_params
from doei.data.synth_context import CONTEXT_DIR, write_context_maps
from doei.data.transforms import cam_transform, eval_transform
from doei.engine.classifier import load_classifier
from doei.engine.train_cls import train
from doei.errors import DoeiError, DoeiWarning
from doei.eval.cooccurrence import evaluate_cooccurrence
from doei.study.grid import effective_doei, run_key, select_rows, TABLE4, validate_doei
from doei.eval.betas import parse_betas
from doei.train_config import train_config_from_dict
from doei.utils.device import resolve_device
from doei.utils.io import append_jsonl, atomic_write_json
from doei.pipeline.fingerprints import describe_change, file_sha256, fingerprint_of, strip_runtime

RESULT_NAME = "result.json"
RUN_SPEC_NAME = "run_spec.json"
STUDY_CODE = 1      # raised when a run's outputs change meaning for the same settings and files
LOG_NAME = "study_log.jsonl"

# --quick: a benchmark and a model tiny enough for tests (seconds per run). The evaluation's settings
# (study.betas, cam_layers) stay the config's: they cost little and decide what the numbers mean.
QUICK_STUDY = {"n_train": 16, "n_val": 4, "stats_images": 4}
QUICK_OVERRIDES = ["train.epochs=1", "train.batch_size=16", "train.eval_every=1", "optim.warmup_epochs=0"]
# ... and, for a model that takes size options (the ViTs; TransCAM's synth Conformer takes none), a tiny one
QUICK_MODEL_OVERRIDES = ["model.options.depth=2", "model.options.embed_dim=32", "model.options.num_heads=2"]
QUICK_HELP = ("synthetic benchmark only: a tiny benchmark and model, seconds per run (tests, a first look). Sets "
              + ", ".join(f"study.{k}={v}" for k, v in QUICK_STUDY.items()) + ", " + ", ".join(QUICK_OVERRIDES)
              + " and, for a model with size options, " + ", ".join(QUICK_MODEL_OVERRIDES)
              + "; everything else is the config's (study.betas, cam_layers, synth_seed, bias, rows), and --set "
              "applies after it")
STUDY_DEFAULTS = {"n_train": 1000, "n_val": 200, "synth_seed": 0, "cam_layers": 3, "betas": "0.05:0.95:0.05",
                  "stats_images": 32, "rows": None, "bias": None}
# study.bias (the co-occurrence variant, doei.data.cooccurrence): the share of a context class's images that
# show its context (p_context) and of house images with a tree (p_companion); null = the benchmark's 0.9 / 0.8


@dataclass
class Study:
    """A study's fixed settings: the output folder, the training config (a TrainConfig dict without the
    per-run fields), the base DOEI dict, and the benchmark/CAM/evaluation settings."""

    out: Path
    train_dict: dict
    base_doei: dict
    n_train: int = 1000
    n_val: int = 200
    synth_seed: int = 0
    cam_layers: int = 3
    betas: str = "0.05:0.95:0.05"
    stats_images: int = 32
    rows: tuple = TABLE4  # the Table-4 rows (grid.Row) ``doei ablate`` runs: the config's ``study.rows``
    bias: float | None = None  # co-occurrence variant: p_context = p_companion = bias (None: the defaults)
    config_path: str = ""
    quick: bool = False
    synth_meta: dict = field(default_factory=dict)

    @property
    def synth_root(self) -> Path:
        tail = "" if self.bias is None else f"-bias{round(100 * self.bias):03d}"
        return self.out / f"synth-{self.n_train}-{self.n_val}-s{self.synth_seed}{tail}"

    @property
    def log_path(self) -> Path:
        return self.out / LOG_NAME


# keys every run of a synthetic-benchmark study sets itself (a --set of one would be silently replaced)
STUDY_SETS = ("data.kind", "data.root", "train.out_dir", "train.seed", "doei.enabled")


def load_study(config: Path, out: Path, overrides: Sequence[str] = (), quick: bool = False,
               smoke: int | None = None, smoke_batch: int | None = None):
    """Read a study config into a :class:`Study`: a TrainConfig YAML plus an optional ``study`` section (the
    synthetic benchmark). A pipeline config (``doei run``'s, any dataset) gives a
    :class:`doei.study.pipeline_study.PipelineStudy` instead: each run is a ``doei run`` (``smoke`` /
    ``smoke_batch``: its ``run.smoke`` / ``run.smoke_batch``, pipeline configs only)."""
    if not Path(config).is_file():
        raise DoeiError(f"--config {config}: file not found")
    d = load_yaml(config)
    from doei.study.pipeline_study import is_pipeline_config, load_pipeline_study

    if is_pipeline_config(d):
        extra = [f"run.smoke={smoke}"] if smoke is not None else []
        extra += [f"run.smoke_batch={smoke_batch}"] if smoke_batch is not None else []
        return load_pipeline_study(Path(config), Path(out), d, list(overrides) + extra, quick=quick)
    if smoke is not None or smoke_batch is not None:
        raise DoeiError(f"--smoke: {config} is a study of the synthetic benchmark; smoke mode is for a pipeline "
                        "config (doei run's), e.g. configs/paper/ablate_voc_mctformer_v2.yaml")
    study = {**STUDY_DEFAULTS, **section(d, "study", str(config))}
    d.pop("study", None)
    unknown = set(study) - set(STUDY_DEFAULTS)
    if unknown:
        raise DoeiError(f"{config}: study: unknown key(s) {sorted(unknown)}; expected some of {sorted(STUDY_DEFAULTS)}")
    if quick:
        study.update(QUICK_STUDY)
        sized = bool((d.get("model") or {}).get("options"))
        d = apply_overrides(d, list(QUICK_OVERRIDES) + (list(QUICK_MODEL_OVERRIDES) if sized else []))
    refuse_owned_overrides(overrides, STUDY_SETS, "--set", "use --out, --seeds/--first-seed, study.* keys, --rows")
    d = apply_overrides(d, list(overrides))
    base = validate_doei(dict(d.pop("doei", None) or {}), where=f"{config}: doei")
    d.setdefault("data", {})["kind"] = "synth"
    d.setdefault("train", {})["progress"] = False
    # validate the training part once, with placeholders for the per-run fields
    probe = copy.deepcopy(d)
    probe["data"]["root"], probe["train"]["out_dir"] = "unset", "unset"
    resolve_device(train_config_from_dict(probe, where=str(config)).train.device, f"{config}: train.device")
    if not isinstance(study["betas"], str):
        raise DoeiError(f"{config}: study.betas = {study['betas']!r}, expected a START:END:STEP or comma list string")
    try:
        parse_betas(study["betas"])
    except DoeiError as e:
        raise DoeiError(f"{config}: study.betas: {str(e).split(': ', 1)[-1]}") from None
    for key, low in (("n_train", 1), ("n_val", 1), ("synth_seed", 0), ("cam_layers", 1), ("stats_images", 1)):
        v = study[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise DoeiError(f"{config}: study.{key} = {v!r}, expected an integer >= {low}")
    try:
        s = Study(out=Path(out), train_dict=d, base_doei=base, n_train=int(study["n_train"]),
                  n_val=int(study["n_val"]), synth_seed=int(study["synth_seed"]), cam_layers=int(study["cam_layers"]),
                  betas=str(study["betas"]), stats_images=int(study["stats_images"]),
                  rows=select_rows(study["rows"], where=f"{config}: study.rows"), config_path=str(config),
                  quick=quick, bias=_check_bias(study["bias"], config))
    except (TypeError, ValueError) as e:
        raise DoeiError(f"{config}: study: {e}") from None
    return s


def _check_bias(v, config) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
        raise DoeiError(f"{config}: study.bias = {v!r}, expected a probability in [0, 1] or null")
    return float(v)


def refuse_run_sets(study, overrides: Sequence[str], rows: Sequence = (), params: Sequence[str] = ()) -> None:
    """Refuse, in one line naming the key, a ``--set`` of a DOEI field that the study's runs set themselves: a
    row's flags (``doei ablate``: ``rows``) or a swept parameter (``doei sweep``: ``params``), under ``doei.``
    (the synthetic benchmark) or ``classifier.doei.`` (a pipeline config). The keys every run sets whatever
    the rows (``doei.enabled``, the run's folder and seed) are refused when the study is loaded."""
    from doei.study.grid import doei_keys_set

    prefix = "doei." if isinstance(study, Study) else "classifier.doei."
    flags, swept = doei_keys_set(rows, params)
    refuse_owned_overrides(overrides, [prefix + k for k in flags], "--set",
                           "the ablation's rows set it in each run; choose rows with --rows or study.rows")
    refuse_owned_overrides(overrides, [prefix + k for k in swept], "--set",
                           "the sweep sets it at each point; give its values with --param")


def check_plan(study, runs: Sequence[tuple[dict, int]]) -> None:
    """Check a study's planned runs before anything is written (a pipeline study:
    :func:`doei.study.pipeline_study.check_plan`; the synthetic benchmark's has nothing to check here)."""
    if not isinstance(study, Study):
        from doei.study.pipeline_study import check_plan as check_pipeline_plan

        check_pipeline_plan(study, runs)


def prepare(study, runs: Sequence[tuple[dict, int]] = ()) -> None:
    """Create the output folder and the benchmark (reused when present with the same parameters), and the
    held-out split's context maps (doei.data.synth_context) for the co-occurrence metrics. A pipeline
    study checks its planned ``runs`` against the folders already there instead (nothing is created)."""
    if not isinstance(study, Study):
        from doei.study.pipeline_study import prepare as prepare_pipeline

        return prepare_pipeline(study, runs)
    check_finished_runs(study, runs)
    study.out.mkdir(parents=True, exist_ok=True)
    extra = None if study.bias is None else variant_params(study.bias)
    study.synth_meta = ensure_synth(study.synth_root, study.n_train, study.n_val, study.synth_seed, extra)
    write_context_maps(study.synth_root, ("val",))


def run_config(study: Study, doei: dict, seed: int, run_dir: Path):
    """The TrainConfig of one run."""
    d = copy.deepcopy(study.train_dict)
    d["data"]["root"] = str(study.synth_root)
    d["train"].update(out_dir=str(run_dir / "train"), seed=int(seed))
    d["doei"] = dict(doei)
    return train_config_from_dict(d, where=f"{study.config_path} (run {run_dir.name})")


def block_stats(checkpoint: Path, synth_root: Path, n_images: int, kind: str = "synth", split: str = "val",
                img_size: int | None = None, **data_options) -> list[dict]:
    """Per-block DOEI statistics of a trained model on the first ``n_images`` images of ``split`` (one
    batch): ``[{block, k_p2c, k_c2c, delta_ratio_patch, delta_ratio_cls}]``; [] with DOEI off. The synthetic
    benchmark's images go in as they are (the CAM transform); with ``img_size`` they get the classifier's
    validation transform (resize + centre crop to ``img_size``; real images differ in size)."""
    model, _ = load_classifier(checkpoint)
    tf = cam_transform() if img_size is None else eval_transform(img_size)
    ds = build_dataset(kind, synth_root, split, transform=tf, **data_options)
    x = torch.stack([ds[i][0] for i in range(min(n_images, len(ds)))])
    model.doei_stats = []
    with torch.no_grad():
        model(x)
    stats = [{k: (float(v) if isinstance(v, (int, float)) and k != "block" else v) for k, v in s.items()}
             for s in model.doei_stats]
    model.doei_stats = None
    return stats


def run_inputs(study: Study, cfg, doei: dict) -> tuple[dict, dict[str, str]]:
    """What one run reads, as ``(settings, files)``: its whole training config (without the run's own
    folder and runtime-only keys; DOEI as the run key reads it, :func:`doei.study.grid.effective_doei`, so
    settings that compute the same network share the run), the benchmark's and the evaluation's settings,
    a code version, and the initial weights (``model.pretrained``) by content hash."""
    train = strip_runtime(to_dict(cfg))
    train["doei"] = effective_doei(doei)
    train["train"].pop("out_dir", None)
    train["data"].pop("root", None)          # the benchmark is named by its parameters below
    bench = {"n_train": study.n_train, "n_val": study.n_val, "synth_seed": study.synth_seed, "bias": study.bias}
    evaluation = {"cam_layers": study.cam_layers, "betas": study.betas, "stats_images": study.stats_images}
    settings = {"train": train, "benchmark": bench, "evaluation": evaluation, "code": STUDY_CODE}
    files = {}
    if cfg.model.pretrained:
        files["model.pretrained"] = file_sha256(cfg.model.pretrained)
    return settings, files


def check_run_spec(run_dir: Path, settings: dict, files: dict[str, str], finished: bool,
                   log: Callable[[str], None] = lambda s: None) -> None:
    """Compare a run folder's recorded inputs with this study's. A finished run made from other inputs is
    refused in one line naming the first difference (never silently reused); an unfinished one is set
    aside (renamed ``<key>.partial-<fingerprint>``) so the corrected study starts it afresh. A finished run
    from before inputs were recorded is reused with a one-line warning."""
    spec_path = run_dir / RUN_SPEC_NAME
    if not spec_path.is_file():
        warnings.warn(f"{run_dir}: finished before its inputs were recorded ({RUN_SPEC_NAME}); reused "
                      "unchecked", DoeiWarning, stacklevel=2)
        return
    old = read_json(spec_path, dict, what="study run spec")
    old_settings, old_files = old.get("settings"), old.get("files")
    if not isinstance(old_settings, dict) or not isinstance(old_files, dict):
        raise DoeiError(f"{spec_path}: expected 'settings' and 'files' mappings; found "
                        f"{type(old_settings).__name__} and {type(old_files).__name__}")
    if old_settings == settings and old_files == files:
        return
    change = describe_change(old_settings, old_files, settings, files)
    if finished:
        raise DoeiError(f"{run_dir}: finished with other inputs ({change}); use another --out, or move "
                        f"the folder away to rerun it")
    dest = run_dir.with_name(f"{run_dir.name}.partial-{old.get('fingerprint', 'unknown')}")
    n = 1
    while dest.exists():
        dest, n = dest.with_name(f"{run_dir.name}.partial-{old.get('fingerprint', 'unknown')}-{n}"), n + 1
    run_dir.rename(dest)
    log(f"{run_dir.name}: an unfinished start with other inputs ({change}) set aside: {dest}")


def check_finished_runs(study: Study, runs: Sequence[tuple[dict, int]]) -> None:
    """Refuse, before anything is written, a planned run whose folder holds a finished run made from
    other inputs (:func:`check_run_spec`)."""
    for doei, seed in runs:
        run_dir = study.out / "runs" / run_key(doei, seed)
        if (run_dir / RESULT_NAME).is_file():
            settings, files = run_inputs(study, run_config(study, doei, seed, run_dir), doei)
            check_run_spec(run_dir, settings, files, finished=True)


def run_one(study: Study, doei: dict, seed: int, log: Callable[[str], None] = lambda s: None) -> dict:
    """Train → CAMs → β sweep → DOEI block statistics for one (DOEI setting, seed); returns the result
    (read back from ``result.json`` when the run already finished)."""
    key = run_key(doei, seed)
    run_dir = study.out / "runs" / key
    res_path = run_dir / RESULT_NAME
    cfg = run_config(study, doei, seed, run_dir)
    settings, files = run_inputs(study, cfg, doei)
    if (run_dir / RUN_SPEC_NAME).is_file():      # (one finished before specs were recorded: prepare() warned)
        check_run_spec(run_dir, settings, files, finished=res_path.is_file(), log=log)
    if res_path.is_file():
        return read_json(res_path, dict, what="run result")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / RUN_SPEC_NAME, {"key": key, "settings": settings, "files": files,
                                                "fingerprint": fingerprint_of(settings, files)})
    t0, c0 = time.time(), time.process_time()
    tr = train(cfg, resume="auto", log=log)
    t1, c1 = time.time(), time.process_time()
    class_names = list(study.synth_meta["classes"])
    ids = write_cams(tr.checkpoint, study.synth_root, run_dir / "cams", study.cam_layers, batch=50)
    ev = evaluate_cams(run_dir / "cams", study.synth_root, ids, class_names, study.betas)
    cooc = ev["cooccurrence"]
    stats = block_stats(tr.checkpoint, study.synth_root, study.stats_images)
    t2, c2 = time.time(), time.process_time()
    result = {
        "key": key, "seed": int(seed), "doei": dict(doei), **{k: ev[k] for k in ("mIoU", "FP", "FN", "beta")},
        "sweep": ev["sweep"], "per_class_IoU": ev["per_class_IoU"], "cooccurrence": cooc,
        "localisation": ev.get("localisation"), "cls_mAP": tr.final.get("val_mAP"), "cls_F1": tr.final.get("val_F1"), "block_stats": stats,
        "timing": {"train_wall_s": round(t1 - t0, 1), "train_cpu_s": round(c1 - c0, 1),
                   "cam_eval_wall_s": round(t2 - t1, 1), "total_wall_s": round(t2 - t0, 1),
                   "total_cpu_s": round(c2 - c0, 1), "epochs_trained_now": tr.epochs_run,
                   "threads": torch.get_num_threads()},
    }
    atomic_write_json(res_path, result)
    return result


def run_all(study, runs: Sequence[tuple[dict, int]], desc: str) -> dict[str, dict]:
    """Run (or reuse) every (DOEI dict, seed) in order, deduplicated by run key; returns key → result.
    A tqdm bar counts runs; ``study_log.jsonl`` gets ``start``/``skip``/``end`` records with wall times.
    A pipeline study's runs are ``doei run``s (:func:`doei.study.pipeline_study.run_one`); under torchrun
    every rank runs them and rank 0 alone logs (the other ranks get ``{}`` per run)."""
    from tqdm import tqdm

    from doei.engine.distributed import env_world

    main = env_world()[0] == 0
    if isinstance(study, Study):
        one = run_one
    else:
        from doei.study.pipeline_study import run_one as one
    todo: dict[str, tuple[dict, int]] = {}
    for doei, seed in runs:
        todo.setdefault(run_key(doei, seed), (doei, seed))
    out: dict[str, dict] = {}
    with tqdm(total=len(todo), desc=desc, unit="run", dynamic_ncols=True, disable=not main) as bar:
        for key, (doei, seed) in todo.items():
            done = (study.out / "runs" / key / RESULT_NAME).is_file()
            if main:
                append_jsonl(study.log_path, {"event": "skip" if done else "start", "key": key, "seed": seed,
                                              "doei": doei, "time": time.time()})
            bar.set_postfix_str(key)
            if isinstance(study, Study):
                res = one(study, doei, seed)
            else:   # the pipeline's stage lines, above the bar
                res = one(study, doei, seed, log=lambda m, k=key: tqdm.write(f"[{k}] {m}"))
            if not main:
                continue
            if not done:
                append_jsonl(study.log_path, {"event": "end", "key": key, "seed": seed, "mIoU": res["mIoU"],
                                              "FP": res["FP"], "FN": res["FN"], "beta": res["beta"],
                                              **res["timing"], "time": time.time()})
            out[key] = res
            bar.update(1)
    return out


def finished_results(study: Study, runs: Sequence[tuple[dict, int]]) -> dict[str, dict]:
    """key → result of the runs among ``runs`` whose ``result.json`` exists (nothing is trained)."""
    out = {}
    for doei, seed in runs:
        path = study.out / "runs" / run_key(doei, seed) / RESULT_NAME
        if path.is_file():
            out[run_key(doei, seed)] = read_json(path, dict, what="run result")
    return out
