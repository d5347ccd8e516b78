"""pyro-moe: mixture-of-experts and deep-clustering models as Pyro programs, with every gradient
estimator for the discrete gate side by side.

    >>> import pyro_moe
    >>> spec = pyro_moe.RunSpec(model="moe", data="bishop", estimator="enum")
    >>> result = pyro_moe.run_experiment(spec, pyro_moe.TrainConfig(epochs=5, progress=False))
"""

from pyro_moe import data, estimators, guides, models  # noqa: F401  (fill the registries)
from pyro_moe.data import Dataset, Split, load_dataset
from pyro_moe.errors import NonFiniteError, PyroMoeError, TrainingInterrupted
from pyro_moe.experiment import RunSpec, build, evaluate, load_run, run_experiment
from pyro_moe.gate import select
from pyro_moe.pyro_loss import estimator
from pyro_moe.registry import DATASETS, ESTIMATORS, GUIDES, MODELS
from pyro_moe.train import FitResult, TrainConfig, fit
from pyro_moe.variance import gradient_report

__version__ = "0.1.0"

__all__ = [
    "DATASETS",
    "Dataset",
    "ESTIMATORS",
    "GUIDES",
    "MODELS",
    "FitResult",
    "NonFiniteError",
    "PyroMoeError",
    "RunSpec",
    "Split",
    "TrainConfig",
    "TrainingInterrupted",
    "build",
    "estimator",
    "evaluate",
    "fit",
    "gradient_report",
    "load_dataset",
    "load_run",
    "select",
    "run_experiment",
]
