"""DOEI (Dual Optimization of Embedding Information): PPDO, CPDO and HFA as plain tensor functions.

See docs/doei-method.md (the precise reading this project implements).
"""
from doei.core.attention import ClassAttention, class_attention
from doei.core.config import DOEIConfig
from doei.core.doei import doei_update
from doei.core.hfa import hfa_affinity, hybrid_scores
from doei.core.selection import num_selected

__all__ = ["ClassAttention", "DOEIConfig", "class_attention", "doei_update", "hfa_affinity", "hybrid_scores", "num_selected"]
