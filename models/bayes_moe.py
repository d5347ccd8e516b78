"""A Bayesian mixture of experts: priors on every weight, the gate summed out; NUTS or SVI.

Generative story, with inputs x_n given (D input dims, M outputs or L classes, K experts)::

    W_g[k] ~ N(0, gate_scale^2 I)  (k < K)                  site "gate_weight" [K-1, P]
    b_g[k] ~ N(0, gate_scale^2)    (k < K)                  site "gate_bias" [K-1]
    logits_n = (phi(x_n) W_g^T + b_g, 0)                    the last expert's logit fixed at 0
    W_k ~ N(0, weight_scale^2 I)                            site "expert_weight" [K, D, M]
    a_(1) < ... < a_(K): the order statistics of K draws
        from N(0, weight_scale^2)                           site "expert_intercept" [K]
    b_k ~ N(0, weight_scale^2 I)  (outputs 2..M)            site "expert_bias" [K, M-1], M > 1
    s_k ~ HalfNormal(noise_scale)                           site "expert_scale" [K, M] (regression)
    c_n ~ Categorical(softmax(logits_n))                    site "cluster" [N]   (the gate)
    y_n | c_n = k ~ N(x_n W_k + (a_k, b_k), diag(s_k^2))    site "label" [N, M]  (regression)
    y_n | c_n = k ~ Categorical(softmax(x_n W_k + (a_k, b_k)))   site "label" [N] (classification)

with gate features phi(x) = (x, x^2, ..., x^p) taken elementwise (``gate_degree`` p; P = D p; p = 1
is the linear gate). The first output's intercepts are ordered across experts, which removes the
K! relabelings of the experts from the posterior (label switching) without changing p(y|x): the
order statistics of K iid N(0, s^2) have density K! prod_k N(a_k; 0, s^2) on a_1 < ... < a_K.
Fixing one gate logit at 0 removes the softmax's shift invariance.

The marginal likelihood of one point, the gate summed out, is

    log p(y_n | x_n, theta) = logsumexp_k [log softmax(logits_n)_k + log p(y_n | x_n, c = k, theta)]

(:meth:`BayesianMixtureOfExperts.pointwise_log_likelihood`, vectorised over posterior draws of
theta); it is what NUTS's potential energy sums (:mod:`pyro_moe.bayes`) and what ArviZ's LOO and
WAIC read. With ``enum`` and the ``auto-normal`` guide (a mean-field Normal on the global sites,
:mod:`pyro_moe.guides.bayes_moe`) the same program trains by SVI through the library's trainer.

Shapes under ``TraceEnum_ELBO`` (max_plate_nesting=1), N=60, D=M=1, K=2, as printed by
``poutine.trace(poutine.enum(config_enumerate(model.model), -2)).get_trace(x, y).format_shapes()``::

          Trace Shapes:
           Param Sites:
          Sample Sites:
      gate_weight dist       | 1 1
                 value       | 1 1
        gate_bias dist       | 1
                 value       | 1
    expert_weight dist       | 2 1 1
                 value       | 2 1 1
 expert_intercept dist       | 2
                 value       | 2
     expert_scale dist       | 2 1
                 value       | 2 1
             data dist       |
                 value    60 |
          cluster dist    60 |
                 value 2   1 |
            label dist 2 60 | 1
                 value    60 | 1

References:
    1. R. A. Jacobs, M. I. Jordan, S. J. Nowlan, G. E. Hinton, "Adaptive Mixtures of Local
       Experts", Neural Computation 1991.
    2. M. Hoffman, A. Gelman, "The No-U-Turn Sampler: Adaptively Setting Path Lengths in
       Hamiltonian Monte Carlo", JMLR 2014.
    3. M. Betancourt, "Identifying Bayesian Mixture Models", Stan case study, 2017 (ordered
       components against label switching).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from pyro_moe.base import PyroModel, check_num_components, data_plate
from pyro_moe.gate import select
from pyro_moe.registry import MODELS
from pyro_moe.validation import check_bool, check_int, check_number

Draws = Mapping[str, torch.Tensor]


class OrderedNormal(dist.TorchDistribution):
    """The order statistics of ``size`` iid N(loc, scale^2): density
    size! prod_k N(v_k; loc, scale^2) on v_1 < ... < v_size (support ``ordered_vector``)."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.ordered_vector

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, size: int, validate_args=None):
        self.loc, self.scale, self.size = loc, scale, size
        batch_shape = torch.broadcast_shapes(loc.shape, scale.shape)
        super().__init__(batch_shape, torch.Size([size]), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape)
        return OrderedNormal(self.loc.expand(shape), self.scale.expand(shape), self.size)

    def sample(self, sample_shape=()):
        base = dist.Normal(self.loc[..., None], self.scale[..., None])
        shape = torch.Size(sample_shape) + self.batch_shape + self.event_shape
        with torch.no_grad():
            return base.expand(shape).sample().sort(-1).values

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        base = dist.Normal(self.loc[..., None], self.scale[..., None]).log_prob(value).sum(-1)
        return base + math.lgamma(self.size + 1)


@MODELS.register("bayes-moe")
class BayesianMixtureOfExperts(PyroModel):
    """Bayesian mixture of experts: priors on gate/expert weights and noise, the gate summed out."""

    pyro_name = "bayes_moe"
    default_guide = "auto-normal"
    exact_guide = "auto-normal"
    monitor = "valid_loss"
    tasks = ("regression", "classification")
    smoke_spec = {
        "data": "sign-flip",
        "data_options": {"n": 60},
        "model_options": {"num_components": 2},
        "estimator": "enum",
    }

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        task: str = "regression",
        *,
        num_components: int = 2,
        gate_degree: int = 1,
        gate_scale: float = 3.0,
        weight_scale: float = 2.0,
        noise_scale: float = 1.0,
        ordered: bool = True,
    ) -> None:
        super().__init__()
        k = check_num_components(num_components)
        check_int("gate_degree", gate_degree)
        for name, value in (("gate_scale", gate_scale), ("weight_scale", weight_scale)):
            check_number(name, value)
        check_number("noise_scale", noise_scale)
        check_bool("ordered", ordered)
        if task not in self.tasks:
            raise ValueError(f"task {task!r}; known: {', '.join(self.tasks)}")
        self.task, self.num_components, self.gate_degree = task, k, gate_degree
        self.input_dim, self.output_dim, self.ordered = input_dim, output_dim, ordered
        # the prior scales as buffers: they follow .to(device) and fix the model's dtype
        self.register_buffer("gate_scale", torch.tensor(float(gate_scale)))
        self.register_buffer("weight_scale", torch.tensor(float(weight_scale)))
        self.register_buffer("noise_scale", torch.tensor(float(noise_scale)))

    # --- the priors ---------------------------------------------------------------------------
    @property
    def gate_dim(self) -> int:
        """P = D * gate_degree gate features."""
        return self.input_dim * self.gate_degree

    def priors(self) -> dict[str, dist.Distribution]:
        """The global sites and their priors, in sampling order (see the module docstring)."""
        k, d, m = self.num_components, self.input_dim, self.output_dim
        g, w = self.gate_scale, self.weight_scale
        priors: dict[str, dist.Distribution] = {}
        if k > 1:
            priors["gate_weight"] = dist.Normal(0 * g, g).expand([k - 1, self.gate_dim]).to_event(2)
            priors["gate_bias"] = dist.Normal(0 * g, g).expand([k - 1]).to_event(1)
        priors["expert_weight"] = dist.Normal(0 * w, w).expand([k, d, m]).to_event(3)
        if self.ordered and k > 1:
            priors["expert_intercept"] = OrderedNormal(0 * w, w, k)
        else:
            priors["expert_intercept"] = dist.Normal(0 * w, w).expand([k]).to_event(1)
        if m > 1:
            priors["expert_bias"] = dist.Normal(0 * w, w).expand([k, m - 1]).to_event(2)
        if self.task == "regression":
            priors["expert_scale"] = dist.HalfNormal(self.noise_scale).expand([k, m]).to_event(2)
        return priors

    def log_prior(self, theta: Draws) -> torch.Tensor:
        """log p(theta), summed over the global sites: ``[S]`` for draws with a leading dim."""
        return sum(prior.log_prob(theta[name]) for name, prior in self.priors().items())

    # --- the networks, for one theta or a batch of draws [S, ...] -----------------------------
    def gate_features(self, x: torch.Tensor) -> torch.Tensor:
        """phi(x) = (x, x^2, ..., x^p): ``[N, P]``."""
        return torch.cat([x**power for power in range(1, self.gate_degree + 1)], -1)

    def gate_logits(self, theta: Draws, x: torch.Tensor) -> torch.Tensor:
        """Gate logits with the last expert's fixed at 0: ``[..., N, K]``."""
        if self.num_components == 1:
            batch = theta["expert_intercept"].shape[:-1]  # the draws' dims
            return x.new_zeros(batch + x.shape[:1] + (1,))
        weight, bias = theta["gate_weight"], theta["gate_bias"]  # [..., K-1, P], [..., K-1]
        free = torch.einsum("np,...kp->...nk", self.gate_features(x), weight) + bias[..., None, :]
        return torch.cat([free, torch.zeros_like(free[..., :1])], -1)

    def expert_bias_vector(self, theta: Draws) -> torch.Tensor:
        """(a_k, b_k) per expert: ``[..., K, M]``."""
        intercept = theta["expert_intercept"][..., None]
        if self.output_dim == 1:
            return intercept
        return torch.cat([intercept, theta["expert_bias"]], -1)

    def expert_outputs(self, theta: Draws, x: torch.Tensor) -> torch.Tensor:
        """x W_k + (a_k, b_k): means (regression) or class logits: ``[..., N, K, M]``."""
        out = torch.einsum("nd,...kdm->...nkm", x, theta["expert_weight"])
        return out + self.expert_bias_vector(theta)[..., None, :, :]

    def expert_likelihood(self, theta: Draws, out: torch.Tensor, c: torch.Tensor):
        """p(y|x, c, theta) from the experts' outputs ``[N, K, M]`` and the gate value ``c``."""
        if self.task == "classification":
            return dist.Categorical(logits=select(out, c, event_dim=1))
        scale = select(theta["expert_scale"], c, event_dim=1)
        return dist.Normal(select(out, c, event_dim=1), scale).to_event(1)

    # --- the Pyro program ---------------------------------------------------------------------
    def sample_globals(self) -> dict[str, torch.Tensor]:
        """theta ~ p(theta): one ``pyro.sample`` per global site."""
        return {name: pyro.sample(name, prior) for name, prior in self.priors().items()}

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None):
        theta = self.sample_globals()
        gate_logits = self.gate_logits(theta, x)  # [N, K]
        out = self.expert_outputs(theta, x)  # [N, K, M]
        with data_plate(x, num_data):
            c = pyro.sample("cluster", dist.Categorical(logits=gate_logits))
            return pyro.sample("label", self.expert_likelihood(theta, out, c), obs=y)

    # --- closed forms over posterior draws ----------------------------------------------------
    def component_log_likelihood(self, theta: Draws, x: torch.Tensor, y: torch.Tensor):
        """log p(y_n|x_n, c = k, theta) for every k: ``[..., N, K]``."""
        out = self.expert_outputs(theta, x)  # [..., N, K, M]
        if self.task == "classification":
            log_probs = torch.log_softmax(out, -1)
            index = y[:, None, None].expand(*out.shape[:-1], 1)
            return log_probs.gather(-1, index)[..., 0]
        scale = theta["expert_scale"][..., None, :, :]  # [..., 1, K, M]
        return dist.Normal(out, scale).log_prob(y[:, None, :]).sum(-1)

    def joint_log_components(self, theta: Draws, x: torch.Tensor, y: torch.Tensor):
        """log p(c_n = k|x_n, theta) + log p(y_n|x_n, c_n = k, theta): ``[..., N, K]``."""
        log_gate = torch.log_softmax(self.gate_logits(theta, x), -1)
        return log_gate + self.component_log_likelihood(theta, x, y)

    def pointwise_log_likelihood(self, theta: Draws, x: torch.Tensor, y: torch.Tensor):
        """log p(y_n|x_n, theta) = logsumexp_k of :meth:`joint_log_components`: ``[..., N]``."""
        return torch.logsumexp(self.joint_log_components(theta, x, y), -1)

    def log_joint(self, theta: Draws, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(theta) + sum_n log p(y_n|x_n, theta): the collapsed log density NUTS targets."""
        return self.log_prior(theta) + self.pointwise_log_likelihood(theta, x, y).sum(-1)

    def sample_predictive(self, theta: Draws, x: torch.Tensor) -> torch.Tensor:
        """y_rep ~ p(y|x, theta) per draw (c drawn from the gate, y from its expert):
        ``[S, N, M]`` (regression) or ``[S, N]`` (classes)."""
        c = dist.Categorical(logits=self.gate_logits(theta, x)).sample()  # [S, N]
        out = self.expert_outputs(theta, x)  # [S, N, K, M]
        index = c[..., None, None].expand(*c.shape, 1, out.shape[-1])
        chosen = out.gather(-2, index)[..., 0, :]  # [S, N, M]
        if self.task == "classification":
            return dist.Categorical(logits=chosen).sample()
        scale = theta["expert_scale"][..., None, :, :].expand_as(out).gather(-2, index)[..., 0, :]
        return dist.Normal(chosen, scale).sample()

    def predict_draws(self, theta: Draws, x: torch.Tensor) -> torch.Tensor:
        """E[y|x, theta] (regression) or class probabilities, per draw: ``[S, N, M or L]``."""
        gate = torch.softmax(self.gate_logits(theta, x), -1)[..., None]  # [S, N, K, 1]
        out = self.expert_outputs(theta, x)
        if self.task == "classification":
            out = torch.softmax(out, -1)
        return (gate * out).sum(-2)
