"""The objectives estimators estimate, computed exactly by enumerating the discrete latents.

Every estimator declares the objective it is unbiased for (``Estimator.unbiased_for``, a name in
:data:`OBJECTIVES`). Here each objective is computed exactly, as a differentiable tensor, so its
autograd gradient is the exact gradient the estimator's mean must match.

The guide's discrete sites (every latent site with a discrete support, or those named by
``sites``) must lie in the ``data`` plate. For data point n they take A = prod_i K_i^{m_i} joint
values a (site i has K_i categories and m_i cells per point: m_i = L for the L latents of a
categorical VAE, 1 for a mixture's ``cluster``). One vectorised run of the guide (with every a
put in) and of the model (replaying it) gives the table

    f[a, n]  = log p(x_n, c_n = a) - log q(c_n = a | x_n)      (point n's ELBO term, scaled)
    lq[a, n] = log q(c_n = a | x_n)

(:func:`assignment_table`; the same per-point reduction the sampling estimators use,
:func:`~pyro_moe.estimators.sampled.point_costs`) and from it

    elbo                = sum_n sum_a q(a|n) f[a, n]
    multi-sample-bound  = sum_n sum_{a_1..a_S} prod_s q(a_s|n) log (1/S) sum_s exp f[a_s, n]

with S the estimator's ``num_particles`` (A^S terms per point; for a subsampled ``data`` plate
the bound is taken on the unscaled terms and then scaled, as ``vimco`` does). When the model has
discrete latent sites the guide leaves to it (the MoE's ``none`` guide), the ELBO comes from
``TraceEnum_ELBO`` instead, which sums them out exactly.

Out of reach (:class:`NotEnumerable`): continuous latent sites in the guide (the expectation over
them has no finite sum), a discrete site outside the ``data`` plate, or more than
:data:`MAX_TERMS` terms. The variance harness then measures against a reference gradient instead
(:mod:`pyro_moe.variance`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, config_enumerate
from pyro.poutine.messenger import Messenger

from pyro_moe.errors import ConfigError
from pyro_moe.estimators.sampled import (
    _sample_sites,
    discrete_sites,
    in_plate,
    is_discrete,
    point_costs,
    run_traces,
)
from pyro_moe.registry import Registry

#: the most (assignment x point) terms an exact objective sums before it gives up
MAX_TERMS = 2_000_000

#: name -> ``fn(table, estimator) -> objective`` (a scalar tensor, to be maximised)
OBJECTIVES: Registry[Callable] = Registry("objective")


class NotEnumerable(ConfigError):
    """The exact objective is out of reach for this program (the message says why)."""


@dataclass
class Table:
    """Every joint assignment of one point's discrete latents: ``f``, ``logq`` are ``[A, N]``."""

    f: torch.Tensor
    logq: torch.Tensor
    scale: float


class PutValues(Messenger):
    """Set the value of the named sample sites (they stay latent, so the model can replay them)."""

    def __init__(self, values: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.values = values

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if msg["name"] in self.values:
            msg["value"] = self.values[msg["name"]]


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


def _probe(guide, args, kwargs, nesting: int, sites: Sequence[str] | None, plate: str):
    """One run of the guide inside size-1 estimates/particles plates: its trace and the sites."""
    with poutine.block():
        _, trace = run_traces(_nothing, guide, args, kwargs, 1, 1, nesting)
    names = discrete_sites(trace, sites)
    others = [
        s["name"]
        for s in _sample_sites(trace)
        if not s["is_observed"] and s["name"] not in names and not is_discrete(s)
    ]
    if others:
        raise NotEnumerable(
            f"the guide samples continuous site(s) {', '.join(others)}: no finite sum over them"
        )
    outside = [n for n in names if not in_plate(trace.nodes[n], plate)]
    if outside:
        raise NotEnumerable(
            f"exact objectives need the discrete guide sites in the `{plate}` plate; "
            f"{', '.join(outside)} lie outside it"
        )
    if not names:  # the model's own discrete sites, if any, are summed out by TraceEnum_ELBO
        raise _ModelSums([])
    return trace, names


def _cells(site: dict) -> tuple[torch.Size, int]:
    """A site's cell shape per point (dims between the particles plate and ``data``) and its
    number of categories."""
    value = site["value"]
    support = site["fn"].enumerate_support(expand=False)
    return value.shape[2:-1], int(support.shape[0])


def joint_assignments(trace, names: Sequence[str], nesting: int) -> dict[str, torch.Tensor]:
    """For every site, its values under each of the A joint assignments: ``[A, 1, *cells, N]``."""
    shapes = {n: _cells(trace.nodes[n]) for n in names}
    digits = [(n, shapes[n][1]) for n in names for _ in range(math.prod(shapes[n][0]))]
    total = math.prod(k for _, k in digits)
    points = trace.nodes[names[0]]["value"].shape[-1]
    if total * points > MAX_TERMS:
        sizes = ", ".join(f"{n}: {shapes[n][1]}^{math.prod(shapes[n][0])}" for n in names)
        raise NotEnumerable(
            f"{total:.3g} joint values per point ({sizes}) x {points} points: more than "
            f"{MAX_TERMS:,} terms to sum"
        )
    index = torch.arange(total)
    values: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for name, k in digits:  # mixed radix: the first cell varies slowest
        total //= k
        values[name].append((index // total) % k)
    out = {}
    for name in names:
        cells, _ = shapes[name]
        n_points = trace.nodes[name]["value"].shape[-1]
        v = torch.stack(values[name], -1).reshape((-1, 1) + tuple(cells) + (1,))
        out[name] = v.expand(v.shape[:-1] + (n_points,)).to(trace.nodes[name]["value"].device)
    return out


def assignment_table(
    model, guide, args: Sequence[Any], kwargs: dict, nesting: int, sites=None, plate: str = "data"
) -> Table:
    """The table of the module docstring for ``model`` and ``guide`` on ``args`` (``plate``: the
    data plate's name)."""
    trace, names = _probe(guide, args, kwargs, nesting, sites, plate)
    values = joint_assignments(trace, names, nesting)
    a = next(iter(values.values())).shape[0]
    model_trace, guide_trace = run_traces(
        model, PutValues(values)(guide), args, kwargs, a, 1, nesting
    )
    extra = [
        s["name"]
        for s in _sample_sites(model_trace)
        if is_discrete(s) and s["name"] not in guide_trace.nodes
    ]
    if extra:
        raise _ModelSums(extra)
    costs = point_costs(model_trace, guide_trace, nesting, names, plate=plate)
    return Table(costs.f[:, 0], costs.logq[:, 0], costs.scale)


class _ModelSums(Exception):
    """The model has discrete latent sites of its own (summed out by TraceEnum_ELBO)."""


def exact_objective(estimator, model, guide, *args: Any, **kwargs: Any) -> torch.Tensor:
    """The exact objective ``estimator.unbiased_for`` (a scalar tensor; differentiate it for the
    exact gradient). Raises :class:`NotEnumerable` when out of reach."""
    name = estimator.unbiased_for
    if name is None:
        raise ConfigError(f"estimator {estimator.name!r} is biased: it declares no objective")
    return objective(name, estimator, model, guide, args, kwargs)


def objective(name: str, estimator, model, guide, args, kwargs) -> torch.Tensor:
    """The exact objective ``name`` (see :data:`OBJECTIVES`) for ``estimator``'s options: its
    ``num_particles``, ``max_plate_nesting``, ``sites`` and ``data_plate``."""
    nesting = estimator.max_plate_nesting
    try:
        table = assignment_table(
            model, guide, args, kwargs, nesting, estimator.sites, estimator.data_plate
        )
    except _ModelSums as e:
        if name != "elbo":
            raise NotEnumerable(
                f"objective {name!r} needs every discrete latent in the guide; the model samples "
                f"{', '.join(e.args[0]) or 'them'} itself"
            ) from None
        return -_traceenum_loss(model, guide, args, kwargs, nesting)
    return OBJECTIVES[name](table, estimator)


def _traceenum_loss(model, guide, args, kwargs, nesting: int) -> torch.Tensor:
    elbo = TraceEnum_ELBO(max_plate_nesting=nesting)
    enumerated = config_enumerate(model, "parallel"), config_enumerate(guide, "parallel")
    return elbo.differentiable_loss(*enumerated, *args, **kwargs)


@OBJECTIVES.register("elbo")
def elbo(table: Table, estimator=None) -> torch.Tensor:
    """sum_n sum_a q(a|n) f[a, n]."""
    return (table.logq.exp() * table.f).sum()


@OBJECTIVES.register("multi-sample-bound")
def multi_sample_bound(table: Table, estimator) -> torch.Tensor:
    """sum_n E_{a_1..a_S ~ q}[log (1/S) sum_s exp f[a_s, n]], S = ``estimator.num_particles``."""
    s = estimator.num_particles
    a, n = table.f.shape
    if a**s * n > MAX_TERMS:
        raise NotEnumerable(f"{a}^{s} joint sample tuples x {n} points is too many to sum")
    combos = torch.cartesian_prod(*[torch.arange(a)] * s).reshape(-1, s)  # [A^S, S]
    f = table.f[combos] / table.scale  # [A^S, S, N], unscaled
    weight = table.logq[combos].sum(1).exp()  # [A^S, N]
    bound = torch.logsumexp(f, 1) - math.log(s)  # [A^S, N]
    return table.scale * (weight * bound).sum()
