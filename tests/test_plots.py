"""Figures are drawn and written for a trained model."""

from __future__ import annotations

from pyro_moe import RunSpec, TrainConfig, build, fit
from pyro_moe.plots import plot_gate, plot_history, save_run_figures
from pyro_moe.runs import RunFolder


def test_run_figures_are_written(tmp_path):
    data, model, guide, est = build(RunSpec(model="moe", data="bishop", data_options={"n": 200}))
    result = fit(model, guide, est, data, TrainConfig(epochs=2, progress=False))
    paths = save_run_figures(RunFolder(tmp_path), model, data, result.history)
    assert sorted(p.name for p in paths) == ["fit.png", "training.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)
    assert len(plot_gate(model, data).axes[0].collections) == model.num_components
    assert plot_history(result.history, ["valid_nll"]).axes[0].lines[0].get_ydata().shape == (2,)


def test_cluster_figures_are_written(tmp_path):
    spec = RunSpec(
        model="vade",
        data="digits",
        data_options={"n": 120},
        model_options={"num_components": 4, "latent_dim": 3, "hidden": "16"},
    )
    data, model, guide, est = build(spec)
    result = fit(model, guide, est, data, TrainConfig(epochs=1, progress=False))
    paths = save_run_figures(RunFolder(tmp_path), model, data, result.history)
    names = {p.name for p in paths}
    assert names == {
        "training.png",
        "latent.png",
        "cluster_samples.png",
        "reconstructions.png",
        "confusion.png",
    }


def test_confusion_matrix_puts_matches_on_the_diagonal():
    from pyro_moe.plots.clustering import confusion

    table = confusion([0, 0, 1, 1, 2], [2, 2, 0, 0, 1])
    assert table.tolist() == [[2, 0, 0], [0, 2, 0], [0, 0, 1]]
