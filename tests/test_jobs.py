"""doei.utils.jobs: side-by-side jobs give the results (and errors) of running them here."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from doei.errors import DoeiError
from doei.utils.jobs import default_jobs, job_threads, run_jobs


def seeded_sum(seed: int) -> tuple[int, float]:
    """A job: its thread count and a seeded computation (module level, so a spawned child can import it)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(64, 64, generator=g)
    return torch.get_num_threads(), float((a @ a).sum())


def refuse(value: int) -> None:
    raise DoeiError(f"job value {value}: expected something else")


def crash(value: int) -> None:
    raise ZeroDivisionError(value)


def test_side_by_side_results_equal_the_ones_computed_here_in_order():
    here = [seeded_sum(s) for s in (3, 1, 2)]
    there = run_jobs([(seeded_sum, (s,)) for s in (3, 1, 2)], jobs=2, threads=1)
    assert [v for _, v in there] == [v for _, v in here]
    assert [t for t, _ in there] == [1, 1, 1]                    # each child ran with the threads it was given


def test_one_job_runs_here_with_this_process_threads():
    assert run_jobs([(seeded_sum, (0,))], jobs=4, threads=1) == [seeded_sum(0)]
    assert run_jobs([(seeded_sum, (0,)), (seeded_sum, (1,))], jobs=1, threads=1)[1][0] == torch.get_num_threads()


def test_a_doei_error_in_a_job_is_one_line_here():
    with pytest.raises(DoeiError, match=r"^job value 7: expected something else$"):
        run_jobs([(seeded_sum, (0,)), (refuse, (7,))], jobs=2, threads=1)


def test_a_bug_in_a_job_is_raised_with_its_traceback():
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        run_jobs([(crash, (1,)), (seeded_sum, (0,))], jobs=2, threads=1)


def test_thread_share_and_default_jobs():
    assert job_threads(1) == torch.get_num_threads()
    assert job_threads(10 ** 6) == 1
    assert 1 <= default_jobs(2) <= 2 and default_jobs(1) == 1


def record_pid_and_sleep(path: str) -> None:
    """A job that says who it is, then waits (to be killed with its parent)."""
    Path(path).write_text(str(os.getpid()))
    time.sleep(120)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] not in "ZX"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_jobs_die_with_a_killed_parent(tmp_path):
    """SIGKILL of the process running the jobs (no finally runs) still ends them: no orphan keeps writing."""
    code = ("import sys; from test_jobs import record_pid_and_sleep as f; from doei.utils.jobs import run_jobs; "
            "run_jobs([(f, (sys.argv[1],)), (f, (sys.argv[2],))], jobs=2, threads=1)")
    files = [tmp_path / "a", tmp_path / "b"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, files)], env=env)
    try:
        deadline = time.time() + 60
        while not all(f.is_file() and f.read_text() for f in files):
            assert time.time() < deadline and proc.poll() is None, "the jobs did not start"
            time.sleep(0.2)
        pids = [int(f.read_text()) for f in files]
        assert all(_alive(p) for p in pids)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.time() + 20
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids)
