"""Samples from the extreme components of a 5-component DLGMM on binarized MNIST (Fig. 2a/b).

Nalisnick, Hertel & Smyth, "Approximate Inference for Deep Latent Gaussian Mixtures" (2016),
Fig. 2a/b: a DLGMM with five components whose priors are N(m_k, I), m_k in {-1.5, -0.75, 0,
0.75, 1.5} in every coordinate; decoder means for z ~ N(m_1, I) and z ~ N(m_5, I). Trained with
the paper's optimiser settings (Adam lr 3e-4, batch 100, early stopping on the validation ELBO)
and ``--max-seconds`` of training at most.

    python benchmarks/dlgmm_extremes.py --max-seconds 180
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure
from pyro_moe.models.dlgmm import DLGMM, NegativeELBO

from pyro_moe.benchmarking import RESULTS, TimeBudget, run_script, write_results
from pyro_moe.cli import OneLineParser
from pyro_moe.data import load_dataset
from pyro_moe.registry import GUIDES
from pyro_moe.train import TrainConfig, fit


def parse_args() -> argparse.Namespace:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-seconds", type=float, default=None, help="training time cap")
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--hidden", default="500")
    p.add_argument("--limit", type=int, default=None, help="rows of every split (smoke runs)")
    p.add_argument("--per-component", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--name", default="dlgmm_extremes")
    return p.parse_args()


def extremes_figure(samples: torch.Tensor) -> Figure:
    """Rows: the first and the last component; 28 x 28 images."""
    n = samples.shape[1]
    fig = Figure(figsize=(n * 0.8, 1.9), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    for row, label in enumerate(("m = -1.5", "m = +1.5")):
        for j in range(n):
            axes[row, j].imshow(samples[row, j].reshape(28, 28), cmap="gray", vmin=0, vmax=1)
            axes[row, j].axis("off")
        axes[row, 0].set_title(label, fontsize=8, loc="left")
    return fig


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset("binarized-mnist", seed=args.seed, limit=args.limit)
    torch.manual_seed(args.seed)
    model = DLGMM(
        data.input_dim, num_components=5, latent_dim=25, hidden=args.hidden, prior_spread=1.5
    )
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=100,
        lr=3e-4,
        clip_norm=None,
        patience=30,
        seed=args.seed,
        progress=False,
    )
    began = time.perf_counter()
    guide = GUIDES["dlgmm"](model)
    result = fit(
        model, guide, NegativeELBO(), data, config, callbacks=[TimeBudget(args.max_seconds)]
    )
    samples = model.cluster_samples(args.per_component, args.seed)[[0, -1]]
    figure = f"{args.name}.png"
    extremes_figure(samples.cpu()).savefig(out / figure, dpi=90)
    usage = model.predict_cluster(data.test.x).bincount(minlength=5).tolist()
    summary = {
        "epochs": result.state.epoch,
        "train_seconds": round(result.state.wall_seconds, 1),
        "valid_loss": result.history[-1]["valid_loss"],
        "test_images_per_component": usage,
    }
    markdown = (
        "# Samples from the extreme components of a 5-component DLGMM (Fig. 2a/b)\n\n"
        f"Prior means -1.5 (top row) and +1.5 (bottom row); {summary['epochs']} epochs, "
        f"{summary['train_seconds']} s of training"
        + (f" (capped at {args.max_seconds:.0f} s: a short run)" if args.max_seconds else "")
        + f"; validation -ELBO {summary['valid_loss']:.2f}; binarized test images per most "
        f"probable component: {usage}.\n\n![{figure}]({figure})\n"
    )
    write_results(
        args.name,
        seed=args.seed,
        wall_seconds=time.perf_counter() - began,
        results={"protocol": vars(args), "summary": summary, "figure": figure},
        markdown=markdown,
        out_dir=out,
    )


if __name__ == "__main__":
    run_script(lambda: main(parse_args()))
