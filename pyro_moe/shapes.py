"""Shape arithmetic on the hot path of every training step.

``torch.broadcast_shapes`` runs through PyTorch's reference implementation in Python (about
60 microseconds a call on one CPU core, measured); a step of the relaxed estimators calls it
three times on the same few shapes. :func:`broadcast_shapes` keeps its answers by the argument
shapes, so a repeated call is a dictionary lookup.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=4096)
def broadcast_shapes(*shapes: torch.Size) -> torch.Size:
    """The shape ``torch.broadcast_shapes(*shapes)`` returns (the NumPy broadcasting rule: align
    on the right, a size 1 stretches to the other size), cached by ``shapes`` (each a
    ``torch.Size`` or a tuple of ints); shapes that do not broadcast raise its ``RuntimeError``."""
    return torch.broadcast_shapes(*shapes)


__all__ = ["broadcast_shapes"]
