"""The Bayesian mixture of experts as a NumPyro program, for NUTS side by side with ours.

The same generative story as :class:`pyro_moe.models.bayes_moe.BayesianMixtureOfExperts` (the
same priors, read from a built model), written in NumPyro with the gate summed out in closed form:

    W_g ~ N(0, gate_scale^2 I), b_g ~ N(0, gate_scale^2)        "gate_weight" [K-1, P], "gate_bias"
    W_k ~ N(0, weight_scale^2 I)                                 "expert_weight" [K, D, M]
    a_(1) < ... < a_(K) ~ K! prod_k N(a_k; 0, weight_scale^2)    "expert_intercept" [K]
    b_k ~ N(0, weight_scale^2 I)  (outputs 2..M)                 "expert_bias" [K, M-1]
    s_k ~ HalfNormal(noise_scale)                                "expert_scale" [K, M]
    factor  sum_n logsumexp_k [log softmax(logits_n)_k + log p(y_n|x_n, c = k, theta)]

The ordered intercepts are an ``ImproperUniform`` site on ``ordered_vector`` (so NUTS moves in the
same unconstrained coordinates as Pyro's ``biject_to(ordered_vector)``) plus a ``numpyro.factor``
with their density; the gate is marginalised by one ``logsumexp`` in a ``numpyro.factor``, not by
funsor enumeration. The log joint at any theta equals
:meth:`~pyro_moe.models.bayes_moe.BayesianMixtureOfExperts.log_joint`.

NumPyro and JAX are an optional extra (``pip install '.[numpyro]'``): nothing here imports them
until a function is called, and :func:`available` says whether they are installed.

References:
    1. D. Phan, N. Pradhan, M. Jankowiak, "Composable Effects for Flexible and Accelerated
       Probabilistic Programming in NumPyro", arXiv:1912.11554, 2019.
    2. M. Hoffman, A. Gelman, "The No-U-Turn Sampler: Adaptively Setting Path Lengths in
       Hamiltonian Monte Carlo", JMLR 2014.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from pyro_moe.bayes import NutsConfig, Posterior

#: XLA on one CPU thread (read when JAX is first imported)
ONE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def available() -> bool:
    """Whether NumPyro (and so JAX) can be imported."""
    return importlib.util.find_spec("numpyro") is not None


def one_thread() -> None:
    """Ask XLA for one CPU thread, unless ``XLA_FLAGS`` is set; effective before JAX's import."""
    os.environ.setdefault("XLA_FLAGS", ONE_THREAD_XLA)


def program(model) -> Callable[..., None]:
    """The NumPyro program of ``model`` (a built ``BayesianMixtureOfExperts``), ``f(x, y)`` with
    x ``[N, D]`` and y ``[N, M]`` (regression) or ``[N]`` integer classes."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from jax.nn import log_softmax
    from jax.scipy.special import logsumexp

    k, d, m, p = model.num_components, model.input_dim, model.output_dim, model.gate_degree
    g, w, s = (
        float(getattr(model, name)) for name in ("gate_scale", "weight_scale", "noise_scale")
    )
    regression = model.task == "regression"

    def sample_globals() -> dict[str, Any]:
        theta = {}
        if k > 1:
            theta["gate_weight"] = numpyro.sample(
                "gate_weight", dist.Normal(0.0, g).expand([k - 1, d * p]).to_event(2)
            )
            theta["gate_bias"] = numpyro.sample(
                "gate_bias", dist.Normal(0.0, g).expand([k - 1]).to_event(1)
            )
        theta["expert_weight"] = numpyro.sample(
            "expert_weight", dist.Normal(0.0, w).expand([k, d, m]).to_event(3)
        )
        if model.ordered and k > 1:
            support = dist.constraints.ordered_vector
            a = numpyro.sample("expert_intercept", dist.ImproperUniform(support, (), (k,)))
            numpyro.factor(
                "intercept_order", dist.Normal(0.0, w).log_prob(a).sum() + math.lgamma(k + 1)
            )
            theta["expert_intercept"] = a
        else:
            theta["expert_intercept"] = numpyro.sample(
                "expert_intercept", dist.Normal(0.0, w).expand([k]).to_event(1)
            )
        if m > 1:
            theta["expert_bias"] = numpyro.sample(
                "expert_bias", dist.Normal(0.0, w).expand([k, m - 1]).to_event(2)
            )
        if regression:
            theta["expert_scale"] = numpyro.sample(
                "expert_scale", dist.HalfNormal(s).expand([k, m]).to_event(2)
            )
        return theta

    def log_gate(theta, x):  # [N, K]
        if k == 1:
            return jnp.zeros((x.shape[0], 1))
        features = jnp.concatenate([x**power for power in range(1, p + 1)], -1)  # [N, P]
        free = features @ theta["gate_weight"].T + theta["gate_bias"]  # [N, K-1]
        return log_softmax(jnp.concatenate([free, jnp.zeros_like(free[:, :1])], -1), -1)

    def component_log_likelihood(theta, x, y):  # [N, K]
        bias = theta["expert_intercept"][:, None]  # [K, 1]
        if m > 1:
            bias = jnp.concatenate([bias, theta["expert_bias"]], -1)  # [K, M]
        out = jnp.einsum("nd,kdm->nkm", x, theta["expert_weight"]) + bias  # [N, K, M]
        if regression:
            return dist.Normal(out, theta["expert_scale"]).log_prob(y[:, None, :]).sum(-1)
        log_probs = log_softmax(out, -1)
        return jnp.take_along_axis(log_probs, y[:, None, None], -1)[..., 0]

    def model_fn(x, y) -> None:
        theta = sample_globals()
        joint = log_gate(theta, x) + component_log_likelihood(theta, x, y)
        numpyro.factor("label", logsumexp(joint, -1).sum())

    return model_fn


def log_joint(model, theta: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    """log p(theta) + sum_n log p(y_n|x_n, theta) of the NumPyro program at one theta."""
    import jax.numpy as jnp
    from numpyro.infer.util import log_density

    params = {name: jnp.asarray(value.detach().cpu().numpy()) for name, value in theta.items()}
    value, _ = log_density(program(model), _arrays(model, x, y), {}, params)
    return float(value)


def _arrays(model, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, Any]:
    import jax.numpy as jnp

    labels = y.detach().cpu().numpy()
    return jnp.asarray(x.detach().cpu().numpy()), jnp.asarray(labels)


def run_nuts(model, x, y, config: NutsConfig, start: Mapping[str, torch.Tensor]):
    """One chain of NumPyro's NUTS (``config``'s warm-up, draws, seed, target acceptance, tree
    depth and mass matrix) from the constrained point ``start``, run twice with the same key:
    the first run's wall seconds count JAX's compilation, the second's reuse it. Returns the
    first run's :class:`~pyro_moe.bayes.Posterior` and the second run's seconds (its draws are
    the first run's, which is checked)."""
    import jax
    from numpyro.infer import MCMC, NUTS, init_to_value

    values = {name: jax.numpy.asarray(v.detach().cpu().numpy()) for name, v in start.items()}
    kernel = NUTS(
        program(model),
        target_accept_prob=config.target_accept,
        max_tree_depth=config.max_tree_depth,
        dense_mass=config.full_mass,
        init_strategy=init_to_value(values=values),
    )
    mcmc = MCMC(
        kernel,
        num_warmup=config.warmup,
        num_samples=config.samples,
        num_chains=1,
        progress_bar=False,
    )
    args, key = _arrays(model, x, y), jax.random.PRNGKey(config.seed)
    fields = ("diverging", "potential_energy", "adapt_state.step_size")
    seconds, draws = [], []
    for _ in range(2):
        begin = time.perf_counter()
        mcmc.run(key, *args, extra_fields=fields)
        samples = jax.block_until_ready(mcmc.get_samples())
        seconds.append(time.perf_counter() - begin)
        draws.append({k: torch.from_numpy(np.array(v))[None] for k, v in samples.items()})
    if any(not torch.equal(draws[0][k], draws[1][k]) for k in draws[0]):
        raise RuntimeError("NumPyro's second run with the same key gave other draws")
    extra = mcmc.get_extra_fields()
    stats = {
        "diverging": np.asarray(extra["diverging"])[None],
        "lp": -np.asarray(extra["potential_energy"])[None],
        "step_size": np.asarray(extra["adapt_state.step_size"])[None],
    }
    return Posterior(draws[0], stats, seconds[0], "numpyro-nuts"), seconds[1]
