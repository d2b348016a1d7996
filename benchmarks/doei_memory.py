"""Activation memory of DOEI: saved-for-backward bytes of one training forward, DOEI off vs on, and
the peak of MCTformer's CAM refinement at 80 classes, for the code as it is AND for an older
revision (``--before REV``, default the last commit before issue #13's memory fix), in one run.

Training forward: MCTformer-V2 DeiT-S (CPDO + PPDO + HFA on all 12 blocks), crop 224, 20 classes,
``train()`` mode, on CPU. Saved bytes are counted with ``torch.autograd.graph.saved_tensors_hooks``
over UNIQUE storages (a view saved for backward keeps its whole storage alive), parameters
excluded. The forward peak is the highest sum of live storages the forward allocates (a
``TorchDispatchMode`` that follows every op's outputs until their storage is freed; inputs and
parameters excluded). Both scale linearly with the batch (one line per ``--batch``).
``--models mctformer,tscam,transcam`` adds TS-CAM DeiT-S and TransCAM Conformer-S (PPDO + HFA).

CAM: ``refine_with_patch_affinity`` (the official ``--patch-attn-refine``) on an 80-class map of a
VOC-sized image (500×375 at ``--cam-scale``, patch 16) and its flip (one batch of 2, as
``CamExtractor`` runs them), peak of the live storages it allocates beyond its inputs.

Each revision runs in its own subprocess (the old one from ``git archive REV src``), so the two
measurements are taken the same way in the same run. Prints one ``key=value`` line per measurement
and the ratios last.

    python benchmarks/doei_memory.py [--batch 2,4] [--models mctformer] [--before REV] [--cam-scale 1.5]
                                     [--threads 2] [--size 224]

Since issue #26 each model is measured four ways: DOEI off/on x eager/fused attention (``off_eager``,
``off_fused``, ``on_eager``, ``on_fused``; the default path is fused), also at the paper's crop
(``--size 448 --before ''``), with the peak of a whole forward + backward (``step_peak``) beside the
forward's; the target of issue #26 is on_fused / off_fused <= 1.05. Results go to
benchmarks/results/doei_memory_<size>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import weakref
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEFORE = "0d8d8fc"   # the last commit before the memory fix of issue #13


# --------------------------------------------------------------------------- measurement (worker)

def _tensors(obj):
    import torch
    from torch.utils._pytree import tree_flatten
    return [t for t in tree_flatten(obj)[0] if isinstance(t, torch.Tensor)]


class _LivePeak:
    """Peak of the summed bytes of the storages allocated while active and still alive."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self
        self.live: dict[int, int] = {}
        self.cur = self.peak = 0

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in _tensors(out):
                    tracker._track(t)
                return out

        self.mode = _Mode()

    def _track(self, t) -> None:
        s = t.untyped_storage()
        ptr, n = s.data_ptr(), s.nbytes()
        if n == 0 or ptr in self.live:
            return
        self.live[ptr] = n
        self.cur += n
        self.peak = max(self.peak, self.cur)
        weakref.finalize(s, self._free, ptr)

    def _free(self, ptr: int) -> None:
        self.cur -= self.live.pop(ptr, 0)

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def saved_storages(fn, exclude: set[int]) -> tuple[int, int, object]:
    """(unique saved storages, their bytes, fn's result) for the autograd graph ``fn()`` builds."""
    import torch

    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in exclude:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return len(seen), sum(seen.values()), out


MODELS = {   # name: (registry name, DOEI parts as the paper's per-baseline defaults)
    "mctformer": ("mctformer_v2_deit_small", dict(ppdo=True, cpdo=True, hfa=True)),
    "tscam": ("tscam_deit_small", dict(ppdo=True, cpdo=False, hfa=True)),
    "transcam": ("transcam_conformer_small", dict(ppdo=True, cpdo=False, hfa=True)),
}


def worker(batches: list[int], cam_scale: float, threads: int, models: list[str], size: int) -> dict:
    import torch

    import doei
    from doei.core import DOEIConfig
    from doei.models.mctformer import refine_with_patch_affinity
    from doei.models.registry import create_model
    try:
        from doei.models.vit import set_attention_impl
    except ImportError:        # a revision before fused attention: everything ran eager
        set_attention_impl = None

    torch.set_num_threads(threads)
    res: dict = {"doei_file": str(Path(doei.__file__).resolve()), "train": []}
    kinds = ("off", "on") if set_attention_impl is None else ("off_eager", "off_fused", "on_eager", "on_fused")
    for key in models:
        arch, parts = MODELS[key]
        torch.manual_seed(0)
        base = create_model(arch, num_classes=20).train()
        on = create_model(arch, num_classes=20, doei=DOEIConfig(enabled=True, **parts)).train()
        on.load_state_dict(base.state_dict())
        for b in batches:
            x = torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(b))
            for kind in kinds:
                model = base if kind.startswith("off") else on
                if set_attention_impl is not None:
                    set_attention_impl(model, "eager" if kind.endswith("eager") else "auto")
                params = {p.untyped_storage().data_ptr() for p in model.parameters()}
                params.add(x.untyped_storage().data_ptr())
                n, nbytes, out = saved_storages(lambda: model(x), params)
                del out
                with _LivePeak() as live:
                    out = model(x)
                    del out
                model.zero_grad(set_to_none=True)
                with _LivePeak() as step:
                    out = model(x)
                    loss = sum(o.float().sum() for o in (out if isinstance(out, tuple) else (out,)))
                    del out
                    loss.backward()
                    del loss
                model.zero_grad(set_to_none=True)
                res["train"].append({"model": arch, "batch": b, "doei": kind, "saved_storages": n,
                                     "saved_bytes": nbytes, "forward_peak_bytes": live.peak,
                                     "step_peak_bytes": step.peak})
    h, w = int(round(375 * cam_scale)) // 16, int(round(500 * cam_scale)) // 16
    p = h * w
    g = torch.Generator().manual_seed(0)
    cams = torch.rand(2, 80, h, w, generator=g)          # the view and its flip, one batch (CamExtractor)
    attn = torch.rand(12, 2, p, p, generator=g)
    with torch.no_grad(), _LivePeak() as live:
        refined = refine_with_patch_affinity(cams, attn)
        del refined
    res["cam"] = {"classes": 80, "grid": [h, w], "patches": p, "peak_bytes": live.peak,
                  "input_bytes": (cams.numel() + attn.numel()) * 4}
    return res


# --------------------------------------------------------------------------- driver

def run_worker(src: Path, args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, __file__, "--_worker", "--batch", args.batch, "--cam-scale", str(args.cam_scale),
           "--threads", str(args.threads), "--models", args.models, "--size", str(args.size)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", default="2,4", help="comma-separated batch sizes")
    ap.add_argument("--models", default="mctformer", help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--before", default=BEFORE, help="git revision measured as 'before' ('' to skip)")
    ap.add_argument("--cam-scale", type=float, default=1.5, help="scale of the 500x375 image for the CAM")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=224, help="training crop side (the paper's TransCAM crop: 448)")
    ap.add_argument("--out", default=None, help="result JSON (default benchmarks/results/doei_memory_<size>.json)")
    ap.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    models = [m for m in args.models.split(",") if m]
    if unknown := [m for m in models if m not in MODELS]:
        ap.error(f"--models {unknown[0]!r}: expected one of {', '.join(MODELS)}")
    if args._worker:
        print(json.dumps(worker(batches, args.cam_scale, args.threads, models, args.size)))
        return
    results = {"after": run_worker(REPO / "src", args)}
    if args.before:
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "src.tar"
            subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(archive), args.before, "src"], check=True)
            with tarfile.open(archive) as tf:
                tf.extractall(tmp, filter="data")
            results["before"] = run_worker(Path(tmp) / "src", args)
    mb = 1 / 2 ** 20
    keys = [(m, b) for m in [MODELS[k][0] for k in models] for b in batches]
    for rev, r in results.items():
        print(f"# {rev}: {r['doei_file']}")
        for t in r["train"]:
            print(f"rev={rev} model={t['model']} size={args.size} batch={t['batch']} doei={t['doei']} "
                  f"saved_storages={t['saved_storages']} saved_MiB={t['saved_bytes'] * mb:.1f} "
                  f"saved_MiB_per_image={t['saved_bytes'] * mb / t['batch']:.2f} "
                  f"forward_peak_MiB={t['forward_peak_bytes'] * mb:.1f} step_peak_MiB={t['step_peak_bytes'] * mb:.1f}")
        c = r["cam"]
        print(f"rev={rev} cam=refine_with_patch_affinity classes={c['classes']} grid={c['grid'][0]}x{c['grid'][1]} "
              f"batch=2 inputs_MiB={c['input_bytes'] * mb:.1f} peak_MiB={c['peak_bytes'] * mb:.1f}")
    table = {rev: {(x["model"], x["batch"], x["doei"]): x for x in r["train"]} for rev, r in results.items()}
    ratios = []
    for rev, t in table.items():
        pairs = ([("on", "off")] if (keys[0][0], keys[0][1], "on") in t else
                 [("on_fused", "off_fused"), ("on_fused", "off_eager"), ("on_eager", "off_eager"),
                  ("off_fused", "off_eager")])
        for m, b in keys:
            for num, den in pairs:
                n, d = t[(m, b, num)], t[(m, b, den)]
                row = {"rev": rev, "model": m, "batch": b, "ratio": f"{num}/{den}",
                       "saved": n["saved_bytes"] / d["saved_bytes"],
                       "forward_peak": n["forward_peak_bytes"] / d["forward_peak_bytes"],
                       "step_peak": n["step_peak_bytes"] / d["step_peak_bytes"] if "step_peak_bytes" in n else None}
                ratios.append(row)
                target = " (target <= 1.05)" if (num, den) == ("on_fused", "off_fused") else ""
                print(f"rev={rev} model={m} size={args.size} batch={b} {num}/{den}: saved {row['saved']:.4f} "
                      f"forward_peak {row['forward_peak']:.4f}"
                      + (f" step_peak {row['step_peak']:.4f}" if row["step_peak"] is not None else "") + target)
    if "before" in results:
        ta, tb = table["after"], table["before"]
        for m, b in keys:
            for d_new, d_old in (("off_eager", "off"), ("on_eager", "on")):
                a, bf = ta[(m, b, d_new)], tb[(m, b, d_old)]
                print(f"model={m} batch={b} doei={d_old} (eager) saved_ratio_after_over_before="
                      f"{a['saved_bytes'] / bf['saved_bytes']:.4f} forward_peak_ratio_after_over_before="
                      f"{a['forward_peak_bytes'] / bf['forward_peak_bytes']:.4f}")
        print(f"cam_peak_ratio_after_over_before="
              f"{results['after']['cam']['peak_bytes'] / max(results['before']['cam']['peak_bytes'], 1):.4f}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import machine, write_result
    path = write_result(f"doei_memory_{args.size}", {
        "size": args.size, "batches": batches, "models": models, "results": results, "ratios": ratios,
        "what": "saved-for-backward bytes, forward peak and forward+backward peak of live tensor storage "
                "(parameters and the input excluded; parameter gradients included in step_peak)",
        "machine": machine(), "command": "python benchmarks/doei_memory.py " + " ".join(sys.argv[1:])}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
