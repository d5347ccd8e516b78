"""Score-function (REINFORCE) estimators of the ELBO gradient, through ``TraceGraph_ELBO``.

For a guide site c ~ q_phi(c|...) the gradient of ELBO = E_q[f(c)], f = log p - log q, is

    grad_phi ELBO = E_q[ (f(c) - b) grad_phi log q_phi(c) ] + E_q[ grad_phi f(c) ]

for any baseline b that does not depend on c. Pyro's ``TraceGraph_ELBO`` estimates it as

    (f(c) - b) grad log q(c) + grad log p(x, c)         (one sample c ~ q),

i.e. it drops the term -grad log q(c) of grad f(c), whose mean is zero (E_q[grad log q] = 0),
and keeps only the cost terms downstream of c in the score (Rao-Blackwellisation over the
dependency graph). ``rloo`` and ``nvil`` use the same form by default, so the variance harness
compares the four like for like (``vimco`` cannot drop the term: its importance weights make it
non-zero mean).

* ``reinforce``: b = 0 (Williams 1992).
* ``reinforce-avg``: b = a decaying average of past costs, b_t = beta b_{t-1} + (1 - beta) f_t,
  kept per position in the minibatch (Pyro's ``use_decaying_avg_baseline``).

References:
    1. R. J. Williams, "Simple Statistical Gradient-Following Algorithms for Connectionist
       Reinforcement Learning", Machine Learning 1992.
    2. J. Schulman, N. Heess, T. Weber, P. Abbeel, "Gradient Estimation Using Stochastic
       Computation Graphs", NeurIPS 2015 (arXiv:1506.05254).
"""

from __future__ import annotations

from typing import Any

import torch
from pyro import poutine
from pyro.infer import TraceGraph_ELBO

from pyro_moe.errors import ConfigError
from pyro_moe.estimators.base import Estimator, value_with_gradient_of
from pyro_moe.registry import ESTIMATORS


@ESTIMATORS.register("reinforce")
class Reinforce(Estimator):
    """Score-function gradient of the same ELBO, no baseline (TraceGraph_ELBO)."""

    name = "reinforce"

    def __init__(self, *, num_particles: int = 1, max_plate_nesting: int = 1) -> None:
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        self.elbo = TraceGraph_ELBO(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=num_particles > 1,
        )

    def baseline_options(self) -> dict[str, Any]:
        """The ``infer={"baseline": ...}`` options put on the guide's ``cluster`` site."""
        return {}

    def loss(self, model, guide, *args: Any, **kwargs: Any) -> torch.Tensor:
        options = self.baseline_options()
        if options:
            guide = poutine.infer_config(
                guide, lambda msg: {"baseline": options} if msg["name"] == "cluster" else {}
            )
        # TraceGraph_ELBO's own split into (ELBO value, surrogate loss); loss_and_grads would call
        # backward itself, which the trainer and the variance harness must control.
        elbo, surrogate = self.elbo._loss_and_surrogate_loss(model, guide, args, kwargs)
        return value_with_gradient_of(-elbo, surrogate)


@ESTIMATORS.register("reinforce-avg")
class ReinforceAverageBaseline(Reinforce):
    """Score-function gradient with a decaying-average baseline (TraceGraph_ELBO baseline)."""

    name = "reinforce-avg"
    # the baseline is state updated by every estimate: estimates are drawn one after another
    vectorisable = False

    def __init__(
        self, *, num_particles: int = 1, max_plate_nesting: int = 1, beta: float = 0.9
    ) -> None:
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"baseline decay beta must lie in [0, 1), got {beta}")
        self.beta = beta

    def baseline_options(self) -> dict[str, Any]:
        return {"use_decaying_avg_baseline": True, "baseline_beta": self.beta}
