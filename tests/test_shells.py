"""The Table-1 ``shells`` sets follow their definition and reject bad options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyro_moe.data import load_dataset
from pyro_moe.errors import DataError


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_shells_follow_their_definition(dim):
    data = load_dataset("shells", dim=dim, clusters=3, n=600, seed=3)
    assert data.input_dim == dim and data.task == "regression"
    meta = data.meta
    for split in (data.train, data.valid, data.test):
        radius = split.x.norm(dim=1)
        k = split.labels
        low = torch.tensor(meta["radii"])[k]
        assert torch.all(radius >= low - 1e-6) and torch.all(radius <= low + meta["width"] + 1e-6)
        w = torch.tensor(meta["weights"], dtype=split.x.dtype)[k]
        b = torch.tensor(meta["offsets"], dtype=split.x.dtype)[k]
        residual = split.y[:, 0] - (w * split.x).sum(1) - b
        assert residual.abs().max() < 5 * meta["noise"]
        assert residual.std() == pytest.approx(meta["noise"], rel=0.25)
    assert set(data.train.labels.tolist()) == {0, 1, 2}


def test_shells_are_not_linearly_separable_in_one_dimension():
    x = load_dataset("shells", dim=1, n=400).train
    inner = x.x[x.labels == 0, 0]
    assert inner.min() < 0 < inner.max()  # the inner shell lies on both sides of the outer ones
    outer = x.x[x.labels == 2, 0]
    assert outer.min() < inner.min() and outer.max() > inner.max()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"dim": 0}, "dim"),
        ({"clusters": 0}, "clusters"),
        ({"width": 2.0, "gap": 1.0}, "width < gap"),
        ({"noise": -1.0}, "noise"),
        ({"n": 5}, "n must be an integer >= 10"),
    ],
)
def test_shells_reject_bad_options(options, message):
    with pytest.raises(DataError, match=message):
        load_dataset("shells", **options)


def test_shells_seed_fixes_functions_and_points():
    a, b = load_dataset("shells", seed=4), load_dataset("shells", seed=4)
    assert np.allclose(a.meta["weights"], b.meta["weights"])
    assert torch.equal(a.test.y, b.test.y)
