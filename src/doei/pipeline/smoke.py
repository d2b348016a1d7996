"""Smoke mode of ``doei run`` (``run.smoke: N`` / ``doei run --smoke N``) and the per-stage resource meter.

A smoke run executes every configured stage at the config's OWN sizes — model, crop, CAM scales and
flip, CRF, inference scales — but capped: each training stage makes exactly N optimiser steps of its
configured batch (``run.smoke_batch`` overrides the three training batches, stated in the table),
the images of each split are its first N (every per-image stage, the CRF cache, validation and the
eval rows read only those, so each stage finds the files the one before it wrote), and no pretrained
file is read (``classifier.model.pretrained``, ``refine.train.init_weights``, ``seg.train.init_weights``
are set to null: random initialisation, said in the log). What it proves: every stage runs end to end
at real size on this machine, and what each costs. Its numbers (mIoU included) are NOT results.

Never mistaken for a real run:

* ``<run.out_dir>/smoke.json`` is written before the first stage; a real run refuses a folder holding
  one, and a smoke run refuses a folder where a real run started (``pipeline_config.json`` without
  ``smoke.json``);
* every stage fingerprint includes the smoke settings (:func:`doei.pipeline.markers.stage_settings`),
  so no marker of one kind is taken for the other; ``eval.json`` carries ``"smoke": N``.

Every stage of every run (smoke or not) is measured by :class:`StageMeter`: wall seconds, the peak
resident memory of the process during the stage (Linux: the kernel's high-water mark ``VmHWM``, reset
before each stage by writing ``5`` to ``/proc/self/clear_refs``; elsewhere the process's lifetime
peak ``ru_maxrss``, labelled so), the largest worker process (``RUSAGE_CHILDREN``: DataLoader, CRF and
evaluation workers; reported when it grew during the stage) and, on CUDA, ``torch.cuda.max_memory_allocated``.
The values go to the stage marker and ``run_log.jsonl``; a smoke run also writes the table
(:func:`smoke_rows`) to ``smoke.json`` and prints it.
"""
from __future__ import annotations

import copy
import os
import platform
import resource
import sys
import time
from pathlib import Path

from doei.errors import DoeiError
from doei.pipeline_config import PipelineConfig
from doei.utils.io import atomic_write_json

SMOKE_FILE = "smoke.json"
SMOKE_NOTE = ("SMOKE RUN: capped steps/images, random initialisation; timings and memory only, "
              "no number here (mIoU included) is a result")
_MB = 1024 * 1024


# ------------------------------------------------------------------------------------- the config
def smoke_config(cfg: PipelineConfig) -> tuple[PipelineConfig, list[str]]:
    """``cfg`` as a smoke run executes it (a copy) and the changes made, one line each, for the log.
    ``cfg`` must have ``run.smoke`` set."""
    if not isinstance(cfg, PipelineConfig):
        raise TypeError(f"cfg: expected a PipelineConfig, got {type(cfg).__name__}")
    if cfg.run.smoke is None:
        raise ValueError("cfg.run.smoke is None: not a smoke run")
    c = copy.deepcopy(cfg)
    changes = []
    model = c.classifier.get("model") if isinstance(c.classifier.get("model"), dict) else None
    if model is not None and model.get("pretrained"):
        changes.append(f"classifier.model.pretrained: {model['pretrained']} -> null (random init)")
        model["pretrained"] = None
    for key, sec in (("refine.train.init_weights", c.refine.train), ("seg.train.init_weights", c.seg.train)):
        if sec.init_weights:
            changes.append(f"{key}: {sec.init_weights} -> null (random init)")
            sec.init_weights = None
    b = c.run.smoke_batch
    if b is not None:
        train = c.classifier.setdefault("train", {})
        for key, old, set_ in (("classifier.train.batch_size", train.get("batch_size", "default"),
                                lambda: train.__setitem__("batch_size", b)),
                               ("refine.train.batch_size", c.refine.train.batch_size,
                                lambda: setattr(c.refine.train, "batch_size", b)),
                               ("seg.train.batch_size", c.seg.train.batch_size,
                                lambda: setattr(c.seg.train, "batch_size", b))):
            set_()
            changes.append(f"{key}: {old} -> {b} (run.smoke_batch)")
    return c, changes


def check_folder(cfg: PipelineConfig) -> None:
    """Refuse to mix a smoke run and a real run in one ``run.out_dir`` (one-line DoeiError)."""
    out = Path(cfg.run.out_dir)
    marker = out / SMOKE_FILE
    if cfg.run.smoke is None and marker.exists():
        raise DoeiError(f"{marker}: run.out_dir {out} holds a smoke run (capped steps, random init); a real run "
                        "never reuses its stages: use another run.out_dir or delete the folder")
    if cfg.run.smoke is not None and not marker.exists() and (out / "pipeline_config.json").exists():
        raise DoeiError(f"{out}: run.out_dir holds a real run (pipeline_config.json without {SMOKE_FILE}); "
                        "a smoke run goes to its own folder: set run.out_dir")


# ------------------------------------------------------------------------------------- measuring
def _read_hwm_mb() -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def _maxrss_mb(who: int) -> float:
    v = resource.getrusage(who).ru_maxrss          # kilobytes on Linux, bytes on macOS
    return v / _MB if sys.platform == "darwin" else v / 1024.0


class StageMeter:
    """``with StageMeter() as m: ...`` then ``m.result``: ``seconds``, ``peak_rss_mb`` (+ ``peak_rss_source``),
    ``workers_peak_rss_mb`` (None unless a worker process set a new high), ``cuda_peak_mb`` (None off CUDA),
    ``cpu_seconds`` (user + system, this process and its finished workers: unlike wall time, not inflated when
    other jobs share the cores)."""

    def __enter__(self) -> "StageMeter":
        self.reset = False
        try:                                   # "5": reset the peak resident set size (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")
            self.reset = _read_hwm_mb() is not None
        except OSError:
            pass
        self.children0 = _maxrss_mb(resource.RUSAGE_CHILDREN)
        self.cuda = _cuda_ready()
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        self.cpu0 = _cpu_seconds()
        self.t0 = time.time()
        self.result: dict = {}
        return self

    def __exit__(self, *exc) -> None:
        secs = time.time() - self.t0
        hwm = _read_hwm_mb() if self.reset else None
        children = _maxrss_mb(resource.RUSAGE_CHILDREN)
        self.result = {"seconds": round(secs, 3), "cpu_seconds": round(_cpu_seconds() - self.cpu0, 3),
                       "peak_rss_mb": round(hwm if hwm is not None else _maxrss_mb(resource.RUSAGE_SELF), 1),
                       "peak_rss_source": "VmHWM (reset per stage)" if hwm is not None else
                       "ru_maxrss (process lifetime peak)",
                       "workers_peak_rss_mb": round(children, 1) if children > self.children0 else None,
                       "cuda_peak_mb": None}
        if self.cuda:
            import torch

            self.result["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / _MB, 1)


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished workers (a measure that load does not inflate)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _cuda_ready() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized())


# ------------------------------------------------------------------------------------- the table
def _rate(seconds, count) -> float | None:
    try:
        return round(float(seconds) / int(count), 3) if count else None
    except (TypeError, ValueError):
        return None


def _step_rate(final: dict, n) -> float | None:
    """Seconds per optimiser step: the steps' own compute where the loop recorded it (smoke runs: without the
    wait for the first batch, i.e. DataLoader start-up), else the epoch's wall time over the steps."""
    steps = final.get("step_compute_seconds")
    if steps:
        return round(sum(steps) / len(steps), 3)
    return _rate(final.get("train_seconds"), n)


def stage_units(stage: str, summary: dict, cfg: PipelineConfig) -> dict:
    """Per-unit costs of one finished stage from its summary: ``{"<part> s/step": x, "<part> s/image": y, ...}``
    plus the batch of a training stage."""
    n = cfg.run.smoke
    s = summary or {}
    if stage == "train-cls":
        fin = s.get("final") or {}
        return {"batch": s.get("batch_size"), "steps": n,
                "train s/step": _step_rate(fin, n), "epoch s": fin.get("train_seconds")}
    if stage == "cam":
        return {"images": s.get("computed"), "cam s/image": _rate(s.get("seconds"), s.get("computed"))}
    if stage == "refine":
        tr, inf = s.get("train") or {}, s.get("infer") or {}
        ph = tr.get("phases") or {}
        return {"batch": tr.get("batch_size"), "steps": n, "images": inf.get("computed"),
                "crf cache s/image": _rate(ph.get("crf_cache_seconds"), ph.get("crf_cache_images")),
                "affinity s/step": _step_rate(tr.get("final") or {}, n),
                "random walk s/image": _rate(inf.get("seconds"), inf.get("computed"))}
    if stage == "train-seg":
        fin = s.get("final") or {}
        return {"batch": s.get("batch_size"), "steps": n, "train s/step": _step_rate(fin, n),
                "epoch s": fin.get("train_seconds")}
    if stage == "infer-seg":
        return {"images": s.get("computed"), "infer s/image": _rate(s.get("seconds"), s.get("computed")),
                "crf s/image": _rate(s.get("crf_seconds"), s.get("computed"))}
    if stage == "eval":
        return {"images": max((int(r.get("images", 0)) for r in s.get("table", [])), default=0)}
    return {}


def smoke_rows(cfg: PipelineConfig, done: dict[str, dict]) -> list[dict]:
    """One row per stage of ``done`` (``{stage: marker}``, markers with ``summary`` and ``resources``)."""
    rows = []
    for stage, marker in done.items():
        res = marker.get("resources") or {}
        rows.append({"stage": stage, "seconds": res.get("seconds", marker.get("seconds")),
                     "cpu_seconds": res.get("cpu_seconds"),
                     "peak_rss_mb": res.get("peak_rss_mb"), "workers_peak_rss_mb": res.get("workers_peak_rss_mb"),
                     "cuda_peak_mb": res.get("cuda_peak_mb"), **stage_units(stage, marker.get("summary"), cfg)})
    return rows


def smoke_header(cfg: PipelineConfig, changes: list[str], config_path: str | None = None) -> dict:
    import torch

    return {"note": SMOKE_NOTE, "smoke": cfg.run.smoke, "smoke_batch": cfg.run.smoke_batch, "changes": changes,
            "config": config_path, "data_root": cfg.data.root, "device": cfg.run.device,
            "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "peak_rss_source": "VmHWM (reset per stage)" if Path("/proc/self/clear_refs").exists() else
            "ru_maxrss (process lifetime peak)"}


def write_smoke_table(cfg: PipelineConfig, header: dict, rows: list[dict]) -> Path:
    """``<run.out_dir>/smoke.json``: the header (what was capped/changed) and the per-stage rows."""
    path = Path(cfg.run.out_dir) / SMOKE_FILE
    peaks = [r["peak_rss_mb"] for r in rows if r.get("peak_rss_mb") is not None]
    atomic_write_json(path, {**header, "stages": rows, "peak_rss_mb": max(peaks) if peaks else None})
    return path


def format_smoke_table(rows: list[dict]) -> str:
    """The rows as a text table: stage, wall s, peak RSS, then each per-unit cost."""
    lines = [f"{'stage':<10} {'wall s':>8} {'peak RSS MB':>12}  per unit", "-" * 72]
    for r in rows:
        units = ", ".join(f"{k} {v}" for k, v in r.items() if ("s/" in k or k in ("batch", "steps", "images"))
                          and v is not None)
        cuda = f", CUDA peak {r['cuda_peak_mb']} MB" if r.get("cuda_peak_mb") is not None else ""
        workers = f", workers {r['workers_peak_rss_mb']} MB" if r.get("workers_peak_rss_mb") else ""
        lines.append(f"{r['stage']:<10} {r['seconds'] or 0:>8.1f} {r['peak_rss_mb'] or 0:>12.0f}  "
                     f"{units}{cuda}{workers}")
    return "\n".join(lines)


__all__ = ["SMOKE_FILE", "SMOKE_NOTE", "StageMeter", "smoke_config", "check_folder", "stage_units", "smoke_rows",
           "smoke_header", "write_smoke_table", "format_smoke_table"]
