"""Stage markers of ``doei run``: what a finished (or started) stage leaves behind, and what it was made from.

After a stage finishes, ``<run.out_dir>/stages/<stage>/stage_done.json`` is written atomically with the
stage's fingerprint (:mod:`doei.pipeline.fingerprints`: the settings it uses, the files it reads, its
code version), the settings and file digests themselves (so a refusal can name what changed), and the
library versions it ran with (recorded, not compared). When a stage starts, ``stage_started.json``
records the same fingerprint: a rerun of an unfinished stage with other settings knows that the partial
outputs it finds are not its own (:func:`doei.pipeline.runner.run_pipeline` sets them aside).

Every marker is read back through the one schema check (:func:`doei.config.read_json`): a marker that
is not JSON, or holds the wrong type under a key, is one line naming the file and the key.
"""
from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from doei.config import read_json
from doei.pipeline.fingerprints import strip_runtime
from doei.pipeline_config import PipelineConfig

MARKER = "stage_done.json"
STARTED = "stage_started.json"
RUN_LOG = "run_log.jsonl"
FORMAT = "doei-stage-marker-v2"


@dataclass
class StageMarker:
    """The content of ``stage_done.json`` / ``stage_started.json`` (v1 markers: the first five keys)."""

    stage: str
    fingerprint: str
    seconds: float = 0.0
    finished: str = ""
    summary: dict = field(default_factory=dict)
    format: str = "doei-stage-marker-v1"
    settings: Optional[dict] = None
    files: Optional[dict[str, str]] = None
    versions: Optional[dict[str, str]] = None
    started: str = ""
    resources: Optional[dict] = None      # wall seconds, peak memory (doei.pipeline.smoke.StageMeter)
    smoke: Optional[dict] = None          # {smoke, smoke_batch} of a smoke run


def versions() -> dict[str, str]:
    """Library versions a stage ran with (recorded in its marker; not part of the fingerprint)."""
    from importlib import metadata

    import numpy
    import torch

    try:
        mine = metadata.version("doei")
    except metadata.PackageNotFoundError:
        mine = "?"
    return {"doei": mine, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def stage_settings(cfg: PipelineConfig, stage: str) -> dict:
    """The v1 markers' settings of ``stage`` (config parts, runtime keys removed): still accepted for a
    marker written before files were fingerprinted (see :func:`doei.pipeline.runner.run_pipeline`)."""
    d = cfg.to_dict()
    parts = {
        "train-cls": {"classifier": d["classifier"], "data": d["data"], "cls_checkpoint": d["run"]["cls_checkpoint"],
                      "seed": d["run"]["seed"]},
        "cam": {"cam": d["cam"], "data": d["data"]},
        "refine": {"refine": _without_false(d["refine"], "infer", "overlays")},
        "train-seg": {"seg_train": d["seg"]["train"]},
        "infer-seg": {"seg_infer": d["seg"]["infer"]},
        "eval": {"eval": {k: v for k, v in d["eval"].items() if not (k == "train_split" and v is None)}},
    }[stage]
    if d["run"].get("smoke") is not None:   # a smoke stage is never taken for a real one (and vice versa)
        parts = {**parts, "smoke": {"smoke": d["run"]["smoke"], "smoke_batch": d["run"].get("smoke_batch")}}
    v1_runtime = {"progress", "device", "num_workers", "crf_workers", "log_every", "workers", "allow_ground_truth"}

    count_unless = {"sync_bn": True, "gt_source": None}   # keys added later: count only when not at their default

    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items()
                    if k not in v1_runtime and not (k in count_unless and v is count_unless[k])}
        return [strip(v) for v in obj] if isinstance(obj, list) else obj
    return strip(parts)


def _without_false(section: dict, sub: str, key: str) -> dict:
    """``section`` without ``section[sub][key]`` when it is False: a key added later with an off default keeps
    the markers written before it valid."""
    if section.get(sub, {}).get(key) is False:
        section = {**section, sub: {k: v for k, v in section[sub].items() if k != key}}
    return section


def fingerprint(settings: dict) -> str:
    """The v1 fingerprint (settings only)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def marker_path(cfg: PipelineConfig, stage: str) -> Path:
    return Path(cfg.run.out_dir) / "stages" / stage / MARKER


def started_path(cfg: PipelineConfig, stage: str) -> Path:
    return Path(cfg.run.out_dir) / "stages" / stage / STARTED


def read_marker(path: Path) -> StageMarker | None:
    """The marker at ``path``, ``None`` when there is none; a damaged one is a one-line DoeiError (it is
    written atomically, so damage is never a torn write: someone edited it)."""
    if not path.exists() and not path.is_symlink():
        return None
    m = read_json(path, StageMarker, what="stage marker")
    if m.stage != path.parent.name:
        from doei.errors import DoeiError

        raise DoeiError(f"stage marker {path}: stage: expected {path.parent.name!r}, found {m.stage!r}")
    return m


__all__ = ["MARKER", "STARTED", "RUN_LOG", "FORMAT", "StageMarker", "versions", "stage_settings", "fingerprint",
           "marker_path", "started_path", "read_marker", "strip_runtime"]
