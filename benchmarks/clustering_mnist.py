"""VaDE and DMVAE clustering of MNIST (the VaDE paper's protocol, scaled to the time budget).

Protocol of Jiang et al. 2017 ("Variational Deep Embedding", IJCAI): all 70,000 MNIST images,
Bernoulli decoder, encoder 784-500-500-2000-10 (decoder mirrored), K = 10, autoencoder
pretraining, a GMM fitted to the embedding initialises the prior, then the ELBO; accuracy (best
one-to-one map), reported on the same 70,000 images. The paper trains 300 epochs (batch 100,
Adam lr 0.002, times 0.9 every 10 epochs); this script runs ``--pretrain-epochs`` + ``--epochs``
(each ELBO run optionally cut at ``--budget-minutes``) and states what it ran.

Both models start from the same pretrained autoencoder and prior start (``--init``; by default
N2D's: UMAP of the embedding to 10 dimensions, a full-covariance GMM there, moment-matched into
the diagonal prior); DMVAE's q(c|x) network is warm-started on the start's responsibilities.
Both train with ``enum`` (the cluster summed out exactly). Written: accuracy / NMI / ARI on all
training rows, a learning curve (accuracy on the 10,000 test images after every epoch), wall
times, and q(c|x) inference time per 10,000 images (VaDE: encoder + p(c|z); DMVAE: the cluster
network), Singh et al.'s "faster inference" claim (``--time-inference ROUNDS`` times that
alone, on untrained networks of the same sizes).

Each ELBO run is checkpointed in ``--runs`` (``RUNS/MODEL_seedS``): a run cut by a signal or by
``--budget-minutes`` continues where it stopped when the same command runs again (a larger
budget or more ``--epochs`` extends it; ``--budget-minutes`` counts the training time of every
part), so the paper's 300 epochs can span several sittings; the result file of an earlier part
stays as it is until the resumed run writes its own at the end.

    python benchmarks/clustering_mnist.py --seed 0        # the whole recipe, one seed
    python benchmarks/clustering_mnist.py --seed 0 --pretrain-only --save-autoencoder ae0.pt
    python benchmarks/clustering_mnist.py --seed 0 --models vade --autoencoder ae0.pt \
        --budget-minutes 27 --name vade_seed0 --out benchmarks/results/clustering_mnist
    python benchmarks/clustering_mnist.py --assemble benchmarks/results/clustering_mnist
    python benchmarks/clustering_mnist.py --data digits --hidden 64-64 --latent-dim 10 ...

The recipe pieces (:func:`pretrain_models`, :func:`train_one`) are shared with
``benchmarks/clustering_small.py`` (digits and spirals over several seeds).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from pyro_moe.models.dmvae import DMVAE
from pyro_moe.models.gmm import fit_em
from pyro_moe.models.vade import PRIOR_INITS, VaDE, lr_step_decay, pretrain_and_init
from sklearn.cluster import KMeans

from pyro_moe import metrics
from pyro_moe.benchmarking import (
    RESULTS,
    TimeBudget,
    add_run_folder_arguments,
    check_run_folder,
    fixed_budget,
    markdown_table,
    run_script,
    settle_run_folder_arguments,
    write_results,
)
from pyro_moe.checkpoint import load_checkpoint, load_module_state, save_checkpoint
from pyro_moe.cli import OneLineParser
from pyro_moe.data import load_dataset
from pyro_moe.errors import ConfigError, DataError
from pyro_moe.experiment import build_estimator
from pyro_moe.registry import GUIDES
from pyro_moe.runs import RunFolder
from pyro_moe.train import fit

PUBLISHED = {"vade": 0.9446}  # Jiang et al. 2017, Table 2 (MNIST accuracy)


def parse_args() -> argparse.Namespace:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="mnist", help="mnist (split 'all') or digits")
    p.add_argument("--limit", type=int, default=None, help="keep the first rows (smoke runs)")
    p.add_argument("--hidden", default="500-500-2000")
    p.add_argument("--latent-dim", type=int, default=10)
    add_recipe_arguments(p)
    # MNIST's recipe: 30 pretraining epochs (the N2D start reached 0.97 there), the paper's 300
    # ELBO epochs, Adam lr 5e-4 (the paper's 2e-3 lost accuracy against the start; see the notes
    # of benchmarks/results/clustering_mnist.md)
    p.set_defaults(pretrain_epochs=30, epochs=300, lr=5e-4)
    p.add_argument("--models", default="vade,dmvae")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--name", default="clustering_mnist", help="results file name")
    add_run_folder_arguments(p)
    p.add_argument(
        "--time-inference",
        type=int,
        default=None,
        metavar="ROUNDS",
        help="only time q(c|x) of untrained VaDE and DMVAE (same networks) on 10,000 rows, "
        "alternating for ROUNDS rounds, and write NAME_inference.md",
    )
    p.add_argument(
        "--assemble",
        default=None,
        help="only build NAME.md from the per-run files in this folder (pretrain_seed*, "
        "vade_seed*, dmvae_seed*.json)",
    )
    args = p.parse_args()
    settle_run_folder_arguments(p, args, args.name)
    return args


def add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    """The training recipe's options (shared with clustering_small.py)."""
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument("--pretrain-batch-size", type=int, default=256)
    p.add_argument("--pretrain-lr", type=float, default=1e-3)
    p.add_argument("--ae-noise", type=float, default=0.2, help="denoising AE input dropout")
    p.add_argument("--gmm-restarts", type=int, default=5, help="EM restarts for the prior init")
    p.add_argument(
        "--init",
        default="umap",
        choices=PRIOR_INITS,
        help="prior start (EM or N2D)",
    )
    p.add_argument("--autoencoder", default=None, help="start from this pretrained autoencoder")
    p.add_argument("--save-autoencoder", default=None, help="write the pretrained autoencoder")
    p.add_argument("--pretrain-only", action="store_true", help="stop after the prior's start")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lr-decay", type=float, default=0.9, help="lr factor every --decay-every")
    p.add_argument("--decay-every", type=int, default=10)
    p.add_argument("--budget-minutes", type=float, default=None, help="cut each ELBO run")
    p.add_argument("--pretrain-minutes", type=float, default=None, help="cut the pretraining")
    p.add_argument("--cluster-net-epochs", type=int, default=5, help="DMVAE q(c|x) warm start")


INIT_TEXT = {
    "gmm": lambda a: f"diagonal GMM init (best of {a.gmm_restarts} EM restarts)",
    "gmm-full": lambda a: (
        f"full-covariance GMM init (best of {a.gmm_restarts} EM restarts, moment-matched "
        "diagonal prior)"
    ),
    "umap": lambda a: "N2D init (UMAP to 10 dims, full GMM, moment-matched diagonal prior)",
}


def recipe_text(args: argparse.Namespace) -> str:
    """One sentence describing the recipe that ran."""
    minutes = getattr(args, "pretrain_minutes", None)
    pretrain_cut = f" (cut at {minutes} min)" if minutes else ""
    return (
        f"hidden {args.hidden}, latent {args.latent_dim}; denoising AE pretraining "
        f"{args.pretrain_epochs} epochs{pretrain_cut} (input dropout {args.ae_noise}, batch "
        f"{args.pretrain_batch_size}, Adam lr {args.pretrain_lr}), {INIT_TEXT[args.init](args)}, "
        f"then up to {args.epochs} ELBO epochs (enum), batch "
        f"{args.batch_size}, Adam lr {args.lr} times {args.lr_decay} every {args.decay_every} "
        f"epochs" + (f", each run cut at {args.budget_minutes} min" if args.budget_minutes else "")
    )


def load(args: argparse.Namespace):
    if args.data == "mnist":
        options = {"split": "all"}
        if args.limit:
            options["limit"] = args.limit
        return load_dataset("mnist", seed=args.seed, **options)
    return load_dataset(args.data, seed=args.seed, **({"n": args.limit} if args.limit else {}))


CURVE_SCORES = ("accuracy", "nmi", "ari")


def accuracy_callback(split, verbose: bool = True, validated: bool = False):
    """A fit callback: clustering scores on ``split`` after each epoch (printed if ``verbose``).

    ``validated``: ``split`` is the trainer's validation split, whose scores the epoch's
    validation has already computed (``valid_accuracy``, ...); they are copied, not computed
    again (a second pass of the encoder over the split)."""

    def callback(trainer) -> dict[str, float]:
        done = {k: trainer.last_validation.get(f"valid_{k}") for k in CURVE_SCORES}
        if validated and None not in done.values():
            scores = done
        else:
            with torch.random.fork_rng(devices=[]):
                predicted = trainer.model.predict_cluster(split.x)
            scores = metrics.clustering_scores(split.labels, predicted)
        state = trainer.state
        if verbose:
            print(
                f"epoch {state.epoch} {state.wall_seconds:.0f}s accuracy {scores['accuracy']:.4f}"
            )
        return {f"curve_{k}": v for k, v in scores.items()}

    return callback


#: the options a checkpointed ELBO run depends on (not the epoch cap or the time budget, which a
#: resumed run may raise)
PROTOCOL_OPTIONS = (
    *("data", "limit", "hidden", "latent_dim", "pretrain_epochs", "pretrain_batch_size"),
    *("pretrain_lr", "ae_noise", "gmm_restarts", "init", "autoencoder", "batch_size", "lr"),
    *("lr_decay", "decay_every", "cluster_net_epochs", "seed"),
)


def run_folder(name: str, args: argparse.Namespace) -> tuple[Path | None, bool, dict]:
    """The ELBO run's checkpointed folder ``RUNS/NAME_seedS`` (None without ``--runs``), whether
    it holds a run to resume, and the protocol recorded in it."""
    expected = {"model": name, **{k: getattr(args, k, None) for k in PROTOCOL_OPTIONS}}
    if getattr(args, "runs", None) is None:
        return None, False, expected
    run = RunFolder(Path(args.runs) / f"{name}_seed{args.seed}")
    return run.path, check_run_folder(run, expected), expected


def train_one(name, model, data, args, verbose: bool = True) -> dict:
    """Fit ``model`` (VaDE or DMVAE, after :func:`pretrain_models`) with ``enum`` and the recipe's
    schedule; scores on every training row, the learning curve and the q(c|x) timing. With
    ``--runs`` the run is checkpointed (every epoch, or ``--checkpoint-every`` steps) and a run
    folder holding a cut run resumes it: the checkpoint's model, prior and Adam state (with its
    decayed learning rate) replace the freshly pretrained start."""
    guide = GUIDES[name](model)
    estimator = build_estimator("enum", model)
    config = fixed_budget(
        args.epochs,
        args.batch_size,
        args.lr,
        args.seed,
        restore_best=False,
        checkpoint_every=getattr(args, "checkpoint_every", None),
    )
    budget = args.budget_minutes * 60 if args.budget_minutes else None
    callbacks = [
        accuracy_callback(data.valid, verbose, validated=True),
        lr_step_decay(args.lr_decay, args.decay_every),
        TimeBudget(budget),
    ]
    path, resume, expected = run_folder(name, args)
    info = {"model": name, "protocol": expected}
    result = fit(model, guide, estimator, data, config, path, resume, info, callbacks)
    wall = result.state.wall_seconds  # the training loop's, over every resumed part
    x, labels = data.train.x, data.train.labels
    scores = metrics.clustering_scores(labels, model.predict_cluster(x))
    timing_rows = x[: min(len(x), 10_000)]
    infer = model.cluster_log_probs
    return {
        **scores,
        "train_seconds": round(wall, 1),
        "epochs": result.state.epoch,
        "stop_reason": result.state.stop_reason,
        "qc_seconds_per_10k": metrics.inference_seconds_per_10k(infer, timing_rows),
        "curve": [
            {
                "epoch": h["epoch"],
                "valid_loss": h["valid_loss"],
                "accuracy": h["curve_accuracy"],
                "nmi": h["curve_nmi"],
                "ari": h["curve_ari"],
                "lr": h["lr"],
                "wall_seconds": h["wall_seconds"],
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
            "q(c\\|x) s / 10k": r.get("qc_seconds_per_10k", ""),
            "published acc": r.get("published_accuracy") or "",
        }
        for name, r in results.items()
        if isinstance(r, dict) and "accuracy" in r
    ]
    protocol = (
        f"Data {data.name} ({len(data.train)} training rows, scored on all of them), K=10, "
        f"{recipe_text(args)}. Paper: 300 epochs."
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
        args.name,
        seed=args.seed,
        wall_seconds=time.perf_counter() - started,
        results=results,
        markdown=md,
        out_dir=out,
    )


def pretrain_models(data, args, seed: int, names: str = "vade,dmvae", **options) -> tuple:
    """The recipe up to the ELBO: build VaDE, pretrain it (denoising AE, or load ``--autoencoder``)
    and start its prior (``--init``), and give DMVAE the same networks and prior (its q(c|x)
    network warm-started on the start's responsibilities; ``dmvae_start`` scores it). Returns
    ``({name: model}, info)``; ``info`` holds the pretraining's losses and seconds and the
    start's scores on every training row: ``gmm_init``
    (VaDE's p(c | z = mu(x)) under the started prior), ``start_clusters`` (the init's own clusters)
    and, on mu(x), ``kmeans_embedding`` (10 restarts) and ``gmm_diag_embedding`` /
    ``gmm_full_embedding`` (EM, ``--gmm-restarts`` restarts)."""
    torch.manual_seed(seed)
    vade = VaDE(data.input_dim, **options)
    x, labels = data.train.x, data.train.labels
    start = time.perf_counter()
    if getattr(args, "autoencoder", None):
        state = load_checkpoint(args.autoencoder, required=("model",))["model"]
        load_module_state(vade, state, "autoencoder", args.autoencoder)
        init = {"pretrain_losses": [], **vade.init_prior(x, seed, args.gmm_restarts, args.init)}
    else:
        init = pretrain_and_init(
            vade,
            x,
            epochs=args.pretrain_epochs,
            batch_size=args.pretrain_batch_size,
            lr=args.pretrain_lr,
            seed=seed,
            n_init=args.gmm_restarts,
            noise=args.ae_noise,
            max_seconds=args.pretrain_minutes * 60 if args.pretrain_minutes else None,
            init=args.init,
        )
    if getattr(args, "save_autoencoder", None):
        save_checkpoint(args.save_autoencoder, {"model": vade.state_dict()})
    z = vade.embed(x).numpy()
    kmeans = KMeans(vade.num_components, n_init=10, random_state=seed).fit(z)
    em = {c: fit_em(z, vade.num_components, c, seed, args.gmm_restarts) for c in ("diag", "full")}
    info = {
        "pretrain_seconds": round(time.perf_counter() - start, 1),
        "pretrain_losses": init["pretrain_losses"],
        "pretrain_epochs_run": len(init["pretrain_losses"]),
        "gmm_init": metrics.clustering_scores(labels, vade.predict_cluster(x)),
        "start_clusters": metrics.clustering_scores(labels, init["labels"]),
        "kmeans_embedding": metrics.clustering_scores(labels, kmeans.labels_),
        **{
            f"gmm_{c}_embedding": metrics.clustering_scores(labels, gmm.predict(z))
            for c, gmm in em.items()
        },
    }
    models = {"vade": vade}
    if "dmvae" in names:
        dmvae = DMVAE(data.input_dim, **options)
        state = {k: v for k, v in vade.state_dict().items() if k != "pi_logits"}
        dmvae.load_state_dict(state, strict=False)
        dmvae.init_cluster_net(x, seed, args.cluster_net_epochs, targets=init["resp"])
        info["dmvae_start"] = metrics.clustering_scores(labels, dmvae.predict_cluster(x))
        models["dmvae"] = dmvae
    return copy.deepcopy(models), info


START_ROWS = {
    "kmeans_embedding": "k-means on mu(x)",
    "gmm_diag_embedding": "diagonal GMM on mu(x)",
    "gmm_full_embedding": "full GMM on mu(x)",
    "start_clusters": "the init's own clusters",
    "gmm_init": "VaDE's p(c\\|z) at the start",
    "dmvae_start": "DMVAE's q(c\\|x) at the start",
}


def mean_spread(values: list[float]) -> str:
    """``mean +- sd (n)`` (sample standard deviation; just the value for one)."""
    if len(values) == 1:
        return f"{values[0]:.4f} (1)"
    return f"{np.mean(values):.4f} +- {np.std(values, ddof=1):.4f} ({len(values)})"


MODELS = ("vade", "dmvae")


def elbo_runs(runs: dict[str, dict[int, dict]]) -> list[tuple[str, str]]:
    """``(kind, model)`` for every group of ELBO runs: the kind is the file-name prefix before
    ``_seed`` (``vade``, or a variant such as ``vade_lr1e-4``), the model the one its records
    hold; VaDE's groups first."""
    found = []
    for kind, by_seed in runs.items():
        held = {m for record in by_seed.values() for m in MODELS if m in record["results"]}
        found += [(kind, model) for model in held]
    return sorted(found, key=lambda pair: (MODELS.index(pair[1]), pair[0]))


def start_scores(runs: dict[str, dict[int, dict]]) -> dict[int, dict]:
    """Per seed, the scores of the start before any ELBO epoch (:data:`START_ROWS`): from the
    pretraining-only record, overridden by those the ELBO runs recomputed from the same
    autoencoder (VaDE's groups, then DMVAE's), since those are the starts the ELBO trained
    from."""
    starts: dict[int, dict] = {}
    others = sorted((k for k in runs if k != "pretrain"), key=lambda k: (k.startswith("dmvae"), k))
    for kind in ["pretrain", *others]:
        for seed, record in runs.get(kind, {}).items():
            found = {k: v for k, v in record["results"].items() if k in START_ROWS}
            starts.setdefault(seed, {}).update(found)
    return dict(sorted(starts.items()))


def assemble(folder: Path, out: Path, name: str) -> None:
    """The table over seeds from the per-run result files in ``folder``: the starts (pretraining
    only) and the ELBO runs, mean and spread, best seed, and a learning-curve figure. A
    ``NOTES.md`` in ``folder`` (prose written by hand: the recipe's evidence, what is short) is
    appended as it is."""
    import json

    runs = {}
    for path in sorted(folder.glob("*_seed*.json")):
        kind, seed = path.stem.rsplit("_seed", 1)
        runs.setdefault(kind, {})[int(seed)] = json.loads(path.read_text())
    if not runs:
        raise DataError(f"no per-run result files (*_seed*.json) in {folder}")
    starts = start_scores(runs)
    out.mkdir(parents=True, exist_ok=True)
    start_rows = [
        {
            "start": label,
            "accuracy": mean_spread([r[key]["accuracy"] for r in starts.values() if key in r]),
            "seeds": ", ".join(str(s) for s, r in starts.items() if key in r),
        }
        for key, label in START_ROWS.items()
        if any(key in r for r in starts.values())
    ]
    model_rows, curves = [], {}
    for kind, model in elbo_runs(runs):
        done = {s: r["results"][model] for s, r in runs[kind].items() if model in r["results"]}
        if not done:
            continue
        accuracy = [d["accuracy"] for d in done.values()]
        model_rows.append(
            {
                "model": kind,
                "accuracy": mean_spread(accuracy),
                "best seed": f"{max(accuracy):.4f}",
                "nmi": mean_spread([d["nmi"] for d in done.values()]),
                "ari": mean_spread([d["ari"] for d in done.values()]),
                "epochs": ", ".join(str(d["epochs"]) for d in done.values()),
                "train s": ", ".join(f"{d['train_seconds']:.0f}" for d in done.values()),
                "q(c\\|x) s / 10k": mean_spread([d["qc_seconds_per_10k"] for d in done.values()]),
                "published": PUBLISHED.get(model, ""),
            }
        )
        curves[kind] = {s: [c["accuracy"] for c in d["curve"]] for s, d in done.items()}
    figure = plot_curves(curves, out / f"{name}.png") if curves else None
    commands = "\n".join(f"- `{r['command']}`" for k in runs.values() for r in k.values())
    machines = sorted({r["machine"] for k in runs.values() for r in k.values()})
    md = (
        "# Deep clustering of MNIST: VaDE vs DMVAE over seeds\n\n"
        "Every score is on all 70,000 MNIST images. Accuracy: mean +- sample sd (number of "
        "seeds).\n\n## The start (before any ELBO epoch)\n\n"
        f"{markdown_table(start_rows, ['start', 'accuracy', 'seeds'])}\n\n"
        "## After the ELBO\n\n"
        + (markdown_table(model_rows, list(model_rows[0])) if model_rows else "(no ELBO runs)")
        + (f"\n\n![learning curves]({figure.name})" if figure else "")
        + f"\n\nPublished: VaDE 94.46% accuracy (Jiang et al. 2017, Table 2).\n\n"
        f"Runs ({len(machines)} machine description(s): {'; '.join(machines)}):\n\n{commands}\n"
    )
    notes = folder / "NOTES.md"
    if notes.is_file():
        md += "\n" + notes.read_text(encoding="utf-8").strip() + "\n"
    results = {"starts": start_rows, "models": model_rows, "curves": curves}
    write_results(name, seed=-1, wall_seconds=0.0, results=results, markdown=md, out_dir=out)


def plot_curves(curves: dict[str, dict[int, list[float]]], path: Path) -> Path:
    """Accuracy on the 10k MNIST test images (also among the scored training rows) after each
    ELBO epoch, one line per model and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for number, (kind, by_seed) in enumerate(curves.items()):
        colour = f"C{number}"
        for seed, values in by_seed.items():
            ax.plot(range(1, len(values) + 1), values, color=colour, label=f"{kind} seed {seed}")
    ax.axhline(PUBLISHED["vade"], color="grey", ls="--", label="VaDE published")
    ax.set(xlabel="ELBO epoch", ylabel="clustering accuracy", title="MNIST test images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def time_inference(args: argparse.Namespace, data, options: dict, out: Path) -> None:
    """q(c|x) seconds per 10,000 rows of VaDE (encoder mean, then p(c|z)) and DMVAE (its cluster
    network) with the same networks, untrained (the time does not depend on the weights): each
    round times both (best of 3 passes each, the order alternating between rounds), and the
    result is the median over rounds of each model's time and of their ratio."""
    if args.time_inference < 1:
        raise ConfigError(f"--time-inference needs at least 1 round, got {args.time_inference}")
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    models = {"vade": VaDE(data.input_dim, **options), "dmvae": DMVAE(data.input_dim, **options)}
    rows = data.train.x[: min(len(data.train), 10_000)]
    rounds = []
    for i in range(args.time_inference):
        order = list(models) if i % 2 == 0 else list(models)[::-1]
        times = {
            n: metrics.inference_seconds_per_10k(models[n].cluster_log_probs, rows) for n in order
        }
        rounds.append({**times, "dmvae_over_vade": times["dmvae"] / times["vade"]})
    median = {k: float(np.median([r[k] for r in rounds])) for k in rounds[0]}
    md = (
        "# q(c|x) inference time per 10,000 images: VaDE against DMVAE\n\n"
        f"Networks: hidden {args.hidden}, latent {args.latent_dim}, 10 clusters; "
        f"{len(rows)} rows, torch threads {args.threads}; {args.time_inference} rounds, each "
        "timing both models (best of 3 passes, order alternating). VaDE: encoder mean, then "
        "p(c | z = mu(x)); DMVAE: its cluster network.\n\n"
        + markdown_table(
            [{"statistic": "median", **median}]
            + [{"statistic": f"round {i + 1}", **r} for i, r in enumerate(rounds)],
            ["statistic", "vade", "dmvae", "dmvae_over_vade"],
        )
        + "\n"
    )
    write_results(
        f"{args.name}_inference",
        seed=args.seed,
        wall_seconds=time.perf_counter() - started,
        results={"rows": len(rows), "median": median, "rounds": rounds, "protocol": vars(args)},
        markdown=md,
        out_dir=out,
    )
    print(md)


def holds_models(record: Path, models: str) -> bool:
    """Whether the result file ``record`` already holds a row of one of ``models`` (an earlier
    part of a resumed run): the start alone must not replace it while the ELBO run goes on."""
    try:
        results = json.loads(record.read_text())["results"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return isinstance(results, dict) and any(
        isinstance(results.get(name), dict) for name in models.split(",")
    )


def main() -> None:
    args = parse_args()
    if args.assemble:
        assemble(Path(args.assemble), Path(args.out), args.name)
        return
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load(args)
    options = {
        "num_components": 10,
        "latent_dim": args.latent_dim,
        "hidden": args.hidden,
        "likelihood": "bernoulli" if args.data == "mnist" else "gaussian",
    }
    if args.time_inference is not None:
        time_inference(args, data, options, out)
        return
    models, results = pretrain_models(data, args, args.seed, args.models, **options)
    print("pretrained", results, flush=True)
    if args.pretrain_only or not holds_models(out / f"{args.name}.json", args.models):
        report(args, data, results, started, out)  # the start, recorded before the ELBO runs
    if args.pretrain_only:
        return
    for name in args.models.split(","):
        results[name] = train_one(name, models[name], data, args)
        report(args, data, results, started, out)
        print(name, {k: v for k, v in results[name].items() if k != "curve"}, flush=True)


if __name__ == "__main__":
    run_script(main)
