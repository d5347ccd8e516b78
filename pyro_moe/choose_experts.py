"""How many experts do the data support: NUTS for each K, ranked by ArviZ's LOO (the command
``pyro-moe bayes``).

For each K the Bayesian mixture of experts (:mod:`pyro_moe.models.bayes_moe`) is sampled by NUTS
on the training split (:func:`pyro_moe.bayes.run_nuts`), converted to InferenceData with the
pointwise marginal log-likelihood, and written to the output folder::

    out/
      K1.nc, K2.nc, ...            each K's InferenceData (netCDF, written atomically)
      trace_K1.png, rank_K1.png,   its trace, rank, posterior-predictive and pair plots
      ppc_K1.png, pair_K1.png
      compare.csv, compare.md      az.compare over the K's (PSIS-LOO: elpd, se, dse, weight)
      diagnostics.csv              per K: worst R-hat, smallest bulk/tail ESS, divergences, seconds

Everything is checked (data set, K's, options) before the folder is touched; a folder holding
an earlier comparison is replaced only with ``overwrite``, and then only the files it wrote.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pyro_moe import bayes
from pyro_moe.data import Dataset, load_dataset
from pyro_moe.errors import ConfigError
from pyro_moe.experiment import build_model
from pyro_moe.runs import RunFolder
from pyro_moe.tables import columns_of, markdown_table

FILES = ("compare.csv", "compare.md", "diagnostics.csv")


def parse_experts(text: str) -> list[int]:
    """``"1,2,3"`` -> [1, 2, 3]; anything else is a :class:`ConfigError` naming ``--experts``."""
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(
            f"--experts must be comma-separated whole numbers, got {text!r}"
        ) from None
    if not ks or len(set(ks)) != len(ks):
        raise ConfigError(f"--experts must list distinct numbers of experts, got {text!r}")
    return ks


def netcdf_name(k: int) -> str:
    return f"K{k}.nc"


def write_netcdf(folder: RunFolder, k: int, idata) -> Path:
    """``K{k}.nc`` atomically: written beside it under a temporary name, then renamed."""
    name = netcdf_name(k)
    folder.record(name)
    tmp = folder.path / f".{name}.{os.getpid()}.tmp"
    idata.to_netcdf(str(tmp))
    os.replace(tmp, folder.path / name)
    return folder.path / name


def prepare(folder: RunFolder, overwrite: bool) -> None:
    """A fresh folder, or (``overwrite``) an earlier comparison's with only its files deleted."""
    if overwrite:
        folder.clear()
    else:
        folder.check_fresh()
    folder.start()


def compare_experts(
    data: str | Dataset,
    ks: Sequence[int],
    config: bayes.NutsConfig,
    out: str | Path,
    model_options: dict[str, Any] | None = None,
    data_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    figures: bool = True,
    report: Callable[[str], None] = lambda line: None,
) -> tuple[Any, list[dict[str, Any]]]:
    """NUTS for each K in ``ks`` on ``data``'s training split; returns the ``az.compare`` table
    and one diagnostics row per K, and writes the files of the module docstring into ``out``.
    ``report`` receives a line per K as it finishes."""
    dataset = (
        data
        if isinstance(data, Dataset)
        else load_dataset(data, config.seed, **(data_options or {}))
    )
    models = {
        k: build_model("bayes-moe", dataset, **{**(model_options or {}), "num_components": k})
        for k in ks
    }
    x, y = dataset.train.x, dataset.train.y
    folder = RunFolder(out, kind="bayes", files=FILES)
    az = bayes.arviz()
    with folder.lock():
        prepare(folder, overwrite)
        fits, rows = {}, []
        for k, model in models.items():
            report(
                f"K={k}: NUTS, {config.chains} chain(s) x ({config.warmup} warm-up + "
                f"{config.samples} draws)"
            )
            posterior = bayes.run_nuts(model, x, y, config)
            idata = bayes.to_inference_data(model, posterior, x, y, config.seed)
            row = {"K": k, **bayes.diagnostics(idata), "seconds": round(posterior.seconds, 2)}
            rows.append(row)
            report(
                "  " + ", ".join(f"{key} {value:.4g}" for key, value in row.items() if key != "K")
            )
            write_netcdf(folder, k, idata)
            if figures:
                save_figures(folder, k, idata)
            fits[f"K={k}"] = idata
        table = az.compare(fits) if len(fits) > 1 else None
        write_tables(folder, table, rows, dataset, config)
    return table, rows


def save_figures(folder: RunFolder, k: int, idata) -> None:
    import matplotlib.pyplot as plt

    from pyro_moe.plots.bayes import posterior_figures

    for name, figure in posterior_figures(idata).items():
        folder.save_figure(f"{name}_K{k}", figure, dpi=90)
        plt.close(figure)


def compare_rows(table) -> list[dict[str, Any]]:
    """The ``az.compare`` DataFrame as rows (model name first)."""
    if table is None:
        return []
    return [{"model": name, **{c: row[c] for c in table.columns}} for name, row in table.iterrows()]


def write_tables(
    folder: RunFolder, table, rows: list[dict[str, Any]], dataset: Dataset, config
) -> None:
    folder.write_table("diagnostics.csv", rows)
    compared = compare_rows(table)
    folder.write_table("compare.csv", compared)
    lines = [
        f"# How many experts: {dataset.name}, {len(dataset.train)} training points",
        "",
        f"NUTS, {config.chains} chain(s) x ({config.warmup} warm-up + {config.samples} draws), "
        f"seed {config.seed}. PSIS-LOO comparison (az.compare; elpd_loo higher is better, "
        "dse the standard error of the difference to the best):",
        "",
        markdown_table(compared, columns_of(compared))
        if compared
        else "(one K: nothing to compare)",
        "",
        "Diagnostics per K (split R-hat, bulk/tail ESS over every scalar of the posterior):",
        "",
        markdown_table(rows, columns_of(rows)),
        "",
    ]
    folder.write_text("compare.md", "\n".join(lines))
