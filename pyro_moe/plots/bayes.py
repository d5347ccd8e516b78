"""ArviZ figures of one posterior (:mod:`pyro_moe.bayes`): trace, rank, posterior-predictive
check and pair plot, each returned as a matplotlib figure."""

from __future__ import annotations

from typing import Any

import numpy as np

#: the sites of the pair plot, in order, until it has at least two scalars
PAIR_SITES = ("gate_bias", "expert_intercept", "expert_scale", "expert_weight")


def _figure(axes: Any):
    return np.ravel(axes)[0].figure


def pair_sites(idata) -> list[str]:
    """The first :data:`PAIR_SITES` the posterior has, enough for two scalars or more."""
    chosen, scalars = [], 0
    for name in PAIR_SITES:
        if name in idata.posterior and scalars < 2:
            chosen.append(name)
            scalars += int(np.prod(idata.posterior[name].shape[2:]))
    return chosen


def posterior_figures(idata) -> dict[str, Any]:
    """``{"trace", "rank", "ppc", "pair"}`` -> figure, for an InferenceData of
    :func:`~pyro_moe.bayes.to_inference_data`."""
    from pyro_moe.bayes import arviz

    az = arviz()
    names = list(idata.posterior.data_vars)
    draws = idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"]
    figures = {
        "trace": _figure(az.plot_trace(idata, var_names=names, compact=True)),
        "rank": _figure(az.plot_rank(idata, var_names=names)),
        "ppc": _figure(az.plot_ppc(idata, num_pp_samples=min(50, draws), random_seed=0)),
    }
    figures["pair"] = _figure(
        az.plot_pair(idata, var_names=pair_sites(idata), divergences="sample_stats" in idata)
    )
    for figure in figures.values():
        figure.tight_layout()
    return figures
