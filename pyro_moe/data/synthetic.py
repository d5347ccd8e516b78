"""Seeded synthetic data sets: each builder ``(n, seed) -> Dataset`` is registered by name.

* ``bishop``: Bishop's inverse problem (Bishop 1994, "Mixture Density Networks", sec. 5):
  ``t ~ U(0, 1)``, ``x = t + 0.3 sin(2 pi t) + U(-0.1, 0.1)``; predict ``t`` from ``x``. For
  ``x`` in about (0.35, 0.65) three branches of ``t`` are possible, so p(t|x) is multimodal and a
  single Gaussian cannot fit it.
* ``two-parabolas``: the two-parabola example of the "Mixture of Variational Autoencoders - a
  Fusion Between MoE and VAE" blog post: ``y = (2x + 1)^2 - 1`` for ``x < x'`` and
  ``y = 2 - (2x - 2)^2`` for ``x >= x'`` with ``x' = 0.3`` (off the centre of ``x ~ U(-1, 1)``,
  so a k-means split of the inputs at 0 is wrong), noise sd 0.05.
* ``sign-flip``: piecewise-linear regression whose offset flips sign at ``x = 0``:
  ``y = x + 1.5`` for ``x < 0``, ``y = x - 1.5`` for ``x >= 0``, ``x ~ U(-2, 2)``, noise sd 0.1.
  Two linear experts and a gate that learns the split fit it exactly.
* ``spirals``: ``arms`` interleaved spiral arms in 2-D (classification by arm; the arm is also the
  ground-truth cluster). Arm k: ``r = t``, angle ``2 pi k / arms + 2 pi * turns * t``,
  ``t ~ U(0.15, 1)``, isotropic noise sd ``noise``.

Every set has ``labels`` (the generating component) for evaluation, and is split 60/20/20.
"""

from __future__ import annotations

import math

import numpy as np

from pyro_moe.data.base import Dataset, split_arrays
from pyro_moe.errors import DataError
from pyro_moe.registry import DATASETS
from pyro_moe.validation import check_int


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _check_size(n: int, minimum: int = 10) -> None:
    check_int("n (points of a synthetic data set)", n, minimum, error=DataError)


@DATASETS.register("bishop")
def bishop_inverse(n: int = 1000, seed: int = 0) -> Dataset:
    """Bishop's inverse problem: predict t from x = t + 0.3 sin(2 pi t) + noise (multimodal)."""
    _check_size(n)
    rng = _rng(seed)
    t = rng.uniform(0.0, 1.0, n)
    x = t + 0.3 * np.sin(2 * math.pi * t) + rng.uniform(-0.1, 0.1, n)
    branch = np.digitize(t, [1 / 3, 2 / 3])  # which monotone piece of x(t) the point lies on
    return split_arrays(
        "bishop", "regression", x[:, None], t, branch, seed=seed, description=bishop_inverse.__doc__
    )


@DATASETS.register("two-parabolas")
def two_parabolas(n: int = 1000, seed: int = 0, split: float = 0.3) -> Dataset:
    """Two parabolas joined at x' = 0.3 (the blog post's example): an expert per side of x'."""
    _check_size(n)
    rng = _rng(seed)
    x = rng.uniform(-1.0, 1.0, n)
    right = x >= split
    y = np.where(right, 2.0 - (2 * x - 2) ** 2, (2 * x + 1) ** 2 - 1.0) + rng.normal(0, 0.05, n)
    return split_arrays(
        "two-parabolas",
        "regression",
        x[:, None],
        y,
        right.astype(np.int64),
        seed=seed,
        description=two_parabolas.__doc__,
    )


@DATASETS.register("sign-flip")
def sign_flip(n: int = 1000, seed: int = 0) -> Dataset:
    """Piecewise-linear regression, y = x + 1.5 for x < 0 and x - 1.5 for x >= 0, noise 0.1."""
    _check_size(n)
    rng = _rng(seed)
    x = rng.uniform(-2.0, 2.0, n)
    right = x >= 0
    y = x + np.where(right, -1.5, 1.5) + rng.normal(0, 0.1, n)
    return split_arrays(
        "sign-flip",
        "regression",
        x[:, None],
        y,
        right.astype(np.int64),
        seed=seed,
        description=sign_flip.__doc__,
    )


@DATASETS.register("spirals")
def spirals(
    n: int = 1500, seed: int = 0, arms: int = 3, turns: float = 1.0, noise: float = 0.02
) -> Dataset:
    """K interleaved spiral arms in 2-D; the arm is the class and the ground-truth cluster."""
    _check_size(n)
    check_int("spirals' arms", arms, error=DataError)
    rng = _rng(seed)
    arm = rng.integers(0, arms, n)
    t = rng.uniform(0.15, 1.0, n)
    angle = 2 * math.pi * arm / arms + 2 * math.pi * turns * t
    x = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1) + rng.normal(0, noise, (n, 2))
    return split_arrays(
        "spirals",
        "classification",
        x,
        arm,
        arm,
        seed=seed,
        num_classes=arms,
        description=spirals.__doc__,
    )
