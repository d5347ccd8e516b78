"""Bad input at the boundary (data loaders, ``fit``, the CLI) is a clean PyroMoeError.

Property-based (hypothesis): malformed arrays, data sets and options either work or raise a
:class:`~pyro_moe.errors.PyroMoeError` (never another exception type), and the CLI exits 0 or 2
with one line on stderr and writes nothing outside its run folder.
"""

from __future__ import annotations

import io
import os
import tempfile
from contextlib import redirect_stderr, redirect_stdout, suppress
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pyro_moe import RunSpec, TrainConfig, build, fit
from pyro_moe.cli import main
from pyro_moe.data import Dataset, Split, load_npz, split_arrays
from pyro_moe.errors import ConfigError, DataError, PyroMoeError, UnknownNameError
from pyro_moe.validation import check_dataset

DTYPES = [np.float64, np.float32, np.float16, np.int64, np.int8, np.uint8, np.bool_, np.complex64]
# PYRO_MOE_HYPOTHESIS_EXAMPLES=2000 for a longer search (and PYRO_MOE_HYPOTHESIS_RANDOM=1 for
# a different search each run); the default is small and derandomized to keep `make test` fast
EXAMPLES = int(os.environ.get("PYRO_MOE_HYPOTHESIS_EXAMPLES", "60"))
DERANDOMIZE = not os.environ.get("PYRO_MOE_HYPOTHESIS_RANDOM")
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=DERANDOMIZE,
)


def arrays(max_dims: int = 3):
    numeric = st.sampled_from(DTYPES).flatmap(
        lambda dtype: hnp.arrays(
            dtype,
            hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=12),
        )
    )
    odd = st.sampled_from(
        [
            np.array([["a", "b"]] * 10),
            np.array([[1.0, None]] * 10, dtype=object),
            np.full((10, 2), np.nan),
            np.array([[np.inf]] * 10),
            [[1, 2], [3]],
        ]
    )
    return st.one_of(numeric, odd)


TASKS = st.sampled_from(["regression", "classification", "clustering", "bogus"])


@SETTINGS
@given(x=arrays(), y=st.one_of(st.none(), arrays(2)), task=TASKS)
def test_malformed_arrays_give_a_dataset_or_a_data_error(x, y, task):
    try:
        data = split_arrays("h", task, x, y, seed=0)
    except PyroMoeError:
        return
    check_dataset(data)  # whatever is accepted is a valid data set


@SETTINGS
@given(x=arrays(), y=st.one_of(st.none(), arrays(2)))
def test_malformed_npz_files_give_a_dataset_or_a_data_error(x, y):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.npz"
        try:
            np.savez(path, x=np.asarray(x), **({} if y is None else {"y": y}))
        except (ValueError, TypeError):  # numpy cannot store it: not our input
            return
        with suppress(PyroMoeError):
            check_dataset(load_npz(path))


TRAIN_VALUES = st.one_of(
    st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.booleans(),
    st.text(max_size=3),
)


@SETTINGS
@given(
    options=st.dictionaries(st.sampled_from(list(TrainConfig.__dataclass_fields__)), TRAIN_VALUES)
)
def test_malformed_training_options_give_a_config_error(options):
    with suppress(ConfigError):
        TrainConfig(**options)


def test_unknown_training_options_are_named():
    with pytest.raises(UnknownNameError, match="unknown training option epoks"):
        TrainConfig.from_options(epoks=3)


MODEL_OPTIONS = st.dictionaries(
    st.sampled_from(["num_components", "gate", "expert", "hidden_dim", "activation", "min_scale"]),
    st.one_of(st.integers(-2, 3), st.sampled_from(["mlp", "linear", "relu", "x", 0.0, -1e-3])),
)


@SETTINGS
@given(options=MODEL_OPTIONS)
def test_malformed_model_options_give_a_config_error(options):
    spec = RunSpec(model="moe", data="sign-flip", data_options={"n": 30}, model_options=options)
    with suppress(ConfigError):
        build(spec)


# --- fit with a data set built by hand ---------------------------------------------------------
def _good() -> Dataset:
    return split_arrays("ok", "regression", np.random.rand(30, 1), np.random.rand(30), seed=0)


BAD_DATASETS = {
    "nan in valid x": lambda d: replace(d, valid=Split(d.valid.x * np.nan, d.valid.y)),
    "empty train": lambda d: replace(d, train=Split(d.train.x[:0], d.train.y[:0])),
    "1-D x": lambda d: replace(d, train=Split(d.train.x[:, 0], d.train.y)),
    "int x": lambda d: replace(d, test=Split(d.test.x.long(), d.test.y)),
    "short y": lambda d: replace(d, train=Split(d.train.x, d.train.y[:-1])),
    "no y": lambda d: replace(d, train=Split(d.train.x)),
    "inf y": lambda d: replace(d, train=Split(d.train.x, d.train.y / 0)),
    "width": lambda d: replace(d, valid=Split(torch.cat([d.valid.x] * 2, 1), d.valid.y)),
    "task": lambda d: replace(d, task="ranking"),
    "labels": lambda d: replace(
        d,
        task="classification",
        num_classes=2,
        train=Split(d.train.x, torch.arange(len(d.train))),
    ),
    "not a data set": lambda d: {"x": d.train.x},
}


@pytest.mark.parametrize("case", BAD_DATASETS)
def test_fit_refuses_a_malformed_data_set(case, tmp_path):
    data, model, guide, estimator = build(RunSpec(model="moe", data="sign-flip"), _good())
    with pytest.raises(DataError):
        fit(model, guide, estimator, BAD_DATASETS[case](data), TrainConfig(epochs=1), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_fit_refuses_a_config_that_is_not_a_train_config():
    data, model, guide, estimator = build(RunSpec(model="moe", data="sign-flip"), _good())
    with pytest.raises(ConfigError, match="config must be a TrainConfig"):
        fit(model, guide, estimator, data, {"epochs": 1})


# --- the CLI -----------------------------------------------------------------------------------
CLI_ARGS = st.lists(
    st.sampled_from(
        [
            ["-K", "0"],
            ["-K", "2"],
            ["-K", "-1"],
            ["--batch-size", "5000"],
            ["--batch-size", "0"],
            ["--batch-size", "4"],
            ["--lr", "nan"],
            ["--lr", "-1"],
            ["--epochs", "0"],
            ["--checkpoint-every", "0"],
            ["--max-nonfinite-skips", "-2"],
            ["--estimator", "bogus"],
            ["--estimator", "reinforce"],
            ["--guide", "posterior"],
            ["--guide", "bogus"],
            ["-o", "hidden_dim=-1"],
            ["-o", "min_scale=abc"],
            ["-o", "gate=mlp"],
            ["-o", "bogus=1"],
            ["-o", "novalue"],
            ["--estimator-option", "beta=2"],
            ["--estimator-option", "num_particles=0"],
            ["--device", "tpu"],
        ]
    ),
    max_size=3,
)


def usable_arrays():
    """Mostly well-formed regression data (so that the options, not the data, decide)."""
    return st.integers(4, 40).map(
        lambda n: (np.linspace(-1, 1, n)[:, None], np.sign(np.linspace(-1, 1, n)))
    )


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


CLI_DATA = st.one_of(st.tuples(arrays(), st.one_of(st.none(), arrays(2))), usable_arrays())


@settings(max_examples=max(EXAMPLES * 2 // 3, 1), deadline=None, derandomize=DERANDOMIZE)
@given(xy=CLI_DATA, args=CLI_ARGS)
def test_the_cli_exits_cleanly_and_writes_only_its_run_folder(xy, args):
    x, y = xy
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "d.npz"
        try:
            np.savez(data, x=np.asarray(x), **({} if y is None else {"y": y}))
        except (ValueError, TypeError):
            return
        before = _files(root)
        argv = ["train", "moe", "--data", str(data), "--out", str(root / "run"), "--epochs", "1"]
        cwd = os.getcwd()
        os.chdir(root)
        err = io.StringIO()
        try:
            with redirect_stderr(err), redirect_stdout(io.StringIO()):
                code = main([*argv, *[a for pair in args for a in pair], "--quiet", "--no-figures"])
        finally:
            os.chdir(cwd)
        assert code in (0, 2), err.getvalue()
        if code == 2:
            lines = err.getvalue().strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("pyro-moe: error: "), lines
        outside = {p for p in _files(root) - before if root / "run" not in (p, *p.parents)}
        assert outside == set()


# --- data loaders ------------------------------------------------------------------------------
def _loader_cases():
    import inspect

    from pyro_moe.registry import DATASETS

    skip = {"seed", "path", "download"}  # a path or a download would touch the file system
    for name, builder in DATASETS.items():
        yield name, {"bogus": 1}
        for param in inspect.signature(builder).parameters:
            if param not in skip:
                for value in (-1, "abc", float("nan")):
                    yield name, {param: value}


@pytest.mark.parametrize("name,options", list(_loader_cases()))
def test_every_data_set_refuses_bad_options_cleanly(name, options):
    from pyro_moe.data import load_dataset

    try:
        data = load_dataset(name, **options)
    except PyroMoeError:
        return
    check_dataset(data)  # accepted (e.g. a negative `split` point): still a valid data set


@pytest.mark.parametrize("torch_default", [False, True])
def test_sampled_estimators_leave_torch_validation_as_it_was(torch_default):
    """A sampled estimator turns Pyro's checks off after its first call; torch's default
    ``validate_args`` (which Storchastic, for one, turns off on import) must survive that."""
    import pyro
    from pyro.infer.util import is_validation_enabled

    from pyro_moe.registry import ESTIMATORS
    from pyro_moe.validation import distribution_checks_off
    from pyro_moe.verification import moe_state

    before = torch.distributions.Distribution._validate_args
    pyro_before = is_validation_enabled()
    try:
        torch.distributions.Distribution.set_default_validate_args(torch_default)
        with distribution_checks_off():
            assert not is_validation_enabled()
        assert torch.distributions.Distribution._validate_args is torch_default
        model, guide, batch = moe_state("posterior")
        estimator = ESTIMATORS["reinforce"]()
        pyro.clear_param_store()
        for _ in range(3):  # the first call validates, the later ones do not
            estimator.loss(model.model, guide, *batch).backward()
            assert torch.distributions.Distribution._validate_args is torch_default
        assert is_validation_enabled() is pyro_before
    finally:
        torch.distributions.Distribution.set_default_validate_args(before)
