"""Strict dataclass configs loaded from YAML: an unknown or mistyped key is an error naming it."""
from __future__ import annotations

import dataclasses
import json
import math
import os
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


def describe(value: Any) -> str:
    """How a value found in a file reads in an error: ``null``, ``a string 'abc'``, ``a list of 2``, ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        short = value if len(value) <= 40 else value[:37] + "..."
        return f"a string {short!r}"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return f"a mapping with keys {sorted(map(str, value))[:6]}"
    return f"a {type(value).__name__}"


def _bad(where: str, expected: str, value: Any) -> DoeiError:
    return DoeiError(f"{where}: expected {expected}, found {describe(value)}")


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
            raise _bad(where, "a mapping", value)
        return from_dict(tp, value, where)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _bad(where, "a list", value)
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if (origin or tp) is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _bad(where, "a mapping", value)
        if len(args) == 2:
            return {_coerce(k, args[0], f"{where} key {k!r}"): _coerce(v, args[1], f"{where}.{k}")
                    for k, v in value.items()}
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise _bad(where, "true/false", value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(where, "an integer", value)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(where, "a number", value)
        if not math.isfinite(value):
            raise _bad(where, "a finite number", value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _bad(where, "a string", value)
        return value
    return value


def check_type(value: Any, tp: Any, where: str) -> Any:
    """THE schema check for anything read back (markers, settings, manifests, checkpoint metadata, YAML
    sections): ``value`` against type ``tp`` (a dataclass, ``dict[str, X]``, ``list[X]``, ``Optional``,
    ``Literal``, ``int``/``float``/``str``/``bool``, ``Any``), returning it (dataclasses built, strict keys).

    A wrong shape is one DoeiError line naming ``where`` (``<file>: <key>``), what was found and what was
    expected: ``run/stages/cam/stage_done.json: fingerprint: expected a string, found null``."""
    return _coerce(value, tp, where)


def read_json(path: str | os.PathLike, tp: Any = dict, what: str = "") -> Any:
    """Read JSON file ``path`` (one that doei wrote, or the user gave) and :func:`check_type` it against
    ``tp``; every failure (missing, not UTF-8, not JSON, wrong shape) is one line naming the file."""
    from doei.utils.io import read_text

    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    text = read_text(path, what=what or "JSON file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DoeiError(f"{label}: not valid JSON ({e.msg}, line {e.lineno} column {e.colno})") from None
    return check_type(data, tp, label)


def section(data: Any, key: str, where: str) -> dict:
    """``data[key]`` as a mapping (absent or null = empty), else one line naming ``where: key`` and what it is."""
    if not isinstance(data, dict):
        raise _bad(where, "a mapping", data)
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f"{where}: {key}", "a mapping", value)
    return value


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise DoeiError.

    A dataclass whose class attribute ``EXTRA_KEYS`` names one of its ``dict`` fields collects the keys it
    does not know into that field instead (a data section's dataset options: which are valid depends on the
    dataset kind, so the section's own validation checks them against the kind's loader)."""
    if not isinstance(data, dict):
        raise _bad(where, "a mapping", data)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls, include_extras=True)
    unknown = [k for k in data if k not in fields]
    extra_field = getattr(cls, "EXTRA_KEYS", None)
    if unknown and extra_field in fields:
        extra = {k: data[k] for k in unknown}
        data = {k: v for k, v in data.items() if k in fields}
        given = data.get(extra_field) or {}
        if not isinstance(given, dict):
            raise _bad(f"{where}.{extra_field}", "a mapping", given)
        data[extra_field] = {**given, **extra}
        unknown = []
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
    """A YAML config file as a mapping (BOM and CRLF accepted; not UTF-8, not YAML, not a mapping: one line)."""
    from doei.utils.io import read_text

    path = Path(path)
    if not path.is_file() and not path.is_dir():
        raise DoeiError(f"{path}: config file not found")
    text = read_text(path, what="config")
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as e:
        raise DoeiError(f"{path}: not valid YAML ({_first_line(e)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DoeiError(f"{path}: expected a mapping at top level, found {describe(data)}")
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


def refuse_owned_overrides(overrides: Sequence[str], owned: Sequence[str], flag: str = "--set",
                           instead: str = "") -> None:
    """Refuse (one line) an override of a key the command sets itself: it would be silently replaced.
    ``owned``: dotted keys; an override of a key or of a section above one counts."""
    for item in overrides:
        key = str(item).split("=", 1)[0].strip()
        hit = next((k for k in owned if key == k or k.startswith(key + ".")), None)
        if hit is not None:
            raise DoeiError(f"{flag} {item}: this command sets {hit} itself, so the value would be replaced"
                            + (f" ({instead})" if instead else ""))


def load_config(cls: type[T], path: str | Path, overrides: list[str] | None = None) -> T:
    """Load YAML ``path`` into dataclass ``cls`` with strict keys, after ``--set`` overrides."""
    data = apply_overrides(load_yaml(path), overrides or [])
    return from_dict(cls, data, where=str(path))
