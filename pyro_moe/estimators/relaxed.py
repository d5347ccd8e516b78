"""Relaxed one-hot gates: the distributions and the Pyro handler the relaxed estimators share.

The handler :class:`RelaxCluster` replaces the ``cluster`` site's ``Categorical(logits)`` in the
guide by a reparameterised relaxed one-hot vector w (``[..., K]``) and, in the model, by a density
that scores it; the model body is unchanged because it reads c through ``pyro_moe.gate.select``,
which accepts one-hot weights. Samples are drawn in log space (``ExpRelaxedCategorical``):

    g_k ~ Gumbel(0, 1),   y = log_softmax((logits + g) / tau),   w = exp(y)

Numerical care (tested in tests/test_numerics.py): Pyro's ``RelaxedOneHotCategorical`` scores w
through log(w), which underflows to -inf at low temperature (tau = 0.01 with logits +-50 gives a
non-finite log_prob for every sample), and ``RelaxedOneHotCategoricalStraightThrough`` scores a
replayed hard one-hot value as if it were the relaxed sample (log(0) again). Here the log-space
sample y travels with w (``w.log_value``) and densities are evaluated on y, never on log(w).

Value forms (``mode``):

* ``soft``: w = exp(y) (Concrete / Gumbel-softmax, Maddison et al. 2017, Jang et al. 2017);
* ``hard``: w = onehot(argmax y) + exp(y) - stop(exp(y)): exactly one-hot forward, relaxed
  gradient backward (straight-through Gumbel, Jang et al. 2017);
* ``rao``: forward as ``hard``; backward through the mean of ``num_samples`` relaxed samples
  softmax((logits + g_m) / tau) with g_m drawn from the Gumbels conditioned on the argmax and held
  fixed (detached) in the derivative (Gumbel-Rao, Paulus et al. 2020).

References:
    1. C. J. Maddison, A. Mnih, Y. W. Teh, "The Concrete Distribution", ICLR 2017.
    2. E. Jang, S. Gu, B. Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017.
    3. M. B. Paulus, C. J. Maddison, A. Krause, "Rao-Blackwellizing the Straight-Through
       Gumbel-Softmax Gradient Estimator", ICLR 2021 (arXiv 2020).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from pyro import distributions as dist
from pyro.poutine.messenger import Messenger
from torch.distributions import Categorical, constraints

from pyro_moe.errors import ConfigError
from pyro_moe.estimators.sampled import CLUSTER, Costs, SampledEstimator
from pyro_moe.estimators.temperature import Temperature
from pyro_moe.shapes import broadcast_shapes
from pyro_moe.validation import check_int

MODES = ("soft", "hard", "rao")


def log_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """log softmax(logits) as logits - logsumexp(logits): keeps the input's memory layout (the
    noise drawn with ``rand_like`` follows it) and is cheaper than ``log_softmax`` on the
    transposed views the guides produce."""
    return logits - logits.logsumexp(-1, keepdim=True)


def exp_concrete_log_prob(y: torch.Tensor, logits: torch.Tensor, tau: float) -> torch.Tensor:
    """log ExpConcrete(y | tau, a) for normalized logits a (Maddison et al. 2017, App. C):

    log (K-1)! + (K-1) log tau + sum_k [a_k - tau y_k - logsumexp_j (a_j - tau y_j)],

    ``ExpRelaxedCategorical.log_prob`` written out, without building the distribution."""
    k = logits.shape[-1]
    score = logits - tau * y
    score = (score - score.logsumexp(-1, keepdim=True)).sum(-1)
    return score + (math.lgamma(k) + (k - 1) * math.log(tau))


def gumbel_like(logits: torch.Tensor) -> torch.Tensor:
    u = torch.rand_like(logits).clamp(torch.finfo(logits.dtype).tiny, 1 - 1e-7)
    return -torch.log(-torch.log(u))


def one_hot(index: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    """``F.one_hot(index, k).to(dtype)`` by a scatter: ``F.one_hot`` checks its indices with a
    data-dependent branch, which ``torch.func.vmap`` (the vectorised harness) cannot trace."""
    out = torch.zeros(index.shape + (k,), dtype=dtype, device=index.device)
    return out.scatter(-1, index.unsqueeze(-1), 1.0)


def conditional_gumbels(logits: torch.Tensor, index: torch.Tensor, m: int) -> torch.Tensor:
    """``m`` draws of logits + Gumbel noise conditioned on argmax == ``index`` (Paulus et al.,
    App. B, via exponential races): ``[m, ..., K]``, computed in log space."""
    shape = (m,) + logits.shape
    # log E for E ~ Exp(1) is minus a standard Gumbel (out of place: vmap-safe)
    log_e = -gumbel_like(logits.new_empty(shape))
    log_z = torch.logsumexp(logits, -1, keepdim=True)
    top = one_hot(index, logits.shape[-1], torch.bool)
    log_e_top = (log_e * top).sum(-1, keepdim=True)
    top_value = log_z - log_e_top  # the max: Gumbel(logsumexp(logits))
    others = -torch.logaddexp(log_e - logits, log_e_top - log_z)
    return torch.where(top, top_value, others)


class RelaxedGate(dist.TorchDistribution):
    """Relaxed one-hot w with its log-space sample attached; ``log_prob`` is the ExpConcrete
    density of that log-space sample (``density=False``: zero, for the guide side of the
    analytic-KL estimators). ``normalized=True``: ``logits`` are already log-probabilities
    (a ``Categorical``'s ``.logits``), not normalised again."""

    arg_constraints: dict[str, Any] = {}
    support = constraints.simplex
    has_rsample = True

    def __init__(
        self,
        logits: torch.Tensor,
        temperature: float,
        mode: str = "soft",
        density: bool = True,
        num_samples: int = 1,
        normalized: bool = False,
    ) -> None:
        self.logits = logits if normalized else log_probabilities(logits)
        self.temperature, self.form, self.density, self.num_samples = (
            temperature,
            mode,
            density,
            num_samples,
        )
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=False)

    def expand(self, batch_shape, _instance=None) -> RelaxedGate:
        new = self._get_checked_instance(RelaxedGate, _instance)
        new.logits = self.logits.expand(torch.Size(batch_shape) + self.event_shape)  # normalized
        new.temperature, new.form, new.density, new.num_samples = (
            self.temperature,
            self.form,
            self.density,
            self.num_samples,
        )
        super(RelaxedGate, new).__init__(new.logits.shape[:-1], self.event_shape, False)
        return new

    def rsample(self, sample_shape=()) -> torch.Tensor:
        logits = self.logits.expand(torch.Size(sample_shape) + self.logits.shape)
        y = torch.log_softmax((logits + gumbel_like(logits)) / self.temperature, -1)
        soft = y.exp()
        if self.form == "soft":
            w = soft
        else:
            hard = one_hot(y.argmax(-1), y.shape[-1], y.dtype)
            if self.form == "rao":  # the conditional noise is held fixed in the derivative
                perturbed = conditional_gumbels(logits, y.argmax(-1), self.num_samples)
                noise = (perturbed - logits).detach()  # g_m = (logits + g_m) - logits
                soft = torch.softmax((logits + noise) / self.temperature, -1).mean(0)
            w = hard + (soft - soft.detach())
        w.log_value = y
        return w

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if not self.density:
            return value.new_zeros(broadcast_shapes(value.shape[:-1], self.batch_shape))
        log_value = getattr(value, "log_value", None)
        if log_value is None:  # a value from elsewhere: only safe away from the simplex corners
            log_value = value.clamp_min(torch.finfo(value.dtype).tiny).log()
        return exp_concrete_log_prob(log_value, self.logits, self.temperature)


class CategoricalKL(dist.TorchDistribution):
    """Scores any value by -KL(q || p) between two categoricals: put in the model's ``cluster``
    site, the ELBO's cluster terms become the analytic -KL (Jang et al.'s form)."""

    arg_constraints: dict[str, Any] = {}
    support = constraints.simplex
    has_rsample = True

    def __init__(
        self, prior_logits: torch.Tensor, posterior_logits: torch.Tensor, normalized: bool = False
    ) -> None:
        # normalized once (``normalized=True``: both are log-probabilities already) and kept
        # unexpanded: the KL is computed on the broadcast of the two, then expanded to the batch
        # shape (log_softmax of expanded copies cost more than the KL)
        if not normalized:
            prior_logits, posterior_logits = map(
                log_probabilities, (prior_logits, posterior_logits)
            )
        self.prior_logits, self.posterior_logits = prior_logits, posterior_logits
        shape = broadcast_shapes(prior_logits.shape, posterior_logits.shape)
        super().__init__(shape[:-1], shape[-1:], validate_args=False)

    def expand(self, batch_shape, _instance=None) -> CategoricalKL:
        new = self._get_checked_instance(CategoricalKL, _instance)
        new.prior_logits, new.posterior_logits = self.prior_logits, self.posterior_logits
        super(CategoricalKL, new).__init__(torch.Size(batch_shape), self.event_shape, False)
        return new

    def rsample(self, sample_shape=()) -> torch.Tensor:
        raise ConfigError("the model's relaxed `cluster` site must replay the guide's value")

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        q = self.posterior_logits
        kl = (q.exp() * (q - self.prior_logits)).sum(-1)
        shape = broadcast_shapes(value.shape[:-1], self.batch_shape, kl.shape)
        return -kl.expand(shape)


class GumbelArgmax(dist.TorchDistribution):
    """Categorical(logits) sampled by the Gumbel-max trick, c = argmax(logits + g); keeps the
    relaxed weight of the chosen component beta_c = softmax((logits + g) / tau)_c in ``stash``
    (for the ``question`` estimator). ``log_prob`` is the categorical's."""

    arg_constraints: dict[str, Any] = {}
    support = constraints.nonnegative_integer
    has_rsample = False

    def __init__(self, logits: torch.Tensor, temperature: float, stash: dict) -> None:
        self.logits = logits - logits.logsumexp(-1, keepdim=True)
        self.temperature, self.stash = temperature, stash
        super().__init__(logits.shape[:-1], torch.Size(), validate_args=False)

    def expand(self, batch_shape, _instance=None) -> GumbelArgmax:
        logits = self.logits.expand(torch.Size(batch_shape) + self.logits.shape[-1:])
        return GumbelArgmax(logits, self.temperature, self.stash)

    def sample(self, sample_shape=()) -> torch.Tensor:
        logits = self.logits.expand(torch.Size(sample_shape) + self.logits.shape)
        scores = logits + gumbel_like(logits)
        c = scores.argmax(-1)
        beta = torch.softmax(scores / self.temperature, -1)
        self.stash["beta"] = beta.gather(-1, c[..., None])[..., 0]
        return c

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return dist.Categorical(logits=self.logits).log_prob(value)


def categorical_logits(fn: Any, name: str = CLUSTER) -> torch.Tensor:
    """The site's log-probabilities log q(c = k): a ``Categorical``'s ``.logits`` (normalised
    when it was built), or any other distribution's ``.logits`` normalised here."""
    logits = getattr(fn, "logits", None)
    if logits is None:
        raise ConfigError(
            f"the `{name}` site must be a Categorical(logits=...); got {type(fn).__name__}"
        )
    return logits if isinstance(fn, Categorical) else log_probabilities(logits)


class RelaxCluster(Messenger):
    """Swap the distribution of the discrete sites an estimator acts on: ``make(logits, state)``
    builds the new one. ``sites``: the names (None: ``cluster`` and every latent site with a
    discrete support). Two instances share ``state`` (the guide's runs first and leaves its
    logits there): ``make`` gets ``state`` itself, or with ``per_site=True`` one dict per site
    (``state[name]``), so that several sites do not overwrite each other's entries."""

    def __init__(
        self, make, state: dict, sites: Sequence[str] | None = None, per_site: bool = False
    ) -> None:
        super().__init__()
        self.make, self.state, self.sites, self.per_site = make, state, sites, per_site

    def _acts_on(self, msg) -> bool:
        if self.sites is not None:
            return msg["name"] in self.sites
        support = getattr(msg["fn"], "support", None)
        discrete = not msg["is_observed"] and bool(getattr(support, "is_discrete", False))
        return discrete or msg["name"] == CLUSTER

    def _pyro_sample(self, msg) -> None:
        if not self._acts_on(msg):
            return
        if msg["is_observed"]:
            raise ConfigError(f"relaxed estimators need an unobserved `{msg['name']}` site")
        state = self.state.setdefault(msg["name"], {}) if self.per_site else self.state
        msg["fn"] = self.make(categorical_logits(msg["fn"], msg["name"]), state)


class TemperedEstimator(SampledEstimator):
    """A sampled estimator with a temperature tau on a schedule (:class:`Temperature`, a buffer:
    saved in checkpoints, moved with ``.to``), advanced after every optimisation step."""

    def __init__(
        self,
        *,
        num_particles: int = 1,
        max_plate_nesting: int = 1,
        temperature: float = 1.0,
        schedule: str = "constant",
        rate: float = 1e-4,
        tau_min: float = 0.5,
    ) -> None:
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        self.temperature = Temperature(temperature, schedule, rate, tau_min)

    def advance(self, step: int) -> None:
        self.temperature.advance(step)


class RelaxedEstimator(TemperedEstimator):
    """Base of the pathwise (reparameterised) relaxed estimators: value and surrogate are both
    mean_s sum_n f, with f computed on the relaxed gate."""

    unbiased_for = None
    uses_score = False
    needs_select = True
    mode = "soft"

    def guide_site(self, logits: torch.Tensor, state: dict) -> dist.TorchDistribution:
        state["posterior_logits"] = logits
        return RelaxedGate(logits, self.temperature(), self.mode, density=False, normalized=True)

    def model_site(self, logits: torch.Tensor, state: dict) -> dist.TorchDistribution:
        return CategoricalKL(logits, state["posterior_logits"], normalized=True)

    def handler(self):
        state: dict = {}
        guide_handler = RelaxCluster(self.guide_site, state, self.sites, per_site=True)
        model_handler = RelaxCluster(self.model_site, state, self.sites, per_site=True)
        return model_handler, guide_handler

    def objective(self, costs: Costs, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        value = costs.f.sum(-1).mean(-1)
        return value, value

    def extra_repr(self) -> str:
        return f"num_particles={self.num_particles}, mode={self.mode}"


def check_samples(num_samples: int) -> int:
    return check_int("num_samples", num_samples)


__all__ = [
    "MODES",
    "CategoricalKL",
    "GumbelArgmax",
    "RelaxCluster",
    "RelaxedEstimator",
    "RelaxedGate",
    "check_samples",
    "conditional_gumbels",
    "gumbel_like",
]
