"""What Pyro costs per SVI step against the same model and loss written by hand in PyTorch.

Two problems, each timed in one process with the methods alternating step by step (so machine load
hits them alike) and medians over many steps:

* small MoE: N=1000 rows, D=5, K=8 experts, MLP gate with hidden width 64, linear regression
  experts (the library's ``moe``). Pyro paths: ``enum`` (the default: the collapsed one-pass path),
  ``enum`` with ``fast=False`` (TraceEnum_ELBO), ``JitTraceEnum_ELBO``, ``reinforce`` with the
  posterior guide; each beside the hand-written loss it computes.
* MNIST scale: a VaDE-shaped model (Jiang et al. 2017) written in this script, batch 256,
  encoder 784-500-500-2000 -> (mu, log var) of a 10-d z, decoder 10-2000-500-500-784 Bernoulli,
  GMM prior with K=10; Pyro (TraceEnum_ELBO with c enumerated in the model, z reparameterised in
  the guide) against the hand-written ELBO with the same noise.

Before timing, each Pyro loss is checked against its hand-written twin (same parameters, same
random numbers) and the difference is reported. Ratios are medians of Pyro / medians of hand.

    python benchmarks/overhead.py                       # full protocol
    python benchmarks/overhead.py --steps 3 --mnist-steps 1 --mnist-batch 4   # smoke run
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import JitTraceEnum_ELBO, TraceEnum_ELBO, config_enumerate
from torch import nn

from pyro_moe.base import data_plate
from pyro_moe.benchmarking import markdown_table, write_results
from pyro_moe.data import split_arrays
from pyro_moe.estimators import ESTIMATORS
from pyro_moe.gate import select
from pyro_moe.nn import mlp
from pyro_moe.registry import GUIDES, MODELS

TARGETS = {"small MoE": 1.3, "MNIST scale (VaDE-shaped)": 1.1}
Step = Callable[[], torch.Tensor]


# --- small MoE ------------------------------------------------------------------------------------
def small_moe(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1250, 5, generator=g)
    y = torch.sin(x.sum(-1, keepdim=True)) + 0.3 * torch.randn(1250, 1, generator=g)
    data = split_arrays("overhead", "regression", x, y, seed=seed)
    torch.manual_seed(seed)
    model = MODELS["moe"].from_data(
        data, num_components=8, gate="mlp", expert="linear", hidden_dim=64
    )
    return model, x[:1000], y[:1000]


def hand_moe_exact(model, x, y) -> torch.Tensor:
    """-sum_n logsumexp_k [log softmax(g(x_n))_k + log N(y_n; f_k(x_n), s_k^2)], plain torch."""
    log_gate = torch.log_softmax(model.gate(x), -1)  # [N, K]
    out, scale = model.experts(x), model.expert_scale()  # [N, K, M], [K, M]
    z = (y[:, None, :] - out) / scale
    log_lik = (-0.5 * z**2 - scale.log() - 0.9189385332046727).sum(-1)  # [N, K]
    return -torch.logsumexp(log_gate + log_lik, -1).sum()


def hand_moe_reinforce(model, guide, x, y) -> torch.Tensor:
    """Score-function surrogate with c ~ q(c|x, y), drawn exactly as Pyro draws it."""
    log_q_all = torch.log_softmax(guide.logits(x, y), -1)
    c = dist.Categorical(logits=guide.logits(x, y)).sample()  # same RNG call as Pyro's site
    log_gate = torch.log_softmax(model.gate(x), -1)
    out, scale = model.experts(x), model.expert_scale()
    z = (y[:, None, :] - out) / scale
    log_lik = (-0.5 * z**2 - scale.log() - 0.9189385332046727).sum(-1)
    pick = c[:, None]
    log_q = log_q_all.gather(-1, pick)[:, 0]
    f = log_gate.gather(-1, pick)[:, 0] + log_lik.gather(-1, pick)[:, 0] - log_q
    elbo = f.sum()
    surrogate = -(elbo + (log_q * f.detach()).sum())
    return surrogate + (-elbo - surrogate).detach()


def moe_methods(seed: int) -> tuple[dict[str, tuple[Step, Step]], list[nn.Module]]:
    pyro.clear_param_store()
    model, x, y = small_moe(seed)
    none, posterior = GUIDES["none"](model), GUIDES["posterior"](model)
    fast, general = ESTIMATORS["enum"](), ESTIMATORS["enum"](fast=False)
    jit = ESTIMATORS["enum"](fast=False, jit=True)
    reinforce = ESTIMATORS["reinforce"]()
    exact = lambda: hand_moe_exact(model, x, y)  # noqa: E731
    methods = {
        "enum (default: collapsed fast path)": (lambda: fast.loss(model.model, none, x, y), exact),
        "enum, fast=False (TraceEnum_ELBO)": (lambda: general.loss(model.model, none, x, y), exact),
        "enum, jit=True (JitTraceEnum_ELBO)": (lambda: jit.loss(model.model, none, x, y), exact),
        "reinforce (posterior guide)": (
            lambda: reinforce.loss(model.model, posterior, x, y),
            lambda: hand_moe_reinforce(model, posterior, x, y),
        ),
    }
    return methods, [model, posterior]


# --- MNIST scale: a VaDE-shaped model -------------------------------------------------------------
class VadeShaped(nn.Module):
    """z ~ sum_c pi_c N(mu_c, diag sd_c^2), x|z ~ Bernoulli(dec(z)); q(z|x) = N(enc(x)).

    Pyro: ``cluster`` enumerated in the model, ``latent`` reparameterised in the guide, so
    TraceEnum_ELBO computes E_q [log sum_c p(c) p(z|c) + log p(x|z) - log q(z|x)] (VaDE's ELBO
    with q(c|x) = p(c|z) made exact).
    """

    def __init__(self, k: int = 10, latent: int = 10, pixels: int = 784) -> None:
        super().__init__()
        self.encoder = mlp([pixels, 500, 500, 2000, 2 * latent], "relu")
        self.decoder = mlp([latent, 2000, 500, 500, pixels], "relu")
        self.pi_logits = nn.Parameter(torch.zeros(k))
        self.mu_c = nn.Parameter(torch.randn(k, latent))
        self.raw_sd_c = nn.Parameter(torch.zeros(k, latent))

    def encode(self, x):
        loc, raw = self.encoder(x).chunk(2, -1)
        return loc, F.softplus(raw) + 1e-4

    def model(self, x, y=None, num_data=None):
        pyro.module("vade", self)
        sd_c = F.softplus(self.raw_sd_c) + 1e-4
        with data_plate(x, num_data):
            c = pyro.sample("cluster", dist.Categorical(logits=self.pi_logits.expand(len(x), -1)))
            z = pyro.sample(
                "latent", dist.Normal(select(self.mu_c, c, 1), select(sd_c, c, 1)).to_event(1)
            )
            pyro.sample("obs", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x, y=None, num_data=None):
        pyro.module("vade", self)
        loc, scale = self.encode(x)
        with data_plate(x, num_data):
            pyro.sample("latent", dist.Normal(loc, scale).to_event(1))

    def hand_loss(self, x):
        loc, scale = self.encode(x)
        z = loc + scale * torch.empty_like(loc).normal_()  # the same draw as Normal.rsample
        sd_c = F.softplus(self.raw_sd_c) + 1e-4
        log_pz_c = torch.distributions.Normal(self.mu_c, sd_c).log_prob(z[:, None]).sum(-1)
        log_pz = torch.logsumexp(torch.log_softmax(self.pi_logits, -1) + log_pz_c, -1)
        logits = self.decoder(z)
        log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
        return -(log_pz + log_px - log_q).sum()


def vade_methods(seed: int, batch: int) -> tuple[dict[str, tuple[Step, Step]], list[nn.Module]]:
    pyro.clear_param_store()
    torch.manual_seed(seed)
    net = VadeShaped()
    x = (torch.rand(batch, 784) < 0.3).float()  # binary images of MNIST's size
    model, guide = config_enumerate(net.model), net.guide
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    jit = JitTraceEnum_ELBO(max_plate_nesting=1, ignore_jit_warnings=True)
    hand = lambda: net.hand_loss(x)  # noqa: E731
    methods = {
        "enum (TraceEnum_ELBO)": (lambda: elbo.differentiable_loss(model, guide, x), hand),
        "enum, jit (JitTraceEnum_ELBO)": (lambda: jit.differentiable_loss(model, guide, x), hand),
    }
    return methods, [net]


# --- the timing protocol --------------------------------------------------------------------------
def agreement(pyro_step: Step, hand_step: Step, seed: int) -> float:
    """|Pyro loss - hand loss| at the same parameters and the same random numbers."""
    pyro.set_rng_seed(seed)
    a = pyro_step().item()
    pyro.set_rng_seed(seed)
    b = hand_step().item()
    return abs(a - b) / max(1.0, abs(b))


def timed(step: Step, params: list[torch.Tensor], opt: torch.optim.Optimizer) -> float:
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    step().backward()
    opt.step()
    return time.perf_counter() - start


def measure(methods: dict[str, tuple[Step, Step]], modules, steps: int, warmup: int, seed: int):
    """Alternate hand and Pyro step by step; a method that fails is reported, not timed."""
    params = [p for m in modules for p in m.parameters()]
    initial = [copy.deepcopy(m.state_dict()) for m in modules]
    opt = torch.optim.SGD(params, lr=1e-6)  # a real step, parameters barely move
    rows = []
    for name, (pyro_step, hand_step) in methods.items():
        for m, state in zip(modules, initial, strict=True):
            m.load_state_dict(state)
        try:
            diff = agreement(pyro_step, hand_step, seed)
        except Exception as e:  # noqa: BLE001  (JIT paths may not trace; say so)
            rows.append({"method": name, "status": f"failed: {type(e).__name__}: {e}"[:200]})
            continue
        times: dict[str, list[float]] = {"pyro": [], "hand": []}
        for i in range(warmup + steps):
            order = ("pyro", "hand") if i % 2 == 0 else ("hand", "pyro")
            for which in order:
                t = timed(pyro_step if which == "pyro" else hand_step, params, opt)
                if i >= warmup:
                    times[which].append(t)
        pyro_ms = 1e3 * statistics.median(times["pyro"])
        hand_ms = 1e3 * statistics.median(times["hand"])
        rows.append(
            {
                "method": name,
                "status": "ok",
                "hand_ms": hand_ms,
                "pyro_ms": pyro_ms,
                "ratio": pyro_ms / hand_ms,
                "loss_rel_diff": diff,
            }
        )
    return rows


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results = {}
    problems = {
        "small MoE": (lambda: moe_methods(args.seed), args.steps),
        "MNIST scale (VaDE-shaped)": (
            lambda: vade_methods(args.seed, args.mnist_batch),
            args.mnist_steps,
        ),
    }
    for problem, (make, steps) in problems.items():
        for validation in (True, False):
            pyro.enable_validation(validation)
            methods, modules = make()
            rows = measure(methods, modules, steps, args.warmup, args.seed)
            for r in rows:
                r["validation"] = validation
            results.setdefault(problem, []).extend(rows)
    pyro.enable_validation(True)
    markdown = report(results, args)
    write_results(
        "overhead",
        seed=args.seed,
        wall_seconds=time.perf_counter() - start,
        results={"problems": results, "targets": TARGETS, "protocol": protocol(args)},
        markdown=markdown,
        out_dir=args.out,
    )
    print(markdown)


def protocol(args: argparse.Namespace) -> dict:
    return {
        "threads": args.threads,
        "steps": args.steps,
        "mnist_steps": args.mnist_steps,
        "mnist_batch": args.mnist_batch,
        "warmup": args.warmup,
        "device": "cpu (no GPU machine was lent to this task)",
    }


def report(results: dict, args: argparse.Namespace) -> str:
    columns = ["method", "validation", "hand_ms", "pyro_ms", "ratio", "loss_rel_diff", "status"]
    parts = [
        "# Pyro overhead per SVI step against hand-written PyTorch\n",
        f"CPU only, {args.threads} thread(s): no GPU machine was lent to this task. Each Pyro "
        "path alternates step by step with its hand-written twin (same parameters, same loss, "
        f"same random numbers; the loss agreement is checked first); medians of {args.steps} "
        f"steps (small MoE) and {args.mnist_steps} steps (MNIST scale, batch "
        f"{args.mnist_batch}) after {args.warmup} warm-up steps. `validation` is Pyro's "
        "distribution-argument checking (`pyro.enable_validation`, on by default).\n",
        "Load caveat: the machine (2 cores) is shared with other sessions running tests and "
        "benchmarks; alternation makes the ratio fair under load, but absolute ms vary from run "
        "to run.\n",
    ]
    for problem, rows in results.items():
        parts.append(f"## {problem} (target ratio <= {TARGETS[problem]})\n")
        parts.append(markdown_table(rows, columns) + "\n")
    parts.append(
        "Issue 7's first measurement (different machine state): hand 1.88 ms, TraceEnum_ELBO "
        "6.17 ms (3.3x), JitTraceEnum_ELBO 4.51 ms (2.4x); an earlier attempt at the fast path "
        "measured hand 4.20 ms, TraceEnum 8.31 ms (1.98x), fast path 5.54 ms (1.32x).\n\n"
        "Not measured: Gumbel-softmax estimators (issue 4 had not landed on main), the library's "
        "VaDE/DMVAE (issue 5 had not landed models/vade.py, models/dmvae.py on main by 01:15 UTC; "
        "the MNIST-scale row uses the VaDE-shaped model written in this script), GPU timings."
    )
    return "\n".join(parts)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="timed steps per method, small MoE")
    p.add_argument("--mnist-steps", type=int, default=20, help="timed steps per method, MNIST")
    p.add_argument("--mnist-batch", type=int, default=256)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results")
    return p.parse_args()


if __name__ == "__main__":
    main(parse_args())
