"""A user's own data: arrays or a .npz with x / y / labels (split by the library, fractions and
seed settable) or with x_train ... labels_test (used exactly as given); ground-truth labels give
accuracy / NMI / ARI in summary.json and in ``evaluate``, from the shell and from Python."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pyro_moe import Dataset, RunSpec, TrainConfig, build, load_run, metrics, run_experiment
from pyro_moe.cli import main
from pyro_moe.data import load_dataset
from pyro_moe.errors import ConfigError, DataError

QUICK = TrainConfig(epochs=3, progress=False)


def blobs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three Gaussian blobs 20 standard deviations apart: any sensible clustering is exact."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    centres = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    return centres[labels] + rng.normal(size=(n, 2)), labels


def own_split_arrays() -> dict[str, np.ndarray]:
    arrays = {}
    for split, n in (("train", 60), ("valid", 21), ("test", 30)):
        x, labels = blobs(n, seed=len(split) + n)
        arrays |= {f"x_{split}": x, f"labels_{split}": labels}
    return arrays


def test_own_split_is_used_exactly(tmp_path):
    arrays = own_split_arrays()
    path = tmp_path / "mine.npz"
    np.savez(path, **arrays)
    for data in (Dataset.from_arrays(**arrays), load_dataset(str(path), seed=5)):
        assert data.task == "clustering" and data.meta["split"] == "given"
        for split in ("train", "valid", "test"):
            part = getattr(data, split)
            assert torch.equal(part.x, torch.as_tensor(arrays[f"x_{split}"], dtype=part.x.dtype))
            assert part.labels.tolist() == arrays[f"labels_{split}"].tolist()
            assert part.y is None


@pytest.mark.parametrize("name", ["task", "X", "seed"])
def test_a_file_with_an_unknown_array_is_one_clear_data_error(tmp_path, name):
    path = tmp_path / "odd.npz"
    np.savez(path, x=np.zeros((9, 2)), **{name: np.zeros(9)})
    with pytest.raises(DataError, match=f"unknown array.*{name}"):
        load_dataset(str(path))


def test_library_split_fractions_and_seed_are_settable(tmp_path):
    x, labels = blobs(100)
    y = x[:, 0] + x[:, 1]
    path = tmp_path / "reg.npz"
    np.savez(path, x=x, y=y, labels=labels)
    default = load_dataset(str(path))
    assert default.task == "regression"
    assert (len(default.train), len(default.valid), len(default.test)) == (60, 20, 20)
    chosen = load_dataset(str(path), train_fraction=0.7, valid_fraction=0.1)
    assert (len(chosen.train), len(chosen.valid), len(chosen.test)) == (70, 10, 20)
    same = load_dataset(str(path), seed=3, split_seed=0)
    assert torch.equal(same.train.x, default.train.x)
    assert not torch.equal(load_dataset(str(path), seed=3).train.x, default.train.x)
    rows = {tuple(r) for r in default.train.x.tolist() + default.valid.x.tolist()}
    assert len(rows | {tuple(r) for r in default.test.x.tolist()}) == 100  # a partition
    assert torch.allclose(
        default.train.y[:, 0], default.train.x.sum(1), atol=1e-5
    )  # rows stay whole


def test_labels_y_and_task_rules():
    x, labels = blobs(30)
    assert Dataset.from_arrays(x=x, labels=labels).task == "clustering"
    as_labels = Dataset.from_arrays(x=x, y=labels, task="clustering")
    assert as_labels.train.y is None and as_labels.train.labels is not None
    classes = Dataset.from_arrays(x=x, y=labels)
    assert classes.task == "classification" and classes.num_classes == 3
    assert torch.equal(classes.train.labels, classes.train.y)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.zeros((9, 2)), "X_test": np.zeros((3, 2))}, "unknown array"),
        ({"x": np.zeros((9, 2)), "x_train": np.zeros((3, 2))}, "not both"),
        ({"x_train": np.zeros((9, 2)), "x_test": np.zeros((3, 2))}, "missing x_valid"),
        (
            {
                **{f"x_{s}": np.zeros((3, 2)) for s in ("train", "valid", "test")},
                "y_train": [1] * 3,
            },
            "needs all of train, valid, test",
        ),
        (
            {"x_train": np.zeros((3, 2)), "x_valid": np.zeros((3, 2)), "x_test": np.zeros((3, 4))},
            "different widths",
        ),
        ({"x": np.zeros((9, 2)), "y": np.arange(9), "labels": np.arange(9), "task": 0}, "task"),
        ({"x": np.zeros((9, 2)), "labels": -np.arange(9)}, r"\[0, "),
    ],
    ids=["unknown", "mixed", "missing", "partial-y", "widths", "bad-task", "negative-labels"],
)
def test_bad_arrays_are_one_clear_data_error(arrays, message):
    with pytest.raises(DataError, match=message):
        Dataset.from_arrays(**arrays)


@pytest.mark.parametrize("fractions", [(0.0, 0.2), (0.7, 0.3), (0.5, True)])
def test_bad_fractions(fractions):
    with pytest.raises(DataError, match="fraction"):
        Dataset.from_arrays(
            x=np.zeros((20, 1)), train_fraction=fractions[0], valid_fraction=fractions[1]
        )


def test_labels_give_clustering_scores_in_summary_and_evaluate_from_the_shell(tmp_path, capsys):
    x, labels = blobs(150)
    path = tmp_path / "blobs.npz"
    np.savez(path, x=x, labels=labels)
    out = tmp_path / "run"
    argv = ["train", "gmm", "--data", str(path), "-K", "3", "--out", str(out), "--quiet"]
    assert main([*argv, "--epochs", "5", "--no-figures"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    model, _, data = load_run(out)
    truth = metrics.clustering_scores(data.test.labels, model.predict_cluster(data.test.x))
    for key in ("accuracy", "nmi", "ari"):
        assert summary[f"test_{key}"] == pytest.approx(truth[key]), key
    assert "valid_accuracy" in summary and "valid_accuracy" in (out / "metrics.csv").read_text()
    assert summary["test_accuracy"] == 1.0 and summary["test_ari"] == 1.0  # blobs 20 sd apart
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["test_ari"] == pytest.approx(truth["ari"])


def test_run_experiment_takes_a_model_name_and_a_dataset(tmp_path):
    x, labels = blobs(150)
    data = Dataset.from_arrays(x=x, labels=labels)
    result = run_experiment("gmm", QUICK, tmp_path / "run", figures=False, data=data)
    assert {"test_accuracy", "test_nmi", "test_ari"} <= set(result.summary)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"] is None and config["model"] == "gmm"
    model, _, same = load_run(tmp_path / "run", data=data)
    assert same is data and model.num_components == 3
    with pytest.raises(ConfigError, match="no data"):
        load_run(tmp_path / "run")
    with pytest.raises(ConfigError, match="no data"):
        build(RunSpec(model="gmm"))


def test_data_options_apply_to_a_file_from_the_shell(tmp_path):
    x, labels = blobs(60)
    path = tmp_path / "xy.npz"
    np.savez(path, x=x, y=labels)  # integer y: classification, unless told otherwise
    out = tmp_path / "run"
    argv = ["train", "gmm", "--data", str(path), "-K", "3", "--out", str(out), "--quiet"]
    options = ["--data-option", "task=clustering", "--data-option", "valid_fraction=0.25"]
    assert main([*argv, *options, "--epochs", "1", "--no-figures"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["data_options"] == {"task": "clustering", "valid_fraction": 0.25}
    assert "test_ari" in json.loads((out / "summary.json").read_text())
    assert main([*argv, "--data-option", "folds=3", "--overwrite"]) == 2
