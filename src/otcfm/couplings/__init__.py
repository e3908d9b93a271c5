"""Minibatch couplings q(x0, x1): which source sample is paired with which target sample.

Every coupling is called as ``coupling(x0, x1, generator=g, cond0=..., cond1=...)`` and
returns a :class:`Pairing` (paired samples in the input shape and dtype, index tensors i, j,
the conditions indexed alike, and solver diagnostics in ``info``). Costs are squared
Euclidean distances between flattened samples, computed in ``cost_dtype``. Couplings solved
iteratively to a tolerance (``reports_convergence``: entropic, unbalanced) report how each
solve ended as ``pairing.convergence`` (a :class:`Convergence`: converged, marginal error,
iterations, tol) and, with ``on_fail="raise"``, raise :class:`ConvergenceError` instead of
warning (:class:`ConvergenceWarning`) when they stop short.

- :class:`Independent`: q0 x q1 (I-CFM).
- :class:`ExactOT`: exact minibatch OT (OT-CFM); one-to-one on equal batches.
- :class:`EntropicOT`: entropic OT, reg = 2 sigma^2 for SB-CFM.
- :class:`UnbalancedOT`: entropic OT with KL-relaxed marginals.
- :class:`PartialOT`: exact OT of a fraction ``mass`` of the mass.
- :class:`ByClass`: any of these solved within each class of the labels ``cond[key]``
  (condition-aware OT: never pairs across classes); the spec option ``within=y``.

``coupling(name, **kw)`` builds one by its registry name (see ``COUPLINGS.names()``) or by a
spec with options, ``"name:key=value,..."`` (:func:`coupling_spec`; configs and the command
line use this form). Every spec takes the option ``within=KEY`` (``"exact:within=y"``): the
coupling is then solved within each class of the integer labels ``cond1[KEY]`` (and
``cond0[KEY]``, or labels assigned from the target's), a :class:`ByClass`.

Before solving, a call checks that its cost matrix and solver workspace
(:meth:`Coupling.memory_need`, an estimate) fit in the memory available, and raises
:class:`CouplingMemoryError` with the sizes otherwise (:func:`check_memory`).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any

from otcfm._utils import Registry
from otcfm.couplings._approx import ApproxOT
from otcfm.couplings._base import (
    Convergence,
    ConvergenceError,
    ConvergenceWarning,
    Coupling,
    CouplingMemoryError,
    MemoryNeed,
    Pairing,
    available_memory,
    check_memory,
)
from otcfm.couplings._by_class import ByClass
from otcfm.couplings._entropic import EntropicOT, UnbalancedOT
from otcfm.couplings._exact import ExactOT, Independent, PartialOT

COUPLINGS: Registry[Coupling] = Registry("coupling")
for _cls in (Independent, ExactOT, EntropicOT, UnbalancedOT, PartialOT, ApproxOT):
    COUPLINGS.register(_cls.name)(_cls)
del _cls


def coupling_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"name"`` or ``"name:key=value,key=value"`` into (COUPLINGS name, keywords).

    Values are read as Python literals (numbers, True, False, None, quoted strings), anything
    else as a plain string: ``"exact:sampling=plan"``, ``"approx:tol=0.001"``,
    ``"entropic:reg=0.5,tol=1e-4"``. This is how configs and ``--coupling`` set options.
    """
    name, sep, rest = spec.partition(":")
    name, kwargs = name.strip(), {}
    for item in rest.split(",") if sep else ():
        key, eq, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not eq or not key.isidentifier() or not raw or key in kwargs:
            raise ValueError(
                f"coupling spec {spec!r}: options must be distinct key=value pairs separated by "
                f"commas after the name, e.g. 'exact:sampling=plan,replace=False'"
            )
        try:
            kwargs[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            kwargs[key] = raw
    COUPLINGS.factory(name)  # unknown names raise ValueError listing the valid ones
    return name, kwargs


def coupling(name: str, **kwargs: Any) -> Coupling:
    """Build the coupling registered as ``name``.

    E.g. ``coupling("entropic", reg=0.5)``. ``name`` may be a spec with options,
    ``coupling("exact:sampling=plan")``; keywords win. ``within="y"`` (or ``"exact:within=y"``)
    wraps it in :class:`ByClass` (pairs only within the classes of the labels ``y``).
    """
    name, options = coupling_spec(name)
    return build_coupling(COUPLINGS.factory(name), {**options, **kwargs})


def build_coupling(factory: Callable[..., Coupling], options: dict[str, Any]) -> Coupling:
    """Call ``factory(**options)``, wrapped in :class:`ByClass` when the options hold ``within``.

    ``factory(**options)``, wrapped in :class:`ByClass` when the options hold ``within``
    (the option every coupling spec accepts; the rest go to ``factory``).
    """
    options = dict(options)
    within = options.pop("within", None)
    inner = factory(**options)
    return inner if within is None else ByClass(inner, key=within)


__all__ = [
    "ApproxOT",
    "ByClass",
    "COUPLINGS",
    "Convergence",
    "ConvergenceError",
    "ConvergenceWarning",
    "Coupling",
    "CouplingMemoryError",
    "EntropicOT",
    "ExactOT",
    "Independent",
    "MemoryNeed",
    "Pairing",
    "PartialOT",
    "UnbalancedOT",
    "available_memory",
    "build_coupling",
    "check_memory",
    "coupling",
    "coupling_spec",
]
