"""Faults inside one process: a crash between checkpoints, SIGINT, NaN / inf steps.

Each test compares against an uninterrupted run bit for bit (``torch.equal``), or checks the exact
step, site and parameter that a non-finite step is reported with.
"""

from __future__ import annotations

import math
import signal
from dataclasses import replace

import pytest
import torch

from pyro_moe import RunSpec, TrainConfig, build, fit
from pyro_moe.checkpoint import load_checkpoint
from pyro_moe.data import split_arrays
from pyro_moe.errors import ConfigError, NonFiniteError, TrainingInterrupted
from pyro_moe.estimators.base import Estimator
from pyro_moe.estimators.enum import Enumerate
from pyro_moe.estimators.reinforce import Reinforce
from pyro_moe.train import NonFiniteStepWarning

SPEC = RunSpec(model="moe", data="sign-flip", data_options={"n": 100}, seed=1)
# 60 training rows, batch 8: 7 steps per epoch
CONFIG = TrainConfig(batch_size=8, lr=2e-2, epochs=5, seed=4, progress=False, restore_best=False)


class Crash(BaseException):
    """Stands in for SIGKILL: nothing after it runs (no handler writes a checkpoint)."""


class Faulty(Estimator):
    """``enum``, with a fault injected when the loss is computed for the ``at``-th time."""

    name = "faulty"
    needs_guide_site = False

    def __init__(self, fault, at: set[int], inner: Estimator | None = None):
        super().__init__()
        self.inner, self.fault, self.at, self.calls = inner or Enumerate(), fault, at, 0

    def advance(self, step: int) -> None:
        self.inner.advance(step)

    def loss(self, model, guide, *args, **kwargs):
        self.calls += 1
        if self.calls in self.at:
            return self.fault(self.inner, model, guide, *args, **kwargs)
        return self.inner.loss(model, guide, *args, **kwargs)


def _crash(inner, *args, **kwargs):
    raise Crash


def _sigint(inner, *args, **kwargs):
    signal.raise_signal(signal.SIGINT)  # arrives in the middle of the step
    return inner.loss(*args, **kwargs)


def _nan_loss(inner, *args, **kwargs):
    return inner.loss(*args, **kwargs) * float("nan")


def pieces(spec: RunSpec = SPEC):
    data, model, guide, _ = build(spec)
    return model, guide, data


def train(estimator=None, config=CONFIG, run_dir=None, resume=False):
    model, guide, data = pieces()
    return fit(model, guide, estimator or Enumerate(), data, config, run_dir, resume)


def assert_same_state(a, b) -> None:
    for part in ("model", "guide"):
        sa, sb = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert sa.keys() == sb.keys()
        for name in sa:
            assert torch.equal(sa[name], sb[name]), f"{part}.{name}"
    assert a.state.step == b.state.step and a.state.epoch == b.state.epoch
    strip = [{k: v for k, v in row.items() if k != "wall_seconds"} for row in a.history]
    assert strip == [{k: v for k, v in row.items() if k != "wall_seconds"} for row in b.history]


def test_a_crash_between_checkpoints_loses_at_most_checkpoint_every_steps(tmp_path):
    straight = train()
    config = replace(CONFIG, checkpoint_every=3)
    with pytest.raises(Crash):
        train(Faulty(_crash, {17}), config, tmp_path)  # dies in step 17 of 35
    saved = load_checkpoint(tmp_path / "checkpoint.pt")["train_state"]
    assert saved["step"] == 15 and saved["batch"] == 1  # the last multiple of 3, mid-epoch 3
    assert_same_state(straight, train(config=config, run_dir=tmp_path, resume=True))


class Annealed(Enumerate):
    """``enum`` with a temperature schedule kept in a buffer: loss * (1 + T), T <- 0.9 T."""

    def __init__(self):
        super().__init__()
        self.register_buffer("temperature", torch.tensor(1.0))

    def loss(self, model, guide, *args, **kwargs):
        return super().loss(model, guide, *args, **kwargs) * (1 + self.temperature)

    def advance(self, step: int) -> None:
        self.temperature.mul_(0.9)


def test_estimator_state_such_as_a_temperature_schedule_resumes(tmp_path):
    config = replace(CONFIG, checkpoint_every=3)
    straight = train(Faulty(_crash, set(), Annealed()), config)
    with pytest.raises(Crash):
        train(Faulty(_crash, {17}, Annealed()), config, tmp_path)
    saved = load_checkpoint(tmp_path / "checkpoint.pt")["estimator"]["inner.temperature"]
    assert saved.item() == pytest.approx(0.9**15)
    resumed = train(Faulty(_crash, set(), Annealed()), config, tmp_path, resume=True)
    assert torch.equal(resumed.estimator.inner.temperature, straight.estimator.inner.temperature)
    assert_same_state(straight, resumed)


def test_sigint_finishes_the_step_writes_a_checkpoint_and_resumes_exactly(tmp_path):
    straight = train()
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN under nohup / a background job
    with pytest.raises(TrainingInterrupted, match="SIGINT received: stopped after step 10") as e:
        train(Faulty(_sigint, {10}), CONFIG, tmp_path)
    assert e.value.exit_code == 130 and e.value.step == 10
    assert load_checkpoint(tmp_path / "checkpoint.pt")["train_state"]["step"] == 10
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler is restored
    assert_same_state(straight, train(run_dir=tmp_path, resume=True))


def test_nan_loss_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    config = replace(CONFIG, checkpoint_every=4)
    with pytest.raises(NonFiniteError) as e:
        train(Faulty(_nan_loss, {11}), config, tmp_path)
    message = str(e.value)
    assert "step 11 (epoch 2): the loss is nan" in message
    assert "every site and parameter is finite, so the estimator's surrogate made it" in message
    assert "checkpoint.pt is kept" in message and e.value.step == 11
    assert load_checkpoint(tmp_path / "checkpoint.pt")["train_state"]["step"] == 8


def _nan_parameter(inner, model, guide, *args, **kwargs):
    with torch.no_grad():
        model.__self__.raw_scale[0, 0] = float("nan")  # model is the bound method
    return inner.loss(model, guide, *args, **kwargs)


def test_a_nan_parameter_is_named():
    with pytest.raises(
        NonFiniteError, match="step 5 .*non-finite parameter values: model.raw_scale"
    ):
        train(Faulty(_nan_parameter, {5}))


def _nan_gate(inner, model, guide, *args, **kwargs):
    with torch.no_grad():
        model.__self__.gate.weight[0, 0] = float("nan")  # q(c|x) = p(c|x): the draw fails
    return inner.loss(model, guide, *args, **kwargs)


def test_a_nan_parameter_after_the_validated_first_step_is_named():
    """A sampling estimator validates only its first call; a NaN gate later makes the categorical
    draw fail, which is reported as a non-finite step naming the parameter, not a crash."""
    data, model, guide, _ = build(replace(SPEC, guide="gate"))
    with pytest.raises(NonFiniteError, match="step 6 .*non-finite parameter values: model.gate"):
        fit(model, guide, Faulty(_nan_gate, {6}, Reinforce()), data, CONFIG)


def _nan_gradient(inner, model, guide, *args, **kwargs):
    model.__self__.gate.weight.register_hook(lambda g: g * float("nan"))
    return inner.loss(model, guide, *args, **kwargs)


def test_a_nan_gradient_names_the_parameter():
    with pytest.raises(NonFiniteError, match="step 3 .*gradient of model.gate.weight") as e:
        train(Faulty(_nan_gradient, {3}))
    assert e.value.parameter == "model.gate.weight" and e.value.site is None


def test_an_overflowing_log_prob_names_the_site():
    """Finite data, but (y - mean)^2 overflows float32: log p at the `label` site is -inf."""
    x = torch.linspace(-1, 1, 30)[:, None]
    y = torch.where(torch.arange(30) % 3 == 0, 1e25, 0.0)[:, None]  # huge targets
    data = split_arrays("huge", "regression", x, y, seed=0)
    _, model, guide, _ = build(SPEC, data)
    with torch.no_grad():
        model.raw_scale.zero_()  # noise scales about 0.7, not the data-dependent std(y) / 4
    with pytest.raises(
        NonFiniteError, match="non-finite at model site 'label' \\(log_prob\\)"
    ) as e:
        fit(model, guide, Enumerate(), data, replace(CONFIG, batch_size=18))
    assert e.value.site == "label" and e.value.step >= 1


def test_skipping_non_finite_steps_is_bounded():
    config = replace(CONFIG, max_nonfinite_skips=2)
    with pytest.warns(NonFiniteStepWarning, match="skipped step (4|9)") as record:
        result = train(Faulty(_nan_loss, {4, 9}), config)
    assert len(record) == 2 and result.state.nonfinite_skips == 2
    assert result.state.step == 35 and result.history[-1]["nonfinite_skips"] == 2
    with (
        pytest.warns(NonFiniteStepWarning),
        pytest.raises(NonFiniteError, match="after skipping 1"),
    ):
        train(Faulty(_nan_loss, {4, 9}), replace(config, max_nonfinite_skips=1))


def test_a_skipped_step_changes_nothing():
    """Three steps whose third is skipped leave the parameters of two steps (Adam included)."""
    two = train(config=replace(CONFIG, max_steps=2))
    with pytest.warns(NonFiniteStepWarning):
        three = train(Faulty(_nan_loss, {3}), replace(CONFIG, max_steps=3, max_nonfinite_skips=1))
    for name, value in two.model.state_dict().items():
        assert torch.equal(value, three.model.state_dict()[name]), name


@pytest.mark.parametrize(
    "bad",
    [
        {"checkpoint_every": 0},
        {"max_nonfinite_skips": -1},
        {"max_nonfinite_skips": 1.5},
        {"seed": -1},
        {"clip_norm": "big"},
        {"device": 3},
        {"restore_best": "yes"},
    ],
)
def test_reliability_options_are_checked(bad):
    with pytest.raises(ConfigError):
        TrainConfig(**bad)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_the_fused_gradient_check_finds_one_bad_entry_anywhere(bad):
    """``all_finite`` (sums first) agrees with the per-entry check: one NaN or inf entry in any
    tensor fails it; huge finite values whose sum overflows, integers and None pass."""
    from pyro_moe.nonfinite import all_finite

    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(50, 40, generator=g), None, torch.full((7,), 1e38)]
    assert all_finite(tensors) and all_finite([]) and all_finite([torch.arange(3)])
    for i in (0, 2):
        broken = [t.clone() if t is not None else None for t in tensors]
        broken[i].view(-1)[5] = bad
        assert not all_finite(broken)
