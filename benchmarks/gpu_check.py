"""One command for the day a GPU is available: speed, memory and eager == fused on CUDA, per paper model.

For each model at the paper's sizes (MCTformer-V2 and TS-CAM DeiT-S: 224² crops, batch 64; TransCAM
Conformer-S: 448² crops, batch 8; ``--batch-scale`` shrinks the batches) it prints and writes to
benchmarks/results/gpu_check.json:

* training steps/s, DOEI off/on × eager/fused attention, float32 and AMP (float16 autocast, GradScaler-free
  steps: the speed, not the optimiser), and the peak CUDA memory of each (``max_memory_allocated``);
* CAM images/s at VOC size (500×375, the paper config's scales and flip), ours (CamExtractor, AMP as
  the config) vs the official per-view loop (benchmarks/cam_extractor.py), with their peak memory;
* eager == fused on CUDA: outputs and parameter gradients of one DOEI-on training step, fused vs eager,
  float32 (the largest relative difference, and whether it is within 1e-3).

Without CUDA it refuses in one line (exit status 2). Not run yet: no GPU was available (issue #26).

    python benchmarks/gpu_check.py [--models mctformer,tscam,transcam] [--steps 10] [--batch-scale 1.0]
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine, write_result  # noqa: E402

from doei.core import DOEIConfig  # noqa: E402
from doei.models.registry import create_model  # noqa: E402
from doei.models.vit import set_attention_impl  # noqa: E402

# key: (registry name, training crop, batch, DOEI parts, paper config of the CAM settings)
SPECS = {
    "mctformer": ("mctformer_v2_deit_small", 224, 64, dict(ppdo=True, cpdo=True, hfa=True), "voc_mctformer_v2.yaml"),
    "tscam": ("tscam_deit_small", 224, 64, dict(ppdo=True, cpdo=False, hfa=True), "voc_tscam.yaml"),
    "transcam": ("transcam_conformer_small", 448, 8, dict(ppdo=True, cpdo=False, hfa=True), "voc_transcam.yaml"),
}
CONTENDERS = [(doei, impl) for doei in ("off", "on") for impl in ("eager", "fused")]


def build(name: str, doei: str, impl: str, parts: dict, num_classes: int = 20, device: str = "cpu",
          base: torch.nn.Module | None = None, **kw) -> torch.nn.Module:
    """A model with DOEI ``doei`` ("off"/"on") and attention ``impl`` ("eager"/"fused"), weights of ``base``."""
    cfg = DOEIConfig(enabled=True, **parts) if doei == "on" else None
    torch.manual_seed(0)
    m = create_model(name, num_classes=num_classes, doei=cfg, **kw)
    if base is not None:
        m.load_state_dict(base.state_dict())
    return set_attention_impl(m.to(device).train(), "eager" if impl == "eager" else "auto")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_rate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, amp: bool, steps: int,
               warmup: int = 2) -> dict:
    """Training steps/s (forward + backward + AdamW) and the peak memory of the steps (CUDA only)."""
    dev = x.device
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.05)
    dtype = torch.float16 if dev.type == "cuda" else torch.bfloat16

    def step() -> None:
        with torch.autocast(dev.type, dtype=dtype, enabled=amp):
            out = model(x)
        outs = out if isinstance(out, tuple) else (out,)
        loss = sum(F.multilabel_soft_margin_loss(o.float(), y) for o in outs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(dev)
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
    return {"steps_per_s": steps / dt, "peak_bytes": peak}


def eager_equals_fused(name: str, parts: dict, x: torch.Tensor, num_classes: int = 20, tol: float = 1e-3,
                       **kw) -> dict:
    """One DOEI-on training step, fused vs eager (float32): largest difference of outputs and of parameter
    gradients relative to each tensor's largest entry, and whether both are within ``tol``."""
    dev = str(x.device)
    base = build(name, "on", "fused", parts, num_classes, dev, **kw)
    eager = build(name, "on", "eager", parts, num_classes, dev, base=base, **kw)
    res = []
    for m in (base, eager):
        torch.manual_seed(0)
        out = m(x)
        outs = out if isinstance(out, tuple) else (out,)
        sum(o.float().sum() for o in outs).backward()
        res.append(([o.detach() for o in outs], {n: p.grad for n, p in m.named_parameters() if p.grad is not None}))
    (o1, g1), (o2, g2) = res

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))

    out_err = max(rel(a, b) for a, b in zip(o1, o2))
    grad_err = max(rel(g1[n], g2[n]) for n in g2)
    return {"output_rel_err": out_err, "grad_rel_err": grad_err, "tol": tol, "equal": out_err <= tol and grad_err <= tol}


def cam_rates(name: str, cfg_file: str, device: torch.device, images: int = 4, repeats: int = 3) -> dict:
    """CAM images/s and peak memory at VOC size, ours (CamExtractor, the config's amp) vs the official loop."""
    import yaml

    from cam_extractor import official_loop
    from doei.cam.extractor import CamExtractor

    cam = yaml.safe_load((REPO / "configs" / "paper" / cfg_file).read_text())["cam"]
    scales = [float(s) for s in cam.get("scales", [1.0])]
    kind, n_layers, refine = cam.get("kind", "fused"), int(cam.get("n_layers", 3)), bool(cam.get("patch_refine", True))
    model = create_model(name, num_classes=20).to(device).eval()
    official = set_attention_impl(copy.deepcopy(model), "eager")
    ours = CamExtractor(model, scales=scales, flip=True, n_layers=n_layers, patch_refine=refine, kind=kind,
                        amp=bool(cam.get("amp")))
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(1, 3, 375, 500, generator=g).to(device) for _ in range(images)]
    lab = torch.zeros(1, 20, device=device)
    lab[0, :3] = 1
    views = [[F.interpolate(v, scale_factor=s, mode="bilinear", align_corners=False) if s != 1 else v
              for s in scales] for v in x]
    has_forward_cams = hasattr(model, "forward_cams") and name.startswith("mctformer")
    out = {"scales": scales, "amp": bool(cam.get("amp"))}
    runs = {"ours": lambda v: ours.from_views(v, lab, (375, 500))}
    if has_forward_cams:
        runs["official"] = lambda v: official_loop(official, v, lab, (375, 500), n_layers, kind, refine)
    for key, fn in runs.items():
        with torch.no_grad():
            fn(views[0])
            _sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            for _ in range(repeats):
                for v in views:
                    fn(v)
            _sync(device)
        dt = time.perf_counter() - t0
        out[key] = {"images_per_s": repeats * images / dt,
                    "peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None}
    if "official" in out:
        out["speedup"] = out["ours"]["images_per_s"] / out["official"]["images_per_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mctformer,tscam,transcam")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-scale", type=float, default=1.0, help="multiply the paper batches (e.g. 0.25)")
    ap.add_argument("--cam-images", type=int, default=4)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing measured", file=sys.stderr)
        return 2
    models = [m for m in args.models.split(",") if m]
    if bad := [m for m in models if m not in SPECS]:
        print(f"gpu_check: --models {bad[0]!r}: expected some of {', '.join(SPECS)}", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    report: dict = {"device": torch.cuda.get_device_name(dev), "machine": machine(), "models": {},
                    "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    for key in models:
        name, size, batch, parts, cfg_file = SPECS[key]
        b = max(1, int(round(batch * args.batch_scale)))
        x = torch.randn(b, 3, size, size, device=dev)
        y = (torch.rand(b, 20, device=dev) < 0.15).float()
        base = create_model(name, num_classes=20)
        entry: dict = {"size": size, "batch": b, "train": {}}
        for doei, impl in CONTENDERS:
            for amp in (False, True):
                m = build(name, doei, impl, parts, device=str(dev), base=base)
                r = train_rate(m, x, y, amp, args.steps)
                entry["train"][f"{doei}_{impl}_{'amp' if amp else 'fp32'}"] = r
                print(f"{name} {size}px batch {b} DOEI {doei:<3} {impl:<5} {'AMP ' if amp else 'fp32'} "
                      f"{r['steps_per_s']:7.2f} steps/s  peak {r['peak_bytes'] / 2 ** 30:6.2f} GiB", flush=True)
                del m
                torch.cuda.empty_cache()
        entry["eager_equals_fused"] = eager_equals_fused(name, parts, x[:2])
        print(f"{name} eager == fused (DOEI on, fp32, CUDA): {entry['eager_equals_fused']}", flush=True)
        entry["cam"] = cam_rates(name, cfg_file, dev, images=args.cam_images)
        c = entry["cam"]
        print(f"{name} CAM at 500x375 scales {c['scales']}: ours {c['ours']['images_per_s']:.2f} images/s"
              + (f", official loop {c['official']['images_per_s']:.2f} images/s, speed-up {c['speedup']:.2f}"
                 if "official" in c else ""), flush=True)
        report["models"][key] = entry
    path = write_result("gpu_check", report, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
