"""Categorical VAE on binarized MNIST: every applicable gradient estimator at the protocol of Jang
et al. (2017, Sec. 4.2, Table 1).

Protocol (the defaults): 20 categorical latents x 10 classes, a 784-512-256 encoder and the mirrored
256-512-784 Bernoulli decoder (ReLU); all 50,000 training rows, batch 100, 100 epochs (50,000
Adam steps, lr 1e-3, no gradient clipping) per estimator; validation after every epoch on the
10,000 validation rows (a Monte Carlo ELBO with ``--valid-samples`` guide samples per image,
recorded with the training wall-clock time); the parameters of the best validation epoch are
scored on the 10,000 test images with S = ``--test-samples`` (1,000) guide samples c_s ~ q(c|x)
per image, f_s = log p(x, c_s) - log q(c_s|x):

    -ELBO = -(1/S) sum_s f_s,        -L_S = -log (1/S) sum_s exp f_s   (Burda et al. 2016)

both the discrete objective, whatever the estimator trained on. Estimators with a temperature
anneal tau_t = max(0.5, exp(-r t)) with r = ``--anneal-rate`` (1e-4), updated after every step
(Jang et al. update it every N in {500, 1000} steps with r in {1e-5, 1e-4}; with N = 1 the curve
is the same without the staircase, tau reaching 0.5 at step 6,932). Every estimator in the
registry runs unless its :meth:`~pyro_moe.estimators.base.Estimator.check` refuses the model (an
estimator declares what it cannot train that way); then the ``--best`` (4) best by test -ELBO run
again with the seeds ``--more-seeds`` (1, 2) for a mean and spread.

Each (estimator, seed) trains in its own run folder (``--runs``; checkpointed, so a cut run
resumes where it stopped) and writes its own result file ``OUT/estimators_binarized_mnist/
ESTIMATOR_seedK.json`` when it finishes: the test bounds, the validation curve with wall time,
and the machine facts measured around it (CPU count, load average at start and end, threads).
``--assemble`` builds the table and the figure from whatever result files exist, on any machine.

    python benchmarks/estimators_binarized_mnist.py --jobs 2        # the protocol, 1 thread / job
    python benchmarks/estimators_binarized_mnist.py --assemble      # table + figure from the files
    python benchmarks/estimators_binarized_mnist.py --limit 200 --epochs 1 --test-samples 10

References:
    1. E. Jang, S. Gu, B. Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017.
    2. Y. Burda, R. Grosse, R. Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from pyro_moe.benchmarking import (
    RESULTS,
    add_run_folder_arguments,
    check_run_folder,
    command_line,
    fixed_budget,
    markdown_table,
    run_script,
    settle_run_folder_arguments,
)
from pyro_moe.checkpoint import atomic_write_json, atomic_write_text
from pyro_moe.cli import OneLineParser
from pyro_moe.data import Split, load_dataset
from pyro_moe.errors import ConfigError, PyroMoeError
from pyro_moe.estimators.sampled import point_costs, run_traces
from pyro_moe.estimators.temperature import Temperature
from pyro_moe.experiment import RunSpec, build, build_estimator, build_model
from pyro_moe.registry import ESTIMATORS, GUIDES
from pyro_moe.runs import RunFolder, versions
from pyro_moe.train import fit

NAME = "estimators_binarized_mnist"
#: Jang et al. 2017, Table 1, -ELBO of the categorical VAE on binarized MNIST (their names)
PUBLISHED = {
    "SF (score function)": 110.6,
    "DARN": 111.5,
    "MuProp": 107.0,
    "ST (straight-through)": 110.9,
    "Annealed ST": 109.7,
    "Gumbel-Softmax": 101.5,
    "ST Gumbel-Softmax": 107.8,
}
#: our estimator -> the published row it is held to (the score-function family to SF)
MATCH = {
    "reinforce": "SF (score function)",
    "reinforce-avg": "SF (score function)",
    "nvil": "SF (score function)",
    "rloo": "SF (score function)",
    "vimco": "SF (score function)",
    "gumbel": "Gumbel-Softmax",
    "st-gumbel": "ST Gumbel-Softmax",
}


# --- which estimators, built how -------------------------------------------------------------
#: temperatures held fixed instead of annealed (Liu et al. 2023 recommend tau >= 1 for ReinMax)
CONSTANT_TEMPERATURE = {"reinmax": 1.0}


def schedule_options(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Jang et al.'s annealing for an estimator whose temperature follows a schedule (a
    :class:`~pyro_moe.estimators.temperature.Temperature`; rebar and relax learn theirs), or the
    fixed temperature of :data:`CONSTANT_TEMPERATURE`; none for the others."""
    if not isinstance(getattr(ESTIMATORS[name](), "temperature", None), Temperature):
        return {}
    if name in CONSTANT_TEMPERATURE:
        return {"temperature": CONSTANT_TEMPERATURE[name]}
    return {"temperature": 1.0, "schedule": "exp", "rate": args.anneal_rate, "tau_min": 0.5}


def refusal(name: str, model, guide, args: argparse.Namespace) -> str | None:
    """Why estimator ``name`` cannot train the categorical VAE (None: it can)."""
    try:
        build_estimator(name, model, **schedule_options(name, args)).check(guide)
    except ConfigError as e:
        return str(e)
    return None


def chosen_estimators(args: argparse.Namespace, data) -> list[str]:
    """``--estimators`` (``all``: every registered estimator that accepts the model), checked."""
    model = build_model("cat-vae", data)
    guide = GUIDES[model.default_guide](model)
    if args.estimators == "all":
        return [n for n in ESTIMATORS.names() if refusal(n, model, guide, args) is None]
    names = [n.strip() for n in args.estimators.split(",") if n.strip()]
    for name in names:
        ESTIMATORS[name]  # an unknown name raises, listing the known ones
        reason = refusal(name, model, guide, args)
        if reason:
            raise ConfigError(f"estimator {name!r} does not apply here: {reason}")
    return names


# --- one (estimator, seed) --------------------------------------------------------------------
def protocol(args: argparse.Namespace, data) -> dict[str, Any]:
    """What a result depends on; a run folder or result file from another protocol is refused."""
    return {
        "train_rows": len(data.train),
        "valid_rows": len(data.valid),
        "test_rows": len(data.test),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "anneal_rate": args.anneal_rate,
        "tau_min": 0.5,
        "tau_update_every": 1,
        "valid_samples": args.valid_samples,
        "test_samples": args.test_samples,
    }


def result_path(out: Path, name: str, seed: int) -> Path:
    return out / NAME / f"{name}_seed{seed}.json"


def machine_facts(device: str = "cpu") -> dict[str, Any]:
    """CPU count, torch threads, load average and, on CUDA, the GPU's name, measured now."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    facts = {
        "cpus": cpus,
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
    if torch.device(device).type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return facts


def images_per_chunk(x: torch.Tensor, samples: int) -> int:
    """Test images scored at once with ``samples`` draws each: decoder activations near 100 MB
    (2.5 GB on a GPU)."""
    rows = 500_000 if x.is_cuda else 20_000
    return max(1, rows // samples)


def test_bounds(model, guide, x: torch.Tensor, samples: int) -> tuple[float, float]:
    """(-ELBO, -L_S) per image averaged over ``x`` (module docstring), S = ``samples``; ``x``
    on the device of the model's parameters."""
    chunk = images_per_chunk(x, samples)
    elbo = iw = 0.0
    with torch.no_grad():
        for start in range(0, len(x), chunk):
            batch = (x[start : start + chunk],)
            traces = run_traces(model.model, guide, batch, {}, 1, samples, model.max_plate_nesting)
            f = point_costs(*traces, model.max_plate_nesting, score=False).f[0]  # [S, N]
            elbo += f.mean(0).sum().item()
            iw += (f.logsumexp(0) - math.log(samples)).sum().item()
    return -elbo / len(x), -iw / len(x)


def gpu_processes(device: torch.device) -> int | None:
    """How many processes hold a context on the GPU now (they share its time); None where the
    NVIDIA management library cannot say."""
    try:
        listing = torch.cuda.list_gpu_processes(device)
    except (ImportError, ModuleNotFoundError, RuntimeError):
        return None
    return sum(1 for line in listing.splitlines() if line.strip().startswith("process"))


def epoch_facts(trainer) -> dict[str, float]:
    """The 1-minute load average at the end of the epoch, on a GPU the number of processes
    sharing it, and the estimator's temperature where it has one."""
    facts = {"load": round(os.getloadavg()[0], 2)}
    if trainer.device.type == "cuda" and (count := gpu_processes(trainer.device)) is not None:
        facts["gpu_processes"] = count
    temperature = getattr(trainer.estimator, "temperature", None)
    return {**facts, "tau": float(temperature())} if callable(temperature) else facts


def relaxed_score(model, estimator, x: torch.Tensor, samples: int) -> dict[str, Any]:
    """For an estimator whose decoder trains on relaxed codes (``mode`` soft: ``gumbel``,
    ``concrete``): the test mean of the relaxed objective at its final tau,
    :meth:`~pyro_moe.models.cat_vae.CategoricalVAE.relaxed_neg_elbo` (Gumbel-softmax codes into
    the decoder, closed-form categorical KL; the loss of the categorical-VAE notebook published
    with Jang et al. 2017), ``samples`` noise draws per image, drawn after torch.manual_seed(0);
    empty for other estimators (straight-through ones feed the decoder one-hot codes, as the
    discrete -ELBO does)."""
    if getattr(estimator, "mode", None) != "soft":
        return {}
    tau = float(estimator.temperature())
    chunk = images_per_chunk(x, samples)
    total = 0.0
    with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
        torch.manual_seed(0)  # the same noise on every rescoring; the caller's RNG untouched
        for start in range(0, len(x), chunk):
            batch = x[start : start + chunk]
            total += model.relaxed_neg_elbo(batch, tau, samples).sum().item()
    return {"test_neg_relaxed_elbo": total / len(x), "relaxed_tau": tau, "relaxed_samples": samples}


def trained(name: str, seed: int, args: argparse.Namespace, **train_options: Any) -> tuple:
    """(data, model, guide, estimator, options, FitResult): one estimator with one seed trained
    or resumed in its run folder, holding the best validation epoch's parameters."""
    data = load_data(args)
    expected = protocol(args, data)
    options = schedule_options(name, args)
    spec = RunSpec(
        model="cat-vae",
        data="binarized-mnist",
        estimator=name,
        estimator_options=options,
        model_options={"validation_particles": args.valid_samples},
        seed=seed,
    )
    _, model, guide, estimator = build(spec, data)
    run = RunFolder(Path(args.runs) / f"{name}_seed{seed}")
    resume = check_run_folder(run, expected)
    config = fixed_budget(
        args.epochs,
        args.batch_size,
        args.lr,
        seed,
        clip_norm=None,
        checkpoint_every=args.checkpoint_every,
        max_nonfinite_skips=args.max_nonfinite_skips,
        device=args.device,
        **train_options,
    )
    info = {"model": "cat-vae", "estimator": name, "seed": seed, "protocol": expected}
    result = fit(model, guide, estimator, data, config, run.path, resume, info, [epoch_facts])
    return data, model, guide, estimator, options, result


def test_images(data, model, args: argparse.Namespace) -> torch.Tensor:
    return data.test.x.to(args.device, next(model.parameters()).dtype)


def train_one(name: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train (or resume) one estimator with one seed, score it, write its result file."""
    torch.set_num_threads(args.threads)
    start_facts = machine_facts(args.device)
    data, model, guide, estimator, options, result = trained(name, seed, args)
    eval_start = time.perf_counter()
    test_x = test_images(data, model, args)
    neg_elbo, neg_iw = test_bounds(model, guide, test_x, args.test_samples)
    relaxed = relaxed_score(model, estimator, test_x, args.relaxed_samples)
    record = {
        "estimator": name,
        "seed": seed,
        "estimator_repr": repr(estimator),
        "estimator_options": options,
        "unbiased_for": estimator.unbiased_for,
        "test_neg_elbo": neg_elbo,
        "test_neg_iw_bound": neg_iw,
        **relaxed,
        "best_epoch": result.state.best_epoch,
        "steps": result.state.step,
        "nonfinite_skips": result.state.nonfinite_skips,
        "train_seconds": round(result.state.wall_seconds, 1),
        "test_seconds": round(time.perf_counter() - eval_start, 1),
        "curve": [
            {
                k: r[k]
                for k in (
                    "step",
                    "epoch",
                    "wall_seconds",
                    "valid_loss",
                    "tau",
                    "load",
                    "gpu_processes",
                )
                if k in r
            }
            for r in result.history
        ],
        "protocol": protocol(args, data),
        "machine": {
            "start": start_facts,
            "end": machine_facts(args.device),
            "jobs": args.jobs,
            "device": args.device,
        },
        "versions": versions(),
        "command": command_line(),
    }
    path = result_path(Path(args.out), name, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)
    return record


def _one_thread(threads: int) -> None:
    torch.set_num_threads(threads)


def run_tasks(tasks: list[tuple[str, int]], args: argparse.Namespace) -> list[str]:
    """Train every (estimator, seed) in ``tasks`` (``--jobs`` processes); returns the failures."""
    failures = []

    def report(name: str, seed: int, outcome: Any) -> None:
        if isinstance(outcome, BaseException):
            failures.append(f"{name} seed {seed}: {outcome}")
            print(f"{name:14s} seed {seed} FAILED: {outcome}", flush=True)
        else:
            print(
                f"{name:14s} seed {seed} test -ELBO {outcome['test_neg_elbo']:.2f} "
                f"-L_{args.test_samples} {outcome['test_neg_iw_bound']:.2f} "
                f"({outcome['train_seconds']:.0f} s)",
                flush=True,
            )

    if args.jobs == 1:
        for name, seed in tasks:
            try:
                report(name, seed, train_one(name, seed, args))
            except PyroMoeError as e:
                report(name, seed, e)
        return failures
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, context, _one_thread, (args.threads,)) as pool:
        futures = {pool.submit(train_one, n, s, args): (n, s) for n, s in tasks}
        for future, (name, seed) in futures.items():
            try:
                report(name, seed, future.result())
            except PyroMoeError as e:
                report(name, seed, e)
    return failures


def pending(names: list[str], seeds: list[int], args, expected) -> list[tuple[str, int]]:
    """The (estimator, seed) pairs without a result file of this protocol."""
    todo = []
    for name in names:
        for seed in seeds:
            path = result_path(Path(args.out), name, seed)
            if not path.is_file():
                todo.append((name, seed))
            elif read_result(path)["protocol"] != expected:
                raise ConfigError(f"{path} was measured with another protocol; move it away")
    return todo


def rescore_relaxed(args: argparse.Namespace) -> None:
    """Add the relaxed score (:func:`relaxed_score`) to every result file in OUT that lacks it
    and whose finished run folder is in ``--runs``; nothing is trained (``max_steps`` stops the
    resumed run where its result file says it finished)."""
    for path in sorted((Path(args.out) / NAME).glob("*_seed*.json")):
        record = read_result(path)
        name, seed = record["estimator"], record["seed"]
        if "test_neg_relaxed_elbo" in record:
            continue
        if not RunFolder(Path(args.runs) / f"{name}_seed{seed}").has_checkpoint():
            print(f"{name} seed {seed}: no run folder in {args.runs}; not rescored", flush=True)
            continue
        data, model, _, estimator, _, result = trained(name, seed, args, max_steps=record["steps"])
        if result.state.step != record["steps"]:
            raise ConfigError(f"{name} seed {seed}: the run folder is not the result's run")
        test_x = test_images(data, model, args)
        relaxed = relaxed_score(model, estimator, test_x, args.relaxed_samples)
        if relaxed:
            atomic_write_json(path, {**record, **relaxed})
            print(f"{name} seed {seed}: relaxed -ELBO {relaxed['test_neg_relaxed_elbo']:.2f}")


def main(args: argparse.Namespace) -> int:
    check_args(args)
    if args.rescore_relaxed:
        rescore_relaxed(args)
        assemble(Path(args.out))
        return 0
    if args.collect_cut:
        for folder in args.collect_cut:
            collect_cut(Path(folder), Path(args.out))
        assemble(Path(args.out))
        return 0
    if args.assemble:
        assemble(Path(args.out))
        return 0
    data = load_data(args)
    names = chosen_estimators(args, data)
    expected = protocol(args, data)
    print(f"{len(names)} estimators: {', '.join(names)}", flush=True)
    failures = run_tasks(pending(names, [args.seed], args, expected), args)
    if args.best and not failures:
        scores = {n: read_result(result_path(Path(args.out), n, args.seed)) for n in names}
        best = sorted(names, key=lambda n: scores[n]["test_neg_elbo"])[: args.best]
        failures += run_tasks(pending(best, args.more_seeds, args, expected), args)
    assemble(Path(args.out))
    for failure in failures:
        print(f"failed: {failure}", file=sys.stderr)
    return 1 if failures else 0


# --- runs cut before the protocol's end --------------------------------------------------------
def cut_path(out: Path, name: str, seed: int) -> Path:
    return out / NAME / "cut" / f"{name}_seed{seed}.json"


def collect_cut(folder: Path, out: Path) -> None:
    """Record every unfinished run folder under ``folder`` (``*/config.json`` + ``metrics.csv``
    of a run this script started) as ``OUT/NAME/cut/ESTIMATOR_seedK.json``: its validation
    curve so far, the device and the protocol, marked cut. A run with a finished result file is
    skipped; so is one whose folder holds no epoch yet."""
    configs = sorted(folder.rglob("config.json"))
    if not configs:
        raise ConfigError(f"{folder} holds no run folder (no */config.json)")
    for config in configs:
        run = RunFolder(config.parent)
        stored = run.read_config()
        spec, curve = stored.spec, run.read_metrics()
        if "protocol" not in spec or not curve:
            continue
        name, seed = spec["estimator"], spec["seed"]
        if result_path(out, name, seed).is_file():
            continue
        if curve[-1]["epoch"] >= spec["protocol"]["epochs"]:
            print(f"{config.parent}: finished, not cut; rerun the protocol to score it")
            continue
        keep = ("step", "epoch", "wall_seconds", "valid_loss", "tau", "load", "gpu_processes")
        record = {
            "estimator": name,
            "seed": seed,
            "cut": True,
            "steps": curve[-1]["step"],
            "epochs_done": curve[-1]["epoch"],
            "device": stored.train.get("device", "cpu"),
            "platform": stored_versions(config).get("platform", "unknown"),
            "curve": [{k: row[k] for k in keep if k in row} for row in curve],
            "protocol": spec["protocol"],
            "command": command_line(),
        }
        path = cut_path(out, name, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, record)


def curve_values(records: list[dict[str, Any]], key: str) -> list[float]:
    """Every value of ``key`` recorded in the learning curves of ``records`` (epochs without it
    are left out)."""
    return [c[key] for r in records for c in r["curve"] if key in c]


def stored_versions(config: Path) -> dict[str, str]:
    """The ``versions`` a run folder's config.json recorded (empty if none)."""
    versions_ = json.loads(config.read_text()).get("versions")
    return versions_ if isinstance(versions_, dict) else {}


def run_device(record: dict[str, Any]) -> str:
    """A run's device, with the range of processes that shared its GPU and of the 1-minute
    load average over its epochs."""
    device = record["device"] if record.get("cut") else record["machine"].get("device", "cpu")
    shared, loads = curve_values([record], "gpu_processes"), curve_values([record], "load")
    if shared:
        device += f", {min(shared)}..{max(shared)} GPU processes"
    if loads:
        device += f", load {min(loads):.1f}..{max(loads):.1f}"
    return device


def valid_at(curve: list[dict[str, Any]], step: int) -> float | None:
    """The validation -ELBO recorded at exactly ``step`` (None if the curve has no such row)."""
    return next((c["valid_loss"] for c in curve if c["step"] == step), None)


def equal_steps_rows(records: list[dict[str, Any]], cut: list[dict[str, Any]]) -> tuple:
    """Every run, finished or cut, at the largest step all of them reached: the validation
    -ELBO there (the comparison at equal steps), and where each cut run stopped."""
    runs = records + cut
    common = min(r["curve"][-1]["step"] for r in runs)
    rows = []
    for r in runs:
        last = r["curve"][-1]
        rows.append(
            {
                "estimator": r["estimator"],
                "seed": r["seed"],
                "run": "cut" if r.get("cut") else "finished",
                "device": run_device(r),
                f"valid -ELBO at step {common}": f"{valid_at(r['curve'], common):.2f}",
                "last epoch": last["epoch"],
                "valid -ELBO at last epoch": f"{last['valid_loss']:.2f}",
                "wall s at last epoch": round(last["wall_seconds"]),
            }
        )
    return common, sorted(rows, key=lambda row: float(row[f"valid -ELBO at step {common}"]))


def cut_section(records: list[dict[str, Any]], cut: list[dict[str, Any]]) -> str:
    if not cut:
        return ""
    common, rows = equal_steps_rows(records, cut)
    epochs = cut[0]["protocol"]["epochs"]
    platforms = "; ".join(sorted({f"{r['device']} on {r['platform']}" for r in cut}))
    return (
        f"\n\n## Runs cut before the protocol's {epochs} epochs\n\n"
        f"{len(cut)} run(s) stopped before the end (their files are in {NAME}/cut/; they have no "
        "test bounds). Every run, finished or cut, at the largest step all reached: the "
        f"validation -ELBO ({cut[0]['protocol']['valid_samples']}-sample Monte Carlo ELBO on the "
        f"validation rows) at step {common}, lower is better. Cut runs ran on: {platforms}; "
        "the load and GPU-sharing of every epoch are in their files.\n\n"
        + markdown_table(rows, list(rows[0]))
    )


# --- the table, from the result files alone -------------------------------------------------
RESULT_KEYS = frozenset({"estimator", "seed", "test_neg_elbo", "protocol", "curve"})
CUT_KEYS = frozenset({"estimator", "seed", "cut", "device", "platform", "protocol", "curve"})


def read_result(path: Path, keys: frozenset = RESULT_KEYS) -> dict[str, Any]:
    """A result file (or, with ``CUT_KEYS``, a cut run's file), checked for its fields."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not a readable result file: {e}") from None
    if not isinstance(record, dict):
        raise ConfigError(f"{path} is not a result file (not a JSON object)")
    missing = keys - set(record)
    if missing:
        raise ConfigError(f"{path} is not a result file (no {', '.join(sorted(missing))})")
    return record


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table_row(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One estimator's row: test bounds as mean ± standard deviation over its seeds."""
    first = records[0]
    published = MATCH.get(first["estimator"])
    loads = [r["machine"]["start"]["load_average"][0] for r in records]
    loads += [r["machine"]["end"]["load_average"][0] for r in records]
    loads += curve_values(records, "load")
    return {
        "estimator": first["estimator"],
        "seeds": ",".join(str(r["seed"]) for r in records),
        "-ELBO": spread([r["test_neg_elbo"] for r in records]),
        "-IW bound": spread([r["test_neg_iw_bound"] for r in records]),
        "relaxed -ELBO": relaxed_column(records),
        "published row": published or "-",
        "published -ELBO": PUBLISHED[published] if published else "-",
        "steps": first["steps"],
        "train s": spread([r["train_seconds"] for r in records]),
        "load (1-min, min..max)": f"{min(loads):.1f}..{max(loads):.1f}"
        + ("" if all("load" in c for r in records for c in r["curve"]) else " (start/end only)"),
        "threads x jobs": f"{first['machine']['start']['torch_threads']} x "
        f"{first['machine']['jobs']}",
        "device": device_column(records),
        "mean": statistics.mean(r["test_neg_elbo"] for r in records),
    }


def relaxed_column(records: list[dict[str, Any]]) -> str:
    """The relaxed objective over the seeds that have it, with its tau; '-' where none has."""
    scored = [r for r in records if "test_neg_relaxed_elbo" in r]
    if not scored:
        return "-"
    some = ",".join(str(r["seed"]) for r in scored)
    seeds = "" if len(scored) == len(records) else f" (seeds {some})"
    taus = "/".join(sorted({f"{r['relaxed_tau']:g}" for r in scored}))
    return f"{spread([r['test_neg_relaxed_elbo'] for r in scored])} at tau {taus}{seeds}"


def device_column(records: list[dict[str, Any]]) -> str:
    """CPU, or the GPU's name with the range of processes that shared it during training."""
    gpus = sorted({r["machine"]["start"].get("gpu", "CPU") for r in records})
    shared = curve_values(records, "gpu_processes")
    share = f" ({min(shared)}..{max(shared)} processes)" if shared else ""
    return "/".join(gpus) + share


def describe(records: list[dict[str, Any]]) -> str:
    p = records[0]["protocol"]
    cpus = sorted({r["machine"]["start"]["cpus"] for r in records})
    mixed = len({json.dumps(r["protocol"], sort_keys=True) for r in records}) > 1
    return (
        "Categorical VAE (20 x 10 categorical latents, 784-512-256 encoder, mirrored Bernoulli "
        f"decoder, ReLU) on binarized MNIST: {p['train_rows']} training rows, {p['epochs']} "
        f"epochs of batch {p['batch_size']} per estimator, Adam lr {p['lr']}, no gradient "
        f"clipping; temperatures tau = max({p['tau_min']}, exp(-{p['anneal_rate']} t)) updated "
        f"every {p['tau_update_every']} step(s) (reinmax: tau = 1 fixed; rebar and relax learn "
        f"theirs); validation on {p['valid_rows']} rows "
        f"({p['valid_samples']}-sample ELBO) after every epoch; the best validation epoch's "
        f"parameters scored on {p['test_rows']} test images with {p['test_samples']} guide "
        "samples each: -ELBO (the discrete objective, whatever the estimator trains on) and the "
        f"{p['test_samples']}-sample importance-weighted bound -L_S, nats per image, mean ± "
        "standard deviation over seeds (lower is better). For estimators whose decoder trains on "
        "relaxed codes, the relaxed -ELBO column scores the same parameters the way the notebook "
        "published with Jang et al. 2017 reports its loss: Gumbel-softmax codes at the final tau "
        "into the decoder and the categorical KL in closed form (not a bound on the discrete "
        "model's log p(x)).\n\n"
        f"Machine facts as measured by each run: {'/'.join(map(str, cpus))} CPU(s); the load "
        "column is the range of the 1-minute load average measured at the start, after every "
        "epoch (where recorded) and at the end of the estimators' runs. "
        "Wall times are comparable only between rows of the same device whose load stayed below "
        "the CPU count; on a GPU, only between rows that shared it with as many processes (the "
        "device column: a GPU runs one process's kernels at a time).\n\n"
        + ("Result files from more than one protocol are mixed in this table.\n\n" if mixed else "")
    )


def assemble(out: Path) -> None:
    """Write ``OUT/NAME.md``, ``.json`` and ``.png`` from the result files in ``OUT/NAME/``."""
    files = sorted((out / NAME).glob("*_seed*.json"))
    records = [read_result(f) for f in files]
    cut = [read_result(f, CUT_KEYS) for f in sorted((out / NAME / "cut").glob("*_seed*.json"))]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(records, key=lambda r: r["seed"]):
        groups.setdefault(r["estimator"], []).append(r)
    rows = sorted((table_row(g) for g in groups.values()), key=lambda r: r["mean"])
    columns = [c for c in (rows[0] if rows else {}) if c != "mean"]
    published = markdown_table(
        [{"estimator": k, "-ELBO": v} for k, v in PUBLISHED.items()], ["estimator", "-ELBO"]
    )
    text = (
        (describe(records) + markdown_table(rows, columns) if rows else "No result files yet.")
        + f"\n\n![test -ELBO against wall-clock seconds]({NAME}.png)\n\n"
        + "Published (Jang et al. 2017, Table 1, -ELBO):\n\n"
        + published
        + cut_section(records, cut)
        + (f"\n\n![validation -ELBO against steps, every run]({NAME}_steps.png)\n" if cut else "")
    )
    command = command_line()
    atomic_write_text(
        out / f"{NAME}.md",
        f"Assembled with `{command}` from {len(files)} result file(s) in {NAME}/.\n\n{text}\n",
    )
    summary = {"rows": rows, "published": PUBLISHED, "files": [f.name for f in files]}
    atomic_write_json(out / f"{NAME}.json", {"command": command, "results": summary})
    plot_curves(groups, out / f"{NAME}.png")
    if cut:
        plot_steps(records, cut, out / f"{NAME}_steps.png")


def plot_curves(groups: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Validation -ELBO against training wall-clock seconds (one line per estimator and seed),
    each run's test -ELBO as a marker at its training time, and dotted: the published -ELBO of
    the row an estimator is held to."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, records) in enumerate(sorted(groups.items())):
        colour = f"C{i % 10}"
        for j, r in enumerate(records):
            points = [(c["wall_seconds"], c["valid_loss"]) for c in r["curve"]]
            if points:
                ax.plot(
                    *zip(*points, strict=True),
                    color=colour,
                    lw=1,
                    alpha=0.9 if j == 0 else 0.4,
                    label=name if j == 0 else None,
                )
            ax.plot(r["train_seconds"], r["test_neg_elbo"], "o", color=colour, ms=4)
        if name in MATCH:  # the published -ELBO this estimator is held to
            ax.axhline(PUBLISHED[MATCH[name]], color=colour, ls=":", lw=1)
    ax.set_xlabel("training wall-clock seconds")
    ax.set_ylabel("-ELBO per image (nats)")
    ax.set_title("lines: validation; dots: test; dotted: published (Jang et al.)", fontsize=9)
    if groups:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def plot_steps(records: list[dict[str, Any]], cut: list[dict[str, Any]], path: Path) -> None:
    """Validation -ELBO against optimisation steps for every run, finished (solid) and cut
    (dashed): the comparison at equal steps that runs on different machines allow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    names = sorted({r["estimator"] for r in records + cut})
    for r in sorted(records + cut, key=lambda r: (r["estimator"], r["seed"])):
        i = names.index(r["estimator"])
        steps, losses = zip(*[(c["step"], c["valid_loss"]) for c in r["curve"]], strict=True)
        style = dict(color=f"C{i % 10}", lw=1, ls="--" if r.get("cut") else "-")
        if i >= 10:
            style["marker"], style["ms"], style["markevery"] = ".", 3, 5
        ax.plot(steps, losses, label=f"{r['estimator']} s{r['seed']}", **style)
    ax.set_xlabel("optimisation steps (batch 100)")
    ax.set_ylabel("validation -ELBO per image (nats)")
    ax.set_ylim(top=min(180.0, ax.get_ylim()[1]))
    ax.set_title("solid: finished runs; dashed: runs cut before the protocol's end", fontsize=9)
    ax.legend(fontsize=6, ncol=3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


# --- data and arguments -----------------------------------------------------------------------
def _head(split: Split, n: int | None) -> Split:
    if n is None or n >= len(split):
        return split
    return Split(
        split.x[:n],
        None if split.y is None else split.y[:n],
        None if split.labels is None else split.labels[:n],
    )


def load_data(args: argparse.Namespace):
    data = load_dataset("binarized-mnist", limit=args.limit)
    return replace(data, valid=_head(data.valid, args.valid_rows))


def check_args(args: argparse.Namespace) -> None:
    numbers = ("epochs", "batch_size", "jobs", "threads", "valid_samples", "test_samples")
    for name in (*numbers, "relaxed_samples"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.best < 0 or args.anneal_rate < 0:
        raise ConfigError("--best and --anneal-rate must be >= 0")


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers, got {text!r}") from None
    if any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"seeds must be >= 0, got {text!r}")
    return seeds


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--estimators", default="all", help="comma-separated names, or all")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--anneal-rate", type=float, default=1e-4, help="r in max(0.5, exp(-r t))")
    p.add_argument("--limit", type=int, help="first N rows of each split (smoke runs)")
    p.add_argument("--valid-rows", type=int, help="first N validation rows (default: all)")
    p.add_argument("--valid-samples", type=int, default=2)
    p.add_argument("--test-samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="the seed every estimator runs with")
    p.add_argument("--best", type=int, default=4, help="how many estimators get more seeds")
    p.add_argument("--more-seeds", type=parse_seeds, default=[1, 2])
    p.add_argument("--jobs", type=int, default=1, help="processes, at most one per core")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (every job on that device)")
    add_run_folder_arguments(p, checkpoint_every=250)
    p.add_argument("--max-nonfinite-skips", type=int, default=10)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument(
        "--relaxed-samples",
        type=int,
        default=100,
        help="Gumbel noise draws per test image for the relaxed objective (temperature estimators)",
    )
    p.add_argument(
        "--rescore-relaxed",
        action="store_true",
        help="add the relaxed objective to finished results whose run folders are in --runs",
    )
    p.add_argument("--assemble", action="store_true", help="only build the table from results")
    p.add_argument(
        "--collect-cut",
        nargs="+",
        metavar="FOLDER",
        help="record the unfinished run folders under FOLDER as cut runs, then assemble",
    )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    settle_run_folder_arguments(p, args, NAME)
    return args


if __name__ == "__main__":
    run_script(lambda: main(parse_args()))
