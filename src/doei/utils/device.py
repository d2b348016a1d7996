"""Device names in configs: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` → the device to run on (one rule)."""
from __future__ import annotations

from doei.errors import DoeiError


def resolve_device(name: str, key: str = "device") -> str:
    """``auto`` → ``cuda`` when available else ``cpu``; ``cuda*`` without CUDA is a one-line DoeiError naming
    ``key`` (the config key or flag the name came from). torch is imported here, not at module load, so
    configs can be read without it."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DoeiError(f"{key} = {name!r}: CUDA is not available on this machine (use cpu or auto)")
    return name
