"""Documentation that runs: every ``python`` / ``bash`` / ``sh`` block of README.md and docs/**/*.md runs as
written, in order, one sandbox folder per page - or carries a marker on the line before its fence saying why
not (docs/conventions.md, "Code blocks in the documentation"):

* ``<!-- fragment -->`` / ``<!-- fragment: why -->`` — a piece of a larger program, a synopsis or a pattern;
* ``<!-- skip: why -->`` — runs, but needs what a test does not have (GPUs, a real dataset, hours, a
  download); reported as a skipped test with the reason;
* ``<!-- file: NAME -->`` — written to ``NAME`` in the sandbox before the page's blocks run (a script a later
  block calls).

An unlabelled fence whose first line looks like code (``doei``, ``python``, ``import`` ...) must be labelled.

The sandbox of a page holds what its examples name (small versions, made once per session): ``configs/`` (the
repository's), ``bin/doei`` (first on ``PATH``), ``runs/train_cls/checkpoint.pt`` (one tiny trained classifier,
the shared ``tiny_run`` fixture), ``mydata/`` (real photos in the folder layout), ``data/synth`` (a 24-image
synthetic benchmark) and, for pages that name it, ``ckpt.pth`` (MCTformer-V2 DeiT-S weights at initialisation).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
RUN_LANGS = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
MARKER = re.compile(r"^<!--\s*(fragment|skip|file)\s*(?::\s*(.*?))?\s*-->$")
CODE_START = re.compile(r"^\s*(\$ )?(doei|python|torchrun|make|\.venv/|import |from \w+ import|pip )")
TIMEOUT = 240


@dataclass
class Block:
    page: Path
    line: int          # 1-based line of the opening fence
    lang: str          # python | bash | "" (unlabelled)
    code: str
    marker: str | None  # fragment | skip | file
    reason: str

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page (``` or ~~~, any indentation), with the marker on the line before."""
    lines = page.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3).lower()
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        code = "\n".join(ln[len(indent):] if ln.startswith(indent) else ln for ln in lines[i + 1:j])
        prev = lines[i - 1].strip() if i > 0 else ""
        mk = MARKER.match(prev)
        out.append(Block(page, i + 1, lang, code, mk.group(1) if mk else None, (mk.group(2) or "") if mk else ""))
        i = j + 1
    return out


ALL = [b for p in PAGES for b in blocks(p)]
RUNNABLE = [b for b in ALL if b.lang in RUN_LANGS]


def test_markers_are_well_formed_and_code_is_labelled():
    bad = []
    for b in ALL:
        first = next((ln for ln in b.code.splitlines() if ln.strip()), "")
        if not b.lang and CODE_START.match(first) and b.marker is None:
            bad.append(f"{b.name}: unlabelled code block (label it ```bash / ```python, and mark it if it cannot run)")
        if b.marker in ("skip", "file") and not b.reason:
            bad.append(f"{b.name}: <!-- {b.marker}: ... --> needs a {'reason' if b.marker == 'skip' else 'file name'}")
        if b.marker == "file" and b.lang not in RUN_LANGS:
            bad.append(f"{b.name}: a file block must be python or bash")
    for p in PAGES:                         # a marker that is not right above a fence is a typo
        lines = p.read_text(encoding="utf-8").splitlines()
        for n, ln in enumerate(lines):
            if MARKER.match(ln.strip()) and not (n + 1 < len(lines) and re.match(r"^\s*(`{3,}|~{3,})", lines[n + 1])):
                bad.append(f"{p.relative_to(REPO)}:{n + 1}: marker not on the line before a fence")
    assert not bad, "\n".join(bad)


# ------------------------------------------------------------------------------------------ the sandbox
_SANDBOX: dict[Path, Path] = {}


def _synth(root: Path) -> Path:
    from doei.data.synth import SynthParams, write_synth

    out = root / "shared_synth"
    if not out.exists():
        write_synth(out, SynthParams(seed=0, n_train=16, n_val=8, size=64))
    return out


def _ckpt_pth(root: Path) -> Path:
    import torch

    from doei.models.registry import create_model

    out = root / "ckpt.pth"
    if not out.exists():
        torch.manual_seed(0)
        torch.save({"model": create_model("mctformer_v2_deit_small", num_classes=20).state_dict()}, out)
    return out


def sandbox(page: Path, tiny_run, tmp_path_factory) -> Path:
    """One working folder per page, shared by its blocks in order (a page is one tutorial)."""
    if page in _SANDBOX:
        return _SANDBOX[page]
    work, data, ckpt = tiny_run
    box = tmp_path_factory.mktemp("doc_" + re.sub(r"\W", "_", str(page.relative_to(REPO))))
    (box / "bin").mkdir()
    doei = box / "bin" / "doei"
    doei.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m doei.cli "$@"\n')
    doei.chmod(0o755)
    (box / "configs").symlink_to(REPO / "configs")
    (box / "runs" / "train_cls").mkdir(parents=True)
    (box / "runs" / "train_cls" / "checkpoint.pt").symlink_to(ckpt)
    (box / "mydata").symlink_to(data)
    (box / "data").mkdir()
    (box / "data" / "synth").symlink_to(_synth(Path(work)))
    text = page.read_text(encoding="utf-8")
    if "ckpt.pth" in text:
        (box / "ckpt.pth").symlink_to(_ckpt_pth(Path(work)))
    for b in blocks(page):
        if b.marker == "file":
            (box / b.reason).write_text(b.code + "\n", encoding="utf-8")
    _SANDBOX[page] = box
    return box


def _env(box: Path) -> dict[str, str]:
    path = f"{box / 'bin'}:{Path(sys.executable).parent}:/usr/bin:/bin"
    return {"PATH": path, "PYTHONPATH": str(REPO / "src"), "HOME": str(box), "OMP_NUM_THREADS": "2",
            "MPLBACKEND": "Agg", "TQDM_DISABLE": "1", "LANG": "C.UTF-8",
            **({"DOEI_SHARED": os.environ["DOEI_SHARED"]} if "DOEI_SHARED" in os.environ else {})}


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.name for b in RUNNABLE])
def test_block_runs_as_written(block: Block, tiny_run, tmp_path_factory):
    if block.marker == "fragment":
        pytest.skip(f"fragment{': ' + block.reason if block.reason else ''} (not a program on its own)")
    if block.marker == "skip":
        pytest.skip(block.reason)
    if block.marker == "file":
        pytest.skip(f"written to {block.reason} for the page's later blocks")
    box = sandbox(block.page, tiny_run, tmp_path_factory)
    lang = RUN_LANGS[block.lang]
    script = box / f"_block_{block.line}.{'py' if lang == 'python' else 'sh'}"
    script.write_text(block.code + "\n", encoding="utf-8")
    cmd = [sys.executable, script.name] if lang == "python" else ["bash", "-e", "-o", "pipefail", script.name]
    proc = subprocess.run(cmd, cwd=box, env=_env(box), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, (f"{block.name} ({lang}) exited {proc.returncode}\n--- code\n{block.code}\n"
                                  f"--- stdout\n{proc.stdout[-2500:]}\n--- stderr\n{proc.stderr[-2500:]}")
