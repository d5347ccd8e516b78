"""MNIST classification with K softmax experts: gated by DMVAE (DVMoE) vs by a softmax MLP gate.

Trains both on the first ``--limit`` rows of every MNIST split (task "classification"), reports
test accuracy and NLL, and which digits each expert takes: for every test image the expert with
the largest gate probability, counted per digit (``mnist_experts.png``: one bar chart per model).

    python benchmarks/mnist_experts.py --limit 10000 --epochs 10  # the committed budget
    python benchmarks/mnist_experts.py --limit 200 --epochs 1     # smoke run
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyro_moe import RunSpec, build, fit  # noqa: E402
from pyro_moe.benchmarking import fixed_budget, markdown_table, write_results  # noqa: E402
from pyro_moe.cli import OneLineParser  # noqa: E402
from pyro_moe.data import load_dataset  # noqa: E402

MODELS = {
    "softmax gate (Deep MoE)": ("moe", {"gate": "mlp", "expert": "linear"}),
    "DMVAE gate (DVMoE)": ("dvmoe", {"expert": "linear", "latent_dim": 10}),
    "DMVAE gate (DVMoE, seed's x_weight 1)": (
        "dvmoe",
        {"expert": "linear", "latent_dim": 10, "x_weight": 1.0},
    ),
    # 784 pixel likelihoods outweigh log p(y|x) unless the input ELBO is scaled down
    "DMVAE gate (DVMoE, x_weight 0.003)": (
        "dvmoe",
        {"expert": "linear", "latent_dim": 10, "x_weight": 0.003},
    ),
}


@torch.no_grad()
def specialisation(model, x: torch.Tensor, digits: torch.Tensor, k: int) -> torch.Tensor:
    """counts[e, d]: test images of digit d whose most probable expert is e."""
    log_gate = model.gate_log_probs(x)
    expert = log_gate.argmax(-1)
    counts = torch.zeros(k, 10, dtype=torch.long)
    counts.index_put_((expert, digits), torch.ones_like(digits), accumulate=True)
    return counts


def plot_specialisation(all_counts: dict[str, torch.Tensor], path: Path) -> None:
    fig, axes = plt.subplots(1, len(all_counts), figsize=(6 * len(all_counts), 3.5))
    for ax, (label, counts) in zip(axes, all_counts.items(), strict=True):
        bottom = torch.zeros(10)
        for e, row in enumerate(counts.float()):
            ax.bar(range(10), row, bottom=bottom, label=f"expert {e}")
            bottom += row
        ax.set(title=label, xlabel="digit", ylabel="test images", xticks=range(10))
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    data = load_dataset("mnist", task="classification", limit=args.limit, seed=args.seed)
    rows, counts = [], {}
    for label, (name, options) in MODELS.items():
        spec = RunSpec(
            model=name,
            data="mnist",
            model_options={"num_components": args.experts, "hidden_dim": args.hidden, **options},
            seed=args.seed,
        )
        _, model, guide, estimator = build(spec, data)
        config = fixed_budget(args.epochs, 100, args.lr, args.seed)
        t0 = time.perf_counter()
        fit(model, guide, estimator, data, config)
        metrics = model.evaluate(data.test.x, data.test.y)
        counts[label] = specialisation(model, data.test.x, data.test.y, args.experts)
        rows.append(
            {
                "gate": label,
                "test_accuracy": metrics["accuracy"],
                "test_nll": metrics["nll"],
                "seconds": time.perf_counter() - t0,
                "experts used": int((counts[label].sum(1) > 0).sum()),
            }
        )
        print(rows[-1], flush=True)
    out = Path(args.out)
    plot_specialisation(counts, out / "mnist_experts.png")
    per_expert = "\n\n".join(
        f"{label}: test images per (expert, digit)\n\n"
        + markdown_table(
            [{"expert": e, **{str(d): int(c[e, d]) for d in range(10)}} for e in range(len(c))],
            ["expert", *map(str, range(10))],
        )
        for label, c in counts.items()
    )
    note = (
        f"Reduced protocol: the first {args.limit} rows of each MNIST split (train/valid/test), "
        f"{args.experts} linear softmax experts, hidden width {args.hidden}, {args.epochs} "
        f"epochs, batch 100, Adam lr {args.lr}, exact sum over the gate (`enum`). The DMVAE "
        "gate's decoder is Gaussian on pixel values. Figure: mnist_experts.png.\n\n"
    )
    write_results(
        "mnist_experts",
        seed=args.seed,
        wall_seconds=time.perf_counter() - start,
        results={"rows": rows, "counts": {k: v.tolist() for k, v in counts.items()}},
        markdown=note
        + markdown_table(rows, ["gate", "test_accuracy", "test_nll", "seconds", "experts used"])
        + "\n\n"
        + per_expert,
        out_dir=out,
    )


if __name__ == "__main__":
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=5000)
    parser.add_argument("--experts", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results")
    main(parser.parse_args())
