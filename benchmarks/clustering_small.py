"""VaDE and DMVAE against scikit-learn's KMeans and GaussianMixture on small data, several seeds.

Data: scikit-learn's 8x8 digits (all 1,797 images, K = 10) or the foundation's 3-arm spirals
(``--n`` points, K = 3). The clustering protocol of the VaDE paper: every model is fitted to all
rows without labels and scored on the same rows (accuracy under the best one-to-one map, NMI,
ARI). Per seed: KMeans (10 restarts), EM GaussianMixture with full and with diagonal covariances
(scikit-learn, 10 restarts each), then the recipe of benchmarks/clustering_mnist.py (denoising
autoencoder pretraining, GMM initialisation of the prior, ELBO with ``enum`` and the paper's
step decay) for VaDE and DMVAE, both from the same pretrained networks.

    python benchmarks/clustering_small.py --data digits --seeds 0,1,2,3,4
    python benchmarks/clustering_small.py --data spirals --seeds 0,1,2 --latent-dim 1 ...
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from clustering_mnist import add_recipe_arguments, pretrain_models, recipe_text, train_one
from pyro_moe.models.gmm import fit_em
from sklearn.cluster import KMeans

from pyro_moe import metrics
from pyro_moe.benchmarking import RESULTS, markdown_table, write_results
from pyro_moe.cli import OneLineParser
from pyro_moe.data import load_dataset
from pyro_moe.data.base import Dataset, Split

K = {"digits": 10, "spirals": 3}
DEFAULTS = {  # per data set: the network and the recipe's budget (overridable by the flags)
    "digits": {"hidden": "256-256", "latent_dim": 5, "pretrain_epochs": 300, "epochs": 100},
    "spirals": {"hidden": "64-64-64", "latent_dim": 2, "pretrain_epochs": 200, "epochs": 150},
}
BASELINES = ("kmeans", "em_full", "em_diag")


def parse_args() -> argparse.Namespace:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits", choices=sorted(DEFAULTS))
    p.add_argument("--n", type=int, default=None, help="rows (spirals: 1500; digits: all 1797)")
    p.add_argument("--hidden")
    p.add_argument("--latent-dim", type=int)
    p.add_argument("--models", default="vade,dmvae")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--name", default=None, help="results file name (clustering_DATA)")
    add_recipe_arguments(p)
    p.set_defaults(**DEFAULTS[p.parse_known_args()[0].data])
    args = p.parse_args()
    args.name = args.name or f"clustering_{args.data}"
    return args


def all_rows(args: argparse.Namespace, seed: int) -> Dataset:
    """The data set with every row in each split (fit and score on the same rows, no labels in
    training); the spirals are drawn with ``seed``."""
    options = {"n": args.n} if args.n else {}
    data = load_dataset(args.data, seed=seed, **options)
    parts = (data.train, data.valid, data.test)
    rows = Split(torch.cat([s.x for s in parts]), None, torch.cat([s.labels for s in parts]))
    return Dataset(data.name, "clustering", rows, rows, rows, description=data.description)


def baselines(data: Dataset, k: int, seed: int) -> dict[str, dict[str, float]]:
    """KMeans and EM GaussianMixture (full, diagonal) on the raw inputs, 10 restarts each."""
    x, truth = data.train.x.numpy(), data.train.labels
    fitted = {
        "kmeans": KMeans(k, n_init=10, random_state=seed).fit(x),
        "em_full": fit_em(x, k, "full", seed=seed, n_init=10),
        "em_diag": fit_em(x, k, "diag", seed=seed, n_init=10),
    }
    return {name: metrics.clustering_scores(truth, m.predict(x)) for name, m in fitted.items()}


def run_seed(args: argparse.Namespace, seed: int) -> dict:
    """Baselines, GMM initialisation, VaDE and DMVAE for one seed."""
    data = all_rows(args, seed)
    k = K[args.data]
    row = baselines(data, k, seed)
    options = {"num_components": k, "latent_dim": args.latent_dim, "hidden": args.hidden}
    start = time.perf_counter()
    models, info = pretrain_models(data, args, seed, args.models, **options)
    row["gmm_init"] = {**info["gmm_init"], "seconds": info["pretrain_seconds"]}
    args.seed = seed  # train_one seeds the ELBO run with it
    for name in args.models.split(","):
        result = train_one(name, models[name], data, args, verbose=False)
        row[name] = {**result, "seconds": result["train_seconds"]}
    row["seconds"] = round(time.perf_counter() - start, 1)
    row["rows"] = len(data.train)
    print(seed, {m: round(r["accuracy"], 4) for m, r in row.items() if isinstance(r, dict)})
    return row


def summary(per_seed: dict[int, dict]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation over seeds of each model's accuracy, NMI and ARI."""
    names = [m for m, r in next(iter(per_seed.values())).items() if isinstance(r, dict)]
    out = {}
    for name in names:
        stats = {}
        for key in ("accuracy", "nmi", "ari"):
            values = [row[name][key] for row in per_seed.values()]
            stats[key] = statistics.fmean(values)
            stats[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        stats["min_accuracy"] = min(row[name]["accuracy"] for row in per_seed.values())
        out[name] = stats
    return out


def report(args, per_seed, started) -> None:
    means = summary(per_seed)
    rows = [
        {
            "model": name,
            "accuracy": f"{s['accuracy']:.4f} ± {s['accuracy_sd']:.4f}",
            "min acc": s["min_accuracy"],
            "nmi": f"{s['nmi']:.4f} ± {s['nmi_sd']:.4f}",
            "ari": f"{s['ari']:.4f} ± {s['ari_sd']:.4f}",
        }
        for name, s in means.items()
    ]
    seeds = list(per_seed)
    per_seed_rows = [
        {"model": name, **{f"seed {sd}": per_seed[sd][name]["accuracy"] for sd in seeds}}
        for name in means
    ]
    md = (
        f"# Clustering {args.data}: VaDE / DMVAE vs KMeans and EM GaussianMixture\n\n"
        f"{per_seed[seeds[0]]['rows']} rows, K={K[args.data]}, every model fitted to all rows "
        f"and scored on them; seeds {','.join(map(str, seeds))}. Deep models: "
        f"{recipe_text(args)}. gmm_init: the diagonal GMM on the pretrained embedding (VaDE's "
        "starting point).\n\n"
        f"Mean ± sd over seeds:\n\n{markdown_table(rows, list(rows[0]))}\n\n"
        f"Accuracy per seed:\n\n{markdown_table(per_seed_rows, list(per_seed_rows[0]))}\n"
    )
    write_results(
        args.name,
        seed=seeds[0],
        wall_seconds=time.perf_counter() - started,
        results={"summary": means, "per_seed": per_seed, "recipe": recipe_text(args)},
        markdown=md,
        out_dir=args.out,
    )


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    per_seed = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        per_seed[seed] = run_seed(args, seed)
        report(args, per_seed, started)


if __name__ == "__main__":
    main()
