"""Deep latent Gaussian mixtures: stick-breaking, the collapsed ELBO against a per-component loop
and against the Pyro program's ELBO, the Kumaraswamy KLs against Monte Carlo, the importance
sampler against exact log-marginals, and the kNN latent error against a vote written out."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro_moe.guides.dlgmm import DLGMMGuide, StickBreakingVAEGuide
from pyro_moe.models.dlgmm import (
    DLDPMM,
    DLGMM,
    GaussVAE,
    NegativeELBO,
    StickBreakingVAE,
    stick_breaking,
)

from pyro_moe.distributions import Kumaraswamy
from pyro_moe.metrics import importance_log_likelihood, knn_error, knn_predict


def tiny_binary(n: int = 4, d: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=g, dtype=torch.float64) > 0.5).double()


def tiny_mixture(k: int = 3, latent_dim: int = 2, spread: float = 1.0, d: int = 5) -> DLGMM:
    torch.manual_seed(1)
    model = DLGMM(d, num_components=k, latent_dim=latent_dim, hidden="6", prior_spread=spread)
    return model.double()


def test_stick_breaking_matches_a_hand_computation_and_sums_to_one():
    v = torch.tensor([0.5, 0.25, 0.2], dtype=torch.float64)
    # 0.5; 0.25 * 0.5; 0.2 * 0.5 * 0.75; the rest 0.5 * 0.75 * 0.8
    expected = torch.tensor([0.5, 0.125, 0.075, 0.3], dtype=torch.float64)
    assert torch.allclose(stick_breaking(v), expected, atol=1e-15)
    many = torch.rand(100, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(stick_breaking(many).sum(-1), torch.ones(100), atol=1e-6)
    assert stick_breaking(torch.zeros(3, 0)).tolist() == [[1.0]] * 3


def brute_force_elbo(model: DLGMM, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """sum_k E[pi_k] (log p(x|z_k) - KL(q_k || N(m_k, I))) - KL(sticks), one component at a time."""
    loc, scale, a, b = model.encode(x)
    weights = model.mean_weights(a, b)
    total = torch.zeros(len(x), dtype=x.dtype)
    for k in range(model.num_components):
        z = loc[:, k] + scale[:, k] * eps[:, k]
        log_lik = dist.Bernoulli(logits=model.decoder(z)).log_prob(x).sum(-1)
        q_k = torch.distributions.Normal(loc[:, k], scale[:, k])
        prior_k = torch.distributions.Normal(model.prior_means[k], 1.0)
        kl = torch.distributions.kl_divergence(q_k, prior_k).sum(-1)
        total = total + weights[:, k] * (log_lik - kl)
    for j in range(model.num_components - 1):
        beta = torch.distributions.Beta(model.stick_alpha[j], model.stick_beta[j])
        total = total - torch.distributions.kl_divergence(Kumaraswamy(a[:, j], b[:, j]), beta)
    return total


@pytest.mark.parametrize("k", [1, 3, 5])
def test_collapsed_elbo_equals_a_per_component_sum(k):
    model, x = tiny_mixture(k), tiny_binary()
    torch.manual_seed(3)
    fast = model.elbo(x)
    torch.manual_seed(3)
    eps = torch.randn(len(x), k, model.latent_dim, dtype=torch.float64)
    assert torch.allclose(fast, brute_force_elbo(model, x, eps), atol=1e-5, rtol=0)


def test_mean_weights_are_the_expected_stick_breaking_weights():
    model, x = tiny_mixture(4), tiny_binary()
    _, _, a, b = model.encode(x)
    torch.manual_seed(0)
    sampled = stick_breaking(Kumaraswamy(a, b).sample((400_000,))).mean(0)
    assert torch.allclose(model.mean_weights(a, b), sampled, atol=3e-3)


def test_dirichlet_and_dp_stick_priors():
    dlgmm = DLGMM(3, num_components=4, alpha=2.0, latent_dim=1, hidden="2")
    assert dlgmm.stick_alpha.tolist() == [2.0, 2.0, 2.0]
    assert dlgmm.stick_beta.tolist() == [6.0, 4.0, 2.0]  # Beta(alpha, (K - k) alpha)
    torch.manual_seed(0)
    sticks = torch.distributions.Beta(dlgmm.stick_alpha, dlgmm.stick_beta).sample((200_000,))
    dirichlet = torch.distributions.Dirichlet(torch.full((4,), 2.0)).sample((200_000,))
    assert torch.allclose(stick_breaking(sticks).var(0), dirichlet.var(0), atol=1e-3)
    dp = DLDPMM(3, truncation=5, alpha0=3.0, latent_dim=1, hidden="2")
    assert dp.stick_alpha.tolist() == [1.0] * 4 and dp.stick_beta.tolist() == [3.0] * 4


GRID = [(0.3, 0.5, 1.0, 1.0), (1.0, 1.0, 1.0, 2.0), (2.0, 5.0, 1.0, 5.0), (0.7, 3.0, 2.0, 1.0)]


@pytest.mark.parametrize("a,b,alpha,beta", GRID)
def test_stick_kl_equals_a_monte_carlo_kl(a, b, alpha, beta):
    model = DLGMM(3, num_components=2, alpha=1.0, latent_dim=1, hidden="2").double()
    model.stick_alpha.fill_(alpha)
    model.stick_beta.fill_(beta)
    a_, b_ = torch.tensor([[a]], dtype=torch.float64), torch.tensor([[b]], dtype=torch.float64)
    q, p = Kumaraswamy(a_, b_), torch.distributions.Beta(alpha, beta)
    torch.manual_seed(0)
    v = q.sample((100_000,))
    monte_carlo = (q.log_prob(v) - p.log_prob(v)).mean()
    assert model.stick_kl(a_, b_).item() == pytest.approx(monte_carlo.item(), rel=0.01, abs=2e-3)


def test_elbo_gradients_are_finite_at_extreme_stick_parameters():
    model, x = tiny_mixture(3), tiny_binary()
    for value in (-30.0, 30.0):
        last = model.encoder[-1]
        with torch.no_grad():
            last.bias[-4:].fill_(value)  # the raw Kumaraswamy a, b: softplus -> 0.01 or 30
        model.zero_grad()
        model.elbo(x).sum().backward()
        grads = [p.grad for p in model.parameters()]
        assert all(torch.isfinite(g).all() for g in grads), value


def test_pyro_program_has_the_same_expected_elbo():
    """Trace_ELBO on the model and the sampling guide (c sampled) has the collapsed ELBO's mean."""
    model, x = tiny_mixture(3, spread=0.5), tiny_binary(2)
    guide = DLGMMGuide(model)
    with torch.no_grad():
        pyro.set_rng_seed(0)
        trace_elbo = pyro.infer.Trace_ELBO(
            num_particles=10_000, vectorize_particles=True, max_plate_nesting=1
        )
        pyro_value = -trace_elbo.loss(model.model, guide, x)
        collapsed = torch.stack([model.elbo(x).sum() for _ in range(2000)])
    sd = collapsed.std().item()
    assert pyro_value == pytest.approx(collapsed.mean().item(), abs=max(0.05, 4 * sd / 40))


def test_pyro_program_runs_under_enumeration():
    model, x = tiny_mixture(3).float(), tiny_binary().float()
    loss = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).loss(
        model.model, pyro.infer.config_enumerate(DLGMMGuide(model)), x
    )
    assert math.isfinite(loss)


def linear_gaussian_log_weights(x, w=1.5, b=0.3, s=0.7, q_loc=0.2, q_scale=1.2):
    """z ~ N(0, 1), x | z ~ N(w z + b, s^2); proposal N(q_loc, q_scale^2)."""

    def log_weights(rows: torch.Tensor, n: int) -> torch.Tensor:
        q = torch.distributions.Normal(q_loc, q_scale)
        z = q.sample((n, len(rows)))
        log_joint = torch.distributions.Normal(0.0, 1.0).log_prob(z)
        log_joint = log_joint + torch.distributions.Normal(w * z + b, s).log_prob(rows[:, 0])
        return log_joint - q.log_prob(z)

    exact = torch.distributions.Normal(b, math.sqrt(w**2 + s**2)).log_prob(x[:, 0])
    return log_weights, exact


def test_importance_sampling_converges_to_the_exact_linear_gaussian_marginal():
    x = torch.tensor([[-1.0], [0.3], [2.5]], dtype=torch.float64)
    log_weights, exact = linear_gaussian_log_weights(x)
    torch.manual_seed(0)
    errors = [
        (importance_log_likelihood(log_weights, x, s, sample_batch=977) - exact).abs().max()
        for s in (10, 200_000)
    ]
    assert errors[1] < 5e-3 < errors[0]


def test_importance_sampling_lies_below_the_exact_marginal_in_expectation():
    x = torch.full((3000, 1), 2.5, dtype=torch.float64)  # 3000 independent 2-sample estimates
    log_weights, exact = linear_gaussian_log_weights(x)
    torch.manual_seed(0)
    estimates = importance_log_likelihood(log_weights, x, 2, row_batch=1000)
    gap = exact[0] - estimates.mean()
    assert gap > 4 * estimates.std() / math.sqrt(len(estimates))


def quadrature_log_marginal(log_joint, low: float, high: float, n: int = 200_001) -> torch.Tensor:
    grid = torch.linspace(low, high, n, dtype=torch.float64)
    return torch.logsumexp(log_joint(grid), -1) + math.log((high - low) / (n - 1))


def test_dlgmm_importance_sampler_matches_quadrature():
    """1-D latent: log p(x) = log int sum_k E_p[pi_k] N(z; m_k, 1) p(x|z) dz on a grid."""
    model, x = tiny_mixture(3, latent_dim=1, spread=1.5), tiny_binary(2)
    prior_w = stick_breaking(model.stick_alpha / (model.stick_alpha + model.stick_beta))

    def log_joint(z):  # [G] -> [N, G]
        log_prior = torch.logsumexp(
            prior_w.log()[:, None] + dist.Normal(model.prior_means[:, 0:1], 1.0).log_prob(z), 0
        )
        logits = model.decoder(z[:, None])  # [G, D]
        log_lik = dist.Bernoulli(logits=logits).log_prob(x[:, None, :]).sum(-1)  # [N, G]
        return log_prior + log_lik

    with torch.no_grad():
        exact = quadrature_log_marginal(log_joint, -12.0, 12.0)
        torch.manual_seed(0)
        estimate = importance_log_likelihood(model.log_importance_weights, x, 50_000, 5000)
    assert torch.allclose(estimate, exact, atol=0.01)


def test_sb_vae_importance_sampler_matches_quadrature():
    """One stick: log p(x) = log int_0^1 Beta(v; 1, alpha0) p(x | SB(v)) dv on a grid."""
    torch.manual_seed(2)
    model, x = StickBreakingVAE(5, truncation=2, alpha0=3.0, hidden="6").double(), tiny_binary(2)

    def log_joint(v):
        log_prior = dist.Beta(1.0, 3.0).log_prob(v.clamp(1e-12, 1 - 1e-12))
        logits = model.decoder(stick_breaking(v[:, None]))
        return log_prior + dist.Bernoulli(logits=logits).log_prob(x[:, None, :]).sum(-1)

    with torch.no_grad():
        exact = quadrature_log_marginal(log_joint, 1e-9, 1 - 1e-9)
        torch.manual_seed(0)
        estimate = importance_log_likelihood(model.log_importance_weights, x, 50_000, 5000)
    assert torch.allclose(estimate, exact, atol=0.01)


@pytest.mark.parametrize("cls", [DLGMM, DLDPMM, GaussVAE])
def test_every_mixture_scores_and_embeds(cls):
    torch.manual_seed(0)
    model, x = cls(5, latent_dim=2, hidden="4"), tiny_binary().float()
    guide = DLGMMGuide(model)
    assert model.elbo(x).shape == (4,) and model.embed(x).shape == (4, 2)
    assert model.log_importance_weights(x, 3).shape == (3, 4)
    assert torch.isfinite(torch.tensor(NegativeELBO().value(model.model, guide, x)))


def test_sb_vae_guide_and_embedding():
    model, x = StickBreakingVAE(5, truncation=4, hidden="4"), tiny_binary().float()
    trace = pyro.poutine.trace(StickBreakingVAEGuide(model)).get_trace(x)
    assert trace.nodes["latent"]["value"].shape == (4, 3)
    assert torch.allclose(model.embed(x).sum(-1), torch.ones(4))


def brute_force_knn(train, labels, test, k):
    predictions = []
    for row in test:
        distances = [(float(((row - t) ** 2).sum()), i) for i, t in enumerate(train)]
        nearest = [labels[i] for _, i in sorted(distances)[:k]]
        counts = {label: nearest.count(label) for label in set(nearest)}
        best = max(counts.values())
        predictions.append(min(label for label, c in counts.items() if c == best))
    return predictions


def test_knn_error_matches_a_brute_force_vote():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(40, 3, generator=g)
    labels = torch.randint(0, 4, (40,), generator=g)
    test = torch.randn(25, 3, generator=g)
    truth = torch.randint(0, 4, (25,), generator=g)
    errors = knn_error(train, labels, test, truth, ks=(1, 3, 5, 10))
    for k, error in errors.items():
        expected = brute_force_knn(train, labels.tolist(), test, k)
        assert knn_predict(train, labels, test, k, test_batch=7).tolist() == expected
        wrong = sum(p != t for p, t in zip(expected, truth.tolist(), strict=True))
        assert error == pytest.approx(wrong / 25)


def test_knn_on_a_hand_made_set():
    train = torch.tensor([[0.0], [0.1], [0.2], [5.0], [5.1], [9.0]])
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    test = torch.tensor([[0.05], [5.05], [8.0]])
    # k = 3: {0, 0, 1} -> 0; {1, 1, 1} -> 1; 8.0's nearest 9.0, 5.1, 5.0 -> 1
    assert knn_predict(train, labels, test, 3).tolist() == [0, 1, 1]
    assert knn_error(train, labels, test, torch.tensor([0, 1, 2]), ks=(1, 3)) == {
        1: 0.0,
        3: pytest.approx(1 / 3),
    }
