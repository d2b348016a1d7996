"""Evaluation: int64 confusion counts, official-exact IoU/FP/FN, and the one-pass β sweep.

See docs/evaluation.md. Modules: ``metrics`` (counts -> scores), ``sweep`` (CAM -> labels, counts for
many β in one pass), ``reading`` (lists, PNGs, CAM files), ``evaluate`` (streaming over a directory),
``report`` (JSON dict and table), ``class_names``.
"""
