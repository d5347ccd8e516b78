"""Metrics on held-out data.

* :func:`enumerated_log_likelihood`: exact log p(y|x) per point for any model whose only latent
  sites are discrete, by enumerating them in parallel and summing the joint over their values:
  log p(y_n|x_n) = logsumexp_{c} sum_sites log p(site | ...).
* :func:`mse` of a predictive mean, :func:`accuracy` of predicted class probabilities.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro import poutine
from pyro.infer import config_enumerate
from pyro.poutine.subsample_messenger import _Subsample

from pyro_moe.errors import ConfigError


def enumerated_log_likelihood(
    model, *args: Any, max_plate_nesting: int = 1, **kwargs: Any
) -> torch.Tensor:
    """log p(observed sites | inputs) per element of the data plate, latent sites summed out.

    Every unobserved sample site must be discrete (it is enumerated); the log-probabilities of all
    sites are added with enumeration's broadcasting and the enumeration dims (those left of the
    ``max_plate_nesting`` plate dims) are summed out with ``logsumexp``. Returns ``[N]``.
    """
    enumerated = poutine.enum(
        config_enumerate(model, "parallel"), first_available_dim=-1 - max_plate_nesting
    )
    with torch.no_grad():
        trace = poutine.trace(enumerated).get_trace(*args, **kwargs)
    total = torch.zeros(())
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or isinstance(site["fn"], _Subsample):
            continue
        if not site["is_observed"] and site["infer"].get("enumerate") != "parallel":
            raise ConfigError(f"site {name!r} is latent and cannot be enumerated")
        total = total + site["fn"].log_prob(site["value"])
    enum_dims = list(range(total.dim() - max_plate_nesting))
    return total.logsumexp(enum_dims) if enum_dims else total


def mse(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Mean squared error, averaged over points and output dims."""
    return torch.mean((prediction - target) ** 2).item()


def accuracy(probs: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of points whose most probable class is the target (``probs`` ``[N, L]``)."""
    return (probs.argmax(-1) == target).double().mean().item()
