"""Pick a component's values with the gate variable, whatever form the gate takes.

A model samples the gate once, ``c = pyro.sample("cluster", Categorical(logits))``, and reads each
expert's output with ``select(values, c)``. Under different estimators ``c`` arrives as

* an integer index, sampled: shape ``[N]`` (the ``data`` plate);
* an integer index, enumerated by ``TraceEnum_ELBO``: shape ``[K, 1]`` (or with more enumeration
  dims to the left), which broadcasts against the plate dims;
* a one-hot or relaxed one-hot vector (Gumbel-softmax, straight-through): shape ``[N, K]``, the
  component axis last and floating point.

``values`` always has the component axis just before its ``event_dim`` trailing event dims:
``values.shape == batch_shape + (K,) + event_shape``. The result has shape
``broadcast(batch_shape, c_batch_shape) + event_shape``:

    select(values, c) = values[..., c, ...]                    (integer c)
    select(values, w) = sum_k w_k * values[..., k, ...]        (one-hot or relaxed w)

For a one-hot ``w`` both forms agree exactly, so a straight-through estimator's forward pass equals
the discrete model's.

When ``c`` is a whole enumerated support ``arange(K)`` shaped ``[K, 1, ..., 1]`` and marked with
:func:`mark_support` (the collapsed ``enum`` path does this), the selection is a free
``movedim`` of the component axis instead of a ``gather``.
"""

from __future__ import annotations

import torch

from pyro_moe.shapes import broadcast_shapes

_SUPPORT_MARK = "_pyro_moe_enumerated_support"


def mark_support(c: torch.Tensor) -> torch.Tensor:
    """Mark ``c = arange(K).reshape(K, 1, ..., 1)`` as a whole support (see :func:`select`)."""
    setattr(c, _SUPPORT_MARK, True)
    return c


def select(values: torch.Tensor, c: torch.Tensor, event_dim: int = 0) -> torch.Tensor:
    """Return the component ``c`` of ``values`` (an index, or a weighting of components).

    Args:
        values: ``batch_shape + (K,) + event_shape`` with ``len(event_shape) == event_dim``.
        c: integer tensor broadcastable to ``batch_shape``, or floating tensor with shape
            ``c_batch_shape + (K,)`` holding (relaxed) one-hot weights.
        event_dim: number of trailing event dims of ``values`` after the component axis.

    Returns:
        ``broadcast(batch_shape, c_batch_shape) + event_shape``.
    """
    if values.dim() < event_dim + 1:
        raise ValueError(
            f"select: values of shape {tuple(values.shape)} has no component axis before "
            f"{event_dim} event dim(s)"
        )
    component_axis = values.dim() - event_dim - 1
    num_components = values.shape[component_axis]
    if c.is_floating_point():
        return _weighted(values, c, event_dim, num_components)
    if getattr(c, _SUPPORT_MARK, False) and _fits_support(values, c, component_axis):
        return _moved(values, c, component_axis)
    return _indexed(values, c, event_dim, component_axis)


def _fits_support(values: torch.Tensor, c: torch.Tensor, axis: int) -> bool:
    return c.shape[0] == values.shape[axis] and c.dim() - 1 >= axis and c.numel() == c.shape[0]


def _drawn(values: torch.Tensor, c: torch.Tensor, axis: int) -> torch.Tensor:
    """``values[..., c, ...]`` when c's shape is ``extra + batch_shape``: the P = prod(extra)
    draws per batch element are gathered along the component axis itself, so ``values`` is
    never expanded (its gradient is a scatter into its own size, not into P copies)."""
    extra, event_shape = c.shape[: c.dim() - axis], values.shape[axis + 1 :]
    index = c.reshape((-1,) + values.shape[:axis]).movedim(0, -1)  # batch + [P]
    index = index.reshape(index.shape + (1,) * len(event_shape)).expand(
        index.shape + event_shape
    )  # batch + [P] + event
    picked = values.gather(axis, index)  # batch + [P] + event
    return picked.movedim(axis, 0).reshape(extra + values.shape[:axis] + event_shape)


def _moved(values: torch.Tensor, c: torch.Tensor, axis: int) -> torch.Tensor:
    """``values[..., k, ...]`` for every k, with k moved to c's (leftmost) dim."""
    shape = (c.shape[0],) + (1,) * (c.dim() - 1 - axis) + values.shape[:axis]
    return values.movedim(axis, 0).reshape(shape + values.shape[axis + 1 :])


def _weighted(values: torch.Tensor, w: torch.Tensor, event_dim: int, k: int) -> torch.Tensor:
    if w.shape[-1] != k:
        raise ValueError(
            f"select: one-hot gate has {w.shape[-1]} components in its last dim, values have {k}"
        )
    if event_dim and values.dim() == event_dim + 1:  # a table [K, *event]: one matrix product
        event_shape = values.shape[1:]
        out = torch.matmul(w, values.reshape(k, -1))  # c_batch + [prod(event)]
        return out.reshape(w.shape[:-1] + event_shape)
    w = w.reshape(w.shape + (1,) * event_dim)  # c_batch + [K] + [1]*event_dim
    return (w * values).sum(dim=-1 - event_dim)


def _indexed(values: torch.Tensor, c: torch.Tensor, event_dim: int, axis: int) -> torch.Tensor:
    if c.shape[c.dim() - axis :] == values.shape[:axis]:  # extra dims only on c's left
        return _drawn(values, c, axis)
    batch_shape = broadcast_shapes(c.shape, values.shape[:axis])
    event_shape = values.shape[axis + 1 :]
    index = c.expand(batch_shape).reshape(batch_shape + (1,) + (1,) * event_dim)
    index = index.expand(batch_shape + (1,) + event_shape)  # batch + [1] + event
    expanded = values.expand(batch_shape + values.shape[axis:])  # batch + [K] + event
    return expanded.gather(len(batch_shape), index).squeeze(len(batch_shape))
