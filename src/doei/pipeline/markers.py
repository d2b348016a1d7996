"""Stage markers of ``doei run``: what a finished stage leaves behind, and the settings it was made with.

After a stage finishes, ``<run.out_dir>/stages/<stage>/stage_done.json`` is written atomically with a
fingerprint of the settings that determine the stage's outputs (runtime-only keys such as ``device``
or ``num_workers`` left out); a rerun skips a stage whose marker has the same fingerprint and refuses
one with another (never silently mixing two settings in one folder).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from doei.pipeline_config import PipelineConfig

MARKER = "stage_done.json"
# settings that do not change a stage's outputs (excluded from the stage fingerprint)
_RUNTIME_KEYS = {"progress", "device", "num_workers", "crf_workers", "log_every", "workers",
                 "allow_ground_truth"}   # a permission (oracle runs), not a setting of the outputs
RUN_LOG = "run_log.jsonl"


# keys added later that count only when not at their default (markers written before them stay valid)
_COUNT_UNLESS = {"sync_bn": True}


def _strip_runtime(obj):
    if isinstance(obj, dict):
        return {k: _strip_runtime(v) for k, v in obj.items()
                if k not in _RUNTIME_KEYS and not (k in _COUNT_UNLESS and v is _COUNT_UNLESS[k])}
    if isinstance(obj, list):
        return [_strip_runtime(v) for v in obj]
    return obj


def stage_settings(cfg: PipelineConfig, stage: str) -> dict:
    """The config parts that determine ``stage``'s outputs (runtime-only keys removed)."""
    d = cfg.to_dict()
    parts = {
        "train-cls": {"classifier": d["classifier"], "data": d["data"], "cls_checkpoint": d["run"]["cls_checkpoint"],
                      "seed": d["run"]["seed"]},
        "cam": {"cam": d["cam"], "data": d["data"]},
        "refine": {"refine": _without_false(d["refine"], "infer", "overlays")},
        "train-seg": {"seg_train": d["seg"]["train"]},
        "infer-seg": {"seg_infer": d["seg"]["infer"]},
        "eval": {"eval": {k: v for k, v in d["eval"].items() if not (k == "train_split" and v is None)}},
    }[stage]          # eval.train_split only counts when set: markers written before the key existed stay valid
    if d["run"].get("smoke") is not None:   # a smoke stage is never taken for a real one (and vice versa)
        parts = {**parts, "smoke": {"smoke": d["run"]["smoke"], "smoke_batch": d["run"].get("smoke_batch")}}
    return _strip_runtime(parts)


def _without_false(section: dict, sub: str, key: str) -> dict:
    """``section`` without ``section[sub][key]`` when it is False: a key added later with an off default keeps
    the markers written before it valid."""
    if section.get(sub, {}).get(key) is False:
        section = {**section, sub: {k: v for k, v in section[sub].items() if k != key}}
    return section


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def marker_path(cfg: PipelineConfig, stage: str) -> Path:
    return Path(cfg.run.out_dir) / "stages" / stage / MARKER


def read_marker(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # unreadable marker = stage not done (it is rewritten atomically when the stage finishes)


