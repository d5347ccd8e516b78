"""The SVI loop: exact resume, files, early stopping, failures that keep the last checkpoint."""

from __future__ import annotations

import csv
from dataclasses import replace

import pytest
import torch

from pyro_moe import RunSpec, TrainConfig, build, fit
from pyro_moe.errors import ConfigError, DataError, TrainingError
from pyro_moe.estimators.base import Estimator

SPEC = RunSpec(
    model="moe",
    data="bishop",
    estimator="reinforce-avg",
    guide="posterior",
    model_options={"gate": "mlp"},
    data_options={"n": 400},
)
# 240 training rows, batch 32: 7 steps per epoch, so step 50 falls inside epoch 8
CONFIG = TrainConfig(batch_size=32, lr=1e-2, epochs=100, seed=3, progress=False, restore_best=False)


def fresh(spec: RunSpec = SPEC):
    """(model, guide, estimator, data) for ``spec``, in :func:`fit`'s argument order."""
    data, model, guide, estimator = build(spec)
    return model, guide, estimator, data


def _parameters(result) -> dict[str, torch.Tensor]:
    return {
        **{f"model.{k}": v for k, v in result.model.state_dict().items()},
        **{f"guide.{k}": v for k, v in result.guide.state_dict().items()},
    }


@pytest.mark.parametrize("estimator", ["enum", "reinforce-avg"])
def test_resume_replays_the_run_exactly(tmp_path, estimator):
    spec = replace(SPEC, estimator=estimator)
    straight = fit(*fresh(spec), replace(CONFIG, max_steps=100))
    run = tmp_path / "run"
    first = fit(*fresh(spec), replace(CONFIG, max_steps=50), run)
    assert first.state.step == 50 and first.state.batch == 50 - 7 * 7
    resumed = fit(*fresh(spec), replace(CONFIG, max_steps=100), run, resume=True)
    assert resumed.state.step == 100
    a, b = _parameters(straight), _parameters(resumed)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), name
    assert [r["step"] for r in resumed.history] == [7 * e for e in range(1, 15)]
    for row_a, row_b in zip(straight.history, resumed.history, strict=True):
        assert row_a["valid_loss"] == pytest.approx(row_b["valid_loss"], abs=1e-6)


def test_run_folder_files(tmp_path):
    result = fit(*fresh(), replace(CONFIG, epochs=3), tmp_path, run_info={"model": "moe"})
    for name in ("config.json", "metrics.csv", "checkpoint.pt", "best.pt"):
        assert (tmp_path / name).is_file(), name
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert set(rows[0]) >= {
        "step",
        "epoch",
        "wall_seconds",
        "train_loss",
        "valid_loss",
        "valid_nll",
        "valid_mse",
    }
    assert result.history[-1]["step"] == 3 * 7
    assert not list(tmp_path.glob("*.tmp"))


def test_a_second_run_does_not_overwrite_the_first(tmp_path):
    fit(*fresh(), replace(CONFIG, epochs=1), tmp_path)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run"):
        fit(*fresh(), replace(CONFIG, epochs=1), tmp_path)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


class NaNAfter(Estimator):
    """A broken estimator: the enum loss, then NaN from step ``after`` on."""

    name = "nan-after"
    needs_guide_site = False

    def __init__(self, after: int):
        super().__init__()
        from pyro_moe.estimators.enum import Enumerate

        self.inner, self.after, self.calls = Enumerate(), after, 0

    def loss(self, model, guide, *args, **kwargs):
        self.calls += 1
        loss = self.inner.loss(model, guide, *args, **kwargs)
        return loss * float("nan") if self.calls > self.after else loss


def test_a_non_finite_loss_stops_training_and_keeps_the_checkpoint(tmp_path):
    model, guide, _, data = fresh(replace(SPEC, estimator="enum"))
    fit(model, guide, NaNAfter(10**9), data, replace(CONFIG, epochs=2), tmp_path)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    model, guide, _, data = fresh(replace(SPEC, estimator="enum"))
    with pytest.raises(TrainingError, match=r"step 17 .*loss is nan.*checkpoint.pt is kept"):
        fit(model, guide, NaNAfter(2), data, replace(CONFIG, epochs=4), tmp_path, resume=True)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_early_stopping_restores_the_best_epoch():
    model, guide, est, data = fresh(replace(SPEC, estimator="enum"))
    # a learning rate this large makes validation worse after a few epochs
    config = TrainConfig(batch_size=32, lr=0.5, epochs=200, patience=3, progress=False)
    result = fit(model, guide, est, data, config)
    assert result.stopped_early
    best = min(row["valid_nll"] for row in result.history)
    assert result.state.epoch - result.state.best_epoch == 3
    assert model.evaluate(data.valid.x, data.valid.y)["nll"] == pytest.approx(best, abs=1e-5)


@pytest.mark.parametrize(
    "bad",
    [
        {"epochs": 0},
        {"batch_size": -1},
        {"lr": 0.0},
        {"lr": float("nan")},
        {"patience": 0},
        {"clip_norm": 0.0},
        {"max_steps": 0},
    ],
)
def test_bad_training_options_are_refused(bad):
    with pytest.raises(ConfigError):
        TrainConfig(**bad)


def test_batch_larger_than_the_data_is_refused():
    with pytest.raises(DataError, match="larger than the 240 training rows"):
        fit(*fresh(), TrainConfig(batch_size=1000))


def test_three_experts_beat_one_gaussian_on_bishops_inverse_problem():
    """Measured with these settings (seed 0): 3-expert MoE (MLP gate, linear experts, enum)
    test log-likelihood 0.99 nats/point; single-Gaussian MLP regression 0.26 nats/point.
    p(t|x) has three branches where x is near 0.5, which one Gaussian cannot represent."""
    config = TrainConfig(epochs=200, batch_size=100, lr=2e-2, patience=40, progress=False)

    def test_log_likelihood(options):
        model, guide, est, data = fresh(RunSpec(model="moe", data="bishop", model_options=options))
        fit(model, guide, est, data, config)
        return model.log_likelihood(data.test.x, data.test.y).mean().item()

    mixture = test_log_likelihood({"num_components": 3, "gate": "mlp", "expert": "linear"})
    single = test_log_likelihood({"num_components": 1, "expert": "mlp"})
    assert mixture > 0.9 and single < 0.35
    assert mixture > single + 0.5


def test_callbacks_add_columns_to_each_epoch():
    seen = []

    def count_steps(trainer):
        seen.append(trainer.state.step)
        return {"extra_metric": float(trainer.state.epoch)}

    result = fit(*fresh(), replace(CONFIG, epochs=3), callbacks=[count_steps])
    assert seen == [7, 14, 21]
    assert [row["extra_metric"] for row in result.history] == [1.0, 2.0, 3.0]
