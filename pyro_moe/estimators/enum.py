"""``enum``: the gate summed out exactly.

The ``cluster`` site is enumerated in parallel (``config_enumerate``) in the model and the guide,
and ``TraceEnum_ELBO`` computes

    ELBO = E_{q(z|x)} [ log sum_c p(x, y, z, c) ]                 (no guide site for c)
    ELBO = E_{q(z|x)} [ sum_c q(c|...) log p(x, y, z, c) / q(c|...) q(z|x) ]   (guide site for c)

with the discrete sum done analytically, so its gradient has no variance from c. With a guide that
has no ``cluster`` site and no continuous latents this is exactly log p(y|x). It is the reference
every other estimator is measured against.

References:
    1. F. Obermeyer, E. Bingham, M. Jankowiak, J. Chiu, N. Pradhan, A. Rush, N. Goodman,
       "Tensor Variable Elimination for Plated Factor Graphs", ICML 2019.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.infer import JitTraceEnum_ELBO, TraceEnum_ELBO, config_enumerate

from pyro_moe.estimators.base import Estimator
from pyro_moe.registry import ESTIMATORS


@ESTIMATORS.register("enum")
class Enumerate(Estimator):
    """Exact: the discrete sum done analytically (config_enumerate + TraceEnum_ELBO)."""

    name = "enum"
    needs_guide_site = False

    def __init__(self, *, num_particles: int = 1, max_plate_nesting: int = 1, jit: bool = False):
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        elbo_class = JitTraceEnum_ELBO if jit else TraceEnum_ELBO
        self.jit = jit
        self.elbo = elbo_class(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=num_particles > 1,
            ignore_jit_warnings=True,
        )

    def loss(self, model, guide, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.elbo.differentiable_loss(*self._enumerated(model, guide), *args, **kwargs)

    def value(self, model, guide, *args: Any, **kwargs: Any) -> float:
        """The negative ELBO as a float, without building a graph (for validation)."""
        with torch.no_grad():
            return self.elbo.loss(*self._enumerated(model, guide), *args, **kwargs)

    @staticmethod
    def _enumerated(model, guide):
        return config_enumerate(model, "parallel"), config_enumerate(guide, "parallel")
