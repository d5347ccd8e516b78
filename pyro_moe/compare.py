"""Train one model with several gradient estimators on the same budget and seed, and measure them.

    rows, runs = compare_estimators(RunSpec(model="moe", data="bishop"), ["enum", "rloo"],
                                    TrainConfig(epochs=20), out="runs/compare")

For each estimator: a run folder ``out/NAME`` (via :func:`~pyro_moe.experiment.run_experiment`,
with the variance harness measuring the estimator after every epoch), then the harness on one
fixed validation batch at the common starting parameters (the seed's initialisation), so that
every estimator is measured on the same model, guide, batch and state. All estimators use the
same guide (``spec.guide``, else the model's default sampling guide) so they estimate the gradient
of the same objective. Writes ``estimators.csv``, ``estimators.md``, ``training_variance.csv`` and
the figures of :mod:`pyro_moe.plots.estimators`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from pyro_moe import variance
from pyro_moe.errors import ConfigError
from pyro_moe.experiment import RunSpec, build, build_estimator, run_experiment
from pyro_moe.registry import ESTIMATORS, MODELS
from pyro_moe.runs import RunFolder
from pyro_moe.tables import write_csv
from pyro_moe.train import TrainConfig

SUMMARY_COLUMNS = ("final_valid_loss", "train_seconds")


def _guide_for(spec: RunSpec) -> str:
    return spec.guide or MODELS[spec.model].default_guide


def harness_at_start(
    spec: RunSpec, names: list[str], num_estimates: int, batch_size: int = 256
) -> list[dict[str, Any]]:
    """The harness table for every estimator at the seed's initial parameters."""
    data, model, guide, _ = build(replace(spec, estimator="enum", guide=_guide_for(spec)))
    valid = data.valid
    n = min(batch_size, len(valid))
    dtype = next(model.parameters()).dtype
    args = (valid.x[:n].to(dtype), None if valid.y is None else valid.y[:n])
    if args[1] is not None and args[1].is_floating_point():
        args = (args[0], args[1].to(dtype))
    estimators = {name: build_estimator(name, model) for name in names}
    return variance.compare(estimators, model, guide, args, num_estimates)


def compare_estimators(
    spec: RunSpec,
    names: list[str],
    config: TrainConfig,
    out: str | Path,
    num_estimates: int = 200,
    figures: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train ``spec`` with each estimator in ``names`` and measure; see the module docstring.

    Returns the harness rows (with each estimator's training summary) and the fit results.
    """
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown or not names:
        raise ConfigError(
            f"unknown estimator(s) {', '.join(unknown) or '(none given)'}; "
            f"known: {', '.join(ESTIMATORS.names())}"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    guide = _guide_for(spec)
    results, training = {}, []
    for name in names:
        store: list[dict[str, Any]] = []
        callback = variance.training_callback(num_estimates=max(num_estimates // 4, 2), store=store)
        run_spec = replace(spec, estimator=name, guide=guide)
        run_dir = out / name
        RunFolder(run_dir).clear()
        torch.manual_seed(spec.seed)
        results[name] = run_experiment(
            run_spec, config, run_dir, figures=False, callbacks=[callback]
        )
        history = results[name].history
        for row, measured in zip(
            history, _by_epoch(store, len(history)), strict=True
        ):  # training curve rows: wall clock, objective, harness stats per group
            for m in measured:
                training.append(
                    {
                        "estimator": name,
                        "epoch": row["epoch"],
                        "wall_seconds": row["wall_seconds"],
                        "valid_loss": row["valid_loss"],
                        **{k: m[k] for k in ("group", "snr", "variance", "bias", "cosine")},
                    }
                )
    rows = harness_at_start(spec, names, num_estimates)
    for row in rows:
        result = results[row["estimator"]]
        row["final_valid_loss"] = result.history[-1]["valid_loss"] if result.history else None
        row["train_seconds"] = result.state.wall_seconds
    write_table(out / "estimators.csv", rows)
    write_table(out / "training_variance.csv", training)
    (out / "estimators.md").write_text(_markdown(spec, guide, config, rows, num_estimates))
    if figures:
        from pyro_moe.plots import estimators as estimator_plots

        estimator_plots.save_figures(out, rows, training)
    return rows, results


def _by_epoch(store: list[dict[str, Any]], epochs: int) -> list[list[dict[str, Any]]]:
    grouped: list[list[dict[str, Any]]] = [[] for _ in range(epochs)]
    for row in store:
        grouped[row["epoch"] - 1].append(row)
    return grouped


def write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows of dicts as CSV (columns: the union of keys, in first-seen order), atomically."""
    write_csv(path, rows)


def _markdown(spec, guide, config, rows, num_estimates) -> str:
    head = (
        f"# Estimators on {spec.model} / {spec.data}\n\n"
        f"Guide `{guide}`, seed {spec.seed}, {config.epochs} epochs each (batch size "
        f"{config.batch_size or 'default'}, lr {config.lr}). Harness: {num_estimates} gradient "
        "estimates per estimator at the seed's initial parameters on the first 256 validation "
        "rows; bias and cosine against the exact TraceEnum gradient of the same ELBO.\n\n"
    )
    columns = (*variance.COLUMNS, *SUMMARY_COLUMNS)
    return head + variance.markdown(rows, columns) + "\n"
