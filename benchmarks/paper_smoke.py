"""Every ``configs/paper/*.yaml`` in smoke mode (``doei run --smoke N``) on the real samples in ../shared/data:
the per-stage cost table of docs/reproduce.md.

VOC configs run on ``voc_real_mini`` (38 real VOC 2012 images; a ``train.txt`` is written beside its lists in a
work folder, as the paper configs score Seed/Mask on ``train``), COCO configs on ``coco_real_mini`` (one real
COCO image with its instance polygons, laid out as ``train2014``/``val2014`` with masks from ``doei coco-masks``).
Each config runs in its own process (``nice -n 10``) at the config's sizes, capped at N optimiser steps and
N images per stage, random init; DataLoader / CRF workers are capped at ``--workers`` (runtime-only settings:
the same outputs). A watchdog stops a run when the machine's available memory falls below ``--mem-floor-gb``
(the machine is shared) and records that. Results are written after every config, so the script resumes:
configs already done with the same N and batch are skipped (``--rerun`` repeats them).

    python benchmarks/paper_smoke.py [--n 1] [--batch B] [--only voc_mctformer_v2_doei,...] [--work /tmp/paper_smoke]
                                     [--out benchmarks/results/paper_smoke.json] [--workers 2] [--timeout 7200]
    python benchmarks/paper_smoke.py --tables-only [--docs docs/reproduce.md]   # Markdown from the JSON

Outputs: the JSON (per config: status, wall seconds, the largest resident set of its process tree, the
smoke table of every finished stage — see doei.pipeline.smoke), the Markdown tables next to it (``.md``) and,
with ``--docs``, the same tables between the ``paper_smoke`` markers of that file.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from paper_smoke_tables import markdown_tables, update_docs  # noqa: E402

ORDER = ["voc_mctformer_v2_doei", "voc_tscam_doei", "voc_transcam_doei", "coco_mctformer_v2_doei", "coco_tscam_doei",
         "coco_transcam_doei", "voc_mctformer_v2", "voc_tscam", "voc_transcam", "coco_mctformer_v2", "coco_tscam",
         "coco_transcam"]   # one config per family and dataset first (each pair differs only in its doei section)
WORKER_KEYS = ("classifier.train.num_workers", "refine.train.num_workers", "refine.train.crf_workers",
               "seg.train.num_workers", "seg.infer.crf_workers")


def shared_data_dir() -> Path | None:
    """``$DOEI_SHARED/data`` or ``../shared/data`` next to the repository, if present."""
    for c in ([Path(os.environ["DOEI_SHARED"])] if os.environ.get("DOEI_SHARED") else []) + [REPO.parent / "shared"]:
        if (c / "data" / "voc_real_mini" / "JPEGImages").is_dir():
            return c / "data"
    return None


def make_voc_sample(src: Path, dst: Path) -> Path:
    """A VOC root in ``dst`` over ``src`` (voc_real_mini): its folders linked, its lists copied, and ``train.txt``
    (= the 19 ``train_aug`` ids: the paper configs score Seed/Mask on ``train``, which must lie in ``train_aug``)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("JPEGImages", "SegmentationClass", "SegmentationClassAug"):
        if not (dst / name).exists():
            (dst / name).symlink_to((src / name).resolve(), target_is_directory=True)
    lists = dst / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    for name in ("train_aug", "val"):
        shutil.copyfile(src / "ImageSets" / "Segmentation" / f"{name}.txt", lists / f"{name}.txt")
    shutil.copyfile(lists / "train_aug.txt", lists / "train.txt")
    return dst


def make_coco_sample(src: Path, dst: Path) -> Path:
    """A COCO 2014 root in ``dst`` over ``src`` (coco_real_mini): the image as ``train2014/`` and ``val2014/``, the
    instances JSON as both splits' annotations, ground-truth PNGs by ``doei coco-masks``."""
    ann = src / "annotations" / "instances_mini.json"
    image = next(p for p in sorted((src / "images").iterdir()) if p.suffix in (".png", ".jpg"))
    for split in ("train2014", "val2014"):
        (dst / split).mkdir(parents=True, exist_ok=True)
        if not (dst / split / image.name).exists():
            (dst / split / image.name).symlink_to(image.resolve())
        (dst / "annotations").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ann, dst / "annotations" / f"instances_{split}.json")
        masks = dst / "SegmentationClass" / split
        if not (masks / "manifest.json").is_file():
            subprocess.run([sys.executable, "-m", "doei.cli", "coco-masks", "--ann",
                            str(dst / "annotations" / f"instances_{split}.json"), "--out", str(masks)],
                           check=True, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return dst


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "TQDM_DISABLE": "1"}


def _mem_available_mb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _tree_rss_mb(sid: int) -> float:
    """Sum of the resident sets of every process in session ``sid`` (the run and its workers)."""
    total = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if os.getsid(int(d.name)) != sid:
                continue
            for line in (d / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, ProcessLookupError):
            continue
    return total / 1024


def worker_overrides(cfg_path: Path, cap: int) -> list[str]:
    """``--set`` lines capping the config's worker counts at ``cap`` (runtime-only keys)."""
    from doei.pipeline_config import load_pipeline_config

    cfg = load_pipeline_config(cfg_path, ["data.root=/unused"])
    d = cfg.to_dict()
    out = []
    for key in WORKER_KEYS:
        node = d
        for part in key.split("."):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, int) and node > cap:
            out.append(f"{key}={cap}")
    return out


def wait_for_memory(gb: float, limit_s: float) -> float | None:
    """Wait (up to ``limit_s``) until the machine has ``gb`` GB available; returns the MB available then."""
    t0 = time.time()
    while True:
        avail = _mem_available_mb()
        if avail is None or avail >= gb * 1024 or time.time() - t0 > limit_s:
            return avail
        time.sleep(10)


def run_one(name: str, cfg_path: Path, root: Path, work: Path, args) -> dict:
    """Run one config in smoke mode in its own process (``name``: its results key, also the run and log folder)."""
    out = work / "runs" / name
    if out.exists():
        shutil.rmtree(out)            # a smoke folder is cheap to redo; never mix two attempts
    sets = [f"data.root={root}", f"run.out_dir={out}", "run.progress=false", "run.device=cpu",
            *worker_overrides(cfg_path, args.workers)]
    cmd = ["nice", "-n", "10", sys.executable, "-m", "doei.cli", "run", "--config", str(cfg_path),
           "--smoke", str(args.n)] + (["--smoke-batch", str(args.batch)] if args.batch else [])
    for s in sets:
        cmd += ["--set", s]
    log_path = work / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    peak, stopped = 0.0, None
    with open(log_path, "w", encoding="utf-8") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
        while proc.poll() is None:
            time.sleep(2)
            peak = max(peak, _tree_rss_mb(proc.pid))
            avail = _mem_available_mb()
            if avail is not None and avail < args.mem_floor_gb * 1024:
                stopped = f"stopped by the watchdog: machine memory available {avail:.0f} MB < {args.mem_floor_gb} GB"
            elif time.time() - t0 > args.timeout:
                stopped = f"stopped by the watchdog: over --timeout {args.timeout} s"
            if stopped:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
    rc = proc.returncode
    smoke = json.loads((out / "smoke.json").read_text()) if (out / "smoke.json").is_file() else {}
    text = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    err = next((ln for ln in reversed(text) if "Error" in ln or ln.startswith("doei:")), text[-1] if text else "")
    rec = {"status": "ok" if rc == 0 and not stopped else "failed", "returncode": rc, "wall_seconds":
           round(time.time() - t0, 1), "tree_peak_rss_mb": round(peak, 1), "smoke": args.n, "smoke_batch": args.batch,
           "workers_cap": args.workers, "overrides": sets[3:], "stages": smoke.get("stages", []),
           "changes": smoke.get("changes", []), "command": " ".join(cmd[3:])}
    if rec["status"] != "ok":
        rec["error"] = stopped or err.strip()[:400]
    return rec


V100_DEIT_S_IMAGES_PER_S = 940.4   # DeiT paper (Touvron et al. 2021), Table 1: DeiT-S throughput on one 16 GB V100


def calibrate(repeats: int = 3, batch: int = 8) -> dict:
    """CPU seconds per image of a DeiT-S forward (timm ``deit_small_patch16_224``, random init, 224 px, no grad) on
    this machine, against the DeiT paper's published V100 throughput for the same network: the GPU / CPU ratio the
    GPU-hour estimate divides by (CPU seconds, not wall: other jobs on the cores do not inflate it)."""
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    x = torch.randn(batch, 3, 224, 224)
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(repeats):
            t0 = time.process_time()
            model(x)
            times.append((time.process_time() - t0) / batch)
    per_image = sorted(times)[len(times) // 2]
    return {"deit_s_cpu_seconds_per_image": round(per_image, 4), "v100_deit_s_images_per_s": V100_DEIT_S_IMAGES_PER_S,
            "gpu_over_cpu": round(V100_DEIT_S_IMAGES_PER_S * per_image, 1), "threads": torch.get_num_threads(),
            "source": f"one V100's published DeiT-S throughput ({V100_DEIT_S_IMAGES_PER_S:g} img/s, DeiT paper Table 1) "
                      f"to this CPU's DeiT-S forward ({per_image:.3f} CPU-s per image, batch {batch}, measured by "
                      "benchmarks/paper_smoke.py --calibrate)"}


def _save(path: Path, data: dict) -> None:
    from doei.utils.io import atomic_write_json

    atomic_write_json(path, data)
    atomic_md = path.with_suffix(".md")
    from doei.utils.io import atomic_write_text

    atomic_write_text(atomic_md, markdown_tables(data) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1, help="smoke N: optimiser steps and images per stage")
    p.add_argument("--batch", type=int, default=None, help="smoke batch override (default: each config's own)")
    p.add_argument("--only", default="", help="comma-separated config names (default: all twelve)")
    p.add_argument("--work", default="/tmp/doei_paper_smoke", help="work folder (sample roots, runs, logs)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "paper_smoke.json"))
    p.add_argument("--workers", type=int, default=2, help="cap of DataLoader/CRF worker counts")
    p.add_argument("--timeout", type=int, default=7200, help="seconds per config before the watchdog stops it")
    p.add_argument("--mem-floor-gb", type=float, default=2.0, help="stop a run when available memory falls below")
    p.add_argument("--mem-start-gb", type=float, default=8.0,
                   help="before each config, wait (up to --timeout) until this much memory is available")
    p.add_argument("--rerun", action="store_true", help="repeat configs already in the results")
    p.add_argument("--suffix", default="", help="store the runs under '<config><suffix>' (e.g. '@config-batch')")
    p.add_argument("--tables-only", action="store_true", help="only write the Markdown from the JSON")
    p.add_argument("--calibrate", action="store_true", help="(re)measure the CPU / V100 ratio into the JSON, run nothing")
    p.add_argument("--docs", default=None, help="also replace the paper_smoke section of this Markdown file")
    args = p.parse_args(argv)
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.is_file() else {}
    if args.calibrate:
        data["calibration"] = calibrate()
        args.tables_only = True
    if not args.tables_only:
        shared = shared_data_dir()
        if shared is None:
            print("../shared/data (voc_real_mini, coco_real_mini) not found: nothing to run", file=sys.stderr)
            return 2
        work = Path(args.work)
        roots = {"voc": make_voc_sample(shared / "voc_real_mini", work / "data" / "voc"),
                 "coco": make_coco_sample(shared / "coco_real_mini", work / "data" / "coco")}
        import platform

        import torch

        data.setdefault("configs", {})
        data.update({"generated_by": "python benchmarks/paper_smoke.py " + " ".join(argv or sys.argv[1:]),
                     "note": "smoke runs: capped steps/images, random init; costs only, not results",
                     "machine": {"cpus": len(os.sched_getaffinity(0)), "torch": torch.__version__,
                                 "python": platform.python_version(), "processor": platform.machine(),
                                 "shared": "a 2-core CPU shared with other jobs (timings are upper bounds)"}})
        names = [n for n in ORDER if not args.only or n in args.only.split(",")]
        for name in names:
            key = name + args.suffix
            old = data["configs"].get(key)
            if (old and old.get("status") == "ok" and old.get("smoke") == args.n and old.get("smoke_batch") == args.batch
                    and not args.rerun):
                print(f"{key}: done before; skipped")
                continue
            kind = "coco" if name.startswith("coco") else "voc"
            avail = wait_for_memory(args.mem_start_gb, args.timeout)
            print(f"{key}: running (memory available {avail or 0:.0f} MB, {time.strftime('%H:%M:%S')})", flush=True)
            rec = run_one(key, REPO / "configs" / "paper" / f"{name}.yaml", roots[kind], work, args)
            rec["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            data["configs"][key] = rec
            _save(out, data)
            print(f"{key}: {rec['status']} in {rec['wall_seconds']:.0f} s, tree peak {rec['tree_peak_rss_mb']:.0f} MB"
                  + (f" ({rec['error']})" if rec["status"] != "ok" else ""), flush=True)
    _save(out, data)
    if args.docs:
        update_docs(Path(args.docs), data)
    print(markdown_tables(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
