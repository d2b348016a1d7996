"""ResNet38 nets vs the official fixtures (reference README §5.4-5.5) and the frozen-BN policy.

Each net is built once per module (they have 100M+ parameters)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from doei.models.resnet38 import AffinityNet, DeepLabResNet38, ResNet38Cls, parameter_groups
from doei.models.affinity import dense_affinity
from doei.seg.multiscale import multiscale_predict
from recipe_weights import fill_state_dict_


def close(out: torch.Tensor, ref: np.ndarray) -> None:
    """README §4 tolerance for raw network outputs: rtol=1e-4, atol=1e-5*max|ref|."""
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-4, atol=1e-5 * float(np.abs(ref).max()))


def build(cls, post_scale=None, **kw):
    """Construct on the meta device (skips the default initialisation of 100M+ parameters), then
    materialise and fill with the recipe weights."""
    with torch.device("meta"):
        net = cls(**kw)
    return fill_state_dict_(net.to_empty(device="cpu"), post_scale).eval()


@pytest.fixture(scope="module")
def cls_net():
    return build(ResNet38Cls)


@pytest.fixture(scope="module")
def aff_net():
    return build(AffinityNet, {"f9.weight": 30.0})


@pytest.fixture(scope="module")
def seg_net():
    return build(DeepLabResNet38, {"fc8_seg_conv2.weight": 50.0}, num_classes=21)


@pytest.mark.parametrize("net_fixture,keys_file", [("cls_net", "keys_psa_resnet38_cls.json"),
                                                    ("aff_net", "keys_psa_resnet38_aff.json"),
                                                    ("seg_net", "keys_seg_resnet38.json")])
def test_state_dict_keys_and_shapes_are_official(request, shared_dir, net_fixture, keys_file):
    net = request.getfixturevalue(net_fixture)
    spec = json.loads((shared_dir / "reference" / keys_file).read_text())
    sd = net.state_dict()
    assert list(sd) == list(spec["keys"])
    assert {k: list(v.shape) for k, v in sd.items()} == spec["keys"]
    assert sum(v.numel() for v in sd.values()) == spec["n_state_elements"]


def test_psa_cls_logits_and_cam(cls_net, reference):
    z = reference("psa_resnet38_cls.npz")
    x = torch.from_numpy(z["input"])
    with torch.no_grad():
        close(cls_net(x), z["logits"])
        close(cls_net.forward_cam(x), z["forward_cam"])


def test_affinitynet_sparse_dense_and_features(aff_net, reference):
    """One batch-3 forward covers the single-image case and the b2 case (eval mode: per-sample)."""
    z = reference("psa_affinity.npz")
    pre = {}
    hook = aff_net.f9.register_forward_hook(lambda m, i, o: pre.__setitem__("f9", o))
    try:
        with torch.no_grad():
            aff = aff_net(torch.from_numpy(np.concatenate([z["input_padded"], z["b2_input"]])))
    finally:
        hook.remove()
    close(pre["f9"][:1], z["f9_preelu"])
    close(aff[:1], z["aff"])
    close(aff[1:], z["b2_aff"])
    dense = dense_affinity(aff[0], 13, 17)
    close(dense, z["aff_dense"])
    assert torch.equal(dense, dense.T) and torch.all(dense.diagonal() == 1)


def test_affinitynet_to_dense_path(aff_net, monkeypatch):
    f = torch.randn(1, 448, 9, 10, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(aff_net, "features", lambda x: f)       # the composition, not the backbone again
    with torch.no_grad():
        sparse = aff_net(torch.zeros(1, 3, 72, 80))
        dense = aff_net(torch.zeros(1, 3, 72, 80), to_dense=True)
    assert dense.shape == (90, 90)
    torch.testing.assert_close(dense, dense_affinity(sparse[0], 9, 10), rtol=1e-5, atol=1e-6)


def test_affinitynet_dense_needs_batch_one(aff_net):
    with pytest.raises(ValueError, match="batch 1"), torch.no_grad():
        aff_net(torch.zeros(2, 3, 8, 8), to_dense=True)          # refused before any computation


@pytest.mark.parametrize("case", ["s64x80", "s65x83"])
def test_seg_logits(seg_net, reference, case):
    z = reference("seg_resnet38.npz")
    with torch.no_grad():
        out = seg_net(torch.from_numpy(z[f"{case}_input"]))
    assert out.shape == z[f"{case}_logits"].shape       # ceil(H/8) x ceil(W/8)
    close(out, z[f"{case}_logits"])


def test_seg_multiscale_per_scale_logits_real_net(seg_net, reference):
    """The real net inside multiscale_predict: input resized with align_corners=True (one scale of
    the smaller image keeps this fast; the fusion itself is tested against all stored logits in
    tests/test_seg_inference.py)."""
    z = reference("seg_resnet38_msinfer.npz")
    _, logits = multiscale_predict(seg_net, z["img1_image_uint8"], scales=(0.5,), return_logits=True)
    close(logits[0], z["img1_logits_scale0.5"])


def test_frozen_bn_policy_and_train_returns_self(aff_net):
    net = aff_net
    assert net.train() is net and net.training
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)               # running stats even in train()
    assert all(not p.requires_grad for m in bns for p in m.parameters())
    for name in ("conv1a", "b2", "b2_1", "b2_2"):
        assert all(not p.requires_grad for p in getattr(net, name).parameters()), name
    assert all(p.requires_grad for p in net.b3.conv_branch2a.parameters())
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
    with torch.no_grad():
        net.forward_as_dict(torch.randn(2, 3, 16, 16))              # a training-mode forward
    after = net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # BN statistics untouched
    assert net.eval() is net and not net.training


def test_parameter_groups_follow_official_split(seg_net):
    w, b, hw, hb = parameter_groups(seg_net)
    assert hw == [seg_net.fc8_seg_conv1.weight, seg_net.fc8_seg_conv2.weight]
    assert hb == [seg_net.fc8_seg_conv1.bias, seg_net.fc8_seg_conv2.bias]
    assert b == []                                                  # backbone convs have no bias
    ids = {id(p) for p in w}
    assert id(seg_net.conv1a.weight) not in ids and id(seg_net.b2.conv_branch2a.weight) in ids
    assert not any(isinstance(m, nn.BatchNorm2d) and id(m.weight) in ids for m in seg_net.modules())


def test_unfrozen_option_trains_batchnorm():
    with torch.device("meta"):
        net = ResNet38Cls(num_classes=3, frozen_bn=False)
    net.train()
    assert all(m.training for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(p.requires_grad for p in net.parameters())
