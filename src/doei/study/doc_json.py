"""Strict reading of the committed result files behind the doc tables (:mod:`doei.study.doc_tables`).

A result file is a large JSON document of which a table reads a few values. :class:`Node` wraps one value
with its place (``FILE: key.key``), so that a missing key or a value of the wrong type is one
:class:`~doei.errors.DoeiError` line naming the file and the key, e.g.
``docs/results/s.json: rows.baseline.best_beta: missing key 'mIoU'``, instead of a traceback.
"""
from __future__ import annotations

from typing import Any, Iterator

from doei.config import check_type
from doei.errors import DoeiError


class Node:
    """A JSON value and where it sits (``where``: ``FILE`` or ``FILE: a.b.c``)."""

    def __init__(self, value: Any, where: str) -> None:
        self.value = value
        self.where = where

    def _child_where(self, key: str | int) -> str:
        sep = "" if ": " in self.where else ": "
        dot = "" if sep else "."
        return f"{self.where}{sep}{dot}{key}" if not isinstance(key, int) else f"{self.where}[{key}]"

    def _mapping(self) -> dict:
        if not isinstance(self.value, dict):
            raise DoeiError(f"{self.where}: expected a mapping, found {type(self.value).__name__}")
        return self.value

    def __getitem__(self, key: str) -> "Node":
        d = self._mapping()
        if key not in d:
            raise DoeiError(f"{self.where}: missing key {key!r}")
        return Node(d[key], self._child_where(key))

    def get(self, key: str) -> "Node | None":
        """The child ``key``, or None when it is absent or null."""
        d = self._mapping()
        return None if d.get(key) is None else Node(d[key], self._child_where(key))

    def __contains__(self, key: str) -> bool:
        return isinstance(self.value, dict) and key in self.value

    def keys(self) -> list[str]:
        return list(self._mapping())

    def items(self) -> Iterator[tuple[str, "Node"]]:
        for k in self._mapping():
            yield k, self[k]

    def list(self) -> list["Node"]:
        if not isinstance(self.value, list):
            raise DoeiError(f"{self.where}: expected a list, found {type(self.value).__name__}")
        return [Node(v, self._child_where(i)) for i, v in enumerate(self.value)]

    def num(self, key: str | None = None) -> float:
        """This value (or its child ``key``) as a finite number."""
        n = self if key is None else self[key]
        return check_type(n.value, float, n.where)

    def int(self, key: str | None = None) -> int:
        n = self if key is None else self[key]
        return check_type(n.value, int, n.where)

    def str(self, key: str | None = None) -> str:
        n = self if key is None else self[key]
        return check_type(n.value, str, n.where)

    def per_seed(self) -> dict[str, float]:
        """A summary record's ``per_seed`` (``{seed: value}``) with string seeds and float values."""
        ps = self.get("per_seed")
        if ps is None:
            raise DoeiError(f"{self.where}: no per_seed values (a file written before they were recorded: "
                            "regenerate it, e.g. doei ablate --report-only, then collect it again)")
        return {str(k): v.num() for k, v in ps.items()}
