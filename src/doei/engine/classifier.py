"""The one way from a checkpoint to a classifier network: :func:`load_classifier`.

Every path that turns a classifier checkpoint into a network — ``doei cam``, the ``cam`` stage of
``doei run``, the study runner, the demo and the Python API — calls :func:`load_classifier`, so the
same file gives the same network (DOEI included) whichever way a user reaches it.

Two kinds of file:

* a **doei training checkpoint** (``checkpoint.pt`` of ``doei train-cls``): it records the model name,
  class count, input size, factory options and DOEI settings, and the network is rebuilt from that
  record. Anything the caller states on top (``name``, ``num_classes``, ``img_size``, ``options``,
  ``doei``) must agree with the record, or a one-line :class:`DoeiError` names the mismatch. The one
  deliberate exception is DOEI for an ablation: ``override_doei=True`` runs the stored weights with the
  given DOEI settings, and the returned spec says so (``doei_source = "override"``).
* an **external weights file** (official MCTformer/TS-CAM/TransCAM checkpoints, a bare state dict): it
  says nothing about its network, so the caller's ``name``/``num_classes``/``options``/``doei`` build
  it (DOEI off unless given) and the weights load strictly.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from doei.core import DOEIConfig
from doei.core.config import CONTROLS, READINGS
from doei.engine.checkpoint import FORMAT, check_checkpoint
from doei.errors import DoeiError, DoeiWarning
from doei.models.weights import load_model_weights, load_weights_only
from doei.train_config import TrainConfig, train_config_from_dict
from doei.utils.checks import expect_device, expect_int, expect_path, expect_type

DOEI_FIELDS = tuple(f.name for f in dataclasses.fields(DOEIConfig))
# fields added after complete records began whose defaults are the behaviour before them (readings, controls)
NEUTRAL_FIELDS = {*READINGS, *CONTROLS, "last_block", "control_seed"}
DEFAULT_MODEL = "mctformer_v2_deit_small"


@dataclass(frozen=True)
class ClassifierSpec:
    """What network a checkpoint was turned into (recorded beside every output made with it).

    ``source``: ``"training checkpoint"`` or ``"weights file"``; ``doei_source``: ``"checkpoint"``
    (the stored settings), ``"given"`` (external weights with the caller's settings) or ``"override"``
    (a training checkpoint run with other DOEI settings on purpose)."""

    name: str
    num_classes: int
    img_size: int | None
    options: dict = field(default_factory=dict)
    doei: DOEIConfig = field(default_factory=DOEIConfig)
    source: str = "weights file"
    doei_source: str = "given"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_classifier(cfg: TrainConfig) -> nn.Module:
    """The network of a training config (weights from ``model.pretrained`` when set)."""
    from doei.models.registry import create_model

    m = cfg.model
    try:
        model = create_model(m.name, num_classes=m.num_classes, doei=cfg.doei, img_size=m.img_size,
                             drop_rate=m.drop_rate, drop_path_rate=m.drop_path_rate, **m.options)
    except (TypeError, ValueError) as e:
        raise DoeiError(f"model {m.name!r}: {e}") from None
    check_doei_effect(model, cfg.doei, m.name)
    if m.pretrained:
        from doei.models.pretrained import load_pretrained

        load_pretrained(model, m.pretrained)
    return model


def check_doei_effect(model: nn.Module, doei: DOEIConfig, name: str) -> None:
    """Refuse DOEI settings that are on but can do nothing on ``model``; warn where one part is inert
    (:meth:`doei.core.DOEIConfig.check_effect`, with the model's number of class tokens)."""
    try:
        notes = doei.check_effect(int(getattr(model, "num_cls_tokens", 1)))
    except ValueError as e:
        raise DoeiError(f"model {name!r}: {e}") from None
    for note in notes:
        warnings.warn(f"model {name!r}: {note}", DoeiWarning, stacklevel=3)


def is_training_checkpoint(path: str | Path) -> bool:
    """True when ``path`` is a doei training checkpoint (a readable file with the ``format`` tag)."""
    obj = load_weights_only(path)
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def stored_doei(path: str | Path) -> DOEIConfig | None:
    """The DOEI settings a training checkpoint was trained with; None for an external weights file."""
    obj = load_weights_only(path)
    if not (isinstance(obj, dict) and obj.get("format") == FORMAT):
        return None
    return train_config_from_dict(check_checkpoint(obj, path)["config"], where=f"{path}:config").doei


def load_classifier(path: str | Path, *, name: str | None = None, num_classes: int | None = None,
                    img_size: int | None = None, options: dict | None = None, doei: DOEIConfig | None = None,
                    override_doei: bool = False, default_num_classes: int | None = None,
                    device: str | torch.device = "cpu", where: str = "") -> tuple[nn.Module, ClassifierSpec]:
    """Build the classifier ``path`` describes, with its weights, in eval mode on ``device``.

    ``name``/``num_classes``/``img_size``/``options``/``doei``: what the caller knows or wants (None =
    not stated). For a training checkpoint each stated value must equal the stored one (``options``: each
    stated key), else a one-line DoeiError (prefixed by ``where``, e.g. ``"cam: "``); a differing ``doei``
    is applied only with ``override_doei=True``. For an external weights file they build the network
    (``name`` default ``mctformer_v2_deit_small``; ``num_classes`` default ``default_num_classes``, e.g. the
    dataset's; DOEI off unless given).
    Returns ``(model, spec)``. Wrong argument types are a TypeError, bad values (``num_classes=-1``,
    ``device="gpu"``) a ValueError naming the argument, before the file is read.
    """
    f = "load_classifier"
    expect_path(f, "path", path)
    expect_type(f, "name", name, (str, type(None)), "a registered model name or None")
    expect_int(f, "num_classes", num_classes, 1, optional=True)
    expect_int(f, "default_num_classes", default_num_classes, 1, optional=True)
    expect_int(f, "img_size", img_size, 1, optional=True)
    expect_type(f, "options", options, (dict, type(None)), "a dict of factory arguments or None")
    expect_type(f, "doei", doei, (DOEIConfig, type(None)), "a doei.core.config.DOEIConfig or None")
    expect_device(f, "device", device)
    path = Path(path)
    obj = load_weights_only(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        model, spec = _from_training_checkpoint(path, check_checkpoint(obj, path), name, num_classes, img_size,
                                                options, doei, override_doei, where)
    else:
        model, spec = _from_weights(path, obj, name, num_classes if num_classes is not None else default_num_classes,
                                    img_size, options, doei, where)
    return model.to(device).eval(), spec


def _from_training_checkpoint(path: Path, ckpt: dict, name, num_classes, img_size, options, doei, override_doei,
                              where: str) -> tuple[nn.Module, ClassifierSpec]:
    stored_doei = ckpt["config"].get("doei") or {}
    if stored_doei.get("enabled") and set(DOEI_FIELDS) - set(stored_doei) - NEUTRAL_FIELDS:
        warnings.warn(f"{path}: the stored DOEI settings {sorted(stored_doei)} predate complete records; the unset "
                      "knobs take today's DOEIConfig defaults (sf_c2c was -0.5 before it became 0)", DoeiWarning,
                      stacklevel=3)
    cfg = train_config_from_dict(ckpt["config"], where=f"{path}:config")
    m = cfg.model
    stated = {"model": (name, m.name), "num_classes": (num_classes, m.num_classes), "img_size": (img_size, m.img_size)}
    for key, value in (options or {}).items():
        stated[f"model_kwargs.{key}"] = (value, m.img_size if key == "img_size" else m.options.get(key))
    for key, (given, stored) in stated.items():
        if given is not None and given != stored:
            raise DoeiError(f"{where}{key} = {given!r} disagrees with {path}, a training checkpoint of "
                            f"{m.name} with {key} = {stored!r} (leave {key} unset to use the checkpoint's)")
    trained = cfg.doei
    doei_source = "checkpoint"
    if doei is not None and doei != trained:
        if not override_doei:
            diff = sorted(k for k in DOEI_FIELDS if getattr(doei, k) != getattr(trained, k))
            raise DoeiError(f"{where}doei.{diff[0]} = {getattr(doei, diff[0])!r} disagrees with {path} (trained with "
                            f"doei.{diff[0]} = {getattr(trained, diff[0])!r}); leave doei unset, or set "
                            "override_doei: true (--doei on/off) to run these weights with other DOEI settings")
        cfg.doei = doei
        doei_source = "override"
        warnings.warn(f"{path}: trained with DOEI {'on' if trained.enabled else 'off'}, run with DOEI "
                      f"{'on' if doei.enabled else 'off'} (override_doei)", DoeiWarning, stacklevel=3)
    cfg.model.pretrained = None
    model = build_classifier(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise DoeiError(f"{path}: its weights do not fit its own recorded model {m.name} "
                        f"({str(e).strip().splitlines()[0]})") from None
    spec = ClassifierSpec(m.name, m.num_classes, m.img_size, dict(m.options), cfg.doei,
                          "training checkpoint", doei_source)
    return model, spec


def _from_weights(path: Path, obj: object, name, num_classes, img_size, options, doei,
                  where: str) -> tuple[nn.Module, ClassifierSpec]:
    from doei.models.weights import unwrap_state_dict
    from doei.models.registry import create_model

    name = name or DEFAULT_MODEL
    if num_classes is None:
        raise DoeiError(f"{where}num_classes: not given, and {path} is a weights file that does not record it "
                        "(give --num-classes or num_classes)")
    kwargs = dict(options or {})
    if img_size is not None:
        kwargs["img_size"] = img_size
    doei = doei if doei is not None else DOEIConfig(enabled=False)
    try:
        model = create_model(name, num_classes=num_classes, doei=doei, **kwargs)
    except (TypeError, ValueError) as e:
        raise DoeiError(f"{where}model_kwargs {kwargs}: not accepted by {name} ({e})") from None
    check_doei_effect(model, doei, name)
    load_model_weights(model, unwrap_state_dict(obj, where=str(path)), strict=True, where=str(path))
    spec = ClassifierSpec(name, num_classes, kwargs.get("img_size"), {k: v for k, v in kwargs.items() if k != "img_size"},
                          doei, "weights file", "given")
    return model, spec


__all__ = ["ClassifierSpec", "build_classifier", "load_classifier", "stored_doei", "is_training_checkpoint",
           "DEFAULT_MODEL"]
