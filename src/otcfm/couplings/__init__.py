"""Minibatch couplings q(x0, x1): which source sample is paired with which target sample.

Every coupling is called as ``coupling(x0, x1, generator=g, cond0=..., cond1=...)`` and
returns a :class:`Pairing` (paired samples in the input shape and dtype, index tensors i, j,
the conditions indexed alike, and solver diagnostics in ``info``). Costs are squared
Euclidean distances between flattened samples, computed in ``cost_dtype``.

- :class:`Independent`: q0 x q1 (I-CFM).
- :class:`ExactOT`: exact minibatch OT (OT-CFM); one-to-one on equal batches.
- :class:`EntropicOT`: entropic OT, reg = 2 sigma^2 for SB-CFM.
- :class:`UnbalancedOT`: entropic OT with KL-relaxed marginals.
- :class:`PartialOT`: exact OT of a fraction ``mass`` of the mass.

``coupling(name, **kw)`` builds one by its registry name (see ``COUPLINGS.names()``).
"""

from __future__ import annotations

from typing import Any

from otcfm._utils import Registry
from otcfm.couplings._approx import ApproxOT
from otcfm.couplings._base import ConvergenceWarning, Coupling, Pairing
from otcfm.couplings._entropic import EntropicOT, UnbalancedOT
from otcfm.couplings._exact import ExactOT, Independent, PartialOT

COUPLINGS: Registry[Coupling] = Registry("coupling")
for _cls in (Independent, ExactOT, EntropicOT, UnbalancedOT, PartialOT, ApproxOT):
    COUPLINGS.register(_cls.name)(_cls)
del _cls


def coupling(name: str, **kwargs: Any) -> Coupling:
    """Build the coupling registered as ``name`` (e.g. ``coupling("entropic", reg=0.5)``)."""
    return COUPLINGS.get(name, **kwargs)


__all__ = [
    "ApproxOT",
    "COUPLINGS",
    "ConvergenceWarning",
    "Coupling",
    "EntropicOT",
    "ExactOT",
    "Independent",
    "Pairing",
    "PartialOT",
    "UnbalancedOT",
    "coupling",
]
