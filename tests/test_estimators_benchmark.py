"""The binarized-MNIST estimator benchmark end to end on the small fixture: parallel jobs, one
result file per (estimator, seed), more seeds for the best, resume, --assemble from the result
files alone, and one-line errors for bad input."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "estimators_binarized_mnist.py"
NAME = "estimators_binarized_mnist"
TINY = [
    *("--limit", "200", "--epochs", "1", "--test-samples", "4", "--valid-samples", "1"),
    *("--estimators", "reinforce,gumbel", "--best", "1", "--more-seeds", "1"),
]


def run(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_protocol_runs_resumes_and_assembles(tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    first = run(*TINY, "--jobs", "2", "--out", str(out), "--runs", str(runs))
    assert first.returncode == 0, first.stderr[-3000:]
    files = sorted(p.name for p in (out / NAME).glob("*.json"))
    best = json.loads((out / f"{NAME}.json").read_text())["results"]["rows"][0]["estimator"]
    assert files == sorted(["reinforce_seed0.json", "gumbel_seed0.json", f"{best}_seed1.json"])
    record = json.loads((out / NAME / "reinforce_seed0.json").read_text())
    assert record["steps"] == 2 and record["protocol"]["train_rows"] == 200
    assert record["test_neg_iw_bound"] <= record["test_neg_elbo"]  # L_S >= ELBO per image
    assert [c["epoch"] for c in record["curve"]] == [1] and "load" in record["curve"][0]
    relaxed = json.loads((out / NAME / "gumbel_seed0.json").read_text())
    assert relaxed["estimator_options"]["schedule"] == "exp"
    assert relaxed["curve"][0]["tau"] == pytest.approx(math.exp(-1e-4 * 2))  # after 2 steps
    assert record["machine"]["start"]["torch_threads"] == 1
    assert "test_neg_relaxed_elbo" not in record  # reinforce has no temperature
    assert relaxed["relaxed_tau"] == pytest.approx(math.exp(-1e-4 * 2))
    assert math.isfinite(relaxed["test_neg_relaxed_elbo"]) and relaxed["relaxed_samples"] == 100

    # the relaxed score is added to a result that lacks it from its run folder, training nothing
    path = out / NAME / "gumbel_seed0.json"
    bare = {k: v for k, v in relaxed.items() if not k.startswith("relaxed_") and "relaxed" not in k}
    path.write_text(json.dumps(bare))
    metrics = (runs / "gumbel_seed0" / "metrics.csv").read_text()
    rescored = run(*TINY, "--rescore-relaxed", "--out", str(out), "--runs", str(runs))
    assert rescored.returncode == 0, rescored.stderr[-3000:]
    again_relaxed = json.loads(path.read_text())
    assert again_relaxed["test_neg_relaxed_elbo"] == relaxed["test_neg_relaxed_elbo"]
    assert again_relaxed["steps"] == relaxed["steps"]
    assert (runs / "gumbel_seed0" / "metrics.csv").read_text() == metrics
    assert len(record["machine"]["end"]["load_average"]) == 3

    # a lost result file is rebuilt from the finished run folder, with the same numbers
    (out / NAME / "reinforce_seed0.json").unlink()
    again = run(*TINY, "--out", str(out), "--runs", str(runs))
    assert again.returncode == 0, again.stderr[-3000:]
    rebuilt = json.loads((out / NAME / "reinforce_seed0.json").read_text())
    assert rebuilt["test_neg_elbo"] == record["test_neg_elbo"]
    assert rebuilt["curve"] == record["curve"]

    # the table from the result files alone, on a machine without the run folders
    fresh = tmp_path / "fresh"
    shutil.copytree(out / NAME, fresh / NAME)
    assembled = run("--assemble", "--out", str(fresh))
    assert assembled.returncode == 0, assembled.stderr[-3000:]
    table = (fresh / f"{NAME}.md").read_text()
    assert "| reinforce |" in table and "| gumbel |" in table and "| 0,1 |" in table
    assert "Gumbel-Softmax | 101.5" in table
    assert "at tau 0.9998 |" in table  # gumbel's relaxed column
    assert (fresh / f"{NAME}.png").stat().st_size > 0

    # a result file of another protocol is refused, not mixed in silently
    other = run(*TINY, "--lr", "0.01", "--out", str(out), "--runs", str(runs))
    assert other.returncode == 2 and "another protocol" in other.stderr


def test_bad_input_is_one_line(tmp_path):
    for args in (["--epochs", "0"], ["--estimators", "enum"]):
        result = run(*args, "--limit", "100", "--out", str(tmp_path))
        assert result.returncode == 2, args
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("error: ")


def test_every_tempered_estimator_is_annealed():
    spec = importlib.util.spec_from_file_location("estimators_benchmark", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = script.parser().parse_args([])
    annealed = [n for n in script.ESTIMATORS.names() if script.schedule_options(n, args)]
    assert {"gumbel", "st-gumbel", "gumbel-rao", "concrete"} <= set(annealed)
    assert "reinforce" not in annealed and "rloo" not in annealed
    assert script.schedule_options("reinmax", args) == {"temperature": 1.0}


def test_cut_runs_are_recorded_and_compared_at_equal_steps(tmp_path):
    """A run stopped before the protocol's end becomes a cut-run file (curve, device, no test
    bounds), and the table compares every run at the largest step all of them reached."""
    out, runs = tmp_path / "out", tmp_path / "runs"
    tiny = [*TINY[:-4], "--estimators", "reinforce,st-gumbel", "--best", "0", "--epochs", "2"]
    first = run(*tiny, "--out", str(out), "--runs", str(runs))
    assert first.returncode == 0, first.stderr[-3000:]
    # make the reinforce run look cut after its first epoch (as a killed run leaves it)
    (out / NAME / "reinforce_seed0.json").unlink()
    metrics = runs / "reinforce_seed0" / "metrics.csv"
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:2]))
    collected = run("--collect-cut", str(runs), "--out", str(out))
    assert collected.returncode == 0, collected.stderr[-3000:]
    cut = json.loads((out / NAME / "cut" / "reinforce_seed0.json").read_text())
    assert cut["cut"] and cut["steps"] == 2 and cut["epochs_done"] == 1
    assert cut["device"] == "cpu" and cut["protocol"]["epochs"] == 2
    assert not (out / NAME / "cut" / "st-gumbel_seed0.json").exists()  # it has its result
    table = (out / f"{NAME}.md").read_text()
    finished = json.loads((out / NAME / "st-gumbel_seed0.json").read_text())
    assert "test_neg_relaxed_elbo" not in finished  # its decoder trains on one-hot codes
    at_two = next(c["valid_loss"] for c in finished["curve"] if c["step"] == 2)
    assert "valid -ELBO at step 2 " in table
    assert "| st-gumbel | 0 | finished | cpu" in table and f"{at_two:.2f}" in table
    assert (out / f"{NAME}_steps.png").stat().st_size > 0
    missing = run("--collect-cut", str(tmp_path / "nothing"), "--out", str(out))
    assert missing.returncode == 2 and "no run folder" in missing.stderr
