"""DOEI plugged into tiny timm ViTs (pretrained=False): identity when off, equal to our ViT when on."""
from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

from doei.core import DOEIConfig
from doei.errors import DoeiError
from doei.models.timm_plugin import get_plug, plug, unplug
from doei.models.vit import VisionTransformer

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=5)
FAMILIES = {   # timm name -> extra constructor options (all shrunk with TINY)
    "vit_small_patch16_224": {},
    "deit_tiny_patch16_224": {},
    "deit_tiny_distilled_patch16_224": {},
    "vit_small_patch14_reg4_dinov2": {},
    "eva02_tiny_patch14_224": {},
}
ON = DOEIConfig(enabled=True, ppdo=True, cpdo=True, hfa=True, st_p2c=0.2, st_c2c=1.0, af_p2c=1.0, sf_p2c=-0.5)


def tiny(name: str, seed: int = 0, **extra) -> torch.nn.Module:
    """A tiny timm model whose prefix tokens are O(1) (timm starts them at std 1e-6, which would
    make every DOEI update vanish at initialisation)."""
    torch.manual_seed(seed)
    m = timm.create_model(name, pretrained=False, **{**TINY, **FAMILIES.get(name, {}), **extra})
    with torch.no_grad():
        for key in ("cls_token", "dist_token", "reg_token"):
            if getattr(m, key, None) is not None:
                getattr(m, key).normal_()
    return m


def hooks(m: torch.nn.Module) -> int:
    return sum(len(x._forward_hooks) + len(x._forward_pre_hooks) for x in m.modules())


def image(b: int = 2, h: int = 32, w: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def step(m: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    m.zero_grad(set_to_none=True)
    out = m(x)
    out.square().sum().backward()
    return out.detach(), {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_off_is_bit_identical_on_moves_tokens_unplug_restores(name):
    ref = tiny(name).train()
    m = copy.deepcopy(ref)
    fused = [b.attn.fused_attn for b in m.blocks]
    keys = list(m.state_dict())
    cfg = copy.deepcopy(ON)
    cfg.enabled = False
    plug(m, cfg)
    assert list(m.state_dict()) == keys and hooks(m) > 0
    x = image()
    want, want_g = step(ref, x)
    got, got_g = step(m, x)
    assert torch.equal(got, want)                                      # DOEI off: outputs ...
    assert want_g.keys() == got_g.keys() and all(torch.equal(got_g[k], want_g[k]) for k in want_g)  # ... grads
    assert [b.attn.fused_attn for b in m.blocks] == fused              # fused attention kept
    with torch.no_grad():
        feats = ref.forward_features(x)          # tokens: DINOv2's layer scale hides DOEI in the logits
        cfg.enabled = True
        assert not torch.allclose(m.forward_features(x), feats)
        unplug(m)
        assert torch.equal(m.forward_features(x), feats)
    assert hooks(m) == 0 and get_plug(m) is None and "doei_plug" not in m.__dict__
    assert [b.attn.fused_attn for b in m.blocks] == fused


def ours_like(m: torch.nn.Module, cfg: DOEIConfig, num_cls: int) -> VisionTransformer:
    """This project's ViT with the timm model's weights (DeiT key names; class + dist tokens as our C)."""
    ours = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, qkv_bias=True,
                             num_cls_tokens=num_cls, doei=cfg)
    sd = {k: v for k, v in m.state_dict().items() if k in ours.state_dict()}
    if num_cls == 2:
        sd["cls_token"] = torch.cat([m.cls_token, m.dist_token], dim=1)
    result = ours.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return ours.eval()


@pytest.mark.parametrize("name,num_cls", [("deit_tiny_patch16_224", 1), ("deit_tiny_distilled_patch16_224", 2)])
def test_on_equals_our_vit_with_the_same_weights(name, num_cls):
    m = tiny(name).eval()
    cfg = copy.deepcopy(ON)
    ours = ours_like(m, cfg, num_cls)
    plug(m, cfg)
    assert get_plug(m).num_cls == num_cls
    m.doei_plug.stats, ours.doei_stats = [], []
    x = image(3)
    got = m.forward_features(x)
    want = ours.norm(ours.forward_features(x).tokens)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert [s["k_p2c"] for s in m.doei_plug.stats] == [s["k_p2c"] for s in ours.doei_stats] == [6, 3, 0]
    if num_cls == 2:   # CPDO between the class and distillation tokens (k = 1 below the last block)
        assert [s["k_c2c"] for s in m.doei_plug.stats] == [1, 1, 0]
    # gradients agree too
    got.square().sum().backward()
    want.square().sum().backward()
    torch.testing.assert_close(m.blocks[0].attn.qkv.weight.grad, ours.blocks[0].attn.qkv.weight.grad,
                               atol=1e-4, rtol=1e-4)


def test_dynamic_img_size_follows_timm_position_resampling_and_grid():
    m = tiny("vit_small_patch16_224", dynamic_img_size=True).eval()
    cfg = copy.deepcopy(ON)
    ours = ours_like(m, cfg, 1)
    # our ViT with timm's position resampling instead of MCTformer's: the rest (HFA grid, DOEI) must agree
    ours.pos_embed_for = lambda grid: resample_abs_pos_embed(ours.pos_embed, new_size=grid, old_size=(4, 4),
                                                             num_prefix_tokens=1)
    plug(m, cfg)
    x = image(2, 40, 56)
    with torch.no_grad():
        got = m.forward_features(x)
        want = ours.norm(ours.forward_features(x).tokens)
    assert m.doei_plug.grid == (5, 7) and got.shape == (2, 1 + 35, 32)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_registers_are_neither_class_nor_patch_tokens():
    """DINOv2-reg (cls + 4 registers): C = 1, registers pass through DOEI untouched; 'prefix' makes C = 5."""
    m = tiny("vit_small_patch14_reg4_dinov2").eval()
    raw, after = {}, {}
    m.blocks[0].register_forward_hook(lambda mod, a, out: raw.__setitem__("x", out))
    plug(m, copy.deepcopy(ON))
    p = get_plug(m)
    assert (p.num_cls, p.num_prefix) == (1, 5)
    m.blocks[0].register_forward_hook(lambda mod, a, out: after.__setitem__("x", out))
    with torch.no_grad(), p.recording([1]):
        m(image())
        attn = p.recorded[1]
    x, y = raw["x"], after["x"]
    assert torch.equal(y[:, 1:5], x[:, 1:5])                          # registers untouched
    assert not torch.allclose(y[:, 5:], x[:, 5:])                     # patches moved
    # exactly DOEI on the sequence without the registers
    from doei.core import doei_update, hfa_affinity
    keep = torch.tensor([0, *range(5, x.shape[1])])
    embed = m.patch_embed(image())
    g_hat = hfa_affinity(image(), embed, (4, 4), 8)
    want = doei_update(x[:, keep], attn[:, keep][:, :, keep], 1, 1, 3, ON, g_hat)
    torch.testing.assert_close(y[:, keep], want)
    unplug(m)
    plug(m, copy.deepcopy(ON), class_tokens="prefix")
    assert m.doei_plug.num_cls == 5
    m.blocks[0].register_forward_hook(lambda mod, a, out: after.__setitem__("x", out))
    with torch.no_grad():
        m(image())
    assert not torch.allclose(after["x"][:, 1:5], raw["x"][:, 1:5])   # registers now act as class tokens


def test_batch_independence_and_finite_gradients():
    m = tiny("deit_tiny_patch16_224").eval()
    plug(m, copy.deepcopy(ON))
    x = image(3)
    with torch.no_grad():
        both = m(x)
        alone = torch.cat([m(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(both, alone, atol=1e-5, rtol=1e-5)
    p = m.doei_plug
    assert p._g_hat is None and p._attn == {} and p._image is None    # per-pass state freed after the pass
    m.train()
    m(x).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_torch_compile_works_and_follows_config_changes():
    m = tiny("deit_tiny_patch16_224").eval()
    ref = copy.deepcopy(m)
    plug(m, copy.deepcopy(ON))
    x = image()
    compiled = torch.compile(m, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x), atol=0, rtol=0)
        m.doei_plug.cfg.enabled = False
        assert torch.equal(compiled(x), ref(x))


def test_torch_jit_script_is_refused():
    m = tiny("deit_tiny_patch16_224").eval()
    plug(m)
    with pytest.raises(RuntimeError, match="timm_plugin"):   # TorchScript cannot compile DOEI's hooks
        torch.jit.script(m)
    with pytest.raises(DoeiError, match="scripted"):
        plug(torch.jit.script(tiny("deit_tiny_patch16_224").eval()))


def test_default_config_uses_cpdo_only_with_several_class_tokens():
    assert plug(tiny("deit_tiny_patch16_224")).doei_plug.cfg.cpdo is False
    assert plug(tiny("deit_tiny_distilled_patch16_224")).doei_plug.cfg.cpdo is True


@pytest.mark.parametrize("make,match", [
    (lambda: tiny("vit_small_patch16_224", class_token=False, global_pool="avg"), "no class or prefix tokens"),
    (lambda: tiny("vit_betwixt_patch16_reg1_gap_256"), "class_tokens='prefix'"),
    (lambda: tiny("vit_small_patch16_224", patch_drop_rate=0.5), "patch dropout"),
    (lambda: torch.nn.Linear(3, 3), "no `blocks`"),
    (lambda: plug(tiny("deit_tiny_patch16_224")), "already has DOEI plugged"),
])
def test_refusals_are_one_line(make, match):
    with pytest.raises(DoeiError, match=match) as e:
        plug(make(), copy.deepcopy(ON))
    assert "\n" not in str(e.value)


def test_refusals_at_run_time_and_bad_options():
    m = tiny("deit_tiny_patch16_224")
    with pytest.raises(DoeiError, match="beyond the network's depth"):
        plug(m, DOEIConfig(enabled=True, layers=[4]))
    with pytest.raises(DoeiError, match="class_tokens"):
        plug(m, class_tokens="all")
    with pytest.raises(DoeiError, match="has no DOEI plugged"):
        unplug(m)
    plug(m)
    m.set_grad_checkpointing(True)
    with pytest.raises(DoeiError, match="gradient checkpointing"):
        m(image())
    m.set_grad_checkpointing(False)
    with pytest.raises(DoeiError, match="outside a model forward pass"):
        m.blocks[0](torch.randn(1, 17, 32))
    assert m(image()).shape == (2, 5)


def test_deepcopy_of_a_plugged_model_is_an_independent_plugged_model():
    m = plug(tiny("deit_tiny_patch16_224").eval(), copy.deepcopy(ON))
    c = copy.deepcopy(m)
    assert get_plug(c) is not get_plug(m) and get_plug(c).model is c
    with torch.no_grad():
        assert torch.equal(c(image()), m(image()))
    unplug(c)
    assert hooks(c) == 0 and hooks(m) > 0
