"""Every notebook and benchmark script runs with tiny arguments; a new one that is not listed here
fails the coverage tests, so none is left unexercised."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
BENCHMARKS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py"))

#: arguments that make each benchmark script finish in seconds
BENCHMARK_SMOKE_ARGS = {
    "dlgmm_extremes.py": [
        "--limit",
        "100",
        "--epochs",
        "1",
        "--hidden",
        "8",
        "--per-component",
        "3",
    ],
    "dlgmm_tables.py": [
        *("--limit", "120", "--epochs", "1", "--hidden", "8", "--is-samples", "10"),
        *("--is-sample-batch", "4", "--tsne-points", "40"),
    ],
    "estimators_binarized_mnist.py": [
        *("--limit", "100", "--epochs", "1", "--estimators", "reinforce"),
        *("--test-samples", "2", "--best", "0"),
    ],
    "bishop_objectives.py": ["--epochs", "1"],
    "bayes_moe.py": [
        *("--n", "40", "--warmup", "10", "--samples", "10", "--svi-steps", "20"),
        *("--variants", "collapsed-jit,pyro-traced", "--init-restarts", "1", "--init-steps", "30"),
    ],
    "estimators_small.py": [
        *("--estimates", "20", "--loop-estimates", "4", "--fit-steps", "1"),
        *("--temperatures", "1"),
    ],
    "harness_speed.py": [
        *("--estimates", "4", "--chunk", "2", "--estimators"),
        "reinforce,rloo,vimco,gumbel,st-gumbel,hand-reinforce,hand-rloo,hand-vimco,hand-gumbel,"
        "hand-st-gumbel",
        *("--threads", "1"),
    ],
    "memory.py": ["--steps", "2", "--growth-steps", "12", "--growth-rows", "60", "--batches", "4"],
    "clustering_mnist.py": [
        *("--data", "digits", "--limit", "200", "--hidden", "16", "--latent-dim", "4"),
        *("--pretrain-epochs", "1", "--epochs", "1", "--batch-size", "40"),
    ],
    "clustering_small.py": [
        *("--data", "spirals", "--n", "100", "--hidden", "8", "--seeds", "0"),
        *("--pretrain-epochs", "1", "--epochs", "1", "--batch-size", "40"),
        *("--name", "clustering_small"),
    ],
    "gmm_vs_em.py": ["--sets", "iris", "--seeds", "0", "--n-init", "2"],
    "overhead_storchastic.py": ["--steps", "1", "--warmup", "0", "--batch", "4"],
    "overhead.py": [
        *("--steps", "2", "--mnist-steps", "1", "--mnist-batch", "4", "--warmup", "1"),
        *("--cat-steps", "1", "--cat-batch", "4"),
    ],
    "mnist_experts.py": ["--limit", "200", "--epochs", "1"],
    "mixture_of_vaes.py": [
        *("--data", "digits", "--train-limit", "200", "--valid-limit", "50"),
        *("--test-limit", "100", "--epochs", "1", "--hidden", "8"),
        *("--methods", "post-loss,rloo,hierarchical"),
    ],
    "table1_dvmoe.py": [
        *("--epochs", "1", "--seeds", "3", "--n", "100", "--batch-size", "20", "--dims", "2"),
        *("--valid-seeds", "7", "--lrs", "0.01", "--widths", "8", "--search-x-weights", "0.3"),
    ],
}
#: scripts that need an optional extra: (module, extra); without it they must say so and exit 2
OPTIONAL = {"overhead_storchastic.py": ("storch", "bench")}
#: environment that gives each notebook a small budget
NOTEBOOK_SMOKE_ENV = {
    "bayes_moe.ipynb": {"PYRO_MOE_NOTEBOOK_DRAWS": "10"},
    "deep_clustering.ipynb": {"PYRO_MOE_NOTEBOOK_EPOCHS": "2"},
    "dlgmm.ipynb": {"PYRO_MOE_NOTEBOOK_EPOCHS": "1"},
    "quickstart.ipynb": {"PYRO_MOE_NOTEBOOK_EPOCHS": "3"},
    "gradient_estimators.ipynb": {
        "PYRO_MOE_NOTEBOOK_EPOCHS": "2",
        "PYRO_MOE_NOTEBOOK_ESTIMATES": "16",
    },
    "dvmoe.ipynb": {"PYRO_MOE_NOTEBOOK_EPOCHS": "1"},
    "mixture_of_vaes.ipynb": {"PYRO_MOE_NOTEBOOK_EPOCHS": "1"},
}


def test_every_benchmark_is_smoke_tested():
    assert sorted(BENCHMARK_SMOKE_ARGS) == BENCHMARKS


def test_every_notebook_is_executed():
    assert sorted(NOTEBOOK_SMOKE_ENV) == NOTEBOOKS


@pytest.mark.parametrize("script", sorted(BENCHMARK_SMOKE_ARGS))
def test_benchmark_runs(tmp_path, script):
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / script),
        *BENCHMARK_SMOKE_ARGS[script],
        "--out",
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    if script in OPTIONAL and importlib.util.find_spec(OPTIONAL[script][0]) is None:
        assert result.returncode == 2 and f"[{OPTIONAL[script][1]}]" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        return
    assert result.returncode == 0, result.stderr[-3000:]
    name = Path(script).stem
    assert (tmp_path / f"{name}.json").is_file() and (tmp_path / f"{name}.md").is_file()
    if name == "harness_speed":  # every Pyro row timed against its family's hand-written floor
        rows = json.loads((tmp_path / f"{name}.json").read_text())["results"]["rows"]
        ratios = {r["estimator"]: r["floor_ratio"] for r in rows}
        assert all(ratios[e] is None for e in ratios if e.startswith("hand-"))
        assert all(0 < ratios[e] < math.inf for e in ratios if not e.startswith("hand-"))


@pytest.mark.parametrize("notebook", sorted(NOTEBOOK_SMOKE_ENV))
def test_notebook_executes(notebook, monkeypatch):
    for key, value in NOTEBOOK_SMOKE_ENV[notebook].items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(ROOT / "notebooks" / notebook, as_version=4)
    NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT / "notebooks")}},
    ).execute()
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.output_type == "error"
    ]
    assert not errors
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    assert images, "the notebook should show its figures"


def test_clustering_inference_timing_alternates_and_reports_medians(tmp_path):
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "clustering_mnist.py"),
        *("--data", "digits", "--limit", "200", "--hidden", "16", "--latent-dim", "4"),
        *("--time-inference", "3", "--out", str(tmp_path)),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "clustering_mnist_inference.json").read_text())["results"]
    assert 0 < record["rows"] <= 200 and len(record["rounds"]) == 3  # the training rows
    for r in record["rounds"]:
        assert r["vade"] > 0 and r["dmvae"] > 0
        assert r["dmvae_over_vade"] == r["dmvae"] / r["vade"]
    ratios = sorted(r["dmvae_over_vade"] for r in record["rounds"])
    assert record["median"]["dmvae_over_vade"] == ratios[1]
