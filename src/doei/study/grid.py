"""Which runs a study makes: the Table-4 component grid and one-parameter sweeps.

A run is a DOEI setting (a dict of :class:`doei.core.config.DOEIConfig` fields) trained with one
seed. Rows and sweep points are resolved against a base DOEI dict (the study config's ``doei``
section) so that unset knobs keep their defaults.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, fields
from typing import Sequence

from doei.core.config import CONTROLS, READINGS, DOEIConfig
from doei.errors import DoeiError


@dataclass(frozen=True)
class Row:
    """One line of the ablation table: ``name`` (file-safe id), ``label`` (as the paper prints it) and
    the component flags it sets on top of the base DOEI dict (``None`` = DOEI off)."""

    name: str
    label: str
    flags: dict | None


# The paper's Table 4 (MCTformer-V2), in its order.
TABLE4: tuple[Row, ...] = (
    Row("baseline", "baseline (DOEI off)", None),
    Row("cpdo", "CPDO", {"cpdo": True, "ppdo": False, "hfa": False}),
    Row("ppdo", "PPDO", {"cpdo": False, "ppdo": True, "hfa": False}),
    Row("cpdo_ppdo", "CPDO + PPDO", {"cpdo": True, "ppdo": True, "hfa": False}),
    Row("cpdo_hfa", "CPDO + HFA", {"cpdo": True, "ppdo": False, "hfa": True}),
    Row("ppdo_hfa", "PPDO + HFA", {"cpdo": False, "ppdo": True, "hfa": True}),
    Row("cpdo_ppdo_hfa", "CPDO + PPDO + HFA", {"cpdo": True, "ppdo": True, "hfa": True}),
)


# The readings of docs/doei-method.md ("Named variants", issue #15): full DOEI with ONE reading changed,
# and the Table-4 CPDO rows under the HFA-on-attention reading (where CPDO + HFA is not CPDO).
READING_ROWS: tuple[Row, ...] = (
    Row("read_hfa_attention", "DOEI, HFA on the block's attention", {"cpdo": True, "ppdo": True, "hfa": True,
                                                                     "hfa_target": "attention"}),
    Row("read_logits", "DOEI, pre-softmax scores (Eq. 1)", {"cpdo": True, "ppdo": True, "hfa": True,
                                                            "score_source": "logits"}),
    Row("read_heads", "DOEI, selection per head", {"cpdo": True, "ppdo": True, "hfa": True, "heads": "each"}),
    Row("read_suppress_patch", "DOEI, Eq. 11 suppression on patch tokens", {"cpdo": True, "ppdo": True, "hfa": True,
                                                                            "suppress_target": "patch"}),
    Row("read_raw_rgb", "DOEI, raw RGB for d_rgb", {"cpdo": True, "ppdo": True, "hfa": True, "rgb": "raw"}),
    Row("cpdo_hfa_attention", "CPDO + HFA (HFA on the attention)", {"cpdo": True, "ppdo": False, "hfa": True,
                                                                   "hfa_target": "attention"}),
)
# Issue #24: Eq. 17 as written, and the controls of docs/doei-method.md ("Controls"): full DOEI with one
# ingredient replaced by a non-attention one (the sharpened baseline is post hoc: doei.study.sharpened).
_FULL = {"cpdo": True, "ppdo": True, "hfa": True}
CONTROL_ROWS: tuple[Row, ...] = (
    Row("read_hfa_additive", "DOEI, Eq. 17 as written (additive)", {**_FULL, "hfa_target": "additive"}),
    Row("cpdo_hfa_additive", "CPDO + HFA (Eq. 17 as written)", {"cpdo": True, "ppdo": False, "hfa": True,
                                                               "hfa_target": "additive"}),
    Row("random_select", "control: random selection (same k_i)", {**_FULL, "select": "random"}),
    Row("uniform_scores", "control: uniform scores", {**_FULL, "weights": "uniform"}),
    Row("random_uniform", "control: random selection + uniform scores", {**_FULL, "select": "random",
                                                                          "weights": "uniform"}),
    Row("no_last_block", "control: no DOEI after the last block", {**_FULL, "last_block": False}),
)
ALL_ROWS: tuple[Row, ...] = TABLE4 + READING_ROWS + CONTROL_ROWS


def select_rows(names: Sequence[str] | None, where: str) -> tuple[Row, ...]:
    """The TABLE4 rows named in ``names`` (all when ``None``), in the table's order. The baseline must be
    among them (every other row is reported as a paired difference to it). A single-class-token model
    (TS-CAM, TransCAM: CPDO undefined) uses ``[baseline, ppdo, ppdo_hfa]``."""
    if names is None:
        return TABLE4
    known = [r.name for r in ALL_ROWS]
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise DoeiError(f"{where}: expected a list of row names from {known}, got {names!r}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DoeiError(f"{where}: unknown row(s) {unknown}; expected some of {known}")
    if "baseline" not in names:
        raise DoeiError(f"{where}: the rows must include 'baseline' (the other rows are paired differences to it)")
    return tuple(r for r in ALL_ROWS if r.name in names)


# Sweepable knobs: how a value given on the command line is parsed, and whether its plot uses a log x-axis.
FLOAT_PARAMS = ("st_p2c", "af_p2c", "sf_p2c", "st_c2c", "af_c2c", "sf_c2c", "alpha")
SWEEP_PARAMS = (*FLOAT_PARAMS, "layers", "suppress")
LOG_AXIS = {"af_p2c", "sf_p2c", "af_c2c", "sf_c2c", "st_p2c", "st_c2c"}
_DOEI_FIELDS = {f.name for f in fields(DOEIConfig)}


def doei_keys_set(rows: Sequence[Row] = (), params: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """The DOEI fields a study's runs set themselves, beyond ``enabled`` (every row and sweep point sets
    that): ``(the rows' flags, the swept parameters)`` — a ``--set`` of one would be replaced in every run."""
    flags = sorted({k for r in rows if r.flags for k in r.flags})
    return flags, sorted(set(params))


def row_doei(row: Row, base: dict) -> dict:
    """The DOEI dict of ``row`` on top of ``base``: ``{"enabled": False}`` for the baseline."""
    if row.flags is None:
        return {"enabled": False}
    return validate_doei({**base, "enabled": True, **row.flags}, where=f"row {row.name}")


def validate_doei(d: dict, where: str) -> dict:
    """Check that ``d`` builds a DOEIConfig (unknown keys or bad values raise one-line DoeiErrors)."""
    unknown = set(d) - _DOEI_FIELDS
    if unknown:
        raise DoeiError(f"{where}: unknown DOEI field(s) {sorted(unknown)}; expected some of {sorted(_DOEI_FIELDS)}")
    try:
        DOEIConfig(**d)
    except (TypeError, ValueError) as e:
        raise DoeiError(f"{where}: {e}") from None
    return dict(d)


def effective_doei(d: dict) -> dict:
    """The DOEI dict with every field filled in and the knobs that cannot act normalised away, so that two
    settings that compute the same network get the same run key. Off → ``{"enabled": False}``; HFA
    without PPDO is a no-op (HFA only re-weights PPDO's patch scores, docs/doei-method.md) → hfa False;
    alpha is irrelevant when HFA is off; a disabled part's st/af/sf are irrelevant."""
    cfg = DOEIConfig(**d)
    if not cfg.enabled or not (cfg.ppdo or cfg.cpdo):
        return {"enabled": False}
    out = {f.name: getattr(cfg, f.name) for f in fields(DOEIConfig)}
    if not cfg.ppdo:
        out.update(st_p2c=None, af_p2c=None, sf_p2c=None, suppress_target=None)
        if cfg.hfa_target == "scores":
            out.update(hfa=False)
    if not cfg.cpdo:
        out.update(st_c2c=None, af_c2c=None, sf_c2c=None)
    if not out["hfa"] or out["alpha"] == 0:
        out.update(hfa=False, alpha=None, hfa_target=None, rgb=None)
    if cfg.sf_p2c == 0:
        out.update(suppress_target=None)
    # a reading at today's value (or irrelevant) is left out, so run keys from before the readings stay valid
    for name, allowed in {**READINGS, **CONTROLS}.items():
        if out[name] is None or out[name] == allowed[0]:
            del out[name]
    if out["last_block"]:
        del out["last_block"]
    if cfg.select != "random":
        del out["control_seed"]
    return out


def canonical_doei(d: dict) -> dict:
    """One DOEI dict per run key: every field, with the knobs :func:`effective_doei` finds irrelevant set to
    their defaults (``{"enabled": False}`` when off). Two settings with the same run key compute the same
    network and get the same canonical dict, so the ``doei run`` a pipeline study makes for a key (its
    ``classifier.doei``) does not depend on which row or sweep point asked for it first."""
    eff = effective_doei(d)
    if eff == {"enabled": False}:
        return dict(eff)
    default = DOEIConfig()
    return {f.name: eff[f.name] if eff.get(f.name) is not None else getattr(default, f.name)
            for f in fields(DOEIConfig)}


def run_key(doei: dict, seed: int) -> str:
    """Stable file-safe id of (effective DOEI setting, seed): ``off-s0`` or ``<12 hex>-s0``."""
    eff = effective_doei(doei)
    if eff == {"enabled": False}:
        return f"off-s{seed}"
    h = hashlib.sha1(json.dumps(eff, sort_keys=True).encode()).hexdigest()[:12]
    return f"{h}-s{seed}"


def parse_param(spec: str) -> tuple[str, list]:
    """``af_p2c=0.1,0.3,1`` → ("af_p2c", [0.1, 0.3, 1.0]); ``layers=1,2,4`` → ("layers", [1, 2, 4]) (K = the
    first K blocks); ``suppress=rest,bottom`` → strings."""
    if "=" not in spec:
        raise DoeiError(f"--param {spec!r}: expected NAME=V1,V2,... with NAME one of {', '.join(SWEEP_PARAMS)}")
    name, raw = spec.split("=", 1)
    name = name.strip()
    if name not in SWEEP_PARAMS:
        raise DoeiError(f"--param {spec!r}: unknown parameter {name!r}; expected one of {', '.join(SWEEP_PARAMS)}")
    items = [v.strip() for v in raw.split(",") if v.strip()]
    if not items:
        raise DoeiError(f"--param {spec!r}: no values")
    try:
        if name in FLOAT_PARAMS:
            values: list = [float(v) for v in items]
            if not all(math.isfinite(v) for v in values):
                raise ValueError
        elif name == "layers":
            values = [int(v) for v in items]
            if any(v < 1 for v in values):
                raise ValueError
        else:
            values = items
            if any(v not in ("rest", "bottom") for v in values):
                raise ValueError
    except ValueError:
        kind = {"layers": "integers K >= 1", "suppress": "'rest' or 'bottom'"}.get(name, "finite numbers")
        raise DoeiError(f"--param {spec!r}: values must be {kind}") from None
    return name, values


def sweep_doei(base: dict, name: str, value) -> dict:
    """The DOEI dict of one sweep point: ``base`` (DOEI on) with one knob set; ``layers=K`` → [1..K]."""
    d = {**base, "enabled": True}
    d[name] = list(range(1, int(value) + 1)) if name == "layers" else value
    return validate_doei(d, where=f"--param {name}={value}")
