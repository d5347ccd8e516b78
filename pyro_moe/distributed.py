"""Data-parallel training with PyTorch's own engine (``torch.distributed``), launched by torchrun.

    torchrun --nproc-per-node 2 -m pyro_moe.cli train moe --data bishop --out runs/ddp --distributed

Each of the W processes (ranks) holds the whole model. Every step all ranks draw the same global
minibatch of B rows (the epoch order is fixed by the seed, see :func:`pyro_moe.train.epoch_order`)
and rank r takes rows ``[r B/W, (r+1) B/W)``. Its loss is the plate-scaled estimate
``(N / (B/W)) sum_{its rows} ...``; the gradients are averaged over ranks after ``backward``
(one all-reduce of a flat buffer), so the update equals the single-process update on the whole
global batch of B rows: ``mean_r W (N/B) grad sum_{rows of r} = (N/B) grad sum_{all B rows}``.

The backend is gloo on CPU and nccl on CUDA (rank r uses ``cuda:LOCAL_RANK``). Parameters are
broadcast from rank 0 at the start, sampling estimators draw with a per-rank seed, and only rank 0
writes the run folder (config, metrics, checkpoints, figures). Validation runs on every rank on
the full validation split, so early stopping decides the same everywhere.

This is a hook of :class:`pyro_moe.train.Trainer` (``parallel``), not a subclass:
:func:`process_group` gives :class:`DataParallel` for a distributed run and :class:`SingleProcess`
otherwise, and ``is_main`` is the one place that says which process writes.

Limits: ``--resume`` is not supported with ``--distributed``; the ``train_loss`` column is rank
0's share of each batch.
"""

from __future__ import annotations

import os

import pyro
import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from pyro_moe.errors import ConfigError

ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def init(device: str = "cpu") -> tuple[int, int]:
    """Join the process group torchrun set up (once); returns ``(rank, world_size)``."""
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed")
    if not dist.is_initialized():
        missing = [k for k in ENV if k not in os.environ]
        if missing:
            raise ConfigError(
                f"--distributed needs torchrun's environment ({', '.join(missing)} not set); "
                "launch with `torchrun --nproc-per-node N -m pyro_moe.cli train ... --distributed`"
            )
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def average_gradients(params: list[torch.Tensor], world_size: int) -> None:
    """Replace every ``p.grad`` by its mean over ranks (one all-reduce of a flat buffer)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world_size
    for p, g in zip(params, _unflatten_dense_tensors(flat, grads), strict=True):
        p.grad = g


class SingleProcess:
    """The trainer hook of an ordinary run: the whole batch, gradients as computed."""

    rank, world_size, is_main = 0, 1, True

    def attach(self, trainer) -> None:
        """Nothing to set up."""

    def shard(self, x: torch.Tensor, y: torch.Tensor | None):
        return x, y

    def after_backward(self, params: list[torch.Tensor]) -> None:
        """Nothing to combine."""


class DataParallel(SingleProcess):
    """The trainer hook of one rank: its shard of each batch, gradients averaged over ranks."""

    def __init__(self, device: str = "cpu") -> None:
        self.rank, self.world_size = init(device)
        self.is_main = self.rank == 0

    def attach(self, trainer) -> None:
        """Check the batch splits evenly, broadcast rank 0's parameters, seed this rank."""
        if trainer.batch_size % self.world_size:
            raise ConfigError(
                f"batch_size {trainer.batch_size} is not divisible by the "
                f"{self.world_size} processes"
            )
        with torch.no_grad():
            for p in trainer.parameters():
                dist.broadcast(p.data, src=0)
        pyro.set_rng_seed(trainer.config.seed + 1_000_003 * self.rank)

    def shard(self, x: torch.Tensor, y: torch.Tensor | None):
        share = len(x) // self.world_size
        rows = slice(self.rank * share, (self.rank + 1) * share)
        return x[rows], None if y is None else y[rows]

    def after_backward(self, params: list[torch.Tensor]) -> None:
        average_gradients(params, self.world_size)


def process_group(distributed: bool, device: str = "cpu") -> SingleProcess:
    """The trainer hook for a run: :class:`DataParallel` (joining torchrun's group) when
    ``distributed``, else :class:`SingleProcess`."""
    return DataParallel(device) if distributed else SingleProcess()
