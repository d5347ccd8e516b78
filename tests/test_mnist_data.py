"""The image loaders on the small real cuts in tests/fixtures/data (MANIFEST.md there), the same
loaders on the full files when they are found (``full_data`` skips otherwise), scikit-learn's
digits, and one clear DataError for bad paths and options."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pyro_moe.data import load_dataset
from pyro_moe.data.mnist import data_file, downloads_allowed, search_path
from pyro_moe.errors import DataError, PyroMoeError
from tests.conftest import FIXTURE_DATA


def test_the_suite_reads_only_the_fixtures_and_never_downloads():
    assert search_path() == [FIXTURE_DATA]
    assert not downloads_allowed()
    for name in ("mnist.npz", "binarized_mnist.npz"):
        assert data_file(name) == FIXTURE_DATA / name
        assert os.path.getsize(FIXTURE_DATA / name) < 200_000


def test_mnist_standard_split_shapes_and_range():
    data = load_dataset("mnist", limit=50)
    assert data.train.x.shape == (50, 784) and data.test.x.shape == (50, 784)
    assert float(data.train.x.min()) >= 0.0 and float(data.train.x.max()) <= 1.0
    assert data.train.y is None and data.train.labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert data.test.labels[:5].tolist() == [7, 2, 1, 0, 4]  # MANIFEST.md's first test labels


def test_mnist_fixture_split_keeps_the_last_sixth_for_validation():
    data = load_dataset("mnist")
    assert (len(data.train), len(data.valid), len(data.test)) == (500, 100, 200)
    everything = load_dataset("mnist", split="all")
    assert len(everything.train) == 800 and len(everything.test) == 200
    assert np.bincount(everything.test.labels.numpy(), minlength=10)[0] == 17


def test_mnist_classification_has_targets():
    data = load_dataset("mnist", task="classification", limit=20)
    assert data.task == "classification" and data.num_classes == 10
    assert data.train.y.dtype.is_floating_point is False


def test_binarized_fixture_is_the_binarization_of_the_mnist_fixture_test_rows():
    data, grey = load_dataset("binarized-mnist"), load_dataset("mnist")
    assert (len(data.train), len(data.valid), len(data.test)) == (500, 100, 200)
    assert set(np.unique(data.train.x.numpy())) <= {0.0, 1.0} and data.train.labels is None
    labels = data.test.labels.numpy()
    assert (np.diff(labels) >= 0).all() and np.bincount(labels)[1] == 28
    order = np.argsort(grey.test.labels.numpy(), kind="stable")
    on = data.test.x.numpy() == 1
    assert (grey.test.x.numpy()[order][on] > 0).all()  # every 'on' bit lies on ink


def test_full_mnist_all_split_holds_70000_rows(full_data):
    data = load_dataset("mnist", split="all", path=str(full_data("mnist.npz")))
    assert len(data.train) == 70000 and len(data.test) == 10000
    counts = np.bincount(data.train.labels.numpy(), minlength=10)
    assert counts[0] == 5923 + 980 and counts[9] == 5949 + 1009


def test_full_binarized_mnist_bits_and_sorted_test_labels(full_data):
    full_data("mnist.npz")  # the test labels come from the MNIST file beside it
    data = load_dataset("binarized-mnist", path=str(full_data("binarized_mnist.npz")))
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


def test_missing_file_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", path=str(tmp_path / "nope.npz"))
    with pytest.raises(DataError, match="not found"):
        data_file("absent.npz")
    monkeypatch.setenv("PYRO_MOE_DATA", str(tmp_path))
    with pytest.raises(DataError, match="not found"):
        load_dataset("binarized-mnist")


def test_broken_file_and_bad_options(tmp_path):
    bad = tmp_path / "mnist.npz"
    np.savez(bad, x_train=np.zeros((2, 28, 28)))
    with pytest.raises(DataError, match="lacks arrays"):
        load_dataset("mnist", path=str(bad))
    for options in ({"task": "regression"}, {"limit": 0}, {"split": "half"}):
        with pytest.raises(PyroMoeError):
            load_dataset("mnist", **options)
