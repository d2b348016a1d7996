"""Every registered classifier, built tiny, against the family contract of ``doei.models.registry``.

Parametrised over ``list_models(role="classifier")`` minus :data:`EXCLUDE` (fnmatch patterns, as timm's
model tests filter ``list_models()``): a new backbone that registers a classifier factory is covered here
without editing this file, and no test names the set of registered models. Factories that take the usual
size options (``depth``, ``embed_dim``, ``num_heads``, ``mlp_ratio``) get tiny ones; the others are built
at their own size on 32 px inputs. Each family is also run at an odd size (37×45: it works, or the user
gets one line naming the model and the size), at two CAM scales, and with every CAM kind it declares.
"""
from __future__ import annotations

import fnmatch
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
from doei.models.registry import (CLASSIFIER_ATTRIBUTES, CLASSIFIER_KWARGS, CLASSIFIER_METHODS, ROLES, Classifier,
                                  check_classifier, create_model, forward_errors, list_models, model_role,
                                  register_model)

# registered classifiers left out of these tests (fnmatch patterns); empty: every family is covered
EXCLUDE: tuple[str, ...] = ()
# the package's own classifiers (another test file may register a model of its own at import time)
CLASSIFIERS = [n for n in list_models(role="classifier") if _MODELS[n].__module__.startswith("doei.models.")
               and not any(fnmatch.fnmatch(n, pat) for pat in EXCLUDE)]
TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2.0}
K, B, SIZE = 3, 2, 32
ODD = (37, 45)


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
    assert CLASSIFIERS and all(list_models(role=r) for r in ROLES)     # no role is empty
    assert sorted(sum((list_models(role=r) for r in ROLES), [])) == list_models()
    assert all(model_role(n) == r for r in ROLES for n in list_models(role=r))
    assert set(CLASSIFIERS) <= set(list_models(role="classifier"))
    # every module of the package was imported (nothing listed by hand)
    names = [m.name for m in pkgutil.iter_modules(doei.models.__path__) if not m.name.startswith("_")]
    assert all(f"doei.models.{n}" in sys.modules for n in names)
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
    assert check_classifier(base, name) is base and base.registered_name == name
    assert isinstance(base, Classifier) and all(callable(getattr(base, m)) for m in CLASSIFIER_METHODS)
    assert all(hasattr(base, a) for a in CLASSIFIER_ATTRIBUTES)
    assert isinstance(base.family, str) and base.num_classes == K and base.depth >= 1 and base.num_cls_tokens >= 1
    assert base.doei_stats is None and base.cam_kinds
    out = base(_image())
    assert all(t.shape == (B, K) for t in _flat(out)), name
    assert prediction_logits(base, out).shape == (B, K)


def test_doei_off_is_bit_identical_and_on_changes_the_tokens(built):
    name, base, off, on = built
    x = _image()
    with torch.no_grad():
        ref, got_off, got_on = _flat(base(x)), _flat(off(x)), _flat(on(x))
        src = [cam_source_for(m)(x) for m in (base, off, on)]
    assert all(torch.equal(a, b) for a, b in zip(ref, got_off)), name
    assert all(torch.equal(a, b) for a, b in zip(src[0], src[1])), name
    assert not all(torch.equal(a, b) for a, b in zip(ref, got_on)), f"{name}: DOEI on changed nothing"
    assert not torch.equal(src[0].refined, src[2].refined), name


def _requests(model) -> list[dict]:
    """Every CAM kind the model declares, with each option it reads at a non-default value too."""
    out = [{"kind": k} for k in model.cam_kinds]
    if "n_layers" in model.cam_options:
        out.append({"n_layers": 1})
    if "patch_refine" in model.cam_options:
        out.append({"patch_refine": not model.cam_options["patch_refine"]})
    return out


def test_every_declared_cam_kind_gives_maps_of_the_right_shape(built):
    name, _, _, on = built
    x = _image()[:1]
    for req in _requests(on):
        with torch.no_grad():
            v = cam_source_for(on, **req)(x)
        assert isinstance(v, ViewCams) and v.logits.shape == (1, K), (name, req)
        assert v.cams.ndim == 4 and v.cams.shape[:2] == (1, K) and min(v.cams.shape[2:]) >= 1
        assert v.refined.shape == v.cams.shape and torch.isfinite(v.refined).all(), (name, req)


def test_cam_options_the_family_does_not_read_are_refused(built):
    name, base, _, _ = built
    with pytest.raises(DoeiError, match="CAM kind 'nope'") as e:
        cam_source_for(base, kind="nope")
    assert "\n" not in str(e.value) and all(k in str(e.value) for k in base.cam_kinds)
    for opt, value in (("n_layers", 1), ("patch_refine", False)):
        if opt not in base.cam_options:
            with pytest.raises(DoeiError, match=f"CAM option {opt}"):
                cam_source_for(base, **{opt: value})
    if "n_layers" in base.cam_options:
        with pytest.raises(DoeiError, match="expected 1.."):
            cam_source_for(base, n_layers=base.depth + 1)


def test_cams_at_two_scales(built):
    name, _, _, on = built
    cams = CamExtractor(on, scales=(1.0, 1.5), flip=True)(_image()[:1], _target()[:1])
    assert cams.shape == (1, K, SIZE, SIZE) and torch.isfinite(cams).all(), name
    assert cams.min() >= 0 and cams.max() <= 1 and (cams[_target()[:1] == 0] == 0).all()


def test_an_odd_input_size_works_or_is_one_line(built):
    """37×45 (no patch size divides it): outputs of the right shape, or a one-line DoeiError naming the size."""
    name, _, _, on = built
    x = torch.randn(1, 3, *ODD, generator=torch.Generator().manual_seed(3))
    try:
        with torch.no_grad():
            out = _flat(on(x))
        cams = CamExtractor(on, scales=(1.0,), flip=False)(x, _target()[:1])
    except DoeiError as e:
        assert "\n" not in str(e) and "37x45" in str(e), (name, str(e))
        return
    assert all(t.shape == (1, K) for t in out) and cams.shape == (1, K, *ODD), name


def test_a_failure_inside_a_trunk_is_one_line_naming_model_and_size():
    class Trunk(torch.nn.Module):                  # asserts as a third-party trunk does on a size it cannot take
        num_classes = K

        def forward(self, x):
            assert x.shape[-1] % 16 == 0, f"Input width ({x.shape[-1]}) doesn't match model (224)."
            return x

    m = Trunk()
    m.registered_name = "timm_trunk_x"
    x = torch.zeros(1, 3, *ODD)
    with pytest.raises(DoeiError) as e:
        with forward_errors(m, x):
            m(x)
    msg = str(e.value)
    assert "\n" not in msg and "'timm_trunk_x'" in msg and "37x45" in msg and "AssertionError" in msg
    with pytest.raises(DoeiError, match="^as is$"):          # a DoeiError passes unchanged
        with forward_errors(m, x):
            raise DoeiError("as is")


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
