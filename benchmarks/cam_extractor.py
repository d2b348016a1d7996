"""CamExtractor speed: views batched with their flips (ours) vs one forward per view (the official
``generate_attention_maps_ms`` loop), same model, same images, interleaved medians in one run.

    .venv/bin/python benchmarks/cam_extractor.py [--model mctformer_v2_tiny_conv] [--size 96] [--scales 1.0,0.5,1.5]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved_medians  # noqa: E402

from doei.cam.extractor import CamExtractor, minmax_labelled  # noqa: E402
from doei.models.registry import create_model  # noqa: E402


def per_view_loop(model, views, labels, size):
    """The official order, one view per forward pass."""
    total = None
    with torch.no_grad():
        for v in views:
            for flipped in (False, True):
                x = v.flip(-1) if flipped else v
                out = model.forward_cams(x, n_layers=3, kind="fused")
                a = out.patch_attn.sum(0)
                b, c, h, w = out.cams.shape
                r = (a[:, None] @ out.cams.reshape(b, c, h * w, 1)).reshape(b, c, h, w)
                up = F.interpolate(r, size, mode="bilinear", align_corners=False) * labels[..., None, None]
                up = up.flip(-1) if flipped else up
                total = up if total is None else total + up
    return minmax_labelled(total, labels)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="mctformer_v2_tiny_conv")
    p.add_argument("--num-classes", type=int, default=20)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--scales", default="1.0,0.5,1.5")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = create_model(a.model, num_classes=a.num_classes).eval()
    scales = [float(s) for s in a.scales.split(",")]
    x = torch.randn(a.batch, 3, a.size, a.size)
    labels = (torch.rand(a.batch, a.num_classes) < 0.2).float()
    ex = CamExtractor(model, scales=scales)
    views = [ex._resize(x, s) for s in scales]
    size = (a.size, a.size)
    ours = ex.from_views(views, labels, size)
    ref = per_view_loop(model, views, labels, size)
    med = interleaved_medians({
        "batched (ours)": lambda: ex.from_views(views, labels, size),
        "per-view loop": lambda: per_view_loop(model, views, labels, size),
    }, repeats=a.repeats)
    print(f"{a.model} {a.batch}x{a.size}² scales {scales} +flip, {a.threads} threads; "
          f"max |diff| {float((ours - ref).abs().max()):.2e}")
    for k, v in med.items():
        print(f"  {k:<16} {v * 1000:8.1f} ms")
    print(f"  ratio per-view / batched: {med['per-view loop'] / med['batched (ours)']:.2f}")


if __name__ == "__main__":
    main()
