"""VaDE and DMVAE clustering of MNIST (the VaDE paper's protocol, scaled to the time budget).

Protocol of Jiang et al. 2017 ("Variational Deep Embedding", IJCAI): all 70,000 MNIST images,
Bernoulli decoder, encoder 784-500-500-2000-10 (decoder mirrored), K = 10, autoencoder
pretraining, a GMM fitted to the embedding initialises the prior, then the ELBO; accuracy (best
one-to-one map), reported on the same 70,000 images. The paper trains 300 epochs (batch 100,
Adam lr 0.002 with decay); this script runs ``--pretrain-epochs`` + ``--epochs`` and states it.

Both models start from the same pretrained autoencoder and GMM; DMVAE's q(c|x) network is
warm-started on the GMM's responsibilities. Both train with ``enum`` (the cluster summed out
exactly). Written: accuracy / NMI / ARI on all training rows, a learning curve (accuracy on the
10,000 test images after every epoch), wall times, and q(c|x) inference time per 10,000 images
(VaDE: encoder + p(c|z); DMVAE: the cluster network), the seed's "faster inference" claim.

    python benchmarks/clustering_mnist.py --pretrain-epochs 10 --epochs 20
    python benchmarks/clustering_mnist.py --data digits --hidden 64-64 --latent-dim 10 ...
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from pyro_moe.models.dmvae import DMVAE
from pyro_moe.models.vade import VaDE, pretrain_and_init

from pyro_moe import metrics
from pyro_moe.benchmarking import RESULTS, markdown_table, write_results
from pyro_moe.data import load_dataset
from pyro_moe.experiment import build_estimator
from pyro_moe.registry import GUIDES
from pyro_moe.train import TrainConfig, fit

PUBLISHED = {"vade": 0.9446}  # Jiang et al. 2017, Table 2 (MNIST accuracy)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="mnist", help="mnist (split 'all') or digits")
    p.add_argument("--limit", type=int, default=None, help="keep the first rows (smoke runs)")
    p.add_argument("--hidden", default="500-500-2000")
    p.add_argument("--latent-dim", type=int, default=10)
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--models", default="vade,dmvae")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared CPU)")
    p.add_argument("--out", default=str(RESULTS))
    return p.parse_args()


def load(args: argparse.Namespace):
    if args.data == "mnist":
        options = {"split": "all"}
        if args.limit:
            options["limit"] = args.limit
        return load_dataset("mnist", seed=args.seed, **options)
    return load_dataset(args.data, seed=args.seed, **({"n": args.limit} if args.limit else {}))


def accuracy_callback(split):
    def callback(trainer) -> dict[str, float]:
        with torch.random.fork_rng(devices=[]):
            predicted = trainer.model.predict_cluster(split.x)
        return {
            f"curve_{k}": v for k, v in metrics.clustering_scores(split.labels, predicted).items()
        }

    return callback


def train_one(name, model, data, args, started) -> dict:
    guide = GUIDES[name](model)
    estimator = build_estimator("enum", model)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=None,
        restore_best=False,
        seed=args.seed,
        progress=False,
    )
    start = time.perf_counter()
    result = fit(model, guide, estimator, data, config, callbacks=[accuracy_callback(data.valid)])
    wall = time.perf_counter() - start
    x, labels = data.train.x, data.train.labels
    scores = metrics.clustering_scores(labels, model.predict_cluster(x))
    timing_rows = x[: min(len(x), 10_000)]
    infer = model.cluster_log_probs
    return {
        **scores,
        "train_seconds": round(wall, 1),
        "epochs": result.state.epoch,
        "qc_seconds_per_10k": metrics.inference_seconds_per_10k(infer, timing_rows),
        "curve": [
            {
                "epoch": h["epoch"],
                "valid_loss": h["valid_loss"],
                "accuracy": h["curve_accuracy"],
                "nmi": h["curve_nmi"],
            }
            for h in result.history
        ],
        "published_accuracy": PUBLISHED.get(name),
    }


def report(args, data, results, started, out) -> None:
    rows = [
        {
            "model": name,
            "accuracy": r["accuracy"],
            "nmi": r["nmi"],
            "ari": r["ari"],
            "epochs": r.get("epochs", 0),
            "train s": r.get("train_seconds", 0.0),
            "q(c|x) s / 10k": r.get("qc_seconds_per_10k", ""),
            "published acc": r.get("published_accuracy") or "",
        }
        for name, r in results.items()
        if isinstance(r, dict) and "accuracy" in r
    ]
    protocol = (
        f"Data {data.name} ({len(data.train)} training rows, scored on all of them), "
        f"hidden {args.hidden}, latent {args.latent_dim}, K=10, AE pretraining "
        f"{args.pretrain_epochs} epochs, then {args.epochs} ELBO epochs (enum), batch "
        f"{args.batch_size}, Adam lr {args.lr} (no decay). Paper: 300 epochs."
    )
    curves = "\n\n".join(
        f"Learning curve, {name} (accuracy on the 10k test images after each epoch): "
        + ", ".join(f"{c['accuracy']:.4f}" for c in r["curve"])
        for name, r in results.items()
        if isinstance(r, dict) and "curve" in r
    )
    md = (
        "# Deep clustering of MNIST: VaDE vs DMVAE\n\n"
        f"{protocol}\n\n{markdown_table(rows, list(rows[0]) if rows else ['model'])}\n\n"
        f"{curves}\n\nPublished: VaDE 94.46% accuracy on MNIST (Jiang et al. 2017, Table 2).\n"
    )
    results["protocol"] = protocol
    write_results(
        "clustering_mnist",
        seed=args.seed,
        wall_seconds=time.perf_counter() - started,
        results=results,
        markdown=md,
        out_dir=out,
    )


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load(args)
    likelihood = "bernoulli" if args.data == "mnist" else "gaussian"
    options = {
        "num_components": 10,
        "latent_dim": args.latent_dim,
        "hidden": args.hidden,
        "likelihood": likelihood,
    }
    torch.manual_seed(args.seed)
    vade = VaDE(data.input_dim, **options)
    start = time.perf_counter()
    init = pretrain_and_init(
        vade, data.train.x, epochs=args.pretrain_epochs, batch_size=args.batch_size, seed=args.seed
    )
    results: dict = {
        "pretrain_seconds": round(time.perf_counter() - start, 1),
        "pretrain_losses": init["pretrain_losses"],
        "gmm_init": metrics.clustering_scores(
            data.train.labels, vade.predict_cluster(data.train.x)
        ),
    }
    models = {"vade": vade}
    if "dmvae" in args.models:
        dmvae = DMVAE(data.input_dim, **options)
        state = {k: v for k, v in vade.state_dict().items() if k != "pi_logits"}
        dmvae.load_state_dict(state, strict=False)
        dmvae.init_cluster_net(data.train.x, seed=args.seed, epochs=2)
        models["dmvae"] = dmvae
    snapshot = copy.deepcopy(models)
    for name in args.models.split(","):
        results[name] = train_one(name, snapshot[name], data, args, started)
        report(args, data, results, started, out)
        print(name, {k: v for k, v in results[name].items() if k != "curve"}, flush=True)


if __name__ == "__main__":
    main()
