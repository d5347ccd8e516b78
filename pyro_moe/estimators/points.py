"""Estimators that evaluate the model at discrete points they choose themselves.

A score-function estimator runs the model at S independent draws of the guide's discrete site. The
estimators here (``unordered``, ``sum-and-sample``, ``indecater``, ``arsm``) run it at P points
chosen from the guide's distribution in a coupled way: k draws without replacement, the k most
probable values, every value of one variable with the others held at a draw, the swapped
pseudo-actions of ARSM. They share one mechanism:

1. a probe runs the guide up to its discrete site (inside size-1 ``estimates``/``particles``
   plates) to read the site's shape: C cells per data point (the L latents of a categorical VAE,
   1 for a mixture's ``cluster``) of K categories each;
2. the estimator says how many points P it needs for (C, K);
3. the guide runs inside a ``particles`` plate of size P with the site's distribution wrapped in
   :class:`ChosenSite`, whose ``sample`` returns the estimator's points ``[E, P, *cells, N]``
   (chosen from the site's logits, expanded to ``[E, P, *cells, N, K]``); its ``log_prob`` is the
   original distribution's, so the guide and the model (which replays the values) score the points
   as usual and :func:`~pyro_moe.estimators.sampled.point_costs` gives ``f[e, p, n]`` and
   ``logq[e, p, n]`` per point.

The points are integer values, so these estimators need nothing from the model but its value at
those points: they run on plain Pyro programs that index with the discrete value, not only on
models that read it through :func:`pyro_moe.gate.select`. The site is the guide's one latent site
with a discrete support (or the one named in ``sites``); it must be a ``Categorical(logits=...)``
in the ``data`` plate.

Helpers for the joint distribution of a point's C cells (a categorical over K^C values, q(a) =
prod_c q_c(a_c)): :func:`top_k_assignments` finds its k most probable values by beam search
(exact for a product of independent factors) and, with Gumbel perturbations, draws k values
without replacement by stochastic beam search (Kool, van Hoof, Welling 2019), without listing
the K^C values.

References:
    1. W. Kool, H. van Hoof, M. Welling, "Stochastic Beams and Where to Find Them: The
       Gumbel-Top-k Trick for Sampling Sequences Without Replacement", ICML 2019.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pyro import distributions as dist
from pyro import poutine
from pyro.poutine.messenger import Messenger

from pyro_moe.errors import ConfigError
from pyro_moe.estimators.relaxed import categorical_logits, gumbel_like
from pyro_moe.estimators.sampled import Costs, SampledEstimator, point_costs, run_traces


@dataclass
class PointCosts(Costs):
    """:class:`Costs` of a run at chosen points, with what the chooser left in ``state``
    (``site``: the site's name; estimator-specific noise and logits)."""

    state: dict


class _Probed(Exception):
    """Raised by a probing :class:`ChosenSite` to stop the guide at its discrete site."""

    def __init__(self, shape: torch.Size) -> None:
        super().__init__()
        self.shape = shape


class ChosenSite(dist.TorchDistribution):
    """A categorical site whose ``sample`` is ``choose(logits)`` (the estimator's points);
    everything else (support, ``log_prob``) is the wrapped distribution's."""

    arg_constraints: dict[str, Any] = {}
    has_enumerate_support = True

    def __init__(self, base: dist.TorchDistribution, choose: Callable) -> None:
        self.base, self.choose = base, choose
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self):
        return self.base.support

    def expand(self, batch_shape, _instance=None) -> ChosenSite:
        return ChosenSite(self.base.expand(batch_shape), self.choose)

    def sample(self, sample_shape=()) -> torch.Tensor:
        if len(sample_shape):
            raise ConfigError("a chosen-points site is sampled inside plates, not with a shape")
        return self.choose(categorical_logits(self.base))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.base.log_prob(value)

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        return self.base.enumerate_support(expand)


class PickPoints(Messenger):
    """Wrap the guide's discrete site (the one named in ``sites``, else the first latent site with
    a discrete support) in :class:`ChosenSite`; a second such site is an error."""

    def __init__(self, choose: Callable, state: dict, sites=None, name: str = "") -> None:
        super().__init__()
        self.choose, self.state, self.sites, self.name = choose, state, sites, name

    def _target(self, msg: dict) -> bool:
        if msg["is_observed"]:
            return False
        if self.sites is not None:
            return msg["name"] in self.sites
        return bool(getattr(getattr(msg["fn"], "support", None), "is_discrete", False))

    def _pyro_sample(self, msg: dict) -> None:
        if not self._target(msg):
            return
        if "site" in self.state:
            raise ConfigError(
                f"estimator {self.name!r} acts on one discrete site; the guide samples "
                f"{self.state['site']!r} and {msg['name']!r} (name one with `sites`)"
            )
        categorical_logits(msg["fn"])  # a clear error for a non-categorical site
        self.state["site"] = msg["name"]
        msg["fn"] = ChosenSite(msg["fn"], self.choose)


def _probe(logits: torch.Tensor) -> torch.Tensor:
    raise _Probed(logits.shape)


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


def probe_site(guide, args, kwargs, nesting: int, sites=None, name: str = "") -> tuple[int, int]:
    """(C, K): the guide's discrete site has C cells per data point of K categories each."""
    wrapped = PickPoints(_probe, {}, sites, name)(guide)
    try:
        with poutine.block():
            run_traces(_nothing, wrapped, args, kwargs, 1, 1, nesting)
    except _Probed as found:
        shape = found.shape  # [1, 1, *cells, N, K]
        return math.prod(shape[2:-2]), int(shape[-1])
    raise ConfigError(f"estimator {name!r} needs a discrete latent site in the guide")


def cells_first(logits: torch.Tensor) -> torch.Tensor:
    """``[E, P, *cells, N, K]`` (identical along P) -> ``[E, N, C, K]``."""
    first = logits.select(1, 0)
    e, n, k = first.shape[0], first.shape[-2], first.shape[-1]
    return first.reshape(e, -1, n, k).permute(0, 2, 1, 3)


def points_back(values: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Points ``[E, N, P, C]`` -> site values ``[E, P, *cells, N]`` (the layout of ``logits``)."""
    return values.permute(0, 2, 3, 1).reshape(logits.shape[:-1])


def _shifted_gumbels(phi: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """Gumbels with locations ``phi`` ``[..., B, K]`` conditioned on their maximum over K being
    ``top`` ``[..., B]`` (Kool et al. 2019, App. B, in the numerically stable form)."""
    g = phi + gumbel_like(phi)
    z = g.max(-1, keepdim=True).values
    t = top[..., None]
    u = t - g + torch.log1p(-torch.exp(g - z))
    return t - torch.relu(u) - torch.log1p(torch.exp(-u.abs()))


def top_k_assignments(log_p: torch.Tensor, k: int, perturb: bool) -> torch.Tensor:
    """The k values a of the product distribution q(a) = prod_c q_c(a_c) with the largest
    log q(a) (``perturb=False``, beam search) or the largest log q(a) + Gumbel (``perturb=True``,
    stochastic beam search: k draws without replacement), in decreasing order.

    ``log_p``: ``[..., C, K]`` normalised log-probabilities per cell; returns ``[..., k, C]``.
    Needs k <= K^C."""
    *batch, cells, kk = log_p.shape
    phi = log_p.new_zeros(*batch, 1)  # [..., B] prefix log-probabilities (B = 1: the root)
    score = phi  # [..., B] (perturbed) scores; the root's Gumbel may be fixed at 0
    chosen = torch.zeros(*batch, 1, 0, dtype=torch.long, device=log_p.device)  # [..., B, c]
    for c in range(cells):
        child = phi[..., :, None] + log_p[..., c, None, :]  # [..., B, K]
        child_score = _shifted_gumbels(child, score) if perturb else child
        width = min(k, child.shape[-2] * kk)
        score, pos = child_score.flatten(-2).topk(width, -1)  # [..., B']
        phi = child.flatten(-2).gather(-1, pos)
        parent = (pos // kk)[..., None].expand(*pos.shape, c)
        chosen = torch.cat([chosen.gather(-2, parent), (pos % kk)[..., None]], -1)
    return chosen


def joint_size(cells: int, k: int, cap: int) -> int:
    """min(K^C, cap) without forming a huge power."""
    if cells * math.log(k) > math.log(cap):
        return cap
    return k**cells


class PointEstimator(SampledEstimator):
    """Base of the estimators that choose their evaluation points (see the module docstring):
    subclasses define :meth:`num_points` and :meth:`choose`, and :meth:`objective` on
    :class:`PointCosts`."""

    #: model evaluations per data row in the last run (P points x C cells), read by the
    #: vectorised harness to size its chunks; not state (every run sets it afresh)
    points_per_estimate: int = 1

    def num_points(self, cells: int, categories: int) -> int:
        """P, the number of points for a site of ``cells`` cells of ``categories`` values."""
        raise NotImplementedError

    def choose(self, logits: torch.Tensor, state: dict) -> torch.Tensor:
        """The points ``[E, P, *cells, N]`` for the site's logits ``[E, P, *cells, N, K]``."""
        raise NotImplementedError

    def costs(self, model, guide, num_estimates: int, *args: Any, **kwargs: Any) -> PointCosts:
        nesting = self.max_plate_nesting
        cells, categories = probe_site(guide, args, kwargs, nesting, self.sites, self.name)
        state: dict = {"cells": cells, "categories": categories}
        self.points_per_estimate = self.num_points(cells, categories) * cells
        pick = PickPoints(lambda logits: self.choose(logits, state), state, self.sites, self.name)
        model_trace, guide_trace = run_traces(
            model,
            guide,
            args,
            kwargs,
            num_estimates,
            self.num_points(cells, categories),
            nesting,
            (_identity, pick),
        )
        costs = point_costs(
            model_trace, guide_trace, nesting, [state["site"]], plate=self.data_plate
        )
        return PointCosts(costs.f, costs.logq, costs.scale, guide_trace, model_trace, state)


def _identity(fn):
    return fn


def cell_log_probs(costs: PointCosts) -> torch.Tensor:
    """log q_c(value) of every cell of every point: ``[E, P, C, N]`` (unscaled)."""
    lp = costs.guide_trace.nodes[costs.state["site"]]["unscaled_log_prob"]
    return lp.reshape(lp.shape[0], lp.shape[1], -1, lp.shape[-1])


def draws(logits: torch.Tensor, num: int) -> torch.Tensor:
    """``num`` independent draws per cell by the Gumbel-max trick: ``[E, num, N, C]`` from
    ``[E, N, C, K]`` logits."""
    noise = gumbel_like(logits.new_empty((logits.shape[0], num) + logits.shape[1:]))
    return (logits[:, None] + noise).argmax(-1)


__all__ = [
    "ChosenSite",
    "PickPoints",
    "PointCosts",
    "PointEstimator",
    "cell_log_probs",
    "cells_first",
    "draws",
    "joint_size",
    "points_back",
    "probe_site",
    "top_k_assignments",
]
