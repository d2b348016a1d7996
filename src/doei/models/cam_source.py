"""CAM sources: what a classifier family's ``cam_source(...)`` returns, the CAM options a family
declares, and the CAM computations any family can reuse (shared by ``doei.models`` and ``doei.cam``).

A *CAM source* turns a batch of normalised views into low-resolution maps; each classifier family
provides one through its ``cam_source(kind=..., n_layers=..., patch_refine=...)`` method (see
:class:`doei.models.registry.Classifier`) and :class:`doei.cam.extractor.CamExtractor` runs it over
scales and flips. The types live here, below ``doei.cam``, so that models never import the CAM layer.

What a family supports is declared on the model, never hard-coded elsewhere:

* ``cam_kinds`` — ``{kind: one-line description}``; the first is the default;
* ``cam_options`` — ``{option: default}`` for the options of :data:`CAM_OPTIONS` its kinds read
  (MCTformer-V2: ``n_layers`` and ``patch_refine``; TransCAM: ``patch_refine``; TS-CAM: none).

:func:`resolve_cam_settings` checks a request against these (one-line ``DoeiError`` for a kind the
model does not have or an option it does not read) and fills the defaults; an option the family does
not read comes back as None, so it is never recorded as used.

The computations (each used by several families and by the timm CAM source):

* :func:`class_attention` — class→patch attention summed over the last blocks [B, C, h, w]
  (MCTformer-V2's ``mtatt``, TS-CAM's attention term, the timm source);
* :func:`semantic_cams` — that attention × class maps (TS-CAM's semantic-aware map, MCTformer's
  ``fused``, the timm source's ``semantic`` kind);
* :func:`refine_with_patch_affinity` — MCTformer's patch-affinity refinement;
* :class:`SemanticCamSource` — the source of any model whose ``forward_cams(x)`` returns logits and
  semantic-aware maps (TS-CAM and the families built like it).
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Protocol

import torch
import torch.nn as nn
from torch import Tensor

from doei.errors import DoeiError

# the CAM options a family may declare (``cam_options``), with what they mean
CAM_OPTIONS: dict[str, str] = {
    "n_layers": "the last blocks whose class→patch attention is summed (1..depth)",
    "patch_refine": "refine the maps with the patch→patch attention of all blocks",
}


class ViewCams(NamedTuple):
    """What a source returns for one batch of views."""

    logits: Tensor        # [B, C] image-level scores (class-token logits for MCTformer)
    cams: Tensor          # [B, C, h, w] raw maps before refinement
    refined: Tensor       # [B, C, h, w] the maps the pipeline upsamples (== cams without refinement)


class CamSource(Protocol):
    """Model adapter: normalised views [B, 3, h, w] -> :class:`ViewCams` at the model's resolution."""

    num_classes: int

    def __call__(self, x: Tensor) -> ViewCams: ...


class CamSettings(NamedTuple):
    """A CAM request resolved against a model: ``kind`` one of its ``cam_kinds``; ``n_layers`` /
    ``patch_refine`` its value, or None where the family does not read that option."""

    kind: str
    n_layers: int | None
    patch_refine: bool | None


def _model_name(model: nn.Module) -> str:
    family = getattr(model, "family", None)
    return f"{type(model).__name__} (family {family!r})" if family else type(model).__name__


def resolve_cam_settings(model: nn.Module, kind: str | None = None, n_layers: int | None = None,
                         patch_refine: bool | None = None, keys: str = "") -> CamSettings:
    """Check a CAM request against what ``model`` declares and fill its defaults.

    ``None`` = the family's default. A kind the model does not list, or an option (``n_layers``,
    ``patch_refine``) its family does not read, is a one-line DoeiError naming what it accepts;
    ``n_layers`` must lie in 1..``model.depth`` (its default is capped at the depth). ``keys``: the config
    prefix the request came from (e.g. ``"cam."``): the messages then name the keys (``cam.kind = ...``)."""
    m = getattr(model, "module", model)
    kinds, options = getattr(m, "cam_kinds", None), getattr(m, "cam_options", None)
    if not isinstance(kinds, Mapping) or not kinds or not isinstance(options, Mapping):
        raise DoeiError(f"{_model_name(m)}: does not declare its CAM kinds and options (cam_kinds, cam_options; "
                        "see doei.models.registry.Classifier)")
    name = _model_name(m)
    if kind is None:
        kind = next(iter(kinds))
    elif kind not in kinds:
        raise DoeiError(f"{keys}kind = {kind!r}: expected one of {', '.join(kinds)} (the CAM kinds of {name})" if keys
                        else f"CAM kind {kind!r}: {name} has {', '.join(kinds)}")
    given = {"n_layers": n_layers, "patch_refine": patch_refine}
    for opt, value in given.items():
        if value is not None and opt not in options:
            takes = ", ".join(options) if options else "none"
            raise DoeiError(f"{keys}{opt} = {value!r}: {name} does not read this CAM option; expected it unset "
                            f"(its CAM options: {takes})" if keys else
                            f"CAM option {opt} = {value!r}: {name} does not read it (its CAM options: {takes})")
    if "n_layers" in options:
        depth = int(m.depth)                    # the default is capped at the depth; a given value is checked
        n_layers = min(int(options["n_layers"]), depth) if n_layers is None else int(n_layers)
        if not 1 <= n_layers <= depth:
            raise DoeiError(f"{keys or 'CAM option '}n_layers = {n_layers}: expected 1..{depth} ({name}'s depth)")
    if "patch_refine" in options:
        patch_refine = bool(options["patch_refine"] if patch_refine is None else patch_refine)
    return CamSettings(kind, n_layers, patch_refine)


def class_attention(attn: Tensor, grid: tuple[int, int], num_cls: int = 1, num_prefix: int | None = None,
                    n_layers: int | None = None) -> Tensor:
    """Class→patch attention summed over the last ``n_layers`` blocks (None = all): stacked head-mean
    attention [L, B, T, T] -> [B, num_cls, h, w]. The first ``num_cls`` tokens are the class tokens;
    patches start at ``num_prefix`` (default ``num_cls``; more with register tokens)."""
    n = num_cls if num_prefix is None else num_prefix
    b, (h, w) = attn.shape[1], grid
    a = attn if n_layers is None else attn[-n_layers:]
    return a.sum(0)[:, :num_cls, n:].reshape(b, num_cls, h, w)


def semantic_cams(attention: Tensor, class_maps: Tensor) -> Tensor:
    """Semantic-aware maps: class→patch attention [B, 1 or K, h, w] × class maps [B, K, h, w]
    (TS-CAM: the conv head map; MCTformer's ``fused``: its ReLU). No ReLU here: callers choose."""
    return attention * class_maps


def refine_with_patch_affinity(cams: Tensor, patch_attn: Tensor) -> Tensor:
    """MCTformer's affinity refinement: ``refined[c, i] = Σ_j A[i, j] · cams[c, j]`` with A the
    patch→patch attention summed over ALL blocks. cams [B, C, h, w], patch_attn [L, B, P, P].

    The official one-liner ``A.unsqueeze(1) @ cams[..., None]`` broadcasts A to a materialised
    [B, C, P, P] copy when B > 1 (the image and its flip: ~1.6 GB for 80 classes at 1.5 × a VOC
    image); one product per class does the same matrix-vector products, the same bits, without it."""
    b, c, h, w = cams.shape
    a = patch_attn.sum(0)                                             # [B, P, P]
    flat = cams.reshape(b, c, h * w, 1)
    if b == 1:                     # A broadcasts as a stride-0 view here: no copy, and these are its bits
        return (a.unsqueeze(1) @ flat).reshape(b, c, h, w)
    return torch.stack([a @ flat[:, k] for k in range(c)], dim=1).reshape(b, c, h, w)


class SemanticCamSource:
    """The CAM source of a model whose ``forward_cams(x, **forward_kwargs)`` returns an object with ``logits`` [B, K] and
    semantic-aware ``cams`` [B, K, h, w] (TS-CAM, and any family built the same way): negative values are
    cut (ReLU) before up-sampling, as the WSSS CAM definition in docs/doei-method.md asks; no refinement."""

    def __init__(self, model: nn.Module, **forward_kwargs: Any) -> None:
        if not callable(getattr(model, "forward_cams", None)):
            raise DoeiError(f"{_model_name(model)}: SemanticCamSource needs forward_cams(x)")
        self.model = model
        self.num_classes = int(model.num_classes)
        self.forward_kwargs = forward_kwargs      # e.g. TS-CAM's patch_attn=False (keep only the class rows)

    def __call__(self, x: Tensor) -> ViewCams:
        out = self.model.forward_cams(x, **self.forward_kwargs)
        cams = torch.relu(out.cams)
        return ViewCams(out.logits, cams, cams)


__all__ = ["ViewCams", "CamSource", "CamSettings", "CAM_OPTIONS", "resolve_cam_settings", "class_attention",
           "semantic_cams", "refine_with_patch_affinity", "SemanticCamSource"]
