"""Mixture of VAE experts on MNIST: the post's loss vs gate estimators vs the hierarchical model.

The model of :mod:`pyro_moe.models.mixture_of_vaes` with the blog post's settings (10 experts,
latent 10, one hidden layer of 128 sigmoid units, decoder std 0.5, balancing weight 0.1, batch
100, Adam lr 1e-3), trained on the first ``--train-limit`` MNIST training images for ``--epochs``
epochs (the post: all 55,000 images, 100 epochs), by

* ``post-loss``: the post's loss, sum_k p_k loss_k + lambda Var(batch importance);
* ``enum``, ``reinforce``, ``rloo``, ``gumbel``, ...: the Pyro mixture's ELBO (with the balancing
  factor) through that gate estimator of the registry;
* ``hierarchical``: K x K2 experts (``--subcomponents``), both levels summed out by ``enum``.

Reported on the first ``--test-limit`` MNIST test images: the manager as an unsupervised
classifier (accuracy under the best one-to-one map of experts to digits, NMI), the test ELBO
(exact over the experts, one z sample per expert, without the balancing factor) per image, wall
time; per epoch the same scores and each expert's share of the test images. Figures: the post's
samples per expert per epoch (every row decodes the same code z, so rows differ only by training),
expert usage over training, and for the hierarchical model what each second-level expert captures
(the mean of the test images routed to it, its sample at z = 0, the majority digit).

    python benchmarks/mixture_of_vaes.py --train-limit 10000 --epochs 8
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pyro_moe.models.mixture_of_vaes import (
    ExpertHistory,
    MixtureOfVAEs,
    PostLoss,
    exact_elbo,
    subexpert_table,
)

from pyro_moe.benchmarking import RESULTS, fixed_budget, markdown_table, run_script, write_results
from pyro_moe.cli import OneLineParser
from pyro_moe.data import load_dataset
from pyro_moe.data.base import Split
from pyro_moe.experiment import build_estimator
from pyro_moe.plots.experts import plot_expert_samples, plot_expert_usage, plot_subexperts
from pyro_moe.registry import GUIDES
from pyro_moe.train import fit

#: methods that are not an estimator of the registry: name -> (objective builder, K2)
SPECIAL = {"post-loss": (lambda model: PostLoss(), 1)}
#: the VaDE / DMVAE rows of the clustering benchmark, read from its results for the table
CLUSTERING_RESULTS = RESULTS / "clustering_mnist.json"


def parse_args() -> argparse.Namespace:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="mnist", help="mnist or digits")
    p.add_argument("--train-limit", type=int, default=10_000, help="training images used")
    p.add_argument("--valid-limit", type=int, default=2_000, help="validation images used")
    p.add_argument("--test-limit", type=int, default=10_000, help="test images scored")
    p.add_argument("--methods", default="post-loss,enum,reinforce,rloo,gumbel,hierarchical")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--components", type=int, default=10)
    p.add_argument("--subcomponents", type=int, default=2, help="K2 of the hierarchical model")
    p.add_argument("--latent-dim", type=int, default=10)
    p.add_argument("--hidden", default="128")
    p.add_argument("--balance", type=float, default=0.1)
    p.add_argument("--sample-epochs", type=int, default=8, help="rows of the samples figure")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--name", default="mixture_of_vaes", help="results file name")
    return p.parse_args()


def head(split: Split, limit: int) -> Split:
    """The first ``limit`` rows of a split."""
    cut = slice(0, limit)
    return Split(split.x[cut], None if split.y is None else split.y[cut], split.labels[cut])


def load(args: argparse.Namespace):
    data = load_dataset(args.data, seed=args.seed)
    return type(data)(
        data.name,
        data.task,
        head(data.train, args.train_limit),
        head(data.valid, args.valid_limit),
        head(data.test, args.test_limit),
        data.num_classes,
        data.description,
        data.meta,
    )


def method_spec(name: str, args: argparse.Namespace) -> tuple[Any, int]:
    """(objective builder, K2) of a method: a special objective, ``hierarchical`` (enum over both
    levels) or an estimator of the registry by name."""
    if name in SPECIAL:
        return SPECIAL[name]
    if name == "hierarchical":
        return (lambda model: build_estimator("enum", model)), args.subcomponents
    return (lambda model: build_estimator(name, model)), 1


def caption(entry: dict[str, Any]) -> str:
    """The majority digit of a sub-expert and how many of its images carry it."""
    if not entry["count"]:
        return "empty"
    digit, count = max(entry["digits"].items(), key=lambda item: item[1])
    return f"{digit}: {count}/{entry['count']}"


def train_one(name: str, data, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    build, k2 = method_spec(name, args)
    torch.manual_seed(args.seed)
    model = MixtureOfVAEs(
        data.input_dim,
        num_components=args.components,
        latent_dim=args.latent_dim,
        hidden=args.hidden,
        balance=args.balance,
        num_subcomponents=k2,
    )
    guide = GUIDES["mixture-of-vaes"](model)
    tracker = ExpertHistory(model, data.test.x, data.test.labels, args.seed)
    tracker.record(0)
    config = fixed_budget(args.epochs, args.batch_size, args.lr, args.seed)
    began = time.perf_counter()
    fit(model, guide, build(model), data, config, callbacks=[tracker])
    seconds = time.perf_counter() - began
    final = tracker.rows[-1]
    result = {
        "accuracy": final["accuracy"],
        "nmi": final["nmi"],
        "ari": final["ari"],
        "usage_entropy": final["usage_entropy"],
        "test_elbo": exact_elbo(model, guide, data.test.x),
        "train_seconds": round(seconds, 1),
        "experts": model.num_experts,
        "curve": tracker.rows,
        "usage": [[round(u, 4) for u in row] for row in tracker.usage],
    }
    save_figures(name, model, tracker, data, args, out, result)
    return result


def save_figures(name, model, tracker, data, args, out: Path, result) -> None:
    epochs = list(range(len(tracker.samples)))
    rows = np.unique(np.linspace(0, len(epochs) - 1, min(args.sample_epochs, len(epochs))).round())
    keep = [int(r) for r in rows]
    samples = np.stack([tracker.samples[r].numpy() for r in keep])
    fig = plot_expert_samples(samples, keep, f"{name}: samples of each expert after each epoch")
    fig.savefig(out / f"{args.name}_{name}_samples.png", dpi=80)
    usage = np.array(tracker.usage)
    fig = plot_expert_usage(usage, epochs, f"{name}: share of the test images per expert")
    fig.savefig(out / f"{args.name}_{name}_usage.png", dpi=80)
    if model.hierarchical:
        table = subexpert_table(model, data.test.x, data.test.labels)
        k, k2 = model.num_components, model.subexperts
        means = torch.stack([e["mean"] for e in table]).reshape(k, k2, -1).numpy()
        prototypes = torch.stack([e["prototype"] for e in table]).reshape(k, k2, -1).numpy()
        captions = [[caption(table[c * k2 + s]) for s in range(k2)] for c in range(k)]
        fig = plot_subexperts(means, prototypes, captions)
        fig.savefig(out / f"{args.name}_{name}_subexperts.png", dpi=80)
        result["subexperts"] = [
            {key: e[key] for key in ("c", "s", "count", "digits")} for e in table
        ]


def clustering_rows() -> list[dict[str, Any]]:
    """VaDE and DMVAE as the clustering benchmark measured them (its own protocol: all 70,000
    images, pretraining, a larger network)."""
    if not CLUSTERING_RESULTS.is_file():
        return []
    results = json.loads(CLUSTERING_RESULTS.read_text())["results"]
    return [
        {
            "method": f"{name} (clustering_mnist.md)",
            "accuracy": results[name]["accuracy"],
            "nmi": results[name]["nmi"],
            "train s": results[name].get("train_seconds", ""),
        }
        for name in ("vade", "dmvae")
        if isinstance(results.get(name), dict) and "accuracy" in results[name]
    ]


COLUMNS = ["method", "accuracy", "nmi", "test ELBO / image", "usage entropy", "experts", "train s"]


def markdown(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    rows = [
        {
            "method": name,
            "accuracy": r["accuracy"],
            "nmi": r["nmi"],
            "test ELBO / image": round(r["test_elbo"], 1),
            "usage entropy": r["usage_entropy"],
            "experts": r["experts"],
            "train s": r["train_seconds"],
        }
        for name, r in results.items()
    ]
    rows += clustering_rows()
    lines = [
        "# Mixture of VAE experts on MNIST",
        "",
        f"Data {args.data}: the first {args.train_limit} training images, {args.epochs} epochs "
        f"(batch {args.batch_size}, Adam lr {args.lr}), validation on {args.valid_limit} images; "
        f"scored on the first {args.test_limit} test images. K = {args.components}, latent "
        f"{args.latent_dim}, hidden {args.hidden} (sigmoid), decoder std 0.5, balancing weight "
        f"{args.balance}; hierarchical: {args.components} x {args.subcomponents} experts, "
        "enum over both levels. The post trains 100 epochs on 55,000 images.",
        "",
        markdown_table(rows, COLUMNS),
        "",
        f"usage entropy: of the mean share of the {args.components} top-level experts on the "
        f"test images (log {args.components} = {np.log(args.components):.3f}: even use).",
    ]
    for name, r in results.items():
        curve = ", ".join(f"{row['accuracy']:.3f}" for row in r["curve"])
        lines += ["", f"Accuracy after each epoch, {name} (epoch 0 = at initialisation): {curve}"]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load(args)
    began = time.perf_counter()
    results = {}
    for name in args.methods.split(","):
        results[name] = train_one(name, data, args, out)
        r = results[name]
        print(f"{name}: accuracy {r['accuracy']:.4f} nmi {r['nmi']:.4f} elbo {r['test_elbo']:.1f}")
    write_results(
        args.name,
        seed=args.seed,
        wall_seconds=time.perf_counter() - began,
        results={"protocol": vars(args), "methods": results},
        markdown=markdown(results, args),
        out_dir=out,
    )


if __name__ == "__main__":
    run_script(lambda: main(parse_args()))
