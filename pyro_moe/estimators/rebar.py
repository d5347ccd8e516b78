"""``rebar``: the concrete relaxation as a control variate for the score function, tuned online.

For a gate b ~ q(b) = Categorical(softmax(theta)) (per cell, for a point's C cells) and the cost
f = log p - log q, draw z = theta + g (g Gumbel), b = argmax z, and z~ ~ p(z | b) (the Gumbels
conditioned on the argmax, reparameterised with fresh noise). With a control variate
c(z) = eta f(sigma_lambda(z)), sigma_lambda(z) = softmax(z / lambda), i.e. the model run at a
relaxed one-hot gate (the log-densities of ``cluster`` scored linearly, w . log p), the estimate
of the gradient with respect to the logits theta is (Tucker et al. 2017, Eq. 6)

    g_theta = [f(b) - c(z~)] grad_theta log q(b) + grad_theta c(z) - grad_theta c(z~),

unbiased because E[c(z~) grad log q(b) + grad c(z~)] = grad E_b E_{z~|b}[c(z~)] = grad E_z[c(z)].
The estimator back-propagates g_theta from the logits into the guide's network, and grad f(b) (the
model at the discrete draw) into every parameter:

    value = mean_s sum_n f(b),
    surrogate = mean_s [ sum_n f(b) + sum stop(g_theta) theta + r sum_n (lq(b) - stop(lq(b))) ],

with lq = log q and r the ``data`` plate's scale: the last term cancels the mean-zero
-r grad log q(b) inside grad f(b), as Pyro's ``TraceGraph_ELBO`` does, so that g_theta is the
whole gradient at the logits.

The scale eta and the temperature lambda (and, in ``relax``, a network) are the control
variate's parameters phi. Since E[g_theta] does not depend on phi, minimising the variance is
minimising E||g_theta||^2, whose gradient d/dphi ||g_theta||^2 is computed by differentiating
g_theta (second derivatives through the model). In training mode each :meth:`loss` computes that
gradient; :meth:`advance` (after the trainer's step) applies it with the estimator's own Adam
optimiser, whose state is saved in ``state_dict`` (``get_extra_state``). The returned loss does
not depend on phi, so the trainer's optimiser never moves it.

The model must read the gate through :func:`pyro_moe.gate.select` (it runs at relaxed one-hot
points); per data point it is run at 3 S points (the draw, z and z~ for each of S samples).
Unbiased for the ELBO gradient.

References:
    1. G. Tucker, A. Mnih, C. J. Maddison, D. Lawson, J. Sohl-Dickstein, "REBAR: Low-variance,
       unbiased gradient estimates for discrete latent variable models", NeurIPS 2017.
    2. W. Grathwohl, D. Choi, Y. Wu, G. Roeder, D. Duvenaud, "Backpropagation through the Void:
       Optimizing control variates for black-box gradient estimation", ICLR 2018 (categorical
       REBAR/RELAX, App. B).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from pyro import distributions as dist
from torch import nn
from torch.distributions import constraints

from pyro_moe.errors import ConfigError
from pyro_moe.estimators.points import PointCosts
from pyro_moe.estimators.relaxed import (
    RelaxCluster,
    conditional_gumbels,
    gumbel_like,
    one_hot,
)
from pyro_moe.estimators.sampled import SampledEstimator, point_costs, run_traces
from pyro_moe.registry import ESTIMATORS


class LinearScored(dist.TorchDistribution):
    """A categorical scoring a (relaxed) one-hot w by w . log softmax(logits) (the categorical's
    log-probability at a one-hot w). The model's ``cluster`` site replays the guide's value."""

    arg_constraints: dict[str, Any] = {}
    support = constraints.simplex

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=False)

    def expand(self, batch_shape, _instance=None) -> LinearScored:
        return LinearScored(self.logits.expand(torch.Size(batch_shape) + self.event_shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return (value * self.logits.log_softmax(-1)).sum(-1)


class RebarGate(LinearScored):
    """The guide's gate for REBAR: along the particles dim, [onehot(b); sigma(z); sigma(z~)] for
    S samples; everything that depends on the logits goes through ``state["logits"]``."""

    has_rsample = True

    def __init__(self, logits: torch.Tensor, temperature: torch.Tensor, state: dict) -> None:
        super().__init__(logits)
        self.temperature, self.state = temperature, state

    def expand(self, batch_shape, _instance=None) -> RebarGate:
        logits = self.logits.expand(torch.Size(batch_shape) + self.event_shape)
        return RebarGate(logits, self.temperature, self.state)

    def rsample(self, sample_shape=()) -> torch.Tensor:
        theta = self.logits.log_softmax(-1)  # [E, 3S, *cells, N, K]
        samples = theta.shape[1] // 3
        theta = theta[:, :samples]  # every sample's own copy of the logits
        z = theta + gumbel_like(theta)
        b = z.argmax(-1)
        hard = one_hot(b, theta.shape[-1], theta.dtype)
        z_tilde = conditional_gumbels(theta, b, 1)[0]
        lam = self.temperature
        self.state.update(logits=theta, hard=hard, z=z, z_tilde=z_tilde)
        self.scoring = torch.cat([theta] * 3, 1)
        return torch.cat([hard, (z / lam).softmax(-1), (z_tilde / lam).softmax(-1)], 1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return (value * self.scoring).sum(-1)


def _check_positive(name: str, value: float) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


@ESTIMATORS.register("rebar")
class Rebar(SampledEstimator):
    """Score function, concrete relaxation as control variate, tuned online (Tucker et al. 2017).

    The scale eta and temperature lambda follow the variance gradient with the estimator's own
    optimiser (see the module docstring)."""

    name = "rebar"
    uses_score = False
    needs_select = True
    # the gradient estimate is formed with torch.autograd.grad inside the loss
    vectorisable = False

    def __init__(
        self,
        *,
        num_particles: int = 1,
        max_plate_nesting: int = 1,
        temperature: float = 0.5,
        scale: float = 1.0,
        lr: float = 0.01,
    ) -> None:
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        temperature = _check_positive("temperature", temperature)
        self.lr = _check_positive("lr", lr)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending: list[torch.Tensor | None] | None = None

    # --- the control variate ------------------------------------------------------------------
    def control_parameters(self) -> list[nn.Parameter]:
        return [self.log_temperature, self.scale]

    def learned_terms(self, z: torch.Tensor, z_tilde: torch.Tensor, costs: PointCosts) -> tuple:
        """An extra term of the control variate at z and at z~, each per point ``[E, S, N]``
        (REBAR: none)."""
        return 0.0, 0.0

    def control_variates(self, f_z, f_zt, costs: PointCosts) -> tuple:
        """c(z) = eta f(sigma_lambda(z)) + learned term, at z and at z~."""
        t_z, t_zt = self.learned_terms(costs.state["z"], costs.state["z_tilde"], costs)
        return self.scale * f_z + t_z, self.scale * f_zt + t_zt

    # --- the run --------------------------------------------------------------------------------
    def guide_site(self, logits: torch.Tensor, state: dict) -> dist.TorchDistribution:
        if "gate" in state:
            raise ConfigError(f"estimator {self.name!r} acts on one discrete site of the guide")
        state["gate"] = RebarGate(logits, self.log_temperature.exp(), state)
        return state["gate"]

    def model_site(self, logits: torch.Tensor, state: dict) -> dist.TorchDistribution:
        return LinearScored(logits)

    def costs(self, model, guide, num_estimates: int, *args: Any, **kwargs: Any) -> PointCosts:
        state: dict = {}
        handlers = (
            RelaxCluster(self.model_site, state, self.sites),
            RelaxCluster(self.guide_site, state, self.sites),
        )
        nesting = self.max_plate_nesting
        model_trace, guide_trace = run_traces(
            model, guide, args, kwargs, num_estimates, 3 * self.num_particles, nesting, handlers
        )
        if "logits" not in state:
            raise ConfigError(f"estimator {self.name!r} needs a Categorical site in the guide")
        costs = point_costs(
            model_trace, guide_trace, nesting, self.sites, score=False, plate=self.data_plate
        )
        return PointCosts(costs.f, costs.logq, costs.scale, guide_trace, model_trace, state)

    def objective(self, costs: PointCosts, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        s, st = self.num_particles, costs.state
        f_b, f_z, f_zt = costs.f[:, :s], costs.f[:, s : 2 * s], costs.f[:, 2 * s :]  # [E, S, N]
        value = f_b.sum(-1).mean(-1)
        if not torch.is_grad_enabled():
            return value, value
        g = self.logit_gradient(f_b, f_z, f_zt, costs)  # [E, S, *cells, N, K]
        if self.training:
            self._pending = self.variance_gradient(g)
        theta, hard = st["logits"], st["hard"]
        score = (g.detach() * theta).flatten(1).sum(-1) / s
        # cancel f(b)'s own -r grad log q(b) (mean zero): g_theta is then the whole logit gradient
        logq = (hard * theta).flatten(1).sum(-1) / s
        return value, value + score + costs.scale * (logq - logq.detach())

    def logit_gradient(self, f_b, f_z, f_zt, costs: PointCosts) -> torch.Tensor:
        """g_theta per sample (see the module docstring), differentiable in phi."""
        st = costs.state
        theta, hard = st["logits"], st["hard"]
        c_z, c_zt = self.control_variates(f_z, f_zt, costs)
        (h,) = torch.autograd.grad(
            (c_z - c_zt).sum(), theta, create_graph=self.training, retain_graph=True
        )
        cells = theta.dim() - 4  # [E, S, *cells, N, K]
        signal = (f_b.detach() - c_zt).reshape(f_b.shape[:2] + (1,) * cells + f_b.shape[2:])
        dlogq = (hard - theta.exp()).detach()
        return signal[..., None] * dlogq + h

    def variance_gradient(self, g: torch.Tensor) -> list[torch.Tensor | None]:
        """d/dphi of mean_e ||mean_s g_theta||^2 (each estimate's gradient at the logits)."""
        per_estimate = g.mean(1).flatten(1)
        variance = per_estimate.pow(2).sum(-1).mean()
        params = self.control_parameters()
        grads = torch.autograd.grad(variance, params, retain_graph=True, allow_unused=True)
        return [None if x is None else x.detach() for x in grads]

    # --- the control variate's own optimiser ----------------------------------------------------
    def own_optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(self.control_parameters(), lr=self.lr)
        return self.optimizer

    def advance(self, step: int) -> None:
        """Apply the variance gradient of the last :meth:`loss` with the own optimiser."""
        if self._pending is None:
            return
        optimizer = self.own_optimizer()
        for p, grad in zip(self.control_parameters(), self._pending, strict=True):
            p.grad = grad
        optimizer.step()
        for p in self.control_parameters():
            p.grad = None
        self._pending = None

    def get_extra_state(self) -> dict[str, Any]:
        # a copy: the optimiser's state dict holds its live moment tensors
        optimizer = None if self.optimizer is None else copy.deepcopy(self.optimizer.state_dict())
        return {"optimizer": optimizer}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("optimizer") is not None:
            self.own_optimizer().load_state_dict(state["optimizer"])

    def extra_repr(self) -> str:
        tau, eta = self.log_temperature.detach().exp().item(), self.scale.detach().item()
        return f"num_particles={self.num_particles}, temperature={tau:.3g}, scale={eta:.3g}"
