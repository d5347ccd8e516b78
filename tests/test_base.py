"""PyroModel captures constructor options from the signature, and declares the optional hooks."""

from __future__ import annotations

import torch

from pyro_moe.base import PyroModel
from pyro_moe.experiment import RunSpec, build
from pyro_moe.registry import MODELS


class Tiny(PyroModel):
    def __init__(self, input_dim: int, *, width: int = 3, scale: float = 1.0) -> None:
        super().__init__()
        self.width = width


class Tinier(Tiny):
    def __init__(self, input_dim: int, *, depth: int = 2, **options) -> None:
        super().__init__(input_dim, **options)


def test_options_are_captured_with_defaults():
    assert Tiny(4).hparams == {"width": 3, "scale": 1.0}
    assert Tiny(4, width=7).hparams == {"width": 7, "scale": 1.0}


def test_a_subclass_adds_its_options_to_its_bases():
    assert Tinier(4, width=5).hparams == {"width": 5, "scale": 1.0, "depth": 2}


def test_every_registered_model_records_its_options():
    """Each model's hparams hold exactly the options ``options()`` lists, with their defaults."""
    for name, cls in MODELS.items():
        spec = cls.smoke_spec
        assert spec, f"{name} has no smoke_spec"
        run = RunSpec(
            model=name,
            data=spec["data"],
            data_options=spec.get("data_options", {}),
            model_options=spec.get("model_options", {}),
            estimator=spec.get("estimator", "enum"),
        )
        model = build(run)[1]
        expected = {**cls.options(), **spec.get("model_options", {})}
        assert {k: model.hparams[k] for k in expected} == expected, name


def test_hooks_default_to_not_provided():
    model = Tiny(2)
    x = torch.zeros(3, 2)
    assert model.gate_log_probs(x) is None
    assert model.predict_cluster(x) is None
    assert model.embed(x) is None
    assert model.reconstruct(x) is None
    assert model.cluster_samples() is None
    assert model.validation_estimator() is None
    assert model.parameter_group("gate.0.weight") == "gate"
    assert model.parameter_group("raw_scale") == "experts"
    assert model.parameter_group("decoder.0.bias") == "model"
