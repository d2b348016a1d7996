"""Table 4 and Fig. 4 as commands, in smoke mode on the real VOC sample: ``doei ablate`` with
``configs/paper/ablate_voc_mctformer_v2.yaml`` and ``doei sweep`` with ``configs/paper/sweep_voc_mctformer_v2.yaml``
(every row / sweep point a ``doei run --smoke N`` of train-cls, cam, eval at the config's sizes), into one
study folder so that the sweep reuses the ablation's baseline and full-DOEI runs.

The sample is ``../shared/data/voc_real_mini`` laid out by ``benchmarks/paper_smoke.py`` (its 19 ``train_aug``
ids also as ``train``, which the configs score the Seed row on). DataLoader workers are capped at
``--workers`` (a runtime-only setting: the same outputs). Each command runs in its own process under
``nice -n 10``; per command: wall and CPU seconds (the process tree's), runs made and reused, and per run
the wall seconds of each stage and the peak resident memory (the stage markers).

    python benchmarks/paper_study_smoke.py [--n 1] [--batch B] [--sweep-batch B] [--seeds 1] [--work /tmp/paper_study_smoke]
                                           [--out benchmarks/results/paper_study_smoke.json] [--only ablate,sweep]
                                           [--docs docs/reproduce.md]
    python benchmarks/paper_study_smoke.py --tables-only --docs docs/reproduce.md     # Markdown from the JSON

Outputs: the JSON (commands as run, timings, per-run stage seconds) and a Markdown table beside it (``.md``),
written after each command; a command already in the JSON with exit 0 and the same command line is kept
(the script resumes).
Smoke numbers (mIoU included) are not results: timings and "it runs" only.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from paper_smoke import make_voc_sample, shared_data_dir  # noqa: E402

CONFIGS = {"ablate": REPO / "configs" / "paper" / "ablate_voc_mctformer_v2.yaml",
           "sweep": REPO / "configs" / "paper" / "sweep_voc_mctformer_v2.yaml"}


def batch_of(verb: str, args) -> int | None:
    return args.sweep_batch if verb == "sweep" and args.sweep_batch is not None else args.batch


def command(verb: str, root: Path, study: Path, args) -> list[str]:
    """The ``doei`` command line of one verb (as a user types it, plus the sample's root and worker cap)."""
    cmd = [verb, "--config", str(CONFIGS[verb].relative_to(REPO)), "--smoke", str(args.n), "--seeds", str(args.seeds),
           "--out", str(study), "--set", f"data.root={root}", "--set", "run.device=cpu",
           "--set", f"classifier.train.num_workers={args.workers}"]
    if batch_of(verb, args) is not None:
        cmd[5:5] = ["--smoke-batch", str(batch_of(verb, args))]
    return cmd


def planned_runs(verb: str, seeds: int) -> int:
    """How many runs (distinct run keys) the verb's config plans for ``seeds`` seeds."""
    from doei.study.grid import row_doei, run_key, sweep_doei
    from doei.study.runner import load_study

    s = load_study(CONFIGS[verb], Path("/nonexistent/study"), ["data.root=/unused"])
    keys = {run_key({"enabled": False}, k) for k in range(seeds)}
    if verb == "ablate":
        keys |= {run_key(row_doei(r, s.base_doei), k) for r in s.rows for k in range(seeds)}
    else:
        keys |= {run_key(sweep_doei(s.base_doei, n, v), k) for n, vs in s.sweep for v in vs for k in range(seeds)}
    return len(keys)


def run_verb(verb: str, root: Path, study: Path, args) -> dict:
    """Run one verb in a child process; its wall/CPU seconds, exit status and what the study folder says."""
    argv = command(verb, root, study, args)
    before = {p.parent.name for p in (study / "runs").glob("*/result.json")} if (study / "runs").is_dir() else set()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TQDM_DISABLE": "1"}
    log = Path(args.work) / f"{verb}.log"
    r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    timed_out = False
    with open(log, "w") as fh:
        proc = subprocess.Popen(["nice", "-n", "10", sys.executable, "-m", "doei.cli", *argv], cwd=REPO, env=env,
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:        # the time box: stop it (its process group); it resumes next time
            os.killpg(proc.pid, signal.SIGTERM)
            rc, timed_out = proc.wait(), True
    wall, r1 = time.time() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    after = {p.parent.name for p in (study / "runs").glob("*/result.json")}
    runs = {}
    for key in sorted(after):
        res = json.loads((study / "runs" / key / "result.json").read_text())
        t = res.get("timing") or {}
        runs[key] = {"doei": res["doei"], "seed": res["seed"], "stage_seconds": t.get("stage_seconds"),
                     "stage_peak_rss_mb": t.get("stage_peak_rss_mb"), "total_wall_s": t.get("total_wall_s"),
                     "Seed_mIoU_not_a_result": round(res["mIoU"], 2)}
    return {"command": "doei " + " ".join(argv), "batch": batch_of(verb, args), "rc": rc, "timed_out": timed_out, "wall_s": round(wall, 1),
            "cpu_s": round((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), 1),
            "runs_made": sorted(after - before), "runs_reused": sorted(after & before), "log": str(log),
            "runs": {k: runs[k] for k in sorted(after - before)}}


def markdown(doc: dict) -> str:
    lines = [f"# Table 4 / Fig. 4 commands in smoke mode (run.smoke {doc['n']})", "",
             f"Real VOC sample `{doc['data']}`; {doc['cpus']} CPU cores, shared; smoke numbers are no result. "
             "Classifier batch: the config's (64) unless the row says otherwise (`--smoke-batch`).", "",
             "| command | batch | exit | wall s | CPU s | runs made | reused | s per new run (mean) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    planned = doc.get("planned_runs") or {}
    for verb, r in doc["verbs"].items():
        per = [x["total_wall_s"] for x in r["runs"].values() if x.get("total_wall_s") is not None]
        mean = f"{sum(per) / len(per):.0f}" if per else "–"
        rc = f"stopped at {r['wall_s']:.0f} s (time box)" if r.get("timed_out") else r["rc"]
        made = f"{len(r['runs_made'])} of {planned[verb]}" if r.get("timed_out") and verb in planned else len(r["runs_made"])
        lines.append(f"| `doei {verb}` | {r.get('batch') or 64} | {rc} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {made} | "
                     f"{len(r['runs_reused'])} | {mean} |")
    stages = ["train-cls", "cam", "eval"]
    lines += ["", "Per new run: wall seconds of each stage (markers) and the largest peak RSS of its stages.", "",
              "| command | run | " + " | ".join(stages) + " | peak RSS MB |", "|---|---|" + "---:|" * (len(stages) + 1)]
    for verb, r in doc["verbs"].items():
        for key, x in r["runs"].items():
            s, m = x.get("stage_seconds") or {}, x.get("stage_peak_rss_mb") or {}
            peak = max((v for v in m.values() if v is not None), default=None)
            cells = [f"{s[k]:.0f}" if s.get(k) is not None else "–" for k in stages]
            cells.append(f"{peak:.0f}" if peak is not None else "–")
            lines.append(f"| {verb} | {key} | " + " | ".join(cells) + " |")
    lines += ["", "Commands:", ""] + [f"    {r['command']}" for r in doc["verbs"].values()]
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- paper_study_smoke:begin -->", "<!-- paper_study_smoke:end -->"


def docs_section(doc: dict) -> str:
    """What goes between the markers of docs/reproduce.md: the Markdown tables without their title."""
    return markdown(doc).split("\n", 2)[2].strip()


def update_docs(path: Path, doc: dict) -> None:
    text = path.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path}: no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    path.write_text(head + BEGIN + "\n" + docs_section(doc) + "\n" + END + rest.split(END, 1)[1], encoding="utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1, help="run.smoke: steps and images per stage (default 1)")
    ap.add_argument("--batch", type=int, default=None, help="run.smoke_batch (default: the configs' batches)")
    ap.add_argument("--sweep-batch", type=int, default=None,
                    help="run.smoke_batch of the sweep only (default --batch); a different batch is another study "
                         "folder, so the sweep then reuses no ablation run")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2, help="cap on the classifier's DataLoader workers (default 2)")
    ap.add_argument("--work", default="/tmp/paper_study_smoke", help="sample and study folder")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "paper_study_smoke.json"))
    ap.add_argument("--timeout", type=float, default=None,
                    help="stop a command after this many seconds (recorded as timed out with the runs it finished; "
                         "the same command resumes)")
    ap.add_argument("--only", default="ablate,sweep", help="verbs to run, in order (default ablate,sweep)")
    ap.add_argument("--docs", default=None, help="also write the tables between the paper_study_smoke markers of "
                                                 "this file (docs/reproduce.md)")
    ap.add_argument("--tables-only", action="store_true", help="run nothing: the Markdown (and --docs) from --out")
    args = ap.parse_args(argv)
    if args.tables_only:
        doc = json.loads(Path(args.out).read_text())
        Path(args.out).with_suffix(".md").write_text(markdown(doc))
        if args.docs:
            update_docs(Path(args.docs), doc)
        return 0
    data = shared_data_dir()
    if data is None:
        print("../shared/data/voc_real_mini not found (set DOEI_SHARED)", file=sys.stderr)
        return 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    root = make_voc_sample(data / "voc_real_mini", work / "voc")
    doc = {"n": args.n, "seeds": args.seeds,
           "planned_runs": {v: planned_runs(v, args.seeds) for v in CONFIGS}, "data": "../shared/data/voc_real_mini",
           "cpus": len(os.sched_getaffinity(0)), "verbs": {}}
    out = Path(args.out)
    old = json.loads(out.read_text()) if out.is_file() else {}
    for verb in [v.strip() for v in args.only.split(",") if v.strip()]:
        b = batch_of(verb, args)
        prev = (old.get("verbs") or {}).get(verb)
        if prev and prev["rc"] == 0 and prev["command"] == "doei " + " ".join(
                command(verb, root, work / ("study" if b is None else f"study-b{b}"), args)):
            print(f"doei {verb}: done before with the same command ({prev['wall_s']:.0f} s); kept", flush=True)
            doc["verbs"][verb] = prev
            continue
        print(f"doei {verb} ...", flush=True)
        doc["verbs"][verb] = run_verb(verb, root, work / ("study" if b is None else f"study-b{b}"), args)
        r = doc["verbs"][verb]
        print(f"  exit {r['rc']}, {r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU, {len(r['runs_made'])} runs made, "
              f"{len(r['runs_reused'])} reused (log {r['log']})", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1) + "\n")
        out.with_suffix(".md").write_text(markdown(doc))
        if args.docs:
            update_docs(Path(args.docs), doc)
    return 0 if all(r["rc"] == 0 for r in doc["verbs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
