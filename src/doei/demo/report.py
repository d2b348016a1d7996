"""The demo's ``report.md``: the CAM table, the sweep, the pipeline table (Seed, Mask, Seg, Seg+CRF) and
what each number means."""
from __future__ import annotations

from doei.demo.catalog import MODELS, RUNS, TIMED_STAGES


def render_report(metrics: dict) -> str:
    """``report.md``: the results table, what the numbers mean, settings and timings."""
    label = MODELS[metrics["settings"].get("family", "mctformer")][0]
    rows = [("all background", metrics["references"]["all_background"], None),
            ("uniform CAM", metrics["references"]["uniform_cam"], None),
            (f"{label} (baseline)", metrics["baseline"], metrics["baseline"]),
            (f"{label} + DOEI", metrics["doei"], metrics["doei"])]
    lines = [
        "# DOEI demo on the synthetic benchmark",
        "",
        f"Mode: {'quick' if metrics['settings']['quick'] else 'default'}; "
        f"{metrics['settings']['n_train']} training and {metrics['settings']['n_val']} held-out images "
        f"({metrics['settings']['synth_root']}). CAMs of the held-out split, evaluated against its masks "
        "with a background-threshold sweep (β = "
        f"{metrics['settings']['betas']}); each row reports its best β. Percent.",
        "",
        "| CAMs from | mIoU | FP | FN | best β | classifier mAP | classifier F1 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r, c in rows:
        cls = (f"{c['cls_mAP']:.1f} | {c['cls_F1']:.1f}" if c else "– | –")
        lines.append(f"| {name} | {r['mIoU']:.1f} | {r['FP']:.1f} | {r['FN']:.1f} | {r['beta']:.2f} | {cls} |")
    b, d = metrics["baseline"], metrics["doei"]
    refs = max(metrics["references"]["all_background"]["mIoU"], metrics["references"]["uniform_cam"]["mIoU"])
    lines += [
        "",
        f"DOEI − baseline: mIoU {d['mIoU'] - b['mIoU']:+.1f}, FP {d['FP'] - b['FP']:+.1f}, "
        f"FN {d['FN'] - b['FN']:+.1f} points. Baseline over the better trivial reference: "
        f"{b['mIoU'] - refs:+.1f} mIoU points.",
        "",
        "mIoU, FP and FN are means over all classes (background included) at the best β; FP + FN + IoU = 100 "
        "per class. The classifier columns are the model's image scores on the held-out split (per-class "
        "average precision; micro F1 at probability 0.5).",
        "",
        "![CAM overlays](figures/cam_overlays.png)",
        "",
        "![mIoU, FP, FN against beta](figures/beta_sweep.png)",
        "",
    ]
    lines += _cooccurrence_section(metrics)
    if metrics.get("pipeline"):
        lines += _pipeline_section(metrics["pipeline"])
    lines += [
        "## Settings",
        "",
        f"- config: `{metrics['settings']['config']}`"
        + (f", overrides: `{' '.join(metrics['settings']['overrides'])}`" if metrics["settings"]["overrides"] else ""),
        f"- model: {metrics['settings']['model']}; epochs {metrics['settings']['epochs']}, batch "
        f"{metrics['settings']['batch_size']}, peak lr {metrics['settings']['peak_lr']:.3g}",
        "- CAMs: scale 1.0 + flip, " + _cam_description(metrics["settings"]) + ", ground-truth image labels, "
        "ReLU then per-class min-max",
        "",
        "## Time (wall / process CPU seconds)",
        "",
        "| stage | wall s | CPU s |",
        "|---|---:|---:|",
    ]
    for k, v in metrics["timings"].items():
        lines.append(f"| {TIMED_STAGES.get(k, k)} | {v['wall_s']:.0f} | {v['cpu_s']:.0f} |")
    lines += ["", "Wall times depend on what else runs on the machine; CPU seconds are summed over threads and over "
              "the side-by-side processes.", ""]
    return "\n".join(lines)


def _cooccurrence_section(metrics: dict) -> list[str]:
    """Context leak / context hit / object FN of the context classes and object FN of the rest, baseline vs
    DOEI (doei.eval.cooccurrence, docs/evaluation.md); nothing when the metrics predate them."""
    b, d = metrics["baseline"].get("cooccurrence"), metrics["doei"].get("cooccurrence")
    if not b or not d:
        return []

    def f(v):
        return "–" if v is None else f"{v:.1f}"

    g = b["groups"]["context"]["classes"]
    lines = [f"Co-occurrence and under-activation at the best β (context classes: {', '.join(g)}; docs/evaluation.md):",
             "", "| CAMs from | context leak | context hit | object FN (context) | IoU (context) | object FN (rest) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in (("baseline", b), ("DOEI", d)):
        c, rest = r["groups"]["context"], r["groups"]["rest"]
        lines.append(f"| {name} | {f(c['leak'])} | {f(c['context_hit'])} | {f(c['object_FN'])} | {f(c['IoU'])} | "
                     f"{f(rest['object_FN'])} |")
    lines.append("")
    bl, dl = metrics["baseline"].get("localisation"), metrics["doei"].get("localisation")
    if bl and dl:
        lines += ["Threshold-free (no β; doei.eval.localisation): mean normalised CAM on the object, its context "
                  "and far background, and AUC = P(CAM on an object pixel > on a context / far pixel), context "
                  "classes:", "", "| CAMs from | object | context | far | AUC obj-ctx | AUC obj-far |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, r in (("baseline", bl), ("DOEI", dl)):
            c = r["groups"]["context"]
            lines.append(f"| {name} | {f(c['object'])} | {f(c['context'])} | {f(c['far'])} | {f(c['auc_context'])} | "
                         f"{f(c['auc_far'])} |")
        lines.append("")
    return lines


PIPELINE_ROWS = ("Seed", "Mask", "Seg", "Seg+CRF")


def _pipeline_section(p: dict) -> list[str]:
    """The paper's Table 1/2 analogue: Seed and Mask on the training subset, Seg (+CRF) on the held-out split;
    then what each stage added, for both runs and for the ceiling runs (the stage started from the truth)."""
    st = p["settings"]
    cols = [k for k in PIPELINE_ROWS if all(k in p[run] for run in RUNS)]
    split = lambda k: p["baseline"][k]["split"]  # noqa: E731
    px = st.get("px")
    where = (f" The later stages run on the same scenes rendered at {px} px (`{st['root']}`): the classifiers "
             "read them at their own 64 px (CAMs bilinear back), AffinityNet and DeepLab work at full size."
             if px and px != 64 else "")
    lines = ["## The whole pipeline (paper Tables 1–2 analogue)", "",
             f"Each classifier's CAMs of the first {st['pipeline_train']} training images are the seeds (Seed, best "
             "β); AffinityNet trained on them turns them into pseudo masks by random walk (Mask); DeepLab-v1 "
             "(ResNet38) trained on those masks segments the held-out split, multi-scale + flip (Seg) and then "
             f"DenseCRF (Seg+CRF).{where} Config `{st['config']}`"
             + (f", overrides `{' '.join(st['overrides'])}`" if st["overrides"] else "") + ". mIoU, percent; "
             "Seed/Mask average all classes (seed convention), Seg the classes present (segmentation convention).",
             "", "| run | " + " | ".join(f"{k} ({split(k)})" for k in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for run, label in (("baseline", "baseline"), ("doei", "+ DOEI")):
        lines.append(f"| {label} | " + " | ".join(f"{p[run][k]['mIoU']:.1f}" for k in cols) + " |")
    lines.append("| DOEI − baseline | "
                 + " | ".join(f"{p['doei'][k]['mIoU'] - p['baseline'][k]['mIoU']:+.1f}" for k in cols) + " |")
    ceil = p.get("ceilings") or {}
    for name, label in CEILING_ROWS:
        if name in ceil:
            lines.append(f"| {label} | " + " | ".join(f"{ceil[name][k]['mIoU']:.1f}" if k in ceil[name] else "–"
                                                     for k in cols) + " |")
    lines += _stage_gains(p, cols)
    if ceil:
        grid = st.get("oracle_stride", 8)
        lines += ["", "Ceiling rows use the ground truth in place of the previous stage's output (the same for both "
                  f"classifiers): *true seeds* are the true masks at the classifiers' token grid ({grid} px here; "
                  "average-pooled, bilinear back), refined by AffinityNet + random walk with the same recipe (Seed → "
                  "Mask: what the refinement adds to right seeds); *DeepLab on the true masks* is the segmentation "
                  "stage trained on the true masks of the same images (its limit with perfect pseudo masks)."]
    lines += ["", "FP / FN (percent) per stage: "
              + "; ".join(f"{k}: baseline {p['baseline'][k]['FP']:.1f} / {p['baseline'][k]['FN']:.1f}, DOEI "
                          f"{p['doei'][k]['FP']:.1f} / {p['doei'][k]['FN']:.1f}" for k in cols) + ".",
              "", "![segmentations](figures/segmentation.png)", ""]
    return lines


CEILING_ROWS = (("rw_true_seeds", "ceiling: true seeds → random walk"),
                ("seg_true_masks", "ceiling: DeepLab on the true masks"))
STAGE_STEPS = (("Seed", "Mask", "AffinityNet + random walk"), ("Mask", "Seg", "DeepLab"),
               ("Seg", "Seg+CRF", "DenseCRF"))


def _stage_gains(p: dict, cols: list[str]) -> list[str]:
    """A table of what each stage added (mIoU points, its output minus its input) per run; the ceiling
    columns say what the same stage does from the truth, and the last column what the whole chain after the
    CAMs added (Seg+CRF − Seed)."""
    steps = [(a, b, name) for a, b, name in STAGE_STEPS if a in cols and b in cols]
    if not steps:
        return []
    ceil = p.get("ceilings") or {}
    limit = {"Mask": ceil.get("rw_true_seeds"), "Seg+CRF": ceil.get("seg_true_masks")}   # no ceiling starts at Mask
    head = [f"{name} ({a} → {b})" for a, b, name in steps]
    whole = "Seed" in cols and "Seg+CRF" in cols
    lines = ["", "What each stage added (mIoU points: its output − its input):", "",
             "| run | " + " | ".join(head) + (" | after the CAMs (Seg+CRF − Seed) |" if whole else " |"),
             "|---|" + "---:|" * (len(steps) + whole)]
    for run, label in (("baseline", "baseline"), ("doei", "+ DOEI")):
        r = p[run]
        cells = [f"{r[b]['mIoU'] - r[a]['mIoU']:+.1f}" for a, b, _ in steps]
        if whole:
            cells.append(f"{r['Seg+CRF']['mIoU'] - r['Seed']['mIoU']:+.1f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if ceil:
        cells = []
        for a, b, _ in steps:
            c = limit.get(b)
            cells.append(f"{c[b]['mIoU'] - c[a]['mIoU']:+.1f}" if c and a in c and b in c else "–")
        lines.append("| the same stage from the truth (ceiling runs) | " + " | ".join(cells) + (" | – |" if whole else " |"))
    return lines


def _cam_description(st: dict) -> str:
    family, refine = st.get("family", "mctformer"), st["patch_refine"]
    if family == "tscam":
        return "TS-CAM map (cls attention summed over all blocks x head map)"
    if family == "transcam":
        return ("TransCAM map (conv-branch CAM refined by the summed patch-to-patch attention)" if refine
                else "conv-branch CAM without attention refinement")
    return (f"fused class attention of the last {st['cam_layers']} blocks x ReLU(conv head), "
            f"{'with' if refine else 'without'} patch-affinity refinement")


# ----------------------------------------------------------------------------------- driver
