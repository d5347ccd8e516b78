"""The cached broadcast of shapes agrees with ``torch.broadcast_shapes`` and fails as it does."""

from __future__ import annotations

import pytest
import torch

from pyro_moe.shapes import broadcast_shapes

CASES = [
    ((torch.Size([20, 100]), torch.Size([100])), (20, 100)),
    ((torch.Size([1, 100]), torch.Size([3, 1])), (3, 100)),
    ((torch.Size([]), torch.Size([4, 2])), (4, 2)),
    ((torch.Size([2, 1, 5]), torch.Size([7, 1]), torch.Size([5])), (2, 7, 5)),
    (((3, 1), (1, 4)), (3, 4)),  # plain tuples as torch accepts them
]


@pytest.mark.parametrize("shapes, expected", CASES)
def test_broadcast_shapes_is_torchs(shapes, expected):
    for _ in range(2):  # the second call is answered from the cache
        out = broadcast_shapes(*shapes)
        assert out == torch.broadcast_shapes(*shapes) == torch.Size(expected)
        assert isinstance(out, torch.Size)


def test_shapes_that_do_not_broadcast_raise_every_time():
    for _ in range(2):  # an error is not cached as an answer
        with pytest.raises(RuntimeError):
            broadcast_shapes(torch.Size([3]), torch.Size([4]))
