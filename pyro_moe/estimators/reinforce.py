"""Score-function (REINFORCE) estimators of the ELBO gradient.

For a guide site c ~ q_phi(c|...) the gradient of ELBO = E_q[f(c)], f = log p - log q, is

    grad_phi ELBO = E_q[ (f(c) - b) grad_phi log q_phi(c) ] + E_q[ grad_phi f(c) ]

for any baseline b that does not depend on c. Like Pyro's ``TraceGraph_ELBO``, the estimate is

    sum_s sum_i (cost_{s,i} - b) grad log q(c_{s,i}) + grad~ [log p(x, c) - log q_rep]   (one draw)

* grad~ drops the term -grad log q(c) of every non-reparameterised site s (its mean is zero,
  E_q[grad log q] = 0) and keeps the reparameterised sites' -log q;
* cost_{s,i}, the learning signal of element i of site s, holds only the terms downstream of s:
  the (scaled) log-densities of the model and guide sites whose value depends on c_s, each summed
  over the plates s is not in and kept element by element over the plates s is in
  (Rao-Blackwellisation over the dependency graph and over conditionally independent elements;
  Schulman et al. 2015). In the categorical VAE each c_{l,n} is scored with
  log p(c_{l,n}) - log q(c_{l,n}|x_n) + log p(x_n|c_n), not with the other latents' terms.

Which sites depend on which is read by provenance tracking (Pyro's ``TrackNonReparam``: every
non-reparameterised value carries its site's name through the torch operations computed from it),
as ``TraceGraph_ELBO`` does on every call. Tracking costs a Python dispatch on every operation
downstream of c (the whole decoder), so ``reinforce`` tracks on its first call for a program and
reuses that dependency map; a site the map does not know is treated as depending on every
non-reparameterised site (never biased, only noisier), and the map is relearnt on the next call.
A program whose dependencies change from call to call with the data (not a site's presence, which
is detected) needs ``static_dependencies=False``: tracking on every call, as ``TraceGraph_ELBO``.
``rloo`` and ``nvil`` use the same form (without the zero-mean term), so the variance harness
compares them like for like (``vimco`` cannot drop the term: its importance weights make it
non-zero mean).

* ``reinforce``: b = 0 (Williams 1992).
* ``reinforce-avg``: b_t = a_{t-1}, a decaying average of past costs,
  a_t = beta a_{t-1} + (1 - beta) f_t, kept per position in the minibatch (Pyro's
  ``use_decaying_avg_baseline``, computed in the same one pass as ``reinforce``).

References:
    1. R. J. Williams, "Simple Statistical Gradient-Following Algorithms for Connectionist
       Reinforcement Learning", Machine Learning 1992.
    2. J. Schulman, N. Heess, T. Weber, P. Abbeel, "Gradient Estimation Using Stochastic
       Computation Graphs", NeurIPS 2015 (arXiv:1506.05254).
    3. D. Wingate, N. Goodman, A. Stuhlmueller, J. M. Siskind, "Nonstandard Interpretations of
       Probabilistic Programs for Efficient Inference", NeurIPS 2011 (provenance tracking).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import pyro
import torch
from pyro.infer.tracegraph_elbo import TrackNonReparam
from pyro.infer.util import MultiFrameTensor
from pyro.ops.provenance import detach_provenance, get_provenance

from pyro_moe.errors import ConfigError
from pyro_moe.estimators.base import value_with_gradient_of
from pyro_moe.estimators.sampled import SampledEstimator
from pyro_moe.estimators.traces import SiteTrace, program_key, run_traces
from pyro_moe.registry import ESTIMATORS

#: a site of either run: ("model" | "guide", name)
Site = tuple[str, str]
#: the param-store name prefix of ``reinforce-avg``'s averages (Pyro's own name for them)
AVERAGE_PREFIX = "__baseline_avg_downstream_cost_"


def _sites(model_trace: SiteTrace, guide_trace: SiteTrace):
    """(side, name, site, sign): every site with the sign its log-density takes in the ELBO."""
    for side, trace, sign in (("model", model_trace, 1.0), ("guide", guide_trace, -1.0)):
        for name, site in trace.nodes.items():
            yield side, name, site, sign


def score_sites(guide_trace: SiteTrace) -> list[str]:
    """The guide's non-reparameterised latent sites (``TraceGraph_ELBO``'s criterion)."""
    return [
        name
        for name, site in guide_trace.nodes.items()
        if not site["is_observed"] and not getattr(site["fn"], "has_rsample", False)
    ]


class Dependencies:
    """Which sites' log-densities depend on which non-reparameterised guide sites, read once by
    provenance tracking and kept per program (see the module docstring)."""

    def __init__(self) -> None:
        self.program: tuple | None = None
        self.upstream: dict[Site, frozenset[str]] = {}
        self.scores: frozenset[str] = frozenset()
        self.stale = True

    def needs_tracking(self, program: tuple) -> bool:
        return self.stale or program != self.program

    def learn(self, program: tuple, model_trace: SiteTrace, guide_trace: SiteTrace) -> None:
        self.program, self.stale = program, False
        self.scores = frozenset(score_sites(guide_trace))
        self.upstream = {
            (side, name): get_provenance(site["log_prob"])
            for side, name, site, _ in _sites(model_trace, guide_trace)
        }

    def depends(self, site: Site, score: str) -> bool:
        """Whether ``site`` is downstream of ``score`` (unknown to the map: assumed so, and the
        map is relearnt on the next call)."""
        upstream = self.upstream.get(site)
        if upstream is None or score not in self.scores:
            self.stale = True
            return True
        return score in upstream


def _per_estimate(t: torch.Tensor | float, nesting: int) -> torch.Tensor | float:
    """A site's terms summed to one number per estimate ``[E]``, averaged over particles."""
    if not torch.is_tensor(t):
        return t
    while t.dim() < nesting + 2:
        t = t.unsqueeze(0)
    return t.sum(tuple(range(2, t.dim()))).mean(1)


def downstream_costs(
    model_trace: SiteTrace, guide_trace: SiteTrace, scores: list[str], deps: Dependencies
) -> dict[str, torch.Tensor | float]:
    """cost_s for every score site s: the scaled log-densities (the guide's negated) of the sites
    downstream of s, summed to s's plates (``TraceGraph_ELBO``'s ``MultiFrameTensor.sum_to``)."""
    terms = {s: MultiFrameTensor() for s in scores}
    for side, name, site, sign in _sites(model_trace, guide_trace):
        for s in scores:
            if deps.depends((side, name), s):
                terms[s].add((site["cond_indep_stack"], sign * site["log_prob"]))
    return {s: terms[s].sum_to(guide_trace.nodes[s]["cond_indep_stack"]) for s in scores}


@ESTIMATORS.register("reinforce")
class Reinforce(SampledEstimator):
    """Score-function gradient of the same ELBO, no baseline, Rao-Blackwellised over the
    dependency graph as in ``TraceGraph_ELBO``."""

    name = "reinforce"

    def __init__(
        self,
        *,
        num_particles: int = 1,
        max_plate_nesting: int = 1,
        static_dependencies: bool = True,
    ) -> None:
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        self.static_dependencies = bool(static_dependencies)
        self.dependencies = Dependencies()

    def baseline(self, site: str, cost: torch.Tensor | float) -> torch.Tensor | float:
        """b for the score site ``site`` given its downstream cost (shaped like it)."""
        return 0.0

    def estimate_losses(
        self, model, guide, num_estimates: int, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        program = program_key(model, guide)
        track = not self.static_dependencies or self.dependencies.needs_tracking(program)
        with self.validation(model, guide), TrackNonReparam() if track else nullcontext():
            traces = run_traces(
                model,
                guide,
                args,
                kwargs,
                num_estimates,
                self.num_particles,
                self.max_plate_nesting,
                unit_plates=False,
            )
            for trace in traces:
                trace.compute_log_prob()
        if track:
            self.dependencies.learn(program, *traces)
        value, surrogate = self.objective_terms(*traces)
        loss = value_with_gradient_of(-value, -surrogate)
        return detach_provenance(loss) if track else loss

    def objective_terms(
        self, model_trace: SiteTrace, guide_trace: SiteTrace
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ELBO, surrogate) per estimate ``[E]`` (the module docstring's estimate)."""
        nesting = self.max_plate_nesting
        scores = score_sites(guide_trace)
        value = surrogate = 0.0
        for _, name, site, sign in _sites(model_trace, guide_trace):
            term = _per_estimate(sign * site["log_prob"], nesting)
            value = value + term
            if sign > 0 or name not in scores:  # grad~: no -log q of a score site
                surrogate = surrogate + term
        costs = downstream_costs(model_trace, guide_trace, scores, self.dependencies)
        for s in scores:
            signal = costs[s] - self.baseline(s, costs[s])
            signal = signal.detach() if torch.is_tensor(signal) else signal
            score = guide_trace.nodes[s]["unscaled_log_prob"] * signal
            surrogate = surrogate + _per_estimate(score, nesting)
        return torch.as_tensor(value).reshape(-1), torch.as_tensor(surrogate).reshape(-1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, static_dependencies={self.static_dependencies}"


@ESTIMATORS.register("reinforce-avg")
class ReinforceAverageBaseline(Reinforce):
    """Score-function gradient with a decaying-average baseline per score site and position.

    For score site s with downstream cost f_t at call t (shaped like s's plates), the baseline is
    the average before this call, b_t = a_{t-1}, then a_t = beta a_{t-1} + (1 - beta) f_t, a_0 = 0:
    Pyro's ``use_decaying_avg_baseline`` (``TraceGraph_ELBO``), kept under Pyro's name
    ``__baseline_avg_downstream_cost_<site>`` in the param store (so checkpoints carry it) and
    computed in the one-pass form of :class:`Reinforce`. A cost of a new shape (another batch
    size) starts its average afresh from zero; a non-finite cost (a step the trainer skips) does
    not enter it. b_t does not depend on the draw at t: unbiased."""

    name = "reinforce-avg"
    # the baseline is state updated by every estimate: estimates are drawn one after another
    vectorisable = False

    def __init__(
        self,
        *,
        num_particles: int = 1,
        max_plate_nesting: int = 1,
        beta: float = 0.9,
        static_dependencies: bool = True,
    ) -> None:
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            static_dependencies=static_dependencies,
        )
        if isinstance(beta, bool) or not isinstance(beta, int | float) or not 0.0 <= beta < 1.0:
            raise ConfigError(f"baseline decay beta must lie in [0, 1), got {beta!r}")
        self.beta = float(beta)

    def baseline(self, site: str, cost: torch.Tensor | float) -> torch.Tensor | float:
        if not torch.is_tensor(cost):
            return 0.0
        store = pyro.get_param_store()
        name = AVERAGE_PREFIX + site
        cost = cost.detach()
        old = store[name].detach() if name in store else None
        if old is None or old.shape != cost.shape:
            old = torch.zeros_like(cost)
        if bool(torch.isfinite(cost).all()):  # a non-finite step (skipped) leaves it as it was
            store[name] = self.beta * old + (1.0 - self.beta) * cost
        return old

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beta={self.beta}"
