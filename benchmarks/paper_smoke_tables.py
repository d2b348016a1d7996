"""The Markdown tables of ``benchmarks/paper_smoke.py`` (per-stage costs, peak memory, and the GPU-hour estimate
derived from them), and the rewrite of the ``paper_smoke`` section of docs/reproduce.md. Reads only the results
JSON (and the configs, for the full-size step and image counts)."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- paper_smoke:begin -->", "<!-- paper_smoke:end -->"
# full-size split sizes (images with an image-level label): VOC train_aug / val, COCO train2014 / val2014 annotated
SPLITS = {"voc": (10582, 1449), "coco": (82081, 40137)}
# per-unit columns: (stage, key in the smoke row, column title)
UNITS = [("train-cls", "train s/step", "classifier s/step"), ("cam", "cam s/image", "CAM s/img"),
         ("refine", "crf cache s/image", "CRF cache s/img"), ("refine", "affinity s/step", "AffinityNet s/step"),
         ("refine", "random walk s/image", "random walk s/img"), ("train-seg", "train s/step", "DeepLab s/step"),
         ("infer-seg", "infer s/image", "MS inference s/img"), ("infer-seg", "crf s/image", "CRF s/img")]
STAGES = ("train-cls", "cam", "refine", "train-seg", "infer-seg", "eval")


def _rows(rec: dict) -> dict:
    return {r["stage"]: r for r in rec.get("stages", [])}


def _fmt(v, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and v >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _batches(rec: dict) -> str:
    rows = _rows(rec)
    return " / ".join(str(rows.get(s, {}).get("batch", "–")) for s in ("train-cls", "refine", "train-seg"))


def cost_table(data: dict) -> str:
    head = ["config", "status", "batches cls / aff / seg"] + [t for _, _, t in UNITS] + ["wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rec in data.get("configs", {}).items():
        rows = _rows(rec)
        cells = [f"`{name}`", rec.get("status", "?"), _batches(rec)]
        cells += [_fmt(rows.get(st, {}).get(key), 2) for st, key, _ in UNITS]
        cells.append(_fmt(rec.get("wall_seconds"), 0))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def memory_table(data: dict) -> str:
    head = ["config"] + [f"{s} GB" for s in STAGES] + ["process tree peak GB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rec in data.get("configs", {}).items():
        rows = _rows(rec)
        cells = [f"`{name}`"]
        for s in STAGES:
            mb = rows.get(s, {}).get("peak_rss_mb")
            cells.append("–" if mb is None else f"{mb / 1024:.1f}")
        cells.append(f"{rec.get('tree_peak_rss_mb', 0) / 1024:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def failures(data: dict) -> str:
    out = [f"* `{n}`: {r.get('error', '?')}" for n, r in data.get("configs", {}).items() if r.get("status") != "ok"]
    return "\n".join(out) if out else "none"


def full_size_units(name: str) -> dict[str, int]:
    """Images processed by the full recipe of ``configs/paper/<name>.yaml`` per per-unit column (training: epochs ×
    whole batches per epoch × batch, i.e. the steps at the config's batch counted in images)."""
    import sys

    sys.path.insert(0, str(REPO / "src"))
    from doei.pipeline.stages import classifier_config
    from doei.pipeline_config import load_pipeline_config

    name = name.split("@")[0]                     # a '<config>@<suffix>' key of benchmarks/paper_smoke.py --suffix
    cfg = load_pipeline_config(REPO / "configs" / "paper" / f"{name}.yaml", ["data.root=/unused"])
    n_train, n_val = SPLITS["coco" if name.startswith("coco") else "voc"]
    cls = classifier_config(cfg).train
    rt, st = cfg.refine.train, cfg.seg.train
    return {"train s/step": cls.epochs * (n_train // cls.batch_size) * cls.batch_size, "cam s/image": n_train,
            "crf cache s/image": n_train if rt.crf else 0,
            "affinity s/step": rt.epochs * (n_train // rt.batch_size) * rt.batch_size,
            "random walk s/image": n_train, "seg train s/step": st.epochs * (n_train // st.batch_size) * st.batch_size,
            "infer s/image": n_val, "crf s/image": n_val if cfg.seg.infer.crf else 0}


def gpu_table(data: dict) -> str:
    """CPU-hours at full size (measured s/unit × the recipe's steps/images) and the GPU-hour estimate from them."""
    k = (data.get("calibration") or {}).get("gpu_over_cpu")
    head = ["config", "classifier", "CAMs", "CRF cache (CPU core-h)", "AffinityNet + walk", "DeepLab",
            "inference (+CRF core-h)", "total GPU-h (est.)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rec in data.get("configs", {}).items():
        if rec.get("status") != "ok":
            continue
        rows, units = _rows(rec), full_size_units(name)

        def cpu_h(stage: str, key: str, unit_key: str | None = None) -> float | None:
            """CPU-hours: the wall s/unit × the stage's CPU/wall ratio (load-independent) × full-size units."""
            row = rows.get(stage, {})
            v = row.get(key)
            if v is None:
                return None
            ratio = (row.get("cpu_seconds") or 0) / row["seconds"] if row.get("seconds") else 1.0
            per_image = v / row["batch"] if "s/step" in key else v     # a step of the smoke batch, per image
            return per_image * (ratio or 1.0) * units[unit_key or key] / 3600

        parts = {"cls": cpu_h("train-cls", "train s/step"), "cam": cpu_h("cam", "cam s/image"),
                 "crf": cpu_h("refine", "crf cache s/image"), "aff": cpu_h("refine", "affinity s/step"),
                 "rw": cpu_h("refine", "random walk s/image"),
                 "seg": cpu_h("train-seg", "train s/step", "seg train s/step"),
                 "inf": cpu_h("infer-seg", "infer s/image"), "icrf": cpu_h("infer-seg", "crf s/image")}

        def gpu(v):
            return None if v is None or not k else v / k

        aff = None if parts["aff"] is None else (parts["aff"] + (parts["rw"] or 0))
        total = sum(x for x in (gpu(parts["cls"]), gpu(parts["cam"]), gpu(aff), gpu(parts["seg"]), gpu(parts["inf"]))
                    if x is not None)
        cells = [f"`{name}`", _fmt(gpu(parts["cls"])), _fmt(gpu(parts["cam"])), _fmt(parts["crf"]), _fmt(gpu(aff)),
                 _fmt(gpu(parts["seg"])), f"{_fmt(gpu(parts['inf']))} (+{_fmt(parts['icrf'])})", _fmt(total)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_tables(data: dict) -> str:
    cal = data.get("calibration") or {}
    ran = [n for n, r in data.get("configs", {}).items() if r.get("status") == "ok" and "@" not in n]
    parts = [
        f"Configs that ran through every stage: {len(ran)} of 12 ({', '.join(f'`{n}`' for n in ran) or 'none'}). "
        f"{data.get('note', '')}.",
        f"Machine: {data.get('machine', {})}. Command: `{data.get('generated_by', '?')}`.",
        "", "**Cost per unit at the config's own sizes** (seconds; training: per optimiser step at the batch shown, "
        "CAM / random walk / inference: per image, CRF: per image on one core):", "", cost_table(data), "",
        "**Peak resident memory per stage** (GB; the `doei run` process, VmHWM reset per stage; the last column is the "
        "largest sum over the run's process tree, workers included, sampled every 2 s):", "", memory_table(data), "",
        f"Failures: {failures(data)}", "",
    ]
    if cal:
        parts += [
            "**GPU-hours per stage — an ESTIMATE derived from the table above, not a measurement.** CPU-hours = the "
            "measured s/step or s/image × the full recipe's steps or images (VOC train_aug 10,582 / val 1,449; COCO "
            "train2014 82,081 / val2014 40,137; epochs and batches of each config; a training step's cost is taken as "
            "linear in its batch, so a step measured at the smoke batch counts per image), with the wall s/unit turned into "
            "CPU-s by the stage's CPU/wall ratio (load on the shared cores inflates wall time, not CPU time); "
            "GPU-hours (V100-equivalent) = CPU-hours ÷ "
            f"{cal.get('gpu_over_cpu', '?'):.0f}, the ratio of {cal.get('source', '?')}. The CRF columns stay on CPU "
            "cores (core-hours: divide by `crf_workers`). Validation, checkpoints and data loading on a GPU host are "
            "not in it.", "", gpu_table(data), ""]
    return "\n".join(parts)


def update_docs(path: Path, data: dict) -> None:
    """Replace the text between the ``paper_smoke`` markers of ``path`` with :func:`markdown_tables`."""
    text = path.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path}: no {BEGIN} ... {END} section to replace")
    new = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: f"{BEGIN}\n{markdown_tables(data)}\n{END}",
                 text, flags=re.S)
    path.write_text(new, encoding="utf-8")


__all__ = ["markdown_tables", "update_docs", "full_size_units", "cost_table", "memory_table", "gpu_table"]
