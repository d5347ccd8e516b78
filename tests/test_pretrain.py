"""Building a model trains nothing and leaves torch's seed alone; pretraining is the first step
of a run, seeded with the run's seed, recorded in the checkpoint, and never repeated by a resume
or by ``evaluate``."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from pyro_moe.models.vade import VaDE

from pyro_moe import RunSpec, TrainConfig, build, fit, load_run, run_experiment
from pyro_moe.checkpoint import load_checkpoint

OPTIONS = {"num_components": 3, "latent_dim": 2, "hidden": "8", "pretrain_epochs": 2}
SPEC = RunSpec(model="vade", data="spirals", data_options={"n": 600}, model_options=OPTIONS)


def config(seed: int, epochs: int = 1) -> TrainConfig:
    return TrainConfig(epochs=epochs, seed=seed, progress=False, batch_size=120)


def encoder_state(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.encoder.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


@pytest.mark.parametrize("seed", [1, 2])
def test_build_trains_nothing_and_keeps_the_seed(seed):
    spec = dataclasses.replace(SPEC, seed=seed)
    _, model, _, _ = build(spec)
    assert torch.initial_seed() == seed  # building a VaDE once reseeded torch with 0
    plain = dataclasses.replace(spec, model_options={**OPTIONS, "pretrain_epochs": 0})
    _, untrained, _, _ = build(plain)
    assert same(encoder_state(model), encoder_state(untrained))  # building trained nothing


def test_the_run_seed_reaches_pretraining():
    _, model, _, _ = build(SPEC)
    x = model_data().train.x
    pretrained = {}
    for seed in (1, 2, 1):
        twin = copy.deepcopy(model)
        twin.pretrain(x, seed)
        pretrained.setdefault(seed, []).append(encoder_state(twin))
    assert same(pretrained[1][0], pretrained[1][1])  # same seed, same encoder
    assert not same(pretrained[1][0], pretrained[2][0])  # two seeds, two encoders
    results = {seed: fit_from(SPEC, seed) for seed in (1, 2)}
    assert results[1].pretrained["seed"] == 1 and results[2].pretrained["seed"] == 2
    assert (
        results[1].pretrained["autoencoder_losses"] != results[2].pretrained["autoencoder_losses"]
    )


def model_data():
    data, _, _, _ = build(SPEC)
    return data


def fit_from(spec: RunSpec, seed: int):
    data, model, guide, estimator = build(spec)
    return fit(model, guide, estimator, data, config(seed))


def test_pretraining_is_in_the_checkpoint_and_resume_and_evaluate_do_not_repeat_it(
    tmp_path, monkeypatch
):
    run_dir = tmp_path / "run"
    first = run_experiment(SPEC, config(seed=3), run_dir, figures=False)
    stored = load_checkpoint(run_dir / "checkpoint.pt")["pretrain"]
    assert stored["seed"] == 3 and stored == first.pretrained
    assert first.history[0]["epoch"] == 0  # the pretrained start is validated as epoch 0

    def refuse(*args, **kwargs):
        raise AssertionError("pretrained again")

    monkeypatch.setattr(VaDE, "pretrain", refuse)
    resumed = run_experiment(SPEC, config(seed=3, epochs=2), run_dir, resume=True, figures=False)
    assert resumed.state.epoch == 2 and resumed.pretrained == stored
    assert load_checkpoint(run_dir / "checkpoint.pt")["pretrain"] == stored
    model, _, _ = load_run(run_dir)
    assert isinstance(model, VaDE)
