"""The Bayesian mixture of experts under NUTS and SVI, and its ArviZ InferenceData.

The data come from a 2-expert linear MoE with a logistic gate (the test's well-specified problem,
seeded); NUTS runs are tiny (2 chains of a few dozen draws), so each takes seconds.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from pyro import poutine
from pyro_moe.models.bayes_moe import BayesianMixtureOfExperts, OrderedNormal

from pyro_moe import TrainConfig, bayes, bayes_numpyro
from pyro_moe.cli import main
from pyro_moe.data import Dataset
from pyro_moe.experiment import RunSpec, run_experiment
from pyro_moe.metrics import clustering_accuracy

az = bayes.arviz()
N, DRAWS = 60, 80
NUTS = bayes.NutsConfig(
    chains=2,
    warmup=50,
    samples=DRAWS,
    seed=0,
    init_restarts=2,
    init_steps=150,
    progress=False,
)


def two_expert_data(n: int = N, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """x ~ U(-2, 2); c = 1 with probability sigmoid(3 x); y = -1.5 + x (c = 0) or
    1.5 - 0.5 x (c = 1), noise sd 0.25."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, n)
    c = (rng.uniform(size=n) < 1 / (1 + np.exp(-3 * x))).astype(np.int64)
    y = np.where(c == 0, -1.5 + x, 1.5 - 0.5 * x) + rng.normal(0, 0.25, n)
    as_tensor = lambda a: torch.tensor(a, dtype=torch.float32)[:, None]  # noqa: E731
    return as_tensor(x), as_tensor(y), c


def fit_nuts(k: int, x: torch.Tensor, y: torch.Tensor, config: bayes.NutsConfig = NUTS):
    model = BayesianMixtureOfExperts(1, 1, num_components=k)
    posterior = bayes.run_nuts(model, x, y, config)
    return model, bayes.to_inference_data(model, posterior, x, y)


@pytest.fixture(scope="module")
def data():
    return two_expert_data()


@pytest.fixture(scope="module")
def fits(data):
    x, y, _ = data
    # K = 3 has an expert the data do not need (a flat direction, deep trees): only its LOO is
    # used, so its trees are capped to keep the test short
    configs = {1: NUTS, 2: NUTS, 3: dataclasses.replace(NUTS, max_tree_depth=5)}
    return {k: fit_nuts(k, x, y, config) for k, config in configs.items()}


def brute_force_log_likelihood(model, theta: dict, x: torch.Tensor, y: torch.Tensor):
    """log p(y_n|x_n, theta) = logsumexp_k [log p(c=k|x_n) + log p(y_n|x_n, c=k)], each term read
    from a trace of the Pyro program with c fixed to k for every point (float64)."""
    model = model.double()
    theta = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in theta.items()}
    x, y = x.double(), y.double()
    terms = []
    for k in range(model.num_components):
        fixed = {**theta, "cluster": torch.full((len(x),), k)}
        trace = poutine.trace(poutine.condition(model.model, data=fixed)).get_trace(x, y)
        trace.compute_log_prob()
        terms.append(trace.nodes["cluster"]["log_prob"] + trace.nodes["label"]["log_prob"])
    model.float()
    return torch.logsumexp(torch.stack(terms), 0)


def test_inference_data_has_every_group(fits):
    _, idata = fits[2]
    for group in (
        "posterior",
        "sample_stats",
        "log_likelihood",
        "posterior_predictive",
        "observed_data",
        "constant_data",
        "discrete_posterior",
    ):
        assert group in idata.groups(), group
    assert idata.log_likelihood["label"].shape == (2, DRAWS, N)
    assert idata.discrete_posterior["cluster"].shape == (2, DRAWS, N)
    assert idata.posterior_predictive["label"].shape == (2, DRAWS, N)
    assert idata.sample_stats["diverging"].shape == (2, DRAWS)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pointwise_log_likelihood_is_the_brute_force_sum_over_experts(fits, data, k):
    x, y, _ = data
    model, idata = fits[k]
    for chain, draw in ((0, 0), (1, 17), (1, DRAWS - 1)):
        theta = {
            name: idata.posterior[name].values[chain, draw] for name in idata.posterior.data_vars
        }
        expected = brute_force_log_likelihood(model, theta, x, y)
        stored = torch.as_tensor(idata.log_likelihood["label"].values[chain, draw])
        torch.testing.assert_close(stored.double(), expected, atol=1e-5, rtol=0)


def test_nuts_converges_and_recovers_the_assignments(fits, data):
    _, _, labels = data
    _, idata = fits[2]
    report = bayes.diagnostics(idata)
    assert report["max_rhat"] < 1.05, report
    assert report["divergences"] == 0, report
    accuracy = clustering_accuracy(labels, bayes.modal_assignments(idata))
    assert accuracy >= 0.85, accuracy  # the gate overlaps: about 10% of points are ambiguous


def test_compare_prefers_two_experts(fits):
    table = az.compare({f"K={k}": idata for k, (_, idata) in fits.items()})
    assert table.loc["K=2", "elpd_loo"] > table.loc["K=1", "elpd_loo"] + table.loc["K=1", "dse"]
    assert table.index[-1] == "K=1"
    pair = az.compare({"K=2": fits[2][1], "K=3": fits[3][1]})  # dse: SE of their difference
    assert pair.index[0] == "K=2" or pair.loc["K=2", "elpd_diff"] <= pair.loc["K=2", "dse"], pair


def test_collapsed_potential_is_pyros_enumerated_potential(float64, data):
    x, y, _ = (t.double() if torch.is_tensor(t) else t for t in data)
    for k, options in ((1, {}), (3, {"gate_degree": 2}), (2, {"ordered": False})):
        model = BayesianMixtureOfExperts(1, 1, num_components=k, **options)
        fast = bayes.collapsed_potential(model, x, y)
        traced = bayes.traced_potential(model, x, y)
        for seed in range(3):
            u = bayes.initial_params(model, seed, 2.0)
            torch.testing.assert_close(fast(u), traced(u), rtol=1e-10, atol=1e-8)


def test_classification_potential_is_pyros_enumerated_potential(float64):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 2, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (30,), generator=gen)
    model = BayesianMixtureOfExperts(2, 3, "classification", num_components=2)
    u = bayes.initial_params(model, 1, 2.0)
    fast = bayes.collapsed_potential(model, x, y)(u)
    torch.testing.assert_close(fast, bayes.traced_potential(model, x, y)(u), rtol=1e-10, atol=1e-8)


NUMPYRO_MODELS = [
    ((1, 1), {"num_components": 2}),
    ((1, 1), {"num_components": 3, "gate_degree": 2}),
    ((1, 1), {"num_components": 2, "ordered": False}),
    ((2, 2), {"num_components": 3}),
    ((2, 3), {"task": "classification", "num_components": 2}),
]


@pytest.mark.parametrize(("dims", "options"), NUMPYRO_MODELS)
def test_numpyro_program_is_the_same_model(dims, options):
    """NumPyro's log joint at prior draws of theta, and its potential energy at random
    unconstrained points, equal ours (float32 on both sides: 1e-5 relative)."""
    pytest.importorskip("numpyro", reason="NumPyro is an optional extra: pip install '.[numpyro]'")
    import jax.numpy as jnp
    from numpyro.infer.util import potential_energy

    model = BayesianMixtureOfExperts(*dims, **options)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, dims[0], generator=gen)
    if model.task == "classification":
        y = torch.randint(0, dims[1], (40,), generator=gen)
    else:
        y = torch.randn(40, dims[1], generator=gen)
    fast = bayes.collapsed_potential(model, x, y)
    args = tuple(jnp.asarray(t.numpy()) for t in (x, y))
    for seed in range(3):
        torch.manual_seed(seed)
        theta = {name: prior.sample() for name, prior in model.priors().items()}
        ours = float(model.log_joint(theta, x, y))
        assert bayes_numpyro.log_joint(model, theta, x, y) == pytest.approx(ours, rel=1e-5)
        u = bayes.initial_params(model, seed, 2.0)
        params = {name: jnp.asarray(value.numpy()) for name, value in u.items()}
        energy = float(potential_energy(bayes_numpyro.program(model), args, {}, params))
        assert energy == pytest.approx(float(fast(u)), rel=1e-5)


def test_ordered_normal_density_integrates_to_one(float64):
    """K! prod N(v_k) on v_1 < v_2: a grid sum over the ordered half-plane."""
    grid = torch.linspace(-8, 8, 801, dtype=torch.float64)
    a, b = torch.meshgrid(grid, grid, indexing="ij")
    values = torch.stack([a, b], -1)
    density = OrderedNormal(torch.tensor(0.0), torch.tensor(1.3), 2).log_prob(values).exp()
    step = (grid[1] - grid[0]) ** 2
    total = (density * (a < b)).sum() * step + 0.5 * (density * (a == b)).sum() * step
    assert abs(total.item() - 1.0) < 2e-3
    draws = OrderedNormal(torch.tensor(0.0), torch.tensor(1.0), 3).sample((100,))
    assert bool((draws[:, 1:] > draws[:, :-1]).all())


def test_svi_fit_through_the_trainer_converts_and_compares(fits, data, tmp_path):
    x, y, labels = data
    dataset = Dataset.from_arrays(
        x_train=x, y_train=y, x_valid=x[:20], y_valid=y[:20], x_test=x[:20], y_test=y[:20]
    )
    spec = RunSpec(model="bayes-moe", estimator="enum", model_options={"num_components": 2})
    config = TrainConfig(epochs=150, lr=0.05, patience=None, progress=False, batch_size=20)
    result = run_experiment(spec, config, tmp_path / "svi", data=dataset, figures=False)
    assert type(result.guide).__name__ == "AutoNormalGuide"
    svi = bayes.svi_posterior(result.guide, num_draws=120)
    idata = bayes.to_inference_data(result.model, svi, x, y)
    assert idata.posterior["expert_intercept"].shape == (1, 120, 2)
    # mean-field SVI is below NUTS (docs/models.md), but far above the one-expert model
    table = az.compare({"nuts": fits[2][1], "svi": idata, "nuts K=1": fits[1][1]})
    assert list(table.index) == ["nuts", "svi", "nuts K=1"], table
    gap = table.loc["svi", "elpd_loo"] - table.loc["nuts K=1", "elpd_loo"]
    assert gap > 3 * table.loc["nuts K=1", "dse"], table
    accuracy = clustering_accuracy(labels, bayes.modal_assignments(idata))
    assert accuracy >= 0.85, accuracy


def test_bayes_command_writes_tables_figures_and_netcdf(tmp_path, capsys):
    out = tmp_path / "bayes"
    argv = ["bayes", "--data", "sign-flip", "--data-option", "n=60", "--experts", "1,2"]
    argv += ["--chains", "2", "--warmup", "15", "--samples", "15", "--max-tree-depth", "5"]
    argv += ["--init-restarts", "2", "--init-steps", "60"]
    argv += ["--quiet", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "elpd_loo" in printed and "max_rhat" in printed and "divergences" in printed
    for k in (1, 2):
        assert (out / f"K{k}.nc").is_file()
        for figure in ("trace", "rank", "ppc", "pair"):
            assert (out / f"{figure}_K{k}.png").stat().st_size > 1000, (figure, k)
        assert az.from_netcdf(out / f"K{k}.nc").log_likelihood["label"].shape[:2] == (2, 15)
    assert "K=2" in (out / "compare.md").read_text()
    assert main(argv) == 2  # the folder holds a comparison: refused without --overwrite
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"--experts": "0,2"}, "K"),
        ({"--experts": "two"}, "--experts"),
        ({"--chains": "0"}, "chains"),
        ({"--init-steps": "-1"}, "init_steps"),
        ({"--data": "nope"}, "nope"),
    ],
    ids=["zero-experts", "not-a-number", "no-chains", "negative-init-steps", "unknown-data"],
)
def test_bayes_command_bad_input_is_one_line(tmp_path, capsys, bad, message):
    options = {"--data": "sign-flip", "--experts": "1,2", "--out": str(tmp_path / "o"), **bad}
    code = main(["bayes", *[item for pair in options.items() for item in pair]])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o").exists()


def test_log_likelihood_gives_waic_and_loo(fits):
    _, idata = fits[2]
    loo, waic = az.loo(idata), az.waic(idata)
    assert math.isfinite(loo.elpd_loo) and math.isfinite(waic.elpd_waic)
    assert abs(loo.elpd_loo - waic.elpd_waic) < 2.0
