"""Train one model with several gradient estimators on the same budget and seed, and measure them.

    rows, runs = compare_estimators(RunSpec(model="moe", data="bishop"), ["enum", "rloo"],
                                    TrainConfig(epochs=20), out="runs/compare")

For each estimator: a run folder ``out/NAME`` (via :func:`~pyro_moe.experiment.run_experiment`,
with the variance harness measuring the estimator after every epoch), then the harness on one
fixed validation batch at the common starting parameters (the seed's initialisation), so that
every estimator is measured on the same model, guide, batch and state. All estimators use the
same guide (``spec.guide``, else the model's default sampling guide). Each estimator gets
``spec.estimator_options`` and its own options (``estimator_options[name]``; on the command line
``--estimator-option NAME.KEY=VALUE``) in training and in the harness alike.

Writes ``estimators.csv``, ``training_variance.csv``, the figures of
:mod:`pyro_moe.plots.estimators` and ``estimators.md``: the table, what each column means, which
rows are exact by construction (every estimate equal: the estimator computes that group's
gradient in closed form), and which estimators take a slow path with this guide (``enum`` with a
guide that has latent sites runs TraceEnum_ELBO, a :class:`SlowPathWarning` too).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from pyro_moe import variance
from pyro_moe.errors import ConfigError
from pyro_moe.estimators.enum import Enumerate
from pyro_moe.experiment import RunSpec, build, build_estimator, run_experiment, spec_data
from pyro_moe.registry import ESTIMATORS, MODELS
from pyro_moe.runs import RunFolder
from pyro_moe.tables import write_csv
from pyro_moe.train import TrainConfig

#: the files a comparison writes besides one run folder per estimator
COMPARISON_FILES = (
    "estimators.csv",
    "training_variance.csv",
    "estimators.md",
    "bias_variance.png",
    "snr.png",
    "objective_vs_time.png",
)
SUMMARY_COLUMNS = ("final_valid_loss", "train_seconds")

#: what each column of estimators.md means (the report explains its own table)
COLUMN_NOTES = {
    "estimator": "the estimator's registry name (`pyro-moe list`)",
    "group": "the parameters measured: `gate`, `experts`, `encoder` (the guide's own networks), "
    "`model` (any other model parameters), or `all` of them together",
    "objective": "the objective whose exact gradient g (by enumeration) the estimator is scored "
    "against: its own (`elbo`, or `multi-sample-bound` for the S-sample bound), the ELBO for a "
    "biased one",
    "reference": "how g was obtained: `exact` (enumeration), or `rloo x M (why)`, the mean of M "
    "draws of an unbiased ELBO estimator where the sum over the discrete latents is out of reach "
    "(its own noise is added to bias_noise)",
    "num_estimates": "E, the independent gradient estimates G_1..G_E drawn",
    "bias": "||mean_e G_e - g||",
    "bias_noise": "sqrt(variance / E): the bias an unbiased estimator shows from noise alone; "
    "a bias well above it is real",
    "rel_bias": "bias / ||g||",
    "elbo_gap": "||g - g_elbo||: how far the estimator's own objective's gradient lies from the "
    "single-sample ELBO's (0 for ELBO estimators)",
    "variance": "trace of the covariance of G, sum_j Var(G_j)",
    "snr": "mean over coordinates of |mean_e G_ej| / std_e G_ej (coordinates whose spread is "
    "rounding are left out; inf when all are)",
    "cosine": "mean_e cos(G_e, g): how well one estimate points along the exact gradient",
    "max_z": "max over coordinates of |mean_e G_ej - g_j| / se_j: about sqrt(2 ln P) over P "
    "coordinates for an unbiased estimator (below 4 for a few thousand)",
    "note": "why an estimator was not measured (not applicable to the program), else empty",
    "seconds": "wall seconds per estimate",
    "work_variance": "variance x seconds: variance at a fixed compute budget (lower is better)",
    "final_valid_loss": "the validation objective (exact, per point) after training",
    "train_seconds": "wall seconds of the training run",
}


def _guide_for(spec: RunSpec) -> str:
    return spec.guide or MODELS[spec.model].default_guide


def options_for(spec: RunSpec, name: str, per_estimator: dict[str, dict[str, Any]]) -> dict:
    """Estimator ``name``'s options: the spec's ``estimator_options`` (every estimator), then
    its own from ``per_estimator``."""
    return {**spec.estimator_options, **per_estimator.get(name, {})}


@dataclass
class HarnessSetup:
    """The common starting point of the harness: model and guide at the seed's initial
    parameters, and the fixed validation batch (``rows`` of ``available``)."""

    model: Any
    guide: Any
    args: tuple[Any, ...]
    rows: int
    available: int


def harness_setup(spec: RunSpec, batch_size: int = 256) -> HarnessSetup:
    """Build ``spec`` (seed's initialisation, the comparison's guide) and take the first
    ``batch_size`` validation rows (all of them when there are fewer)."""
    # any estimator the guide accepts: only the model, guide and batch are kept
    probe = "enum" if MODELS[spec.model].traceenum_summable else "rloo"
    data, model, guide, _ = build(replace(spec, estimator=probe, guide=_guide_for(spec)))
    valid = data.valid
    n = min(batch_size, len(valid))
    dtype = next(model.parameters()).dtype
    y = None if valid.y is None else valid.y[:n]
    if y is not None and y.is_floating_point():
        y = y.to(dtype)
    return HarnessSetup(model, guide, (valid.x[:n].to(dtype), y), n, len(valid))


def harness_at_start(
    spec: RunSpec,
    names: list[str],
    num_estimates: int,
    batch_size: int = 256,
    estimator_options: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The harness table for every estimator (with its options) at the seed's initial
    parameters."""
    setup = harness_setup(spec, batch_size)
    return [
        row
        for name in names
        for row in _harness_rows(setup, spec, name, estimator_options or {}, num_estimates)
    ]


def _harness_rows(setup, spec, name, per_estimator, num_estimates) -> list[dict[str, Any]]:
    estimator = build_estimator(name, setup.model, **options_for(spec, name, per_estimator))
    return variance.compare({name: estimator}, setup.model, setup.guide, setup.args, num_estimates)


def slow_paths(spec: RunSpec, names: list[str], per_estimator: dict[str, dict]) -> list[str]:
    """Notes for estimators that take a slow path with this model and guide (``enum`` with a
    guide that samples latents sums c by TraceEnum_ELBO, not by the one-pass collapsed path)."""
    check_names(names, per_estimator)
    setup = harness_setup(spec, batch_size=1)
    notes = []
    for name in names:
        estimator = build_estimator(name, setup.model, **options_for(spec, name, per_estimator))
        if isinstance(estimator, Enumerate) and not estimator.takes_fast_path(setup.guide):
            notes.append(
                f"`{name}` with guide `{_guide_for(spec)}` computes its exact sum with "
                "TraceEnum_ELBO: the guide has latent sites, so the one-pass collapsed path "
                "(taken with a guide without them, e.g. `none`, which optimises log p(y|x) "
                "instead) does not apply, and each step and estimate costs several times more "
                "(see `seconds`)."
            )
    return notes


def compare_estimators(
    spec: RunSpec,
    names: list[str],
    config: TrainConfig,
    out: str | Path,
    num_estimates: int = 200,
    figures: bool = True,
    estimator_options: dict[str, dict[str, Any]] | None = None,
    progress: bool | None = None,
    overwrite: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train ``spec`` with each estimator in ``names`` and measure; see the module docstring.

    Every estimator, guide and option is checked before ``out`` is touched; ``out`` is then
    locked, and must be a new folder unless ``overwrite`` (which replaces an earlier comparison:
    only the files it wrote, and its run folders).

    ``estimator_options`` maps an estimator name to its options (on top of
    ``spec.estimator_options``, which every estimator gets), for training and the harness alike.
    ``progress``: a progress bar over the estimators' training runs and harness measurements
    (None: only on a terminal). Returns the harness rows (with each estimator's training
    summary) and the fit results.
    """
    per_estimator = check_names(names, estimator_options or {})
    guide = _guide_for(spec)
    run_specs = {name: _run_spec(spec, name, guide, per_estimator) for name in names}
    data = spec_data(spec)
    for run_spec in run_specs.values():  # every estimator, guide and option checked first
        build(run_spec, data)
    folder = RunFolder(out, kind="compare", files=COMPARISON_FILES)
    with folder.lock():
        prepare_folder(folder, names, overwrite)
        notes = slow_paths(spec, names, per_estimator)
        for note in notes:
            warnings.warn(note.replace("`", ""), SlowPathWarning, stacklevel=2)
        results, training, rows, setup = _train_and_measure(
            spec, run_specs, config, folder.path, num_estimates, per_estimator, progress, overwrite
        )
        folder.write_table("estimators.csv", rows)
        folder.write_table("training_variance.csv", training)
        report = _markdown(spec, guide, config, rows, num_estimates, setup, per_estimator, notes)
        folder.write_text("estimators.md", report)
        if figures:
            from pyro_moe.plots import estimators as estimator_plots

            estimator_plots.save_figures(folder.path, rows, training)
    return rows, results


def prepare_folder(folder: RunFolder, names: list[str], overwrite: bool) -> None:
    """Check that the comparison may write ``folder`` and its run folder per estimator (a fresh
    one, or with ``overwrite`` an earlier comparison, whose files alone are deleted), then mark
    it as a comparison holding those runs."""
    runs = [RunFolder(folder.path / name) for name in names]
    for f in (folder, *runs):
        if overwrite:
            f.check_replaceable()
        else:
            f.check_fresh()
    if overwrite:
        folder.clear()
    folder.start()
    folder.record(*names)


def _run_spec(spec: RunSpec, name: str, guide: str, per_estimator: dict) -> RunSpec:
    options = options_for(spec, name, per_estimator)
    return replace(spec, estimator=name, guide=guide, estimator_options=options)


def _train_and_measure(
    spec, run_specs, config, out, num_estimates, per_estimator, progress, overwrite
):
    """Each estimator's training run (with the harness after every epoch), then the harness at
    the common start; returns the fit results, training rows, harness rows and harness setup."""
    names = list(run_specs)
    results, training = {}, []
    bar = tqdm(
        total=2 * len(names),
        disable=None if progress is None else not progress,
        desc="compare-estimators",
        dynamic_ncols=True,
    )
    with bar:
        for name, run_spec in run_specs.items():
            bar.set_postfix_str(f"training {name}")
            store: list[dict[str, Any]] = []
            callback = variance.training_callback(
                num_estimates=max(num_estimates // 4, 2), store=store
            )
            torch.manual_seed(spec.seed)
            results[name] = run_experiment(
                run_spec,
                config,
                out / name,
                figures=False,
                callbacks=[callback],
                overwrite=overwrite,
            )
            training += _training_rows(name, results[name].history, store)
            bar.update()
        setup = harness_setup(spec)
        rows: list[dict[str, Any]] = []
        for name in names:
            bar.set_postfix_str(f"harness {name}")
            rows += _harness_rows(setup, spec, name, per_estimator, num_estimates)
            bar.update()
    for row in rows:
        result = results[row["estimator"]]
        row["final_valid_loss"] = result.history[-1]["valid_loss"] if result.history else None
        row["train_seconds"] = result.state.wall_seconds
    return results, training, rows, setup


class SlowPathWarning(UserWarning):
    """An estimator takes a much slower path than it could with another guide."""


def check_names(names: list[str], per_estimator: dict[str, dict[str, Any]]) -> dict:
    """``per_estimator`` if every name is a registered estimator and every option is for one of
    them; else a :class:`ConfigError` naming what is wrong."""
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown or not names:
        raise ConfigError(
            f"unknown estimator(s) {', '.join(unknown) or '(none given)'}; "
            f"known: {', '.join(ESTIMATORS.names())}"
        )
    stray = sorted(set(per_estimator) - set(names))
    if stray:
        raise ConfigError(
            f"options given for {', '.join(stray)}, which is not among the compared "
            f"estimators ({', '.join(names)})"
        )
    return per_estimator


def _training_rows(name: str, history: list[dict], store: list[dict]) -> list[dict[str, Any]]:
    """Training-curve rows: wall clock, objective, harness statistics per group and epoch."""
    rows = []
    for row, measured in zip(history, _by_epoch(store, len(history)), strict=True):
        for m in measured:
            rows.append(
                {
                    "estimator": name,
                    "epoch": row["epoch"],
                    "wall_seconds": row["wall_seconds"],
                    "valid_loss": row["valid_loss"],
                    **{k: m[k] for k in ("group", "snr", "variance", "bias", "cosine")},
                }
            )
    return rows


def _by_epoch(store: list[dict[str, Any]], epochs: int) -> list[list[dict[str, Any]]]:
    grouped: list[list[dict[str, Any]]] = [[] for _ in range(epochs)]
    for row in store:
        grouped[row["epoch"] - 1].append(row)
    return grouped


def write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows of dicts as CSV (columns: the union of keys, in first-seen order), atomically."""
    write_csv(path, rows)


def deterministic_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows whose estimates are all the same up to rounding (variance 0 or no coordinate with a
    spread above rounding, so SNR inf), other than the ``all`` group."""
    return [r for r in rows if r["group"] != "all" and (r["variance"] == 0 or math.isinf(r["snr"]))]


def _markdown(spec, guide, config, rows, num_estimates, setup, per_estimator, notes) -> str:
    chosen = {n: options_for(spec, n, per_estimator) for n in _names(rows)}
    options = "; ".join(
        f"`{n}`: {', '.join(f'{k}={v}' for k, v in o.items())}" for n, o in chosen.items() if o
    )
    batch = (
        f"all {setup.rows} validation rows"
        if setup.rows == setup.available
        else f"the first {setup.rows} of {setup.available} validation rows"
    )
    head = (
        f"# Estimators on {spec.model} / {spec.data}\n\n"
        f"Guide `{guide}`, seed {spec.seed}, {config.epochs} epochs each (batch size "
        f"{config.batch_size or 'default'}, lr {config.lr})"
        + (f"; estimator options {options}" if options else "")
        + f". Harness: {num_estimates} gradient estimates per estimator at the seed's initial "
        f"parameters on {batch}; bias, rel_bias and cosine against the exact gradient (by "
        "enumeration) of the objective in the `objective` column.\n\n"
    )
    columns = (*variance.COLUMNS, *SUMMARY_COLUMNS)
    parts = [head, variance.markdown(rows, columns), "\n\n## Columns\n\n"]
    parts += [f"- `{c}`: {COLUMN_NOTES[c]}\n" for c in columns if c in COLUMN_NOTES]
    exact = deterministic_rows(rows)
    if exact:
        listed = ", ".join(f"{r['estimator']}/{r['group']}" for r in exact)
        parts.append(
            "\n## Rows exact by construction\n\n"
            f"{listed}: every estimate of these groups is the same number (variance "
            "0 up to rounding, SNR inf). The estimator computes that part of the gradient in "
            "closed form rather than by sampling: `enum` sums c out, and with a guide q(c|x, y) "
            "of its own (`posterior`) the gate enters `gumbel`'s objective only through the "
            "analytic categorical KL. Their bias is a fixed difference from the reference "
            "gradient (rounding where the closed form is the reference's own), not noise.\n"
        )
    if notes:
        parts.append("\n## Slow paths\n\n" + "".join(f"- {n}\n" for n in notes))
    return "".join(parts)


def _names(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["estimator"] for r in rows))
