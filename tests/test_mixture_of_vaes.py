"""The mixture of VAE experts: the enumerated objective against the ELBO written out by hand and
against a brute-force sum over both levels of the hierarchical model, the balancing term against
the variance computed by hand, and the balancing term spreading the experts' usage."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import config_enumerate
from pyro_moe.models.mixture_of_vaes import (
    MixtureOfVAEs,
    MixtureOfVAEsGuide,
    PostLoss,
    balancing_term,
    usage_entropy,
)

from pyro_moe.benchmarking import fixed_budget
from pyro_moe.data import load_dataset
from pyro_moe.errors import ConfigError
from pyro_moe.registry import ESTIMATORS, GUIDES
from pyro_moe.train import fit


def tiny(**options) -> tuple[MixtureOfVAEs, MixtureOfVAEsGuide, torch.Tensor]:
    torch.manual_seed(1)
    model = MixtureOfVAEs(5, num_components=3, latent_dim=2, hidden="4", **options)
    x = torch.rand(4, 5)
    return model, MixtureOfVAEsGuide(model), x


def enumerated_latents(guide, x: torch.Tensor, seed: int) -> torch.Tensor:
    """The z samples the enumerated guide draws from ``seed``: ``[..., K, N, L]``."""
    pyro.set_rng_seed(seed)
    enumerated = poutine.enum(config_enumerate(guide, "parallel"), first_available_dim=-2)
    return poutine.trace(enumerated).get_trace(x).nodes["latent"]["value"]


def enum_objective(model, guide, x: torch.Tensor, seed: int) -> torch.Tensor:
    pyro.set_rng_seed(seed)
    return -ESTIMATORS["enum"]().loss(model.model, guide, x, None)


def test_enum_equals_the_elbo_written_out(float64):
    """sum_n sum_c q(c|x)[ELBO_c(x) + log p(c) - log q(c|x)] - lambda B Var(importance), with the
    z samples the enumerated guide drew (one per expert)."""
    model, guide, x = tiny(balance=0.3)
    z = enumerated_latents(guide, x, seed=5).transpose(0, 1)  # [N, K, L]
    assert z.shape == (4, 3, 2)
    q = torch.softmax(model.manager(x), -1)  # [N, K]
    loc, scale = model.experts.encode(x)
    log_lik = dist.Normal(model.experts.decode_all(z), 0.5).log_prob(x[:, None]).sum(-1)
    log_prior = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_q_z = dist.Normal(loc, scale).log_prob(z).sum(-1)
    elbo_c = log_lik + log_prior - log_q_z  # [N, K]
    by_hand = (q * (elbo_c + np.log(1 / 3) - torch.log(q))).sum()
    by_hand = by_hand - 0.3 * 4 * q.sum(0).var(unbiased=False)
    assert torch.allclose(enum_objective(model, guide, x, seed=5), by_hand, atol=1e-4, rtol=0)
    other = enum_objective(model, guide, x, seed=6)
    assert abs((other - by_hand).item()) > 1e-3, "other z samples, other value: the check can fail"


def brute_force_elbo(model, guide, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """sum_n sum_{c, s} q(c, s|x_n) [log p(x_n, z, c, s) - log q(z, c, s|x_n)], each (c, s) by a
    Pyro trace of the guide and of the model conditioned on it and on the latent ``z[s, c]``."""
    n, total = x.shape[0], torch.zeros(())
    for c in range(model.num_components):
        for s in range(model.subexperts):
            values = {
                "cluster": torch.full((n,), c),
                "subcluster": torch.full((n,), s),
                "latent": z[s, c],
            }
            g = poutine.trace(poutine.condition(guide, data=values)).get_trace(x)
            m = poutine.trace(poutine.condition(model.model, data=values)).get_trace(x)
            g.compute_log_prob()
            m.compute_log_prob()
            weight = (g.nodes["cluster"]["log_prob"] + g.nodes["subcluster"]["log_prob"]).exp()
            log_q = sum(g.nodes[k]["log_prob"] for k in values)
            log_p = sum(m.nodes[k]["log_prob"] for k in (*values, "obs"))
            total = total + (weight * (log_p - log_q)).sum()
    return total


def test_hierarchical_enum_equals_the_brute_force_sum(float64):
    model, guide, x = tiny(num_subcomponents=2, balance=0.0)
    z = enumerated_latents(guide, x, seed=3)
    assert z.shape == (2, 3, 4, 2)  # [K2, K, N, L]
    expected = brute_force_elbo(model, guide, x, z)
    assert torch.allclose(enum_objective(model, guide, x, seed=3), expected, atol=1e-4, rtol=0)


def test_the_balancing_term_is_the_variance_of_the_batch_importance():
    generator = torch.Generator().manual_seed(4)
    probs = torch.softmax(torch.randn(7, 5, generator=generator), -1)
    importance = probs.numpy().sum(0)
    by_hand = np.mean((importance - importance.mean()) ** 2)
    assert abs(balancing_term(probs).item() - by_hand) < 1e-6
    model, guide, x = tiny(balance=0.5)
    trace = poutine.trace(model.model).get_trace(x, None, 40)
    trace.compute_log_prob()
    factor = trace.nodes["balance"]["log_prob"]
    expected = -0.5 * 40 * balancing_term(torch.softmax(model.manager(x), -1))
    assert torch.allclose(factor, expected)


def test_the_posts_loss_is_the_expected_expert_loss_plus_the_balancing_term(float64):
    model, _, x = tiny(balance=0.2)
    torch.manual_seed(9)
    out = model.post_loss(x)
    torch.manual_seed(9)
    loc, scale = model.experts.encode(x)
    z = loc + scale * torch.randn_like(loc)
    nll = -dist.Normal(model.experts.decode_all(z), 0.5).log_prob(x[:, None]).sum(-1)
    kl = torch.distributions.kl_divergence(dist.Normal(loc, scale), dist.Normal(0.0, 1.0)).sum(-1)
    p = torch.softmax(model.manager(x), -1)
    expected = (p * (nll + kl)).sum(-1).mean()
    assert torch.allclose(out["expected"], expected)
    assert torch.allclose(out["loss"], expected + 0.2 * balancing_term(p))


@pytest.mark.parametrize("hierarchical", [False, True], ids=["flat", "hierarchical"])
def test_one_decoder_per_index_equals_all_decoders_then_select(hierarchical):
    model, _, _ = tiny(num_subcomponents=2 if hierarchical else 1)
    e_count = model.num_experts
    z = torch.randn(e_count, 4, 2)
    support = torch.arange(e_count).reshape(e_count, 1)
    every = model.experts.decode_all(z.unsqueeze(-2).expand(e_count, 4, e_count, 2))
    diagonal = every[torch.arange(e_count), :, torch.arange(e_count)]  # [E, N, D]
    assert torch.allclose(model.experts.decode(z, support), diagonal, atol=1e-6)
    rows = torch.randint(e_count, (40,))
    z_rows = torch.randn(40, 2)
    picked = model.experts.decode_all(z_rows[:, None].expand(40, e_count, 2))[
        torch.arange(40), rows
    ]
    assert torch.allclose(model.experts.decode(z_rows, rows), picked, atol=1e-6)


@pytest.mark.parametrize("estimator", ["enum", "reinforce", "rloo", "gumbel"])
def test_every_kind_of_estimator_trains_it(estimator):
    model, guide, x = tiny(num_subcomponents=1)
    loss = ESTIMATORS[estimator]().loss(model.model, guide, x, None)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.manager[0].weight.grad.abs().sum() > 0


def usage_after(balance: float) -> float:
    data = load_dataset("digits", seed=0)
    model = MixtureOfVAEs(
        data.input_dim, num_components=5, latent_dim=4, hidden="32", balance=balance
    )
    guide = GUIDES["mixture-of-vaes"](model)
    config = fixed_budget(epochs=8, batch_size=50, lr=3e-3, seed=0)
    fit(model, guide, PostLoss(), data, config)
    return float(usage_entropy(model.cluster_probs(data.train.x)))


def test_the_balancing_term_spreads_the_usage_of_the_experts():
    """The post's warning: without the balancing term the manager gives nearly everything to a
    few experts; with it (lambda > 0) the usage entropy is higher."""
    collapsed, balanced = usage_after(0.0), usage_after(1.0)
    assert balanced > collapsed + 0.2, (collapsed, balanced)
    assert balanced > 0.9 * np.log(5)


def test_bad_options_say_so():
    with pytest.raises(ConfigError, match="balance"):
        MixtureOfVAEs(3, balance=-1.0)
    with pytest.raises(ConfigError, match="num_subcomponents"):
        MixtureOfVAEs(3, num_subcomponents=0)
    with pytest.raises(ConfigError, match="decoder_std"):
        MixtureOfVAEs(3, decoder_std=0.0)


@pytest.mark.parametrize(
    "index_shape", [(6, 1), (2, 3, 1), (40,), (1, 40)], ids=["support", "two-level", "rows", "pad"]
)
def test_a_selected_network_equals_every_network_then_picking_it(index_shape):
    from pyro_moe.nn import BatchedMLP

    torch.manual_seed(2)
    net = BatchedMLP([3, 5, 4], 6, "sigmoid")
    index = torch.randint(6, index_shape)
    batch = torch.broadcast_shapes(index.shape, (40,))
    x = torch.randn(*batch, 3)
    every = net(x.unsqueeze(-2).expand(*batch, 6, 3))  # [..., 6, 4]
    expected = every.gather(-2, index.expand(batch)[..., None, None].expand(*batch, 1, 4))
    assert torch.allclose(net.selected(x, index), expected.squeeze(-2), atol=1e-6)
