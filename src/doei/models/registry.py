"""A registry of named model variants: ``create_model("mctformer_v2_deit_small", num_classes=20)``.

Families register themselves: a module in ``doei/models/`` decorates its factories with
:func:`register_model`, and :func:`create_model` / :func:`list_models` import every module of the
``doei.models`` package first (``pkgutil``), so a new family is found without being listed anywhere.

Each variant has a *role* (:data:`ROLES`): ``classifier`` (the CAM classifiers DOEI plugs into:
MCTformer-V2, TS-CAM, TransCAM), ``affinity`` (PSA's AffinityNet), ``segmentation`` (DeepLab) and
``psa_classifier`` (PSA's ResNet38 classification net, kept for weights and parity; not a DOEI
classifier). ``list_models(role="classifier")`` lists one role.

The classifier contract
-----------------------
A ``classifier`` factory (:class:`ClassifierFactory`) accepts the keyword arguments
:data:`CLASSIFIER_KWARGS` — ``num_classes`` (foreground classes), ``doei`` (a
:class:`doei.core.DOEIConfig` or None = off), ``img_size`` (the training size the position grid is
built for; a model without position embeddings accepts and ignores it), ``drop_rate``,
``drop_path_rate`` — plus any options of its own (``depth``, ``embed_dim``, ... from
``model.options`` in a config). :func:`register_model` checks this when the factory registers.

The module it builds is a :class:`Classifier`. Everything code outside the family reads is declared
there (the attributes and methods below, each with its docstring); :func:`check_classifier` checks a
built model against it (the registry tests run it on every registered classifier):

* attributes ``family`` (a short name: 'mctformer', 'tscam', 'transcam'), ``num_classes``, ``depth``
  (the blocks DOEI acts between and ``n_layers`` counts), ``num_cls_tokens`` (DOEI's C),
  ``doei_stats`` (None, or a list the forward appends per-block DOEI statistics to), ``cam_kinds`` and
  ``cam_options`` (what its CAM source offers: :mod:`doei.models.cam_source`);
* ``forward(x)`` (training outputs) and its family's knowledge as methods, which the engine and the
  CAM layer ask for instead of testing types:

  * ``classification_loss(outputs, target) -> (total, first, second)`` — the training objective
    (:func:`doei.engine.losses.classification_loss`);
  * ``prediction_logits(outputs) -> [B, num_classes]`` — the image-level scores (mAP, validation);
  * ``cam_source(kind=, n_layers=, patch_refine=) -> CamSource`` — the maps
    :class:`doei.cam.extractor.CamExtractor` upsamples, for settings already resolved against
    ``cam_kinds``/``cam_options`` (:func:`doei.models.cam_source.resolve_cam_settings`);
  * ``load_pretrained(source) -> list[str]`` — its ImageNet start (``model.pretrained``;
    :func:`doei.models.pretrained.load_pretrained`), returning the keys left at initialisation.

A model without one of these methods is a one-line :class:`doei.errors.DoeiError` where the method is
needed; it never falls back on another family's behaviour. docs/architecture.md ("Adding a backbone")
lists the files a new backbone touches.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import pkgutil
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Protocol, runtime_checkable

import torch.nn as nn
from torch import Tensor

from doei.errors import DoeiError
from doei.utils.checks import expect_int, expect_type

if TYPE_CHECKING:  # pragma: no cover
    from doei.core import DOEIConfig
    from doei.models.cam_source import CamSource

ROLES: dict[str, str] = {
    "classifier": "a CAM classifier family (the contract below; DOEI plugs into it)",
    "affinity": "an AffinityNet for the PSA refinement stage",
    "segmentation": "a DeepLab segmentation network",
    "psa_classifier": "PSA's ResNet38 classification net (weights and parity; not a DOEI classifier)",
}
CLASSIFIER_KWARGS: tuple[str, ...] = ("num_classes", "doei", "img_size", "drop_rate", "drop_path_rate")
CLASSIFIER_METHODS: tuple[str, ...] = ("classification_loss", "prediction_logits", "cam_source", "load_pretrained")
CLASSIFIER_ATTRIBUTES: tuple[str, ...] = ("family", "num_classes", "depth", "num_cls_tokens", "doei_stats",
                                          "cam_kinds", "cam_options")


class ClassifierFactory(Protocol):
    """What a ``role="classifier"`` factory accepts (every one of these keywords; own options after)."""

    def __call__(self, *, num_classes: int = ..., doei: "DOEIConfig | None" = ..., img_size: int | None = ...,
                 drop_rate: float = ..., drop_path_rate: float = ..., **options: Any) -> "Classifier": ...


@runtime_checkable
class Classifier(Protocol):
    """What a classifier family's module provides (``isinstance(model, Classifier)`` checks the names;
    :func:`check_classifier` also checks their types)."""

    family: str
    """A short family name ('mctformer', 'tscam', 'transcam'): logs, reports, messages."""
    num_classes: int
    """Foreground classes: the width of ``prediction_logits`` and of every CAM."""
    depth: int
    """Transformer blocks: DOEI's block indices 1..depth and ``n_layers`` count these (the demo and the
    held-out CAMs cap ``n_layers`` at it)."""
    num_cls_tokens: int
    """DOEI's C: class tokens in front of the patch tokens (MCTformer-V2: num_classes; TS-CAM,
    TransCAM: 1); :meth:`doei.core.DOEIConfig.check_effect` refuses CPDO with one."""
    doei_stats: "list[dict] | None"
    """None (default: no per-block statistics, no host syncs), or a list the forward pass appends one
    dict per DOEI block to (``{"block": i, ...}``; the study's readings set it to ``[]``)."""
    cam_kinds: Mapping[str, str]
    """CAM kinds its ``cam_source`` offers -> one-line description; the first is the default
    (``doei cam --kind`` takes these)."""
    cam_options: Mapping[str, Any]
    """The CAM options (:data:`doei.models.cam_source.CAM_OPTIONS`: ``n_layers``, ``patch_refine``) its
    kinds read -> default; any other is refused (``doei cam --n-layers`` on a family without it)."""

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        """Training outputs for normalised images x [B, 3, H, W] (what ``classification_loss`` takes)."""
        ...

    def classification_loss(self, outputs: Tensor | tuple[Tensor, ...],
                            target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(total, first term, second term) float32 scalars of its objective; target [B, K] multi-hot."""
        ...

    def prediction_logits(self, outputs: Tensor | tuple[Tensor, ...]) -> Tensor:
        """The image-level scores [B, num_classes] it predicts with (mAP, validation)."""
        ...

    def cam_source(self, kind: str = ..., n_layers: int | None = ...,
                   patch_refine: bool | None = ...) -> "CamSource":
        """Its CAM source for one of ``cam_kinds`` (options it does not read are None)."""
        ...

    def load_pretrained(self, source: str | os.PathLike) -> list[str]:
        """Load its ImageNet start from a file or ``timm:<name>``; returns the keys left at initialisation."""
        ...


def check_classifier(model: nn.Module, name: str | None = None) -> nn.Module:
    """Return ``model`` if it provides the :class:`Classifier` contract, else a one-line DoeiError naming
    the first missing or ill-typed member (``name``: the registered name, for the message)."""
    m = getattr(model, "module", model)
    who = f"model {name!r} ({type(m).__name__})" if name else type(m).__name__
    types = {"family": str, "num_classes": int, "depth": int, "num_cls_tokens": int, "cam_kinds": Mapping,
             "cam_options": Mapping}
    for attr in CLASSIFIER_ATTRIBUTES:
        if not hasattr(m, attr):
            raise DoeiError(f"{who}: not a classifier family: no attribute {attr!r} (see doei.models.registry.Classifier)")
        want = types.get(attr)
        if want is not None and not isinstance(getattr(m, attr), want):
            raise DoeiError(f"{who}: attribute {attr!r} is {type(getattr(m, attr)).__name__}, expected {want.__name__}")
    for meth in CLASSIFIER_METHODS:
        if not callable(getattr(m, meth, None)):
            raise DoeiError(f"{who}: not a classifier family: no method {meth}() (see doei.models.registry.Classifier)")
    if not m.cam_kinds:
        raise DoeiError(f"{who}: cam_kinds is empty (a family offers at least one CAM kind)")
    from doei.models.cam_source import CAM_OPTIONS

    unknown = [o for o in m.cam_options if o not in CAM_OPTIONS]
    if unknown:
        raise DoeiError(f"{who}: cam_options {unknown[0]!r} unknown (expected among {', '.join(CAM_OPTIONS)})")
    return model


_MODELS: dict[str, Callable[..., nn.Module]] = {}
_ROLE: dict[str, str] = {}
_discovered = False


def register_model(fn: Callable[..., nn.Module] | None = None, *, role: str = "classifier"):
    """Decorator: register a factory under its function name, as ``@register_model`` (a classifier) or
    ``@register_model(role="segmentation")``. A classifier factory must accept :data:`CLASSIFIER_KWARGS`
    (else TypeError at import); a name registered twice by different functions is a TypeError too."""
    if role not in ROLES:
        raise ValueError(f"register_model: role {role!r}: expected one of {', '.join(ROLES)}")

    def decorate(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = f.__name__
        if role == "classifier":
            _check_classifier_factory(f)
        old = _MODELS.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (f.__module__, f.__qualname__):
            raise TypeError(f"register_model: {name!r} is registered twice ({old.__module__} and {f.__module__})")
        _MODELS[name] = f
        _ROLE[name] = role
        return f

    return decorate(fn) if fn is not None else decorate


def _check_classifier_factory(f: Callable[..., nn.Module]) -> None:
    params = inspect.signature(f).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    missing = [k for k in CLASSIFIER_KWARGS if k not in params
               or params[k].kind not in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    if missing:
        raise TypeError(f"register_model: classifier factory {f.__module__}.{f.__name__} does not accept "
                        f"{', '.join(missing)} (every classifier factory takes {', '.join(CLASSIFIER_KWARGS)}; "
                        "see doei.models.registry)")


_PREFIXES: dict[str, Callable[..., nn.Module]] = {}   # "timm:" -> factory(rest_of_name, **kwargs) (classifiers)


def register_prefix(prefix: str, factory: Callable[..., nn.Module]) -> None:
    """Names ``<prefix><rest>`` build ``factory(rest, **kwargs)`` (a classifier family over a third-party zoo:
    ``timm:<timm model name>``, :mod:`doei.models.tscam_timm`)."""
    _PREFIXES[prefix] = factory


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered variant; unknown names raise a DoeiError listing the known ones; a name that is not
    a string, or a class count that is not an integer >= 1, a TypeError/ValueError naming the argument. The
    module remembers its registered name (``model.registered_name``) for messages (:func:`forward_errors`)."""
    expect_type("create_model", "name", name, str, "a registered model name (doei.list_models())")
    if "num_classes" in kwargs:
        expect_int("create_model", "num_classes", kwargs["num_classes"], 1)
    _import_all()
    prefix = next((p for p in _PREFIXES if name.startswith(p)), None)
    if prefix is not None:
        model = _PREFIXES[prefix](name[len(prefix):], **kwargs)
    elif name not in _MODELS:
        raise DoeiError(f"unknown model {name!r} (known: {', '.join(sorted(_MODELS))}, or "
                        f"{' / '.join(p + '<name>' for p in sorted(_PREFIXES)) or 'none'})")
    else:
        model = _MODELS[name](**kwargs)
    if isinstance(model, nn.Module):
        model.registered_name = name
    return model


@contextlib.contextmanager
def forward_errors(model: nn.Module, x: Tensor) -> Iterator[None]:
    """Turn a failure inside a forward pass of ``model`` on ``x`` [B, 3, H, W] into one line naming the model
    and the input size, e.g. a third-party trunk's ``AssertionError`` on a side its patch does not divide::

        with forward_errors(model, x):
            out = model(x)

    A :class:`DoeiError` passes unchanged; so does running out of memory (``torch.OutOfMemoryError``)."""
    try:
        yield
    except DoeiError:
        raise
    except (AssertionError, RuntimeError, ValueError, TypeError, IndexError) as e:
        import torch

        if isinstance(e, torch.OutOfMemoryError):
            raise
        m = getattr(model, "module", model)
        who = getattr(m, "registered_name", None) or type(m).__name__
        size = f"{x.shape[-2]}x{x.shape[-1]}" if isinstance(x, Tensor) and x.dim() >= 2 else "?"
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DoeiError(f"model {who!r} failed on a {size} input ({type(e).__name__}: {detail}); "
                        "resize the images or pick a model that takes this size") from e


def list_models(role: str | None = None) -> list[str]:
    """The registered names (sorted), all of them or those of one ``role`` (:data:`ROLES`)."""
    _import_all()
    if role is not None and role not in ROLES:
        raise DoeiError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    return sorted(n for n in _MODELS if role is None or _ROLE[n] == role)


def model_role(name: str) -> str:
    """The role a registered variant was registered with (a DoeiError for an unknown name)."""
    _import_all()
    if name not in _ROLE:
        raise DoeiError(f"unknown model {name!r} (known: {', '.join(sorted(_MODELS))})")
    return _ROLE[name]


def _import_all() -> None:
    """Import every module of the ``doei.models`` package once, so that their factories register.

    A module that fails to import is an error (a broken family is not silently left out)."""
    global _discovered
    if _discovered:
        return
    import doei.models as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if not info.name.startswith("_") and info.name != "registry":
            importlib.import_module(f"{package.__name__}.{info.name}")
    _discovered = True


__all__ = ["register_model", "create_model", "list_models", "model_role", "ROLES", "CLASSIFIER_KWARGS",
           "CLASSIFIER_METHODS", "CLASSIFIER_ATTRIBUTES", "Classifier", "ClassifierFactory", "check_classifier",
           "forward_errors"]
