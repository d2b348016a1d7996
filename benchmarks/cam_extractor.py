"""CAM generation at the paper's size: ours (CamExtractor) vs the official per-view loop, in one run.

Model MCTformer-V2 DeiT-S (``--model``), CAM settings from a paper config (``--config``, default
configs/paper/voc_mctformer_v2.yaml: scales, flip, kind, n_layers, patch_refine, amp), on VOC-sized
images: the real VOC images under ../shared/data/voc_real_mini (500 px wide, as VOC) or, when absent,
random 375×500 images. Contenders, interleaved per image, CPU time of this process (``--clock``):

    official       the official ``generate_attention_maps_ms`` order: one forward per view (each scale,
                   then its flip), eager attention everywhere, float32
    official_copy  the same again: the noise floor of this run
    ours_fp32      CamExtractor: a view and its flip in one batch, blocks keep only what the CAM reads
                   (fused kernels where nothing is read), float32
    ours           CamExtractor as the config runs it: the same with ``amp`` (bfloat16 autocast on CPU,
                   float16 on CUDA)

Prints images/s of each with spread, the paired speed-ups over the official loop, the peak of live
tensor storage of one image per contender (benchmarks/doei_memory.py's tracker), and how far each
contender's final CAMs (min-max normalised, as ``doei cam`` stores them) are from the official ones.
Writes benchmarks/results/cam_extractor.json.

    python benchmarks/cam_extractor.py [--images 4] [--repeats 5] [--threads 1] [--config FILE]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (REPO, fmt_ratio, interleaved_times, machine, noise_floor, paired_ratio,  # noqa: E402
                     spread, write_result)

from doei.cam.extractor import CamExtractor, minmax_labelled, official_views  # noqa: E402
from doei.models.registry import create_model  # noqa: E402
from doei.models.vit import set_attention_impl  # noqa: E402

VOC = REPO.parent / "shared" / "data" / "voc_real_mini"


def official_loop(model, views, labels, size, n_layers, kind, patch_refine):
    """The official order: one forward per view (scale, then its flip), summed, min-max normalised."""
    total = None
    with torch.no_grad():
        for v in views:
            for flipped in (False, True):
                x = v.flip(-1) if flipped else v
                out = model.forward_cams(x, n_layers=n_layers, kind=kind)
                cams = out.cams
                if patch_refine:
                    a = out.patch_attn.sum(0)
                    b, c, h, w = cams.shape
                    cams = (a[:, None] @ cams.reshape(b, c, h * w, 1)).reshape(b, c, h, w)
                up = F.interpolate(cams, size, mode="bilinear", align_corners=False) * labels[..., None, None]
                up = up.flip(-1) if flipped else up
                total = up if total is None else total + up
    return minmax_labelled(total, labels)


def load_images(n: int, num_classes: int, seed: int = 0) -> tuple[list[np.ndarray], list[torch.Tensor], str]:
    manifest = VOC / "manifest.json"
    if manifest.exists():
        entries = json.loads(manifest.read_text())[:n]
        from PIL import Image
        imgs, labs = [], []
        for e in entries:
            imgs.append(np.asarray(Image.open(VOC / "JPEGImages" / f"{e['id']}.jpg").convert("RGB")))
            lab = torch.zeros(1, num_classes)
            for c in e["classes"]:
                lab[0, int(c) - 1] = 1.0          # VOC classes 1..20 (0 = background)
            labs.append(lab)
        return imgs, labs, f"{len(imgs)} VOC images from {VOC}"
    g = np.random.default_rng(seed)
    imgs = [g.integers(0, 256, (375, 500, 3), dtype=np.uint8) for _ in range(n)]
    labs = [(torch.rand(1, num_classes, generator=torch.Generator().manual_seed(i)) < 0.15).float() for i in range(n)]
    for lab in labs:
        lab[0, 0] = 1.0
    return imgs, labs, f"{n} random 375x500 images (no VOC images at {VOC})"


def live_peak(fn) -> int:
    from doei_memory import _LivePeak

    with torch.no_grad(), _LivePeak() as live:
        out = fn()
        del out
    return live.peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mctformer_v2_deit_small")
    ap.add_argument("--config", default=str(REPO / "configs" / "paper" / "voc_mctformer_v2.yaml"))
    ap.add_argument("--num-classes", type=int, default=20)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5, help="rounds over all images")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", default="cpu", choices=["cpu", "wall"])
    ap.add_argument("--no-memory", action="store_true", help="skip the (slow) peak-memory pass")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cam = yaml.safe_load(Path(args.config).read_text())["cam"]
    scales = [float(s) for s in cam.get("scales", [1.0])]
    flip, kind = bool(cam.get("flip", True)), cam.get("kind", "fused")
    n_layers, patch_refine, amp = int(cam.get("n_layers", 3)), bool(cam.get("patch_refine", True)), bool(cam.get("amp"))
    if not flip:
        raise SystemExit("the official loop this script reproduces always flips; use a config with cam.flip: true")
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=args.num_classes).eval()
    official = set_attention_impl(copy.deepcopy(model), "eager")
    ours32 = CamExtractor(model, scales=scales, flip=True, n_layers=n_layers, patch_refine=patch_refine, kind=kind)
    ours = CamExtractor(model, scales=scales, flip=True, n_layers=n_layers, patch_refine=patch_refine, kind=kind,
                        amp=amp)
    imgs, labs, what = load_images(args.images, args.num_classes)
    views = [official_views(im, scales) for im in imgs]
    sizes = [im.shape[:2] for im in imgs]

    def run(which):
        def fn():
            out = []
            for v, lab, size in zip(views, labs, sizes):
                vb = [t[None] for t in v]
                if which in ("official", "official_copy"):
                    out.append(official_loop(official, vb, lab, size, n_layers, kind, patch_refine))
                else:
                    out.append((ours if which == "ours" else ours32).from_views(vb, lab, size))
            return out
        return fn

    names = ("official", "official_copy", "ours_fp32", "ours")
    fns = {k: run(k) for k in names}
    maps = {k: fns[k]() for k in names}
    diff = {}
    for k in ("ours_fp32", "ours"):
        d = [(a - b).abs() for a, b in zip(maps[k], maps["official"])]
        d16 = [(a.half().float() - b.half().float()).abs() for a, b in zip(maps[k], maps["official"])]
        diff[k] = {"max_abs": max(float(t.max()) for t in d), "mean_abs": float(np.mean([float(t.mean()) for t in d])),
                   "max_abs_float16_files": max(float(t.max()) for t in d16)}
    times = interleaved_times({k: fns[k] for k in names}, args.repeats, warmup=0, clock=args.clock)
    per_image = {k: [t / len(imgs) for t in v] for k, v in times.items()}
    ratios = {k: paired_ratio(times, "official", k) for k in ("official_copy", "ours_fp32", "ours")}
    floor = noise_floor(ratios["official_copy"])
    peaks = {}
    if not args.no_memory:
        v0, l0, s0 = [t[None] for t in views[0]], labs[0], sizes[0]
        peaks = {"official": live_peak(lambda: official_loop(official, v0, l0, s0, n_layers, kind, patch_refine)),
                 "ours_fp32": live_peak(lambda: ours32.from_views(v0, l0, s0)),
                 "ours": live_peak(lambda: ours.from_views(v0, l0, s0))}
    mb = 1 / 2 ** 20
    print(f"model={args.model} config={Path(args.config).name} scales={scales} flip=True kind={kind} "
          f"n_layers={n_layers} patch_refine={patch_refine} amp={amp} threads={args.threads} clock={args.clock} "
          f"repeats={args.repeats}; {what}")
    for k in names:
        s = spread(per_image[k])
        print(f"  {k:<14} {1 / s['median']:6.3f} images/s  (s/image median {s['median']:.3f} "
              f"[IQR {s['q1']:.3f}-{s['q3']:.3f}])" + (f"  peak {peaks[k] * mb:.0f} MiB" if k in peaks else ""))
    for k, r in ratios.items():
        print(f"  speed-up {k} over official = {fmt_ratio(r)}")
    print(f"  noise floor of this run: ±{floor:.3f}")
    for k, d in diff.items():
        print(f"  {k}: max |CAM - official| {d['max_abs']:.2e} (as float16 files {d['max_abs_float16_files']:.2e}), "
              f"mean {d['mean_abs']:.2e}")
    path = write_result("cam_extractor", {
        "model": args.model, "config": Path(args.config).name, "scales": scales, "flip": True, "kind": kind,
        "n_layers": n_layers, "patch_refine": patch_refine, "amp": amp, "images": what,
        "image_sizes": [list(s) for s in sizes], "threads": args.threads, "clock": args.clock, "repeats": args.repeats,
        "paths": {"official": "one forward per view, eager attention, float32",
                  "ours_fp32": "view + flip batched, blocks keep what the CAM reads, float32",
                  "ours": f"as ours_fp32 with amp={amp} (bfloat16 autocast on CPU)"},
        "s_per_image": {k: spread(v) for k, v in per_image.items()},
        "images_per_s": {k: 1 / spread(v)["median"] for k, v in per_image.items()},
        "speedup_over_official": ratios, "noise_floor": floor, "peak_live_bytes_one_image": peaks,
        "cam_difference_vs_official": diff, "machine": machine(),
        "command": "python benchmarks/cam_extractor.py " + " ".join(sys.argv[1:])}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
