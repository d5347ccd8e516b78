"""The image loaders read ../shared/data (MANIFEST.md) and scikit-learn's digits; bad paths and
options give one clear DataError."""

from __future__ import annotations

import numpy as np
import pytest

from pyro_moe.data import load_dataset
from pyro_moe.data.mnist import data_file
from pyro_moe.errors import DataError, PyroMoeError


def test_mnist_standard_split_shapes_and_range():
    data = load_dataset("mnist", limit=50)
    assert data.train.x.shape == (50, 784) and data.test.x.shape == (50, 784)
    assert float(data.train.x.min()) >= 0.0 and float(data.train.x.max()) <= 1.0
    assert data.train.y is None and data.train.labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert data.test.labels[:5].tolist() == [7, 2, 1, 0, 4]  # MANIFEST.md's first test labels


def test_mnist_all_split_holds_70000_rows():
    data = load_dataset("mnist", split="all")
    assert len(data.train) == 70000 and len(data.test) == 10000
    counts = np.bincount(data.train.labels.numpy(), minlength=10)
    assert counts[0] == 5923 + 980 and counts[9] == 5949 + 1009


def test_mnist_classification_has_targets():
    data = load_dataset("mnist", task="classification", limit=20)
    assert data.task == "classification" and data.num_classes == 10
    assert data.train.y.dtype.is_floating_point is False


def test_binarized_mnist_bits_and_sorted_test_labels():
    data = load_dataset("binarized-mnist")
    assert (len(data.train), len(data.valid), len(data.test)) == (50000, 10000, 10000)
    assert set(np.unique(data.train.x[:100].numpy())) <= {0.0, 1.0}
    assert data.train.labels is None
    labels = data.test.labels.numpy()
    assert (np.diff(labels) >= 0).all() and np.bincount(labels)[1] == 1135


def test_digits_loader_splits_with_seed():
    a, b = load_dataset("digits", seed=3), load_dataset("digits", seed=3)
    assert a.train.x.shape[1] == 64 and float(a.train.x.max()) <= 1.0
    assert len(a.train) + len(a.valid) + len(a.test) == 1797
    assert (a.train.labels == b.train.labels).all()


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", path=str(tmp_path / "nope.npz"))
    with pytest.raises(DataError, match="not found"):
        data_file("absent.npz", download=False)


def test_broken_file_and_bad_options(tmp_path):
    bad = tmp_path / "mnist.npz"
    np.savez(bad, x_train=np.zeros((2, 28, 28)))
    with pytest.raises(DataError, match="lacks arrays"):
        load_dataset("mnist", path=str(bad))
    for options in ({"task": "regression"}, {"limit": 0}, {"split": "half"}):
        with pytest.raises(PyroMoeError):
            load_dataset("mnist", **options)
