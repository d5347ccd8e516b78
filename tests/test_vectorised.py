"""The vectorised variance harness (torch.func) against the Python loop of single estimates.

* Same noise, same values: with ``randomness="same"`` every vectorised row must equal the gradient
  of one ordinary ``estimator.loss`` run from the same RNG state (float64, 1e-10).
* Independent noise, same distribution: the two modes' mean gradients agree within a z-score
  bound, and rows are distinct (independent draws, not copies).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyro_moe.estimators  # noqa: F401
from pyro_moe import variance
from pyro_moe.registry import ESTIMATORS
from pyro_moe.vectorised import NotVectorisable, per_estimate_gradients, pick_chunk
from tests.helpers import tiny_data, tiny_moe

SAMPLED = ["reinforce", "rloo", "vimco", "nvil", "gumbel", "st-gumbel", "gumbel-rao", "question"]


def _setup(guide="posterior", n=6):
    data = tiny_data("regression", n=40, seed=0)
    model, guide_ = tiny_moe(data, guide, num_components=3)
    params = [p for m in (model, guide_) for p in m.parameters()]
    return model, guide_, (data.train.x[:n], data.train.y[:n]), params


@pytest.mark.parametrize("name", SAMPLED)
def test_vectorised_rows_equal_single_estimate_for_same_noise(float64, name):
    model, guide, args, params = _setup()
    estimator = ESTIMATORS[name]()
    estimator.check(guide)
    torch.manual_seed(5)
    single = variance._single(estimator, model, guide, args, params)
    torch.manual_seed(5)
    rows = per_estimate_gradients(
        estimator, model, guide, args, params, 4, chunk=3, randomness="same"
    )
    assert rows.shape == (4, single.numel())
    assert single.abs().max() > 0
    torch.testing.assert_close(rows, single.expand_as(rows), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["gumbel", "rloo"])
def test_vectorised_and_loop_estimates_have_the_same_mean(float64, name):
    model, guide, args, params = _setup()
    estimator = ESTIMATORS[name]()
    torch.manual_seed(6)
    vec = variance.gradient_samples(estimator, model, guide, args, params, 600, True, chunk=128)
    loop = variance.gradient_samples(estimator, model, guide, args, params, 600, False)
    se = (vec.var(0) / len(vec) + loop.var(0) / len(loop)).sqrt()
    live = se > 0
    z = ((vec.mean(0) - loop.mean(0)).abs()[live] / se[live]).max()
    assert live.sum() > 50
    assert z < 4.0 + 0.5 * math.log(live.sum().item()), z
    assert torch.unique(vec[:, live], dim=0).shape[0] == len(vec)  # independent, not copies
    # and the spread matches too: the total variances agree within 25%
    ratio = vec.var(0).sum() / loop.var(0).sum()
    assert 0.75 < ratio < 1.33, ratio


def test_chunk_is_picked_from_the_batch_size():
    assert pick_chunk(1000, 1000) == 131
    assert pick_chunk(50, 1000) == 1000
    assert pick_chunk(10**7, 1000) == 1


class _StoreParamGuide(nn.Module):
    """A guide whose parameter lives only in Pyro's param store (no module tensor to swap)."""

    samples_cluster = True

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x, y=None, num_data=None):
        logits = pyro.param("store_logits", torch.zeros(self.k))
        logits = pyro.param("store_logits")
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("cluster", dist.Categorical(logits=logits.expand(x.shape[0], -1)))


def test_a_program_vmap_cannot_run_falls_back_to_the_loop_with_a_warning(float64):
    model, _, args, _ = _setup()
    guide = _StoreParamGuide(3)
    estimator = ESTIMATORS["rloo"]()
    params = list(model.parameters())
    with pytest.raises(NotVectorisable, match="param store"):
        per_estimate_gradients(estimator, model, guide, args, params, 2)
    with pytest.warns(UserWarning, match="cannot be vectorised"):
        samples = variance.gradient_samples(estimator, model, guide, args, params, 3)
    assert samples.shape == (3, sum(p.numel() for p in params))


def test_snr_leaves_out_coordinates_that_vary_only_by_rounding():
    """A coordinate that is constant up to float32 rounding (an analytic KL's gradient, summed in
    a different order per chunk) is not noise: the SNR is that of the noisy coordinate alone,
    |mean| / std = 2 / 1 here, exactly as computed from the samples."""
    g = torch.Generator().manual_seed(0)
    noisy = 2.0 + torch.randn(4000, generator=g)
    rounded = torch.full((4000,), 3.0) * (1 + 1e-7 * torch.randn(4000, generator=g))
    samples = torch.stack([noisy, rounded], 1).float()
    assert samples[:, 1].std() > 0  # the rounding spread is there
    expected = (samples[:, 0].mean().abs() / samples[:, 0].std()).item()
    stats = variance.summarize(samples, torch.tensor([2.0, 3.0]))
    assert stats["snr"] == pytest.approx(expected, rel=1e-6)
    assert stats["snr"] == pytest.approx(2.0, abs=0.1)


def test_without_validation_every_estimate_is_vectorised(float64, monkeypatch):
    """``validate=False`` skips the ordinary (validating) estimate: all rows come from vmap, in
    chunks written straight into the result, and with the same noise each chunk's rows still
    equal the one ordinary run's gradient."""
    model, guide, args, params = _setup()
    estimator = ESTIMATORS["reinforce"]()
    pyro.set_rng_seed(3)
    ordinary = variance._single(estimator, model, guide, args, params)

    def refused(*_):
        raise AssertionError("the ordinary estimate ran")

    monkeypatch.setattr(variance, "_single", refused)
    pyro.set_rng_seed(3)
    rows = variance.gradient_samples(
        estimator, model, guide, args, params, 5, chunk=2, validate=False
    )
    assert rows.shape == (5, sum(p.numel() for p in params))
    assert len({tuple(r.tolist()) for r in rows}) == 5  # independent draws
    pyro.set_rng_seed(3)
    same = per_estimate_gradients(estimator, model, guide, args, params, 5, 2, "same")
    assert torch.allclose(same, ordinary.expand_as(same), rtol=1e-10, atol=1e-10)
