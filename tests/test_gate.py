"""`select` for integer, enumerated and (relaxed) one-hot gates."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate

from pyro_moe.gate import mark_support, select

N, K, M = 5, 3, 2


@pytest.fixture
def values():
    return torch.randn(N, K, M)  # per-point expert outputs


def test_integer_index_picks_each_points_component(values):
    c = torch.tensor([0, 2, 1, 1, 0])
    out = select(values, c, event_dim=1)
    assert out.shape == (N, M)
    for n in range(N):
        assert torch.equal(out[n], values[n, c[n]])


def test_component_table_without_batch_dims():
    table = torch.randn(K, M)  # e.g. per-expert noise scales
    c = torch.tensor([2, 0, 2])
    assert torch.equal(select(table, c, event_dim=1), table[c])


def test_several_draws_per_point_and_their_gradient(values):
    """c with extra dims on the left (particles, estimates) of the points' dim: each draw picks
    its point's component, and the gradient reaching ``values`` counts every draw."""
    values = values.clone().requires_grad_()
    c = torch.tensor([[0, 2, 1, 1, 0], [2, 2, 0, 1, 1]])[:, None].expand(2, 3, N)  # [2, 3, N]
    out = select(values, c, event_dim=1)
    assert out.shape == (2, 3, N, M)
    expected = values[torch.arange(N), c]  # advanced indexing: [2, 3, N, M]
    assert torch.equal(out, expected)
    weights = torch.randn(2, 3, N, M)
    (grad,) = torch.autograd.grad((out * weights).sum(), values)
    (want,) = torch.autograd.grad((expected * weights).sum(), values)
    torch.testing.assert_close(grad, want)


def test_one_hot_equals_index_exactly(values):
    c = torch.tensor([0, 2, 1, 1, 0])
    one_hot = torch.nn.functional.one_hot(c, K).to(values.dtype)
    assert torch.equal(select(values, one_hot, event_dim=1), select(values, c, event_dim=1))


def test_relaxed_weights_give_the_convex_combination(values):
    w = torch.softmax(torch.randn(N, K), -1)
    expected = torch.einsum("nk,nkm->nm", w, values)
    torch.testing.assert_close(select(values, w, event_dim=1), expected)


def test_weights_on_a_component_table():
    """A table without batch dims (one matrix product): the convex combination, exact for
    one-hot rows, with leading batch dims of the weights kept."""
    table = torch.randn(K, M, 2)
    w = torch.softmax(torch.randn(4, N, K), -1)
    expected = torch.einsum("bnk,kmj->bnmj", w, table)
    torch.testing.assert_close(select(table, w, event_dim=2), expected)
    c = torch.tensor([2, 0, 1, 1, 0])
    one_hot = torch.nn.functional.one_hot(c, K).to(table.dtype)
    assert torch.equal(select(table, one_hot, event_dim=2), table[c])


def test_relaxed_weights_pass_gradients(values):
    logits = torch.randn(N, K, requires_grad=True)
    select(values, torch.softmax(logits, -1), event_dim=1).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_scalar_event(values):
    c = torch.tensor([1, 1, 0, 2, 0])
    assert torch.equal(select(values[..., 0], c), values[torch.arange(N), c, 0])


def test_mismatched_one_hot_width_raises(values):
    with pytest.raises(ValueError, match="components"):
        select(values, torch.ones(N, K + 1), event_dim=1)


def test_shapes_under_a_real_trace_enum_run(values):
    """Inside TraceEnum_ELBO, c arrives as [K, 1]: select must broadcast it against the plate."""
    seen = {}
    y = torch.randn(N, M)

    def model():
        with pyro.plate("data", N, dim=-1):
            c = pyro.sample("cluster", dist.Categorical(logits=torch.zeros(N, K)))
            loc = select(values, c, event_dim=1)
            seen["c"], seen["loc"] = c.shape, loc.shape
            seen["loc_value"] = loc
            pyro.sample("obs", dist.Normal(loc, 1.0).to_event(1), obs=y)

    TraceEnum_ELBO(max_plate_nesting=1).loss(config_enumerate(model), lambda: None)
    assert seen["c"] == (K, 1)
    assert seen["loc"] == (K, N, M)
    for k in range(K):  # the k-th enumerated slice is expert k's output for every point
        assert torch.equal(seen["loc_value"][k], values[:, k])


@pytest.mark.parametrize("event_dim", [0, 1])
@pytest.mark.parametrize("batch", [(), (5,), (2, 5)])
def test_marked_support_selects_like_gather(event_dim, batch):
    k = 4
    values = torch.randn(batch + (k,) + (3,) * event_dim)
    c = torch.arange(k).reshape((k,) + (1,) * max(len(batch), 1))
    expected = select(values, c, event_dim)
    got = select(values, mark_support(c.clone()), event_dim)
    assert got.shape == expected.shape
    assert torch.equal(got, expected)
