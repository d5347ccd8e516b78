"""The classic mixture of experts (Jacobs et al. 1991), regression and classification.

Generative story, for each data point n (inputs x_n are given)::

    c_n ~ Categorical(softmax(g(x_n)))                 site "cluster"   (the gate)
    y_n | c_n = k ~ N(f_k(x_n), diag(s_k^2))           site "label"     (regression experts)
    y_n | c_n = k ~ Categorical(softmax(f_k(x_n)))     site "label"     (classification experts)

so that p(y|x) = sum_k p(c = k|x) p(y|x, c = k). The gate g is linear-softmax or an MLP, the
experts f_k are affine maps or MLPs (K of them, run together as one batched network); each
regression expert has its own noise scale s_k (Singh et al., sec. 4.1-4.2).

With the ``cluster`` site enumerated in the model (``enum`` and guide ``none``) the ELBO is exactly
log p(y|x); with q(c|x) = p(c|x) (guide ``gate``) it is the Jensen bound sum_k p(k|x) log p(y|x, k)
of a question on the Jensen bound for mixtures of experts; with a posterior network q(c|x, y) (guide
``posterior``) it is the ELBO log p(y|x) - KL(q(c|x,y) || p(c|x,y)).

Shapes under ``TraceEnum_ELBO`` (max_plate_nesting=1), N=600, K=3, M=1, as printed by
``poutine.trace(poutine.enum(config_enumerate(model.model), -2)).get_trace(x, y).format_shapes()``::

     Trace Shapes:
      Param Sites:
    ...
     Sample Sites:
         data dist     |
             value 600 |
      cluster dist   600 |
             value 3   1 |
        label dist 3 600 | 1
             value   600 | 1

References:
    1. R. A. Jacobs, M. I. Jordan, S. J. Nowlan, G. E. Hinton, "Adaptive Mixtures of Local
       Experts", Neural Computation 1991.
    2. G. Singh, A. Panda, A. Gajbhiye, "Mixture of Experts using Discrete VAE" (undated report).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_moe.base import PyroModel, check_num_components, data_plate, register_module
from pyro_moe.gate import select
from pyro_moe.nn import BatchedLinear, BatchedMLP, mlp
from pyro_moe.registry import MODELS
from pyro_moe.validation import check_choice, check_int, check_number

NETWORKS = ("linear", "mlp")


def make_experts(
    input_dim: int, output_dim: int, k: int, expert: str, hidden_dim: int, activation: str
) -> nn.Module:
    """K experts run as one batched network, ``[N, D] -> [N, K, M]``: affine maps
    (``expert="linear"``) or MLPs ``D - hidden - hidden - M``."""
    if expert == "linear":
        return BatchedLinear(input_dim, output_dim, k)
    return BatchedMLP([input_dim, hidden_dim, hidden_dim, output_dim], k, activation)


@torch.no_grad()
def init_experts_from_targets(model: nn.Module, y: torch.Tensor) -> None:
    """Data-dependent start for regression experts: noise scales s_k = std(y) / 4 and expert
    offsets at the (k + 1/2) / K quantiles of y. Experts that start apart, each explaining
    only part of the data, keep the gate from collapsing onto one expert early on (with the
    default init and an MLP gate, Bishop's problem collapses to a single expert). ``model`` has
    ``experts`` (:func:`make_experts`), ``raw_scale`` ``[K, M]``, ``num_components`` and
    ``min_scale``."""
    k = model.num_components
    scale = (0.25 * y.std(0)).clamp_min(2 * model.min_scale) - model.min_scale
    model.raw_scale.copy_((scale + torch.log(-torch.expm1(-scale))).expand(k, -1))  # softplus^-1
    levels = (torch.arange(k, dtype=y.dtype, device=y.device) + 0.5) / k
    experts = model.experts
    last = experts if isinstance(experts, BatchedLinear) else experts.layers[-1]
    last.bias.copy_(torch.quantile(y, levels, dim=0))  # [K, M]


@MODELS.register("moe")
class MixtureOfExperts(PyroModel):
    """Classic mixture of experts: softmax gate over K linear/MLP experts (regression, classes)."""

    pyro_name = "moe"
    default_guide = "posterior"
    exact_guide = "none"
    monitor = "valid_nll"
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
        num_components: int = 3,
        gate: str = "linear",
        expert: str = "linear",
        hidden_dim: int = 32,
        activation: str = "tanh",
        min_scale: float = 1e-3,
    ) -> None:
        super().__init__()
        k = check_num_components(num_components)
        check_choice("task", task, self.tasks)
        check_choice("gate", gate, NETWORKS)
        check_choice("expert", expert, NETWORKS)
        check_int("hidden_dim", hidden_dim)
        check_number("min_scale", min_scale)
        self.task, self.num_components = task, k
        self.input_dim, self.output_dim = input_dim, output_dim
        self.min_scale = min_scale
        self.gate = (
            nn.Linear(input_dim, k)
            if gate == "linear"
            else mlp([input_dim, hidden_dim, hidden_dim, k], activation)
        )
        self.experts = make_experts(input_dim, output_dim, k, expert, hidden_dim, activation)
        if task == "regression":  # per-expert noise scale s_k = min_scale + softplus(raw)
            self.raw_scale = nn.Parameter(torch.zeros(k, output_dim))

    @classmethod
    def from_data(cls, data, **options) -> MixtureOfExperts:
        """Build for ``data``; regression experts start from :meth:`init_from_targets`."""
        model = super().from_data(data, **options)
        if model.task == "regression":
            model.init_from_targets(data.train.y)
        return model

    def init_from_targets(self, y: torch.Tensor) -> None:
        """Regression experts start apart: :func:`init_experts_from_targets`."""
        init_experts_from_targets(self, y)

    # --- the networks -------------------------------------------------------------------------
    def gate_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised log p(c|x): ``[N, K]``."""
        return self.gate(x)

    def gate_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log p(c|x): ``[N, K]``."""
        return torch.log_softmax(self.gate_logits(x), -1)

    def expert_scale(self) -> torch.Tensor:
        """Regression noise scale per expert: ``[K, M]``."""
        return self.min_scale + F.softplus(self.raw_scale)

    def expert_likelihood(self, out: torch.Tensor, c: torch.Tensor) -> dist.Distribution:
        """p(y|x, c) from the experts' outputs ``out`` ``[N, K, M]`` and the gate value ``c``."""
        if self.task == "classification":
            return dist.Categorical(logits=select(out, c, event_dim=1))
        scale = select(self.expert_scale(), c, event_dim=1)
        return dist.Normal(select(out, c, event_dim=1), scale).to_event(1)

    # --- the Pyro program ---------------------------------------------------------------------
    def model(self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None):
        register_module(self.pyro_name, self)
        gate_logits = self.gate_logits(x)  # [N, K]
        out = self.experts(x)  # [N, K, M]
        with data_plate(x, num_data):
            c = pyro.sample("cluster", dist.Categorical(logits=gate_logits))
            return pyro.sample("label", self.expert_likelihood(out, c), obs=y)

    # --- closed forms used by metrics, plots and tests ----------------------------------------
    def component_log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(y_n|x_n, c = k) for every k: ``[N, K]``."""
        out = self.experts(x)
        if self.task == "classification":
            return torch.log_softmax(out, -1).gather(
                -1, y[:, None, None].expand(-1, out.shape[1], 1)
            )[..., 0]
        return dist.Normal(out, self.expert_scale()).log_prob(y[:, None, :]).sum(-1)

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Exact log p(y_n|x_n) = logsumexp_k [log p(k|x_n) + log p(y_n|x_n, k)]: ``[N]``."""
        log_gate = torch.log_softmax(self.gate_logits(x), -1)
        return torch.logsumexp(log_gate + self.component_log_likelihood(x, y), -1)

    def jensen_bound(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """sum_k p(k|x_n) log p(y_n|x_n, k) <= log p(y_n|x_n) (the question's bound): ``[N]``."""
        gate = torch.softmax(self.gate_logits(x), -1)
        return (gate * self.component_log_likelihood(x, y)).sum(-1)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predictive mean E[y|x] ``[N, M]`` (regression) or class probabilities ``[N, L]``."""
        return mix_expert_outputs(
            torch.log_softmax(self.gate_logits(x), -1), self.experts(x), self.task
        )

    def evaluate(self, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, float]:
        """Mean exact NLL per point, and MSE of the predictive mean or classification accuracy."""
        return evaluate_experts(self, x, y)


def mix_expert_outputs(gate_log_probs: torch.Tensor, outputs: torch.Tensor, task: str):
    """sum_c p(c|x) mean_c(x) ``[N, M]`` (regression), or sum_c p(c|x) softmax(logits_c(x))
    ``[N, L]`` (classification), from gate log-probabilities ``[N, K]`` and expert outputs
    ``[N, K, M or L]``."""
    if task == "classification":
        outputs = torch.softmax(outputs, -1)
    return (gate_log_probs.exp()[..., None] * outputs).sum(-2)


def evaluate_experts(model, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, float]:
    """Mean NLL of ``model.log_likelihood`` per point, and MSE of ``model.predict`` (regression)
    or its accuracy (classification): the metrics every mixture-of-experts model reports."""
    from pyro_moe import metrics

    with torch.no_grad():
        result = {"nll": -model.log_likelihood(x, y).mean().item()}
        pred = model.predict(x)
        if model.task == "classification":
            result["accuracy"] = metrics.accuracy(pred, y)
        else:
            result["mse"] = metrics.mse(pred, y)
    return result
