"""Which objective fits Bishop's inverse problem: exact log-likelihood, Jensen bound, or ELBO?

Trains the 3-expert MoE (MLP gate, linear experts) on ``bishop`` with each (estimator, guide)
pair, beside a single-Gaussian MLP, and reports test log p(t|x) per point, MSE and wall time.

    python benchmarks/bishop_objectives.py              # full budget (about 3 minutes)
    python benchmarks/bishop_objectives.py --epochs 2   # smoke run
"""

from __future__ import annotations

import argparse
import time

from pyro_moe import RunSpec, TrainConfig, build, fit
from pyro_moe.benchmarking import markdown_table, write_results
from pyro_moe.cli import OneLineParser

MOE = {"num_components": 3, "gate": "mlp", "expert": "linear"}
CONFIGS = [
    # name, model options, estimator, guide, guide learning-rate multiplier
    ("single Gaussian (MLP)", {"num_components": 1, "expert": "mlp"}, "enum", "none", None),
    ("MoE exact log-likelihood", MOE, "enum", "none", None),
    ("MoE Jensen bound (gate guide), enum", MOE, "enum", "gate", None),
    ("MoE Jensen bound (gate guide), reinforce", MOE, "reinforce", "gate", None),
    ("MoE ELBO (posterior guide), enum", MOE, "enum", "posterior", None),
    ("MoE ELBO (posterior guide), enum, guide lr x5", MOE, "enum", "posterior", 5.0),
    ("MoE ELBO (posterior guide), reinforce, guide lr x5", MOE, "reinforce", "posterior", 5.0),
]


def run_one(options, estimator, guide, guide_lr_factor, args) -> dict:
    spec = RunSpec(
        model="moe",
        data="bishop",
        estimator=estimator,
        guide=guide,
        model_options=options,
        seed=args.seed,
    )
    data, model, guide_module, est = build(spec)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=100,
        lr=args.lr,
        patience=40,
        seed=args.seed,
        progress=False,
        guide_lr=args.lr * guide_lr_factor if guide_lr_factor else None,
    )
    start = time.perf_counter()
    result = fit(model, guide_module, est, data, config)
    metrics = model.evaluate(data.test.x, data.test.y)
    return {
        "test_log_likelihood": -metrics["nll"],
        "test_mse": metrics["mse"],
        "epochs": result.state.epoch,
        "seconds": time.perf_counter() - start,
    }


def main(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    rows = []
    for name, options, estimator, guide, factor in CONFIGS:
        row = {
            "run": name,
            "estimator": estimator,
            "guide": guide,
            **run_one(options, estimator, guide, factor, args),
        }
        rows.append(row)
        print(f"{name:55s} log p = {row['test_log_likelihood']:.3f}", flush=True)
    table = markdown_table(
        rows, ["run", "estimator", "guide", "test_log_likelihood", "test_mse", "epochs", "seconds"]
    )
    note = (
        f"Bishop's inverse problem (1000 points, 60/20/20 split), {args.epochs} epochs at most, "
        f"batch 100, lr {args.lr}, patience 40. Test log p(t|x) in nats per point (higher is "
        "better).\n\n"
    )
    write_results(
        "bishop_objectives",
        seed=args.seed,
        wall_seconds=time.perf_counter() - start,
        results={r["run"]: r for r in rows},
        markdown=note + table,
        out_dir=args.out,
    )


if __name__ == "__main__":
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results")
    main(parser.parse_args())
