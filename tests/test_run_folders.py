"""Run folders: one writer at a time, nothing replaced without --overwrite, --overwrite deletes
only a run's own files after everything is checked, the data file pinned by its hash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pyro_moe.cli import main
from pyro_moe.runs import LOCK, MARKER, RunFolder

TINY = ["--epochs", "2", "--quiet", "--no-figures", "-K", "2"]
SIGN_FLIP = ["moe", "--data", "sign-flip", "--data-option", "n=120"]


def train(out: Path, *extra: str) -> int:
    return main(["train", *SIGN_FLIP, "--out", str(out), *TINY, *extra])


def one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("pyro-moe: error:") and len(err.strip().splitlines()) == 1, err
    return err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture
def run_dir(tmp_path, capsys) -> Path:
    out = tmp_path / "run"
    assert train(out) == 0
    capsys.readouterr()
    return out


# --- what a run folder is -------------------------------------------------------------------------
def test_a_run_folder_is_marked_and_lists_the_files_it_wrote(run_dir):
    marker = json.loads((run_dir / MARKER).read_text())
    assert marker["kind"] == "train" and "config.json" in marker["files"]
    assert json.loads((run_dir / "config.json").read_text())["format"] == 1
    assert not (run_dir / LOCK).exists(), "the lock file goes when the run ends"


@pytest.mark.parametrize(
    "leftover", ["config.json", "summary.json", "metrics.csv", "fit.png", MARKER]
)
def test_a_new_run_never_replaces_a_runs_files(tmp_path, capsys, leftover):
    out = tmp_path / "run"
    out.mkdir()
    (out / leftover).write_text("{}")
    err = one_line_error(capsys, train(out))
    assert leftover in err and "--overwrite" in err
    assert snapshot(out) == {leftover: b"{}"}


def test_a_finished_run_without_checkpoint_is_not_replaced(run_dir, capsys):
    (run_dir / "checkpoint.pt").unlink()
    before = snapshot(run_dir)
    one_line_error(capsys, train(run_dir))
    assert snapshot(run_dir) == before


# --- --overwrite ----------------------------------------------------------------------------------
def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "logo.png").write_bytes(b"png")
    err = one_line_error(capsys, train(folder, "--overwrite"))
    assert "not a pyro-moe run folder" in err and "deleted nothing" in err
    assert snapshot(folder) == {"logo.png": b"png", "notes.txt": b"mine"}


def test_overwrite_refuses_the_current_folder(tmp_path, capsys, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    for name in ("config.json", "summary.json", "figure.png", ".hidden.png"):
        (project / name).write_text(name)
    before = snapshot(project)
    monkeypatch.chdir(project)
    code = main(["train", *SIGN_FLIP, "--out", ".", *TINY, "--overwrite"])
    assert "not a pyro-moe run folder" in one_line_error(capsys, code)
    code = main(["train", "moe", "--data", "nope", "--out", ".", *TINY, "--overwrite"])
    assert "unknown data set 'nope'" in one_line_error(capsys, code)
    assert snapshot(project) == before


@pytest.mark.parametrize(
    "bad", [["--data", "nope"], ["-K", "0"], ["--batch-size", "100000"], ["-o", "gates=mlp"]]
)
def test_overwrite_checks_everything_before_deleting(run_dir, capsys, bad):
    before = snapshot(run_dir)
    argv = ["train", *SIGN_FLIP, "--out", str(run_dir), *TINY, "--overwrite", *bad]
    one_line_error(capsys, main(argv))
    assert snapshot(run_dir) == before


def test_overwrite_replaces_only_the_files_the_run_wrote(run_dir, capsys):
    (run_dir / "notes.txt").write_text("mine")
    old_config = (run_dir / "config.json").read_bytes()
    assert train(run_dir, "--overwrite", "--seed", "3") == 0
    assert (run_dir / "notes.txt").read_text() == "mine"
    assert json.loads((run_dir / "config.json").read_text())["train"]["seed"] == 3
    assert (run_dir / "config.json").read_bytes() != old_config


# --- the lock -------------------------------------------------------------------------------------
HOLD = """
import sys, time
from pyro_moe.runs import RunFolder
with RunFolder(sys.argv[1]).lock():
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_gets_one_line_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        err = one_line_error(capsys, train(out))
        assert "in use by another pyro-moe process" in err and f"pid {holder.pid}" in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK], "the second writer wrote nothing"
        resume = main(["train", "--resume", "--out", str(out), "--quiet"])
        assert resume == 2
    finally:
        holder.kill()
        holder.wait()
    assert train(out) == 0, "the lock dies with its holder"


def test_a_lock_file_left_by_a_dead_process_does_not_block(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_text(f"pid {dead.stdout.strip()} on this host\n")
    assert train(out) == 0
    assert not (out / LOCK).exists()


def test_two_concurrent_trains_one_runs_and_the_folder_stays_consistent(tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "pyro_moe.cli", "train", *SIGN_FLIP, "--out", str(out)]
    argv += ["--epochs", "15", "--quiet", "--no-figures", "-K", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([*argv, "--seed", str(seed)], stderr=subprocess.PIPE, text=True, env=env)
        for seed in (1, 2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    winner = 1 + [code for code, _ in results].index(0)
    loser_err = next(err for code, err in results if code == 2)
    assert len(loser_err.strip().splitlines()) == 1 and "Traceback" not in loser_err
    assert ("in use by another" in loser_err) or ("already holds" in loser_err)
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["seed"] == winner
    evaluate = subprocess.run(
        [sys.executable, "-m", "pyro_moe.cli", "evaluate", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert evaluate.returncode == 0, evaluate.stderr
    assert "test_nll" in json.loads(evaluate.stdout)


# --- compare-estimators ---------------------------------------------------------------------------
COMPARE = [
    "compare-estimators",
    "--data",
    "sign-flip",
    "--data-option",
    "n=60",
    "-K",
    "2",
    "--estimators",
    "reinforce,rloo",
    "--epochs",
    "1",
    "--num-estimates",
    "4",
    "--no-figures",
    "--quiet",
]


def test_compare_estimators_replaces_an_earlier_comparison_only_with_overwrite(tmp_path, capsys):
    out = tmp_path / "compare"
    assert main([*COMPARE, "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    before = snapshot(out)
    err = one_line_error(capsys, main([*COMPARE, "--out", str(out)]))
    assert "--overwrite" in err and snapshot(out) == before
    bad = [*COMPARE, "--estimators", "rloo,nope"]
    one_line_error(capsys, main([*bad, "--out", str(out), "--overwrite"]))
    assert snapshot(out) == before
    assert main([*COMPARE, "--out", str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert RunFolder(out / "rloo").folder_kind() == "train"


def test_compare_estimators_overwrite_refuses_a_training_run(run_dir, capsys):
    before = snapshot(run_dir)
    err = one_line_error(capsys, main([*COMPARE, "--out", str(run_dir), "--overwrite"]))
    assert "holds a run, not a comparison of estimators" in err and snapshot(run_dir) == before


# --- the data file --------------------------------------------------------------------------------
def _npz(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(80, 1))
    np.savez(path, x=x, y=np.sin(3 * x[:, 0]))
    return path


def test_the_data_file_is_pinned_by_absolute_path_and_hash(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _npz(tmp_path / "mine.npz", seed=0)
    argv = ["train", "moe", "--data", "mine.npz", "--out", "run", *TINY]
    assert main(argv) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"] == str(tmp_path / "mine.npz")
    assert config["data_file"]["bytes"] == (tmp_path / "mine.npz").stat().st_size
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run")]) == 0, capsys.readouterr().err
    _npz(tmp_path / "mine.npz", seed=1)  # same shape, other values
    capsys.readouterr()
    for argv in (
        ["evaluate", str(tmp_path / "run")],
        ["train", "--resume", "--out", str(tmp_path / "run"), "--epochs", "3", "--quiet"],
    ):
        err = one_line_error(capsys, main(argv))
        assert "has changed since the run started" in err and "--allow-changed-data" in err
    assert main(["evaluate", str(tmp_path / "run"), "--allow-changed-data"]) == 0
    (tmp_path / "mine.npz").unlink()
    err = one_line_error(capsys, main(["evaluate", str(tmp_path / "run")]))
    assert "mine.npz" in err


# --- batch size on resume -------------------------------------------------------------------------
def test_a_new_batch_size_in_mid_epoch_is_refused_and_at_an_epoch_boundary_accepted(
    tmp_path, capsys
):
    out = tmp_path / "run"
    # 72 training rows, batch 8: 9 steps per epoch; max-steps 13 stops in the middle of epoch 2
    argv = ["--batch-size", "8", "--max-steps", "13", "--epochs", "3", "--quiet", "--no-figures"]
    assert main(["train", *SIGN_FLIP, "--out", str(out), "-K", "2", *argv]) == 0
    resume = ["train", "--resume", "--out", str(out), "--quiet", "--max-steps", "100"]
    err = one_line_error(capsys, main([*resume, "--batch-size", "16"]))
    assert "middle of epoch 2" in err and "--batch-size 8" in err
    assert main([*resume, "--epochs", "2"]) == 0  # finishes epoch 2 with batches of 8
    assert main([*resume, "--epochs", "3", "--batch-size", "16"]) == 0


def test_benchmark_checkpoints_stay_out_of_the_results_tree(tmp_path):
    from pyro_moe.benchmarking import RESULTS, default_runs_folder

    root = RESULTS.resolve().parent.parent
    assert default_runs_folder(RESULTS, "tables") == root / "runs" / "." / "tables"
    assert default_runs_folder(RESULTS / "sub", "x") == root / "runs" / "sub" / "x"
    assert default_runs_folder(tmp_path, "x") == tmp_path.resolve() / "runs"
