"""The report of ``doei compare``: Markdown + PNGs, and one self-contained HTML page (images embedded).

Files in the report folder: ``report.md`` (tables; links ``per_class.png`` and ``gallery/<id>.png``),
``report.html`` (the same, every image inlined as a data URI: open it anywhere, no server), ``compare.json``
(every number), ``per_class.png`` (the per-class differences) and ``gallery/<id>.png`` (per image: the
image, A's and B's overlays, their difference and the ground truth, with a legend).
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Callable

import numpy as np

from doei.cam.visualize import fit, grid, label_legend, label_overlay, legend, stack, titled, to_rgb_uint8
from doei.eval.compare import Comparison, label_map
from doei.utils.io import atomic_save_png, atomic_write_bytes, atomic_write_json, atomic_write_text

BETTER_B, BETTER_A, BOTH_WRONG, DIFFER = (0, 170, 60), (220, 30, 30), (235, 190, 0), (230, 0, 230)
PANEL = 240


def difference_panel(image: np.ndarray, la: np.ndarray, lb: np.ndarray, gt: np.ndarray | None) -> np.ndarray:
    """The grey image with the pixels where A and B differ coloured: with ground truth green where only B is
    right, red where only A is right, yellow where both are wrong; without it magenta wherever they differ."""
    grey = image.astype(np.float32).mean(axis=2, keepdims=True).repeat(3, axis=2) * 0.6 + 60
    out = grey.copy()
    differ = la != lb
    if gt is None:
        out[differ] = DIFFER
    else:
        valid = gt != 255
        a_ok, b_ok = (la == gt) & valid, (lb == gt) & valid
        out[differ & b_ok & ~a_ok] = BETTER_B
        out[differ & a_ok & ~b_ok] = BETTER_A
        out[differ & ~a_ok & ~b_ok & valid] = BOTH_WRONG
    return np.clip(out, 0, 255).astype(np.uint8)


def gallery_row(image: np.ndarray, image_id: str, la: np.ndarray, lb: np.ndarray, gt: np.ndarray | None,
                cmp: Comparison, row: dict) -> np.ndarray:
    """One image's figure: image | A | B | difference (| ground truth), legends below."""
    image = to_rgb_uint8(image)
    la_, lb_ = cmp.labels
    score = (lambda v: f" mIoU {v:.1f}") if gt is not None else (lambda v: "")
    cells = [titled(fit(image, PANEL), image_id),
             titled(fit(label_overlay(image, la), PANEL, nearest=True), f"{la_}{score(row['a'])}"),
             titled(fit(label_overlay(image, lb), PANEL, nearest=True), f"{lb_}{score(row['b'])}"),
             titled(fit(difference_panel(image, la, lb, gt), PANEL, nearest=True),
                    f"difference ({abs(row['diff']):.1f}{' mIoU' if gt is not None else '% pixels'})")]
    if gt is not None:
        cells.append(titled(fit(label_overlay(image, gt), PANEL, nearest=True), "ground truth"))
    fig = grid(cells, len(cells))
    maps = [la, lb] + ([gt] if gt is not None else [])
    diff_entries = ([(f"only {lb_} right", BETTER_B), (f"only {la_} right", BETTER_A), ("both wrong", BOTH_WRONG)]
                    if gt is not None else [(f"{la_} and {lb_} differ", DIFFER)])
    return stack([fig, label_legend(maps, cmp.names[1:], fig.shape[1], title="classes:"),
                  legend(diff_entries, fig.shape[1], title="difference:")])


def per_class_figure(cmp: Comparison) -> bytes:
    """PNG bytes: horizontal bars of the per-class difference (B − A IoU with ground truth; else B's IoU
    against A minus 100), classes in the order of the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = cmp.per_class[::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.3 * len(rows) + 1.4), dpi=100)
    vals = [r["diff"] for r in rows]
    ax.barh([r["name"] for r in rows], vals, color=["tab:green" if v >= 0 else "tab:red" for v in vals])
    ax.axvline(0, color="k", lw=0.8)
    a, b = cmp.labels
    ax.set_xlabel(f"IoU {b} - IoU {a} (points)" if cmp.reports else f"IoU of {b} against {a} - 100 (points)")
    ax.set_title(f"per-class difference, {b} vs {a}", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _summary_rows(cmp: Comparison) -> list[list[str]]:
    a, b = cmp.labels
    kinds = {"cam": "CAMs", "png": "label maps"}
    rows = [["", a, b], ["files", kinds[cmp.kinds[0]], kinds[cmp.kinds[1]]]]
    beta = [("-" if v is None else f"{v:.2f}") for v in cmp.betas]
    rows.append(["beta (CAM background threshold)", *beta])
    if cmp.reports:
        ra, rb = cmp.reports
        for key in ("mIoU", "FP", "FN"):
            rows.append([f"{key} (%)", f"{ra[key]:.2f}", f"{rb[key]:.2f}"])
    return rows


def _md_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows[1:]])


def _class_rows(cmp: Comparison) -> list[list[str]]:
    a, b = cmp.labels
    if cmp.reports:
        head = ["class", f"IoU {a}", f"IoU {b}", f"{b} - {a}"]
        return [head] + [[r["name"], f"{r['a']:.1f}", f"{r['b']:.1f}", f"{r['diff']:+.1f}"] for r in cmp.per_class]
    return [["class", f"IoU of {b} against {a}"]] + [[r["name"], f"{r['iou_ab']:.1f}"] for r in cmp.per_class]


def write_report(cmp: Comparison, out: str | Path, *, image_of: Callable[[str], np.ndarray], a: Path, b: Path,
                 gt: Path | None, top: int = 8) -> dict:
    """Write the report files into ``out`` (module docstring); ``image_of(id)`` gives an image uint8 [H, W, 3].
    Returns ``{"markdown", "html", "json", "gallery": [ids]}``."""
    out = Path(out)
    c = len(cmp.names)
    gallery = [r for r in cmp.per_image if abs(r["diff"]) > 0][:top]
    pngs: dict[str, bytes] = {"per_class.png": per_class_figure(cmp)}
    atomic_write_bytes(out / "per_class.png", pngs["per_class.png"])
    for r in gallery:
        i = r["id"]
        la = label_map(a, cmp.kinds[0], i, cmp.betas[0], c)
        lb = label_map(b, cmp.kinds[1], i, cmp.betas[1], c)
        g = None
        if gt is not None:
            from doei.eval.reading import read_label_png

            g = read_label_png(gt / f"{i}.png", c).astype(np.uint8)
        fig = gallery_row(image_of(i), i, la, lb, g, cmp, r)
        atomic_save_png(out / "gallery" / f"{i}.png", fig)
        pngs[f"gallery/{i}.png"] = (out / "gallery" / f"{i}.png").read_bytes()
    la_, lb_ = cmp.labels
    what = ("the per-image mIoU gap against the ground truth" if cmp.reports else "the share of pixels labelled differently")
    intro = [f"# {lb_} vs {la_}", "",
             f"- {la_}: `{a}`", f"- {lb_}: `{b}`", f"- {len(cmp.ids)} images in both"
             + (f" ({cmp.left_out['only_in_a']} only in {la_}, {cmp.left_out['only_in_b']} only in {lb_}, "
                f"{cmp.left_out['in_neither']} in neither; left out)" if any(cmp.left_out.values()) else ""),
             f"- ground truth: `{gt}`" if gt is not None else
             "- no ground truth: the folders are compared with each other"
             + (f"; {cmp.agreement:.2f} % of pixels agree" if cmp.agreement is not None else ""), ""]
    md = intro + ["## Metrics", "", _md_table(_summary_rows(cmp)), "", "## Per class (largest difference first)", "",
                  _md_table(_class_rows(cmp)), "", "![per-class differences](per_class.png)", "",
                  f"## Where they differ most ({what})", ""]
    md += [f"![{r['id']}](gallery/{r['id']}.png)" for r in gallery] or ["The two folders agree on every image."]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    atomic_write_text(out / "report.html", _html(cmp, intro, gallery, pngs, what))
    doc = {"a": str(a), "b": str(b), "labels": list(cmp.labels), "ground_truth": None if gt is None else str(gt),
           "kinds": list(cmp.kinds), "betas": list(cmp.betas), "images": len(cmp.ids), "left_out": cmp.left_out,
           "agreement": cmp.agreement, "reports": list(cmp.reports) if cmp.reports else None,
           "per_class": cmp.per_class, "per_image": cmp.per_image, "gallery": [r["id"] for r in gallery]}
    atomic_write_json(out / "compare.json", doc)
    return {"markdown": str(out / "report.md"), "html": str(out / "report.html"), "json": str(out / "compare.json"),
            "gallery": [r["id"] for r in gallery]}


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(pngs: dict[str, bytes], key: str, alt: str) -> str:
    data = base64.b64encode(pngs[key]).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _html(cmp: Comparison, intro: list[str], gallery: list[dict], pngs: dict[str, bytes], what: str) -> str:
    title = html.escape(intro[0].lstrip("# "))
    items = "".join(f"<li>{html.escape(x[2:]).replace('`', '')}</li>" for x in intro[2:] if x.startswith("- "))
    figs = "".join("<figure>" + _img(pngs, "gallery/" + r["id"] + ".png", r["id"]) + "<figcaption>"
                   + html.escape(r["id"]) + "</figcaption></figure>" for r in gallery) \
        or "<p>The two folders agree on every image.</p>"
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px;color:#222}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #bbb;padding:3px 10px;text-align:right}td:first-child,"
             "th:first-child{text-align:left}img{max-width:100%;height:auto}figure{margin:1.5em 0}")
    # a self-check for browsers and tests: the body records how many images decoded
    check = ("<script>window.addEventListener('load',function(){var n=0;for(var i=0;i<document.images.length;i++)"
             "{var im=document.images[i];if(im.complete&&im.naturalWidth>0)n++;}document.body.setAttribute("
             "'data-images-loaded',n+'/'+document.images.length);});</script>")
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{style}</style></head><body><h1>{title}</h1><ul>{items}</ul><h2>Metrics</h2>"
            f"{_html_table(_summary_rows(cmp))}<h2>Per class (largest difference first)</h2>"
            f"{_html_table(_class_rows(cmp))}{_img(pngs, 'per_class.png', 'per-class differences')}"
            f"<h2>Where they differ most ({html.escape(what)})</h2>{figs}{check}</body></html>\n")


__all__ = ["write_report", "gallery_row", "difference_panel", "per_class_figure"]
