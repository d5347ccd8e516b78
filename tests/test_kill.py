"""A training process killed at random points resumes to the same bits as one never killed.

``pyro-moe train`` runs in a subprocess with ``--checkpoint-every 2``; the test SIGKILLs it at
seeded random delays after its training has started (the delays are seeded; where in training they
land depends on the machine's speed, and any point must do), resumes with ``--resume``, and at the
end compares every tensor of ``checkpoint.pt`` and ``best.pt``, and ``metrics.csv`` without the
wall-clock column, with an uninterrupted run's. While the process runs, another thread keeps
loading ``checkpoint.pt``: every load must succeed (atomic writes: a reader sees the old file or
the new one, never half of one). SIGTERM must stop the run after a step with a checkpoint, exit
status 143 and one line on stderr.
"""

from __future__ import annotations

import csv
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_moe.checkpoint import load_checkpoint
from pyro_moe.cli import main

# sign-flip, 120 training rows, batch 8: 15 steps per epoch, 5 epochs: 75 steps (1 to 2 s).
# reinforce-avg samples the gate from a posterior network, so the resumed run must also restore the
# RNG states and the baseline averages kept in Pyro's param store to match.
TRAIN = [
    "train",
    "moe",
    "--data",
    "sign-flip",
    "--data-option",
    "n=200",
    "-K",
    "3",
    "--epochs",
    "5",
    "--batch-size",
    "8",
    "--lr",
    "0.02",
    "--patience",
    "4",
    "--estimator",
    "reinforce-avg",
    "--guide",
    "posterior",
    "--seed",
    "5",
    "--checkpoint-every",
    "2",
    "--quiet",
    "--no-figures",
]
KILLS = 3
STEPS = 5 * 15


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


def start(out: Path, resume: bool) -> subprocess.Popen:
    args = ["train", "--resume", "--out", str(out), "--quiet", "--no-figures"]
    argv = args if resume else [*TRAIN, "--out", str(out)]
    return subprocess.Popen(
        [sys.executable, "-m", "pyro_moe.cli", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def wait_for_new_checkpoint(process: subprocess.Popen, path: Path, timeout: float = 60) -> None:
    """Until ``path`` is replaced (the process is training) or the process ends."""
    before, deadline = file_id(path), time.monotonic() + timeout
    while file_id(path) in (before, None) and process.poll() is None:
        assert time.monotonic() < deadline, "the training process never wrote a checkpoint"
        time.sleep(0.01)


class Reader(threading.Thread):
    """Loads ``path`` in a loop; records every failure."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.loads, self.failures, self.running = path, 0, [], True

    def run(self) -> None:
        while self.running:
            if self.path.exists():
                try:
                    load_checkpoint(self.path, required=("model", "optimizer", "rng"))
                    self.loads += 1
                except FileNotFoundError:
                    pass
                except Exception as e:  # any unreadable checkpoint fails the test
                    self.failures.append(repr(e))
            time.sleep(0.002)


def assert_same_tensors(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):  # numpy's RNG state
        assert np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            if key != "wall_seconds":
                assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(u, v, f"{where}[{i}]")
    elif hasattr(a, "check"):  # a torch constraint: equal if of the same kind
        assert repr(a) == repr(b), where
    else:
        assert a == b, where


def metrics(out: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    return [{k: v for k, v in row.items() if k != "wall_seconds"} for row in rows]


def assert_same_run(reference: Path, out: Path) -> None:
    for name in ("checkpoint.pt", "best.pt"):
        assert_same_tensors(load_checkpoint(reference / name), load_checkpoint(out / name), name)
    assert metrics(out) == metrics(reference)
    assert not list(out.glob(".*.tmp"))


def test_sigkill_at_random_points_then_resume_gives_the_same_bits(reference, tmp_path):
    out = tmp_path / "run"
    rng = random.Random(8)
    reader = Reader(out / "checkpoint.pt")
    reader.start()
    killed_at = []
    for kill in range(KILLS):
        process = start(out, resume=kill > 0)
        wait_for_new_checkpoint(process, out / "checkpoint.pt")
        time.sleep(rng.uniform(0.0, 0.5))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        state = load_checkpoint(out / "checkpoint.pt")["train_state"]
        if (out / "best.pt").exists():  # written after the first epoch
            load_checkpoint(out / "best.pt", required=("model", "guide"))
        killed_at.append(state["step"])
    reader.running = False
    reader.join()
    assert reader.failures == [] and reader.loads > 0
    assert (
        killed_at == sorted(killed_at) and 0 < killed_at[0] < STEPS
    )  # measured: [6, 28, 34] of 75
    assert main(["train", "--resume", "--out", str(out), "--quiet", "--no-figures"]) == 0
    assert_same_run(reference, out)


def test_sigterm_stops_after_a_step_with_a_checkpoint(reference, tmp_path):
    out = tmp_path / "run"
    process = start(out, resume=False)
    wait_for_new_checkpoint(process, out / "checkpoint.pt")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM == 143
    assert err.startswith("pyro-moe: SIGTERM received: stopped after step ")
    assert len(err.strip().splitlines()) == 1 and "--resume" in err
    step = int(err.split("after step ")[1].split()[0])
    assert load_checkpoint(out / "checkpoint.pt")["train_state"]["step"] == step
    assert main(["train", "--resume", "--out", str(out), "--quiet", "--no-figures"]) == 0
    assert_same_run(reference, out)
