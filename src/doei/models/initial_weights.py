"""Initial weights of the ResNet38 nets (AffinityNet, DeepLab): load non-strictly, but say what matched.

The official scripts load ``--weights`` with ``load_state_dict(strict=False)`` and print nothing, so
a file with the wrong key names (another backbone, a wrapped or renamed checkpoint) trains from random
initialisation — with BatchNorm frozen, i.e. at random statistics — and nobody is told. Here the
*coverage* is computed first: of the keys the file is expected to provide (every state-dict key of the
model except the new heads in ``model.from_scratch_names`` and the ``num_batches_tracked`` counters,
which no weight format stores and frozen BatchNorm never uses), how many it provides with the right
shape. Below :data:`MIN_COVERAGE` the load is refused with one line naming the file, the numbers and
the first missing keys. A shape mismatch is always an error (``doei.models.weights``).

Accepted files: our / PyTorch checkpoints (``.pth``/``.pt``, read weights-only) and MXNet ``.params``
(the ImageNet ResNet-38 release, read by :mod:`doei.models.mxnet_params` — no conversion step needed).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn

from doei.errors import DoeiError

# at least this fraction of the expected keys must come from the file. The ImageNet ResNet-38 file and
# PSA's res38_cls.pth provide 100 % of the backbone; 0.95 leaves room for a file lacking one stage's
# BatchNorm statistics, not for a file of another network (typically 0 %).
MIN_COVERAGE = 0.95


@dataclass
class Coverage:
    """What a weights file provides for a model: ``loaded`` of ``expected`` keys; ``new`` = keys expected
    to stay at their initialisation (heads, counters); ``missing`` = expected keys the file lacks."""

    loaded: int
    expected: int
    new: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unused: int = 0                                   # file keys the model does not have (e.g. fc8 of res38_cls)

    @property
    def fraction(self) -> float:
        return self.loaded / self.expected if self.expected else 1.0

    def summary(self) -> str:
        return (f"{self.loaded}/{self.expected} expected keys loaded ({100 * self.fraction:.1f} %), "
                f"{len(self.new)} new (heads: {', '.join(_heads(self.new)) or 'none'}), {self.unused} file keys unused")


def _heads(keys: list[str]) -> list[str]:
    return sorted({k.split(".")[0] for k in keys if not k.endswith("num_batches_tracked")})


def expected_new_keys(model: nn.Module) -> list[str]:
    """Model keys no initial-weights file is expected to provide: the heads (``from_scratch_names``) and
    BatchNorm ``num_batches_tracked`` counters."""
    heads = tuple(f"{n}." for n in getattr(model, "from_scratch_names", ()))
    return [k for k in model.state_dict() if k.startswith(heads) or k.endswith("num_batches_tracked")]


def read_initial_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of an initial-weights file: MXNet ``.params`` (ResNet-38 names renamed) or a torch file."""
    if not Path(path).is_file():
        raise DoeiError(f"{path}: initial weights file not found")
    if str(path).endswith(".params"):
        from doei.models.mxnet_params import resnet38_state_dict_from_mxnet

        return resnet38_state_dict_from_mxnet(path)
    from doei.models.weights import read_state_dict

    return read_state_dict(path)


def coverage(model: nn.Module, sd: Mapping[str, torch.Tensor], where: str = "weights") -> Coverage:
    """Coverage of ``model``'s expected keys by ``sd``; a one-line DoeiError on any shape mismatch."""
    own = model.state_dict()
    bad = [f"{k} {tuple(sd[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
           if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if bad:
        raise DoeiError(f"{where}: shape mismatch for {bad[0]}" + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""))
    new = set(expected_new_keys(model))
    expected = [k for k in own if k not in new]
    missing = [k for k in expected if k not in sd]
    return Coverage(loaded=len(expected) - len(missing), expected=len(expected), new=sorted(new), missing=missing,
                    unused=sum(1 for k in sd if k not in own))


def check_coverage(cov: Coverage, where: str, model_name: str, min_coverage: float = MIN_COVERAGE) -> None:
    """Refuse (one line) when fewer than ``min_coverage`` of the expected keys come from the file."""
    if cov.fraction < min_coverage:
        few = ", ".join(cov.missing[:3]) + (f" (+{len(cov.missing) - 3} more)" if len(cov.missing) > 3 else "")
        raise DoeiError(f"{where}: only {cov.loaded} of {cov.expected} expected keys of {model_name} are in this file "
                        f"({100 * cov.fraction:.1f} %, at least {100 * min_coverage:.0f} % required; missing e.g. {few})"
                        " - not ResNet-38 ImageNet/PSA weights?")


def load_initial_weights(model: nn.Module, path: str | os.PathLike, model_name: str,
                         min_coverage: float = MIN_COVERAGE) -> Coverage:
    """Load ``path`` into ``model`` (in place, non-strict) after checking shapes and coverage; returns the coverage."""
    sd = read_initial_state_dict(path)
    cov = coverage(model, sd, str(path))
    check_coverage(cov, str(path), model_name, min_coverage)
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    return cov


def preflight_initial_weights(model_name: str, options: dict, path: str | os.PathLike, where: str,
                              **model_kwargs) -> Coverage:
    """Check a file against a registered model without building its weights (the model is created on the
    ``meta`` device: shapes only, ~1 s for ResNet38): what ``doei run`` does before its first stage."""
    import doei.models.resnet38_small  # noqa: F401  (registers the reduced-width factories)
    from doei.models.registry import create_model

    with torch.device("meta"):
        try:
            model = create_model(model_name, **options, **model_kwargs)
        except (TypeError, ValueError) as e:
            raise DoeiError(f"{where}: model {model_name!r} with options {options}: {e}") from None
    try:
        sd = read_initial_state_dict(path)
    except DoeiError as e:
        raise DoeiError(f"{where} = {path}: {e}") from None
    cov = coverage(model, sd, f"{where} = {path}")
    check_coverage(cov, f"{where} = {path}", model_name)
    return cov


__all__ = ["MIN_COVERAGE", "Coverage", "expected_new_keys", "read_initial_state_dict", "coverage", "check_coverage",
           "load_initial_weights", "preflight_initial_weights"]
