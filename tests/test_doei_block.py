"""benchmarks/doei_block.py: refuses bad arguments in one line; a short run writes what the docs read."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import doei_block  # noqa: E402


def test_refuses_bad_arguments_in_one_line(capsys, tmp_path):
    out = tmp_path / "r.json"
    for argv in (["--shapes", "vit_huge"], ["--repeats", "1"], ["--shapes", ""]):
        assert doei_block.main([*argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--shapes" in err
    assert not out.exists()


def test_short_run_writes_per_block_times_and_extra_cost(tmp_path):
    out = tmp_path / "r.json"
    assert doei_block.main(["--shapes", "tscam", "--repeats", "3", "--out", str(out)]) == 0
    res = json.loads(out.read_text())["results"]["tscam"]
    assert res["class_tokens"] == 1
    assert set(res["ms_per_block"]) == {"fused", "fused_copy", "class", "eager", "update"}
    assert all(v["median"] > 0 and v["n"] == 3 for v in res["ms_per_block"].values())
    assert set(res["extra_ms_over_fused"]) == {"class", "eager"} and res["noise_floor"] >= 0
