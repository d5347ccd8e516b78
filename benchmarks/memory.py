"""Peak memory of VaDE training at batch 100 and 256, and no growth over 1,000 steps.

1. Peak resident memory (RSS, which includes PyTorch's CPU allocator; ``tracemalloc`` does not
   see it) of SVI steps of the library's VaDE (``vade``, guide ``vae``; encoder 784-500-500-2000,
   mirrored Bernoulli decoder, 10-d z, K=10, ``enum``), one fresh process per batch size, with
   RSS after every step to show it is flat after the first steps.
2. Growth over ``--growth-steps`` (1,000) steps of the library's training loop (``fit``) on the
   small MoE, for ``enum`` (fast path), ``enum`` with TraceEnum_ELBO and ``reinforce``: the
   live-tensor count and RSS at every epoch end.

DLGMM is not implemented in this project, so it is not measured.

    python benchmarks/memory.py                                  # full protocol
    python benchmarks/memory.py --steps 2 --growth-steps 20 --growth-rows 100 --batches 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import pyro
import torch

from pyro_moe import RunSpec, TrainConfig, build, fit
from pyro_moe.benchmarking import (
    live_tensors,
    markdown_table,
    reset_peak_rss,
    rss_mb,
    write_results,
)
from pyro_moe.cli import OneLineParser


def vade_child(batch: int, steps: int, seed: int) -> dict:
    """Run in a fresh process: peak and per-step RSS of VaDE SVI at ``batch``."""
    from pyro_moe.estimators import ESTIMATORS
    from pyro_moe.registry import GUIDES, MODELS

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    base = rss_mb()[0]
    options = {"num_components": 10, "latent_dim": 10, "hidden": "500-500-2000"}
    net = MODELS["vade"](784, likelihood="bernoulli", **options)
    guide = GUIDES["vae"](net)
    x = (torch.rand(batch, 784) < 0.3).float()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    enum = ESTIMATORS["enum"]()
    params_mb = sum(p.numel() * p.element_size() for p in net.parameters()) / 2**20
    built = rss_mb()[0]
    reset_peak_rss()
    per_step = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        enum.loss(net.model, guide, x).backward()
        opt.step()
        per_step.append(round(rss_mb()[0], 1))
    after = min(3, len(per_step) - 1)
    return {
        "batch": batch,
        "steps": steps,
        "rss_before_mb": base,
        "rss_built_mb": built,
        "parameters_mb": params_mb,
        "peak_rss_mb": rss_mb()[1],
        "rss_growth_after_step_3_mb": per_step[-1] - per_step[after],
        "rss_per_step_mb": per_step,
    }


def vade_peaks(batches: list[int], steps: int, seed: int) -> list[dict]:
    rows = []
    for batch in batches:
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(batch), "--steps", str(steps)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def growth(steps: int, rows_n: int, seed: int) -> list[dict]:
    """Live tensors and RSS at each epoch end over ``steps`` steps of ``fit``, per estimator."""
    rows = []
    for estimator, guide, options in (
        ("enum", "none", {}),
        ("enum", "none", {"fast": False}),
        ("reinforce", "posterior", {}),
    ):
        spec = RunSpec(
            model="moe",
            data="bishop",
            estimator=estimator,
            guide=guide,
            estimator_options=options,
            data_options={"n": rows_n},
            model_options={"num_components": 8, "gate": "mlp", "hidden_dim": 64},
            seed=seed,
        )
        data, model, g, est = build(spec)
        samples: list[tuple[int, float]] = []
        config = TrainConfig(
            epochs=10**6, max_steps=steps, batch_size=10, patience=None, progress=False, seed=seed
        )
        fit(model, g, est, data, config, callbacks=[lambda t, s=samples: s.append(sample())])
        tensors, rss = [s[0] for s in samples], [s[1] for s in samples]
        rows.append(
            {
                "estimator": estimator + (" (TraceEnum_ELBO)" if options else ""),
                "steps": steps,
                "epochs": len(samples),
                "live_tensors_first_epoch": tensors[0] if tensors else None,
                "live_tensors_last_epoch": tensors[-1] if tensors else None,
                "rss_first_epoch_mb": rss[0] if rss else None,
                "rss_last_epoch_mb": rss[-1] if rss else None,
                "rss_growth_mb": rss[-1] - rss[0] if rss else None,
            }
        )
        pyro.clear_param_store()
    return rows


def sample() -> tuple[int, float]:
    return live_tensors(), rss_mb()[0]


def main(args: argparse.Namespace) -> None:
    if args.child:
        print(json.dumps(vade_child(args.child, args.steps, args.seed)))
        return
    start = time.perf_counter()
    peaks = vade_peaks(args.batches, args.steps, args.seed)
    grow = growth(args.growth_steps, args.growth_rows, args.seed)
    markdown = report(peaks, grow, args)
    results = {"vade_peaks": peaks, "growth": grow, "device": "cpu"}
    write_results(
        "memory",
        seed=args.seed,
        wall_seconds=time.perf_counter() - start,
        results=results,
        markdown=markdown,
        out_dir=args.out,
    )
    print(markdown)


def report(peaks: list[dict], grow: list[dict], args: argparse.Namespace) -> str:
    peak_cols = [
        "batch",
        "steps",
        "rss_before_mb",
        "parameters_mb",
        "rss_built_mb",
        "peak_rss_mb",
        "rss_growth_after_step_3_mb",
    ]
    grow_cols = [
        "estimator",
        "steps",
        "epochs",
        "live_tensors_first_epoch",
        "live_tensors_last_epoch",
        "rss_first_epoch_mb",
        "rss_last_epoch_mb",
        "rss_growth_mb",
    ]
    return "\n".join(
        [
            "# Memory: peak of VaDE training, growth over training\n",
            "CPU, float32, 1 thread. RSS includes "
            "PyTorch's CPU allocator and the Python interpreter with torch and pyro imported "
            "(`rss_before_mb`). Model: the library's VaDE (784-500-500-2000 encoder, mirrored "
            "Bernoulli decoder, 10-d z, K=10, guide `vae`, `enum`) on random binary images. "
            "DLGMM is not implemented in this project, so it is not measured.\n",
            f"## Peak RSS, VaDE SVI ({args.steps} steps, one process per batch size)\n",
            markdown_table(peaks, peak_cols) + "\n",
            f"## Growth over {args.growth_steps} steps of `fit` (small MoE, batch 10)\n",
            "Live tensors reachable by the garbage collector and RSS at each epoch end; a leaked "
            "graph or trace per step would grow both.\n",
            markdown_table(grow, grow_cols) + "\n",
        ]
    )


def parse_args() -> argparse.Namespace:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[100, 256])
    p.add_argument("--steps", type=int, default=30, help="VaDE steps per batch size")
    p.add_argument("--growth-steps", type=int, default=1000)
    p.add_argument("--growth-rows", type=int, default=2000, help="bishop rows (60%% train)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", default="benchmarks/results")
    return p.parse_args()


if __name__ == "__main__":
    main(parse_args())
