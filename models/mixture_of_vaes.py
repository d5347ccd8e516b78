"""A mixture of VAE experts under a manager network, flat and hierarchical.

E experts, each a Gaussian VAE with its own encoder and decoder, held in one set of tensors
(:class:`~pyro_moe.nn.BatchedMLP`: every expert runs in the same ``einsum``, no Python loop over
experts), and a manager network p_i(x) = softmax(m(x))_i that routes an image to an expert
(Jacobs, Jordan, Nowlan & Hinton 1991 with x -> x instead of x -> y; Hinton's lecture, and the
blog post "Mixture of Variational Autoencoders - a Fusion Between MoE and VAE").

Generative story of the flat model (``mixture-of-vaes``), for each data point n::

    c_n ~ Categorical(1/K, ..., 1/K)                          site "cluster"      [N]
    z_n ~ N(0, I_L)                                           site "latent"       [N, L]
    x_n | z_n, c_n ~ N(f_{c_n}(z_n), s^2 I_D)                 site "obs"          [N, D]

with f_k = sigmoid(decoder_k(.)) and s = ``decoder_std``. Guide (``mixture-of-vaes``)::

    q(c_n | x_n) = Categorical(softmax(m(x_n)))               the manager
    q(z_n | x_n, c_n) = N(mu_{c_n}(x_n), diag(sigma_{c_n}(x_n)^2))   expert c_n's encoder

so the ELBO of one point, with ELBO_c(x) = E_q(z|x,c)[log p(x|z,c) + log p(z) - log q(z|x,c)], is

    ELBO(x) = sum_c q(c|x) [ ELBO_c(x) + log p(c) - log q(c|x) ].

``enum`` computes the sum over c exactly (``TraceEnum_ELBO`` with the guide's ``cluster`` site
enumerated, one z sample per expert); ``reinforce``, ``rloo``, ``gumbel``, ... sample c from the
manager. With ``balance`` = lambda > 0 the model adds the factor

    log f = -lambda * B * Var_k( sum_{n in batch} q(c_n = k | x_n) )      site "balance"

(population variance over the K experts of the batch importance, times the batch size B, and the
data plate's scale num_data / B when the batch is a minibatch), so that per data point the
objective is the post's loss plus the entropy and prior terms of the ELBO. Shapes under ``enum``
(``--print-shapes``-style, max_plate_nesting = 1, batch N, latent L, input D)::

    site      guide shape   model shape
    cluster   [K, 1]        [K, 1]          (enumerated at dim -2)
    latent    [K, N, L]     [K, N, L]
    obs                     [K, N, D]

The post's own loss (:meth:`MixtureOfVAEs.post_loss`, trained with :class:`PostLoss`) drops the
entropy and prior terms and uses the closed-form KL:

    loss = (1/B) sum_n sum_k p_k(x_n) [ -log N(x_n | f_k(z_nk), s^2) + KL(q_k(z|x_n) || N(0, I)) ]
           + lambda * Var_k( sum_n p_k(x_n) )

with the post's settings as defaults: K = 10 experts, latent 10, one hidden layer of 128 sigmoid
units in manager, encoders and decoders, s = 0.5, lambda = 0.1 (batch 100, Adam lr 1e-3 are the
training options of the benchmark and notebook).

The hierarchical model (option ``num_subcomponents`` = K2 > 1) makes each expert a mixture of K2
VAEs under a second-level manager, E = K x K2 experts in all::

    c_n ~ Categorical(1/K)                 site "cluster"       guide: softmax(m(x))
    s_n ~ Categorical(1/K2)                site "subcluster"    guide: softmax(m2_{c_n}(x))
    z_n ~ N(0, I_L),   x_n ~ N(f_{c_n K2 + s_n}(z_n), s^2 I_D)

``enum`` sums both levels exactly: ELBO(x) = sum_{c,s} q(c|x) q(s|x,c) [ELBO_{c,s}(x) + log p(c)
+ log p(s) - log q(c|x) - log q(s|x,c)]. Shapes under ``enum``::

    site        guide shape    model shape
    cluster     [K, 1]         [K, 1]            (dim -2)
    subcluster  [K2, 1, 1]     [K2, 1, 1]        (dim -3)
    latent      [K2, K, N, L]  [K2, K, N, L]
    obs                        [K2, K, N, D]

References:
    1. R. A. Jacobs, M. I. Jordan, S. J. Nowlan, G. E. Hinton, "Adaptive Mixtures of Local
       Experts", Neural Computation 1991.
    2. D. P. Kingma, M. Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
    3. N. Shazeer et al., "Outrageously Large Neural Networks: The Sparsely-Gated
       Mixture-of-Experts Layer", ICLR 2017 (batch importance balanced, there by its squared
       coefficient of variation).
    4. Y. Zeldes, "Mixture of Variational Autoencoders - a Fusion Between MoE and VAE", blog
       post (Another Datum), 2018.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro_moe.models.vae import parse_sizes

from pyro_moe.base import PyroGuide, PyroModel, check_num_components, data_plate, register_module
from pyro_moe.errors import ConfigError
from pyro_moe.estimators.base import Estimator
from pyro_moe.gate import select
from pyro_moe.nn import BatchedMLP, mlp
from pyro_moe.registry import ESTIMATORS, GUIDES, MODELS
from pyro_moe.validation import check_int, check_number

#: the encoders' variance floor of the post (var = 1e-5 + exp(.))
MIN_VARIANCE = 1e-5


def balancing_term(probs: torch.Tensor) -> torch.Tensor:
    """Var_k( sum_n probs[n, k] ): the population variance over experts of the batch importance
    (``tf.nn.moments`` in the post); ``probs`` is ``[N, K]``."""
    return probs.sum(0).var(unbiased=False)


def usage_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the mean expert usage u_k = (1/N) sum_n probs[n, k]: log K when every
    expert gets the same share, 0 when one expert takes everything."""
    usage = probs.mean(0)
    return -(usage * torch.log(usage.clamp_min(1e-30))).sum()


def gaussian_kl(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """KL( N(loc, diag(scale^2)) || N(0, I) ) summed over the last dim."""
    return 0.5 * (loc**2 + scale**2 - 1 - 2 * torch.log(scale)).sum(-1)


class ExpertVAEs(torch.nn.Module):
    """E Gaussian VAEs in one set of tensors: encoders ``D - hidden - 2L`` and decoders
    ``L - hidden[::-1] - D`` (each ``BatchedMLP`` over the E experts)."""

    def __init__(
        self, input_dim: int, num_experts: int, latent_dim: int, hidden: Sequence[int], act: str
    ) -> None:
        super().__init__()
        self.num_experts, self.latent_dim = num_experts, latent_dim
        self.encoder = BatchedMLP([input_dim, *hidden, 2 * latent_dim], num_experts, act)
        self.decoder = BatchedMLP([latent_dim, *hidden[::-1], input_dim], num_experts, act)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every expert's q(z|x): mean and standard deviation, each ``[N, E, L]``."""
        loc, log_var = self.encoder(x).chunk(2, dim=-1)
        return loc, torch.sqrt(MIN_VARIANCE + torch.exp(log_var.clamp(max=30.0)))

    def decode_all(self, z: torch.Tensor) -> torch.Tensor:
        """Every expert's decoder mean f_k(z_k): ``[..., E, L] -> [..., E, D]``."""
        return torch.sigmoid(self.decoder(z))

    def decode(self, z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """The decoder mean of expert ``e`` at ``z`` (``[..., L]``): ``[..., D]``. ``e`` is an
        integer index broadcasting against ``z.shape[:-1]`` or (relaxed) one-hot weights
        ``[..., E]``. The result is the same however it is computed; an index with at most E
        entries (an enumerated support) runs only its own experts, anything else runs all E
        decoders on every row and selects (:func:`pyro_moe.gate.select`)."""
        if not e.is_floating_point() and e.numel() <= self.num_experts:
            return torch.sigmoid(self.decoder.selected(z, e))
        shape = z.shape[:-1] + (self.num_experts, z.shape[-1])
        return select(self.decode_all(z.unsqueeze(-2).expand(shape)), e, event_dim=1)


@MODELS.register("mixture-of-vaes")
class MixtureOfVAEs(PyroModel):
    """Mixture of K VAE experts routed by a manager network q(c|x) (the post's MoE of VAEs)."""

    pyro_name = "mixture_of_vaes"
    default_guide = "mixture-of-vaes"
    exact_guide = "mixture-of-vaes"
    tasks = ("clustering", "classification")
    smoke_spec = {
        "data": "spirals",
        "data_options": {"n": 90},
        "model_options": {"num_components": 3, "latent_dim": 2, "hidden": "8"},
        "estimator": "enum",
    }

    def __init__(
        self,
        input_dim: int,
        output_dim: int = 0,
        task: str = "clustering",
        *,
        num_components: int = 10,
        latent_dim: int = 10,
        hidden: Sequence[int] | str = (128,),
        activation: str = "sigmoid",
        decoder_std: float = 0.5,
        balance: float = 0.1,
        num_subcomponents: int = 1,
    ) -> None:
        super().__init__()
        sizes = parse_sizes(hidden)
        self.num_components = check_num_components(num_components)
        self.subexperts = check_int("num_subcomponents", num_subcomponents)
        self.latent_dim = check_int("latent_dim", latent_dim)
        check_number("decoder_std", decoder_std)
        check_number("balance", balance, positive=False)
        if balance < 0:
            raise ConfigError(f"balance must be >= 0, got {balance!r}")
        self.decoder_std, self.balance = float(decoder_std), float(balance)
        self.input_dim = input_dim
        self.manager = mlp([input_dim, *sizes, num_components], activation)
        self.experts = ExpertVAEs(input_dim, self.num_experts, latent_dim, sizes, activation)
        if self.subexperts > 1:
            self.submanager = BatchedMLP(
                [input_dim, *sizes, self.subexperts], num_components, activation
            )

    @property
    def num_experts(self) -> int:
        """E = K * K2, the number of VAEs (K for the flat model)."""
        return self.num_components * self.subexperts

    @property
    def hierarchical(self) -> bool:
        """Whether each top-level expert is a mixture of K2 > 1 VAEs."""
        return self.subexperts > 1

    # --- the manager --------------------------------------------------------------------------
    def manager_logits(self, x: torch.Tensor) -> torch.Tensor:
        """log q(c|x) up to a constant: ``[N, K]``."""
        return self.manager(x)

    def submanager_logits(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """log q(s|x, c) up to a constant for the chosen top-level c: ``[..., N, K2]``."""
        return select(self.submanager(x), c, event_dim=1)

    def expert_probs(self, x: torch.Tensor) -> torch.Tensor:
        """q(e|x) over all E experts, ``[N, E]``: the manager's softmax for the flat model,
        q(c|x) q(s|x, c) flattened (index c * K2 + s) for the hierarchical one."""
        top = torch.softmax(self.manager_logits(x), -1)  # [N, K]
        if not self.hierarchical:
            return top
        sub = torch.softmax(self.submanager(x), -1)  # [N, K, K2]
        return (top.unsqueeze(-1) * sub).flatten(-2)

    def expert_index(self, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The flat expert of (c, s): c * K2 + s for indices, the outer product of the weights
        (flattened) for (relaxed) one-hot c and s."""
        if c.is_floating_point():
            return (c.unsqueeze(-1) * s.unsqueeze(-2)).flatten(-2)
        return c * self.subexperts + s

    def prior_expert(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """Sample the expert from the uniform priors (sites ``cluster``, and ``subcluster`` for
        the hierarchical model) inside the plate; returns its flat index or weights."""
        c = pyro.sample("cluster", dist.Categorical(logits=like.new_zeros(n, self.num_components)))
        if not self.hierarchical:
            return c
        s = pyro.sample("subcluster", dist.Categorical(logits=like.new_zeros(n, self.subexperts)))
        return self.expert_index(c, s)

    def posterior_expert(self, x: torch.Tensor) -> torch.Tensor:
        """Sample the expert from the managers q(c|x) (and q(s|x, c)), guide side."""
        c = pyro.sample("cluster", dist.Categorical(logits=self.manager_logits(x)))
        if not self.hierarchical:
            return c
        s = pyro.sample("subcluster", dist.Categorical(logits=self.submanager_logits(x, c)))
        return self.expert_index(c, s)

    # --- the Pyro program ---------------------------------------------------------------------
    def model(self, x: torch.Tensor, y: torch.Tensor | None = None, num_data: int | None = None):
        register_module(self.pyro_name, self)
        n = x.shape[0]
        if self.balance > 0:  # outside the plate, before the sites that depend on c
            term = balancing_term(self.expert_probs(x))
            pyro.factor("balance", -self.balance * (num_data or n) * term)
        with data_plate(x, num_data):
            e = self.prior_expert(n, x)
            zeros = x.new_zeros(n, self.latent_dim)
            z = pyro.sample("latent", dist.Normal(zeros, 1.0).to_event(1))
            mean = self.experts.decode(z, e)
            pyro.sample("obs", dist.Normal(mean, self.decoder_std).to_event(1), obs=x)

    # --- the post's loss ----------------------------------------------------------------------
    def expert_losses(self, x: torch.Tensor) -> torch.Tensor:
        """Each expert's negative ELBO with the closed-form KL and one reparameterised z per
        expert: -log N(x | f_k(z_k), s^2) + KL(q_k(z|x) || N(0, I)), ``[N, E]``."""
        loc, scale = self.experts.encode(x)  # [N, E, L]
        z = loc + scale * torch.randn_like(loc)
        mean = self.experts.decode_all(z)  # [N, E, D]
        nll = -dist.Normal(mean, self.decoder_std).log_prob(x.unsqueeze(-2)).sum(-1)
        return nll + gaussian_kl(loc, scale)

    def post_loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The post's loss on a batch: ``expected`` = (1/B) sum_n sum_k p_k(x_n) loss_k(x_n),
        ``balancing`` = Var_k(sum_n p_k(x_n)) and ``loss`` = expected + lambda * balancing."""
        probs = self.expert_probs(x)
        expected = (probs * self.expert_losses(x)).sum(-1).mean()
        balancing = balancing_term(probs)
        return {
            "expected": expected,
            "balancing": balancing,
            "loss": expected + self.balance * balancing,
        }

    # --- read-outs ----------------------------------------------------------------------------
    @torch.no_grad()
    def cluster_probs(self, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """The manager's q(c|x) over the K top-level experts: ``[N, K]``."""
        parts = [
            torch.softmax(self.manager_logits(x[i : i + batch_size]), -1)
            for i in range(0, len(x), batch_size)
        ]
        return torch.cat(parts)

    def predict_cluster(self, x: torch.Tensor) -> torch.Tensor:
        return self.cluster_probs(x).argmax(-1)

    @torch.no_grad()
    def predict_expert(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable of the E experts of each row (c * K2 + s when hierarchical)."""
        return self.expert_probs(x).argmax(-1)

    @torch.no_grad()
    def expert_samples(self, z: torch.Tensor) -> torch.Tensor:
        """Every expert's decoder mean at the same codes ``z`` (``[M, L]``): ``[M, E, D]`` (the
        post's figure: one z per epoch, a column per expert)."""
        shape = (z.shape[0], self.num_experts, z.shape[-1])
        return self.experts.decode_all(z.unsqueeze(-2).expand(shape))

    @torch.no_grad()
    def cluster_samples(self, per_cluster: int = 8, seed: int = 0) -> torch.Tensor:
        """Decoder means of each expert at z ~ N(0, I), a generator seeded with ``seed``:
        ``[E, per_cluster, D]``."""
        g = torch.Generator().manual_seed(seed)
        like = self.experts.decoder.layers[0].weight
        z = torch.randn((per_cluster, self.latent_dim), generator=g).to(like)
        return self.expert_samples(z).transpose(0, 1)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, float]:
        """Clustering accuracy, NMI and ARI of the manager's argmax against integer ``y``, and
        the entropy of the mean usage of the top-level experts."""
        from pyro_moe import metrics

        probs = self.cluster_probs(x)
        out = {"usage_entropy": float(usage_entropy(probs))}
        if y is None or y.is_floating_point():
            return out
        return {**metrics.clustering_scores(y, probs.argmax(-1)), **out}

    def parameter_group(self, name: str) -> str:
        """``manager*`` -> gate, ``experts*`` -> experts."""
        if name.startswith("manager") or name.startswith("submanager"):
            return "gate"
        return "experts" if name.startswith("experts") else "model"


@GUIDES.register("mixture-of-vaes")
class MixtureOfVAEsGuide(PyroGuide):
    """The manager q(c|x) (and q(s|x, c)), then the chosen expert's encoder q(z|x, c)."""

    model_types = (MixtureOfVAEs,)

    def forward(self, x, y=None, num_data=None):
        model = self.target
        with data_plate(x, num_data):
            e = model.posterior_expert(x)
            loc, scale = model.experts.encode(x)  # [N, E, L]
            latent = dist.Normal(select(loc, e, event_dim=1), select(scale, e, event_dim=1))
            return pyro.sample("latent", latent.to_event(1))


class PostLoss(Estimator):
    """The post's loss (:meth:`MixtureOfVAEs.post_loss`) as the trainer's objective: the batch
    loss times ``num_data``, so that :func:`~pyro_moe.train.fit` (which divides by it) takes Adam
    steps on the post's per-point loss. Not a gradient estimator of the ELBO: it optimises
    another objective, and is not in the estimator registry."""

    name = "post-loss"
    unbiased_for = None
    bias = "the post's objective: expected expert loss without the ELBO's entropy and prior terms"
    vectorisable = False

    def check(self, guide) -> None:
        if not isinstance(getattr(guide, "target", None), MixtureOfVAEs):
            raise ConfigError("the post's loss trains only a mixture of VAEs with its guide")

    def loss(self, model, guide, x, y=None, num_data=None) -> torch.Tensor:
        return guide.target.post_loss(x)["loss"] * (num_data or len(x))


def exact_elbo(model: MixtureOfVAEs, guide: PyroGuide, x: torch.Tensor, chunk: int = 2000) -> float:
    """The ELBO per row of ``x``, summed over the experts exactly (``enum``, one z per expert),
    without the balancing factor (a property of a batch, not of the data)."""
    enum, balance = ESTIMATORS["enum"](max_plate_nesting=model.max_plate_nesting), model.balance
    model.balance = 0.0
    try:
        total = sum(enum.value(model.model, guide, part) for part in x.split(chunk))
    finally:
        model.balance = balance
    return -total / len(x)


class ExpertHistory:
    """A :func:`~pyro_moe.train.fit` callback: after every epoch, the manager's clustering scores
    on ``x`` against ``labels`` (when given), each expert's share (1/N) sum_n q(e|x_n) and every
    expert's decoder mean at one fixed code z (drawn once from a generator of its own, so the
    training RNG is untouched): the rows of the post's samples figure. Call :meth:`record` before
    training for epoch 0."""

    def __init__(
        self, model: MixtureOfVAEs, x: torch.Tensor, labels: torch.Tensor | None, seed: int = 0
    ) -> None:
        self.model, self.x, self.labels = model, x, labels
        self.z = torch.randn(1, model.latent_dim, generator=torch.Generator().manual_seed(seed))
        self.rows: list[dict[str, float]] = []
        self.usage: list[list[float]] = []  # [epochs][E]
        self.samples: list[torch.Tensor] = []  # [epochs] of [E, D]

    def record(self, epoch: int) -> dict[str, float]:
        """Measure now, as epoch ``epoch``; returns the row (also kept in ``rows``)."""
        from pyro_moe import metrics

        with torch.no_grad():
            probs = torch.cat([self.model.expert_probs(part) for part in self.x.split(4096)])
        top = probs.reshape(len(probs), self.model.num_components, -1).sum(-1)
        row = {"epoch": epoch, "usage_entropy": float(usage_entropy(top))}
        if self.labels is not None:
            row.update(metrics.clustering_scores(self.labels, top.argmax(-1)))
        self.rows.append(row)
        self.usage.append(probs.mean(0).tolist())
        self.samples.append(self.model.expert_samples(self.z)[0])
        return row

    def __call__(self, trainer) -> dict[str, float]:
        row = self.record(trainer.state.epoch)
        return {f"tracked_{k}": v for k, v in row.items() if k != "epoch"}


@torch.no_grad()
def subexpert_table(
    model: MixtureOfVAEs, x: torch.Tensor, labels: torch.Tensor
) -> list[dict[str, Any]]:
    """For each expert e = c * K2 + s: the rows of ``x`` whose most probable expert it is
    (``count``), their labels (``digits``: label -> count), their mean image (``mean``) and the
    expert's decoder mean at z = 0 (``prototype``)."""
    expert = model.predict_expert(x)
    prototypes = model.expert_samples(torch.zeros(1, model.latent_dim))[0]
    table = []
    for e in range(model.num_experts):
        routed = expert == e
        values, counts = torch.unique(labels[routed], return_counts=True)
        table.append(
            {
                "c": e // model.subexperts,
                "s": e % model.subexperts,
                "count": int(routed.sum()),
                "digits": {int(v): int(n) for v, n in zip(values, counts, strict=True)},
                "mean": x[routed].mean(0) if routed.any() else torch.zeros(x.shape[1]),
                "prototype": prototypes[e],
            }
        )
    return table


__all__ = [
    "ExpertHistory",
    "MixtureOfVAEs",
    "MixtureOfVAEsGuide",
    "PostLoss",
    "balancing_term",
    "exact_elbo",
    "subexpert_table",
    "usage_entropy",
]
