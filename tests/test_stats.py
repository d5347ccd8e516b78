"""pyro_moe.stats against brute force: the signed-rank p-value by enumerating every sign pattern,
the bootstrap interval against the exact bootstrap distribution (every resample enumerated)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pyro_moe import stats


def exact_signed_rank_p(a, b) -> float:
    """Two-sided exact p of the signed-rank statistic (no ties, no zeros): all 2^n sign patterns
    of the ranks 1..n equally likely under H0; p = P(|W+ - n(n+1)/4| >= |w+ - n(n+1)/4|)."""
    d = np.asarray(a) - np.asarray(b)
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    observed = ranks[d > 0].sum()
    centre = len(d) * (len(d) + 1) / 4
    patterns = np.array(list(itertools.product([0, 1], repeat=len(d))))
    w_plus = patterns @ np.arange(1, len(d) + 1)
    return float(np.mean(np.abs(w_plus - centre) >= abs(observed - centre) - 1e-9))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wilcoxon_p_value_equals_enumeration_of_sign_patterns(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.lognormal(size=12), rng.lognormal(size=12)
    result = stats.wilcoxon_signed_rank(a, b)
    assert result["p_value"] == pytest.approx(exact_signed_rank_p(a, b), abs=1e-12)
    assert result["a_better"] == int((a < b).sum()) and result["n"] == 12


def test_wilcoxon_all_pairs_one_way_gives_the_smallest_p():
    a = np.arange(1.0, 9.0)
    result = stats.wilcoxon_signed_rank(a, a + 1 + 0.1 * np.arange(8))
    assert result["p_value"] == pytest.approx(2 / 2**8, abs=1e-12)
    assert result["statistic"] == 0 and result["a_better"] == 8


def exact_bootstrap(a, b, statistic) -> np.ndarray:
    """The statistic on every one of the n^n equally likely resamples of the n pairs."""
    index = np.array(list(itertools.product(range(len(a)), repeat=len(a))))
    return statistic(np.asarray(a)[index], np.asarray(b)[index])


@pytest.mark.parametrize("statistic", [stats.ratio_of_means, stats.geometric_mean_ratio])
def test_bootstrap_interval_matches_the_exact_bootstrap_distribution(statistic):
    """The 2.5% and 97.5% ends cut the exact distribution (4^5 resamples) at 2.5% +- 0.5%."""
    a, b = [0.3, 1.2, 0.05, 2.0, 0.7], [0.5, 0.4, 0.06, 1.0, 0.9]
    exact = exact_bootstrap(a, b, statistic)
    estimate, low, high = stats.bootstrap_interval(a, b, statistic, resamples=100_000, seed=3)
    assert estimate == pytest.approx(float(statistic(np.array(a), np.array(b))), rel=1e-12)
    for end, share in ((low, 0.025), (high, 0.975)):
        assert np.mean(exact < end) <= share + 0.005
        assert np.mean(exact <= end) >= share - 0.005


def test_bootstrap_interval_recomputes_exactly_from_its_seed():
    rng = np.random.default_rng(5)
    a, b = rng.lognormal(size=10), rng.lognormal(size=10)
    first = stats.bootstrap_interval(a, b, resamples=500, seed=7)
    assert first == stats.bootstrap_interval(a, b, resamples=500, seed=7)
    assert first != stats.bootstrap_interval(a, b, resamples=500, seed=8)


def test_paired_summary_holds_the_test_and_both_intervals():
    rng = np.random.default_rng(4)
    a, b = rng.lognormal(size=10), rng.lognormal(size=10)
    summary = stats.paired_summary(a, b, resamples=200, seed=1)
    assert summary["p_value"] == stats.wilcoxon_signed_rank(a, b)["p_value"]
    low, high = summary["ratio_of_means_low"], summary["ratio_of_means_high"]
    assert (summary["ratio_of_means"], low, high) == stats.bootstrap_interval(
        a, b, resamples=200, seed=1
    )
    assert summary["geo_ratio_low"] <= summary["geo_ratio"] <= summary["geo_ratio_high"]


@pytest.mark.parametrize(
    "a, b",
    [([1.0, 2.0], [1.0]), ([1.0, float("nan")], [1.0, 2.0]), ([[1.0]], [[2.0]])],
)
def test_malformed_pairs_are_refused(a, b):
    with pytest.raises(ValueError):
        stats.bootstrap_interval(a, b)


def test_signed_rank_needs_two_differing_pairs():
    with pytest.raises(ValueError, match="two pairs"):
        stats.wilcoxon_signed_rank([1.0, 2.0], [1.0, 2.0])
