"""doei.models.weights: wrapper/prefix unwrapping and one-line errors for ill-fitting checkpoints."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from doei.errors import DoeiError
from doei.models.weights import load_model_weights, read_state_dict, unwrap_state_dict


def _net(out: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, out))


@pytest.mark.parametrize("wrap", ["bare", "model", "state_dict", "module", "model+module"])
def test_layouts_load(tmp_path, wrap):
    torch.manual_seed(1)
    src = _net()
    sd = src.state_dict()
    if "module" in wrap:
        sd = {f"module.{k}": v for k, v in sd.items()}
    obj = {"model": sd, "epoch": 3} if wrap.startswith("model") else {"state_dict": sd} if wrap == "state_dict" else sd
    torch.save(obj, tmp_path / "c.pth")
    dst = _net()
    load_model_weights(dst, tmp_path / "c.pth")
    for a, b in zip(src.state_dict().values(), dst.state_dict().values()):
        assert torch.equal(a, b)


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    torch.save({"model": _net(3).state_dict()}, tmp_path / "c.pth")
    with pytest.raises(DoeiError) as e:
        load_model_weights(_net(7), tmp_path / "c.pth")
    msg = str(e.value)
    assert "2.weight (3, 5) vs model (7, 5)" in msg and "\n" not in msg and "c.pth" in msg


def test_missing_and_unexpected_keys():
    sd = _net().state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["0.bias"]
    with pytest.raises(DoeiError, match=r"missing keys 0\.bias; unexpected keys extra\.weight"):
        load_model_weights(_net(), sd)
    load_model_weights(_net(), sd, strict=False)        # allowed without strict


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(DoeiError, match="checkpoint file not found"):
        read_state_dict(tmp_path / "nope.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DoeiError, match="not a readable weights-only"):
        read_state_dict(tmp_path / "bad.pth")
    with pytest.raises(DoeiError, match="no tensors"):
        unwrap_state_dict({"epoch": 1})


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"model": _net().state_dict(), "obj": _net()}, tmp_path / "p.pth")  # a module needs full pickle
    with pytest.raises(DoeiError, match="weights-only"):
        read_state_dict(tmp_path / "p.pth")
