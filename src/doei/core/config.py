"""DOEIConfig: the public knobs of DOEI (names fixed by docs/doei-method.md)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional


# The reading fields and their allowed values, today's reading (the default) first.
READINGS: dict[str, tuple[str, ...]] = {
    "hfa_target": ("scores", "attention", "additive"),
    "score_source": ("softmax", "logits"),
    "heads": ("mean", "each"),
    "suppress_target": ("class", "patch"),
    "rgb": ("normalised", "raw"),
}

# Controls (issue #24): DOEI with one ingredient replaced by a non-attention one, to tell "DOEI's selection
# helps" from "any shrinkage helps". Today's DOEI first. ``last_block`` (bool) and ``control_seed`` (int)
# complete them.
CONTROLS: dict[str, tuple[str, ...]] = {
    "select": ("attention", "random"),
    "weights": ("scores", "uniform"),
}


@dataclass
class DOEIConfig:
    """Configuration of DOEI's three parts: PPDO (patch tokens), CPDO (class tokens), HFA.

    ``st_*`` are the selection steps of Eq. 9/14 (share of candidates selected per block below the
    last), ``af_*`` the amplification factors (> 0), ``sf_*`` the suppression factors (<= 0),
    ``alpha`` the HFA blend (0 = off), ``layers`` the 1-based blocks DOEI acts after (None = all),
    ``suppress`` which candidates are suppressed: ``"rest"`` (all not confident) or ``"bottom"``
    (the bottom-k, symmetric with the top-k). The numeric defaults are the values chosen by this
    project's sweep on its benchmark (see docs/results.md); the paper prints none. ``sf_c2c`` is 0:
    suppressing the non-confident class tokens measured worse at every tried value (-0.1 … -0.5).
    """

    enabled: bool = False
    ppdo: bool = True
    cpdo: bool = True
    hfa: bool = True
    layers: Optional[list[int]] = None
    st_p2c: float = 0.02
    af_p2c: float = 1.0
    sf_p2c: float = -0.5
    st_c2c: float = 0.05
    af_c2c: float = 1.0
    sf_c2c: float = 0.0          # sweep: -0.5 cost 3.1 mIoU against 0 (3/3 seeds); CPDO amplifies only
    alpha: float = 0.35
    suppress: Literal["rest", "bottom"] = "rest"
    # Readings of the paper's text (docs/doei-method.md, "Named variants"); the first value is today's.
    hfa_target: Literal["scores", "attention", "additive"] = "scores"  # Eq. 17 on DOEI's scores / spread / as written
    score_source: Literal["softmax", "logits"] = "softmax"   # A_i after softmax / Eq. 1's QKᵀ/√d_k
    heads: Literal["mean", "each"] = "mean"                  # select on the head mean / in each head
    suppress_target: Literal["class", "patch"] = "class"     # Eq. 11's SF term multiplies X_c / the patch token
    rgb: Literal["normalised", "raw"] = "normalised"         # d_rgb from the network input / raw 0-255 RGB
    # Controls (issue #24, docs/doei-method.md "Controls"); the defaults are DOEI itself.
    select: Literal["attention", "random"] = "attention"     # top-k by the scores / k_i drawn at random per image
    weights: Literal["scores", "uniform"] = "scores"         # update weighted by each score / by the row's mean score
    last_block: bool = True                                  # act after block L too / only on blocks 1..L-1
    control_seed: int = 0                                    # seed of select="random"

    def __post_init__(self) -> None:
        if self.suppress not in ("rest", "bottom"):
            raise ValueError(f"suppress must be 'rest' or 'bottom', got {self.suppress!r}")
        for name, allowed in {**READINGS, **CONTROLS}.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        for name in ("st_p2c", "st_c2c"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not isinstance(self.last_block, bool):
            raise ValueError(f"last_block must be true or false, got {self.last_block!r}")
        if isinstance(self.control_seed, bool) or not isinstance(self.control_seed, int) or self.control_seed < 0:
            raise ValueError(f"control_seed must be an integer >= 0, got {self.control_seed!r}")
        if self.layers is not None:
            if any((not isinstance(i, int)) or i < 1 for i in self.layers):
                raise ValueError(f"layers must be 1-based block indices, got {self.layers}")
        for name in ("af_p2c", "af_c2c"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (an amplification factor), got {getattr(self, name)}")
        for name in ("sf_p2c", "sf_c2c"):
            if getattr(self, name) > 0:
                raise ValueError(f"{name} must be <= 0 (a suppression factor), got {getattr(self, name)}")

    def applies_to(self, block: int, depth: int) -> bool:
        """Whether DOEI acts after 1-based ``block`` of a ``depth``-block network."""
        if not self.enabled or not (self.ppdo or self.cpdo):
            return False
        if not self.last_block and block == depth:
            return False
        return block in self.layers if self.layers is not None else 1 <= block <= depth

    def check_effect(self, num_class_tokens: int) -> list[str]:
        """Settings that are "on" but can change nothing, for a model with ``num_class_tokens`` class tokens.

        Raises ValueError where DOEI as configured can do nothing at all (every enabled part has zero
        factors, or CPDO alone with one class token: there is no other class token to exchange with);
        returns warnings for a part that is enabled but inert while another part acts."""
        if not self.enabled:
            return []
        if self.layers is not None and not self.layers:
            raise ValueError("doei.layers [] names no block, so DOEI would do nothing (use null for every block, "
                             "or enabled: false)")
        inert: dict[str, str] = {}
        if self.ppdo and self.af_p2c == 0 and self.sf_p2c == 0:
            inert["PPDO"] = "af_p2c = sf_p2c = 0"
        if self.cpdo and self.af_c2c == 0 and self.sf_c2c == 0:
            inert["CPDO"] = "af_c2c = sf_c2c = 0"
        elif self.cpdo and num_class_tokens < 2:
            inert["CPDO"] = f"the model has {num_class_tokens} class token (CPDO exchanges between class tokens)"
        active = [p for p, on in (("PPDO", self.ppdo), ("CPDO", self.cpdo)) if on and p not in inert]
        if not active:
            why = "; ".join(f"{p}: {w}" for p, w in inert.items()) or "neither ppdo nor cpdo is on"
            raise ValueError(f"DOEI is enabled but can change nothing ({why}); set enabled: false or change the factors")
        return [f"DOEI: {p} is on but does nothing ({w})" for p, w in inert.items()]

    def validate_depth(self, depth: int) -> None:
        """Raise if ``layers`` names a block the network does not have."""
        if self.layers is not None and any(i > depth for i in self.layers):
            raise ValueError(f"layers {self.layers} name blocks beyond the network's depth {depth}")
        if self.enabled and not self.last_block and (depth == 1 or self.layers == [depth]):
            raise ValueError(f"last_block false leaves DOEI no block to act on (layers {self.layers}, depth {depth})")

    @property
    def uses_hfa(self) -> bool:
        """Whether Ĝ is needed: HFA on PPDO's scores, or (``hfa_target="attention"``) on the attention of
        the DOEI blocks, which also acts with CPDO alone."""
        if not (self.enabled and self.hfa and self.alpha > 0):
            return False
        return self.ppdo or (self.hfa_target != "scores" and self.cpdo)

    @property
    def hfa_on_attention(self) -> bool:
        """HFA changes the attention the DOEI blocks use (Eq. 17 on W_attn: ``hfa_target`` "attention" or
        "additive") instead of DOEI's scores."""
        return self.uses_hfa and self.hfa_target != "scores"

    @property
    def needs_full_attention(self) -> bool:
        """Whether a DOEI block needs its own eager T×T attention (per head or logits) rather than the class
        rows/columns of the head-mean probabilities: HFA on the attention (both readings change the matrix the
        block multiplies with V), pre-softmax scores, per-head selection. The controls (``select``,
        ``weights``, ``last_block``) read what today's DOEI reads."""
        return self.enabled and (self.hfa_on_attention or self.score_source != "softmax" or self.heads != "mean")

    def refuse_readings(self, who: str, supported: tuple[str, ...] = ("suppress_target", "weights", "last_block")) -> None:
        """Raise a one-line ValueError if a reading ``who`` does not implement is set away from its default."""
        bad = {k: v for k, v in self.nondefault_readings().items() if k not in supported}
        if self.enabled and bad:
            raise ValueError(f"{who} does not implement the DOEI reading(s) {bad} (only doei.models.vit does); "
                             f"leave {', '.join(bad)} at the default")

    def nondefault_readings(self) -> dict[str, object]:
        """The reading and control fields set away from today's DOEI (empty for the default)."""
        out: dict[str, object] = {k: getattr(self, k) for k, v in {**READINGS, **CONTROLS}.items()
                                  if getattr(self, k) != v[0]}
        if not self.last_block:
            out["last_block"] = False
        return out
