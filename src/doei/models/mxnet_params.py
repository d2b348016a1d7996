"""Reading MXNet ``.params`` files (NDArray lists) without MXNet, and renaming ResNet38 weights to our keys.

The ImageNet ResNet-38 weights every PSA-based pipeline starts from exist publicly only as the MXNet
file ``ilsvrc-cls_rna-a1_cls1000_ep-0001.params`` (Wu et al., "Wider or deeper", linked from PSA's
README); PSA's ``train_aff.py`` converts it on the fly. This module reads that container directly.

The file format (MXNet ``NDArray::Save`` of a list, little-endian)::

    uint64 0x112 (list magic), uint64 reserved
    uint64 n, then n arrays; each array:
        uint32 magic: 0xF993FAC9 (V2) | 0xF993FACA (V3) → int32 storage type (0 = dense; others refused)
                      0xF993FAC8 (V1)                    → (no storage type)
                      anything else (legacy)              → that value is ndim, dims are uint32
        shape: uint32 ndim, then ndim × int64 (V1/V2/V3) or uint32 (legacy) dims; ndim 0 = empty array
        context: int32 device type, int32 device id
        int32 dtype flag (0 float32, 1 float64, 2 float16, 3 uint8, 4 int32, 5 int8, 6 int64)
        raw data, C order
    uint64 m, then m names; each: uint64 length, bytes (``arg:<name>`` / ``aux:<name>``)

Names map to the keys of :mod:`doei.models.resnet38` (``res2a_branch1_weight`` → ``b2.conv_branch1.weight``,
``bn4b3_branch2a_gamma`` → ``b4_3.bn_branch2a.weight``, ``aux:bn7_moving_var`` → ``bn7.running_var``;
``linear1000_*`` — the ImageNet classifier — is dropped).
"""
from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import numpy as np
import torch

from doei.errors import DoeiError

LIST_MAGIC = 0x112
V1, V2, V3 = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
DTYPES = {0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8, 6: np.int64}
_MAX_NDIM = 32


class _Reader:
    def __init__(self, data: bytes, where: str) -> None:
        self.data, self.pos, self.where = data, 0, where

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise DoeiError(f"{self.where}: truncated MXNet .params file (offset {self.pos})")
        out = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return out

    def raw(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DoeiError(f"{self.where}: truncated MXNet .params file (offset {self.pos}, {n} bytes wanted)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out


def _read_array(r: _Reader) -> np.ndarray:
    (magic,) = r.take("<I")
    if magic in (V2, V3):
        (stype,) = r.take("<i")
        if stype != 0:
            raise DoeiError(f"{r.where}: sparse NDArray (storage type {stype}) not supported")
    if magic in (V1, V2, V3):
        (ndim,) = r.take("<I")
        dim_fmt = "q"
    else:                                   # legacy: the first word is ndim, dims are uint32
        ndim, dim_fmt = magic, "I"
    if ndim > _MAX_NDIM:
        raise DoeiError(f"{r.where}: not an MXNet NDArray (ndim {ndim} at offset {r.pos - 4})")
    shape = r.take(f"<{ndim}{dim_fmt}") if ndim else ()
    if ndim == 0:
        return np.zeros((0,), dtype=np.float32)
    r.take("<ii")                           # context (device type, id): irrelevant on load
    (flag,) = r.take("<i")
    if flag not in DTYPES:
        raise DoeiError(f"{r.where}: unknown NDArray dtype flag {flag}")
    dt = np.dtype(DTYPES[flag]).newbyteorder("<")
    n = int(np.prod(shape))
    return np.frombuffer(r.raw(n * dt.itemsize), dtype=dt).reshape(shape).astype(dt.newbyteorder("="))


def read_ndarray_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{name: array}`` of an MXNet NDArray list file (``mx.nd.save``); one-line DoeiError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise DoeiError(f"{path}: file not found")
    r = _Reader(path.read_bytes(), str(path))
    magic, _ = r.take("<QQ")
    if magic != LIST_MAGIC:
        raise DoeiError(f"{path}: not an MXNet .params file (header {magic:#x}, expected {LIST_MAGIC:#x})")
    (n,) = r.take("<Q")
    arrays = [_read_array(r) for _ in range(n)]
    (m,) = r.take("<Q")
    if m != n:
        raise DoeiError(f"{path}: {n} arrays but {m} names (unnamed NDArray lists are not weight files)")
    names = []
    for _ in range(m):
        (length,) = r.take("<Q")
        names.append(r.raw(length).decode("utf-8", errors="replace"))
    return dict(zip(names, arrays))


_BLOCK = re.compile(r"^(res|bn)(\d)(a|b\d+)_branch(\w+?)_(weight|gamma|beta|moving_mean|moving_var)$")
_BN_LEAF = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_var": "running_var"}


def resnet38_key(name: str) -> str | None:
    """Our ResNet38 key of an MXNet parameter name (``arg:``/``aux:`` prefix optional); None for the
    ImageNet classifier (``linear1000``); a DoeiError for a name that is not ResNet-38's."""
    bare = name.split(":", 1)[1] if name.startswith(("arg:", "aux:")) else name
    if bare.startswith("linear1000") or bare.startswith("fc1000"):
        return None
    if bare == "conv1a_weight":
        return "conv1a.weight"
    if bare.startswith("bn7_") and bare[4:] in _BN_LEAF:
        return f"bn7.{_BN_LEAF[bare[4:]]}"
    m = _BLOCK.match(bare)
    if not m:
        raise DoeiError(f"MXNet parameter {name!r}: not a ResNet-38 name (expected res<S><U>_branch<B>_weight, "
                        "bn<S><U>_branch<B>_gamma/beta/moving_mean/moving_var, conv1a_weight or bn7_*)")
    kind, stage, unit, branch, leaf = m.groups()
    block = f"b{stage}" if unit == "a" else f"b{stage}_{unit[1:]}"
    if kind == "res":
        if leaf != "weight":
            raise DoeiError(f"MXNet parameter {name!r}: convolutions of ResNet-38 have no {leaf}")
        return f"{block}.conv_branch{branch}.weight"
    if leaf == "weight":
        raise DoeiError(f"MXNet parameter {name!r}: BatchNorm parameters are gamma/beta/moving_mean/moving_var")
    return f"{block}.bn_branch{branch}.{_BN_LEAF[leaf]}"


def resnet38_state_dict_from_mxnet(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ResNet38 backbone state dict (our key names, float32 tensors) of an MXNet ``.params`` file."""
    out: dict[str, torch.Tensor] = {}
    for name, arr in read_ndarray_file(path).items():
        key = resnet38_key(name)
        if key is not None:
            out[key] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if not out:
        raise DoeiError(f"{path}: no ResNet-38 parameters in this MXNet file")
    return out


__all__ = ["read_ndarray_file", "resnet38_key", "resnet38_state_dict_from_mxnet"]
