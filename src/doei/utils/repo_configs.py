"""The repository's ``configs/`` folder, found from the installed package (whatever the working directory).

The package is installed in editable mode (``make demo`` / ``make test``: ``pip install -e``), so the
folder that holds ``src/doei`` also holds ``configs/``. ``doei demo``, ``doei ablate`` and ``doei sweep``
take their default configs from there, so they work from any folder, not only from the repository root.
"""
from __future__ import annotations

from pathlib import Path

from doei.errors import DoeiError

_MARKER = Path("configs") / "demo.yaml"


def repo_root() -> Path | None:
    """The nearest folder above this file that holds ``configs/demo.yaml``; None when not found."""
    for parent in Path(__file__).resolve().parents:
        if (parent / _MARKER).is_file():
            return parent
    return None


def configs_dir() -> Path:
    """The repository's ``configs/`` folder (one-line DoeiError when the package is not next to it)."""
    root = repo_root()
    if root is None:
        raise DoeiError("configs/demo.yaml not found next to the installed package; pass --config FILE")
    return root / "configs"


def find_config(path: str | Path | None, default: str, flag: str = "--config") -> Path:
    """The config file to read: ``path`` as given when it exists (relative to the working directory);
    a relative ``path`` that does not exist there is looked up from the repository root
    (``configs/ablate.yaml``) and then in ``configs/`` (``ablate.yaml``); ``None`` means
    ``configs/<default>``. Returned absolute when found in the repository; otherwise a one-line error
    naming the places looked in."""
    if path is None:
        return configs_dir() / default
    p = Path(path)
    if p.is_file() or p.is_absolute():
        return p
    root = repo_root()
    tried = [str(Path.cwd())]
    if root is not None:
        for cand in (root / p, root / "configs" / p):
            if cand.is_file():
                return cand
        tried += [str(root), str(root / "configs")]
    raise DoeiError(f"{flag} {path}: file not found (looked in {', '.join(tried)})")
