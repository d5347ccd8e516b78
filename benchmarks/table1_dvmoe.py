"""Deep MoE vs DVMoE on the ``shells`` sets, D = 1, 2, 5, paired over seeds: Table 1 of Singh,
Panda & Gajbhiye, "Mixture of Experts using Discrete VAE".

Models. "Deep MoE" is the classic ME with an MLP (softmax) gate and linear experts, trained on the
exact log p(y|x) (``enum``). DVMoE is the ME gated by a discrete-mixture VAE, trained on
log p(y|x) + x_weight ELBO(x) (``enum``; ``x_weight = 1`` is Singh et al.'s objective L). Data:
``shells`` (K = 3 nested shells, a linear regression function per shell, noise variance 0.01, so
the test MSE of the true functions, the noise floor, is 0.01).

Protocol, in three steps.

1. **Search on validation data.** Both models get the same grid: learning rate in ``--lrs`` x
   hidden width in ``--widths`` (DVMoE also x ``--search-x-weights``), each candidate trained on the
   validation seeds ``--valid-seeds`` at each D in ``--search-dims``, scored by its mean MSE on the
   validation split (never the test split; the validation seeds are disjoint from the test seeds).
   The candidate with the lowest score is kept per model and applied to every D.
2. **Paired test runs.** For each D and each test seed s in ``--seed`` ... ``--seed + --seeds - 1``
   both models train on the same data (``shells`` drawn with seed s) from the same RNG state
   (seed s set before the model is built), for the same budget (``--epochs`` epochs of batch
   ``--batch-size``, Adam; the parameters of the best validation epoch are kept).
3. **Statistics per D** (:mod:`pyro_moe.stats`): the two-sided Wilcoxon signed-rank test of the
   per-seed test MSEs (DVMoE - Deep MoE), and paired percentile bootstrap 95% intervals of the
   ratio of mean test MSEs ``mean(DVMoE) / mean(Deep MoE)`` and of the geometric-mean per-seed
   ratio (``--resamples`` resamples from ``--bootstrap-seed``). The verdict at a D is "DVMoE
   better" when p < ``--alpha`` and the ratio-of-means interval lies below 1, "Deep MoE better"
   when p < alpha and it lies above 1, otherwise "no significant difference".

Outcome of a run (test split; rules applied in this order):

* ``converged``: test MSE <= ``CONVERGED_MSE`` = 0.03 (three times the noise floor 0.01);
* ``collapsed gate``: not converged, and the gate's argmax (argmax_c p(c|x)) sends fewer than
  ``COLLAPSE_SHARE`` = 5% of the test points to at least one of the K experts (an expert is
  effectively switched off, so at most K - 1 regression functions are used);
* ``stuck``: not converged, every expert used by at least 5% of the points: a local optimum in
  which the partition or the experts are wrong (typically part of a shell left to the wrong expert).

Writes ``table1_dvmoe.json`` (search, per-seed records, statistics, verdicts), ``table1_dvmoe.md``
and ``table1_dvmoe.png`` (test MSE per seed, the two models' dots joined, one panel per D).

    python benchmarks/table1_dvmoe.py                            # the committed budget
    python benchmarks/table1_dvmoe.py --epochs 1 --seeds 2 --n 100 --dims 2 --valid-seeds 7 \\
        --lrs 0.01 --widths 8 --search-x-weights 0.3              # smoke run
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

import torch

from pyro_moe import RunSpec, build, fit, metrics, stats
from pyro_moe.benchmarking import fixed_budget, markdown_table, run_script, write_results
from pyro_moe.cli import OneLineParser

#: Singh et al.'s Table 1 (test MSE): Deep MoE and DVMoE, by input dimension
PUBLISHED = {1: (10.0424, 0.0312), 2: (20.4247, 0.0434), 5: (180.117, 96.1049)}
NOISE_FLOOR = 0.01
CONVERGED_MSE = 3 * NOISE_FLOOR
COLLAPSE_SHARE = 0.05
OUTCOMES = ("converged", "collapsed gate", "stuck")
#: the two models of the verdict: label -> (registry name, fixed options)
MODELS = {
    "Deep MoE": ("moe", {"gate": "mlp", "expert": "linear"}),
    "DVMoE": ("dvmoe", {}),
}


def outcome(mse: float, smallest_share: float) -> str:
    """The class of one run by the rules of the module docstring."""
    if mse <= CONVERGED_MSE:
        return "converged"
    return "collapsed gate" if smallest_share < COLLAPSE_SHARE else "stuck"


def candidates(label: str, args: argparse.Namespace) -> list[dict]:
    """The search grid of one model: ``{"lr", "hidden_dim"[, "x_weight"]}`` dicts."""
    weights = args.search_x_weights if label == "DVMoE" else [None]
    grid = []
    for lr, width, weight in itertools.product(args.lrs, args.widths, weights):
        config = {"lr": lr, "hidden_dim": width}
        if weight is not None:
            config["x_weight"] = weight
        grid.append(config)
    return grid


def run_one(label: str, config: dict, dim: int, seed: int, args: argparse.Namespace) -> dict:
    """Train one model at one (D, seed); scores on the validation and test splits."""
    name, fixed = MODELS[label]
    options = {k: v for k, v in config.items() if k != "lr"}
    spec = RunSpec(
        model=name,
        data="shells",
        estimator="enum",
        data_options={"dim": dim, "n": args.n, "clusters": args.clusters},
        model_options={"num_components": args.clusters, **fixed, **options},
        seed=seed,
    )
    data, model, guide, est = build(spec)
    start = time.perf_counter()
    fit(model, guide, est, data, fixed_budget(args.epochs, args.batch_size, config["lr"], seed))
    seconds = time.perf_counter() - start
    test = data.test
    scores = model.evaluate(test.x, test.y)
    with torch.no_grad():
        chosen = model.gate_log_probs(test.x).argmax(-1)
    shares = torch.bincount(chosen, minlength=args.clusters).double() / len(chosen)
    big = test.x.repeat(10_000 // len(test.x) + 1, 1)[:10_000]
    record = {
        "seed": seed,
        "valid_mse": model.evaluate(data.valid.x, data.valid.y)["mse"],
        "mse": scores["mse"],
        "nll": scores["nll"],
        "gate_accuracy": metrics.clustering_accuracy(test.labels, chosen),
        "smallest_expert_share": float(shares.min()),
        "train_seconds": seconds,
        "inference_seconds_per_10k": metrics.inference_seconds_per_10k(model.predict, big),
    }
    record["outcome"] = outcome(record["mse"], record["smallest_expert_share"])
    return record


def search(args: argparse.Namespace) -> dict:
    """Step 1: every candidate of each model on the validation seeds; the best by mean
    validation MSE. ``{label: {"chosen": config, "candidates": [{config, score, valid_mse}]}}``"""
    found = {}
    for label in MODELS:
        tried = []
        for config in candidates(label, args):
            valid = [
                run_one(label, config, dim, seed, args)["valid_mse"]
                for dim in args.search_dims
                for seed in args.valid_seeds
            ]
            tried.append({"config": config, "score": statistics.mean(valid), "valid_mse": valid})
            print(f"search {label} {config}: {tried[-1]['score']:.4g}", flush=True)
        found[label] = {
            "chosen": min(tried, key=lambda t: t["score"])["config"],
            "candidates": tried,
        }
    return found


def verdict(summary: dict, alpha: float) -> str:
    if summary["p_value"] < alpha and summary["ratio_of_means_high"] < 1:
        return "DVMoE better"
    if summary["p_value"] < alpha and summary["ratio_of_means_low"] > 1:
        return "Deep MoE better"
    return "no significant difference"


def compare(per_seed: dict[str, list[dict]], args: argparse.Namespace) -> dict | None:
    """Step 3 at one D: the paired statistics of DVMoE against Deep MoE (None below 2 pairs)."""
    a = [r["mse"] for r in per_seed["DVMoE"]]
    b = [r["mse"] for r in per_seed["Deep MoE"]]
    try:
        summary = stats.paired_summary(a, b, resamples=args.resamples, seed=args.bootstrap_seed)
    except ValueError:
        return None
    summary["verdict"] = verdict(summary, args.alpha)
    return summary


def frequencies(records: list[dict]) -> str:
    return ", ".join(f"{o} {sum(r['outcome'] == o for r in records)}" for o in OUTCOMES)


def model_row(dim: int, label: str, records: list[dict]) -> dict:
    mse = [r["mse"] for r in records]
    row = {"D": dim, "model": label, "median mse": f"{statistics.median(mse):.3g}"}
    row["mean mse"] = f"{statistics.mean(mse):.3g}"
    row["gate_accuracy"] = f"{statistics.mean(r['gate_accuracy'] for r in records):.3g}"
    row["outcomes"] = frequencies(records)
    row["train s"] = f"{statistics.mean(r['train_seconds'] for r in records):.3g}"
    row["inference s / 10k"] = (
        f"{statistics.mean(r['inference_seconds_per_10k'] for r in records):.2g}"
    )
    row["Singh et al. MSE"] = PUBLISHED.get(dim, (None, None))[label == "DVMoE"]
    return row


def stats_row(dim: int, summary: dict | None) -> dict:
    if summary is None:
        return {"D": dim, "verdict": "fewer than 2 differing pairs"}
    return {
        "D": dim,
        "DVMoE better on": f"{summary['a_better']} / {summary['n']}",
        "Wilcoxon p": f"{summary['p_value']:.3g}",
        "ratio of means [95%]": "{ratio_of_means:.3g} [{ratio_of_means_low:.3g}, "
        "{ratio_of_means_high:.3g}]".format(**summary),
        "geometric-mean ratio [95%]": "{geo_ratio:.3g} [{geo_ratio_low:.3g}, "
        "{geo_ratio_high:.3g}]".format(**summary),
        "verdict": summary["verdict"],
    }


def seed_rows(dim: int, per_seed: dict[str, list[dict]]) -> list[dict]:
    rows = []
    for deep, dv in zip(per_seed["Deep MoE"], per_seed["DVMoE"], strict=True):
        rows.append(
            {
                "D": dim,
                "seed": deep["seed"],
                "Deep MoE mse": f"{deep['mse']:.4g}",
                "Deep MoE outcome": deep["outcome"],
                "DVMoE mse": f"{dv['mse']:.4g}",
                "DVMoE outcome": dv["outcome"],
            }
        )
    return rows


def search_rows(found: dict) -> list[dict]:
    rows = []
    for label, entry in found.items():
        for tried in entry["candidates"]:
            chosen = tried["config"] == entry["chosen"]
            config = ", ".join(f"{k} {v:g}" for k, v in tried["config"].items())
            score = f"{tried['score']:.4g}"
            rows.append(
                {
                    "model": label,
                    "candidate": config,
                    "mean valid mse": score,
                    "chosen": "yes" if chosen else "",
                }
            )
    return rows


def protocol(args: argparse.Namespace) -> str:
    steps = args.epochs * ((args.n * 6 // 10) // args.batch_size)
    return (
        f"Protocol: `shells` with K = {args.clusters} shells, n = {args.n} points (60/20/20 "
        f"split), {args.epochs} epochs of batch {args.batch_size} ({steps} Adam steps), the "
        "parameters of the best validation epoch kept; noise floor (test MSE of the true "
        f"functions) {NOISE_FLOOR}. Search: lr in {args.lrs} x width in {args.widths} for both "
        f"models, DVMoE also x x_weight in {args.search_x_weights}; validation seeds "
        f"{args.valid_seeds} at D = {args.search_dims}, scored by mean validation-split MSE; the "
        "chosen configuration is applied at every D. Test: "
        f"{args.seeds} paired seeds from {args.seed} per D (the seed sets the data and the RNG "
        "state at initialisation, the same for both models). Statistics: two-sided Wilcoxon "
        "signed-rank test of the per-seed test MSEs; paired percentile bootstrap 95% intervals "
        f"({args.resamples} resamples, seed {args.bootstrap_seed}) of mean(DVMoE) / mean(Deep "
        'MoE) and of the geometric mean of the per-seed ratios; verdict "DVMoE better" / '
        f'"Deep MoE better" when p < {args.alpha} and the ratio-of-means interval excludes 1 '
        f"on that side. Outcomes: converged (test MSE <= {CONVERGED_MSE:g}), collapsed gate (not "
        f"converged, some expert gets < {COLLAPSE_SHARE:.0%} of the test points by the gate's "
        "argmax), stuck (neither). Wall times depend on the machine line above (its load "
        "average included). Singh, Panda & Gajbhiye's Table 1 does not say what its data or "
        "budget were, so its numbers are beside ours, not comparable cell for cell.\n\n"
    )


def markdown(args: argparse.Namespace, results: dict) -> str:
    tables = [
        ("Chosen on validation data", search_rows(results["search"])),
        (
            "Per model",
            [
                model_row(int(d), m, r)
                for d, e in results["dims"].items()
                for m, r in e["per_seed"].items()
            ],
        ),
        (
            "Paired statistics (DVMoE against Deep MoE)",
            [stats_row(int(d), e["statistics"]) for d, e in results["dims"].items()],
        ),
        (
            "Per seed (test MSE)",
            [row for d, e in results["dims"].items() for row in seed_rows(int(d), e["per_seed"])],
        ),
    ]
    body = "\n\n".join(
        f"### {title}\n\n{markdown_table(rows, list(rows[0]))}" for title, rows in tables
    )
    figure = f"![test MSE per seed]({args.name}.png)\n\n"
    return protocol(args) + figure + body + "\n\n" + args.comment


def figure(results: dict, path: Path) -> None:
    """Paired dots: each seed's test MSE under both models, joined by a line; one panel per D."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = list(results["dims"])
    fig, axes = plt.subplots(1, len(dims), figsize=(3.2 * len(dims), 3.6), squeeze=False)
    for ax, dim in zip(axes[0], dims, strict=True):
        per_seed = results["dims"][dim]["per_seed"]
        for deep, dv in zip(per_seed["Deep MoE"], per_seed["DVMoE"], strict=True):
            color = "tab:green" if dv["mse"] < deep["mse"] else "tab:red"
            ax.plot([0, 1], [deep["mse"], dv["mse"]], "-o", color=color, alpha=0.6, ms=4)
        ax.axhline(NOISE_FLOOR, color="grey", ls=":", lw=1)
        ax.set(xticks=[0, 1], xticklabels=list(MODELS), yscale="log", xlim=(-0.3, 1.3))
        summary = results["dims"][dim]["statistics"]
        p = f", p = {summary['p_value']:.2g}" if summary else ""
        ax.set_title(f"D = {dim}{p}", fontsize=10)
    axes[0][0].set_ylabel("test MSE (log scale; dotted: noise floor)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(args: argparse.Namespace, results: dict, seconds: float) -> None:
    """Write the results files (after every input dimension, so a stopped run keeps its rows)."""
    write_results(
        args.name,
        seed=args.seed,
        wall_seconds=seconds,
        results=results,
        markdown=markdown(args, results),
        out_dir=args.out,
    )
    figure(results, Path(args.out) / f"{args.name}.png")


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Refuse, in one line, what would waste a run or make the test seeds see the search."""
    tested = set(range(args.seed, args.seed + args.seeds))
    problems = [
        (args.seeds < 1, f"--seeds must be >= 1, got {args.seeds}"),
        (bool(tested & set(args.valid_seeds)), "--valid-seeds must not be test seeds"),
        (min(args.lrs) <= 0, "--lrs must be > 0"),
        (min(args.search_x_weights) <= 0, "--search-x-weights must be > 0"),
        (args.resamples < 1, f"--resamples must be >= 1, got {args.resamples}"),
        (not 0 < args.alpha < 1, f"--alpha must be in (0, 1), got {args.alpha}"),
    ]
    for bad, message in problems:
        if bad:
            parser.error(message)
    return args


def main(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    found = search(args)
    results = {
        "search": found,
        "valid_seeds": args.valid_seeds,
        "search_dims": args.search_dims,
        "rules": {
            "converged_mse": CONVERGED_MSE,
            "collapse_share": COLLAPSE_SHARE,
            "alpha": args.alpha,
        },
        "dims": {},
    }
    for dim in args.dims:
        per_seed = {label: [] for label in MODELS}
        for seed in range(args.seed, args.seed + args.seeds):
            for label in MODELS:
                per_seed[label].append(run_one(label, found[label]["chosen"], dim, seed, args))
            print(
                f"D={dim} seed {seed}",
                *(f"{m} {r[-1]['mse']:.4g}" for m, r in per_seed.items()),
                flush=True,
            )
        results["dims"][str(dim)] = {"per_seed": per_seed, "statistics": compare(per_seed, args)}
        write(args, results, time.perf_counter() - start)


if __name__ == "__main__":
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[1, 2, 5])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--valid-seeds", type=int, nargs="+", default=[1000, 1001, 1002])
    parser.add_argument("--search-dims", type=int, nargs="+", default=[2])
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.03])
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--search-x-weights", type=float, nargs="+", default=[0.3, 1.0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--bootstrap-seed", type=int, default=0)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--comment", default="", help="a closing paragraph for the markdown")
    parser.add_argument("--name", default="table1_dvmoe", help="results file stem")
    parser.add_argument("--out", default="benchmarks/results")
    run_script(lambda: main(check_args(parser, parser.parse_args())))
