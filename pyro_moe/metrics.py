"""Metrics on held-out data.

* :func:`enumerated_log_likelihood`: exact log p(y|x) per point for any model whose only latent
  sites are discrete, by enumerating them in parallel and summing the joint over their values:
  log p(y_n|x_n) = logsumexp_{c} sum_sites log p(site | ...).
* :func:`mse` of a predictive mean, :func:`accuracy` of predicted class probabilities.
* clustering: :func:`clustering_accuracy` (Hungarian best map), :func:`nmi`, :func:`ari`, and
  :func:`inference_seconds_per_10k` for the cost of computing q(c|x).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from pyro import poutine
from pyro.infer import config_enumerate
from pyro.poutine.subsample_messenger import _Subsample

from pyro_moe.errors import ConfigError, DataError


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


# --- clustering ---------------------------------------------------------------------------------
def _as_labels(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a)
    if arr.ndim != 1 or arr.size == 0:
        raise DataError(f"{name} must be a non-empty 1-D array of labels, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{name} must hold integer labels, got dtype {arr.dtype}")
    return arr


def _label_pair(truth: Any, predicted: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = _as_labels(truth, "truth"), _as_labels(predicted, "predicted")
    if t.shape != p.shape:
        raise DataError(f"truth has {t.size} labels but predicted has {p.size}")
    return t, p


def clustering_accuracy(truth: Any, predicted: Any) -> float:
    """Unsupervised clustering accuracy: the best one-to-one map m from clusters to classes,
    max_m (1/N) sum_n 1[truth_n = m(predicted_n)], found by the Hungarian algorithm on the
    contingency table (``scipy.optimize.linear_sum_assignment``), as in Xie et al. 2016 (DEC)
    and Jiang et al. 2017 (VaDE). Clusters left without a class count as wrong."""
    from scipy.optimize import linear_sum_assignment

    t, p = _label_pair(truth, predicted)
    _, t_idx = np.unique(t, return_inverse=True)
    _, p_idx = np.unique(p, return_inverse=True)
    table = np.zeros((p_idx.max() + 1, t_idx.max() + 1), dtype=np.int64)
    np.add.at(table, (p_idx, t_idx), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / t.size)


def nmi(truth: Any, predicted: Any) -> float:
    """Normalized mutual information (arithmetic normalisation, scikit-learn)."""
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(*_label_pair(truth, predicted)))


def ari(truth: Any, predicted: Any) -> float:
    """Adjusted Rand index (scikit-learn)."""
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(*_label_pair(truth, predicted)))


def clustering_scores(truth: Any, predicted: Any) -> dict[str, float]:
    """``{"accuracy", "nmi", "ari"}`` of a predicted clustering against the true classes."""
    return {
        "accuracy": clustering_accuracy(truth, predicted),
        "nmi": nmi(truth, predicted),
        "ari": ari(truth, predicted),
    }


def inference_seconds_per_10k(
    infer: Callable[[torch.Tensor], Any], x: torch.Tensor, repeats: int = 3, batch: int = 10_000
) -> float:
    """Wall seconds that ``infer`` (e.g. x -> q(c|x)) takes per 10,000 rows of ``x``: the best of
    ``repeats`` passes over ``x`` in chunks of ``batch`` rows, without gradients, scaled to 10k."""
    if repeats < 1 or len(x) == 0:
        raise ConfigError("inference timing needs repeats >= 1 and at least one row")
    best = math.inf
    with torch.no_grad():
        infer(x[: min(len(x), 64)])  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            for i in range(0, len(x), batch):
                infer(x[i : i + batch])
            best = min(best, time.perf_counter() - start)
    return best * 10_000 / len(x)


def split_metrics(model: Any, split: Any) -> dict[str, float]:
    """``model.evaluate(x, y)`` on a :class:`~pyro_moe.data.Split`, plus accuracy (Hungarian),
    NMI and ARI of ``model.predict_cluster(x)`` against the split's ground-truth ``labels`` when
    the split has labels and the model assigns clusters (the labels' scores replace any the model
    computed from ``y``)."""
    result = dict(model.evaluate(split.x, split.y))
    if split.labels is None:
        return result
    if "accuracy" in result and split.y is not None and torch.equal(split.y, split.labels):
        return result  # the model scored these very labels already
    with torch.no_grad():
        clusters = model.predict_cluster(split.x)
    if clusters is not None:
        result.update(clustering_scores(split.labels, clusters))
    return result
