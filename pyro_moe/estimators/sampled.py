"""The machinery shared by the sampling estimators: many estimates in one vectorised pass.

A :class:`SampledEstimator` runs the guide and then the model (replaying the guide's values) inside
two plates to the left of the model's own plates::

    estimates  (size E, dim -(max_plate_nesting + 2))   independent gradient estimates
    particles  (size S, dim -(max_plate_nesting + 1))   the S samples one estimate uses

and reduces every site's (scaled) log-density to one cost per data point,

    f[e, s, n] = sum_{model sites} log p - sum_{guide sites} log q        (point n's ELBO term)

plus ``logq[e, s, n]`` = log q(c_n), summed over the guide's discrete sites (the score; by default
every latent guide site with a discrete support, e.g. ``cluster``). Sites outside the
``data`` plate are spread evenly over the points of the batch. Subclasses turn ``f`` and ``logq``
into a value and a surrogate per estimate; :meth:`SampledEstimator.estimate_losses` returns the
``E`` losses ``-value`` with the surrogate's gradient (E independent estimates from one forward
pass), and :meth:`SampledEstimator.loss` is the ``E = 1`` case the trainer uses. The variance
harness draws its many estimates through :mod:`pyro_moe.vectorised` (torch.func per-estimate
gradients of :meth:`loss`), not through ``estimate_losses``.

An optional Pyro handler (:meth:`SampledEstimator.handler`) is applied to both the guide and the
model; the relaxed estimators use it to turn the ``cluster`` site into a relaxed one-hot vector.

Pyro's validation (``pyro.enable_validation``: distribution arguments, supports, plate shapes)
checks the first call of an estimator for a (model, guide) pair; the later calls for the same pair
run without it (:meth:`SampledEstimator.validation`), as its checks cost a reduction per tensor
per site on every step. What they would catch later, a parameter gone NaN or inf, shows up in the
loss or the gradient, which the trainer checks on every step (:mod:`pyro_moe.nonfinite`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from pyro.infer.util import is_validation_enabled
from pyro.poutine.util import site_is_subsample

from pyro_moe.errors import ConfigError
from pyro_moe.estimators.base import Estimator, value_with_gradient_of
from pyro_moe.estimators.traces import ESTIMATES, PARTICLES, program_key, run_traces
from pyro_moe.validation import distribution_checks_off

DATA = "data"
CLUSTER = "cluster"


@dataclass
class Costs:
    """Per-point terms of one vectorised run: every tensor is ``[E, S, N]``."""

    f: torch.Tensor  # log p - log q per data point (scaled by the data plate)
    logq: torch.Tensor  # log q(cluster) per data point, not scaled
    scale: float  # the data plate's scale num_data / batch size
    guide_trace: Any
    model_trace: Any


def in_plate(site: dict, plate: str = DATA) -> bool:
    """Whether ``site`` lies inside the plate named ``plate``."""
    return any(frame.name == plate for frame in site["cond_indep_stack"])


def _point_terms(
    site: dict, nesting: int, key: str = "log_prob", plate: str = DATA
) -> torch.Tensor:
    """A site's log-density summed to ``[E, S, N]`` (or ``[E, S, 1]`` outside the data plate)."""
    lp = site[key]
    while lp.dim() < nesting + 2:
        lp = lp.unsqueeze(0)
    if in_plate(site, plate):
        return lp.sum(dim=tuple(range(2, lp.dim() - 1))) if lp.dim() > 3 else lp
    return lp.sum(dim=tuple(range(2, lp.dim())), keepdim=False).unsqueeze(-1)


def _sample_sites(trace):
    return [
        s
        for name, s in trace.nodes.items()
        if s["type"] == "sample" and name not in (ESTIMATES, PARTICLES) and not site_is_subsample(s)
    ]


def is_discrete(site: dict) -> bool:
    """A latent sample site whose distribution has a discrete support."""
    support = getattr(site["fn"], "support", None)
    return not site["is_observed"] and bool(getattr(support, "is_discrete", False))


def discrete_sites(guide_trace, sites: Sequence[str] | None = None) -> list[str]:
    """The guide's sites an estimator acts on: ``sites`` when given (each must be a latent site of
    the guide), else every latent site of the guide with a discrete support."""
    if sites is None:
        return [s["name"] for s in _sample_sites(guide_trace) if is_discrete(s)]
    sampled = {s["name"] for s in _sample_sites(guide_trace) if not s["is_observed"]}
    missing = [name for name in sites if name not in sampled]
    if missing:
        raise ConfigError(
            f"site(s) {', '.join(map(repr, missing))} are not sampled by the guide; its latent "
            f"sites: {', '.join(sorted(sampled)) or 'none'}"
        )
    return list(sites)


def point_costs(
    model_trace,
    guide_trace,
    nesting: int,
    sites: Sequence[str] | None = None,
    score: bool = True,
    plate: str = DATA,
) -> Costs:
    """Reduce two traces to per-point costs (see the module docstring); ``logq`` sums the
    guide's :func:`discrete_sites` (``sites``: those named). ``score=False``: an estimator that
    does not use the score (a relaxed one) gets ``logq = 0`` when the guide has no discrete site.
    ``plate`` names the data plate (``data`` in this library's models)."""
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    data_terms, global_terms, scales = [], [], []
    for sign, trace in ((1.0, model_trace), (-1.0, guide_trace)):
        for site in _sample_sites(trace):
            term = sign * _point_terms(site, nesting, plate=plate)
            if in_plate(site, plate):
                data_terms.append(term)
                scales.append(_scale(site))
            else:
                global_terms.append(term)
    names = discrete_sites(guide_trace, sites)
    outside = [n for n in names if not in_plate(guide_trace.nodes[n], plate)]
    if not data_terms or (score and not names) or outside:
        raise ConfigError(
            f"a sampling estimator needs the guide's discrete site(s) inside the `{plate}` plate; "
            f"found {', '.join(names) or 'none'}"
            + (f" ({', '.join(outside)} outside it)" if outside else "")
        )
    f = sum(data_terms)
    batch = f.shape[-1]
    if global_terms:
        f = f + sum(global_terms) / batch
    shape = f.shape[:2] + (batch,)
    logq = sum(
        _point_terms(guide_trace.nodes[n], nesting, "unscaled_log_prob", plate) for n in names
    )
    logq = logq if names else f.new_zeros(shape)
    scale = _scale(guide_trace.nodes[names[0]]) if names else scales[0]
    return Costs(f.expand(shape), logq.expand(shape), scale, guide_trace, model_trace)


def _scale(site: dict) -> float:
    return float(site["scale"]) if not torch.is_tensor(site["scale"]) else site["scale"].item()


class SampledEstimator(Estimator):
    """Base class of the estimators built on :func:`point_costs`; subclasses define
    :meth:`objective` (value and surrogate per estimate) and optionally :meth:`handler`."""

    #: the fewest particles the estimator works with
    min_particles: int = 1
    #: whether :meth:`objective` uses the score log q (False: relaxed, pathwise estimators)
    uses_score: bool = True

    def __init__(self, *, num_particles: int = 1, max_plate_nesting: int = 1) -> None:
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        self.validated: set[tuple[int, ...]] = set()  # programs whose first call validated
        if num_particles < self.min_particles:
            raise ConfigError(
                f"estimator {self.name!r} needs num_particles >= {self.min_particles}, "
                f"got {num_particles}"
            )

    def handler(self):
        """A pair of callables ``fn -> fn`` applied to the model and to the guide (None: run
        them as they are); built afresh for every run, so they may share per-run state."""
        return None

    def validation(self, model, guide) -> AbstractContextManager:
        """Pyro's validation as set on the first call for ``(model, guide)``; off on the later
        ones (see the module docstring)."""
        key = program_key(model, guide)
        if key in self.validated:
            return distribution_checks_off()
        return _first_call(self.validated, key) if is_validation_enabled() else nullcontext()

    def costs(self, model, guide, num_estimates: int, *args: Any, **kwargs: Any) -> Costs:
        model_trace, guide_trace = run_traces(
            model,
            guide,
            args,
            kwargs,
            num_estimates,
            self.num_particles,
            self.max_plate_nesting,
            self.handler(),
            unit_plates=False,
        )
        return point_costs(
            model_trace,
            guide_trace,
            self.max_plate_nesting,
            self.sites,
            self.uses_score,
            self.data_plate,
        )

    def objective(self, costs: Costs, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(value, surrogate), each ``[E]``: the objective estimate and a function whose gradient
        is the estimator's gradient estimate."""
        raise NotImplementedError

    def estimate_losses(
        self, model, guide, num_estimates: int, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """``[E]`` independent losses (``-value`` carrying the surrogate's gradient)."""
        with self.validation(model, guide):
            costs = self.costs(model, guide, num_estimates, *args, **kwargs)
        value, surrogate = self.objective(costs, *args)
        return value_with_gradient_of(-value, -surrogate)

    def loss(self, model, guide, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.estimate_losses(model, guide, 1, *args, **kwargs)[0]


@contextmanager
def _first_call(validated: set, key: tuple[int, ...]) -> Iterator[None]:
    yield  # an exception leaves ``key`` out: the next call validates again
    validated.add(key)


def score_surrogate(
    costs: Costs, baseline: torch.Tensor | float, zero_mean_term: bool = False
) -> tuple[torch.Tensor, ...]:
    """The score-function value and surrogate per estimate for a baseline ``b`` (``[E, S, N]``):

    value = mean_s sum_n f,
    surrogate = mean_s sum_n [f + stop(f - b) log q(c_n) + r log q(c_n) - stop(r log q(c_n))],

    r the data plate's scale. Its gradient is mean_s sum_n [(f - b) grad log q(c_n) + grad~ f]:
    grad~ f is f's gradient without the term -r grad log q(c_n) of the discrete site's own
    log-density, which has mean zero (E_q[grad log q(c)] = 0). This is the form Pyro's
    ``TraceGraph_ELBO`` computes (it never differentiates a non-reparameterised site's
    log-density outside the score), so ``reinforce``, ``reinforce-avg``, ``rloo`` and ``nvil``
    estimate the same gradient in the same form and their variances compare like for like.

    ``zero_mean_term=True`` keeps the term (surrogate mean_s sum_n [f + stop(f - b) log q]). The
    mean is the same; which form has the lower variance depends on the program: with q(c|x) =
    p(c|x) (the MoE's ``gate`` guide) the kept term cancels the model's grad log p(c|x) exactly,
    with a separate posterior network dropping it usually helps.
    """
    f, logq = costs.f, costs.logq
    value = f.sum(-1).mean(-1)
    score = (f - baseline).detach() * logq  # f carries the scale
    surrogate = f + score
    if not zero_mean_term:
        surrogate = surrogate + costs.scale * (logq - logq.detach())  # cancels -r grad log q(c)
    return value, surrogate.sum(-1).mean(-1)
