"""Metrics on held-out data.

* :func:`enumerated_log_likelihood`: exact log p(y|x) per point for any model whose only latent
  sites are discrete, by enumerating them in parallel and summing the joint over their values:
  log p(y_n|x_n) = logsumexp_{c} sum_sites log p(site | ...).
* :func:`mse` of a predictive mean, :func:`accuracy` of predicted class probabilities.
* clustering: :func:`clustering_accuracy` (Hungarian best map), :func:`nmi`, :func:`ari`, and
  :func:`inference_seconds_per_10k` for the cost of computing q(c|x).
* :func:`importance_log_likelihood`: the importance-sampled log p(x) of a latent-variable model,
  samples drawn in chunks so that thousands per row fit in memory.
* :func:`knn_error`: the error of a k-nearest-neighbour vote on latent codes (fitted on training
  codes, scored on test codes).
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
from pyro_moe.validation import check_int


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


def importance_log_likelihood(
    log_weights: Callable[[torch.Tensor, int], torch.Tensor],
    x: torch.Tensor,
    num_samples: int = 5000,
    sample_batch: int = 500,
    row_batch: int = 100,
) -> torch.Tensor:
    """Importance-sampled log p(x_n) of every row, ``[N]`` (Burda, Grosse & Salakhutdinov,
    "Importance Weighted Autoencoders", ICLR 2016, eq. 8; Rezende et al. 2014, appendix E)::

        log p(x_n) ~= logsumexp_{s=1..S} log w_s - log S,   w_s = p(x_n, z_s) / r(z_s | x_n),
        z_s ~ r(z | x_n)

    ``log_weights(rows, s)`` returns ``[s, len(rows)]`` log-weights of fresh draws. The S =
    ``num_samples`` draws are taken ``sample_batch`` at a time for ``row_batch`` rows at a time
    and combined with a running ``logsumexp``, so memory grows with ``sample_batch * row_batch``,
    not with S. The estimate is consistent as S grows and, by Jensen's inequality, lies below
    log p(x_n) in expectation.
    """
    num_samples = check_int("num_samples", num_samples)
    sample_batch = check_int("sample_batch", sample_batch)
    row_batch = check_int("row_batch", row_batch)
    out = []
    with torch.no_grad():
        for rows in x.split(row_batch):
            total = torch.full((len(rows),), -math.inf, dtype=rows.dtype, device=rows.device)
            for start in range(0, num_samples, sample_batch):
                part = log_weights(rows, min(sample_batch, num_samples - start))  # [s, n]
                total = torch.logaddexp(total, part.logsumexp(0))
            out.append(total - math.log(num_samples))
    return torch.cat(out)


def knn_votes(
    train_codes: torch.Tensor,
    train_labels: torch.Tensor,
    test_codes: torch.Tensor,
    ks: tuple[int, ...],
    test_batch: int = 500,
) -> dict[int, torch.Tensor]:
    """For each k in ``ks``, the majority label among the k training codes nearest (Euclidean)
    to each test code; a tie goes to the smallest tied label. The neighbours are found once, for
    the largest k. Returns ``{k: [M] labels}``."""
    for k in ks:
        check_int("k", k)
    if max(ks) > len(train_codes):
        raise ConfigError(f"k = {max(ks)} neighbours asked for, only {len(train_codes)} codes")
    train_labels = torch.as_tensor(train_labels, dtype=torch.long)
    num_labels = int(train_labels.max()) + 1
    out: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for rows in test_codes.split(test_batch):
        distances = torch.cdist(rows, train_codes)  # [m, N]
        nearest = distances.topk(max(ks), largest=False, sorted=True).indices  # [m, k_max]
        for k in ks:
            votes = torch.zeros(len(rows), num_labels, dtype=torch.long)
            votes.scatter_add_(1, train_labels[nearest[:, :k]], torch.ones_like(nearest[:, :k]))
            out[k].append(votes.argmax(-1))  # the first maximum: the smallest tied label
    return {k: torch.cat(parts) for k, parts in out.items()}


def knn_predict(
    train_codes: torch.Tensor,
    train_labels: torch.Tensor,
    test_codes: torch.Tensor,
    k: int,
    test_batch: int = 500,
) -> torch.Tensor:
    """The k-nearest-neighbour vote of :func:`knn_votes` for one k: ``[M]`` labels."""
    return knn_votes(train_codes, train_labels, test_codes, (k,), test_batch)[k]


def knn_error(
    train_codes: torch.Tensor,
    train_labels: Any,
    test_codes: torch.Tensor,
    test_labels: Any,
    ks: tuple[int, ...] = (3, 5, 10),
) -> dict[int, float]:
    """Test error (fraction wrong) of the k-nearest-neighbour classifier on latent codes, for
    each k in ``ks`` (Nalisnick, Hertel & Smyth, "Approximate Inference for Deep Latent Gaussian
    Mixtures", 2016, Fig. 3a): fitted on (``train_codes``, ``train_labels``), scored on
    (``test_codes``, ``test_labels``); see :func:`knn_votes` for the vote."""
    train_codes = torch.as_tensor(train_codes, dtype=torch.float32)
    test_codes = torch.as_tensor(test_codes, dtype=torch.float32)
    truth = torch.as_tensor(test_labels, dtype=torch.long)
    if len(train_codes) != len(train_labels) or len(test_codes) != len(truth):
        raise DataError("codes and labels must have the same number of rows")
    predictions = knn_votes(train_codes, train_labels, test_codes, tuple(ks))
    return {k: (predictions[k] != truth).double().mean().item() for k in ks}
