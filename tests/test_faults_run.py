"""SIGKILL ``doei run`` (all six stages on tiny data) once inside each stage at a seeded random moment
(5-90 % of the stage's uninterrupted duration after its start), rerun each time, and finish with the eval table, pseudo masks, segmentation PNGs, CAMs and checkpoints of an uninterrupted
run; after every kill each file present loads (stage markers and outputs are written atomically)."""
from __future__ import annotations

import json
import random

import torch
import yaml
from fault_common import check_readable, doei, files_of, kill_resume_cycle
from pipeline_common import make_synth, tiny_config

N_KILLS = 6


def _config(synth, out, path):
    cfg = tiny_config(synth, out, refine__train__epochs=2, seg__train__epochs=2, seg__infer__scales=[1.0],
                      seg__infer__flip=False)
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def _table(out):
    return json.loads((out / "eval.json").read_text())


def test_run_survives_sigkill(tmp_path):
    synth = make_synth(tmp_path)
    rc, wall, err = doei(["run", "--config", str(_config(synth, tmp_path / "ref", tmp_path / "ref.yaml"))],
                         tmp_path / "ref.log")
    assert rc == 0, err[-3000:]
    out = tmp_path / "killed"
    cfg = _config(synth, out, tmp_path / "killed.yaml")
    log = out / "run_log.jsonl"

    # one kill inside each stage, in pipeline order: wait for the stage's "start" record of this attempt,
    # then a seeded random 5-90 % of that stage's uninterrupted duration
    ref_events = [json.loads(ln) for ln in (tmp_path / "ref" / "run_log.jsonl").read_text().splitlines()]
    seconds = {e["stage"]: e["seconds"] for e in ref_events if e["event"] == "end"}
    stages = ["train-cls", "cam", "refine", "train-seg", "infer-seg", "eval"]
    rng = random.Random(5)
    delays = [round(seconds[st] * rng.uniform(0.05, 0.9), 3) for st in stages]
    targets = iter(stages)

    def ready_for():
        stage = next(targets)
        before = len(log.read_text().splitlines()) if log.exists() else 0

        def ready():
            if not log.exists():
                return False
            for ln in log.read_text().splitlines()[before:]:
                try:
                    e = json.loads(ln)
                except json.JSONDecodeError:
                    continue
                if e.get("event") == "start" and e.get("stage") == stage:
                    return True
            return False

        return ready

    hits, tmps = kill_resume_cycle(lambda: ["run", "--config", str(cfg)], out, delays, tmp_path / "killed.log",
                                   ready_for)
    events = [json.loads(ln) for ln in log.read_text().splitlines() if ln.strip()]
    killed_in = [e["stage"] for e, nxt in zip(events, events[1:] + [{}]) if e["event"] == "start"
                 and not (nxt.get("event") in ("end", "fail") and nxt.get("stage") == e["stage"])]
    print(f"doei run: {hits}/{N_KILLS} kills hit a running process at {delays} s (uninterrupted {wall:.1f} s), "
          f"inside stages {killed_in}; stray temporary files after a kill: {tmps}")
    assert hits >= 5
    ref_t, got_t = _table(tmp_path / "ref"), _table(out)
    strip = lambda t: json.loads(json.dumps(t).replace(str(tmp_path / "ref"), "RUN").replace(str(out), "RUN"))  # noqa
    assert strip(ref_t) == strip(got_t)
    for sub in ("cam", "pseudo", "seg_pred"):
        a, b = files_of(tmp_path / "ref" / sub, (".npz", ".png")), files_of(out / sub, (".npz", ".png"))
        assert a and a.keys() == b.keys() and [k for k in a if a[k] != b[k]] == [], sub
    for sub in ("cls", "refine", "seg"):
        a = torch.load(tmp_path / "ref" / sub / "checkpoint.pt", weights_only=True)["model"]
        b = torch.load(out / sub / "checkpoint.pt", weights_only=True)["model"]
        assert all(torch.equal(v, b[k]) for k, v in a.items()), sub
    check_readable(out)
