"""Every estimator as a drop-in Pyro loss for ``pyro.infer.SVI``.

    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}),
                         loss=pyro_moe.estimator("rloo", num_particles=4))

:func:`estimator` returns a :class:`PyroLoss` with Pyro's ELBO methods: ``differentiable_loss``
(a tensor: minus the objective estimate, carrying the estimator's gradient), ``loss`` (its value
as a float) and ``loss_and_grads`` (``backward`` into the param store's tensors, as
``SVI.step`` expects). The model and guide are plain functions or modules with ``pyro.param`` /
``pyro.module`` parameters. The estimator acts on the guide's discrete sample sites (every latent
site with a discrete support, or those named by ``sites=``), whatever their names; the data plate
is the rightmost plate holding them and ``max_plate_nesting`` is read from the program, both on
the first call (:func:`pyro_moe.programs.inspect_program`). The estimator's own state (learned
baselines, control variates) is registered with ``pyro.module``, so ``SVI`` trains it with the
model, and its :meth:`~pyro_moe.estimators.base.Estimator.advance` (temperature schedules) runs
after every ``loss_and_grads``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro
import torch
from pyro.infer import ELBO

from pyro_moe import programs
from pyro_moe.errors import ConfigError
from pyro_moe.estimators.base import Estimator
from pyro_moe.registry import ESTIMATORS


class PyroLoss(ELBO):
    """An estimator behind Pyro's ELBO interface (see the module docstring); a subclass of
    ``pyro.infer.ELBO`` so that ``SVI`` calls :meth:`loss_and_grads`."""

    def __init__(
        self,
        name: str,
        sites: Sequence[str] | None = None,
        max_plate_nesting: int | None = None,
        **options: Any,
    ) -> None:
        ESTIMATORS[name]  # unknown names fail here, listing the known ones
        super().__init__()
        self.name, self.options = name, options
        self.sites = None if sites is None else tuple(sites)
        self.max_plate_nesting = max_plate_nesting
        self.estimator: Estimator | None = None
        self.step = 0

    def _build(self, model, guide, args, kwargs) -> Estimator:
        if self.estimator is None:
            info = programs.inspect_program(model, guide, args, kwargs, self.sites)
            nesting = self.max_plate_nesting or max(1, info.max_plate_nesting)
            try:
                made = ESTIMATORS[self.name](max_plate_nesting=nesting, **self.options)
            except TypeError as e:
                raise ConfigError(f"estimator {self.name!r}: {e}") from None
            made.check(guide)
            self.estimator = programs.configure(made, info)
        return self.estimator

    def differentiable_loss(self, model, guide, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Minus the objective estimate, with the estimator's gradient."""
        estimator = self._build(model, guide, args, kwargs)
        if any(True for _ in estimator.parameters()):
            pyro.module(f"pyro_moe_{self.name}", estimator)
        return estimator.loss(model, guide, *args, **kwargs)

    def loss(self, model, guide, *args: Any, **kwargs: Any) -> float:
        """Minus the objective estimate, as a float."""
        return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args: Any, **kwargs: Any) -> float:
        """Minus the objective estimate; leaves the gradient estimate in the parameters' ``.grad``
        and advances the estimator's schedules."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        self.estimator.advance(self.step)
        self.step += 1
        return loss.item()

    def _get_trace(self, model, guide, args, kwargs):  # ELBO's hook for its own particles
        raise NotImplementedError("pyro_moe estimators draw their samples themselves")

    def __repr__(self) -> str:
        return f"pyro_moe.estimator({self.name!r}, sites={self.sites}, **{self.options})"


def estimator(
    name: str,
    *,
    sites: Sequence[str] | None = None,
    max_plate_nesting: int | None = None,
    **options: Any,
) -> PyroLoss:
    """The registered estimator ``name`` with keyword ``options`` as a Pyro loss (see the module
    docstring); ``sites`` names the discrete guide sites it acts on (None: all of them)."""
    return PyroLoss(name, sites, max_plate_nesting, **options)
