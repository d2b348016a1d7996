"""The layers run one way: an import-graph check over ``src/doei`` (every ``import``/``from`` statement,
at the top of a file or inside a function), so the rule stays true as the code changes.

    commands/, cli.py                         argument parsing and printing
      → pipeline/, demo/, study/              orchestration
        → engine/, cam/, refine/, seg/, eval/ stages
          → models/, data/, train_config, pipeline_config   networks, datasets, the stages' configs
            → core/, utils/, config (strict YAML dataclasses), errors

A module may import its own layer or any lower one, never a higher one; nothing but ``cli.py`` imports
``doei.commands``, and one command never imports another. ``python tests/test_architecture.py`` prints
the graph by layer and any violation.
"""
from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "doei"

LAYERS = {  # top-level name under doei -> rank (higher = closer to the user)
    "cli": 5, "commands": 5,
    "pipeline": 4, "demo": 4, "study": 4,
    "engine": 3, "cam": 3, "refine": 3, "seg": 3, "eval": 3,
    "models": 2, "data": 2, "train_config": 2, "pipeline_config": 2,   # stage configs name dataset kinds
    "core": 1, "utils": 1, "config": 1, "errors": 1,
    "__init__": 5,   # the package itself: the short public API (lazy re-exports of every layer)
}
# Known exceptions, each with its reason. Keep this list short; an entry is a debt, not a licence.
ALLOWED: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """``doei.x.y`` modules imported anywhere in ``path`` (relative imports resolved), without the prefix."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = _module_name(path).split(".")
    pkg = here if path.name == "__init__.py" else here[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name[5:] for a in node.names if a.name.startswith("doei.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                out.add(mod)
            elif node.module and (node.module == "doei" or node.module.startswith("doei.")):
                mod = node.module[5:]
                if mod:
                    out.add(mod)
                else:                                   # from doei import pipeline
                    out |= {a.name for a in node.names}
    return {m for m in out if m}


def import_graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(SRC.rglob("*.py"))}


def _layer(module: str) -> int:
    top = module.split(".")[0]
    if top not in LAYERS:
        raise AssertionError(f"doei.{module}: top-level name {top!r} has no layer in tests/test_architecture.py")
    return LAYERS[top]


def violations() -> list[str]:
    bad = []
    for mod, deps in import_graph().items():
        for dep in sorted(deps):
            if (mod, dep) in ALLOWED:
                continue
            top, dtop = mod.split(".")[0], dep.split(".")[0]
            if dtop == "commands" and top not in ("cli", "commands"):
                bad.append(f"doei.{mod} imports doei.{dep} (only cli.py may import commands)")
            elif top == "commands" and dtop == "commands" and dep != mod:
                bad.append(f"doei.{mod} imports doei.{dep} (commands never import each other)")
            elif _layer(dep) > _layer(mod):
                bad.append(f"doei.{mod} (layer {_layer(mod)}) imports doei.{dep} (layer {_layer(dep)})")
    return bad


def test_layers_run_one_way():
    bad = violations()
    assert not bad, "\n".join(bad)


def test_the_known_exceptions_still_exist():
    """An ALLOWED entry that no longer happens must be removed (so the list only shrinks)."""
    graph = import_graph()
    stale = [k for k in ALLOWED if k[1] not in graph.get(k[0], set())]
    assert not stale, stale


def test_the_checker_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "doei"
    (pkg / "models").mkdir(parents=True)
    (pkg / "models" / "m.py").write_text("def f():\n    from doei.pipeline import run_pipeline\n")
    (pkg / "models" / "n.py").write_text("from ..commands import run_cmd\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", pkg)
    bad = violations()
    assert any("doei.models.m (layer 2) imports doei.pipeline (layer 4)" in b for b in bad), bad
    assert any("doei.models.n imports doei.commands" in b for b in bad), bad


def print_graph() -> None:
    """Who imports whom across top-level packages, by layer (``python tests/test_architecture.py``)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for mod, deps in import_graph().items():
        edges[mod.split(".")[0]] |= {d.split(".")[0] for d in deps} - {mod.split(".")[0]}
    for top in sorted(edges, key=lambda t: (-LAYERS[t], t)):
        print(f"[{LAYERS[top]}] {top:<16} -> {', '.join(sorted(edges[top], key=lambda t: (-LAYERS[t], t)))}")
    print("violations:", violations() or "none")


if __name__ == "__main__":
    print_graph()
