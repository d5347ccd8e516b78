"""The estimator suite against exact answers (enumeration, brute force) on a tiny MoE, K = 3.

Gradients are compared coordinate by coordinate: an unbiased estimator's mean of E estimates lies
within 4 standard errors of the exact TraceEnum gradient (with ~100 coordinates and a fixed seed,
a correct estimator fails this with probability well under 1%)."""

from __future__ import annotations

import itertools
import math

import pyro
import pyro.distributions as dist
import pyro_moe.guides  # noqa: F401
import pyro_moe.models  # noqa: F401
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceGraph_ELBO

import pyro_moe.estimators  # noqa: F401
from pyro_moe import variance, verification
from pyro_moe.errors import ConfigError
from pyro_moe.estimators import objectives
from pyro_moe.estimators.base import value_with_gradient_of
from pyro_moe.estimators.reinforce import AVERAGE_PREFIX, Dependencies
from pyro_moe.estimators.relaxed import RelaxedGate
from pyro_moe.estimators.sampled import run_traces
from pyro_moe.estimators.temperature import Temperature
from pyro_moe.nonfinite import is_invalid_parameter_error
from pyro_moe.registry import ESTIMATORS, GUIDES
from tests.helpers import tiny_data, tiny_moe

ALL = ESTIMATORS.names()


def _setup(guide="posterior", n=4, seed=0):
    data = tiny_data("regression", n=40, seed=seed)
    model, guide_ = tiny_moe(data, guide, num_components=3)
    return model, guide_, (data.train.x[:n], data.train.y[:n])


def _z(m: variance.Measurement) -> torch.Tensor:
    se = m.samples.std(0) / math.sqrt(m.samples.shape[0])
    live = se > 0
    return ((m.samples.mean(0) - m.exact)[live] / se[live]).abs()


@pytest.mark.parametrize("name", ALL)
def test_every_estimator_trains_one_step(float64, name):
    model, guide, args = _setup()
    estimator = ESTIMATORS[name]()
    estimator.check(guide)
    loss = estimator.loss(model.model, guide, *args, num_data=10)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads)
    estimator.advance(0)


@pytest.mark.parametrize(
    "name, vectorize",
    [("reinforce", False), ("reinforce-avg", False), ("rloo", True), ("nvil", True)],
)
def test_unbiased_estimators_match_exact_gradient(float64, name, vectorize):
    model, guide, args = _setup()
    estimator = ESTIMATORS[name]()
    estimator.check(guide)
    torch.manual_seed(1)
    m = variance.measure(estimator, model, guide, args, 1500 if vectorize else 300, vectorize)
    z = _z(m)
    assert z.numel() > 50
    assert z.max() < 4.0, f"{name}: max |z| = {z.max():.2f}"


def _chain_program():
    """A program where the dependency graph matters: the guide draws z (reparameterised), then
    c ~ q(c|z) and d ~ q(d|c); in the model the observation depends on z only, so
    TraceGraph_ELBO leaves log p(x|z) and the guide's log q(z) out of c's and d's costs."""

    def model(x):
        pi = pyro.param("pi_logits", torch.zeros(3))
        mu = pyro.param("mu", torch.tensor([-1.0, 0.0, 1.5]))
        trans = pyro.param("trans", torch.zeros(3, 2))
        w = pyro.param("w", torch.tensor(0.7))
        with pyro.plate("data", len(x)):
            c = pyro.sample("cluster", dist.Categorical(logits=pi))
            pyro.sample("d", dist.Categorical(logits=trans[c]))
            z = pyro.sample("latent", dist.Normal(mu[c], 1.0))
            pyro.sample("obs", dist.Normal(w * z, 0.5), obs=x)

    def guide(x):
        a = pyro.param("a", torch.tensor(0.5))
        b = pyro.param("b", torch.tensor([0.3, -0.2, 0.1]))
        t = pyro.param("t", torch.zeros(3, 2))
        with pyro.plate("data", len(x)):
            z = pyro.sample("latent", dist.Normal(a * x, 0.8))
            c = pyro.sample("cluster", dist.Categorical(logits=b * z[:, None]))
            pyro.sample("d", dist.Categorical(logits=t[c]))

    return model, guide, (torch.linspace(-2, 2, 5),)


def _cat_vae_program():
    model, guide, args = verification.cat_vae_state()
    return model.model, guide, args


def _moe_program():
    model, guide, args = _setup()
    return model.model, guide, args


def _with_average_baselines(guide, beta):
    """``guide`` with Pyro's decaying-average baseline on every sample site."""
    options = {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": beta}}
    return poutine.infer_config(guide, lambda msg: options)


def _drop_average_baselines() -> None:
    store = pyro.get_param_store()
    for name in [n for n in store if n.startswith(AVERAGE_PREFIX)]:
        del store[name]


@pytest.mark.parametrize("name", ["reinforce", "reinforce-avg"])
@pytest.mark.parametrize("program", [_chain_program, _cat_vae_program, _moe_program])
def test_reinforce_is_tracegraph_elbo_draw_for_draw(float64, program, name):
    """``reinforce`` learns the dependency graph on its first call and reuses it: on every call,
    the first and the later ones, its value and gradient equal TraceGraph_ELBO's on the same
    draws (which tracks provenance on every call). ``reinforce-avg`` equals TraceGraph_ELBO with
    ``use_decaying_avg_baseline`` on every site over consecutive calls (the average is state)."""
    model, guide, args = program()
    reinforce = ESTIMATORS[name](max_plate_nesting=2)
    tracegraph = TraceGraph_ELBO(max_plate_nesting=2)
    pyro_guide = guide if name == "reinforce" else _with_average_baselines(guide, reinforce.beta)
    ours, pyros = [], []
    for seed in range(4):
        pyro.set_rng_seed(seed)
        ours.append(reinforce.loss(model, guide, *args))
    _drop_average_baselines()
    for seed in range(4):
        pyro.set_rng_seed(seed)
        elbo, surrogate = tracegraph._loss_and_surrogate_loss(model, pyro_guide, args, {})
        pyros.append(value_with_gradient_of(-elbo, surrogate))
    _drop_average_baselines()
    params = [p.unconstrained() for p in pyro.get_param_store().values()]
    params += [p for m in (model, guide) if isinstance(m, torch.nn.Module) for p in m.parameters()]
    params += list(getattr(model, "__self__", torch.nn.Module()).parameters())
    assert not reinforce.dependencies.stale
    for a, b in zip(ours, pyros, strict=True):
        assert a.item() == pytest.approx(b.item(), rel=1e-10)
        grads = [
            torch.autograd.grad(v, params, allow_unused=True, retain_graph=True) for v in (a, b)
        ]
        for ga, gb in zip(*grads, strict=True):
            assert (ga is None) == (gb is None)
            if ga is not None:
                torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-12)


def test_reinforce_without_the_dependency_map_scores_every_site():
    """A site the learnt map does not know is assumed downstream of every score site."""
    deps = Dependencies()
    deps.scores, deps.upstream, deps.stale = frozenset({"c"}), {("model", "x"): frozenset()}, False
    assert not deps.depends(("model", "x"), "c") and not deps.stale
    assert deps.depends(("model", "new"), "c") and deps.stale


@pytest.mark.parametrize("name", ["reinforce", "rloo", "gumbel"])
def test_validation_checks_the_first_call_for_a_program(name):
    """Pyro's validation runs on an estimator's first call for a (model, guide) pair, and again
    after a first call that failed; the later calls skip it (a NaN parameter then shows up as a
    NaN loss or a failed categorical draw, which the trainer reports as a non-finite step,
    instead of a ValueError)."""
    model, guide, args = _setup()
    estimator = ESTIMATORS[name]()
    with torch.no_grad():
        guide.net[0].bias[0] = float("nan")
    for _ in range(2):  # a failed first call does not count
        with pytest.raises(ValueError, match="invalid values"):
            estimator.loss(model.model, guide, *args)
    with torch.no_grad():
        guide.net[0].bias[0] = 0.0
    assert torch.isfinite(estimator.loss(model.model, guide, *args))
    with torch.no_grad():
        guide.net[0].bias[0] = float("nan")
    try:
        assert torch.isnan(estimator.loss(model.model, guide, *args))
    except RuntimeError as e:  # the score-function estimators draw c ~ Categorical(NaN)
        assert is_invalid_parameter_error(e) and estimator.uses_score
    other = GUIDES["posterior"](model)  # another program: validated again
    with torch.no_grad():
        other.net[0].bias[0] = float("nan")
    with pytest.raises(ValueError, match="invalid values"):
        estimator.loss(model.model, other, *args)


def _brute_force_vimco(model, guide, x, y, s: int) -> torch.Tensor:
    """sum_n E_{c_1..c_S ~ q}[log mean_s exp f(c_s)] over all K^S assignments."""
    log_p = torch.log_softmax(model.gate_logits(x), -1) + model.component_log_likelihood(x, y)
    log_q = torch.log_softmax(guide.logits(x, y), -1)
    f = log_p - log_q  # [N, K]
    k = f.shape[-1]
    total = 0.0
    for combo in itertools.product(range(k), repeat=s):
        idx = list(combo)
        weight = log_q[:, idx].sum(-1).exp()
        bound = torch.logsumexp(f[:, idx], -1) - math.log(s)
        total = total + (weight * bound).sum()
    return total


def test_vimco_matches_brute_force_bound(float64):
    model, guide, (x, y) = _setup(n=3)
    s = 3
    estimator = ESTIMATORS["vimco"](num_particles=s)
    exact = _brute_force_vimco(model, guide, x, y, s)
    groups = variance.parameter_groups(model, guide)
    params = [p for ps in groups.values() for p in ps]
    exact_grad = torch.cat(
        [g.reshape(-1) for g in torch.autograd.grad(-exact, params, allow_unused=False)]
    )
    torch.manual_seed(2)
    losses = estimator.estimate_losses(model.model, guide, 4000, x, y)
    values = -losses.detach()
    se = values.std() / math.sqrt(len(values))
    assert abs(values.mean() - exact) < 4 * se, (values.mean().item(), exact.item(), se.item())
    samples = variance.gradient_samples(estimator, model, guide, (x, y), params, 1500)
    se_g = samples.std(0) / math.sqrt(samples.shape[0])
    live = se_g > 0
    z = ((samples.mean(0) - exact_grad)[live] / se_g[live]).abs()
    assert z.max() < 4.0, z.max()
    # and with S = 1 the bound is the ELBO, which it must exceed for S = 3
    elbo = -ESTIMATORS["enum"]().loss(model.model, guide, x, y)
    assert exact > elbo


def test_relaxed_bias_shrinks_and_variance_grows_with_lower_temperature(float64):
    model, guide, args = _setup(guide="gate")
    rows = []
    for tau in (2.0, 0.5, 0.1):
        torch.manual_seed(3)
        m = variance.measure(ESTIMATORS["gumbel"](temperature=tau), model, guide, args, 1000)
        rows.append(variance.summarize(m.samples, m.exact))
    bias = [r["bias"] for r in rows]
    var = [r["variance"] for r in rows]
    assert bias[0] > bias[1] > bias[2], bias
    assert var[0] < var[1] < var[2], var
    assert bias[0] > 10 * rows[0]["bias_noise"]  # the bias is real, not noise


def _samples_at(name: str, tau: float, guide: str, n: int, seed: int = 5, **options):
    torch.manual_seed(0)  # the same model and guide for every call
    model, guide_, args = _setup(guide=guide)
    torch.manual_seed(seed)
    estimator = ESTIMATORS[name](temperature=tau, **options)
    return variance.measure(estimator, model, guide_, args, n)


@pytest.mark.parametrize("tau", [2.0, 0.5, 0.1])
def test_gumbel_rao_has_the_straight_through_mean_with_lower_variance(float64, tau):
    """Paulus et al.'s estimator is E[straight-through | one-hot]: the same mean gradient (every
    coordinate within 4 standard errors of the difference) and a lower gate variance. With the
    conditional Gumbels differentiated instead of held fixed, the means differ by 58-160 standard
    errors at these temperatures."""
    st = _samples_at("st-gumbel", tau, "gate", 5000)
    rao = _samples_at("gumbel-rao", tau, "gate", 5000)
    a, b = st.samples, rao.samples
    se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
    live = se > 1e-9
    z = ((a.mean(0) - b.mean(0))[live] / se[live]).abs()
    assert z.max() < 4.0, f"tau={tau}: max |z| = {z.max():.1f}"
    gate = st.slices["gate"]
    assert b[:, gate].var(0).sum() < 0.8 * a[:, gate].var(0).sum()


def test_concrete_gate_bias_does_not_depend_on_temperature(float64):
    """d/da_p log ExpConcrete(y | tau, a_p) = 1 - K softmax(a_p - a_q - g) has no tau in it: with
    the posterior guide the gate-parameter gradients are the same draw for draw at every
    temperature, so their bias does not shrink as tau -> 0 (while the experts' does)."""
    runs = [_samples_at("concrete", tau, "posterior", 2000) for tau in (2.0, 0.5, 0.1, 0.02)]
    gate = runs[0].slices["gate"]
    for m in runs[1:]:
        assert torch.allclose(m.samples[:, gate], runs[0].samples[:, gate], rtol=1e-9, atol=1e-9)
    stats = variance.summarize(runs[0].samples[:, gate], runs[0].exact[gate])
    assert stats["bias"] > 10 * stats["bias_noise"], stats
    experts = [variance.summarize(m.samples, m.exact)["bias"] for m in runs]
    assert experts[-1] < 0.5 * experts[0], experts


@pytest.mark.parametrize("name", ["st-gumbel", "gumbel-rao"])
def test_straight_through_bias_does_not_vanish_as_temperature_falls(float64, name):
    """Straight-through's backward pass is the relaxed Jacobian at a one-hot forward value: its
    bias against the exact ELBO gradient stays (here it grows) as tau falls from 2 to 0.1."""
    rows = [
        variance.summarize(m.samples, m.exact)
        for m in (_samples_at(name, tau, "posterior", 2000) for tau in (2.0, 0.1))
    ]
    assert rows[1]["bias"] > 4 * rows[1]["bias_noise"], rows[1]
    assert rows[1]["bias"] > 0.5 * rows[0]["bias"], [r["bias"] for r in rows]


def test_st_gumbel_forward_is_exactly_one_hot(float64):
    model, guide, args = _setup(n=10)
    estimator = ESTIMATORS["st-gumbel"](temperature=0.7)
    model_trace, _ = run_traces(model.model, guide, args, {}, 5, 2, 1, estimator.handler())
    w = model_trace.nodes["cluster"]["value"]
    assert w.shape == (5, 2, 10, 3)
    assert ((w == 0) | (w == 1)).all() and (w.sum(-1) == 1).all()
    assert w.requires_grad  # the relaxed gradient flows backward


def test_question_estimator_is_biased(float64):
    """The question's proposal: its mean gradient misses the exact Jensen-bound gradient by more
    than 20% of its norm, far beyond the Monte Carlo noise (bias > 10 x bias_noise)."""
    model, guide, args = _setup(guide="gate")
    torch.manual_seed(4)
    rows = variance.compare({"question": ESTIMATORS["question"]()}, model, guide, args, 2000)
    gate = next(r for r in rows if r["group"] == "gate")
    assert gate["rel_bias"] > 0.2, gate
    assert gate["bias"] > 10 * gate["bias_noise"], gate


def _train_baseline(estimator, model, guide, args, steps=300):
    optim = torch.optim.Adam(estimator.parameters(), lr=0.02)
    for _ in range(steps):
        optim.zero_grad()
        estimator.estimate_losses(model.model, guide, 8, *args).sum().backward()
        optim.step()


def _jacobians(values: torch.Tensor, params) -> torch.Tensor:
    """The gradient of every entry of ``values`` ``[A, N]``: ``[A, N, P]``."""
    rows = [
        variance._flat(torch.autograd.grad(v, params, retain_graph=True, allow_unused=True), params)
        for v in values.reshape(-1)
    ]
    return torch.stack(rows).reshape(values.shape + (-1,))


def _exact_score_variances(model, guide, args) -> dict[str, float]:
    """trace Cov of one estimate, by enumeration, for b = 0 (S = 1) and leave-one-out (S = 2), in
    the form without the zero-mean -grad log q(c) term ("pyro") and with it ("kept")."""
    table = objectives.assignment_table(model.model, guide, args, {}, 1)
    params = [p for ps in variance.parameter_groups(model, guide).values() for p in ps]
    j_lq = _jacobians(table.logq, params)  # [A, N, P]
    j_ft = _jacobians(table.f + table.logq, params)  # f's gradient without -grad log q
    f, q = table.f.detach()[..., None], table.logq.detach().exp()[..., None]

    def trace_cov(g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # g, w: [..., N, P|1]
        dims = tuple(range(g.dim() - 2))
        mean = (w * g).sum(dims)
        return ((w * g**2).sum(dims) - mean**2).sum(0)  # [P]: Var per coordinate

    out = {}
    for form, j_f in (("pyro", j_ft), ("kept", j_ft - j_lq)):
        out[f"reinforce-{form}"] = trace_cov(f * j_lq + j_f, q)
        d = f[:, None] - f[None, :]  # [A1, A2, N, 1]: f_1 - f_2
        pair = 0.5 * (d * j_lq[:, None] + j_f[:, None] - d * j_lq[None, :] + j_f[None, :])
        out[f"rloo-{form}"] = trace_cov(pair, q[:, None] * q[None, :])
    return out


def test_score_function_estimators_share_one_form_and_its_exact_variance(float64):
    """reinforce (TraceGraph_ELBO) and rloo (our sampled machinery) both leave out the zero-mean
    -grad log q(c) term by default: their measured variances on the posterior network's
    parameters match the enumerated variances of that form within 10%; rloo with
    ``zero_mean_term=True`` matches the other form, which differs by more than 20% here."""
    torch.manual_seed(0)
    model, guide, args = _setup(guide="posterior")
    with torch.no_grad():  # experts near the truth y = x1 + x2: f varies little with c
        model.experts.weight.copy_(1 + 0.3 * torch.randn_like(model.experts.weight))
        model.experts.bias.normal_(0, 0.3)
        model.raw_scale.fill_(0.0)
    exact = _exact_score_variances(model, guide, args)
    cases = (
        ("reinforce", {}, "reinforce-pyro"),
        ("rloo", {"num_particles": 2}, "rloo-pyro"),
        ("rloo", {"num_particles": 2, "zero_mean_term": True}, "rloo-kept"),
    )
    for name, options, form in cases:
        torch.manual_seed(6)
        m = variance.measure(ESTIMATORS[name](**options), model, guide, args, 6000)
        encoder = m.slices["encoder"]
        expected = exact[form][encoder].sum().item()
        other = exact[form.replace("pyro", "x").replace("kept", "pyro").replace("x", "kept")]
        assert abs(other[encoder].sum().item() / expected - 1) > 0.2, (form, exact)
        measured = m.samples[:, encoder].var(0).sum().item()
        assert measured == pytest.approx(expected, rel=0.1), (name, options, measured, expected)


def test_rloo_and_nvil_reduce_variance_below_reinforce(float64):
    model, guide, args = _setup()
    nvil = ESTIMATORS["nvil"]()
    nvil.check(guide)
    _train_baseline(nvil, model, guide, args)
    estimators = {
        "reinforce": ESTIMATORS["reinforce"](),
        "rloo": ESTIMATORS["rloo"](num_particles=2),
        "nvil": nvil,
    }
    rows = variance.compare(estimators, model, guide, args, 200)
    var = {r["estimator"]: r["variance"] for r in rows if r["group"] == "all"}
    assert var["rloo"] < var["reinforce"] and var["nvil"] < var["reinforce"], var


def test_pyro_relaxed_pitfalls_and_our_workaround(float64):
    logits = torch.tensor([[50.0, -50.0, -50.0], [-50.0, 50.0, -50.0]])
    tau = torch.tensor(0.01)
    pyro_relaxed = dist.RelaxedOneHotCategorical(tau, logits=logits)
    w = pyro_relaxed.rsample((100,))
    assert not torch.isfinite(pyro_relaxed.log_prob(w)).all()  # Pyro: log(0) at the corners
    ours = RelaxedGate(logits, 0.01)
    w = ours.rsample((100,))
    assert torch.isfinite(ours.log_prob(w)).all()
    # the straight-through value scored by Pyro is the hard one-hot, whose density is 0 / -inf
    st = dist.RelaxedOneHotCategoricalStraightThrough(torch.tensor(0.5), logits=logits / 50)
    hard = st.rsample((100,))
    replayed = hard.detach().clone()
    assert not torch.isfinite(st.log_prob(replayed)).all()


def test_temperature_schedule():
    t = Temperature(1.0, "exp", rate=0.1, tau_min=0.5)
    t.advance(0)
    assert t() == pytest.approx(math.exp(-0.1))
    t.advance(100)
    assert t() == 0.5
    assert "value" in t.state_dict()
    with pytest.raises(ConfigError, match="schedule"):
        Temperature(1.0, "linear")


@pytest.mark.parametrize("name", ["rloo", "vimco"])
def test_multi_sample_estimators_need_two_particles(name):
    with pytest.raises(ConfigError, match="num_particles >= 2"):
        ESTIMATORS[name](num_particles=1)


def test_relaxed_estimator_rejects_non_categorical_gate(float64):
    def model(x):
        pyro_sample = poutine.trace(lambda: None)  # noqa: F841
        import pyro

        with pyro.plate("data", 3):
            pyro.sample("cluster", dist.Normal(0.0, 1.0))

    estimator = ESTIMATORS["gumbel"]()
    with pytest.raises(ConfigError, match="Categorical"):
        estimator.loss(model, model, torch.zeros(3))


def test_reinforce_avg_keeps_its_average_through_a_non_finite_cost(float64):
    """A NaN cost (a step the trainer skips) must not poison the decaying average for good."""
    estimator = ESTIMATORS["reinforce-avg"](beta=0.5)
    first = estimator.baseline("cluster", torch.tensor([2.0, 4.0]))
    assert torch.equal(first, torch.zeros(2))
    kept = estimator.baseline("cluster", torch.tensor([float("nan"), 1.0]))
    torch.testing.assert_close(kept, torch.tensor([1.0, 2.0]))
    after = estimator.baseline("cluster", torch.tensor([3.0, 0.0]))
    torch.testing.assert_close(after, torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(
        estimator.baseline("cluster", torch.zeros(2)), torch.tensor([2.0, 1.0])
    )
