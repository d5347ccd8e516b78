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
    reference   how g was obtained: ``exact`` (enumeration), or, where the sum over the discrete
                latents is out of reach (a categorical VAE's K^L joint values), ``rloo x M (why)``:
                the mean of M draws of an unbiased ELBO estimator (``reference=``), whose own
                variance / M is added to the noise floor ``bias_noise``
    bias        ||mean_e G_e - g||               (bias_noise = sqrt(variance / E [+ the
                                                  reference's]) is what an unbiased estimator
                                                  shows from noise alone)
    rel_bias    bias / ||g||
    elbo_gap    ||g - g_elbo||: how far the estimator's own objective's gradient lies from the
                single-sample ELBO's (0 for ELBO estimators; for vimco the gap between bounds)
    variance    trace Cov(G) = sum_j Var(G_j)
    snr         mean_j |mean_e G_ej| / std_e(G_ej)   over coordinates whose std is above
                                                  rounding (64 eps (1 + |mean|))
    cosine      mean_e cos(G_e, g)               (how well one step points uphill)
    max_z       max_j |mean_e G_ej - g_j| / se_j, se_j^2 = Var(G_j) / E [+ the reference's]: the
                per-coordinate test of unbiasedness: for an unbiased estimator about
                sqrt(2 ln P) over P coordinates (below 4 for a few thousand coordinates, with
                enough estimates for the normal approximation); inf where a noiseless coordinate
                misses g
    seconds     wall seconds per estimate
    work_variance   variance x seconds           (variance at a fixed compute budget)

The variance is that of the estimator in the form it trains with. For the score-function family
(``reinforce``, ``reinforce-avg``, ``rloo``, ``nvil``) that is Pyro's ``TraceGraph_ELBO`` form,
without the zero-mean term -grad log q(c) (``zero_mean_term=True`` on ``rloo`` / ``nvil`` reports
the other form, see :func:`~pyro_moe.estimators.sampled.score_surrogate`); ``vimco`` keeps it.

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
    "reference",
    "num_estimates",
    "bias",
    "bias_noise",
    "rel_bias",
    "elbo_gap",
    "variance",
    "snr",
    "cosine",
    "max_z",
    "seconds",
    "work_variance",
    "note",
)

#: what an estimator may raise on a program it cannot handle (reported as "not applicable")
NOT_APPLICABLE = (ConfigError, AttributeError, IndexError, RuntimeError, TypeError, ValueError)


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


def _program(model) -> Callable:
    """The Pyro model function: a :class:`PyroModel`'s ``model`` method, or ``model`` itself."""
    return model.model if isinstance(model, nn.Module) and hasattr(model, "model") else model


def exact_gradient(
    model,
    guide,
    args: Sequence[Any],
    params: Sequence[torch.Tensor],
    objective: str = "elbo",
    estimator: Estimator | None = None,
    kwargs: dict | None = None,
) -> torch.Tensor:
    """Gradient of minus the exact ``objective`` (for ``estimator``'s options, e.g. its number of
    samples and the sites it acts on), computed by enumeration: ``[P]``. Raises
    :class:`~pyro_moe.estimators.objectives.NotEnumerable` when out of reach."""
    estimator = estimator or Enumerate(max_plate_nesting=model.max_plate_nesting)
    value = objectives.objective(
        objective, estimator, _program(model), guide, tuple(args), kwargs or {}
    )
    return _flat(torch.autograd.grad(-value, params, allow_unused=True), params)


@dataclass
class Reference:
    """The gradient an estimator is measured against (``[P]``), the variance of that gradient's
    own Monte Carlo error per coordinate (zero when exact), and how it was obtained."""

    gradient: torch.Tensor
    noise: torch.Tensor
    how: str


def reference_gradient(
    estimator: Estimator,
    model,
    guide,
    args: Sequence[Any],
    params: Sequence[torch.Tensor],
    objective: str,
    reference: str = "rloo",
    num_estimates: int = 1000,
    kwargs: dict | None = None,
) -> Reference:
    """The exact gradient of ``objective`` where enumeration reaches, otherwise the mean of
    ``num_estimates`` draws of the unbiased estimator ``reference`` (ELBO only: no registered
    estimator other than the one measured is unbiased for another objective)."""
    try:
        exact = exact_gradient(model, guide, args, params, objective, estimator, kwargs).detach()
        return Reference(exact, torch.zeros_like(exact), "exact")
    except objectives.NotEnumerable as e:
        why = str(e)
    if objective != "elbo":
        nan = torch.full((sum(p.numel() for p in params),), math.nan)
        return Reference(nan, nan, f"none ({why})")
    ref = _reference_estimator(reference, estimator)
    draws = gradient_samples(ref, model, guide, args, params, num_estimates, kwargs=kwargs)
    how = f"{reference} x {num_estimates} ({why})"
    return Reference(draws.mean(0), draws.var(0) / num_estimates, how)


def _reference_estimator(name: str, like: Estimator) -> Estimator:
    from pyro_moe.registry import ESTIMATORS

    ref = ESTIMATORS[name](max_plate_nesting=like.max_plate_nesting)
    if ref.unbiased_for != "elbo":
        raise ConfigError(f"the reference estimator must be unbiased for the ELBO, not {name!r}")
    ref.sites, ref.data_plate = like.sites, like.data_plate
    return ref


def gradient_samples(
    estimator: Estimator,
    model,
    guide,
    args: Sequence[Any],
    params: Sequence[torch.Tensor],
    num_estimates: int,
    vectorize: bool = True,
    chunk: int | None = None,
    kwargs: dict | None = None,
    validate: bool = True,
) -> torch.Tensor:
    """``num_estimates`` independent gradient estimates of the negative objective: ``[E, P]``.

    ``vectorize``: per-estimate gradients by ``torch.func`` in chunks of ``chunk`` estimates
    (None: picked from the batch size), see :mod:`pyro_moe.vectorised`; with ``validate`` one
    ordinary estimate first runs the program with Pyro's validation (the vectorised pass runs
    without it), so a caller that draws more estimates of a program it has already validated
    passes ``validate=False`` and every estimate is vectorised. Estimators that declare
    ``vectorisable = False``, and programs written as plain functions, use the loop; a program
    vmap cannot run falls back to the loop with a warning."""
    if num_estimates < 2:
        raise ConfigError(f"the harness needs at least 2 estimates, got {num_estimates}")
    run = (estimator, model, guide, tuple(args), params, kwargs or {})
    modules = isinstance(model, nn.Module) and isinstance(guide, nn.Module) and not kwargs
    if vectorize and estimator.vectorisable and modules:
        first = [_single(*run)[None]] if validate else []  # with Pyro's validation
        rest = num_estimates - len(first)
        try:
            vectorised = per_estimate_gradients(estimator, model, guide, args, params, rest, chunk)
        except NotVectorisable as e:
            warnings.warn(
                f"estimator {estimator.name!r} cannot be vectorised ({e}); using the loop",
                stacklevel=2,
            )
            vectorised = _loop(run, rest)
        return torch.cat([*first, vectorised]) if first else vectorised
    if vectorize and estimator.vectorisable and hasattr(estimator, "estimate_losses"):
        try:
            return _batched(run, num_estimates, chunk or 256)
        except (RuntimeError, NotImplementedError):  # a backward op without a batching rule
            pass
    return _loop(run, num_estimates)


def _batched(run: tuple, n: int, chunk: int) -> torch.Tensor:
    """Estimates from the estimator's estimates plate (one forward pass per ``chunk``) and one
    vmapped backward pass (``is_grads_batched``): for programs that are plain functions."""
    estimator, model, guide, args, params, kwargs = run
    out = []
    for start in range(0, n, chunk):
        e = min(chunk, n - start)
        losses = estimator.estimate_losses(_program(model), guide, e, *args, **kwargs)  # [e]
        eye = torch.eye(e, dtype=losses.dtype, device=losses.device)
        grads = torch.autograd.grad(
            losses, params, grad_outputs=eye, is_grads_batched=True, allow_unused=True
        )
        parts = [
            (torch.zeros((e,) + p.shape, dtype=p.dtype) if g is None else g).reshape(e, -1)
            for g, p in zip(grads, params, strict=True)
        ]
        out.append(torch.cat(parts, 1))
    return torch.cat(out)


def _loop(run: tuple, n: int) -> torch.Tensor:
    return torch.stack([_single(*run) for _ in range(n)])


def _single(estimator, model, guide, args, params, kwargs: dict | None = None) -> torch.Tensor:
    loss = estimator.loss(_program(model), guide, *args, **(kwargs or {}))
    return _flat(torch.autograd.grad(loss, params, allow_unused=True), params)


def summarize(
    samples: torch.Tensor,
    exact: torch.Tensor,
    elbo: torch.Tensor | None = None,
    exact_noise: torch.Tensor | None = None,
) -> dict[str, float]:
    """The statistics of the module docstring for estimates ``[E, P]`` against ``exact`` ``[P]``
    (``elbo``: the ELBO's exact gradient, for ``elbo_gap``; None: ``exact`` is the ELBO's;
    ``exact_noise``: the variance of a Monte Carlo reference per coordinate, added to the noise
    floor)."""
    e = samples.shape[0]
    mean = samples.mean(0)
    var = samples.var(0)
    variance = var.sum().item()
    bias = (mean - exact).norm().item()
    floor = variance / e + (0.0 if exact_noise is None else exact_noise.sum().item())
    std = var.sqrt()
    # a spread at rounding level (summation order differs between estimates) is no noise: such
    # coordinates (e.g. an analytic KL's gradient) would put ~1/eps into the mean SNR
    live = std > ROUNDING_SPREAD * torch.finfo(samples.dtype).eps * (1 + mean.abs())
    snr = (mean[live].abs() / std[live]).mean().item() if live.any() else math.inf
    cos = torch.nn.functional.cosine_similarity(samples, exact.expand_as(samples), dim=1, eps=1e-30)
    norm = exact.norm().item()
    se2 = var / e + (0.0 if exact_noise is None else exact_noise)
    return {
        "num_estimates": e,
        "bias": bias,
        "bias_noise": math.sqrt(floor),
        "rel_bias": bias / norm if norm > 0 else math.nan,
        "elbo_gap": 0.0 if elbo is None else (exact - elbo).norm().item(),
        "variance": variance,
        "snr": snr,
        "cosine": cos.mean().item(),
        "max_z": _max_z(mean - exact, se2, exact),
    }


def _max_z(diff: torch.Tensor, se2: torch.Tensor, exact: torch.Tensor) -> float:
    """max_j |diff_j| / se_j; a coordinate without noise (spread at rounding level) counts when
    it misses by more than rounding (1000 eps relative): then the answer is inf."""
    if diff.numel() == 0 or torch.isnan(diff).all():
        return math.nan
    eps = torch.finfo(diff.dtype).eps
    noiseless = se2.sqrt() <= ROUNDING_SPREAD * eps * (1 + exact.abs())
    if (diff[noiseless].abs() > 1e3 * eps * (1 + exact[noiseless].abs())).any():
        return math.inf
    live = ~noiseless
    return (diff[live].abs() / se2[live].sqrt()).max().item() if live.any() else 0.0


@dataclass
class Measurement:
    """Estimates of one estimator, flattened over all groups, with the reference gradient."""

    samples: torch.Tensor  # [E, P]
    exact: torch.Tensor  # [P], the gradient of minus the estimator's own objective
    slices: dict[str, slice]
    seconds: float  # per estimate
    objective: str = "elbo"
    elbo: torch.Tensor | None = None  # [P], minus the ELBO's gradient (None: exact is it)
    noise: torch.Tensor | None = None  # [P], a Monte Carlo reference's variance (None: exact)
    reference: str = "exact"


def measure(
    estimator: Estimator,
    model,
    guide,
    args: Sequence[Any],
    num_estimates: int = 1000,
    vectorize: bool = True,
    groups: dict[str, list[torch.Tensor]] | None = None,
    kwargs: dict | None = None,
    references: dict | None = None,
    reference: str = "rloo",
    reference_estimates: int | None = None,
) -> Measurement:
    """Draw the estimates and the reference gradients for every group's parameters.

    ``references`` caches reference gradients between estimators measured on the same program
    and state (keyed by objective and sample count); ``reference`` and ``reference_estimates``
    (default ``10 x num_estimates``) set the Monte Carlo reference used when enumeration is out of
    reach."""
    groups = groups or parameter_groups(model, guide)
    params = [p for ps in groups.values() for p in ps]
    slices, start = {}, 0
    for name, ps in groups.items():
        size = sum(p.numel() for p in ps)
        slices[name] = slice(start, start + size)
        start += size
    cache = references if references is not None else {}
    n_ref = reference_estimates or 10 * num_estimates

    def ref(objective: str) -> Reference:
        key = (objective, estimator.num_particles if objective != "elbo" else 0)
        if key not in cache:
            cache[key] = reference_gradient(
                estimator, model, guide, args, params, objective, reference, n_ref, kwargs
            )
        return cache[key]

    objective = reference_objective(estimator)
    own = ref(objective)
    elbo = None if objective == "elbo" else ref("elbo").gradient
    began = time.perf_counter()
    samples = gradient_samples(
        estimator, model, guide, args, params, num_estimates, vectorize, kwargs=kwargs
    )
    seconds = (time.perf_counter() - began) / num_estimates
    noise = None if own.how == "exact" else own.noise
    return Measurement(
        samples.detach(), own.gradient, slices, seconds, objective, elbo, noise, own.how
    )


def rows_of(name: str, m: Measurement) -> list[dict[str, Any]]:
    """Table rows (one per group, plus ``all``) of a measurement."""
    rows = []
    for group, sl in {**m.slices, "all": slice(None)}.items():
        stats = summarize(
            m.samples[:, sl],
            m.exact[sl],
            None if m.elbo is None else m.elbo[sl],
            None if m.noise is None else m.noise[sl],
        )
        rows.append(
            {
                "estimator": name,
                "group": group,
                "objective": m.objective,
                "reference": m.reference,
                **stats,
                "seconds": m.seconds,
                "work_variance": stats["variance"] * m.seconds,
                "note": "",
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
    references: dict = {}
    for name, estimator in items:
        estimator.check(guide)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            m = measure(
                estimator, model, guide, args, num_estimates, vectorize, references=references
            )
        rows.extend(rows_of(name, m))
    return rows


def gradient_report(
    model: Callable,
    guide: Callable,
    *args: Any,
    estimators: Sequence[str] = ("enum", "reinforce", "rloo"),
    num_estimates: int = 1000,
    seed: int | None = 0,
    sites: Sequence[str] | None = None,
    reference: str = "rloo",
    reference_estimates: int | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """The harness table for any Pyro program: ``model(*args, **kwargs)`` and ``guide`` written as
    plain functions with ``pyro.param`` / ``pyro.module`` parameters and any site names.

    One row per estimator and parameter (``group`` = the param store name, plus ``all``), with
    the columns of :data:`COLUMNS`, measured at the parameters' current values in the param
    store. ``sites=None`` means every discrete latent site of the guide (several sites work for
    the score-function family); the data plate is the rightmost plate holding them all. The
    reference is the exact gradient of each estimator's own objective by enumeration, or, out of
    reach, ``reference_estimates`` (default ``10 x num_estimates``) draws of ``reference``.
    ``options`` gives per-estimator keyword options (``{"rloo": {"num_particles": 8}}``).

    An estimator that cannot run on the program gets one row with ``note`` = ``"not applicable:
    ..."`` and the reason, instead of an exception: the relaxed family (``needs_select``) feeds the
    model a relaxed one-hot vector, which a model that indexes with the sample (``locs[z]``)
    cannot use; reading it through :func:`pyro_moe.gate.select` works for every estimator.
    """
    from pyro_moe import programs
    from pyro_moe.registry import ESTIMATORS

    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        info = programs.inspect_program(model, guide, args, kwargs, sites)
    if not info.sites:
        raise ConfigError("the guide samples no discrete site: there is no gradient to estimate")
    rows: list[dict[str, Any]] = []
    references: dict = {}
    for name in estimators:
        made = ESTIMATORS[name](
            max_plate_nesting=max(1, info.max_plate_nesting), **(options or {}).get(name, {})
        )
        estimator = programs.configure(made, info)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            reason = _why_not(estimator, model, guide, args, kwargs, info)
            if reason:
                rows.append(_not_applicable_row(name, estimator, reason))
                continue
            m = measure(
                estimator,
                model,
                guide,
                args,
                num_estimates,
                groups=info.groups,
                kwargs=kwargs,
                references=references,
                reference=reference,
                reference_estimates=reference_estimates,
            )
        rows.extend(rows_of(name, m))
    return rows


def _why_not(estimator: Estimator, model, guide, args, kwargs, info) -> str:
    """Empty if one estimate runs; else why the estimator does not apply to the program."""
    params = [p for ps in info.groups.values() for p in ps]
    try:
        estimator.check(guide)
        _single(estimator, model, guide, args, params, kwargs)
    except NOT_APPLICABLE as e:
        error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if estimator.needs_select:
            where = ", ".join(info.sites)
            return (
                f"not applicable: {estimator.name} puts a relaxed one-hot vector at site(s) "
                f"{where}; the model must read it through pyro_moe.gate.select(values, z) "
                f"instead of indexing with it ({error})"
            )
        return f"not applicable: {estimator.name} cannot run on this program ({error})"
    return ""


def _not_applicable_row(name: str, estimator: Estimator, reason: str) -> dict[str, Any]:
    row: dict[str, Any] = {c: math.nan for c in COLUMNS}
    row.update(
        estimator=name,
        group="all",
        objective=reference_objective(estimator),
        reference="",
        num_estimates=0,
        note=reason,
    )
    return row


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
