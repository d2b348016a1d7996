"""DOEI as a plug-in for timm Vision Transformers: ``plug(model, DOEIConfig(enabled=True))``.

The model is changed in place through forward hooks only: same parameters, same ``state_dict``
keys, same forward signature, so a training script that builds a timm ViT keeps working unchanged.
:func:`unplug` removes every hook and restores the attention settings.

How it works (per forward pass):

* a pre-hook on ``patch_embed`` keeps the image x [B, 3, H, W] (HFA's RGB patches) and switches the
  blocks whose attention probabilities are needed this pass to timm's explicit attention path
  (``attn.fused_attn = False``); every other block keeps its original setting. With DOEI off and no
  CAM recording, nothing is switched and the model computes exactly what it computed before;
* a hook on ``patch_embed``'s output keeps E [B, P, D] and the patch grid (h, w), read from the output
  itself (so timm's ``dynamic_img_size`` and its position-embedding resampling are followed), and
  computes HFA's Ĝ [B, P, P] once (``doei.core.hfa_affinity``);
* a pre-hook on each block's ``attn.attn_drop`` reads the softmax probabilities [B, heads, T, T] (in
  timm's explicit path they pass through that dropout) and keeps their head mean [B, T, T];
* a hook on each block's output applies ``doei.core.doei_update`` — exactly what this project's
  ``models/vit.py`` does between its blocks.

Cost: the explicit path materialises the attention [B, heads, T, T] instead of timm's fused
``scaled_dot_product_attention`` (benchmarks/timm_plugin_overhead.py measures it).

Which prefix tokens are DOEI's class tokens (``class_tokens``):

* ``"class"`` (default): the class token and, in distilled DeiT, the distillation token (both are
  trained to predict the image's classes, so both are class tokens in DOEI's sense: C = 2, CPDO
  between them). Register tokens (DINOv2-reg, ``*_reg*`` models) are neither class nor patch tokens:
  they carry no class (Darcet et al. add them to soak up global, non-local computation), so DOEI
  leaves them untouched and reads no score from them. A model with registers but no class token is
  refused in this mode;
* ``"prefix"``: every prefix token is a class token (C = ``num_prefix_tokens``), registers included.

Refused (one-line ``DoeiError``): no prefix/class tokens, blocks whose attention is not timm's
``Attention``-style module (``fused_attn`` flag and an ``attn_drop`` after the softmax), non-square or
overlapping patches, active patch dropout (the token count no longer matches the grid), gradient
checkpointing (blocks re-run in backward, after DOEI's per-pass state is gone) and
``torch.jit.script`` (forward hooks are not scriptable).
"""
from __future__ import annotations

import contextlib
import functools
from typing import Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from doei.core import DOEIConfig, doei_update, hfa_affinity
from doei.errors import DoeiError
from doei.utils.checks import expect_type

CLASS_TOKEN_MODES = ("class", "prefix")


class DoeiPlug:
    """The hooks and per-pass state of DOEI plugged into one timm ViT (``model.doei_plug``).

    Attributes: ``cfg`` (the :class:`DOEIConfig`; mutate it or assign a new one between passes),
    ``num_cls`` (C, DOEI's class tokens, first in the sequence), ``num_prefix`` (all prefix tokens;
    the tokens between C and ``num_prefix`` are registers, passed through), ``depth`` (L),
    ``patch_size``, ``stats`` (set to [] to record per-block DOEI statistics, as ``doei_stats``).
    """

    def __init__(self, model: nn.Module, cfg: DOEIConfig, class_tokens: str = "class") -> None:
        if class_tokens not in CLASS_TOKEN_MODES:
            raise DoeiError(f"class_tokens={class_tokens!r}: expected one of {', '.join(CLASS_TOKEN_MODES)}")
        name = type(model).__name__
        blocks = getattr(model, "blocks", None)
        if not isinstance(blocks, nn.Module) or len(blocks) == 0:
            raise DoeiError(f"{name}: no `blocks` to plug DOEI between (expected a timm VisionTransformer)")
        prefix = getattr(model, "num_prefix_tokens", None)
        if not isinstance(prefix, int):
            raise DoeiError(f"{name}: no integer `num_prefix_tokens` (expected a timm VisionTransformer)")
        num_reg = int(getattr(model, "num_reg_tokens", 0) or 0)
        num_cls = prefix - num_reg if class_tokens == "class" else prefix
        if num_cls < 1:
            what = f"{num_reg} register token(s) and no class token" if prefix else "no class or prefix tokens"
            hint = "; pass class_tokens='prefix' to treat the registers as class tokens" if prefix else ""
            raise DoeiError(f"{name}: DOEI needs class tokens, the model has {what}{hint}")
        for i, blk in enumerate(blocks):
            attn = getattr(blk, "attn", None)
            if not hasattr(attn, "fused_attn") or not isinstance(getattr(attn, "attn_drop", None), nn.Module):
                raise DoeiError(f"{name}: blocks[{i}].attn is {type(attn).__name__}, expected timm's Attention "
                                "(a fused_attn flag and attn_drop after the softmax)")
        self.patch_size = _patch_size(model)
        if not isinstance(getattr(model, "patch_drop", None), (nn.Identity, type(None))):
            raise DoeiError(f"{name}: patch dropout (patch_drop_rate > 0) changes the token count; "
                            "DOEI needs every patch (build the model with patch_drop_rate=0)")
        try:
            cfg.validate_depth(len(blocks))
            cfg.refuse_readings("the timm plug-in")
        except ValueError as e:
            raise DoeiError(str(e)) from None
        self.model = model
        self.cfg = cfg
        self.num_cls = num_cls
        self.num_prefix = prefix
        self.depth = len(blocks)
        self.stats: list[dict] | None = None
        self._fused = [bool(blk.attn.fused_attn) for blk in blocks]
        self._record: set[int] = set()
        self.recorded: dict[int, Tensor] = {}     # 1-based block -> [B, T, T] while recording
        self.grid: tuple[int, int] | None = None  # patch grid of the last pass
        self._reset()
        embed = model.patch_embed
        self._handles = [embed.register_forward_pre_hook(self._before_embed),
                         embed.register_forward_hook(self._after_embed)]
        for i, blk in enumerate(blocks, start=1):
            self._handles.append(blk.attn.attn_drop.register_forward_pre_hook(functools.partial(self._capture, i)))
            self._handles.append(blk.register_forward_hook(functools.partial(self._after_block, i)))

    def __repr__(self) -> str:
        c = self.cfg
        if c.enabled:
            parts = "+".join(n for n, on in (("PPDO", c.ppdo), ("CPDO", c.cpdo and self.num_cls > 1), ("HFA", c.hfa))
                             if on) or "nothing"
            blocks = sorted(self._doei_blocks())
            where = f"blocks {blocks[0]}..{blocks[-1]}" if blocks == list(range(blocks[0], blocks[-1] + 1)) \
                else f"blocks {blocks}"
            doei = f"DOEI on ({parts} after {where}; st_p2c={c.st_p2c}, af_p2c={c.af_p2c}, alpha={c.alpha})"
        else:
            doei = "DOEI off (the model's own output)"
        regs = self.num_prefix - self.num_cls
        tokens = f"{self.num_cls} class token{'s' if self.num_cls != 1 else ''}" + (f" + {regs} passed through"
                                                                                 if regs else "")
        return (f"DoeiPlug({type(self.model).__name__}, {self.depth} blocks, patch {self.patch_size}, {tokens}, "
                f"{doei})")

    # -- per-pass state --------------------------------------------------------------------------
    def _reset(self) -> None:
        self._image: Tensor | None = None
        self._g_hat: Tensor | None = None
        self._attn: dict[int, Tensor] = {}
        self._need: set[int] = set()
        self._active = False

    def _doei_blocks(self) -> set[int]:
        return {i for i in range(1, self.depth + 1) if self.cfg.applies_to(i, self.depth)}

    def _before_embed(self, module: nn.Module, args: tuple) -> None:
        if getattr(self.model, "grad_checkpointing", False):
            raise DoeiError("gradient checkpointing re-runs blocks in backward, after DOEI's per-pass state is "
                            "gone; call model.set_grad_checkpointing(False) on a DOEI-plugged model")
        self._reset()
        self._need = self._doei_blocks() | self._record
        for i, blk in enumerate(self.model.blocks, start=1):
            blk.attn.fused_attn = self._fused[i - 1] and i not in self._need
        if self._record:
            self.recorded = {}
        if self._need:
            self._image = args[0]
            self._active = True

    def _after_embed(self, module: nn.Module, args: tuple, out: Tensor) -> None:
        if not self._active:
            return
        if not isinstance(out, Tensor) or out.ndim not in (3, 4):
            raise DoeiError(f"patch_embed returned {type(out).__name__}: expected tokens [B, P, D] or [B, h, w, D]")
        x = self._image
        p = self.patch_size
        if out.ndim == 4:                                 # NHWC (timm's dynamic_img_size)
            grid = (out.shape[1], out.shape[2])
            embed = out.reshape(out.shape[0], -1, out.shape[-1])
        else:
            grid = (-(-x.shape[-2] // p), -(-x.shape[-1] // p)) if _pads(module) else \
                (x.shape[-2] // p, x.shape[-1] // p)
            embed = out
        if grid[0] * grid[1] != embed.shape[1]:
            raise DoeiError(f"patch_embed gave {embed.shape[1]} tokens for a {grid[0]}x{grid[1]} grid of "
                            f"{p}-px patches: DOEI needs one token per non-overlapping patch")
        self.grid = grid
        if self.cfg.uses_hfa:
            ph, pw = grid[0] * p - x.shape[-2], grid[1] * p - x.shape[-1]
            if ph > 0 or pw > 0:                          # timm's dynamic_img_pad pads right/bottom with 0
                x = F.pad(x, (0, max(pw, 0), 0, max(ph, 0)))
            self._g_hat = hfa_affinity(x, embed, grid, p)
        self._image = None

    def _capture(self, block: int, module: nn.Module, args: tuple) -> None:
        if self._active and block in self._need:
            self._attn[block] = args[0].mean(dim=1)

    def _after_block(self, block: int, module: nn.Module, args: tuple, out: Tensor) -> Tensor | None:
        if not self._active:
            if block in self._doei_blocks():
                raise DoeiError(f"block {block} ran outside a model forward pass (patch_embed did not run "
                                "first): DOEI needs the image and the attention of this pass")
            return None
        attn = self._attn.pop(block, None)
        if block in self._need and attn is None:
            raise DoeiError(f"block {block}: {type(module.attn).__name__} did not pass its attention "
                            "probabilities through attn_drop; DOEI cannot read them")
        if block in self._record:
            self.recorded[block] = attn
        new = None
        if self.cfg.applies_to(block, self.depth):
            new = self._update(out, attn, block)
        if block == self.depth:
            self._reset()                                  # free Ĝ after the last block
        return new

    def _update(self, x: Tensor, attn: Tensor, block: int) -> Tensor:
        """DOEI on tokens x [B, T, D] with head-mean attention [B, T, T]; registers pass through."""
        c, n = self.num_cls, self.num_prefix
        stats = {} if self.stats is not None else None
        if c == n:
            y = doei_update(x, attn, c, block, self.depth, self.cfg, self._g_hat, stats)
        else:                                             # drop register rows/columns, DOEI, put them back
            keep = torch.cat([torch.arange(c), torch.arange(n, x.shape[1])]).to(x.device)
            sub = doei_update(x[:, keep], attn[:, keep][:, :, keep], c, block, self.depth, self.cfg,
                              self._g_hat, stats)
            y = torch.cat([sub[:, :c], x[:, c:n], sub[:, c:]], dim=1)
        if stats and self.stats is not None:
            self.stats.append({"block": block, **stats})
        return y

    # -- public ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def recording(self, blocks: Iterable[int]) -> Iterator[dict[int, Tensor]]:
        """Keep the head-mean attention [B, T, T] of the 1-based ``blocks`` of every pass (for CAMs).

        Yields nothing useful itself: read ``plug.recorded`` (block -> attention of the latest pass)
        and ``plug.grid`` after each forward. Recorded blocks run on the explicit attention path.
        On exit the recording stops and the kept tensors are released.
        """
        blocks = set(int(b) for b in blocks)
        if any(not 1 <= b <= self.depth for b in blocks):
            raise DoeiError(f"blocks {sorted(blocks)}: expected 1..{self.depth} (the model's depth)")
        previous = self._record
        self._record = previous | blocks
        try:
            yield self.recorded
        finally:
            self._record = previous
            self.recorded = {}

    def remove(self) -> None:
        """Remove every hook and restore each block's original ``fused_attn`` setting."""
        for h in self._handles:
            h.remove()
        self._handles = []
        for blk, fused in zip(self.model.blocks, self._fused):
            blk.attn.fused_attn = fused
        self._reset()
        self.recorded = {}


def plug(model: nn.Module, cfg: DOEIConfig | None = None, class_tokens: str = "class") -> nn.Module:
    """Plug DOEI between the blocks of a timm ViT, in place; returns ``model`` itself.

    ``cfg`` defaults to ``DOEIConfig(enabled=True, cpdo=C > 1)`` (PPDO + HFA, and CPDO when there is
    more than one class token). The plug lives at ``model.doei_plug`` (a plain attribute, not a
    module: parameters and ``state_dict`` keys are unchanged). See the module docstring for
    ``class_tokens`` and what is refused.
    """
    expect_type("plug", "model", model, nn.Module, "a torch.nn.Module (a timm ViT)",
                "build it first, e.g. timm.create_model(name)" if isinstance(model, str) else "")
    expect_type("plug", "cfg", cfg, (DOEIConfig, type(None)), "a doei.core.config.DOEIConfig or None",
                "e.g. DOEIConfig(**settings)" if isinstance(cfg, dict) else "")
    expect_type("plug", "class_tokens", class_tokens, str, "a string")
    if isinstance(model, torch.jit.ScriptModule):
        raise DoeiError("a torch.jit scripted model cannot take DOEI's forward hooks; plug the eager model")
    if get_plug(model) is not None:
        raise DoeiError(f"{type(model).__name__} already has DOEI plugged (call unplug(model) first)")
    p = DoeiPlug(model, cfg if cfg is not None else DOEIConfig(enabled=True), class_tokens)
    if cfg is None:
        p.cfg.cpdo = p.num_cls > 1
    model.doei_plug = p
    return model


def unplug(model: nn.Module) -> nn.Module:
    """Remove DOEI from a plugged model (hooks, attention settings, ``model.doei_plug``); returns it."""
    expect_type("unplug", "model", model, nn.Module, "a torch.nn.Module that plug() was given")
    p = get_plug(model)
    if p is None:
        raise DoeiError(f"{type(model).__name__} has no DOEI plugged")
    p.remove()
    del model.__dict__["doei_plug"]
    return model


def get_plug(model: nn.Module) -> DoeiPlug | None:
    """The :class:`DoeiPlug` of a plugged model, or None."""
    expect_type("get_plug", "model", model, nn.Module, "a torch.nn.Module")
    p = model.__dict__.get("doei_plug")
    return p if isinstance(p, DoeiPlug) else None


def _patch_size(model: nn.Module) -> int:
    """Pixel size of the model's square, non-overlapping patches (refuses anything else)."""
    name = type(model).__name__
    embed = getattr(model, "patch_embed", None)
    ps = getattr(embed, "patch_size", None)
    if ps is None:
        raise DoeiError(f"{name}: no patch_embed.patch_size (HFA needs the model's own patch embedding)")
    ps = (ps, ps) if isinstance(ps, int) else tuple(ps)
    if len(ps) != 2 or ps[0] != ps[1]:
        raise DoeiError(f"{name}: patch size {ps}: HFA needs square patches")
    proj = getattr(embed, "proj", None)
    if isinstance(proj, nn.Conv2d) and (tuple(proj.stride) != ps or tuple(proj.kernel_size) != ps):
        raise DoeiError(f"{name}: patch_embed.proj has kernel {tuple(proj.kernel_size)} and stride "
                        f"{tuple(proj.stride)}: HFA needs non-overlapping {ps[0]}-px patches")
    return int(ps[0])


def _pads(embed: nn.Module) -> bool:
    return bool(getattr(embed, "dynamic_img_pad", False))
