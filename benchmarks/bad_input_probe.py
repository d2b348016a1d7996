"""Run the bad-input catalogue of issue #22 against a source tree and count what happens.

The cases are ``tests/test_bad_inputs_stale.py`` and ``tests/test_bad_inputs_values.py`` (CLI: stale reuse,
files read back, ignored overrides and flags; near-miss formats, OS paths, late checks;
``tests/bad_inputs_common.all_cases``) and ``tests/test_api_arguments.py`` (the Python API). Each runs in a
forked child in its own temporary folder, with a time limit; outcomes:

* ``clean``: exit 2 (API: the expected exception) with ONE line matching the case's pattern, nothing written;
* ``traceback``: an exception escaped (API: an exception of another type, from deep inside);
* ``accepted``: the bad input was taken (exit 0, no exception);
* ``silent-reuse``: a rerun after a changed input exited 0, reusing what the old input made;
* ``partial-write``: refused, but the output folder changed first;
* ``unclear``: refused, but not in one line naming the culprit (or a near miss that should be read was refused);
* ``ran-past-limit``: still running at ``--limit`` seconds (a flag silently ignored, or a check found only
  after work began), killed; the summary says which.

Usage (the tree under test is whatever ``doei`` imports, e.g. ``PYTHONPATH=<tree>/src``)::

    python benchmarks/bad_input_probe.py --out benchmarks/results/bad_input_probe_after.json
"""
from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing
import os
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FORK = multiprocessing.get_context("fork")


def _cli_child(mod, name: str, base: dict, tmp: str, conn) -> None:
    import torch

    from doei.cli import main

    torch.set_num_threads(1)
    t = Path(tmp)
    try:
        case = mod.all_cases()[name](base, t)
        if case.needs_no_cuda and torch.cuda.is_available():
            conn.send(("n/a", "this machine has CUDA"))
            return
        conn.send(mod.run_case(case, t, main))
    except BaseException as e:  # noqa: BLE001 - the probe counts, it does not fail
        conn.send(("traceback", f"{type(e).__name__}: {str(e).strip()[:200]}"))


def _api_child(api, name: str, tiny, tmp: str, conn) -> None:
    from doei.errors import DoeiError

    os.chdir(tmp)
    fn, exc, pattern = api._cases(tiny)[name]
    try:
        fn()
    except exc as e:
        msg = str(e)
        ok = "\n" not in msg and re.search(pattern, msg) and not list(Path(tmp).iterdir())
        conn.send(("clean" if ok else "unclear", f"{type(e).__name__}: {msg.splitlines()[0] if msg else ''}"))
        return
    except (DoeiError, TypeError, ValueError) as e:
        conn.send(("unclear", f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"))
        return
    except BaseException as e:  # noqa: BLE001
        conn.send(("traceback", f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"))
        return
    conn.send(("accepted", "no exception"))


def _run(target, args: tuple, tmp: str, limit: float) -> tuple[str, str]:
    recv, send = FORK.Pipe(duplex=False)
    p = FORK.Process(target=target, args=(*args, tmp, send))
    p.start()
    send.close()
    got = recv.poll(limit)
    res = recv.recv() if got else ("ran-past-limit", f"still running after {limit:.0f} s; killed")
    if p.is_alive():
        os.kill(p.pid, signal.SIGKILL)
    p.join()
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="result JSON")
    ap.add_argument("--limit", type=float, default=45.0, help="seconds per case before it is killed (default 45)")
    ap.add_argument("--only", default=None, help="regular expression: run the matching case names only")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    more = importlib.import_module("tests.bad_inputs_common")
    api = importlib.import_module("tests.test_api_arguments")
    import doei
    import torch

    torch.set_num_threads(1)
    rows = []
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="doei-probe-") as root:
        base = more.make_base(Path(root) / "base")
        from doei.models.registry import create_model

        torch.manual_seed(0)
        m = create_model("mctformer_v2_tiny_conv", num_classes=3, img_size=32, depth=2, embed_dim=32, num_heads=2)
        torch.save({"model": m.state_dict()}, Path(root) / "w.pth")
        tiny = (m, Path(root) / "w.pth")
        todo = [("cli", n) for n in sorted(more.all_cases())] + [("api", n) for n in api.API_CASES]
        for kind, name in todo:
            if args.only and not re.search(args.only, name):
                continue
            tmp = tempfile.mkdtemp(dir=root, prefix=f"{name[:20]}-")
            t1 = time.time()
            if kind == "cli":
                outcome, detail = _run(_cli_child, (more, name, base), tmp, args.limit)
            else:
                outcome, detail = _run(_api_child, (api, name, tiny), tmp, args.limit)
            rows.append({"case": name, "kind": kind, "outcome": outcome, "detail": detail[-300:],
                         "seconds": round(time.time() - t1, 2)})
            print(f"{outcome:<15} {kind:<4} {name:<42} {detail.splitlines()[-1][:110] if detail else ''}", flush=True)
    counts = Counter(r["outcome"] for r in rows)
    doc = {"tree": str(Path(doei.__file__).resolve().parents[1]), "cases": len(rows), "counts": dict(sorted(counts.items())),
           "limit_s": args.limit, "wall_s": round(time.time() - t0, 1), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: doc[k] for k in ("tree", "cases", "counts", "wall_s")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
