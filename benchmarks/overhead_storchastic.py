"""Step time of pyro-moe's estimators against Storchastic's on the same categorical VAE.

Storchastic (van Krieken, Tomczak & ten Teije, "Storchastic: A Framework for General Stochastic
Automatic Differentiation", NeurIPS 2021) implements the categorical VAE of Jang et al. (2017) in
its discrete-VAE example. Both sides here run that model with the same networks: 20 x 10
categorical latents, a 784-512-256 ReLU encoder, the mirrored 256-512-784 Bernoulli decoder,
batch 100 of binary 784-pixel images, Adam; Storchastic's side is written as its example writes
it (``storch.reset``, ``denote_independent``, ``add_cost`` for the analytic KL and the
reconstruction, ``storch.backward``). Every estimator both libraries have is timed in one
process, the two libraries alternating step by step (so machine load hits them alike); medians
over ``--steps`` steps after ``--warmup``, ratio = pyro-moe / Storchastic (below 1: pyro-moe is
faster). An estimator appears as soon as the registry has it under the name in :data:`SHARED`.

Storchastic is an optional extra: ``pip install 'pyro-moe[bench]'`` (storchastic==0.3.7; its
requirements are unpinned, so the installed torch stays).

    python benchmarks/overhead_storchastic.py                 # 200 steps per estimator
    python benchmarks/overhead_storchastic.py --steps 2 --warmup 1 --batch 4   # smoke run

References:
    1. E. van Krieken, J. M. Tomczak, A. ten Teije, "Storchastic: A Framework for General
       Stochastic Automatic Differentiation", NeurIPS 2021.
    2. E. Jang, S. Gu, B. Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import pyro
import torch
from torch import nn
from torch.distributions import OneHotCategorical, kl_divergence

from pyro_moe.benchmarking import markdown_table, run_script, write_results
from pyro_moe.cli import OneLineParser
from pyro_moe.errors import ConfigError
from pyro_moe.experiment import build_estimator
from pyro_moe.nn import mlp
from pyro_moe.registry import ESTIMATORS, GUIDES, MODELS

NAME = "overhead_storchastic"
LATENTS, CLASSES = 20, 10


def storch_module():
    try:
        import storch
    except ImportError:
        raise ConfigError(
            "Storchastic is not installed; pip install 'pyro-moe[bench]' (storchastic==0.3.7)"
        ) from None
    return storch


#: pyro-moe estimator -> (its options, Storchastic's method for the latent "z" built from them)
SHARED: dict[str, tuple[dict, Callable]] = {
    "reinforce": ({}, lambda m: m.ScoreFunction("z", n_samples=1)),
    "reinforce-avg": (
        {"beta": 0.95},
        lambda m: m.ScoreFunction("z", n_samples=1, baseline_factory="moving_average"),
    ),
    "rloo": (
        {"num_particles": 4},
        lambda m: m.ScoreFunction("z", n_samples=4, baseline_factory="batch_average"),
    ),
    "gumbel": ({}, lambda m: m.GumbelSoftmax("z", n_samples=1, min_temperature=1.0)),
    "st-gumbel": (
        {},
        lambda m: m.GumbelSoftmax("z", n_samples=1, straight_through=True, min_temperature=1.0),
    ),
    "rebar": ({}, lambda m: m.REBAR("z", n_samples=1)),
    "unordered": ({"num_particles": 2}, lambda m: m.UnorderedSetEstimator("z", k=2)),
    # the same estimator on both sides: Storchastic's RELAX with rebar=True (see RELAX_NOTE)
    "relax": ({}, lambda m: m.RELAX("z", n_samples=1, c_phi=RelaxNetwork(), rebar=True)),
}


RELAX_NOTE = (
    "relax: Grathwohl et al. (2018)'s discrete RELAX, whose control variate "
    "c_phi(z) = eta f(sigma_lambda(z)) + r_rho(z) runs the model at the relaxed draws as REBAR "
    "does, is Storchastic's `RELAX(..., rebar=True)` (REBAR plus a network, here its 200-50-1 "
    "ReLU network); Storchastic's default `RELAX` keeps only the network, c_phi(z) = eta r_rho(z), "
    "and runs the model at the discrete draw alone (once per draw instead of three times): a "
    "different estimator, which pyro-moe does not have."
)


class RelaxNetwork(nn.Module):
    """Storchastic's RELAX network (LATENTS * CLASSES -> 50 -> 1, ReLU) for the rebar=True path,
    whose c_phi gets plain tensors ``[n, N, LATENTS, CLASSES]`` and adds its output to costs
    shaped ``[n, N, 1, 1]`` (Storchastic's own ``Baseline`` reads ``plate_dims``, which plain
    tensors lack, and returns ``[n, N]``)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp([LATENTS * CLASSES, 50, 1], "relu")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.flatten(-2))[..., None]


class StorchVAE(nn.Module):
    """The categorical VAE as Storchastic's discrete-VAE example writes it (ReLU networks)."""

    def __init__(self, storch, method) -> None:
        super().__init__()
        self.storch, self.method = storch, method
        self.encoder = mlp([784, 512, 256, LATENTS * CLASSES], "relu")
        self.decoder = mlp([LATENTS * CLASSES, 256, 512, 784], "relu")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def cost(self, x: torch.Tensor) -> torch.Tensor:
        """One step's costs, then Storchastic's backward pass; returns the total cost."""
        storch = self.storch
        storch.reset()
        data = storch.denote_independent(x, 0, "data")
        logits = storch.deterministic(self.encode)(data)
        logits = logits.reshape(logits.shape[:-1] + (LATENTS, CLASSES))
        posterior = OneHotCategorical(probs=logits.softmax(-1))  # as the example (REBAR, RELAX)
        prior = OneHotCategorical(probs=torch.full_like(posterior.probs, 1.0 / CLASSES))
        storch.add_cost(kl_divergence(posterior, prior).sum(-1), "kl")
        z = self.method(posterior)
        flat = z.reshape(z.shape[:-2] + (LATENTS * CLASSES,))
        probs = storch.deterministic(self.decode)(flat).sigmoid()
        storch.add_cost(storch.nn.b_binary_cross_entropy(probs, data, reduction="sum"), "rec")
        return storch.backward()


def pyro_step(name: str, options: dict, x: torch.Tensor) -> tuple[Callable, list]:
    model = MODELS["cat-vae"](784)
    guide = GUIDES["cat-vae"](model)
    estimator = build_estimator(name, model, **options)
    estimator.check(guide)
    params = list(model.parameters()) + list(estimator.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        estimator.loss(model.model, guide, x).backward()
        opt.step()

    return step, params


def storch_step(storch, make: Callable, x: torch.Tensor) -> Callable:
    vae = StorchVAE(storch, make(storch.method))
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        vae.cost(x)
        opt.step()

    return step


def timed(step: Callable) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def measure(name: str, storch, x: torch.Tensor, args: argparse.Namespace) -> dict:
    """Alternate the two libraries step by step; medians in ms and their ratio."""
    options, make = SHARED[name]
    torch.manual_seed(args.seed)
    pyro.clear_param_store()
    ours, _ = pyro_step(name, options, x)
    theirs = storch_step(storch, make, x)
    times: dict[str, list[float]] = {"pyro-moe": [], "storchastic": []}
    for i in range(args.warmup + args.steps):
        order = (("pyro-moe", ours), ("storchastic", theirs))
        for which, step in order if i % 2 == 0 else order[::-1]:
            t = timed(step)
            if i >= args.warmup:
                times[which].append(t)
    ours_ms = 1e3 * statistics.median(times["pyro-moe"])
    theirs_ms = 1e3 * statistics.median(times["storchastic"])
    return {
        "estimator": name,
        "options": options,
        "pyro_moe_ms": ours_ms,
        "storchastic_ms": theirs_ms,
        "ratio": ours_ms / theirs_ms,
        "not_slower": ours_ms <= theirs_ms,
    }


def main(args: argparse.Namespace) -> int:
    if min(args.steps, args.batch, args.threads) < 1 or args.warmup < 0:
        raise ConfigError("--steps, --batch and --threads must be >= 1, --warmup >= 0")
    storch = storch_module()
    names = shared_names(args.estimators)
    torch.set_num_threads(args.threads)
    start, load_start = time.perf_counter(), os.getloadavg()[0]
    torch.manual_seed(args.seed)
    x = (torch.rand(args.batch, 784) < 0.3).float()  # binary images of MNIST's size
    rows = []
    for name in names:
        rows.append(measure(name, storch, x, args))
        print(rows[-1], flush=True)
    load = {"start": load_start, "end": os.getloadavg()[0]}
    write_results(
        NAME,
        seed=args.seed,
        wall_seconds=time.perf_counter() - start,
        results={"rows": rows, "protocol": vars(args), "load_average": load},
        markdown=report(rows, args, load),
        out_dir=args.out,
    )
    return 0


def shared_names(requested: str) -> list[str]:
    """The estimators both libraries have (``all``), or the requested ones, checked."""
    if requested == "all":
        return [n for n in SHARED if n in ESTIMATORS]
    names = [n.strip() for n in requested.split(",") if n.strip()]
    for name in names:
        if name not in SHARED or name not in ESTIMATORS:
            both = ", ".join(n for n in SHARED if n in ESTIMATORS)
            raise ConfigError(
                f"{name!r} is not an estimator both libraries have; they share {both}"
            )
    return names


def report(rows: list[dict], args: argparse.Namespace, load: dict) -> str:
    columns = ["estimator", "pyro_moe_ms", "storchastic_ms", "ratio", "not_slower"]
    return (
        "# pyro-moe against Storchastic: one step of the categorical VAE\n\n"
        f"20 x 10 categorical latents, 784-512-256 encoder, mirrored Bernoulli decoder, batch "
        f"{args.batch} of random binary images, Adam; {args.threads} torch thread(s); the two "
        f"libraries alternate step by step, medians of {args.steps} steps after {args.warmup} "
        f"warm-up steps; 1-minute load average {load['start']:.1f} at the start and "
        f"{load['end']:.1f} at the end. ratio = pyro-moe / Storchastic (target: <= 1 for every "
        "row). Options matched per row: particles (rloo: 4 samples with the leave-one-out "
        "baseline, Storchastic's batch_average; unordered: sets of 2), the moving-average "
        "decay (reinforce-avg: 0.95), "
        "temperature 1 (Storchastic's annealing floor set to 1). Storchastic adds the KL as an "
        "analytic cost for every method; pyro-moe's score-function estimators use the sampled "
        "log p(c) - log q(c|x). " + RELAX_NOTE + "\n\n" + markdown_table(rows, columns)
    )


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--estimators", default="all", help="comma-separated, or all shared ones")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results")
    return p


if __name__ == "__main__":
    run_script(lambda: main(parser().parse_args()))
