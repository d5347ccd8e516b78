"""NUTS on the Bayesian mixture of experts: effective samples per second, and SVI against NUTS.

The model: a 2-expert linear MoE (``bayes-moe``: logistic gate, Normal priors on the weights,
HalfNormal noise scales, the gate enumerated), on ``--n`` points drawn from a 2-expert model
(x ~ U(-2, 2), P(c = 1|x) = sigmoid(3 x), y = -1.5 + x or 1.5 - 0.5 x, noise sd 0.25), and as many
held-out points from the same model. Per NUTS variant (one chain, ``--warmup`` + ``--samples``,
the same start): wall seconds (compilation and the start search included: ``--init-restarts``
random starts of ``--init-steps`` Adam steps, the library's defaults), the smallest bulk ESS
over the posterior's scalars, and ESS per second. The variants:

* ``pyro-traced``: Pyro's potential of the enumerated program (traced at every step);
* ``pyro-traced-jit``: the same with Pyro's ``jit_compile=True``;
* ``collapsed``: the gate summed out by one ``logsumexp`` in a plain torch pass
  (:func:`pyro_moe.bayes.collapsed_potential`);
* ``collapsed-jit``: the same compiled with ``torch.jit.trace`` (the library's default);
* ``numpyro``: NumPyro's NUTS on the same model (:mod:`pyro_moe.bayes_numpyro`: the same priors,
  the gate summed out by ``logsumexp`` in a ``numpyro.factor``) and data, from the constrained
  point the ``collapsed-jit`` chain starts at, with the same warm-up, draws, target acceptance,
  tree depth and dense mass matrix. Its wall seconds count JAX's compilation (not JAX's import)
  and not the mode search, which the start reuses; ``numpyro-compiled`` is the same run again
  with the compiled functions cached (the same key, so the same draws).

Every row's ESS comes from the same function (:func:`pyro_moe.bayes.diagnostics`, ArviZ's bulk
ESS on the draws converted by :func:`pyro_moe.bayes.to_inference_data`). The results also state
the ratio of NumPyro's ESS per second to our best, against the target of at most 3 counting
compilation for both, and the largest difference between NumPyro's log joint and ours
(:meth:`~pyro_moe.models.bayes_moe.BayesianMixtureOfExperts.log_joint`) over a few of NumPyro's
draws, which checks that the two programs are one model.

SVI against NUTS: the ``auto-normal`` guide trained by the library's trainer (``enum``,
``--svi-steps`` full-batch steps), then for SVI draws and the fastest NUTS variant's draws: the
held-out log predictive density per point, log mean_s p(y_n|x_n, theta_s), the coverage of the
central 90% posterior-predictive interval on the held-out points, and ``az.compare`` (PSIS-LOO on
the training points) with both.

Wall times are taken on whatever else the machine is running: the results record the load
average before and after. NumPyro and JAX are an optional extra (``pip install '.[numpyro]'``);
without them the results say so in one line and have no NumPyro rows. Run with one thread:
``OMP_NUM_THREADS=1 XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"``
(the script asks torch for one thread and sets that ``XLA_FLAGS`` when it is unset).

    python benchmarks/bayes_moe.py                          # the full protocol
    python benchmarks/bayes_moe.py --n 40 --warmup 10 --samples 10 --svi-steps 20 \
        --init-restarts 1 --init-steps 30                    # smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import Any

import numpy as np
import torch
from pyro_moe.models.bayes_moe import BayesianMixtureOfExperts

from pyro_moe import Dataset, RunSpec, TrainConfig, bayes, bayes_numpyro, run_experiment
from pyro_moe.benchmarking import write_results
from pyro_moe.cli import OneLineParser
from pyro_moe.tables import columns_of, markdown_table

NOTE = (
    "The rows share one start (NumPyro's is the point the collapsed-jit chain starts at, after "
    "the mode search that only our rows' seconds count) and one machine; the load averages say "
    "how idle it was. For reference, the figures stated for this protocol on an idle machine "
    "with one thread: Pyro NUTS 120 s (min ESS 84, 0.69 ESS/s), with `jit_compile=True` 51 s "
    "(2.2 ESS/s), NumPyro 0.22 12.0 s including compilation (12 ESS/s), 2.1 s once compiled "
    "(65 ESS/s)."
)
NO_NUMPYRO = "NumPyro is not installed (`pip install '.[numpyro]'`): no NumPyro rows."
#: NumPyro draws at which its log joint is compared with ours
LOG_JOINT_DRAWS = 10


VARIANTS = {
    "pyro-traced": {"fast": False, "jit": False},
    "pyro-traced-jit": {"fast": False, "jit": True},
    "collapsed": {"fast": True, "jit": False},
    "collapsed-jit": {"fast": True, "jit": True},
}


def two_expert_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, n)
    c = rng.uniform(size=n) < 1 / (1 + np.exp(-3 * x))
    y = np.where(c, 1.5 - 0.5 * x, -1.5 + x) + rng.normal(0, 0.25, n)
    return (torch.tensor(a, dtype=torch.float32)[:, None] for a in (x, y))


def row_of(name: str, model, posterior, x, y, seed: int) -> tuple[dict[str, Any], Any]:
    """A table row of one NUTS run (ESS from :func:`bayes.diagnostics` for every row) and the
    run's ``(model, posterior, InferenceData)``."""
    idata = bayes.to_inference_data(model, posterior, x, y, seed)
    report = bayes.diagnostics(idata)
    row = {
        "variant": name,
        "seconds": round(posterior.seconds, 2),
        "min_ess_bulk": report["min_ess_bulk"],
        "ess_per_second": round(report["min_ess_bulk"] / posterior.seconds, 3),
        "divergences": report["divergences"],
        "step_size": round(float(posterior.sample_stats["step_size"][0, -1]), 4),
    }
    return row, (model, posterior, idata)


def nuts_row(name: str, x, y, config: bayes.NutsConfig) -> tuple[dict[str, Any], Any]:
    model = BayesianMixtureOfExperts(1, 1, num_components=2)
    config = dataclasses.replace(config, **VARIANTS[name])
    posterior = bayes.run_nuts(model, x, y, config)
    return row_of(name, model, posterior, x, y, config.seed)


def shared_start(model, x, y, config: bayes.NutsConfig) -> dict[str, torch.Tensor]:
    """theta at the start of the ``collapsed-jit`` chain: the mode search's best end point plus
    the first chain's jitter, constrained."""
    config = dataclasses.replace(config, **VARIANTS["collapsed-jit"])
    mode = bayes.find_mode(model, bayes.make_potential(model, x, y, config), config)
    u = bayes.chain_start(model, mode, config, chain=0)
    return bayes.constrain(u, bayes.site_transforms(model))[0]


def log_joint_gap(model, posterior, x, y) -> float:
    """max |log joint (NumPyro) - log joint (ours)| over the first draws of ``posterior``."""
    flat = posterior.flat()
    gaps = []
    for s in range(min(LOG_JOINT_DRAWS, posterior.num_draws)):
        theta = {name: value[s] for name, value in flat.items()}
        with torch.no_grad():
            ours = float(model.log_joint(theta, x, y))
        gaps.append(abs(bayes_numpyro.log_joint(model, theta, x, y) - ours))
    return max(gaps)


def numpyro_rows(x, y, config: bayes.NutsConfig) -> tuple[list[dict[str, Any]], float]:
    """The ``numpyro`` and ``numpyro-compiled`` rows, and the log-joint gap on NumPyro's draws."""
    model = BayesianMixtureOfExperts(1, 1, num_components=2)
    start = shared_start(model, x, y, config)
    posterior, again = bayes_numpyro.run_nuts(model, x, y, config, start)
    row, _ = row_of("numpyro", model, posterior, x, y, config.seed)
    compiled = {
        **row,
        "variant": "numpyro-compiled",
        "seconds": round(again, 2),
        "ess_per_second": round(row["min_ess_bulk"] / again, 3),
    }
    return [row, compiled], log_joint_gap(model, posterior, x, y)


def comparison(rows: list[dict[str, Any]], gap: float) -> tuple[str, dict[str, Any]]:
    """The sentence and the record comparing our best ESS/s with NumPyro's."""
    by_name = {row["variant"]: row for row in rows}
    ours = max((r for r in rows if r["variant"] in VARIANTS), key=lambda r: r["ess_per_second"])
    ratio = by_name["numpyro"]["ess_per_second"] / ours["ess_per_second"]
    ratio_compiled = by_name["numpyro-compiled"]["ess_per_second"] / ours["ess_per_second"]
    record = {
        "best_ours": ours["variant"],
        "numpyro_over_ours": round(ratio, 2),
        "numpyro_compiled_over_ours": round(ratio_compiled, 2),
        "within_3x": ratio <= 3,
        "log_joint_max_abs_diff": gap,
    }
    text = (
        f"NumPyro's ESS per second over our best ({ours['variant']}), compilation counted for "
        f"both: {ratio:.2f}x (target: at most 3x, {'met' if ratio <= 3 else 'not met'}); against "
        f"NumPyro once compiled: {ratio_compiled:.2f}x. NumPyro's log joint minus ours at "
        f"{LOG_JOINT_DRAWS} of its draws: at most {gap:.2g} in absolute value (float32)."
    )
    return text, record


def held_out(model, posterior, x, y) -> dict[str, float]:
    """Held-out log predictive density per point and 90% interval coverage."""
    log_lik = torch.as_tensor(bayes.pointwise_log_likelihood(model, posterior, x, y))
    flat = log_lik.reshape(-1, log_lik.shape[-1])
    lpd = torch.logsumexp(flat, 0) - np.log(flat.shape[0])
    y_rep = bayes.posterior_predictive(model, posterior, x).reshape(-1, len(x))
    low, high = np.quantile(y_rep, [0.05, 0.95], axis=0)
    inside = (low <= y[:, 0].numpy()) & (y[:, 0].numpy() <= high)
    return {"test_lpd_per_point": float(lpd.mean()), "coverage_90": float(inside.mean())}


def fit_svi(x, y, steps: int, seed: int):
    arrays = {"x": x.numpy(), "y": y.numpy()[:, 0]}
    data = Dataset.from_arrays(
        "two-experts",
        **{f"{k}_{s}": v for s in ("train", "valid", "test") for k, v in arrays.items()},
    )
    spec = RunSpec(model="bayes-moe", model_options={"num_components": 2}, seed=seed)
    config = TrainConfig(
        epochs=steps, lr=0.02, patience=None, progress=False, batch_size=len(x), seed=seed
    )
    start = time.perf_counter()
    result = run_experiment(spec, config, data=data, figures=False)
    posterior = bayes.svi_posterior(result.guide, num_draws=400, seed=seed)
    posterior.seconds = time.perf_counter() - start
    return result.model, posterior


def svi_against_nuts(x, y, x_test, y_test, nuts, steps: int, seed: int) -> list[dict[str, Any]]:
    az = bayes.arviz()
    model, svi = fit_svi(x, y, steps, seed)
    svi_idata = bayes.to_inference_data(model, svi, x, y, seed)
    nuts_model, nuts_posterior, nuts_idata = nuts
    table = az.compare({"nuts": nuts_idata, "svi": svi_idata})
    rows = []
    for name, (m, post) in {"nuts": (nuts_model, nuts_posterior), "svi": (model, svi)}.items():
        rows.append(
            {
                "method": name,
                "seconds": round(post.seconds, 2),
                **{k: round(v, 4) for k, v in held_out(m, post, x_test, y_test).items()},
                "loo_rank": int(table.loc[name, "rank"]),
                "elpd_loo": round(float(table.loc[name, "elpd_loo"]), 2),
                "dse": round(float(table.loc[name, "dse"]), 2),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--svi-steps", type=int, default=3000)
    defaults = bayes.NutsConfig()
    parser.add_argument(
        "--init-restarts", type=int, default=defaults.init_restarts, help="mode search starts"
    )
    parser.add_argument(
        "--init-steps", type=int, default=defaults.init_steps, help="Adam steps per start"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--numpyro", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    torch.set_num_threads(1)
    bayes_numpyro.one_thread()
    start, load = time.perf_counter(), os.getloadavg()
    threads = ", ".join(
        f"{k}={os.environ.get(k, '(unset)')}" for k in ("OMP_NUM_THREADS", "XLA_FLAGS")
    )
    x, y = two_expert_data(args.n, args.seed)
    x_test, y_test = two_expert_data(args.n, args.seed + 1)
    config = bayes.NutsConfig(
        chains=1,
        warmup=args.warmup,
        samples=args.samples,
        seed=args.seed,
        init_restarts=args.init_restarts,
        init_steps=args.init_steps,
        progress=False,
    )
    fits = {name: nuts_row(name, x, y, config) for name in names}
    rows = [row for row, _ in fits.values()]
    best = max(fits, key=lambda name: fits[name][0]["ess_per_second"])
    versus, versus_record = NO_NUMPYRO, {}
    if not args.numpyro:
        versus = "NumPyro left out (`--no-numpyro`): no NumPyro rows."
    elif bayes_numpyro.available():
        numpyro_table, gap = numpyro_rows(x, y, config)
        rows += numpyro_table
        versus, versus_record = comparison(rows, gap)
    svi = svi_against_nuts(x, y, x_test, y_test, fits[best][1], args.svi_steps, args.seed)
    results = {
        "nuts": rows,
        "numpyro": versus_record or {"missing": versus},
        "svi_vs_nuts": svi,
        "load_before": load,
        "load_after": os.getloadavg(),
    }
    markdown = "\n".join(
        [
            f"# NUTS on a 2-expert Bayesian MoE ({args.n} points, one chain, {args.warmup} "
            f"warm-up + {args.samples} draws, one thread)",
            "",
            f"Mode search before the chains: {args.init_restarts} random start(s), "
            f"{args.init_steps} Adam steps each.",
            "",
            f"Load average before / after: {load[0]:.2f} / {os.getloadavg()[0]:.2f}. Threads: "
            f"torch {torch.get_num_threads()}, {threads}.",
            "",
            markdown_table(rows, columns_of(rows)),
            "",
            versus,
            "",
            NOTE,
            "",
            f"## SVI (auto-normal, {args.svi_steps} steps) against NUTS ({best})",
            "",
            f"Held-out: {args.n} new points from the same model.",
            "",
            markdown_table(svi, columns_of(svi)),
            "",
        ]
    )
    write_results(
        "bayes_moe",
        seed=args.seed,
        wall_seconds=time.perf_counter() - start,
        results=results,
        markdown=markdown,
        **({"out_dir": args.out} if args.out else {}),
    )


if __name__ == "__main__":
    main()
