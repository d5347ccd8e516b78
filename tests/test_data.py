"""Synthetic sets are seeded and well-formed; bad arrays get clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyro_moe.data import DATASETS, as_inputs, as_targets, load_dataset, load_npz, split_arrays
from pyro_moe.errors import ConfigError, DataError, UnknownNameError

#: the sets generated in code (the image loaders read files: tests/test_mnist_data.py)
GENERATED = [n for n, b in DATASETS.items() if b.__module__ != "pyro_moe.data.mnist"]


@pytest.mark.parametrize("name", GENERATED)
def test_synthetic_sets_are_seeded_and_split(name):
    a, b, c = load_dataset(name, seed=0), load_dataset(name, seed=0), load_dataset(name, seed=1)
    assert torch.equal(a.train.x, b.train.x) and not torch.equal(a.train.x, c.train.x)
    n = len(a.train) + len(a.valid) + len(a.test)
    assert (len(a.train), len(a.valid), len(a.test)) == (0.6 * n, 0.2 * n, 0.2 * n)
    rows = torch.cat([a.train.x, a.valid.x, a.test.x])
    assert len(torch.unique(rows, dim=0)) == n  # the splits do not share points
    assert a.train.labels is not None and a.train.x.dtype == torch.get_default_dtype()


def test_bishop_follows_its_definition():
    data = load_dataset("bishop", n=2000)
    x, t = data.train.x[:, 0], data.train.y[:, 0]
    residual = x - (t + 0.3 * torch.sin(2 * torch.pi * t))
    assert residual.abs().max() <= 0.1 and t.min() >= 0 and t.max() <= 1


def test_sign_flip_and_parabolas_follow_their_definitions():
    flip = load_dataset("sign-flip", n=2000).train
    expected = flip.x[:, 0] + torch.where(flip.x[:, 0] >= 0, -1.5, 1.5)
    assert (flip.y[:, 0] - expected).std() < 0.12
    par = load_dataset("two-parabolas", n=2000).train
    x = par.x[:, 0]
    curve = torch.where(x >= 0.3, 2 - (2 * x - 2) ** 2, (2 * x + 1) ** 2 - 1)
    assert (par.y[:, 0] - curve).std() < 0.06
    assert torch.equal(par.labels, (x >= 0.3).long())


def test_spirals_arms_are_the_labels():
    data = load_dataset("spirals", arms=4)
    assert data.num_classes == 4 and data.task == "classification"
    assert torch.equal(data.train.y, data.train.labels)
    assert set(data.train.labels.tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize(
    "x,message",
    [
        (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN/inf"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), "NaN/inf"),
        (np.zeros(5), "2-D"),
        (np.zeros((2, 3, 4)), "2-D"),
        (np.zeros((0, 3)), "empty"),
        (np.array([["a", "b"]]), "numeric"),
    ],
)
def test_bad_inputs(x, message):
    with pytest.raises(DataError, match=message):
        as_inputs(x)


def test_bad_targets():
    with pytest.raises(DataError, match="x has 3 rows but y has shape"):
        as_targets(np.zeros(4), "regression", 3)
    with pytest.raises(DataError, match=r"must lie in \[0, 3\)"):
        as_targets(np.array([0, 1, 3]), "classification", 3, num_classes=3)
    with pytest.raises(DataError, match="whole numbers"):
        as_targets(np.array([0.5, 1.0]), "classification", 2, num_classes=3)
    with pytest.raises(DataError, match="NaN"):
        as_targets(np.array([0.5, np.nan]), "regression", 2)


def test_unknown_names_and_options():
    with pytest.raises(UnknownNameError, match="known: .*bishop"):
        load_dataset("no-such-set")
    with pytest.raises(ConfigError, match="no option"):
        load_dataset("bishop", arms=3)
    with pytest.raises(
        DataError, match=r"n \(points of a synthetic data set\) must be an integer >= 10"
    ):
        load_dataset("bishop", n=3)


def test_npz_files(tmp_path):
    path = tmp_path / "mine.npz"
    x = np.random.default_rng(0).normal(size=(50, 3))
    np.savez(path, x=x, y=np.arange(50) % 4)
    data = load_npz(path)
    assert data.task == "classification" and data.num_classes == 4 and data.input_dim == 3
    np.savez(path, x=x, y=x[:, 0])
    assert load_dataset(str(path)).task == "regression"
    np.savez(path, y=x[:, 0])
    with pytest.raises(DataError, match="no array 'x'"):
        load_npz(path)
    with pytest.raises(DataError, match="does not exist"):
        load_npz(tmp_path / "missing.npz")
    path.write_text("not an archive")
    with pytest.raises(DataError, match="cannot read"):
        load_npz(path)


def test_too_few_rows_to_split():
    with pytest.raises(DataError, match="too few"):
        split_arrays("x", "regression", np.zeros((2, 1)), np.zeros(2))
