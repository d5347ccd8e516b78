"""The same seed gives bit-identical metrics.csv on CPU, for every model in the registry.

Each model's ``smoke_spec`` (a tiny run, see :class:`pyro_moe.base.PyroModel`) is trained twice
in this process with the same seed, and the two metrics.csv files must be equal byte for byte once
the wall-clock column is removed; so must the test metrics in summary.json and every tensor of the
final checkpoint. A different seed must change the metrics (the check can fail).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch

from pyro_moe import TrainConfig
from pyro_moe.checkpoint import load_checkpoint
from pyro_moe.experiment import RunSpec, run_experiment
from pyro_moe.registry import MODELS

#: columns that measure time, not computation
WALL_CLOCK = ("wall_seconds",)


def smoke_run_spec(name: str, seed: int) -> tuple[RunSpec, TrainConfig]:
    smoke = getattr(MODELS[name], "smoke_spec", None)
    if not smoke:
        pytest.fail(
            f"model {name!r} has no smoke_spec: give {MODELS[name].__name__} a class attribute "
            "smoke_spec = {'data': ..., 'data_options': ..., 'model_options': ..., "
            "'estimator': ...} describing a run of about a second"
        )
    spec = RunSpec(
        model=name,
        data=smoke["data"],
        estimator=smoke.get("estimator", "enum"),
        guide=smoke.get("guide"),
        model_options=smoke.get("model_options", {}),
        data_options=smoke.get("data_options", {}),
        estimator_options=smoke.get("estimator_options", {}),
        seed=seed,
    )
    train = {"epochs": 3, "progress": False, **smoke.get("train", {}), "seed": seed}
    return spec, TrainConfig(**train)


def metrics_without_wall_clock(run_dir: Path) -> str:
    rows = list(csv.reader((run_dir / "metrics.csv").open(newline="")))
    keep = [i for i, column in enumerate(rows[0]) if column not in WALL_CLOCK]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([[row[i] for i in keep] for row in rows])
    return out.getvalue()


def train(name: str, seed: int, run_dir: Path) -> tuple[str, dict]:
    spec, config = smoke_run_spec(name, seed)
    run_experiment(spec, config, run_dir, figures=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    return metrics_without_wall_clock(run_dir), {
        k: v for k, v in summary.items() if k not in WALL_CLOCK
    }


@pytest.mark.parametrize("name", MODELS.names())
def test_same_seed_same_bits(name, tmp_path):
    first, first_summary = train(name, 11, tmp_path / "a")
    second, second_summary = train(name, 11, tmp_path / "b")
    assert len(first.splitlines()) >= 2, "the smoke run wrote no epoch"
    assert first == second
    assert first_summary == second_summary
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    for part in ("model", "guide", "estimator"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key}"
    other, _ = train(name, 12, tmp_path / "c")
    assert other != first, "a different seed gave the same metrics: the check cannot fail"


def test_every_registered_model_is_covered():
    assert len(MODELS) >= 1 and all(getattr(MODELS[name], "smoke_spec", None) for name in MODELS), [
        name for name in MODELS if not getattr(MODELS[name], "smoke_spec", None)
    ]
