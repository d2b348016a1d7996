"""Every registered classifier, built tiny, against the family contract of ``doei.models.registry``.

Parametrised over ``list_models(role="classifier")``: a new backbone that registers a classifier factory
is covered here without editing this file. Factories that take the usual size options (``depth``,
``embed_dim``, ``num_heads``) get tiny ones; the others are built at their own size on 32 px inputs.
"""
from __future__ import annotations

import ast
import inspect
import pkgutil
import sys
from pathlib import Path

import pytest
import torch

import doei.models
from doei.cam.extractor import CamExtractor, cam_source_for
from doei.core import DOEIConfig
from doei.engine.losses import classification_loss, prediction_logits
from doei.models.pretrained import load_pretrained
from doei.errors import DoeiError
from doei.models.cam_source import ViewCams
from doei.models.registry import _MODELS  # noqa: PLC2701 - to tell the package's models from test-registered ones
from doei.models.registry import (CLASSIFIER_KWARGS, CLASSIFIER_METHODS, ROLES, Classifier, create_model,
                                  list_models, model_role, register_model)

# the package's own classifiers (another test file may register a model of its own at import time)
CLASSIFIERS = [n for n in list_models(role="classifier") if _MODELS[n].__module__.startswith("doei.models.")]
TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2}
K, B, SIZE = 3, 2, 32


def _build(name: str, doei: DOEIConfig | None, seed: int = 0) -> torch.nn.Module:
    from doei.models.registry import _MODELS

    params = inspect.signature(_MODELS[name]).parameters
    tiny = {k: v for k, v in TINY.items() if k in params}
    torch.manual_seed(seed)
    return create_model(name, num_classes=K, doei=doei, img_size=SIZE, drop_rate=0.0, drop_path_rate=0.0,
                        **tiny).eval()


def _image(seed: int = 1) -> torch.Tensor:
    return torch.randn(B, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _target() -> torch.Tensor:
    return torch.tensor([[1.0, 0, 1], [0, 1, 0]])


def _flat(out) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else list(out)


@pytest.fixture(scope="module", params=CLASSIFIERS)
def built(request):
    """(name, model without DOEI, the same weights with DOEI off, with DOEI on)."""
    name = request.param
    base = _build(name, None)
    off, on = _build(name, DOEIConfig(enabled=False), seed=5), _build(name, DOEIConfig(enabled=True), seed=6)
    off.load_state_dict(base.state_dict())
    on.load_state_dict(base.state_dict())       # DOEI adds no parameters: official checkpoints load as they are
    return name, base, off, on


def test_the_registry_discovers_every_family():
    assert {"mctformer_v2_deit_small", "mctformer_v2_tiny_conv", "tscam_deit_small", "tscam_tiny_conv",
            "transcam_conformer_small", "transcam_conformer_synth"} == set(CLASSIFIERS)
    assert {"psa_resnet38_aff", "psa_resnet38_aff_small"} == set(list_models(role="affinity"))
    assert {"deeplab_resnet38", "deeplab_resnet38_small"} == set(list_models(role="segmentation"))
    assert sorted(sum((list_models(role=r) for r in ROLES), [])) == list_models()
    assert set(CLASSIFIERS) <= set(list_models(role="classifier"))
    # every module of the package was imported (nothing listed by hand)
    names = [m.name for m in pkgutil.iter_modules(doei.models.__path__) if not m.name.startswith("_")]
    assert all(f"doei.models.{n}" in sys.modules for n in names)
    assert model_role("tscam_tiny_conv") == "classifier" and model_role("deeplab_resnet38") == "segmentation"
    with pytest.raises(DoeiError, match="unknown model 'nope'"):
        model_role("nope")
    with pytest.raises(DoeiError, match="role 'x'"):
        list_models(role="x")


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_factory_accepts_the_contract_keywords(name):
    from doei.models.registry import _MODELS

    params = inspect.signature(_MODELS[name]).parameters
    assert all(k in params for k in CLASSIFIER_KWARGS), name


def test_forward_shapes_and_the_family_methods(built):
    name, base, _, _ = built
    assert isinstance(base, Classifier) and all(callable(getattr(base, m)) for m in CLASSIFIER_METHODS)
    assert isinstance(base.family, str) and base.num_classes == K
    out = base(_image())
    assert all(t.shape == (B, K) for t in _flat(out)), name
    assert prediction_logits(base, out).shape == (B, K)


def test_doei_off_is_bit_identical_and_on_changes_the_tokens(built):
    name, base, off, on = built
    x = _image()
    with torch.no_grad():
        ref, got_off, got_on = _flat(base(x)), _flat(off(x)), _flat(on(x))
        src = [m.cam_source(n_layers=1, kind="fused", patch_refine=True)(x) for m in (base, off, on)]
    assert all(torch.equal(a, b) for a, b in zip(ref, got_off)), name
    assert all(torch.equal(a, b) for a, b in zip(src[0], src[1])), name
    assert not all(torch.equal(a, b) for a, b in zip(ref, got_on)), f"{name}: DOEI on changed nothing"
    assert not torch.equal(src[0].refined, src[2].refined), name


@pytest.mark.parametrize("patch_refine", [True, False])
def test_cam_source_returns_maps_of_the_right_shape(built, patch_refine):
    name, base, _, on = built
    x = _image()
    for model in (base, on):
        with torch.no_grad():
            v = cam_source_for(model, n_layers=1, kind="fused", patch_refine=patch_refine)(x)
        assert isinstance(v, ViewCams) and v.logits.shape == (B, K)
        assert v.cams.ndim == 4 and v.cams.shape[:2] == (B, K) and min(v.cams.shape[2:]) >= 1
        assert v.refined.shape == v.cams.shape and torch.isfinite(v.refined).all(), name
    cams = CamExtractor(on, scales=(1.0,), flip=True, n_layers=1, patch_refine=patch_refine)(x, _target())
    assert cams.shape == (B, K, SIZE, SIZE) and torch.isfinite(cams).all()
    assert cams.min() >= 0 and cams.max() <= 1 and (cams[_target() == 0] == 0).all()


def test_finite_loss_that_backpropagates(built):
    name, _, _, on = built
    on.train()
    try:
        on.zero_grad()
        total, first, second = classification_loss(on, on(_image()), _target())
        assert total.ndim == first.ndim == second.ndim == 0 and torch.isfinite(total), name
        assert torch.allclose(total, first + second)
        total.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in on.parameters()), name
    finally:
        on.eval()


def test_load_pretrained_loads_all_but_the_keys_it_returns(built, tmp_path):
    name, base, _, _ = built
    path = tmp_path / "weights.pth"
    torch.save(base.state_dict(), path)
    fresh = _build(name, None, seed=9)
    left = load_pretrained(fresh, path)
    assert left and all(k in fresh.state_dict() for k in left), name
    own, got = base.state_dict(), fresh.state_dict()
    assert all(torch.equal(own[k], got[k]) for k in own if k not in left), name
    with pytest.raises(DoeiError) as e:
        fresh.load_pretrained(str(tmp_path / "missing.pth"))
    assert "\n" not in str(e.value)


def test_a_model_without_the_methods_is_a_one_line_error(tmp_path):
    class Stranger(torch.nn.Module):     # has forward_cams, but says nothing of its family
        num_classes = K

        def forward(self, x):
            return x.mean(dim=(2, 3))

        def forward_cams(self, x):
            raise AssertionError("must not be called")

    m, out = Stranger(), torch.zeros(B, K)
    for call in (lambda: classification_loss(m, out, _target()), lambda: prediction_logits(m, out),
                 lambda: cam_source_for(m), lambda: load_pretrained(m, tmp_path / "w.pth")):
        with pytest.raises(DoeiError, match="Stranger") as e:
            call()
        assert "\n" not in str(e.value)
    assert not isinstance(m, Classifier)


def test_register_model_checks_the_factory_contract():
    with pytest.raises(TypeError, match="does not accept doei, img_size"):
        @register_model
        def not_a_classifier(num_classes: int = 3, drop_rate: float = 0.0, drop_path_rate: float = 0.0):
            raise AssertionError
    with pytest.raises(ValueError, match="role 'decoder'"):
        register_model(role="decoder")
    assert "not_a_classifier" not in list_models()
