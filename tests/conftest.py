"""Shared test helpers: locating ../shared/ (read-only fixtures) and skipping clearly without it."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path | None:
    env = os.environ.get("DOEI_SHARED")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared", REPO / "shared"]
    for c in candidates:
        if (c / "reference").is_dir():
            return c
    return None


SHARED = _shared_dir()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if SHARED is None:
        pytest.skip("../shared/ (reference fixtures and real data samples) is not present next to the repo")
    return SHARED


@pytest.fixture(scope="session")
def reference(shared_dir):
    """reference(name) -> the loaded npz ``../shared/reference/<name>`` (skips if missing)."""
    cache: dict[str, object] = {}

    def load(name: str):
        p = shared_dir / "reference" / name
        if not p.is_file():
            pytest.skip(f"reference fixture {p} is missing")
        if name not in cache:
            cache[name] = np.load(p, allow_pickle=False)
        return cache[name]

    return load


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


@pytest.fixture(autouse=True)
def _fixed_seed():
    """Every test starts from the same global random state, so a test that draws inputs with the global
    generators (``torch.randn``, ``np.random``, ``random``) sees the same inputs on every run."""
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """``(work, data, checkpoint)``: a folder dataset of real photos (the VOC sample when ../shared is present,
    else made-up ones; tests/tiny_run.py) and one tiny classifier trained on it by ``doei train-cls`` with
    configs/folder_example.yaml shrunk - built once per session for every test that needs a trained model."""
    import tiny_run as tr

    work = tmp_path_factory.mktemp("tiny_run")
    data = tr.make_folder_data(work, SHARED)
    return work, data, tr.train_tiny_classifier(work, data)
