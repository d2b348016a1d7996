"""The synthetic benchmark on disk for the demo and the studies: generate it once, reuse it after."""
from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from doei.data.synth import SynthParams, params_from_meta, read_meta, write_synth
from doei.errors import DoeiError


def ensure_synth(root: Path, n_train: int, n_val: int, seed: int, params: dict | None = None) -> dict:
    """Generate the benchmark at ``root`` unless a complete one with these parameters is there.
    ``params``: other :class:`SynthParams` fields (e.g. a co-occurrence variant's ``p_context``)."""
    params = SynthParams(seed=seed, n_train=n_train, n_val=n_val, **(params or {}))
    if (root / "meta.json").is_file():
        meta = read_meta(root)
        if params_from_meta(meta) != params:
            raise DoeiError(f"{root}: holds a benchmark with other parameters; delete it or use another --out")
        print(f"reusing {root} ({n_train} train + {n_val} val images)")
        return meta
    with tqdm(total=n_train + n_val, desc="synth", unit="img", dynamic_ncols=True) as bar:
        return write_synth(root, params, workers=1, progress=bar.update)
