"""Paired comparisons of two methods run on the same seeds: a signed-rank test and a bootstrap
interval of an effect size.

Given per-seed scores ``a_i`` and ``b_i`` (i = 1..n, the same data and initialisation for both):

* **Wilcoxon signed-rank test** (Wilcoxon, "Individual comparisons by ranking methods", 1945) of
  H0 "the differences d_i = a_i - b_i are symmetric about 0". With the ranks R_i of |d_i|
  (zero differences dropped, ties given mid-ranks), ``W+ = sum_{d_i > 0} R_i``; the two-sided
  p-value is ``P(|W+ - n(n+1)/4| >= |w+ - n(n+1)/4|)`` under random signs, exact (all 2^n sign
  patterns) when n <= 50 without ties, else the normal approximation (scipy's ``auto``).
* **Paired percentile bootstrap** (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993,
  ch. 13): draw B resamples of the n seed indices with replacement (the pairs stay together),
  compute the statistic on each, and take its ``(1 - level) / 2`` and ``(1 + level) / 2``
  quantiles. Statistics offered: :func:`ratio_of_means` ``mean(a) / mean(b)`` and
  :func:`geometric_mean_ratio` ``exp(mean(log a_i - log b_i))``.

The resamples come from ``numpy.random.default_rng(seed)``, so an interval recomputes exactly
from the per-seed numbers and the seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "bootstrap_interval",
    "geometric_mean_ratio",
    "paired_summary",
    "ratio_of_means",
    "wilcoxon_signed_rank",
]


def _pair(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            f"paired scores need two 1-D arrays of one length, got {a.shape}, {b.shape}"
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired scores must be finite")
    return a, b


def ratio_of_means(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``mean(a) / mean(b)`` over the last axis."""
    return a.mean(-1) / b.mean(-1)


def geometric_mean_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``exp(mean(log a - log b))`` over the last axis (the typical per-seed ratio)."""
    return np.exp((np.log(a) - np.log(b)).mean(-1))


def wilcoxon_signed_rank(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Two-sided Wilcoxon signed-rank test of the paired differences ``a - b`` (scipy):
    ``{"statistic": min(W+, W-), "p_value": p, "n": pairs, "a_better": #(a < b)}``."""
    from scipy.stats import wilcoxon

    a, b = _pair(a, b)
    if len(a) < 2 or np.all(a == b):
        raise ValueError("the signed-rank test needs at least two pairs that differ")
    result = wilcoxon(a, b, alternative="two-sided")
    return {
        "statistic": float(result.statistic),
        "p_value": float(result.pvalue),
        "n": len(a),
        "a_better": int((a < b).sum()),
    }


def bootstrap_interval(
    a: Sequence[float],
    b: Sequence[float],
    statistic: Callable[[np.ndarray, np.ndarray], np.ndarray] = ratio_of_means,
    *,
    resamples: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(estimate, low, high): the statistic on the data and its paired percentile bootstrap
    interval at ``level`` from ``resamples`` resamples drawn with ``default_rng(seed)``."""
    a, b = _pair(a, b)
    if not 0 < level < 1 or resamples < 1:
        raise ValueError(f"need 0 < level < 1 and resamples >= 1, got {level}, {resamples}")
    index = np.random.default_rng(seed).integers(0, len(a), size=(resamples, len(a)))
    values = statistic(a[index], b[index])
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(statistic(a, b)), float(low), float(high)


def paired_summary(
    a: Sequence[float], b: Sequence[float], *, resamples: int = 10_000, seed: int = 0
) -> dict[str, float]:
    """The signed-rank test and 95% bootstrap intervals of both ratios, in one record."""
    record = wilcoxon_signed_rank(a, b)
    for name, statistic in (
        ("ratio_of_means", ratio_of_means),
        ("geo_ratio", geometric_mean_ratio),
    ):
        estimate, low, high = bootstrap_interval(a, b, statistic, resamples=resamples, seed=seed)
        record.update({name: estimate, f"{name}_low": low, f"{name}_high": high})
    record.update({"resamples": resamples, "bootstrap_seed": seed, "level": 0.95})
    return record
