"""Every registered estimator, checked against what it declares (``Estimator.unbiased_for``).

An unbiased estimator's mean gradient over E estimates must lie within 4 standard errors, per
coordinate, of the exact gradient of its own objective (computed by enumerating the discrete
latents, :mod:`pyro_moe.estimators.objectives`), on four small setups where that sum is finite:

* ``moe-gate``, ``moe-posterior``: a mixture of experts (K = 3, N = 4) with q(c|x) = p(c|x) and
  with an amortized posterior network q(c|x, y);
* ``cat-vae``: a categorical VAE with L = 2 latents of K = 3 classes (K^L = 9 joint values);
* ``gmm``: a Gaussian mixture (K = 3, diagonal) with a linear-softmax encoder q(c|x).

A correct estimator passes a 4-standard-error bound on one coordinate with probability 0.99994
(normal approximation); the ~600 coordinates checked here with fixed seeds keep the chance of a
false alarm under 4%. A coordinate the estimator computes without noise (an exact sum, an analytic
term) must match to 1e-8 relative. A biased estimator must show a bias above 4 times its noise
floor at some temperature (else its declaration is wrong). The lists come from the registry: a new
estimator is checked without editing this file.
"""

from __future__ import annotations

import math

import pyro_moe.guides  # noqa: F401
import pyro_moe.models  # noqa: F401
import pytest
import torch

import pyro_moe.estimators  # noqa: F401
from pyro_moe import variance
from pyro_moe.errors import ConfigError
from pyro_moe.registry import ESTIMATORS
from pyro_moe.verification import SETUPS

UNBIASED = [n for n, cls in ESTIMATORS.items() if cls.unbiased_for is not None]
BIASED = [n for n, cls in ESTIMATORS.items() if cls.unbiased_for is None]
TEMPERATURES = (2.0, 0.5, 0.1)


def _build(name: str, model, guide, **options):
    """The estimator with default options, or None when it declares ``guide`` unusable."""
    estimator = ESTIMATORS[name](max_plate_nesting=model.max_plate_nesting, **options)
    try:
        estimator.check(guide)
    except ConfigError:
        return None
    return estimator


def _num_estimates(estimator) -> int:
    return 2000 if estimator.vectorisable else 200


def _z_excess(m: variance.Measurement) -> torch.Tensor:
    """Per coordinate: |mean - exact| - 4 se - 1e-8 (1 + |exact|) (> 0 fails)."""
    se = m.samples.std(0) / math.sqrt(m.samples.shape[0])
    diff = (m.samples.mean(0) - m.exact).abs()
    return diff - 4 * se - 1e-8 * (1 + m.exact.abs())


@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("name", UNBIASED)
def test_unbiased_estimator_matches_the_exact_gradient_of_its_objective(float64, name, setup):
    model, guide, args = SETUPS[setup]()
    estimator = _build(name, model, guide)
    if estimator is None:
        pytest.skip(f"{name} declares the {setup} guide unusable (checked by the coverage test)")
    torch.manual_seed(1)
    m = variance.measure(estimator, model, guide, args, _num_estimates(estimator))
    assert m.objective == estimator.unbiased_for
    excess = _z_excess(m)
    assert excess.numel() >= 15
    worst = excess.argmax()
    assert excess.max() <= 0, (
        f"{name} on {setup}: coordinate {worst.item()} mean {m.samples.mean(0)[worst]:.5g}, "
        f"exact {m.exact[worst]:.5g} ({m.objective})"
    )


@pytest.mark.parametrize("name", ESTIMATORS.names())
def test_every_estimator_runs_on_at_least_two_setups(float64, name):
    usable = [s for s, make in SETUPS.items() if _build(name, *make()[:2]) is not None]
    assert len(usable) >= 2, f"{name} runs only on {usable}: it would escape the checks"


@pytest.mark.parametrize("name", ESTIMATORS.names())
def test_every_estimator_declares_what_it_is(name):
    cls = ESTIMATORS[name]
    if cls.unbiased_for is None:
        assert cls.bias.strip(), f"biased estimator {name} must name its bias"
    else:
        from pyro_moe.estimators.objectives import OBJECTIVES

        assert cls.unbiased_for in OBJECTIVES, f"{name}: unknown objective {cls.unbiased_for!r}"
        assert not cls.bias, f"unbiased estimator {name} declares a bias"


def _bias_at(name: str, setup: str, **options) -> dict:
    model, guide, args = SETUPS[setup]()
    estimator = _build(name, model, guide, **options)
    torch.manual_seed(3)
    m = variance.measure(estimator, model, guide, args, 1000)
    return variance.summarize(m.samples, m.exact)


def _temperature_options(name: str) -> list[dict]:
    try:
        ESTIMATORS[name](temperature=1.0)
    except TypeError:
        return [{}]
    return [{"temperature": tau} for tau in TEMPERATURES]


@pytest.mark.parametrize("name", BIASED)
def test_biased_estimator_shows_its_bias(float64, name):
    """On the MoE with q = p(c|x): the bias (against the ELBO's exact gradient) exceeds 4 noise
    floors at one temperature at least, so the declaration ``unbiased_for = None`` is earned."""
    rows = [_bias_at(name, "moe-gate", **options) for options in _temperature_options(name)]
    ratios = [r["bias"] / r["bias_noise"] for r in rows]
    assert max(ratios) > 4, f"{name}: bias / noise = {ratios} (is it unbiased after all?)"
