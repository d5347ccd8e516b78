"""Data-parallel training with 2 CPU processes (gloo) against one process on the same global batch.

With ``enum`` the loss is deterministic, so averaging the two shards' gradients must give the
single-process gradient of the whole batch, and the parameters after K steps agree to 1e-5
(float64; the difference is summation order).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from pyro_moe import RunSpec, TrainConfig, build, fit
from pyro_moe.errors import ConfigError

STEPS = 6
SPEC = RunSpec(
    model="moe",
    data="bishop",
    data_options={"n": 200},
    model_options={"num_components": 3, "gate": "mlp", "hidden_dim": 8},
)


def config(distributed: bool) -> TrainConfig:
    return TrainConfig(
        epochs=100,
        batch_size=16,
        lr=0.01,
        max_steps=STEPS,
        patience=None,
        restore_best=False,
        progress=False,
        distributed=distributed,
    )


def train(distributed: bool) -> dict[str, torch.Tensor]:
    torch.set_default_dtype(torch.float64)
    data, model, guide, estimator = build(SPEC)
    fit(model, guide, estimator, data, config(distributed))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    from pyro_moe import distributed

    try:
        params = train(distributed=True)
        if rank == 0:
            torch.save(params, out)
    finally:
        distributed.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_on_the_global_batch(tmp_path):
    out = tmp_path / "rank0.pt"
    mp.spawn(worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    previous = torch.get_default_dtype()
    try:
        single = train(distributed=False)
    finally:
        torch.set_default_dtype(previous)
    parallel = torch.load(out)
    start = build(SPEC)[1].state_dict()
    moved = max((single[k].double() - start[k].double()).abs().max().item() for k in single)
    assert moved > 1e-3, "training should move the parameters"
    for name, value in single.items():
        assert torch.allclose(parallel[name], value, atol=1e-5, rtol=0), name


def test_distributed_without_torchrun_is_a_clear_error(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    data, model, guide, estimator = build(SPEC)
    with pytest.raises(ConfigError, match="torchrun"):
        fit(model, guide, estimator, data, config(True))


def test_torchrun_cli(tmp_path):
    """The documented command, end to end: 2 processes, rank 0 writes the run folder."""
    run = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port()),
        "-m",
        "pyro_moe.cli",
        "train",
        "moe",
        "--data",
        "bishop",
        "--data-option",
        "n=200",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--no-figures",
        "--quiet",
        "--out",
        str(run),
        "--distributed",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "checkpoint.pt").is_file() or any(Path(run).glob("*.pt"))
    assert result.stdout.count("run folder:") == 1  # only rank 0 reports and writes
