"""The gradient-variance harness: many gradient estimates per estimator, measured per parameter
group against the exact gradient of the objective that estimator estimates.

For a model, guide, batch and parameter state, each estimator draws ``E`` independent gradient
estimates G_1..G_E of minus its objective. The reference g is the exact gradient of minus the
objective the estimator declares (``Estimator.unbiased_for``, computed by enumeration in
:mod:`pyro_moe.estimators.objectives`): the single-sample ELBO for the score-function family, the
S-sample bound for ``vimco``; a biased estimator (no declared objective) is scored against the
ELBO it stands in for. Per parameter group (gate, experts, encoder, ... see
:func:`parameter_groups`) the table reports

    objective   the objective g is the gradient of
    bias        ||mean_e G_e - g||               (bias_noise = sqrt(variance / E) is what an
                                                  unbiased estimator shows from noise alone)
    rel_bias    bias / ||g||
    elbo_gap    ||g - g_elbo||: how far the estimator's own objective's gradient lies from the
                single-sample ELBO's (0 for ELBO estimators; for vimco the gap between bounds)
    variance    trace Cov(G) = sum_j Var(G_j)
    snr         mean_j |mean_e G_ej| / std_e(G_ej)   over coordinates whose std is above
                                                  rounding (64 eps (1 + |mean|))
    cosine      mean_e cos(G_e, g)               (how well one step points uphill)
    seconds     wall seconds per estimate
    work_variance   variance x seconds           (variance at a fixed compute budget)

Estimates are vectorised: ``torch.func.vmap`` over ``torch.func.grad`` of the estimator's loss with
independent randomness per estimate, a chunk of estimates per Pyro pass
(:func:`~pyro_moe.vectorised.per_estimate_gradients`; the cost is linear in E). ``vectorize=False``
(or a program vmap cannot run) uses a Python loop of single estimates, each with its own forward
and backward pass.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pyro_moe.base import PyroModel, default_parameter_group
from pyro_moe.errors import ConfigError
from pyro_moe.estimators import objectives
from pyro_moe.estimators.base import Estimator
from pyro_moe.estimators.enum import Enumerate
from pyro_moe.tables import markdown_table
from pyro_moe.vectorised import NotVectorisable, per_estimate_gradients

#: coordinates whose std is below this many machine epsilons (relative) count as deterministic
ROUNDING_SPREAD = 64

#: the columns of a harness table, in order
COLUMNS = (
    "estimator",
    "group",
    "objective",
    "num_estimates",
    "bias",
    "bias_noise",
    "rel_bias",
    "elbo_gap",
    "variance",
    "snr",
    "cosine",
    "seconds",
    "work_variance",
)


def parameter_groups(model: nn.Module, guide: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Named groups of trainable parameters: the model's by its ``parameter_group(name)`` (for a
    module that is not a :class:`PyroModel`: ``gate*`` -> gate, ``experts*``/``raw_scale`` ->
    experts, others -> model), and the guide's own networks -> encoder."""
    groups: dict[str, list[nn.Parameter]] = {}
    seen: set[int] = set()
    rule = model.parameter_group if isinstance(model, PyroModel) else default_parameter_group
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            groups.setdefault(rule(name), []).append(p)
    for p in guide.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            groups.setdefault("encoder", []).append(p)
    return groups


def _flat(grads: Sequence[torch.Tensor | None], params: Sequence[nn.Parameter]) -> torch.Tensor:
    parts = [
        (torch.zeros_like(p) if g is None else g).reshape(-1)
        for g, p in zip(grads, params, strict=True)
    ]
    return torch.cat(parts)


def reference_objective(estimator: Estimator) -> str:
    """The objective an estimator is scored against: its declared one, else the ELBO."""
    return estimator.unbiased_for or "elbo"


def exact_gradient(
    model,
    guide,
    args: Sequence[Any],
    params: Sequence[nn.Parameter],
    objective: str = "elbo",
    estimator: Estimator | None = None,
) -> torch.Tensor:
    """Gradient of minus the exact ``objective`` (for ``estimator``'s options, e.g. its number of
    samples), computed by enumeration: ``[P]``. Raises
    :class:`~pyro_moe.estimators.objectives.NotEnumerable` when out of reach."""
    estimator = estimator or Enumerate(max_plate_nesting=model.max_plate_nesting)
    value = objectives.objective(objective, estimator, model.model, guide, args, {})
    return _flat(torch.autograd.grad(-value, params, allow_unused=True), params)


def gradient_samples(
    estimator: Estimator,
    model,
    guide,
    args: Sequence[Any],
    params: Sequence[nn.Parameter],
    num_estimates: int,
    vectorize: bool = True,
    chunk: int | None = None,
) -> torch.Tensor:
    """``num_estimates`` independent gradient estimates of the negative objective: ``[E, P]``.

    ``vectorize``: per-estimate gradients by ``torch.func`` in chunks of ``chunk`` estimates
    (None: picked from the batch size), see :mod:`pyro_moe.vectorised`; one ordinary estimate
    first runs the program with Pyro's validation. Estimators that declare
    ``vectorisable = False`` use the loop; a program vmap cannot run falls back to the loop with
    a warning."""
    if num_estimates < 2:
        raise ConfigError(f"the harness needs at least 2 estimates, got {num_estimates}")
    if vectorize and estimator.vectorisable:
        first = _single(estimator, model, guide, args, params)  # with Pyro's validation
        try:
            rest = per_estimate_gradients(
                estimator, model, guide, args, params, num_estimates - 1, chunk
            )
        except NotVectorisable as e:
            warnings.warn(
                f"estimator {estimator.name!r} cannot be vectorised ({e}); using the loop",
                stacklevel=2,
            )
            rest = _loop(estimator, model, guide, args, params, num_estimates - 1)
        return torch.cat([first[None], rest])
    return _loop(estimator, model, guide, args, params, num_estimates)


def _loop(estimator, model, guide, args, params, n: int) -> torch.Tensor:
    return torch.stack([_single(estimator, model, guide, args, params) for _ in range(n)])


def _single(estimator, model, guide, args, params) -> torch.Tensor:
    loss = estimator.loss(model.model, guide, *args)
    return _flat(torch.autograd.grad(loss, params, allow_unused=True), params)


def summarize(
    samples: torch.Tensor, exact: torch.Tensor, elbo: torch.Tensor | None = None
) -> dict[str, float]:
    """The statistics of the module docstring for estimates ``[E, P]`` against ``exact`` ``[P]``
    (``elbo``: the ELBO's exact gradient, for ``elbo_gap``; None: ``exact`` is the ELBO's)."""
    e = samples.shape[0]
    mean = samples.mean(0)
    var = samples.var(0)
    variance = var.sum().item()
    bias = (mean - exact).norm().item()
    std = var.sqrt()
    # a spread at rounding level (summation order differs between estimates) is no noise: such
    # coordinates (e.g. an analytic KL's gradient) would put ~1/eps into the mean SNR
    live = std > ROUNDING_SPREAD * torch.finfo(samples.dtype).eps * (1 + mean.abs())
    snr = (mean[live].abs() / std[live]).mean().item() if live.any() else math.inf
    cos = torch.nn.functional.cosine_similarity(samples, exact.expand_as(samples), dim=1, eps=1e-30)
    norm = exact.norm().item()
    return {
        "num_estimates": e,
        "bias": bias,
        "bias_noise": math.sqrt(variance / e),
        "rel_bias": bias / norm if norm > 0 else math.nan,
        "elbo_gap": 0.0 if elbo is None else (exact - elbo).norm().item(),
        "variance": variance,
        "snr": snr,
        "cosine": cos.mean().item(),
    }


@dataclass
class Measurement:
    """Estimates of one estimator, flattened over all groups, with the exact gradient."""

    samples: torch.Tensor  # [E, P]
    exact: torch.Tensor  # [P], the gradient of minus the estimator's own objective
    slices: dict[str, slice]
    seconds: float  # per estimate
    objective: str = "elbo"
    elbo: torch.Tensor | None = None  # [P], minus the ELBO's gradient (None: exact is it)


def measure(
    estimator: Estimator,
    model,
    guide,
    args: Sequence[Any],
    num_estimates: int = 1000,
    vectorize: bool = True,
    groups: dict[str, list[nn.Parameter]] | None = None,
) -> Measurement:
    """Draw the estimates and the exact gradient for every group's parameters."""
    groups = groups or parameter_groups(model, guide)
    params = [p for ps in groups.values() for p in ps]
    slices, start = {}, 0
    for name, ps in groups.items():
        size = sum(p.numel() for p in ps)
        slices[name] = slice(start, start + size)
        start += size
    objective = reference_objective(estimator)
    exact = exact_gradient(model, guide, args, params, objective, estimator).detach()
    elbo = None if objective == "elbo" else exact_gradient(model, guide, args, params).detach()
    began = time.perf_counter()
    samples = gradient_samples(estimator, model, guide, args, params, num_estimates, vectorize)
    seconds = (time.perf_counter() - began) / num_estimates
    return Measurement(samples.detach(), exact, slices, seconds, objective, elbo)


def rows_of(name: str, m: Measurement) -> list[dict[str, Any]]:
    """Table rows (one per group, plus ``all``) of a measurement."""
    rows = []
    for group, sl in {**m.slices, "all": slice(None)}.items():
        stats = summarize(m.samples[:, sl], m.exact[sl], None if m.elbo is None else m.elbo[sl])
        rows.append(
            {
                "estimator": name,
                "group": group,
                "objective": m.objective,
                **stats,
                "seconds": m.seconds,
                "work_variance": stats["variance"] * m.seconds,
            }
        )
    return rows


def compare(
    estimators: dict[str, Estimator] | Iterable[tuple[str, Estimator]],
    model,
    guide,
    args: Sequence[Any],
    num_estimates: int = 1000,
    vectorize: bool = True,
    seed: int | None = 0,
) -> list[dict[str, Any]]:
    """The harness table: rows per estimator x parameter group (see :data:`COLUMNS`)."""
    items = estimators.items() if isinstance(estimators, dict) else estimators
    rows: list[dict[str, Any]] = []
    for name, estimator in items:
        estimator.check(guide)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            m = measure(estimator, model, guide, args, num_estimates, vectorize)
        rows.extend(rows_of(name, m))
    return rows


def training_callback(
    batch: Callable[[Any], Sequence[Any]] | None = None,
    num_estimates: int = 200,
    vectorize: bool = True,
    seed: int = 0,
    store: list[dict[str, Any]] | None = None,
) -> Callable[[Any], dict[str, Any]]:
    """A :func:`~pyro_moe.train.fit` callback measuring the trainer's own estimator after every
    epoch on a fixed batch (default: the first 256 validation rows). It adds columns
    ``{group}_{variance,snr,bias,cosine}`` to the metrics row and appends full rows (with
    ``epoch`` and ``step``) to ``store``. The global RNG is left untouched (resume stays exact)."""

    def callback(trainer) -> dict[str, Any]:
        args = batch(trainer) if batch is not None else _valid_batch(trainer)
        rows = compare(
            [(trainer.estimator.name, trainer.estimator)],
            trainer.model,
            trainer.guide,
            args,
            num_estimates,
            vectorize,
            seed,
        )
        columns = {}
        for row in rows:
            for key in ("variance", "snr", "bias", "cosine"):
                columns[f"{row['group']}_{key}"] = row[key]
            if store is not None:
                store.append({"epoch": trainer.state.epoch, "step": trainer.state.step, **row})
        return columns

    return callback


def _valid_batch(trainer) -> tuple[Any, ...]:
    split = trainer.data.valid
    n = min(256, len(split))
    return (split.x[:n], None if split.y is None else split.y[:n])


def markdown(rows: Sequence[dict[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    """A harness table as markdown (numbers to 4 significant digits)."""
    return markdown_table(rows, columns)
