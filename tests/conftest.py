"""Every test starts from an empty param store and a fixed seed, and reads data files only from
``tests/fixtures/data`` (small cuts of MNIST and binarized MNIST, see its MANIFEST.md) with
downloads off: the suite passes on a fresh clone without ``../shared`` and without a network.
A test that needs a full file asks for the ``full_data`` fixture, which finds it or skips."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pyro
import pytest
import torch

FIXTURE_DATA = Path(__file__).resolve().parent / "fixtures" / "data"
FULL_DATA_VARIABLE = "PYRO_MOE_FULL_DATA"

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["PYRO_MOE_DATA"] = str(FIXTURE_DATA)  # inherited by the scripts the tests start
os.environ["PYRO_MOE_OFFLINE"] = "1"


@pytest.fixture(autouse=True)
def fresh_pyro_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


@pytest.fixture
def float64():
    """Run a test in double precision (exactness checks at 1e-5 and below)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def full_data() -> Callable[[str], Path]:
    """``full_data("mnist.npz")``: the path of a full data file, looked for in the folders of
    ``$PYRO_MOE_FULL_DATA``, else where the library looks by default (``../shared/data``,
    ``~/.cache/pyro_moe``); the test is skipped, saying how to get the file, when none has it."""
    from pyro_moe.data.mnist import candidate_paths, default_search_path

    entries = os.environ.get(FULL_DATA_VARIABLE, "")
    places = [Path(e) for e in entries.split(os.pathsep) if e] or default_search_path()

    def find(filename: str) -> Path:
        for candidate in candidate_paths(filename, places=places):
            if candidate.is_file():
                return candidate
        pytest.skip(
            f"needs the full {filename}: set {FULL_DATA_VARIABLE} to a folder holding it, or put "
            "it in ../shared/data or ~/.cache/pyro_moe (the loaders download it there when a "
            "network is available)"
        )

    return find
