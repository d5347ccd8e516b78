"""Build a run from names: the layer the CLI, the benchmarks and the notebooks share.

    spec = RunSpec(model="moe", data="bishop", estimator="enum", model_options={"gate": "mlp"})
    data, model, guide, estimator = build(spec)
    result = run_experiment(spec, TrainConfig(epochs=50), run_dir="runs/bishop-enum")

    mine = Dataset.from_arrays(x=x, labels=labels)          # your own arrays
    result = run_experiment("gmm", data=mine, run_dir="runs/mine")

:func:`run_experiment` fits, then evaluates on the validation and test splits (``summary.json``:
the model's metrics, and accuracy / NMI / ARI wherever the data has ground-truth ``labels``) and
draws the model's figures into the run folder. A spec names its data set (``data``: a registry
name or a ``.npz`` path) unless a :class:`~pyro_moe.data.Dataset` is passed as ``data=``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import pyro_moe.estimators  # noqa: F401  (fills ESTIMATORS)
import pyro_moe.guides  # noqa: F401  (fills GUIDES)
import pyro_moe.models  # noqa: F401  (fills MODELS)
from pyro_moe import checkpoint
from pyro_moe.base import PyroGuide, PyroModel
from pyro_moe.data import Dataset, load_dataset
from pyro_moe.distributed import process_group
from pyro_moe.errors import ConfigError, PyroMoeError, UnknownNameError
from pyro_moe.estimators.base import Estimator
from pyro_moe.metrics import split_metrics
from pyro_moe.registry import ESTIMATORS, GUIDES, MODELS
from pyro_moe.runs import RunFolder, StoredRun, check_data_file
from pyro_moe.train import Callback, FitResult, TrainConfig, fit


@dataclass(frozen=True)
class RunSpec:
    """What to train, by registry names and keyword options."""

    model: str
    data: str | None = None  # None: a Dataset is passed to build / run_experiment
    estimator: str = "enum"
    guide: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    data_options: dict[str, Any] = field(default_factory=dict)
    estimator_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        """The spec of a dict of its fields; an unknown key is an :class:`UnknownNameError`."""
        names = list(cls.__dataclass_fields__)
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise UnknownNameError(
                f"unknown run spec field {', '.join(unknown)}; known: {', '.join(names)}"
            )
        return cls(**d)


def stored_spec(stored: StoredRun) -> RunSpec:
    """The :class:`RunSpec` of a run's config.json (as read by
    :meth:`~pyro_moe.runs.RunFolder.read_config`)."""
    return RunSpec.from_dict(stored.spec)


def guide_name(spec: RunSpec) -> str:
    """The guide to use: the spec's, else the model's exact guide for ``enum``, else its default."""
    if spec.guide is not None:
        return spec.guide
    model_class = MODELS[spec.model]
    if not ESTIMATORS[spec.estimator].needs_guide_site and model_class.exact_guide:
        return model_class.exact_guide
    return model_class.default_guide


def build_estimator(name: str, model: PyroModel, **options: Any) -> Estimator:
    """The estimator ``name`` with the model's ``max_plate_nesting``; bad options raise clearly."""
    try:
        return ESTIMATORS[name](max_plate_nesting=model.max_plate_nesting, **options)
    except TypeError as e:
        raise ConfigError(f"estimator {name!r}: {e}") from None


def build_model(name: str, data: Dataset, **options: Any) -> PyroModel:
    """``MODELS[name].from_data(data, **options)``; an option value the model cannot use (a
    string where a number belongs, a negative width) is a :class:`ConfigError` naming it."""
    model_class = MODELS[name]
    try:
        return model_class.from_data(data, **options)
    except PyroMoeError:
        raise
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"model {name!r} cannot be built with options {options}: {e}") from None


def build(
    spec: RunSpec, data: Dataset | None = None
) -> tuple[Dataset, PyroModel, PyroGuide, Estimator]:
    """Data set, model, guide and estimator for ``spec`` (parameters initialised from its seed);
    ``data`` replaces the data set the spec names."""
    data = data if data is not None else spec_data(spec)
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, data, **spec.model_options)
    guide = GUIDES[guide_name(spec)](model)
    estimator = build_estimator(spec.estimator, model, **spec.estimator_options)
    estimator.check(guide)
    return data, model, guide, estimator


def spec_data(spec: RunSpec) -> Dataset:
    """The data set ``spec.data`` names, built with the spec's seed and data options."""
    if spec.data is None:
        raise ConfigError(
            "no data: name a data set or a .npz file (data=...), or pass a Dataset as data= "
            "(a run trained on a Dataset from Python needs it again to resume or evaluate)"
        )
    return load_dataset(spec.data, seed=spec.seed, **spec.data_options)


def as_spec(spec: RunSpec | str) -> RunSpec:
    """``spec`` itself, or ``RunSpec(model=spec)`` for a model name."""
    if isinstance(spec, RunSpec):
        return spec
    if isinstance(spec, str):
        return RunSpec(model=spec)
    raise ConfigError(f"expected a RunSpec or a model name, got {type(spec).__name__}")


def resume_spec(
    run_dir: str | Path, allow_changed_data: bool = False, **train_overrides: Any
) -> tuple[RunSpec, TrainConfig]:
    """The spec and training options stored in a run folder, with some options changed
    (e.g. more ``epochs``); seed, batch size and learning rate stay as stored unless overridden.
    A data file that changed since the run started is refused unless ``allow_changed_data``."""
    stored = RunFolder(run_dir).read_config()
    check_data_file(stored.data_file, allow_changed_data)
    config = TrainConfig.from_dict({**stored.train, **train_overrides})
    return stored_spec(stored), config


def load_run(
    run_dir: str | Path,
    which: str = "best",
    data: Dataset | None = None,
    allow_changed_data: bool = False,
) -> tuple[PyroModel, PyroGuide, Dataset]:
    """Rebuild a run's model, guide and data set (``data``, else the one its config names, which
    must not have changed unless ``allow_changed_data``) with its ``best`` (or ``last``)
    parameters."""
    run = RunFolder(run_dir)
    stored = run.read_config()
    spec = stored_spec(stored)
    if data is None:
        check_data_file(stored.data_file, allow_changed_data)
    data, model, guide, _ = build(spec, data)
    path = run.best if which == "best" and run.best.is_file() else run.checkpoint
    state = checkpoint.load_best(path, model, guide)
    model.load_state_dict(state["model"])
    guide.load_state_dict(state["guide"])
    return model, guide, data


def evaluate(model: PyroModel, data: Dataset, split: str = "test") -> dict[str, float]:
    """The model's own metrics on one split of ``data``, and accuracy / NMI / ARI against the
    split's ground-truth ``labels`` where it has them
    (:func:`~pyro_moe.metrics.split_metrics`)."""
    part = getattr(data, split)
    return {f"{split}_{k}": v for k, v in split_metrics(model, part).items()}


def run_experiment(
    spec: RunSpec | str,
    config: TrainConfig | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    figures: bool = True,
    callbacks: Sequence[Callback] = (),
    data: Dataset | None = None,
    overwrite: bool = False,
) -> FitResult:
    """Build ``spec`` (a :class:`RunSpec` or a model name) on ``data`` (default: the data set the
    spec names), :func:`~pyro_moe.train.fit` it, write validation and test metrics and figures
    (``callbacks`` are passed to ``fit``: epoch-end measurements such as gradient variance).

    Everything is built and checked before the run folder is touched; the folder is then locked
    for the whole run, and ``overwrite`` replaces an earlier run there (see :func:`fit`)."""
    spec = as_spec(spec)
    config = config or TrainConfig(seed=spec.seed)
    data, model, guide, estimator = build(spec, data)
    info = {**asdict(spec), "guide": guide_name(spec)}
    writes = run_dir is not None and process_group(config.distributed, config.device).is_main
    with RunFolder(run_dir).lock() if writes else nullcontext():
        result = fit(
            model, guide, estimator, data, config, run_dir, resume, info, callbacks, overwrite
        )
        result.summary = {
            "stop_reason": result.state.stop_reason,
            "steps": result.state.step,
            "epochs": result.state.epoch,
            "wall_seconds": result.state.wall_seconds,
            **evaluate(model, data, "valid"),
            **evaluate(model, data, "test"),
        }
        if result.run_dir is not None:  # None on the non-writing ranks of a distributed run
            run = RunFolder(result.run_dir)
            run.write_summary(result.summary)
            if figures:
                from pyro_moe import plots

                plots.save_run_figures(run, model, data, result.history)
    return result
