"""rebar, relax, unordered, sum-and-sample, indecater, arsm and reinmax beyond the registry test
(which checks each one's mean gradient against the exact gradient of its objective): the learned
control variates lower the variance, their state resumes exactly, the set machinery matches brute
force, the point estimators run on a plain Pyro program that indexes with the discrete value, and
reinmax's backward pass is Heun's step."""

from __future__ import annotations

import itertools
import math

import pyro
import pyro.distributions as dist
import pyro_moe.guides  # noqa: F401
import pyro_moe.models  # noqa: F401
import pytest
import torch
from torch import nn

import pyro_moe.estimators  # noqa: F401
from pyro_moe import gradient_report, select, variance
from pyro_moe.estimators.objectives import exact_objective
from pyro_moe.estimators.points import top_k_assignments
from pyro_moe.estimators.reinmax import ReinMaxGate
from pyro_moe.estimators.unordered import subset_log_probs
from pyro_moe.registry import ESTIMATORS
from pyro_moe.verification import cat_vae_state, plain_gmm
from tests.helpers import tiny_data, tiny_moe


def _moe(guide: str = "posterior"):
    data = tiny_data("regression", n=40, seed=0)
    model, guide_ = tiny_moe(data, guide, num_components=3, hidden_dim=4)
    return model, guide_, (data.train.x[:4], data.train.y[:4])


def _variance(estimator, model, guide, args, n: int = 200, group: str = "all") -> float:
    rows = variance.compare({"e": estimator}, model, guide, args, n, seed=5)
    return next(r["variance"] for r in rows if r["group"] == group)


def _fit_control_variate(estimator, model, guide, args, steps: int) -> None:
    torch.manual_seed(0)
    for step in range(steps):
        estimator.loss(model.model, guide, *args)
        estimator.advance(step)


def test_relax_lowers_its_variance_during_a_short_run(float64):
    """Model and guide fixed; only the control variate trains (its own optimiser). The gate's
    gradient (the score side, q = p(c|x)) is the one its control variate acts on."""
    model, guide, args = _moe("gate")
    relax = ESTIMATORS["relax"]()
    relax.check(guide)
    before = _variance(relax, model, guide, args, group="gate")
    _fit_control_variate(relax, model, guide, args, 100)
    after = _variance(relax, model, guide, args, group="gate")
    assert after < 0.7 * before, (before, after)


@pytest.mark.parametrize("setup", [_moe, cat_vae_state], ids=["moe-posterior", "cat-vae"])
def test_rebar_and_relax_have_less_variance_than_reinforce(float64, setup):
    model, guide, args = setup()
    reinforce = _variance(
        ESTIMATORS["reinforce"](max_plate_nesting=model.max_plate_nesting), model, guide, args, 1000
    )
    for name in ("rebar", "relax"):
        estimator = ESTIMATORS[name](max_plate_nesting=model.max_plate_nesting)
        estimator.check(guide)
        assert _variance(estimator, model, guide, args) < 0.8 * reinforce, name


def test_relax_state_resumes_exactly(float64):
    """The network, eta, lambda and the own optimiser's moments live in ``state_dict``."""
    model, guide, args = _moe()
    relax = ESTIMATORS["relax"]()
    relax.check(guide)
    _fit_control_variate(relax, model, guide, args, 5)
    state = relax.state_dict()
    assert "_extra_state" in state and state["_extra_state"]["optimizer"]["state"]
    resumed = ESTIMATORS["relax"]()
    resumed.check(guide)
    resumed.load_state_dict(state)
    for estimator in (relax, resumed):
        torch.manual_seed(7)
        estimator.loss(model.model, guide, *args)
        estimator.advance(5)
    for a, b in zip(relax.state_dict().values(), resumed.state_dict().values(), strict=True):
        if torch.is_tensor(a):
            assert torch.equal(a, b)
    assert relax.scale.item() != 1.0  # it moved


def test_beam_search_finds_the_most_probable_joint_values(float64):
    torch.manual_seed(0)
    log_p = torch.randn(5, 3, 4).log_softmax(-1)  # 5 points, C = 3 cells of K = 4
    top = top_k_assignments(log_p, 6, perturb=False)  # [5, 6, 3]
    for n in range(5):
        joint = {
            a: sum(log_p[n, c, v].item() for c, v in enumerate(a))
            for a in itertools.product(range(4), repeat=3)
        }
        best = sorted(joint, key=joint.get, reverse=True)[:6]
        assert [tuple(row.tolist()) for row in top[n]] == best


def test_stochastic_beam_search_draws_without_replacement_from_the_joint(float64):
    """The first of k draws is a draw from q; the k are distinct; P(a in S) matches the exact
    inclusion probability sum over sets containing a (within 4 standard errors)."""
    torch.manual_seed(0)
    log_p = torch.randn(2, 3).log_softmax(-1)  # C = 2 cells, K = 3: 9 joint values
    draws = top_k_assignments(log_p.expand(20000, 2, 3), 2, perturb=True)  # [M, 2, 2]
    codes = draws[..., 0] * 3 + draws[..., 1]  # [M, 2]
    assert (codes[:, 0] != codes[:, 1]).all()
    q = (log_p[0][:, None] + log_p[1][None, :]).reshape(-1).exp()  # [9]
    first = torch.bincount(codes[:, 0], minlength=9).double() / len(codes)
    se = (q * (1 - q) / len(codes)).sqrt()
    assert ((first - q).abs() < 4 * se).all()
    inclusion = torch.bincount(codes.reshape(-1), minlength=9).double() / len(codes)
    exact = torch.tensor(
        [q[a] + sum(q[b] * q[a] / (1 - q[b]) for b in range(9) if b != a) for a in range(9)]
    )
    se = (exact * (1 - exact) / len(codes)).sqrt()
    assert ((inclusion - exact).abs() < 4 * se).all()


def test_set_probabilities_match_the_sum_over_orders(float64):
    torch.manual_seed(1)
    p = torch.rand(7).softmax(0)  # a domain of 7 values; S = the first 4
    logq = p[:4].log().reshape(1, 4, 1)
    log_g = subset_log_probs(logq, (1 - p[:4].sum()).log().reshape(1, 1))
    brute = sum(
        math.prod(p[o[i]].item() / (1 - sum(p[o[j]].item() for j in range(i))) for i in range(4))
        for o in itertools.permutations(range(4))
    )
    assert log_g[15].exp().item() == pytest.approx(brute, rel=1e-10)


class _Indexing(nn.Module):
    """A plain Pyro program: c ~ Cat(softmax(a)), x ~ N(locs[c], 1), guide c ~ Cat(softmax(W x)):
    the discrete value is used as an index (no gate.select)."""

    max_plate_nesting = 1

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(3))
        self.locs = nn.Parameter(torch.randn(3) * 2)
        self.w = nn.Parameter(torch.randn(3))

    def model(self, x):
        pyro.module("indexing", self)
        with pyro.plate("data", len(x)):
            c = pyro.sample("z", dist.Categorical(logits=self.a))
            pyro.sample("x", dist.Normal(self.locs[c], 1.0), obs=x)

    def guide(self, x):
        pyro.module("indexing", self)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Categorical(logits=self.w * x[:, None]))


@pytest.mark.parametrize("name", ["unordered", "sum-and-sample", "indecater", "arsm"])
def test_point_estimators_run_on_a_plain_program_that_indexes(float64, name):
    torch.manual_seed(0)
    program = _Indexing()
    x = torch.randn(5)
    params = list(program.parameters())
    estimator = ESTIMATORS[name]()
    exact = torch.autograd.grad(
        -exact_objective(estimator, program.model, program.guide, x), params
    )
    exact = torch.cat([g.reshape(-1) for g in exact])
    torch.manual_seed(1)
    samples = torch.stack(
        [
            torch.cat(
                [
                    g.reshape(-1)
                    for g in torch.autograd.grad(
                        estimator.loss(program.model, program.guide, x), params
                    )
                ]
            )
            for _ in range(400)
        ]
    )
    se = samples.std(0) / math.sqrt(len(samples))
    assert ((samples.mean(0) - exact).abs() <= 4 * se + 1e-8 * (1 + exact.abs())).all()


def test_reinmax_is_one_hot_forward_and_heun_backward(float64):
    torch.manual_seed(0)
    theta = torch.randn(6, 4, requires_grad=True)
    upstream = torch.randn(6, 4)
    tau = 1.5
    w = ReinMaxGate(theta, tau).rsample()
    hard = w.detach()
    assert ((hard == 0) | (hard == 1)).all() and (hard.sum(-1) == 1).all()
    (grad,) = torch.autograd.grad((w * upstream).sum(), theta)

    def jvp(p: torch.Tensor) -> torch.Tensor:  # J(p) upstream, J = diag(p) - p p^T
        return p * upstream - p * (p * upstream).sum(-1, keepdim=True)

    pi0 = theta.detach().softmax(-1)
    pi1 = (hard + (theta.detach() / tau).softmax(-1)) / 2
    assert torch.allclose(grad, 2 * jvp(pi1) - jvp(pi0) / 2, atol=1e-12)


X = torch.tensor([-2.1, -1.5, 0.2, 1.9, 2.4])
POINTS = ("unordered", "sum-and-sample", "indecater", "arsm")
RELAXED = ("rebar", "relax", "reinmax")


def test_gradient_report_runs_the_point_estimators_on_an_indexing_program(float64):
    model, guide = plain_gmm(lambda locs, z: locs[z])
    rows = gradient_report(model, guide, X, estimators=POINTS + RELAXED, num_estimates=600)
    for row in rows:
        if row["estimator"] in POINTS:
            assert row["reference"] == "exact" and row["note"] == "", row
            assert row["max_z"] < 4, row
        else:
            assert row["note"].startswith(f"not applicable: {row['estimator']} puts a relaxed")


def test_gradient_report_runs_rebar_relax_and_reinmax_on_a_select_program(float64):
    model, guide = plain_gmm(select)
    rows = gradient_report(model, guide, X, estimators=RELAXED, num_estimates=200)
    assert all(r["note"] == "" and math.isfinite(r["bias"]) for r in rows)
    assert all(r["max_z"] < 4 for r in rows if r["estimator"] != "reinmax"), rows


def test_point_estimators_tell_the_harness_their_model_runs_per_row(float64):
    """The vectorised harness shrinks its chunk of estimates by this factor."""
    model, guide, args = cat_vae_state()  # C = 2 cells of K = 3
    expected = {"indecater": 2 * 3 * 2, "arsm": (3 + 1) * 2, "unordered": 2 * 2}
    for name, points in expected.items():
        estimator = ESTIMATORS[name](max_plate_nesting=2)
        estimator.loss(model.model, guide, *args)
        assert estimator.points_per_estimate == points, name
