"""Data sets: seeded synthetic sets, loaders for data files, and a user's own ``.npz`` file."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

from pyro_moe.data import mnist, shells, synthetic  # noqa: F401  (register the data sets)
from pyro_moe.data.base import TASKS, Dataset, Split, as_inputs, as_targets, load_npz, split_arrays
from pyro_moe.errors import ConfigError, DataError, PyroMoeError
from pyro_moe.registry import DATASETS

__all__ = [
    "DATASETS",
    "TASKS",
    "Dataset",
    "Split",
    "as_inputs",
    "as_targets",
    "load_dataset",
    "load_npz",
    "split_arrays",
]


def load_dataset(name: str, seed: int = 0, **options: Any) -> Dataset:
    """The registered data set ``name`` (built with ``seed``, ``options``) or a ``.npz`` path
    (options: those of :func:`load_npz`: ``task``, ``split_seed``, ``train_fraction``,
    ``valid_fraction``)."""
    if name not in DATASETS and (name.endswith(".npz") or Path(name).exists()):
        builder, what = functools.partial(load_npz, name), f"data file {name}"
        known = [p for p in inspect.signature(load_npz).parameters if p not in ("path", "seed")]
    else:
        builder, what = DATASETS[name], f"data set {name!r}"
        known = [p for p in inspect.signature(builder).parameters if p != "seed"]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"{what} has no option {', '.join(unknown)}; known: {known}")
    try:
        return builder(seed=seed, **options)
    except PyroMoeError:
        raise
    except (TypeError, ValueError) as e:  # an option value the builder cannot use
        raise DataError(f"{what} cannot be built with options {options}: {e}") from None
