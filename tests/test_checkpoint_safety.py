"""Nothing in a checkpoint can run: every file the library reads back is loaded with
``torch.load(weights_only=True)``, and a file that needs more is refused with one line.

A malicious ``checkpoint.pt`` / ``best.pt`` holds an object whose ``__reduce__`` creates a file
when unpickled; a raw pickle does the same without torch's zip container. Both go through
``pyro-moe train --resume`` and ``pyro-moe evaluate``; the file must not appear.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch

import pyro_moe.experiment  # noqa: F401  (fills the registries)
from pyro_moe import checkpoint
from pyro_moe.cli import main
from pyro_moe.registry import ESTIMATORS

TINY = ["--epochs", "2", "--quiet", "--no-figures", "--data-option", "n=120", "-K", "2"]


class CreatesAFile:
    """Unpickling this calls ``open(path, "w")``: the file appearing means code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    args = ["train", "moe", "--data", "sign-flip", "--estimator", "reinforce-avg"]
    assert main([*args, "--guide", "gate", "--out", str(out), *TINY]) == 0
    return out


@pytest.fixture
def run_dir(trained, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def one_line_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("pyro-moe: error:") and len(err.strip().splitlines()) == 1, err
    return err


def malicious_torch_file(path: Path, marker: Path) -> None:
    state = checkpoint.load_checkpoint(path)
    state["model"] = {"weight": CreatesAFile(marker)}
    torch.save(state, path)


def raw_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"model": CreatesAFile(marker)}))


MAKERS = {"torch.save": malicious_torch_file, "raw pickle": raw_pickle}


def test_the_library_writes_only_weights_only_loadable_files(trained):
    for name in ("checkpoint.pt", "best.pt"):
        state = torch.load(trained / name, weights_only=True)
        assert isinstance(state, dict) and "model" in state
    state = torch.load(trained / "checkpoint.pt", weights_only=True)
    assert state["param_store"]["params"], "reinforce-avg keeps its baseline in the param store"
    assert state["param_store"]["constraints"] == {
        k: {"name": "real", "bounds": []} for k in state["param_store"]["params"]
    }


@pytest.mark.parametrize("maker", MAKERS)
@pytest.mark.parametrize("target", ["checkpoint.pt", "best.pt"])
def test_resume_refuses_a_malicious_file_and_runs_none_of_it(
    run_dir, tmp_path, capsys, maker, target
):
    marker = tmp_path / "code-ran"
    MAKERS[maker](run_dir / target, marker)
    err = one_line_error(capsys, ["train", "--resume", "--out", str(run_dir), "--quiet"])
    assert target in err and not marker.exists()


@pytest.mark.parametrize("maker", MAKERS)
def test_evaluate_refuses_a_malicious_best_and_checkpoint(run_dir, tmp_path, capsys, maker):
    marker = tmp_path / "code-ran"
    MAKERS[maker](run_dir / "best.pt", marker)
    assert "best.pt" in one_line_error(capsys, ["evaluate", str(run_dir)])
    (run_dir / "best.pt").unlink()  # evaluate then falls back to checkpoint.pt
    MAKERS[maker](run_dir / "checkpoint.pt", marker)
    assert "checkpoint.pt" in one_line_error(capsys, ["evaluate", str(run_dir)])
    assert not marker.exists()


def test_a_refused_object_is_named_in_one_line(run_dir, tmp_path, capsys):
    malicious_torch_file(run_dir / "checkpoint.pt", tmp_path / "code-ran")
    err = one_line_error(capsys, ["train", "--resume", "--out", str(run_dir), "--quiet"])
    assert "other than tensors and plain containers" in err and "nothing from it was run" in err


def test_a_good_run_still_resumes_and_evaluates(run_dir, capsys):
    assert main(["train", "--resume", "--out", str(run_dir), "--epochs", "3", "--quiet"]) == 0
    assert main(["evaluate", str(run_dir)]) == 0


@pytest.mark.parametrize("estimator", ESTIMATORS.names())
def test_every_estimator_resumes_bit_for_bit_from_a_weights_only_checkpoint(tmp_path, estimator):
    """Each registered estimator's state (baselines, control variates and their optimisers,
    temperatures) goes through ``weights_only`` loading and the resumed run equals one that was
    never stopped."""
    argv = ["train", "moe", "--data", "sign-flip", "--data-option", "n=60", "-K", "2"]
    argv += ["--estimator", estimator, "--guide", "posterior", "--quiet", "--no-figures"]
    argv += ["--batch-size", "12"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main([*argv, "--epochs", "2", "--out", str(whole)]) == 0
    assert main([*argv, "--epochs", "1", "--out", str(split)]) == 0
    assert main(["train", "--resume", "--out", str(split), "--epochs", "2", "--quiet"]) == 0
    a = torch.load(whole / "checkpoint.pt", weights_only=True)
    b = torch.load(split / "checkpoint.pt", weights_only=True)
    for part in ("model", "guide", "estimator"):
        assert a[part].keys() == b[part].keys()
        for key, value in a[part].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, b[part][key]), (part, key)
    assert a["train_state"]["step"] == b["train_state"]["step"] == 6
