"""The co-occurrence variant of the synthetic benchmark: the context bias strength as a parameter.

``bias`` = the probability that an image with a context class also shows that class's context: the
band of boat (water), train (rails), car (road) (``p_context``) and the tree of a house
(``p_companion``). The standard benchmark is bias 0.9 / 0.8; the variant sets both to ``bias`` (e.g.
0.5, 0.75, 0.9, 1.0) and keeps everything else, including the 5 % of other images that show a band
alone (``p_context_alone``), so the context stays a shortcut that is only *correlated* with the class.
One band per image: when two context classes meet, the first drawn gets its band (as in the standard
benchmark), so even bias 1.0 leaves a few images of a context class without its band.
"""
from __future__ import annotations

from doei.data.synth import SynthParams


def variant_params(bias: float) -> dict:
    """The :class:`SynthParams` fields the variant changes (``p_context``, ``p_companion``)."""
    bias = float(bias)
    SynthParams(p_context=bias, p_companion=bias).validate()
    return {"p_context": bias, "p_companion": bias}
