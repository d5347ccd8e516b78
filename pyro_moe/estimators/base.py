"""The interface every gradient estimator implements.

An estimator turns a model and a guide into one scalar ``L = estimator.loss(model, guide, *args)``:

* ``L.item()`` is an estimate of minus the estimator's objective (the negative ELBO, at full-data
  scale when the ``data`` plate subsamples);
* ``L.backward()`` leaves the estimator's gradient estimate in the parameters' ``.grad``.

Where the gradient comes from a surrogate whose value is not the objective (score-function
estimators), ``L = surrogate + stop_gradient(value - surrogate)``: the value is the objective's,
the gradient the surrogate's. Estimators change how the ``cluster`` site is treated with Pyro
handlers and ``infer`` settings; the model body never branches on the estimator.

Estimators are ``nn.Module`` s so that their state (learned baselines, temperatures, running
averages) moves with ``.to(device)`` and is saved in checkpoints. Keep every piece of state that
:meth:`Estimator.advance` changes in a parameter, a buffer or ``get_extra_state``: checkpoints
save ``estimator.state_dict()``, and a plain Python attribute would not resume exactly.

What an estimator is, declared on its class (the registry test and the variance harness read it):

* ``unbiased_for``: the name of the objective whose exact gradient E[estimate] equals, one of
  :data:`pyro_moe.estimators.objectives.OBJECTIVES`:

  - ``"elbo"``: the single-sample ELBO E_q[log p(x, c) - log q(c|x)] (score-function estimators
    with any baseline that does not depend on the sample, exact sums, control variates);
  - ``"multi-sample-bound"``: the S-sample bound E[log (1/S) sum_s exp f(c_s)], S =
    ``num_particles`` (VIMCO-style estimators).

  ``None`` marks a biased estimator.
* ``bias``: for a biased estimator, one line naming the bias it carries (what it estimates
  instead, and how the bias moves with its options), e.g. ``"relaxed objective: the likelihood
  at a point inside the simplex; shrinks as tau -> 0"``. Empty for unbiased ones.

A new estimator is one module under ``pyro_moe/estimators/`` with a class registered by
``@ESTIMATORS.register("name")``, imported in ``pyro_moe/estimators/__init__.py``, that sets
``name``, ``unbiased_for`` (or ``unbiased_for = None`` and ``bias = "..."``) and builds with no
arguments (defaults for every option). Nothing else: ``tests/test_estimator_registry.py`` walks
the registry and checks every unbiased estimator's mean gradient against the exact gradient of its
declared objective (within 4 standard errors per coordinate) on small enumerable models (a
mixture of experts with two guides, a two-latent categorical VAE, a Gaussian mixture), and
measures every biased one's bias. An estimator that cannot run on one of these models raises
:class:`~pyro_moe.errors.ConfigError` from :meth:`Estimator.check` (the test then requires it to
run on at least two of them). A new objective is one function registered in
:data:`~pyro_moe.estimators.objectives.OBJECTIVES` that computes it exactly by enumeration.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from pyro_moe.errors import ConfigError
from pyro_moe.validation import check_int


def value_with_gradient_of(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """A tensor equal to ``value`` whose gradient is that of ``surrogate``."""
    return surrogate + (value - surrogate).detach()


class Estimator(nn.Module):
    """Base class: subclasses implement :meth:`loss` and state their properties below."""

    #: registry name
    name: ClassVar[str] = ""
    #: whether the guide must sample ``cluster`` (False: the estimator can sum it out in the model)
    needs_guide_site: ClassVar[bool] = True
    #: the objective whose exact gradient E[estimate] equals (see the module docstring); None:
    #: biased
    unbiased_for: ClassVar[str | None] = "elbo"
    #: for a biased estimator: the bias it carries, in one line
    bias: ClassVar[str] = ""
    #: whether the variance harness may draw estimates with torch.func.vmap (pyro_moe.vectorised)
    vectorisable: ClassVar[bool] = True
    #: whether the model must read the sampled value through ``pyro_moe.gate.select`` (a relaxed
    #: one-hot vector arrives instead of an index)
    needs_select: ClassVar[bool] = False
    #: the guide's sites the estimator acts on (None: every latent site with a discrete support)
    sites: tuple[str, ...] | None = None
    #: the plate over data points (per-point costs, baselines and exact sums use it)
    data_plate: str = "data"

    def __init__(self, *, num_particles: int = 1, max_plate_nesting: int = 1) -> None:
        super().__init__()
        self.num_particles = check_int("num_particles", num_particles)
        self.num_particles = num_particles
        self.max_plate_nesting = max_plate_nesting

    @property
    def unbiased(self) -> bool:
        """Whether E[gradient] is the exact gradient of a declared objective."""
        return self.unbiased_for is not None

    def loss(self, model, guide, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError

    def check(self, guide: nn.Module) -> None:
        """Raise :class:`ConfigError` if this estimator cannot work with ``guide``."""
        if self.needs_guide_site and not getattr(guide, "samples_cluster", True):
            raise ConfigError(
                f"estimator {self.name!r} needs a guide that samples `cluster`; guide "
                f"{type(guide).__name__} leaves it to the model, which only 'enum' can sum out "
                "(pick another guide, e.g. 'posterior' or 'gate')"
            )

    def advance(self, step: int) -> None:
        """Called after every optimisation step (temperature schedules, running statistics)."""

    def extra_repr(self) -> str:
        return f"num_particles={self.num_particles}"
