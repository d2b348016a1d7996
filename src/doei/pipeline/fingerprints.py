"""What each stage of ``doei run`` reads, as a fingerprint: its settings, its input files, its code version.

The rule (docs/reliability.md, "Fingerprints"): a stage's fingerprint covers

* **settings**: exactly the config values the stage uses (runtime-only keys such as ``device``,
  ``num_workers``, ``progress`` left out, :data:`RUNTIME_KEYS`), with the defaults ``doei run`` fills in;
* **files**: a single named file (a classifier checkpoint, initial weights, the split's id list and labels)
  by the SHA-256 of its content; a folder of per-image files (the split's images and masks, CAMs, pseudo
  masks, predictions) by the path, size and modification time of each file the stage reads (hashing
  ~10k images on every run would cost minutes);
* **code**: :data:`STAGE_CODE`, a version per stage, raised when a stage's outputs change meaning.

:func:`stage_inputs` returns ``(settings, files)`` for one stage; :data:`STAGE_TABLE` lists, per stage,
the settings keys and the files it reads (the property test in ``tests/test_pipeline_fingerprints.py``
changes each in turn). A finished stage whose fingerprint differs is refused in one line naming the
first setting or file that changed (:func:`describe_change`); nothing is silently reused.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from doei.config import to_dict

# raised when a stage's outputs change meaning for the same settings and files
STAGE_CODE = {"train-cls": 1, "cam": 1, "refine": 1, "train-seg": 1, "infer-seg": 1, "eval": 1}
# settings that do not change a stage's outputs
RUNTIME_KEYS = {"progress", "device", "num_workers", "crf_workers", "log_every", "workers",
                "allow_ground_truth"}   # a permission (oracle runs), not a setting of the outputs

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


# keys that count only when not at their default (sync_bn: true is what one process computes anyway)
COUNT_UNLESS = {"sync_bn": True}


def strip_runtime(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: strip_runtime(v) for k, v in obj.items()
                if k not in RUNTIME_KEYS and not (k in COUNT_UNLESS and v is COUNT_UNLESS[k])}
    if isinstance(obj, (list, tuple)):
        return [strip_runtime(v) for v in obj]
    return obj


def file_sha256(path: str | os.PathLike) -> str:
    """``sha256:<hex>`` of the file's content, ``missing`` when it is absent (cached per path/size/mtime)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return "missing"
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _SHA_CACHE[key] = "sha256:" + h.hexdigest()
    return _SHA_CACHE[key]


def files_stat(paths: list[Path], base: str | os.PathLike | None = None) -> str:
    """``stat:<hex>`` over ``(path, size, mtime_ns)`` of every file (a missing one as ``missing``);
    ``missing`` when none exists. Paths under ``base`` (the run folder) count relative to it."""
    h = hashlib.sha256()
    present = 0
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{_rel(str(p), base)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            present += 1
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return "missing" if not present else f"stat:{h.hexdigest()[:32]} ({present} files)"


def _rel(obj: Any, base: str | os.PathLike | None) -> Any:
    """``obj`` with every string path under ``base`` written ``<run.out_dir>/...``: a run folder that is moved
    (with its files' times, ``cp -a``/``mv``) keeps its fingerprints."""
    if base is None:
        return obj
    b = str(base).rstrip("/")
    if isinstance(obj, str):
        return "<run.out_dir>" + obj[len(b):] if obj == b or obj.startswith(b + "/") else obj
    if isinstance(obj, dict):
        return {k: _rel(v, base) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rel(v, base) for v in obj]
    return obj


_OPEN: dict | None = None    # split -> dataset, while one stage_inputs call runs (each split is opened once)


def _dataset(cfg, split: str):
    from doei.data.build import dataset_from_config

    if _OPEN is not None and split in _OPEN:
        return _OPEN[split]
    ds = dataset_from_config(cfg.data, split)
    if _OPEN is not None:
        _OPEN[split] = ds
    return ds


def split_files(cfg, split: str, masks: bool = False) -> dict[str, str]:
    """The split's records (ids + image-level labels) by content, its images (and masks) by stat."""
    ds = _dataset(cfg, split)
    recs = json.dumps([[r.id, list(r.classes)] for r in ds.records]).encode()
    out = {f"data[{split}].records": "sha256:" + hashlib.sha256(recs).hexdigest(),
           f"data[{split}].images": files_stat([r.image_path for r in ds.records])}
    if masks:
        out[f"data[{split}].masks"] = files_stat([r.mask_path for r in ds.records if r.mask_path is not None])
    return out


def _ids(cfg, split: str) -> list[str]:
    return _dataset(cfg, split).ids


def _data_settings(cfg) -> dict:
    return strip_runtime(to_dict(cfg.data))


def stage_inputs(r, stage: str) -> tuple[dict, dict[str, str]]:
    """``(settings, files)`` of ``stage`` for the resolved pipeline ``r`` (:class:`doei.pipeline.stages.Resolved`).

    ``settings``: a JSON-able dict of the config values the stage uses (dotted top-level names);
    ``files``: ``{name: digest}`` of what it reads (names say which key chose the file)."""
    global _OPEN
    _OPEN = {}
    try:
        return _stage_inputs(r, stage)
    finally:
        _OPEN = None


def _stage_inputs(r, stage: str) -> tuple[dict, dict[str, str]]:
    cfg = r.cfg
    d = cfg.to_dict()
    rt, ri, st, si = cfg.refine.train, cfg.refine.infer, cfg.seg.train, cfg.seg.infer
    files: dict[str, str] = {}
    if stage == "train-cls":
        if cfg.run.cls_checkpoint:
            settings = {"run.cls_checkpoint": str(Path(cfg.run.cls_checkpoint).resolve())}
            files["run.cls_checkpoint"] = file_sha256(cfg.run.cls_checkpoint)
        else:
            settings = {"classifier": strip_runtime(r.classifier.to_dict())}
            tc = r.classifier.data
            files.update(split_files(cfg, tc.train_split))
    elif stage == "cam":
        settings = {"cam": strip_runtime(to_dict(r.cam))}
        files["classifier checkpoint"] = file_sha256(r.checkpoint)
        files.update(split_files(cfg, r.cam.split))
    elif stage == "refine":
        settings = {"data": _data_settings(cfg), "refine": strip_runtime(d["refine"])}
        ids = _ids(cfg, rt.split) + [i for i in _ids(cfg, ri.split) if ri.split != rt.split]
        files["refine.train.cam_dir"] = files_stat([Path(rt.cam_dir) / f"{i}.npz" for i in ids], cfg.run.out_dir)
        if ri.cam_dir != rt.cam_dir:
            files["refine.infer.cam_dir"] = files_stat([Path(ri.cam_dir) / f"{i}.npz" for i in _ids(cfg, ri.split)],
                                                       cfg.run.out_dir)
        if rt.init_weights:
            files["refine.train.init_weights"] = file_sha256(rt.init_weights)
        for sp in dict.fromkeys([rt.split, ri.split]):
            files.update(split_files(cfg, sp))
    elif stage == "train-seg":
        settings = {"data": _data_settings(cfg), "seg.train": strip_runtime(d["seg"]["train"])}
        files["seg.train.pseudo_dir"] = files_stat([Path(st.pseudo_dir) / f"{i}.png" for i in _ids(cfg, st.split)],
                                                   cfg.run.out_dir)
        if st.init_weights:
            files["seg.train.init_weights"] = file_sha256(st.init_weights)
        files.update(split_files(cfg, st.split))
    elif stage == "infer-seg":
        settings = {"data": _data_settings(cfg), "seg.infer": strip_runtime(d["seg"]["infer"])}
        files["seg.infer.checkpoint"] = file_sha256(si.checkpoint)
        files.update(split_files(cfg, si.split))
    elif stage == "eval":
        from doei.pipeline.evaluation import eval_rows
        from doei.eval.reading import PRED_EXT

        settings = {"data": _data_settings(cfg), "eval": strip_runtime(d["eval"]),
                    "rows": [list(row) for row in eval_rows(cfg)]}
        for name, _, pred, split, ptype, _ in eval_rows(cfg):
            files[f"eval {name} predictions ({pred})"] = files_stat(
                [Path(pred) / f"{i}{PRED_EXT[ptype]}" for i in _ids(cfg, split)], cfg.run.out_dir)
            files.update(split_files(cfg, split, masks=True))
    else:
        raise KeyError(stage)
    settings = _rel(settings, cfg.run.out_dir)
    if cfg.run.smoke is not None:            # a smoke stage is never taken for a real one (and vice versa)
        settings["run.smoke"] = {"smoke": cfg.run.smoke, "smoke_batch": cfg.run.smoke_batch}
    settings["code"] = f"{stage} v{STAGE_CODE[stage]}"
    return settings, {_rel(k, cfg.run.out_dir): v for k, v in files.items()}


def fingerprint_of(settings: dict, files: dict[str, str]) -> str:
    blob = json.dumps({"settings": settings, "files": files}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    return {prefix: obj}


def describe_change(old_settings: dict, old_files: dict[str, str], settings: dict, files: dict[str, str]) -> str:
    """The first setting or file that differs, in words (``cam.scales was [1.0], now [1.0, 0.5]``)."""
    a, b = _flat(json.loads(json.dumps(old_settings, default=str))), _flat(json.loads(json.dumps(settings, default=str)))
    for k in sorted(set(a) | set(b)):
        if a.get(k, "<unset>") != b.get(k, "<unset>"):
            return f"{k} was {a.get(k, '<unset>')!r}, now {b.get(k, '<unset>')!r}"
    for k in sorted(set(old_files) | set(files)):
        was, now = old_files.get(k, "<not read>"), files.get(k, "<not read>")
        if was != now:
            return f"{k} changed since (was {was[:23]}, now {now[:23]})"
    return "nothing"


def changed_files(old_files: dict[str, str], files: dict[str, str]) -> list[str]:
    """Names of recorded files whose digest differs now (a file that is now missing does not count: the
    outputs still describe the file they were made from, and nothing could be rerun from it anyway)."""
    return [k for k in old_files if files.get(k, "missing") not in ("missing", old_files[k])]
