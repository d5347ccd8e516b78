"""`pyro_moe.gradient_report` on programs that are not the library's: plain functions, params in
Pyro's param store, their own site and plate names, several discrete sites, and a model too large
to enumerate (measured against a Monte Carlo reference)."""

from __future__ import annotations

import csv
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_moe import gradient_report, select
from pyro_moe.cli import main
from pyro_moe.estimators import objectives
from pyro_moe.verification import plain_gmm

X = [-2.1, -1.5, 0.2, 1.9, 2.4]


def _rows(rows, name):
    return [r for r in rows if r["estimator"] == name]


def test_plain_gmm_score_function_rows_are_unbiased_and_gumbel_is_not_applicable(float64):
    model, guide = plain_gmm(lambda locs, z: locs[z])
    x = torch.tensor(X)
    rows = gradient_report(model, guide, x, estimators=("reinforce", "enum"), num_estimates=300)
    rows += gradient_report(
        model, guide, x, estimators=("rloo", "vimco", "gumbel"), num_estimates=2000
    )
    groups = {r["group"] for r in _rows(rows, "rloo")}
    assert groups == {"weights", "locs", "assignment_logits", "all"}
    for name in ("reinforce", "rloo", "vimco"):
        for row in _rows(rows, name):
            assert row["reference"] == "exact" and row["note"] == ""
            assert row["max_z"] < 4, row
    assert {r["objective"] for r in _rows(rows, "vimco")} == {"multi-sample-bound"}
    assert all(r["elbo_gap"] > 0 for r in _rows(rows, "vimco"))
    assert all(r["bias"] < 1e-9 and r["variance"] < 1e-20 for r in _rows(rows, "enum"))
    (gumbel,) = _rows(rows, "gumbel")
    assert gumbel["note"].startswith("not applicable: gumbel puts a relaxed one-hot vector")
    assert "site(s) z;" in gumbel["note"] and "pyro_moe.gate.select" in gumbel["note"]
    assert math.isnan(gumbel["bias"])


def test_a_select_based_program_gets_relaxed_rows(float64):
    model, guide = plain_gmm(select)
    rows = gradient_report(
        model, guide, torch.tensor(X), estimators=("gumbel", "st-gumbel"), num_estimates=500
    )
    assert all(r["note"] == "" and math.isfinite(r["bias"]) for r in rows)
    (gumbel,) = [r for r in rows if r["estimator"] == "gumbel" and r["group"] == "all"]
    assert gumbel["bias"] > 4 * gumbel["bias_noise"]  # relaxed: biased, and measured as such


def test_several_discrete_sites(float64):
    """Two categorical latents per point (3 x 2 joint values), both scored by the score-function
    estimators and summed jointly by the exact objectives."""

    def model(x):
        locs = pyro.param("locs", torch.tensor([-1.0, 0.0, 1.0]))
        shifts = pyro.param("shifts", torch.tensor([-0.5, 0.5]))
        with pyro.plate("N", len(x)):
            a = pyro.sample("a", dist.Categorical(torch.ones(3) / 3))
            b = pyro.sample("b", dist.Categorical(torch.ones(2) / 2))
            pyro.sample("obs", dist.Normal(locs[a] + shifts[b], 0.7), obs=x)

    def guide(x):
        la = pyro.param("la", 0.3 * torch.randn(len(x), 3))
        lb = pyro.param("lb", 0.3 * torch.randn(len(x), 2))
        with pyro.plate("N", len(x)):
            pyro.sample("a", dist.Categorical(logits=la))
            pyro.sample("b", dist.Categorical(logits=lb))

    rows = gradient_report(
        model, guide, torch.tensor(X), estimators=("rloo", "vimco"), num_estimates=2000
    )
    assert {r["group"] for r in rows} == {"locs", "shifts", "la", "lb", "all"}
    assert all(r["reference"] == "exact" and r["max_z"] < 4 for r in rows), rows


def test_out_of_reach_programs_are_measured_against_a_monte_carlo_reference(float64, monkeypatch):
    """A tiny categorical VAE made 'too large' by lowering the enumeration limit: the report
    says why, uses rloo draws as the reference and carries their noise into bias_noise."""
    monkeypatch.setattr(objectives, "MAX_TERMS", 8)

    def model(x):
        w = pyro.param("w", 0.5 * torch.randn(2, 3, 4))
        with pyro.plate("data", len(x)):
            with pyro.plate("latents", 2, dim=-2):
                c = pyro.sample("c", dist.Categorical(torch.ones(3) / 3))
            logits = select(w.unsqueeze(1), c, event_dim=1).sum(-3, keepdim=True)  # [.., 1, N, 4]
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(x):
        v = pyro.param("v", 0.5 * torch.randn(2, len(x), 3))
        with pyro.plate("data", len(x)), pyro.plate("latents", 2, dim=-2):
            pyro.sample("c", dist.Categorical(logits=v))

    x = (torch.rand(4, 4) > 0.5).to(torch.float64)
    rows = gradient_report(
        model,
        guide,
        x,
        estimators=("rloo", "vimco", "gumbel"),
        num_estimates=300,
        reference_estimates=1500,
    )
    rloo = [r for r in rows if r["estimator"] == "rloo"]
    assert all(r["reference"].startswith("rloo x 1500 (") for r in rloo), rloo[0]["reference"]
    assert "joint values per point" in rloo[0]["reference"]
    assert all(r["max_z"] < 4 for r in rloo)
    own = math.sqrt(rloo[-1]["variance"] / 300)
    assert rloo[-1]["bias_noise"] > 1.02 * own  # the reference's noise is in the floor
    vimco = [r for r in rows if r["estimator"] == "vimco"]
    assert all(r["reference"].startswith("none (") and math.isnan(r["bias"]) for r in vimco)
    gumbel = [r for r in rows if r["estimator"] == "gumbel" and r["group"] == "all"]
    assert gumbel[0]["bias"] > 4 * gumbel[0]["bias_noise"]


def test_unknown_site_names_are_refused(float64):
    model, guide = plain_gmm(lambda locs, z: locs[z])
    with pytest.raises(Exception, match="not sampled by the guide"):
        gradient_report(model, guide, torch.tensor(X), sites=("cluster",), num_estimates=10)


def test_compare_estimators_on_the_categorical_vae_uses_a_monte_carlo_reference(tmp_path):
    """The command that used to die enumerating 10^20 assignments: binarized MNIST (the small
    fixture cut), 20 latents of 10 classes, a narrow network, a few estimates."""
    out = tmp_path / "cmp"
    argv = "compare-estimators --model cat-vae --data binarized-mnist -o hidden=16 --epochs 1 "
    argv += f"--batch-size 250 --estimators reinforce,rloo,gumbel --num-estimates 8 --out {out}"
    assert main(argv.split()) == 0
    with open(out / "estimators.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["group"] == "all"]
    assert [r["estimator"] for r in rows] == ["reinforce", "rloo", "gumbel"]
    for row in rows:
        assert row["reference"].startswith("rloo x 80 (1e+20 joint values per point"), row
        assert float(row["bias_noise"]) > 0 and float(row["variance"]) > 0
