"""``shells``: the piecewise-regression sets for the DVMoE table.

Singh, Panda & Gajbhiye, "Mixture of Experts using Discrete VAE" (Table 1) report Deep MoE vs DVMoE
for input dimensions 1, 2 and 5 but never define their data. This set is built to test their claim,
that a gate which clusters the inputs (a VAE with a mixture prior) beats a plain softmax/MLP gate
when the clusters are not linearly separable:

* K clusters are nested shells: cluster k has radii in the band ``[r_k, r_k + width]`` with
  ``r_k = 1 + gap * k`` (bands separated by ``gap - width``);
* an input is ``x = r u`` with ``u`` uniform on the unit sphere S^{D-1} and ``r`` uniform in its
  cluster's band (clusters equally likely). In D = 1 the "sphere" is {-1, +1}, so cluster k is the
  two intervals ``+-[r_k, r_k + width]``; in D >= 2 it is a spherical shell. No hyperplane
  separates a shell from the ones inside it (the inner ball lies in the convex hull of every
  outer shell), so a linear-softmax gate cannot represent the partition;
* each cluster has its own linear regression function plus Gaussian noise:
  ``y = w_k . x + b_k + noise * eps`` with ``w_k ~ N(0, I_D)`` and offsets
  ``b_k = offset * (k - (K - 1) / 2)`` drawn once from the seed. Linear experts fit every
  cluster exactly, so the test MSE of a model with the right partition approaches ``noise^2``
  and every error of the gate is paid at the scale of ``offset``.

Every split's ``labels`` hold the true cluster of each point, for evaluation only (never shown to
a model); ``meta`` keeps the generating weights, offsets, radii and noise. Splits are 60/20/20.
"""

from __future__ import annotations

import numpy as np

from pyro_moe.data.base import Dataset, split_arrays
from pyro_moe.errors import DataError
from pyro_moe.registry import DATASETS
from pyro_moe.validation import check_int

DIMS = (1, 2, 5)


def _check_int(name: str, value: int, minimum: int) -> int:
    return check_int(f"shells' {name}", value, minimum, error=DataError)


def _check_positive(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
        raise DataError(f"shells needs {name} > 0, got {value!r}")
    return float(value)


def unit_directions(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """``n`` directions uniform on the unit sphere S^{dim-1} (signs +-1 when dim = 1)."""
    u = rng.normal(size=(n, dim))
    return u / np.linalg.norm(u, axis=1, keepdims=True)


@DATASETS.register("shells")
def shells(
    n: int = 2000,
    seed: int = 0,
    dim: int = 2,
    clusters: int = 3,
    width: float = 0.5,
    gap: float = 1.5,
    offset: float = 4.0,
    noise: float = 0.1,
) -> Dataset:
    """K nested shells in D dims, each with its own linear regression function (Table 1 sets)."""
    _check_int("n", n, 10)
    _check_int("dim", dim, 1)
    k = _check_int("clusters", clusters, 1)
    width, gap = _check_positive("width", width), _check_positive("gap", gap)
    offset, noise = _check_positive("offset", offset), _check_positive("noise", noise)
    if width >= gap:
        raise DataError(f"shells needs width < gap so that shells do not touch, got {width}, {gap}")
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(k, dim))  # w_k
    offsets = offset * (np.arange(k) - (k - 1) / 2)  # b_k
    cluster = rng.integers(0, k, n)
    radius = 1.0 + gap * cluster + width * rng.uniform(size=n)
    x = radius[:, None] * unit_directions(rng, n, dim)
    y = (weights[cluster] * x).sum(1) + offsets[cluster] + noise * rng.normal(size=n)
    meta = {
        "weights": weights.tolist(),
        "offsets": offsets.tolist(),
        "radii": [1.0 + gap * j for j in range(k)],
        "width": width,
        "noise": noise,
    }
    return split_arrays(
        "shells", "regression", x, y, cluster, seed=seed, description=shells.__doc__, meta=meta
    )
