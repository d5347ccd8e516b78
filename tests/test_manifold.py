"""The manifold start of VaDE / DMVAE (N2D): moment matching against hand sums, UMAP + GMM on
separated blobs, the prior copied exactly, and one-line errors."""

import numpy as np
import pytest
import torch
from pyro_moe.models.vade import VaDE

from pyro_moe.errors import ConfigError
from pyro_moe.manifold import (
    full_mixture_responsibilities,
    manifold_clusters,
    moment_matched_mixture,
)
from pyro_moe.metrics import clustering_accuracy


def test_moment_matching_equals_hand_sums_with_soft_responsibilities():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(7, 3))
    r = rng.dirichlet(np.ones(2), size=7)
    pi, mu, var = moment_matched_mixture(z, r, eps=0.0)
    for k in range(2):
        n_k = sum(r[n, k] for n in range(7))
        assert pi[k] == pytest.approx(n_k / 7, abs=1e-12)
        mean = sum(r[n, k] * z[n] for n in range(7)) / n_k
        spread = sum(r[n, k] * (z[n] - mean) ** 2 for n in range(7)) / n_k
        np.testing.assert_allclose(mu[k], mean, atol=1e-12)
        np.testing.assert_allclose(var[k], spread, atol=1e-12)


def test_moment_matching_gives_an_empty_component_no_weight_and_the_overall_moments():
    z = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]])
    r = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    pi, mu, var = moment_matched_mixture(z, r, eps=1e-4)
    np.testing.assert_allclose(pi, [1.0, 0.0])
    np.testing.assert_allclose(mu[1], z.mean(0))
    np.testing.assert_allclose(var[1], z.var(0) + 1e-4)
    assert np.isfinite(var).all()


def blobs(n_per: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 5) * 12.0
    z = np.concatenate([c + rng.normal(size=(n_per, 5)) for c in centres])
    return z, np.repeat(np.arange(3), n_per)


def test_manifold_clusters_recover_separated_blobs():
    z, labels = blobs()
    resp = manifold_clusters(z, 3, seed=0, n_neighbors=15, n_components=2)
    assert resp.shape == (240, 3)
    np.testing.assert_allclose(resp.sum(1), 1.0, atol=1e-8)
    assert clustering_accuracy(labels, resp.argmax(1)) == 1.0


def test_gmm_restarts_escape_a_merged_pair_that_one_run_falls_into():
    """Ten 2-D blobs of unequal sizes: EM from one seeded start (seed 9) merges blobs, the best of
    eight restarts by likelihood does not; the restarts never lower the fitted likelihood."""
    from sklearn.metrics import adjusted_rand_score
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(3)
    centres = rng.uniform(-10, 10, (10, 2))
    labels = np.repeat(np.arange(10), rng.integers(20, 200, 10))
    points = centres[labels] + rng.normal(0, 0.7, (len(labels), 2))
    one = full_mixture_responsibilities(points, 10, seed=9, n_init=1)
    best = full_mixture_responsibilities(points, 10, seed=9, n_init=8)
    assert adjusted_rand_score(labels, one.argmax(1)) < 0.85
    assert adjusted_rand_score(labels, best.argmax(1)) > 0.95

    def mean_log_likelihood(resp):  # refit EM from these responsibilities' moments
        weights = resp.mean(0)
        means = resp.T @ points / resp.sum(0)[:, None]
        gmm = GaussianMixture(10, covariance_type="full", weights_init=weights, means_init=means)
        return gmm.fit(points).score(points)

    assert mean_log_likelihood(best) > mean_log_likelihood(one)
    with pytest.raises(ConfigError, match="n_init"):
        full_mixture_responsibilities(points, 10, n_init=0)


@pytest.mark.parametrize(
    "z, k, match",
    [
        (np.full((50, 2), np.nan), 2, "NaN"),
        (np.zeros(50), 2, "shape"),
        (np.zeros((10, 2)), 2, "more than n_neighbors"),
        (np.zeros((50, 2)), 0, "num_components"),
    ],
)
def test_manifold_clusters_refuse_bad_input_in_one_line(z, k, match):
    with pytest.raises(ConfigError, match=match):
        manifold_clusters(z, k)


@pytest.mark.parametrize("init", ["gmm-full", "umap"])
def test_clustered_starts_copy_the_moment_matched_mixture_into_the_prior(init):
    z_np, labels = blobs(n_per=40)
    torch.manual_seed(0)
    model = VaDE(5, num_components=3, latent_dim=5, hidden="8")
    model.embed = lambda x, batch_size=4096: torch.as_tensor(z_np, dtype=torch.float32)
    start = model.init_prior(torch.zeros(120, 5), seed=0, init=init)
    assert clustering_accuracy(labels, start["labels"]) == 1.0
    # separated blobs: the GMM's responsibilities are one-hot, so the hard labels give the moments
    pi, mu, var = moment_matched_mixture(z_np, np.eye(3)[start["labels"]])
    with torch.no_grad():
        np.testing.assert_allclose(model.prior_loc.numpy(), mu, atol=1e-4)
        np.testing.assert_allclose(model.prior_scale().numpy(), np.sqrt(var), rtol=1e-4)
        np.testing.assert_allclose(model.log_weights().exp().numpy(), pi, atol=1e-5)
    with pytest.raises(ConfigError, match="init"):
        model.init_prior(torch.zeros(120, 5), init="spectral")
