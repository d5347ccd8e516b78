"""The DLGMM table script's run folders: a run continued from its checkpoint ends where an
uninterrupted run of the same length ends, and a folder of another protocol is refused in one
line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "dlgmm_tables.py"
TINY = [
    *("--limit", "120", "--hidden", "8", "--is-samples", "10", "--is-sample-batch", "4"),
    *("--tsne-points", "0", "--models", "sb-vae,gauss-vae"),
]


def run(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), *TINY, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)


def models(out: Path) -> dict:
    return json.loads((out / "dlgmm_tables.json").read_text())["results"]["models"]


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    cut, whole = tmp_path / "cut", tmp_path / "whole"
    for epochs in ("1", "3"):  # 1 epoch, then the same command continued to 3
        done = run("--epochs", epochs, "--out", str(cut))
        assert done.returncode == 0, done.stderr[-3000:]
    assert (cut / "runs" / "sb-vae_seed0" / "checkpoint.pt").is_file()
    straight = run("--epochs", "3", "--out", str(whole))
    assert straight.returncode == 0, straight.stderr[-3000:]
    resumed, uncut = models(cut), models(whole)
    for name in ("sb-vae", "gauss-vae"):
        assert resumed[name]["epochs"] == uncut[name]["epochs"] == 3
        assert resumed[name]["nll"] == uncut[name]["nll"]  # bit for bit: same RNG, same steps
        losses = [
            [(r["train_loss"], r["valid_loss"]) for r in m[name]["curve"]] for m in (resumed, uncut)
        ]
        assert losses[0] == losses[1]


def test_a_run_folder_of_another_protocol_is_refused(tmp_path):
    assert run("--epochs", "1", "--out", str(tmp_path)).returncode == 0
    other = run("--epochs", "1", "--lr", "1e-3", "--out", str(tmp_path))
    assert other.returncode == 2
    lines = other.stderr.strip().splitlines()
    assert len(lines) == 1 and "another protocol" in lines[0], other.stderr[-2000:]
