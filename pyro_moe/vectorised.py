"""Many independent gradient estimates of one estimator in a few vectorised passes (torch.func).

An estimator's loss L(theta; eps) depends on the parameters theta and on its noise eps (the
sampled ``cluster`` values, Gumbel noise, ...). The variance harness needs E draws

    G_e = grad_theta L(theta; eps_e),   eps_1, ..., eps_E independent,     G: [E, P]

A Python loop runs the Pyro program and one backward pass per estimate. Here the whole per-estimate
computation ``e -> G_e`` is vectorised with ``torch.func.vmap(torch.func.grad(L),
randomness="different")``: every random draw gets its own value per estimate, while the tensors
that do not depend on the noise (the gate, expert and guide networks applied to the shared batch)
are computed once. The backward pass through those shared networks is then a vmapped
vector-Jacobian product: its cost is linear in E (E x one backward of the networks), with no E x E
term, unlike batched backward passes over an ``estimates`` plate (Horace He, Richard Zou,
"functorch: JAX-like composable function transforms for PyTorch", 2021).

The estimates are processed in chunks of ``chunk`` estimates per Pyro pass; by default the chunk
is picked from the batch size so that a vmapped intermediate holds about
:data:`ROWS_PER_PASS` (estimate, row) pairs (enough estimates per pass to amortise Pyro's tracing,
few enough that intermediates stay in cache); an estimator that evaluates the model at many points
per row says how many in ``points_per_estimate`` (set by its last run), and the chunk shrinks by
that factor.

Pyro's runtime is made functional for the transform: ``pyro.param`` sites created by
``pyro.module`` return the module's own (functional) tensor instead of touching the param store
(:class:`PassParams`), and Pyro's validation checks (data-dependent ``if`` on tensors, which vmap
cannot trace) are off inside the vectorised pass; the harness validates with one ordinary estimate
first. A program vmap cannot run raises :class:`NotVectorisable`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from pyro.poutine.messenger import Messenger
from torch import nn
from torch.func import functional_call, grad, vmap

from pyro_moe.validation import distribution_checks_off

#: (estimate, row) pairs per vectorised pass when the chunk is picked from the batch size
ROWS_PER_PASS = 131_072


class NotVectorisable(RuntimeError):
    """The estimator's program cannot run under ``torch.func.vmap``; use the loop instead."""


class PassParams(Messenger):
    """``pyro.param(name, value)`` returns ``value`` (the module's current tensor) untouched.

    ``pyro.module`` registers each module parameter through ``pyro.param(name, p)``; the param
    store would call ``requires_grad_`` on it, which torch.func forbids, and would return its own
    tensor rather than the functional one the transform differentiates. A ``pyro.param`` without
    an initial tensor reads the store, which the transform cannot differentiate: refused.
    """

    def _pyro_param(self, msg: dict[str, Any]) -> None:
        if len(msg["args"]) < 2 or not torch.is_tensor(msg["args"][1]):
            raise NotVectorisable(f"pyro.param({msg['name']!r}) reads the param store")
        msg["value"] = msg["args"][1]
        msg["done"] = True


class _Objective(nn.Module):
    """``estimator.loss(model.model, guide, *args)`` as a module, for ``functional_call``."""

    def __init__(self, estimator: nn.Module, model: nn.Module, guide: nn.Module) -> None:
        super().__init__()
        self.estimator, self.model, self.guide = estimator, model, guide

    def forward(self, *args: Any) -> torch.Tensor:
        with PassParams(), distribution_checks_off(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pyro.module's "requires_grad=False" note per pass
            return self.estimator.loss(self.model.model, self.guide, *args)


def pick_chunk(rows: int, num_estimates: int) -> int:
    """Estimates per vectorised pass: about :data:`ROWS_PER_PASS` / rows, at least 1."""
    return max(1, min(num_estimates, ROWS_PER_PASS // max(rows, 1)))


def _names(objective: nn.Module, params: Sequence[torch.Tensor]) -> list[str]:
    by_id = {id(p): n for n, p in objective.named_parameters()}
    missing = [i for i, p in enumerate(params) if id(p) not in by_id]
    if missing:
        raise NotVectorisable(f"parameters {missing} belong to neither the model nor the guide")
    return [by_id[id(p)] for p in params]


def per_estimate_gradients(
    estimator,
    model,
    guide,
    args: Sequence[Any],
    params: Sequence[torch.Tensor],
    num_estimates: int,
    chunk: int | None = None,
    randomness: str = "different",
) -> torch.Tensor:
    """``num_estimates`` gradients of ``estimator.loss`` w.r.t. ``params``: ``[E, P]``.

    ``randomness="different"`` gives independent estimates; ``"same"`` gives every row the noise
    of one ordinary run from the same RNG state (used by the tests to check exactness).
    """
    objective = _Objective(estimator, model, guide)
    names = _names(objective, params)
    values = {n: p.detach() for n, p in zip(names, params, strict=True)}
    rows = int(args[0].shape[0]) if args and torch.is_tensor(args[0]) and args[0].dim() else 1
    # an estimator that runs the model at many points per row says how many (its last run)
    rows *= max(1, int(getattr(estimator, "points_per_estimate", 1)))
    chunk = chunk or pick_chunk(rows, num_estimates)

    def loss(theta: dict[str, torch.Tensor], _index: torch.Tensor) -> torch.Tensor:
        return functional_call(objective, theta, tuple(args))

    batched = vmap(grad(loss), in_dims=(None, 0), randomness=randomness)
    index = torch.arange(num_estimates, device=params[0].device)
    # each chunk's gradients go straight into their rows of the result (no concatenation of
    # chunks and then of parameters: at small batches those copies cost as much as the pass)
    out = params[0].new_empty(num_estimates, sum(p.numel() for p in params))
    same_noise = torch.get_rng_state() if randomness == "same" else None
    for start in range(0, num_estimates, chunk):
        if same_noise is not None:  # every chunk replays the one ordinary run's draws
            torch.set_rng_state(same_noise)
        _fill_chunk(batched, values, index[start : start + chunk], names, out, start)
    return out


def _fill_chunk(batched, values, index, names, out, start) -> None:
    """Run one vectorised chunk and write its per-estimate gradients into ``out[start:]``."""
    try:
        grads = batched(values, index)
    except NotVectorisable:
        raise
    except (RuntimeError, NotImplementedError, ValueError) as e:
        raise NotVectorisable(f"{type(e).__name__}: {e}"[:300]) from e
    rows, column = len(index), 0
    for name in names:
        flat = grads[name].reshape(rows, -1)
        out[start : start + rows, column : column + flat.shape[1]] = flat
        column += flat.shape[1]
