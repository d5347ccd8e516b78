"""Matplotlib figures, one module per kind of model or study:

* :mod:`~pyro_moe.plots.run`: the training history and the figures a run folder gets
  (:func:`save_run_figures`);
* :mod:`~pyro_moe.plots.regression`: 1-D regression experts (predictive density, gate);
* :mod:`~pyro_moe.plots.partition`: 2-D inputs (data, the gate's partition of the plane, fits);
* :mod:`~pyro_moe.plots.clustering`: clustering models (latent, samples, reconstructions,
  confusion);
* :mod:`~pyro_moe.plots.estimators`: the estimator comparison (bias and variance, SNR, objective
  against time).
"""

from pyro_moe.plots.regression import plot_gate, plot_regression_fit, plot_regression_run
from pyro_moe.plots.run import plot_history, save_run_figures

__all__ = [
    "plot_gate",
    "plot_history",
    "plot_regression_fit",
    "plot_regression_run",
    "save_run_figures",
]
