"""``enum``: the gate summed out exactly.

In general (``fast=False``, or any guide with latent sites) the ``cluster`` site is enumerated in
parallel (``config_enumerate``) in the model and the guide, and ``TraceEnum_ELBO`` computes

    ELBO = E_{q(z|x)} [ log sum_c p(x, y, z, c) ]                 (no guide site for c)
    ELBO = E_{q(z|x)} [ sum_c q(c|...) log p(x, y, z, c) / q(c|...) q(z|x) ]   (guide site for c)

with the discrete sum done analytically, so its gradient has no variance from c. With a guide that
has no ``cluster`` site and no continuous latents this is exactly log p(y|x). It is the reference
every other estimator is measured against.

With ``fast=True`` (the default) and a guide that declares ``is_empty`` (no latent sites, e.g. the
MoE's ``none`` guide), the loss comes from :func:`~pyro_moe.estimators.collapsed.collapsed_loss`:
one pass of the model with the gate summed out by a single ``logsumexp``, the same value and
gradient as ``TraceEnum_ELBO`` without tracing the guide or contracting a factor graph. Models
outside that case fall back to ``TraceEnum_ELBO`` (the decision is remembered per model).

References:
    1. F. Obermeyer, E. Bingham, M. Jankowiak, J. Chiu, N. Pradhan, A. Rush, N. Goodman,
       "Tensor Variable Elimination for Plated Factor Graphs", ICML 2019.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.infer import JitTraceEnum_ELBO, TraceEnum_ELBO, config_enumerate

from pyro_moe.errors import ConfigError
from pyro_moe.estimators.base import Estimator
from pyro_moe.estimators.collapsed import NotCollapsible, collapsed_loss
from pyro_moe.registry import ESTIMATORS


@ESTIMATORS.register("enum")
class Enumerate(Estimator):
    """Exact: the discrete sum done analytically, by one collapsed pass of the model when the guide
    has no latent sites (the default fast path), else by config_enumerate + TraceEnum_ELBO."""

    name = "enum"
    needs_guide_site = False
    # TraceEnum_ELBO contracts with autograd.Functions that torch.func cannot transform
    vectorisable = False

    def __init__(
        self,
        *,
        num_particles: int = 1,
        max_plate_nesting: int = 1,
        jit: bool = False,
        fast: bool = True,
    ):
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        elbo_class = JitTraceEnum_ELBO if jit else TraceEnum_ELBO
        self.jit, self.fast = jit, fast
        # ids of models the fast path cannot take (a reused id only costs the general path)
        self._general: set[int] = set()
        self.elbo = elbo_class(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=num_particles > 1,
            ignore_jit_warnings=True,
        )

    def check(self, guide) -> None:
        target = getattr(guide, "target", None)
        if target is not None and not getattr(target, "traceenum_summable", True):
            raise ConfigError(
                f"estimator 'enum' cannot sum out {type(target).__name__}'s discrete latents with "
                "TraceEnum_ELBO (they feed a site outside their plate); use a sampling estimator"
            )

    def loss(self, model, guide, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self._collapsible(model, guide):
            try:
                return collapsed_loss(model, self.max_plate_nesting, *args, **kwargs)
            except NotCollapsible:
                self._general.add(id(getattr(model, "__self__", model)))
        return self.elbo.differentiable_loss(*self._enumerated(model, guide), *args, **kwargs)

    def value(self, model, guide, *args: Any, **kwargs: Any) -> float:
        """The negative ELBO as a float, without building a graph (for validation)."""
        with torch.no_grad():
            if self._collapsible(model, guide):
                return self.loss(model, guide, *args, **kwargs).item()
            return self.elbo.loss(*self._enumerated(model, guide), *args, **kwargs)

    def takes_fast_path(self, guide) -> bool:
        """Whether :meth:`loss` tries the one-pass collapsed path with ``guide`` (``fast`` and a
        guide without latent sites); otherwise it runs TraceEnum_ELBO."""
        return bool(self.fast and getattr(guide, "is_empty", False))

    def _collapsible(self, model, guide) -> bool:
        """Whether to try the one-pass path: ``fast``, an empty guide, not known to fail."""
        if not self.takes_fast_path(guide):
            return False
        return id(getattr(model, "__self__", model)) not in self._general

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, jit={self.jit}, fast={self.fast}"

    @staticmethod
    def _enumerated(model, guide):
        return config_enumerate(model, "parallel"), config_enumerate(guide, "parallel")
