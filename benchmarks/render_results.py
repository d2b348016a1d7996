"""Print the markdown tables of docs/benchmarks.md from the result files in benchmarks/results/.

    python benchmarks/render_results.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict | None:
    p = RESULTS / name
    return json.loads(p.read_text()) if p.exists() else None


def machine_line(m: dict) -> str:
    load = m.get("loadavg_at_start")
    return (f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['cpu_capability']}), {m['threads']} thread(s), "
            f"load average {load[0]:.1f} at the start, {m['time_utc']}, git {m['git']}" if load else m["cpu"])


def training(name: str = "doei_overhead.json") -> None:
    d = load(name)
    if not d:
        return
    print("| model | clock, threads, rounds | off official s | off eager s | off fused s | on eager s | on fused s "
          "| noise floor | on fused / off official (≤ 1.00) | on fused / off eager (≤ 1.00) "
          "| on fused / off fused (≤ 1.05) | on eager / off eager | on fused / on eager | off eager / off official |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in d["models"].values():
        s, q = r["step_s"], r["ratios"]

        def f(k):
            x = q.get(k)
            return f"{x['median']:.3f} [{x['q1']:.3f}–{x['q3']:.3f}]" if x else "–"

        def t(k):
            return f"{s[k]['median']:.3f}" if k in s else "–"
        print(f"| {r['model']} | {r['clock']}, {r['threads']}, {r['repeats']} | " + " | ".join(
            t(k) for k in ("off_official", "off_eager", "off_fused", "on_eager", "on_fused"))
            + f" | ±{r['noise_floor']:.3f} | " + " | ".join(
            f(k) for k in ("on_fused/off_official", "on_fused/off_eager", "on_fused/off_fused", "on_eager/off_eager",
                           "on_fused/on_eager", "off_eager/off_official")) + " |")
    for key, r in d["models"].items():
        env = " ".join(f"{k}={v}" for k, v in r["machine"].get("environment", {}).items())
        print(f"\n{key}: {machine_line(r['machine'])}; `{(env + ' ') if env else ''}{r['command']}`")


def block() -> None:
    d = load("doei_block.json")
    if not d:
        return
    print("| shapes (224², batch 8, 6 heads) | C | fused ms | class ms | eager ms | update ms "
          "| class − fused ms | eager − fused ms | noise floor |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key, r in d["results"].items():
        ms, ex = r["ms_per_block"], r["extra_ms_over_fused"]
        print(f"| {key} | {r['class_tokens']} | {ms['fused']['median']:.2f} | {ms['class']['median']:.2f} | "
              f"{ms['eager']['median']:.2f} | {ms['update']['median']:.2f} | {ex['class']['median']:+.2f} | "
              f"{ex['eager']['median']:+.2f} | ±{r['noise_floor']:.3f} |")
    print(f"\n{machine_line(d['machine'])}; {d['repeats']} rounds; `{d['command']}`")


def memory() -> None:
    rows = []
    for m in ("mctformer", "tscam", "transcam"):
        d = load(f"doei_memory_448_{m}.json")
        if d:
            rows.append(d)
    if not rows:
        return
    print("| model (448², batch 1) | step peak MiB: off eager | off fused | on eager | on fused "
          "| on fused / off fused (≤ 1.05): step peak | forward peak | saved |")
    print("|---|---|---|---|---|---|---|---|")
    for d in rows:
        t = {x["doei"]: x for x in d["results"]["after"]["train"]}
        r = [x for x in d["ratios"] if x["ratio"] == "on_fused/off_fused"][0]
        mb = 1 / 2 ** 20
        print(f"| {r['model']} | " + " | ".join(f"{t[k]['step_peak_bytes'] * mb:.1f}" for k in
                                                ("off_eager", "off_fused", "on_eager", "on_fused"))
              + f" | {r['step_peak']:.3f} | {r['forward_peak']:.3f} | {r['saved']:.3f} |")
    for d in rows:
        print(f"\n{d['models'][0]}: {machine_line(d['machine'])}; `{d['command']}`")


def cam() -> None:
    d = load("cam_extractor.json")
    if not d:
        return
    mb = 1 / 2 ** 20
    print(f"{d['model']}, {d['config']} (scales {d['scales']} + flip, patch refinement {d['patch_refine']}, "
          f"amp {d['amp']}), {d['images']}, {d['clock']} clock, {d['threads']} thread(s), {d['repeats']} rounds:\n")
    print("| contender | images/s | s/image median [IQR] | speed-up over official [IQR] | peak MiB (one image) "
          "| max abs CAM difference vs official (float16 files) | mean abs |")
    print("|---|---|---|---|---|---|---|")
    for k in ("official", "official_copy", "ours_fp32", "ours"):
        s = d["s_per_image"][k]
        sp = d["speedup_over_official"].get(k)
        diff = d["cam_difference_vs_official"].get(k)
        peak = d["peak_live_bytes_one_image"].get(k)
        print(f"| {k} | {1 / s['median']:.3f} | {s['median']:.3f} [{s['q1']:.3f}–{s['q3']:.3f}] | "
              + (f"{sp['median']:.2f} [{sp['q1']:.2f}–{sp['q3']:.2f}]" if sp else "1") + " | "
              + (f"{peak * mb:.0f}" if peak else "–") + " | "
              + (f"{diff['max_abs']:.1e} ({diff['max_abs_float16_files']:.1e})" if diff else "0") + " | "
              + (f"{diff['mean_abs']:.1e}" if diff else "0") + " |")
    print(f"\nnoise floor ±{d['noise_floor']:.3f}; {machine_line(d['machine'])}; `{d['command']}`")


if __name__ == "__main__":
    for fn in (training, lambda: training("doei_overhead_run2.json"), lambda: training("doei_overhead_malloc.json"),
               block, memory, cam):
        fn()
        print()
    sys.exit(0)
