"""The MNIST clustering benchmark's per-seed pieces: a pretraining-only run records every start
(k-means, diagonal / full GMM, the init's clusters, VaDE's and DMVAE's starts), and --assemble
builds the table over seeds with a mean and sample spread computed as written here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "clustering_mnist.py"
#: a tiny recipe; the prior starts from EM (``--init gmm``): UMAP's start costs about 30 s of
#: compilation per process and is run by tests/test_scripts.py and tests/test_manifold.py
SMALL = [
    *("--data", "digits", "--limit", "240", "--hidden", "16", "--latent-dim", "4"),
    *("--pretrain-epochs", "2", "--epochs", "1", "--batch-size", "40", "--gmm-restarts", "1"),
    *("--init", "gmm"),
]


def run(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)


@pytest.fixture(scope="module")
def per_seed(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("runs")
    ae = folder / "ae.pt"
    for seed in ("0", "1"):
        done = run(*SMALL, "--seed", seed, "--pretrain-only", "--out", str(folder),
                   "--name", f"pretrain_seed{seed}", "--save-autoencoder", str(ae))  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
    done = run(*SMALL, "--seed", "1", "--models", "vade", "--autoencoder", str(ae),
               "--out", str(folder), "--name", "vade_seed1")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return folder


def test_a_pretraining_run_records_every_start(per_seed):
    results = json.loads((per_seed / "pretrain_seed0.json").read_text())["results"]
    for key in ("kmeans_embedding", "gmm_diag_embedding", "gmm_full_embedding"):
        assert 0.0 < results[key]["accuracy"] <= 1.0
    for key in ("start_clusters", "gmm_init", "dmvae_start"):
        assert 0.0 < results[key]["accuracy"] <= 1.0
    assert results["pretrain_epochs_run"] == 2 and "vade" not in results


def test_an_elbo_run_records_accuracy_nmi_and_ari_after_every_epoch(per_seed):
    vade = json.loads((per_seed / "vade_seed1.json").read_text())["results"]["vade"]
    assert [c["epoch"] for c in vade["curve"]] == list(range(1, vade["epochs"] + 1))
    for point in vade["curve"]:
        assert 0.1 <= point["accuracy"] <= 1.0  # K = 10: the best map is never below 1/K
        assert 0.0 <= point["nmi"] <= 1.0 and -1.0 <= point["ari"] <= 1.0


def test_assemble_gives_mean_and_sample_spread_over_seeds(per_seed, tmp_path):
    done = run("--assemble", str(per_seed), "--out", str(tmp_path), "--name", "table")
    assert done.returncode == 0, done.stderr[-2000:]
    # seed 0's start from its pretraining record, seed 1's from the ELBO run that recomputed it
    starts = [
        json.loads((per_seed / name).read_text())["results"]["start_clusters"]
        for name in ("pretrain_seed0.json", "vade_seed1.json")
    ]
    values = [s["accuracy"] for s in starts]
    expected = f"{np.mean(values):.4f} +- {np.std(values, ddof=1):.4f} (2)"
    md = (tmp_path / "table.md").read_text()
    assert f"| the init's own clusters | {expected} | 0, 1 |" in md
    vade = json.loads((per_seed / "vade_seed1.json").read_text())["results"]["vade"]
    assert f"| vade | {vade['accuracy']:.4f} (1) |" in md
    assert (tmp_path / "table.png").is_file()


def test_assemble_appends_the_folders_notes(per_seed, tmp_path):
    notes = "## Notes\n\nThe start decides the outcome."
    (per_seed / "NOTES.md").write_text(notes)
    try:
        done = run("--assemble", str(per_seed), "--out", str(tmp_path), "--name", "table")
    finally:
        (per_seed / "NOTES.md").unlink()
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "table.md").read_text().rstrip().endswith(notes)


def test_assemble_of_an_empty_folder_is_one_line_and_status_2(tmp_path):
    done = run("--assemble", str(tmp_path), "--out", str(tmp_path))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "no per-run result files" in done.stderr


def load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("clustering_mnist", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


def record(**scores):
    return {"results": {k: {"accuracy": v} for k, v in scores.items()}}


def test_variant_runs_are_their_own_groups_vade_first():
    module = load_script()
    runs = {
        "pretrain": {0: record(start_clusters=0.97)},
        "dmvae": {0: record(dmvae=0.95)},
        "vade_lr1e-4": {0: record(vade=0.95), 1: record(vade=0.93)},
        "vade": {0: record(vade=0.94)},
    }
    assert module.elbo_runs(runs) == [("vade", "vade"), ("vade_lr1e-4", "vade"), ("dmvae", "dmvae")]


def test_the_elbo_runs_start_overrides_the_pretraining_records():
    module = load_script()

    runs = {
        "pretrain": {
            1: record(start_clusters=0.83, kmeans_embedding=0.74),
            0: record(gmm_init=0.9),
        },
        "vade": {1: record(start_clusters=0.97, gmm_init=0.95, vade=0.96)},
        "dmvae": {1: record(dmvae_start=0.96, gmm_init=0.94)},
    }
    starts = module.start_scores(runs)
    assert list(starts) == [0, 1]
    assert starts[0] == {"gmm_init": {"accuracy": 0.9}}
    assert {k: v["accuracy"] for k, v in starts[1].items()} == {
        "start_clusters": 0.97,
        "kmeans_embedding": 0.74,
        "gmm_init": 0.94,
        "dmvae_start": 0.96,
    }


def test_a_cut_elbo_run_resumes_to_the_uncut_runs_curve(tmp_path):
    """One epoch, then the same command with --epochs 3, ends where an uncut 3-epoch run ends:
    the checkpoint's model, prior and Adam state replace the re-pretrained start."""
    tiny = [*SMALL, "--models", "vade"]
    epochs = [i for i, a in enumerate(tiny) if a == "--epochs"][0]
    for count, out in (("1", "cut"), ("3", "cut"), ("3", "whole")):
        command = [*tiny[:epochs], "--epochs", count, *tiny[epochs + 2 :]]
        done = run(*command, "--out", str(tmp_path / out))
        assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "cut" / "runs" / "vade_seed0" / "checkpoint.pt").is_file()
    cut, whole = (
        json.loads((tmp_path / out / "clustering_mnist.json").read_text())["results"]["vade"]
        for out in ("cut", "whole")
    )
    assert cut["epochs"] == whole["epochs"] == 3
    assert [c["valid_loss"] for c in cut["curve"]] == [c["valid_loss"] for c in whole["curve"]]
    assert cut["accuracy"] == whole["accuracy"]
    other = run(*tiny, "--lr", "0.01", "--out", str(tmp_path / "cut"))
    assert other.returncode == 2 and "another protocol" in other.stderr


def test_a_resumed_runs_start_does_not_replace_the_earlier_parts_record(tmp_path):
    """The start is written before the ELBO runs only where no earlier part's record holds one
    of the models: a resumed run cut by a signal leaves the earlier record, not the start alone."""
    module = load_script()
    record = tmp_path / "vade_seed1.json"
    assert not module.holds_models(record, "vade")  # no file yet
    record.write_text(json.dumps({"results": {"gmm_init": {"accuracy": 0.9}}}))
    assert not module.holds_models(record, "vade")  # a start-only record
    record.write_text(json.dumps({"results": {"vade": {"accuracy": 0.89, "epochs": 56}}}))
    assert module.holds_models(record, "vade") and module.holds_models(record, "dmvae,vade")
    assert not module.holds_models(record, "dmvae")
    record.write_text("{not json")
    assert not module.holds_models(record, "vade")


def test_the_curve_copies_the_validation_scores_of_the_same_split():
    """With ``validated`` the callback reads the epoch's validation scores instead of running
    the encoder over the rows again; without it, it scores the split itself."""
    module = load_script()
    split = SimpleNamespace(x=torch.zeros(4, 2), labels=torch.tensor([0, 0, 1, 1]))
    calls = []

    def predict_cluster(x):
        calls.append(len(x))
        return torch.tensor([1, 1, 0, 1])

    trainer = SimpleNamespace(
        model=SimpleNamespace(predict_cluster=predict_cluster),
        last_validation={
            "valid_loss": 3.0,
            "valid_accuracy": 0.5,
            "valid_nmi": 0.25,
            "valid_ari": -0.1,
        },
        state=SimpleNamespace(epoch=1, wall_seconds=0.0),
    )
    copied = module.accuracy_callback(split, verbose=False, validated=True)(trainer)
    assert copied == {"curve_accuracy": 0.5, "curve_nmi": 0.25, "curve_ari": -0.1} and not calls
    scored = module.accuracy_callback(split, verbose=False)(trainer)
    assert calls == [4] and scored["curve_accuracy"] == 0.75
