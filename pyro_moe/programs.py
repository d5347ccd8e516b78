"""What the harness needs to know about a Pyro program written as plain functions.

A researcher's model and guide are functions ``model(*args, **kwargs)`` and ``guide(...)`` with
``pyro.param`` / ``pyro.module`` parameters in Pyro's param store and their own site and plate
names. One traced run of each (:func:`inspect_program`) gives

* the parameters, by name: the param store's unconstrained tensors (the ones an optimiser
  updates), so a gradient row per ``pyro.param`` / ``pyro.module`` parameter;
* ``max_plate_nesting``: the deepest plate dim any site sits in;
* the discrete sites: the guide's latent sites with a discrete support (or those named);
* the data plate: the rightmost plate holding every one of those sites (the plate over data
  points, whatever its name).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro import poutine

from pyro_moe.errors import ConfigError
from pyro_moe.estimators.base import Estimator
from pyro_moe.estimators.sampled import discrete_sites


@dataclass
class ProgramInfo:
    """The facts :func:`inspect_program` finds (see the module docstring)."""

    groups: dict[str, list[torch.Tensor]]  # parameter name -> [its unconstrained tensor]
    max_plate_nesting: int
    sites: tuple[str, ...]
    data_plate: str | None


def _traces(model: Callable, guide: Callable, args: Sequence[Any], kwargs: dict):
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return model_trace, guide_trace


def _parameters(traces) -> dict[str, list[torch.Tensor]]:
    store = dict(pyro.get_param_store().named_parameters())  # unconstrained leaves
    names = [n for t in traces for n, s in t.nodes.items() if s["type"] == "param"]
    return {n: [store[n]] for n in dict.fromkeys(names) if n in store and store[n].requires_grad}


def _nesting(traces) -> int:
    dims = [
        -frame.dim
        for t in traces
        for s in t.nodes.values()
        if s["type"] == "sample"
        for frame in s["cond_indep_stack"]
        if frame.vectorized and frame.dim is not None
    ]
    return max(dims, default=0)


def _data_plate(guide_trace, sites: Sequence[str]) -> str | None:
    """The rightmost plate shared by all ``sites`` (None if they share none)."""
    stacks = [
        {f.name: f.dim for f in guide_trace.nodes[n]["cond_indep_stack"] if f.vectorized}
        for n in sites
    ]
    shared = set.intersection(*(set(s) for s in stacks)) if stacks else set()
    return max(shared, key=lambda name: stacks[0][name]) if shared else None


def inspect_program(
    model: Callable,
    guide: Callable,
    args: Sequence[Any],
    kwargs: dict,
    sites: Sequence[str] | None = None,
) -> ProgramInfo:
    """Run ``guide`` and ``model`` once and read off :class:`ProgramInfo`."""
    model_trace, guide_trace = _traces(model, guide, args, kwargs)
    names = tuple(discrete_sites(guide_trace, sites))
    groups = _parameters((guide_trace, model_trace))
    if not groups:
        raise ConfigError("the program has no parameters that require gradients (pyro.param)")
    nesting = _nesting((guide_trace, model_trace))
    return ProgramInfo(groups, nesting, names, _data_plate(guide_trace, names))


def configure(estimator: Estimator, info: ProgramInfo) -> Estimator:
    """Point ``estimator`` at the program's discrete sites and data plate."""
    estimator.sites = info.sites or None
    if info.data_plate is not None:
        estimator.data_plate = info.data_plate
    return estimator
