"""Strict dataclass configs loaded from YAML: an unknown or mistyped key is an error naming it."""
from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import yaml

from doei.errors import DoeiError

T = TypeVar("T")


class OneOf:
    """Metadata for ``Annotated[str, OneOf(names)]``: a string that must be one of ``names()``.

    ``names`` is a function, asked when a config is read, so the known values can come from a
    registry filled after the config class is defined (e.g. :data:`doei.data.build.DatasetKind`).
    The error reads as a ``Literal``'s: ``<where>: 'x' is not one of ['a', 'b']``.
    """

    def __init__(self, names: Callable[[], Sequence[str]]) -> None:
        self.names = names

    def check(self, value: Any, where: str) -> Any:
        known = list(self.names())
        if value not in known:
            raise DoeiError(f"{where}: {value!r} is not one of {known}")
        return value


class _Loader(yaml.SafeLoader):
    """YAML 1.1 safe loader that also reads ``1e-3`` / ``5E+4`` (exponent without a dot) as floats.

    Plain PyYAML reads them as strings, so ``lr: 1e-3`` in a config, ``--set optim.lr=1e-3`` or a
    ``pipeline_config.json`` written by ``doei run`` (JSON writes ``1e-05``) would be refused."""


def _construct_mapping_no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """A mapping whose keys are unique: a key given twice is an error naming it and its line (plain YAML
    keeps the last one silently, so a second ``lr:`` further down would win unnoticed)."""
    loader.flatten_mapping(node)
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_no_duplicates)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str):
    """``yaml.safe_load`` with :class:`_Loader`'s float rule."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Annotated:
        value = _coerce(value, args[0], where)
        for meta in tp.__metadata__:
            if isinstance(meta, OneOf):
                value = meta.check(value, where)
        return value
    if origin is typing.Union or (origin is not None and str(origin) == "types.UnionType"):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except DoeiError as e:
                errors.append(str(e))
        raise DoeiError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if typing.get_origin(tp) is typing.Literal:
        if value not in args:
            raise DoeiError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise DoeiError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise DoeiError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise DoeiError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise DoeiError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise DoeiError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DoeiError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise DoeiError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise DoeiError."""
    if not isinstance(data, dict):
        raise DoeiError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls, include_extras=True)
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise DoeiError(f"{where}: unknown key {unknown[0]!r} (expected one of {sorted(fields)})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise DoeiError(f"{where}: {e}") from None


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def _first_line(e: yaml.YAMLError) -> str:
    """The YAML error's problem and where, on one line (``duplicate key 'lr' (first on line 2), line 5``)."""
    problem = getattr(e, "problem", None)
    mark = getattr(e, "problem_mark", None)
    if problem:
        return f"{problem}, line {mark.line + 1}" if mark is not None else str(problem)
    return str(e).strip().splitlines()[0]


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DoeiError(f"{path}: config file not found")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DoeiError(f"{path}: not valid YAML ({_first_line(e)})") from None
    except UnicodeDecodeError:
        raise DoeiError(f"{path}: not a text file (expected a YAML config)") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DoeiError(f"{path}: expected a mapping at top level")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``--set a.b=value`` overrides (value parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise DoeiError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        if not key.strip():
            raise DoeiError(f"--set {item!r}: expected key=value with a key")
        try:
            value = parse_yaml(raw)
        except yaml.YAMLError as e:
            raise DoeiError(f"--set {item!r}: the value is not valid YAML ({_first_line(e)})") from None
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise DoeiError(f"--set {key}: {p!r} is not a section")
        node[parts[-1]] = value
    return data


def load_config(cls: type[T], path: str | Path, overrides: list[str] | None = None) -> T:
    """Load YAML ``path`` into dataclass ``cls`` with strict keys, after ``--set`` overrides."""
    data = apply_overrides(load_yaml(path), overrides or [])
    return from_dict(cls, data, where=str(path))
