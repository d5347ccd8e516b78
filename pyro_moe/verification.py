"""Small states on which gradient estimators are verified and measured.

Each builder returns ``(model, guide, args)`` with random parameters and a batch of four points,
small enough that the sum over the discrete latents is exact
(:mod:`pyro_moe.estimators.objectives`):

* ``moe-gate``, ``moe-posterior``: a mixture of experts (K = 3, N = 4) with q(c|x) = p(c|x) and
  with an amortized posterior network q(c|x, y);
* ``cat-vae``: a categorical VAE with L = 2 latents of K = 3 classes (K^L = 9 joint values);
* ``gmm``: a Gaussian mixture (K = 3, diagonal) with a linear-softmax encoder q(c|x).

:func:`plain_gmm` is the same kind of mixture written as two plain Pyro functions with
param-store parameters and their own site names, the shape of a researcher's own program.

The registry test (``tests/test_estimator_registry.py``) and the benchmark
``benchmarks/estimators_small.py`` share these states, so the benchmark measures exactly what the
test checks.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_moe.base import PyroGuide, data_plate
from pyro_moe.data import split_arrays
from pyro_moe.registry import GUIDES, MODELS


def tiny_data(task: str = "regression", n: int = 40, d: int = 2, classes: int = 3, seed: int = 0):
    """A small random data set (float64 when that is the default dtype):
    x ~ N(0, I_d); regression y = sum(x) + 0.3 eps, else y ~ Uniform{0..classes-1}."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    if task == "regression":
        y = x.sum(-1, keepdim=True) + 0.3 * torch.randn(n, 1, generator=g)
    else:
        y = torch.randint(0, classes, (n,), generator=g)
    return split_arrays(
        "tiny", task, x, y, seed=seed, num_classes=classes if task != "regression" else None
    )


def tiny_moe(data, guide: str = "none", **options):
    """A MoE for ``data`` with every parameter drawn from N(0, 0.7^2), and its guide."""
    model = MODELS["moe"].from_data(data, **options)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.7)
    return model, GUIDES[guide](model)


def moe_state(guide: str):
    """The tiny MoE (K = 3, hidden width 4) with guide ``gate`` or ``posterior``."""
    torch.manual_seed(0)
    data = tiny_data("regression", n=40, seed=0)
    model, guide_ = tiny_moe(data, guide, num_components=3, hidden_dim=4)
    return model, guide_, (data.train.x[:4], data.train.y[:4])


def cat_vae_state():
    """A categorical VAE on 4 binary pixels, L = 2 latents of K = 3 classes."""
    torch.manual_seed(0)
    model = MODELS["cat-vae"](4, num_latents=2, num_components=3, hidden="4")
    x = (torch.rand(4, 4) > 0.5).to(torch.get_default_dtype())
    return model, GUIDES["cat-vae"](model), (x,)


class LinearEncoder(PyroGuide):
    """q(c|x) = Categorical(softmax(W x + b)), its own parameters (the registered
    ``gmm-posterior`` is the exact posterior, under which every bound equals log p(x))."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self.net = nn.Linear(model.input_dim, model.num_components)

    def forward(self, x, y=None, num_data=None):
        pyro.module("gmm_encoder", self)
        with data_plate(x, num_data):
            return pyro.sample("cluster", dist.Categorical(logits=self.net(x)))


def gmm_state():
    """A diagonal Gaussian mixture in 2-d (K = 3) with a :class:`LinearEncoder`."""
    torch.manual_seed(0)
    model = MODELS["gmm"](2, num_components=3, covariance="diag")
    with torch.no_grad():
        model.pi_logits.normal_(0, 0.5)
        model.raw_diag.normal_(0, 0.3)
    return model, LinearEncoder(model), (torch.randn(4, 2),)


SETUPS: dict[str, Callable] = {
    "moe-gate": lambda: moe_state("gate"),
    "moe-posterior": lambda: moe_state("posterior"),
    "cat-vae": cat_vae_state,
    "gmm": gmm_state,
}


def plain_gmm(read: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    """A 1-d Gaussian mixture (K = 3, unit variances) as plain ``model(x)`` and ``guide(x)``:

        z_n ~ Categorical(weights),  x_n ~ Normal(read(locs, z_n), 1)      (plate ``points``)
        q(z_n) = Categorical(softmax(assignment_logits_n))

    with parameters in Pyro's param store; ``read(locs, z)`` picks the component's mean
    (``locs[z]`` indexes, :func:`pyro_moe.select` also reads a relaxed one-hot z)."""

    def model(x):
        weights = pyro.param("weights", torch.ones(3) / 3, constraint=dist.constraints.simplex)
        locs = pyro.param("locs", torch.tensor([-2.0, 0.0, 2.0]))
        with pyro.plate("points", len(x)):
            z = pyro.sample("z", dist.Categorical(weights))
            pyro.sample("x", dist.Normal(read(locs, z), 1.0), obs=x)

    def guide(x):
        logits = pyro.param("assignment_logits", 0.3 * torch.randn(len(x), 3))
        with pyro.plate("points", len(x)):
            pyro.sample("z", dist.Categorical(logits=logits))

    return model, guide
