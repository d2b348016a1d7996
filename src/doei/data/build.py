"""The dataset registry and one entry point for every kind: ``build_dataset(kind, root, split, **options)``.

A dataset module registers its loader once, with the options it accepts (timm's ``register_model`` /
``create_model`` in spirit)::

    @register_dataset("voc", options=("labels", "labels_file", "mask_dir", ...), default_split="train_aug",
                      class_names=VOC_CLASSES)
    def voc_dataset(root, split, *, transform=None, labels="auto", labels_file=None, mask_dir=None, ...):
        ...

The registered kinds are found by importing every module of the ``doei.data`` package the first time
a kind is looked up, so adding a dataset is one new module under ``src/doei/data/`` (plus its test):
nothing else lists the kinds. Config fields that name a kind (:data:`DatasetKind`), the choices of
``doei cam --dataset`` and ``doei eval --dataset``, the loader arguments taken from a config's data
section (:func:`dataset_options`) and the class names of reports all come from the registry.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Mapping, Sequence, Union

from doei.config import OneOf
from doei.errors import DoeiError

if TYPE_CHECKING:
    from doei.data.dataset import ClassificationDataset, Transform

# the arguments every loader gets from build_dataset itself; no option may use these names
_RESERVED = ("root", "split", "transform")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_\-]*$")

ClassNames = Union[Sequence[str], Callable[[Path], Sequence[str]]]


@dataclass(frozen=True)
class DatasetSpec:
    """One registered dataset kind.

    ``loader(root, split, *, transform=..., **options)`` returns a :class:`ClassificationDataset`;
    ``options`` are the keyword arguments it accepts (``build_dataset`` refuses others);
    ``config_options`` the subset a config's data section passes (:func:`dataset_options`);
    ``default_split`` replaces an empty/None split (None: the loader gets the split as given);
    ``class_names`` the foreground names, or a function of the dataset folder that reads them.
    """

    name: str
    loader: Callable[..., "ClassificationDataset"]
    options: tuple[str, ...]
    config_options: tuple[str, ...]
    default_split: str | None
    class_names: ClassNames | None

    @property
    def names_from_root(self) -> bool:
        """True when the class names are read from the dataset folder (so a root is needed)."""
        return callable(self.class_names)

    @property
    def fixed_class_names(self) -> tuple[str, ...] | None:
        """The foreground names when they are fixed by the kind (VOC, COCO), else None."""
        if self.class_names is None or callable(self.class_names):
            return None
        return tuple(self.class_names)


_REGISTRY: dict[str, DatasetSpec] = {}
_discovered = False


def _accepted_keywords(fn: Callable) -> tuple[set[str], bool]:
    """(keyword-capable parameter names, whether it takes ``**kwargs``)."""
    params = inspect.signature(fn).parameters.values()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def register_dataset(name: str, *, options: Sequence[str] = (), config_options: Sequence[str] | None = None,
                     default_split: str | None = None,
                     class_names: ClassNames | None = None) -> Callable[[Callable], Callable]:
    """Decorator registering ``loader(root, split, *, transform=None, **options)`` as dataset kind ``name``.

    ``options``: every keyword the loader accepts besides ``transform`` (checked against its signature
    unless it takes ``**kwargs``). ``config_options``: the ones a config's data section may set
    (default: all of ``options``). The loader is returned unchanged. Registering a different loader
    under a taken name is a ValueError (a programming error, not bad input).
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"dataset kind {name!r}: expected a lower-case name (letters, digits, _ or -)")
    options = tuple(options)
    config_options = options if config_options is None else tuple(config_options)
    bad = [o for o in options if o in _RESERVED]
    if bad:
        raise ValueError(f"dataset kind {name!r}: option {bad[0]!r} is reserved ({', '.join(_RESERVED)} are "
                         "build_dataset's own arguments)")
    if len(set(options)) != len(options):
        raise ValueError(f"dataset kind {name!r}: options {options} list a name twice")
    extra = [o for o in config_options if o not in options]
    if extra:
        raise ValueError(f"dataset kind {name!r}: config option {extra[0]!r} is not one of its options {options}")

    def decorate(loader: Callable) -> Callable:
        accepted, var_kw = _accepted_keywords(loader)
        if not var_kw:
            missing = [o for o in ("transform",) + options if o not in accepted]
            if missing:
                raise ValueError(f"dataset kind {name!r}: loader {loader.__qualname__} has no parameter "
                                 f"{missing[0]!r}")
        old = _REGISTRY.get(name)
        if old is not None and (old.loader.__module__, old.loader.__qualname__) != (loader.__module__,
                                                                                   loader.__qualname__):
            raise ValueError(f"dataset kind {name!r} is already registered by "
                             f"{old.loader.__module__}.{old.loader.__qualname__}")
        _REGISTRY[name] = DatasetSpec(name, loader, options, config_options, default_split, class_names)
        return loader

    return decorate


def unregister_dataset(name: str) -> None:
    """Remove kind ``name`` (for tests and plugins that register a temporary dataset)."""
    _REGISTRY.pop(name, None)


def _discover() -> None:
    """Import every module of ``doei.data`` once, so each built-in dataset module registers itself."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    import doei.data as pkg

    for m in pkgutil.iter_modules(pkg.__path__):
        if not m.name.startswith("_") and m.name != "build":
            importlib.import_module(f"{pkg.__name__}.{m.name}")


def dataset_kinds() -> tuple[str, ...]:
    """Every registered kind, sorted (``coco``, ``folder``, ``synth``, ``voc`` and any added)."""
    _discover()
    return tuple(sorted(_REGISTRY))


def get_dataset_spec(kind: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``kind``; an unknown kind is a one-line DoeiError listing the known ones."""
    _discover()
    spec = _REGISTRY.get(kind) if isinstance(kind, str) else None
    if spec is None:
        raise DoeiError(f"dataset kind {kind!r} unknown (expected {', '.join(dataset_kinds())})")
    return spec


# a config field naming a dataset kind: a str checked against the registry when the config is read
# (``<where>.kind: 'imagenet' is not one of ['coco', 'folder', 'synth', 'voc']``)
DatasetKind = Annotated[str, OneOf(dataset_kinds)]


def build_dataset(kind: str, root: str | Path, split: str | None, *, transform: "Transform | None" = None,
                  **options: Any) -> "ClassificationDataset":
    """A :class:`ClassificationDataset` of ``kind`` (see :func:`dataset_kinds`).

    ``split``: VOC/synth list name (``train_aug``, ``train``, ``val``; synth: ``train``, ``val``) or a
    ``.txt`` path; COCO ``train2014``/``val2014`` (or ``train``/``val``); folder: an id-list name or
    None for every labelled image. An empty split means the kind's default (VOC ``train_aug``, synth
    ``train``, COCO ``train2014``). ``options`` go to the kind's loader (:func:`doei.data.voc.voc_dataset`,
    :func:`doei.data.coco.coco_dataset`, :func:`doei.data.folder.folder_dataset`, ...), e.g.
    ``labels_file=``, ``mask_dir=``, ``require_masks=``; one it does not declare is a one-line DoeiError.
    """
    spec = get_dataset_spec(kind)
    unknown = [k for k in options if k not in spec.options]
    if unknown:
        raise DoeiError(f"dataset kind {kind!r}: option {unknown[0]!r} unknown "
                        f"(expected {', '.join(spec.options) if spec.options else 'no options'})")
    if not split and spec.default_split is not None:
        split = spec.default_split
    return spec.loader(root, split, transform=transform, **options)


# data-section fields that are loader options of some kinds (kept as named fields for older configs); a field
# at its "unset" value (None, "", or labels "auto") is not passed, one set for a kind that lacks it is refused
SECTION_OPTION_FIELDS: dict[str, Any] = {"labels": "auto", "labels_file": None, "classes_file": None,
                                         "mask_dir": None, "gt_source": None}


def _getter(section: Any) -> Callable[..., Any]:
    return section.get if isinstance(section, Mapping) else (lambda k, d=None: getattr(section, k, d))


def _unset(name: str, value: Any) -> bool:
    return value is None or (isinstance(value, str) and value == "") or value == SECTION_OPTION_FIELDS.get(name, None)


def _extra_options(section: Any) -> dict[str, Any]:
    """The free-form options of a data section: the dict field its class names in ``EXTRA_KEYS``
    (``options`` for the training and pipeline data sections, ``dataset_options`` for ``doei cam``)."""
    name = getattr(type(section), "EXTRA_KEYS", None) if not isinstance(section, Mapping) else "options"
    value = _getter(section)(name, None) if name else None
    return dict(value or {})


def check_dataset_options(kind: str, options: Mapping[str, Any], where: str = "data") -> dict[str, Any]:
    """Refuse an option the loader of ``kind`` does not declare, in one line listing the ones it accepts;
    returns ``options`` as a dict. Values are checked by the loader itself when the dataset is built."""
    spec = get_dataset_spec(kind)
    for k in options:
        if k not in spec.options:
            takes = ", ".join(spec.options) if spec.options else "no options"
            raise DoeiError(f"{where}.{k}: dataset kind {kind!r} does not take option {k!r} (it accepts: {takes})")
    return dict(options)


def dataset_options(section: Any, kind: str | None = None, where: str = "data") -> dict[str, Any]:
    """The loader options a config's data section sets for its kind (``kind`` default ``section.kind``).

    The named fields the kind declares as config options that are set (not None, ``""`` or, for
    ``labels``, ``"auto"``; e.g. ``labels_file``, ``mask_dir`` for VOC, ``classes_file`` for a folder), plus
    the section's free-form options (any key the kind's loader declares: ``data.image_dir`` for COCO, ...).
    A named field set for a kind that does not declare it, or a free-form option the loader does not take,
    is a one-line DoeiError listing what the kind accepts.
    """
    get = _getter(section)
    kind = kind if kind is not None else get("kind")
    spec = get_dataset_spec(kind)
    out: dict[str, Any] = {}
    for name in spec.config_options:
        value = get(name, None)
        if value is not None and not (isinstance(value, str) and value == ""):
            out[name] = value
    for name in SECTION_OPTION_FIELDS:
        if name not in out and not _unset(name, get(name, None)):
            out.update(check_dataset_options(kind, {name: get(name)}, where))   # declared: passed; else refused
    out.update(check_dataset_options(kind, _extra_options(section), where))
    return out


def dataset_from_config(section: Any, split: str | None, *, transform: "Transform | None" = None
                        ) -> "ClassificationDataset":
    """The dataset a config's data section describes (``kind``, ``root`` and the options its kind declares,
    :func:`dataset_options`), split ``split``: the one way every stage opens its configured data."""
    get = _getter(section)
    kind = get("kind")
    return build_dataset(kind, get("root"), split, transform=transform, **dataset_options(section, kind))


def dataset_class_names(kind: str, root: str | Path | None = None) -> list[str]:
    """Foreground class names of a kind without building the dataset (synth/folder read them from ``root``)."""
    spec = get_dataset_spec(kind)
    if spec.class_names is None:
        raise DoeiError(f"dataset kind {kind!r} does not declare its class names")
    if spec.names_from_root:
        if root is None or root == "":
            raise DoeiError(f"dataset kind {kind!r} reads its class names from the dataset folder (give its root)")
        return list(spec.class_names(Path(root)))
    return list(spec.class_names)


def fixed_class_names() -> list[tuple[str, tuple[str, ...]]]:
    """``[(kind, foreground names)]`` of the kinds whose names are fixed (VOC, COCO), sorted by kind."""
    return [(k, s.fixed_class_names) for k in dataset_kinds()
            if (s := _REGISTRY[k]).fixed_class_names is not None]


__all__ = ["DatasetSpec", "DatasetKind", "register_dataset", "unregister_dataset", "dataset_kinds",
           "get_dataset_spec", "build_dataset", "dataset_options", "dataset_from_config", "check_dataset_options", "dataset_class_names", "fixed_class_names"]
