"""Run the guide, then the model on the guide's values, and keep each sample site: the one pass
every sampling estimator makes.

:func:`run_traces` does what ``poutine.trace(guide)`` followed by ``poutine.trace(poutine.replay(
model, guide_trace))`` does for an ELBO, and :meth:`SiteTrace.compute_log_prob` what
``Trace.compute_log_prob`` does, with less bookkeeping per site:

* :class:`Record` keeps each sample site's message as it is (``poutine.trace`` copies every
  message, parameter sites and the plates' index sites included, into a graph);
* replaying is the same handler: a model site named like a guide site takes the guide's value
  (and ``infer``), an observed site keeps its data, as in ``poutine.replay``;
* log-densities: ``log_prob`` (scaled and masked) and ``unscaled_log_prob`` per site, without
  ``log_prob_sum`` and its NaN / inf warnings (the trainer checks every loss and gradient for
  non-finite values, :mod:`pyro_moe.nonfinite`);
* ``pyro.module``'s parameter sites: a parameter the param store already holds as it is (the same
  tensor, unconstrained) is returned at once, which is what the store's lookup would return.

The two runs sit inside two plates to the left of the model's own plates::

    estimates  (size E, dim -(max_plate_nesting + 2))   independent estimates
    particles  (size S, dim -(max_plate_nesting + 1))   the S samples one estimate uses

With ``unit_plates=False`` a plate of size 1 is left out (its dim is then absent from the sites'
shapes, which broadcast alike): an ordinary one-sample step then runs the model as it is written.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import pyro
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample

from pyro_moe.base import store_holds_as_is

ESTIMATES = "estimates_vectorized"
PARTICLES = "num_particles_vectorized"


class SiteTrace:
    """The sample sites of one run, by name, in execution order (``nodes``, as a Pyro
    ``Trace``'s), each the site's message with Pyro's keys (``fn``, ``value``, ``scale``,
    ``mask``, ``cond_indep_stack``, ``is_observed``, ``infer``, ...)."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}

    def compute_log_prob(self) -> None:
        """``unscaled_log_prob`` = fn.log_prob(value) and ``log_prob`` (scaled and masked) at
        every site that has none yet."""
        for name, site in self.nodes.items():
            if "log_prob" in site:
                continue
            try:
                log_p = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
            except ValueError as e:
                raise ValueError(f"Error while computing log_prob at site '{name}': {e}") from e
            site["unscaled_log_prob"] = log_p
            site["log_prob"] = scale_and_mask(log_p, site["scale"], site["mask"])


class Record(Messenger):
    """Keep every sample site's message in :attr:`trace` (plate index sites left out); with
    ``replay``, a latent site named like one of ``replay``'s takes its value first."""

    #: its ``_pyro_param`` only returns a parameter the store holds as it is, so a skipped
    #: ``pyro.module`` changes nothing here (:func:`pyro_moe.base.register_module`)
    param_transparent = True

    def __init__(self, replay: SiteTrace | None = None) -> None:
        super().__init__()
        self.trace = SiteTrace()
        self.replay = replay

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if self.replay is None or msg["is_observed"]:
            return
        site = self.replay.nodes.get(msg["name"])
        if site is None:
            return
        if site["is_observed"]:
            raise RuntimeError(f"site {msg['name']} must be sampled in trace")
        msg["value"], msg["infer"], msg["done"] = site["value"], site["infer"], True

    def _pyro_param(self, msg: dict[str, Any]) -> None:
        if len(msg["args"]) < 2:
            return
        value = msg["args"][1]
        if store_holds_as_is(pyro.get_param_store(), msg["name"], value):
            msg["value"], msg["done"] = value, True

    def _pyro_post_sample(self, msg: dict[str, Any]) -> None:
        if isinstance(msg["fn"], _Subsample):
            return
        if msg["name"] in self.trace.nodes:
            raise RuntimeError(f"Multiple sample sites named '{msg['name']}'")
        self.trace.nodes[msg["name"]] = msg


def program_key(model, guide) -> tuple[int, ...]:
    """Identifies a (model, guide) pair across calls (a bound method by its object and
    function), without keeping references to them."""
    return (id(getattr(model, "__self__", model)), id(getattr(model, "__func__", model)), id(guide))


def in_plates(fn, num_estimates: int, num_particles: int, nesting: int, unit: bool = True):
    """``fn`` inside the estimates and particles plates (``unit=False``: without those of
    size 1)."""
    sizes = ((ESTIMATES, num_estimates, -(nesting + 2)), (PARTICLES, num_particles, -(nesting + 1)))
    plates = [(name, size, dim) for name, size, dim in sizes if unit or size > 1]

    def wrapped(*args, **kwargs):
        with ExitStack() as stack:
            for name, size, dim in plates:
                stack.enter_context(pyro.plate(name, size, dim=dim))
            return fn(*args, **kwargs)

    return wrapped


def run_traces(
    model,
    guide,
    args,
    kwargs,
    num_estimates: int,
    num_particles: int,
    nesting: int,
    handler=None,
    unit_plates: bool = True,
) -> tuple[SiteTrace, SiteTrace]:
    """(model trace, guide trace): the guide run, then the model replaying it, both inside the
    estimates / particles plates; ``handler``: a pair of callables ``fn -> fn`` applied to the
    model and to the guide first."""
    if handler is not None:  # (model handler, guide handler)
        model, guide = handler[0](model), handler[1](guide)
    with Record() as guide_run:
        in_plates(guide, num_estimates, num_particles, nesting, unit_plates)(*args, **kwargs)
    with Record(guide_run.trace) as model_run:
        in_plates(model, num_estimates, num_particles, nesting, unit_plates)(*args, **kwargs)
    return model_run.trace, guide_run.trace
