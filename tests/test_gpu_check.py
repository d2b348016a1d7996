"""benchmarks/gpu_check.py: refuses in one line without CUDA; its CPU-callable parts work (tiny models)."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check  # noqa: E402

TINY = dict(depth=2, embed_dim=32, num_heads=2, img_size=32)


def test_refuses_without_cuda_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--models", "mctformer"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA device" in err


def test_specs_name_registered_models():
    from doei.models.registry import list_models

    assert {s[0] for s in gpu_check.SPECS.values()} <= set(list_models())
    assert gpu_check.SPECS["transcam"][1] == 448


def test_train_rate_and_eager_equals_fused_on_cpu():
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(2, 20)
    y[:, 1] = 1
    parts = gpu_check.SPECS["mctformer"][3]
    m = gpu_check.build("mctformer_v2_tiny_conv", "on", "fused", parts, **TINY)
    r = gpu_check.train_rate(m, x, y, amp=False, steps=1, warmup=0)
    assert r["steps_per_s"] > 0 and r["peak_bytes"] is None
    eq = gpu_check.eager_equals_fused("mctformer_v2_tiny_conv", parts, x, **TINY)
    assert eq["equal"] and eq["output_rel_err"] < 1e-5 and eq["grad_rel_err"] < 1e-4
