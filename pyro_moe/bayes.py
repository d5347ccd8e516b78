"""Posterior inference for the Bayesian mixture of experts, and its results as ArviZ InferenceData.

NUTS (Hoffman & Gelman 2014, Pyro's implementation) samples the global parameters theta with the
gate summed out. Its potential energy at unconstrained u (theta = T(u), T the bijection onto each
site's support) is

    U(u) = -[log p(T(u)) + sum_n logsumexp_k (log p(c_n = k|x_n, T(u)) + log p(y_n|x_n, k, T(u)))
             + log |det dT/du|]

computed by default in one vectorised torch pass (:func:`collapsed_potential`) instead of tracing
the enumerated Pyro program at every leapfrog step (``fast=False`` uses Pyro's traced potential,
with ``jit=True`` its JIT-compiled form). NUTS returns no values for the enumerated ``cluster``
site; :func:`discrete_assignments` recovers them per draw with Pyro's ``infer_discrete``
(c_n ~ p(c_n|x_n, y_n, theta) ∝ p(c_n|x_n, theta) p(y_n|x_n, c_n, theta)).

:func:`to_inference_data` writes the draws as ``arviz.InferenceData`` with the groups

* ``posterior``: the global sites, dims ``(chain, draw, ...)``;
* ``sample_stats``: ``diverging``, ``lp`` (the log density, -U) and ``step_size`` per draw (NUTS);
* ``log_likelihood``: ``label`` = log p(y_n|x_n, theta) with the gate summed out, per point and
  draw, so that ``az.loo``, ``az.waic`` and ``az.compare`` work (``az.from_pyro`` gives no usable
  pointwise log-likelihood when a discrete site is enumerated);
* ``posterior_predictive``: ``label`` ~ p(y|x, theta) per draw;
* ``discrete_posterior``: ``cluster``, the assignments from ``infer_discrete`` per point and draw;
* ``observed_data`` (``label``) and ``constant_data`` (``x``).

An SVI fit (the ``auto-normal`` guide trained by :func:`pyro_moe.train.fit`) converts the same way
from draws of its guide (:func:`svi_posterior`), so NUTS and SVI compare with ArviZ's own tools.

References:
    1. M. Hoffman, A. Gelman, "The No-U-Turn Sampler: Adaptively Setting Path Lengths in
       Hamiltonian Monte Carlo", JMLR 2014.
    2. A. Vehtari, A. Gelman, J. Gabry, "Practical Bayesian model evaluation using leave-one-out
       cross-validation and WAIC", Statistics and Computing 2017.
    3. A. Vehtari, A. Gelman, D. Simpson, B. Carpenter, P.-C. Bürkner, "Rank-normalization,
       folding, and localization: an improved R-hat for assessing convergence of MCMC",
       Bayesian Analysis 2021.
    4. R. Kumar, C. Carroll, A. Hartikainen, O. Martin, "ArviZ a unified library for exploratory
       analysis of Bayesian models in Python", JOSS 2019.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.distributions.transforms import Transform
from pyro.infer import config_enumerate, infer_discrete
from pyro.infer.mcmc import MCMC, NUTS
from pyro.infer.mcmc.util import initialize_model
from torch.distributions import biject_to

from pyro_moe.errors import ConfigError
from pyro_moe.validation import check_bool, check_int, check_number, distribution_checks_off

Potential = Callable[[dict[str, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class NutsConfig:
    """Options of :func:`run_nuts` (checked on construction)."""

    chains: int = 2
    warmup: int = 200
    samples: int = 200
    seed: int = 0
    target_accept: float = 0.8
    max_tree_depth: int = 10
    full_mass: bool = True  # adapt a dense mass matrix (gate weights and biases correlate)
    init_radius: float = 2.0  # the random starts u ~ Uniform(-r, r), as Stan draws them
    init_restarts: int = 4  # random starts optimised to a mode; the best one starts the chains
    init_steps: int = 300  # Adam steps per start (0: the chains start at random points)
    init_jitter: float = 0.1  # each chain starts at the mode + Uniform(-j, j)
    fast: bool = True  # the collapsed torch potential (False: Pyro's traced, enumerated potential)
    jit: bool = True  # compile the potential (torch.jit.trace; with fast=False Pyro's jit_compile)
    progress: bool | None = None  # Pyro's progress bar (None: on)

    def __post_init__(self) -> None:
        for name in ("chains", "samples"):
            check_int(name, getattr(self, name))
        check_int("warmup", self.warmup, minimum=0)
        check_int("seed", self.seed, minimum=0)
        check_int("max_tree_depth", self.max_tree_depth)
        check_number("init_radius", self.init_radius)
        check_int("init_restarts", self.init_restarts)
        check_int("init_steps", self.init_steps, minimum=0)
        check_number("init_jitter", self.init_jitter, positive=False)
        if not 0 < self.target_accept < 1:
            raise ConfigError(f"target_accept must be in (0, 1), got {self.target_accept!r}")
        for name in ("fast", "jit", "full_mass"):
            check_bool(name, getattr(self, name))
        check_bool("progress", self.progress, optional=True)


@dataclass
class Posterior:
    """Posterior draws of the global sites, ``[chains, draws, *site shape]`` each, with the
    sampler's per-draw statistics (``[chains, draws]``; empty for SVI) and its wall seconds."""

    draws: dict[str, torch.Tensor]
    sample_stats: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0
    method: str = "nuts"

    @property
    def num_chains(self) -> int:
        return next(iter(self.draws.values())).shape[0]

    @property
    def num_draws(self) -> int:
        return next(iter(self.draws.values())).shape[1]

    def flat(self) -> dict[str, torch.Tensor]:
        """The draws with chain and draw merged: ``[chains * draws, *site shape]``."""
        return {k: v.reshape(-1, *v.shape[2:]) for k, v in self.draws.items()}


# --- NUTS ----------------------------------------------------------------------------------------
def site_transforms(model) -> dict[str, Transform]:
    """T per global site: the bijection from R^d onto the support of its prior."""
    return {name: biject_to(prior.support) for name, prior in model.priors().items()}


def constrain(u: Mapping[str, torch.Tensor], transforms: Mapping[str, Transform]):
    """theta = T(u) per site, and sum log |det dT/du| (over the sites and their elements)."""
    theta, log_det = {}, 0.0
    for name, transform in transforms.items():
        theta[name] = transform(u[name])
        log_det = log_det + transform.log_abs_det_jacobian(u[name], theta[name]).sum()
    return theta, log_det


def collapsed_potential(model, x: torch.Tensor, y: torch.Tensor) -> Potential:
    """U(u) = -[log p(T(u)) + sum_n log p(y_n|x_n, T(u)) + log |det dT/du|], the gate summed out
    by one ``logsumexp`` (:meth:`~pyro_moe.models.bayes_moe.BayesianMixtureOfExperts.log_joint`)."""
    transforms = site_transforms(model)

    def potential(u: dict[str, torch.Tensor]) -> torch.Tensor:
        with distribution_checks_off():  # argument checks cost a quarter of the time
            theta, log_det = constrain(u, transforms)
            return -(model.log_joint(theta, x, y) + log_det)

    return potential


def traced_potential(model, x: torch.Tensor, y: torch.Tensor, jit: bool = False) -> Potential:
    """Pyro's potential of the enumerated program (``initialize_model``): the same U(u), computed
    by tracing ``config_enumerate(model.model)`` and contracting the enumerated site."""
    _, potential, _, _ = initialize_model(
        config_enumerate(model.model, "parallel"),
        model_args=(x, y),
        max_plate_nesting=model.max_plate_nesting,
        jit_compile=jit,
        skip_jit_warnings=True,
    )
    return potential


def initial_params(model, seed: int, radius: float) -> dict[str, torch.Tensor]:
    """A start u ~ Uniform(-radius, radius) per unconstrained coordinate (from ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    dtype = model.gate_scale.dtype
    start = {}
    for name, prior in model.priors().items():
        shape = biject_to(prior.support).inverse_shape(prior.batch_shape + prior.event_shape)
        start[name] = (torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1) * radius
    return start


def optimise(potential: Potential, u: dict[str, torch.Tensor], steps: int):
    """``steps`` Adam steps (lr 0.05) down U from ``u``: the end point and U there."""
    u = {k: v.clone().requires_grad_() for k, v in u.items()}
    optimizer = torch.optim.Adam(u.values(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        potential(u).backward()
        optimizer.step()
    with torch.no_grad():
        return {k: v.detach() for k, v in u.items()}, float(potential(u))


def find_mode(model, potential: Potential, config: NutsConfig) -> dict[str, torch.Tensor]:
    """The lowest-U end point of ``init_restarts`` random starts, each optimised for
    ``init_steps`` Adam steps: a start inside the main posterior mode, so that chains do not
    stay in the minor modes a mixture's posterior has (an expert left as a wide background)."""
    ends = [
        optimise(
            potential,
            initial_params(model, config.seed * 1000 + r, config.init_radius),
            config.init_steps,
        )
        for r in range(config.init_restarts)
    ]
    best = min(ends, key=lambda end: end[1] if np.isfinite(end[1]) else np.inf)
    return best[0]


def chain_start(model, mode, config: NutsConfig, chain: int) -> dict[str, torch.Tensor]:
    """The start of chain ``chain``: the mode plus Uniform(-jitter, jitter) per coordinate, or a
    random start when there is no mode (``init_steps=0``)."""
    if mode is None:
        return initial_params(model, config.seed * 1000 + chain, config.init_radius)
    noise = initial_params(model, config.seed * 1000 + 500 + chain, 1.0)
    return {k: v + config.init_jitter * noise[k] for k, v in mode.items()}


class DrawStats:
    """``hook_fn`` of Pyro's MCMC: per kept draw, whether its trajectory diverged, its log
    density and the step size."""

    def __init__(self) -> None:
        self.diverging: list[bool] = []
        self.lp: list[float] = []
        self.step_size: list[float] = []
        self._divergences = 0

    def __call__(self, kernel, params, stage: str, i: int) -> None:
        if not stage.startswith("Sample"):
            return
        count = len(kernel._divergences)
        self.diverging.append(count > self._divergences)
        self._divergences = count
        self.lp.append(-float(kernel._potential_energy_last))
        self.step_size.append(float(kernel.step_size))


def compiled(potential: Potential, example: dict[str, torch.Tensor]) -> Potential:
    """``potential`` compiled by ``torch.jit.trace`` at ``example`` (the model's shapes and
    branches are fixed once it is built, so one trace serves every u); half the time per call."""
    names = list(example)

    def flat(*values: torch.Tensor) -> torch.Tensor:
        return potential(dict(zip(names, values, strict=True)))

    with distribution_checks_off(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit: still the fast path
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # prior constants, by design
        traced = torch.jit.trace(flat, tuple(example.values()), check_trace=False)
    return lambda u: traced(*[u[name] for name in names])


def make_potential(model, x, y, config: NutsConfig) -> Potential:
    """The collapsed potential (``fast``, compiled with ``jit``) or Pyro's traced one."""
    if not config.fast:
        return traced_potential(model, x, y, config.jit)
    potential = collapsed_potential(model, x, y)
    if config.jit:
        return compiled(potential, initial_params(model, config.seed, config.init_radius))
    return potential


def run_chain(
    model, potential: Potential, start: dict[str, torch.Tensor], config: NutsConfig, chain: int
) -> tuple[dict[str, torch.Tensor], dict]:
    """One NUTS chain from ``start`` with its own seed: constrained draws ``[samples, ...]`` per
    site and its per-draw statistics."""
    pyro.set_rng_seed(config.seed * 1000 + chain)
    transforms = site_transforms(model)
    kernel = NUTS(
        potential_fn=potential,
        target_accept_prob=config.target_accept,
        max_tree_depth=config.max_tree_depth,
        adapt_step_size=True,
        adapt_mass_matrix=True,
        full_mass=config.full_mass,
    )
    stats = DrawStats()
    mcmc = MCMC(
        kernel,
        num_samples=config.samples,
        warmup_steps=config.warmup,
        initial_params=start,
        transforms={name: t.inv for name, t in transforms.items()},  # Pyro's: theta -> u
        disable_progbar=config.progress is False,
        hook_fn=stats,
    )
    mcmc.run()
    draws = {k: v.detach() for k, v in mcmc.get_samples().items()}
    record = {
        "diverging": np.array(stats.diverging),
        "lp": np.array(stats.lp),
        "step_size": np.array(stats.step_size),
    }
    return draws, record


def run_nuts(model, x: torch.Tensor, y: torch.Tensor, config: NutsConfig | None = None):
    """NUTS on p(theta|x, y) with the gate summed out: ``config.chains`` chains one after
    another, each with its own seed, started around the mode :func:`find_mode` finds. Returns a
    :class:`Posterior` (``method="nuts"``; ``seconds`` counts the mode search too)."""
    config = config or NutsConfig()
    start = time.perf_counter()
    potential = make_potential(model, x, y, config)
    mode = find_mode(model, potential, config) if config.init_steps else None
    chains = [
        run_chain(model, potential, chain_start(model, mode, config, chain), config, chain)
        for chain in range(config.chains)
    ]
    draws = {name: torch.stack([c[0][name] for c in chains]) for name in chains[0][0]}
    stats = {name: np.stack([c[1][name] for c in chains]) for name in chains[0][1]}
    return Posterior(draws, stats, time.perf_counter() - start, "nuts")


# --- SVI -----------------------------------------------------------------------------------------
def svi_posterior(guide, num_draws: int = 400, seed: int = 0) -> Posterior:
    """``num_draws`` draws theta ~ q(theta) from a trained ``auto-normal`` guide, as one chain
    (``method="svi"``, no sample statistics)."""
    check_int("num_draws", num_draws)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        draws = [guide.draw() for _ in range(num_draws)]
    return Posterior({k: torch.stack([d[k] for d in draws])[None] for k in draws[0]}, method="svi")


# --- the discrete assignments --------------------------------------------------------------------
def discrete_assignments(model, posterior: Posterior, x, y, seed: int = 0) -> torch.Tensor:
    """c_n ~ p(c_n|x_n, y_n, theta) per draw, with Pyro's ``infer_discrete`` on the program
    conditioned on each draw: ``[chains, draws, N]`` integers."""
    flat = posterior.flat()
    num = next(iter(flat.values())).shape[0]
    if model.num_components == 1:  # one expert: nothing to infer
        return torch.zeros(posterior.num_chains, posterior.num_draws, len(x), dtype=torch.long)
    program = config_enumerate(model.model, "parallel")
    out = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for s in range(num):
            conditioned = poutine.condition(program, data={k: v[s] for k, v in flat.items()})
            sampler = infer_discrete(conditioned, first_available_dim=-2, temperature=1)
            out.append(poutine.trace(sampler).get_trace(x, y).nodes["cluster"]["value"])
    return torch.stack(out).reshape(posterior.num_chains, posterior.num_draws, -1)


# --- ArviZ ---------------------------------------------------------------------------------------
def arviz():
    """The ``arviz`` module, imported without its notice about a coming refactor."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")
        import arviz

    return arviz


SITE_DIMS = {
    "gate_weight": ["gate_expert", "gate_feature"],
    "gate_bias": ["gate_expert"],
    "expert_weight": ["expert", "input", "output"],
    "expert_intercept": ["expert"],
    "expert_bias": ["expert", "output_rest"],
    "expert_scale": ["expert", "output"],
}


def _label_dims(model) -> list[str]:
    return ["point", "output"] if model.task == "regression" and model.output_dim > 1 else ["point"]


def _labels(model, y: torch.Tensor) -> np.ndarray:
    """y as stored: ``[N]`` for classes and one regression output, else ``[N, M]``."""
    y = y.detach().cpu().numpy()
    return y[:, 0] if model.task == "regression" and model.output_dim == 1 else y


def _per_draw(posterior: Posterior, values: torch.Tensor) -> np.ndarray:
    """``[chains * draws, ...]`` -> ``[chains, draws, ...]`` as numpy."""
    return values.reshape(posterior.num_chains, posterior.num_draws, *values.shape[1:]).numpy()


def pointwise_log_likelihood(model, posterior: Posterior, x, y) -> np.ndarray:
    """log p(y_n|x_n, theta) with the gate summed out: ``[chains, draws, N]``."""
    with torch.no_grad():
        return _per_draw(posterior, model.pointwise_log_likelihood(posterior.flat(), x, y))


def posterior_predictive(model, posterior: Posterior, x, seed: int = 0) -> np.ndarray:
    """y_rep ~ p(y|x, theta) per draw: ``[chains, draws, N(, M)]``."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        y_rep = model.sample_predictive(posterior.flat(), x)
    if model.task == "regression" and model.output_dim == 1:
        y_rep = y_rep[..., 0]
    return _per_draw(posterior, y_rep)


def to_inference_data(model, posterior: Posterior, x: torch.Tensor, y: torch.Tensor, seed: int = 0):
    """The draws and what they imply as ``arviz.InferenceData`` (groups in the module docstring)."""
    az = arviz()

    dims = {name: SITE_DIMS[name] for name in posterior.draws}
    dims["label"] = _label_dims(model)
    dims["x"] = ["point", "input"]
    coords = {"expert": np.arange(model.num_components), "point": np.arange(len(x))}
    idata = az.from_dict(
        posterior={k: v.cpu().numpy() for k, v in posterior.draws.items()},
        sample_stats=posterior.sample_stats or None,
        log_likelihood={"label": pointwise_log_likelihood(model, posterior, x, y)},
        posterior_predictive={"label": posterior_predictive(model, posterior, x, seed)},
        observed_data={"label": _labels(model, y)},
        constant_data={"x": x.detach().cpu().numpy()},
        coords=coords,
        dims=dims,
        attrs={"inference": posterior.method, "sampling_seconds": posterior.seconds},
    )
    clusters = discrete_assignments(model, posterior, x, y, seed).cpu().numpy()
    with warnings.catch_warnings():  # a group of our own is not in ArviZ's schema
        warnings.filterwarnings("ignore", message=".*discrete_posterior.*")
        warnings.filterwarnings("ignore", message=".*dims 'chain' and 'draw'.*")
        idata.add_groups(
            {"discrete_posterior": {"cluster": clusters}},
            coords=coords,
            dims={"cluster": ["point"]},
        )
    return idata


# --- diagnostics ---------------------------------------------------------------------------------
def diagnostics(idata) -> dict[str, Any]:
    """Worst split R-hat, smallest bulk and tail ESS over the posterior's scalars, and the number
    of divergent transitions (0 without sample statistics)."""
    az = arviz()

    summary = az.summary(idata, kind="diagnostics")
    divergences = 0
    if "sample_stats" in idata.groups() and "diverging" in idata.sample_stats:
        divergences = int(idata.sample_stats["diverging"].sum())
    return {
        "max_rhat": float(summary["r_hat"].max()),
        "min_ess_bulk": float(summary["ess_bulk"].min()),
        "min_ess_tail": float(summary["ess_tail"].min()),
        "divergences": divergences,
    }


def modal_assignments(idata) -> np.ndarray:
    """The most frequent assignment of each point across all draws: ``[N]``."""
    clusters = idata.discrete_posterior["cluster"].values  # [chains, draws, N]
    flat = clusters.reshape(-1, clusters.shape[-1])
    k = int(flat.max()) + 1
    counts = np.stack([(flat == c).sum(0) for c in range(k)])
    return counts.argmax(0)
