"""One stochastic-variational-inference loop for every model, guide and estimator.

Each step draws a minibatch of B rows (a seeded permutation per epoch), evaluates the estimator's
surrogate ``L = estimator.loss(model.model, guide, x, y, num_data=N)`` (the ``data`` plate scales
the minibatch by N / B, so L estimates the full-data negative objective), and takes an Adam step on
``L / N`` with the gradient norm clipped. After every epoch it computes validation metrics (the
discrete objective with the gate summed out exactly, plus the model's own metrics), writes a row
of ``metrics.csv`` and an atomic checkpoint, and stops early when the monitored metric has not
improved by ``min_delta`` for ``patience`` epochs. By default early stopping decides when training
ends (patience 20 epochs, at most 1000 epochs), and the parameters of the best validation epoch
are kept. A model with a pretraining step (:meth:`~pyro_moe.base.PyroModel.pretrain`) runs it
first, with the run's seed, and its start is validated as epoch 0.

A checkpoint holds everything an exact resume needs: model, guide and estimator state, Adam's
state, the non-module entries of Pyro's param store, the loop's counters and early-stopping
state, and every RNG state. Resuming replays the rest of the run bit for bit.

Faults (see docs/reliability.md):

* ``checkpoint_every``: also checkpoint every that many steps, so a killed process loses little.
* SIGINT / SIGTERM (:mod:`pyro_moe.signals`): the step in progress finishes, a checkpoint is
  written, and :class:`~pyro_moe.errors.TrainingInterrupted` is raised.
* A NaN / inf loss or gradient (:mod:`pyro_moe.nonfinite`): the step is not applied, and
  :class:`~pyro_moe.errors.NonFiniteError` names the step, the parameters and the sites involved,
  leaving the last good checkpoint in place; with ``max_nonfinite_skips`` up to that many such
  steps are skipped (with a :class:`NonFiniteStepWarning`) before it is raised.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import nn
from tqdm import tqdm

from pyro_moe import checkpoint
from pyro_moe.base import PyroGuide, PyroModel
from pyro_moe.checkpoint import save_checkpoint
from pyro_moe.data.base import Dataset, Split
from pyro_moe.distributed import SingleProcess, process_group
from pyro_moe.errors import (
    ConfigError,
    DataError,
    NonFiniteError,
    TrainingInterrupted,
    UnknownNameError,
)
from pyro_moe.estimators.base import Estimator
from pyro_moe.estimators.enum import Enumerate
from pyro_moe.metrics import split_metrics
from pyro_moe.nonfinite import (
    all_finite,
    describe,
    is_invalid_parameter_error,
    nonfinite_sites,
    nonfinite_tensors,
)
from pyro_moe.runs import RunFolder
from pyro_moe.signals import StopRequest, stop_on_signals
from pyro_moe.validation import check_bool, check_dataset, check_int, check_number, check_str

#: metrics for which a larger value is better (by name suffix); everything else is minimised
HIGHER_IS_BETTER = ("accuracy", "nmi", "ari", "elbo", "log_likelihood")
DEFAULT_BATCH_SIZE = 128


Callback = Callable[["Trainer"], "dict[str, Any] | None"]


class NonFiniteStepWarning(RuntimeWarning):
    """A step with a NaN / inf loss or gradient was skipped (``max_nonfinite_skips``)."""


@dataclass(frozen=True)
class TrainConfig:
    """Options of :func:`fit` (all checked on construction)."""

    epochs: int = 1000  # a cap: early stopping on the validation split usually ends first
    batch_size: int | None = None  # None: 128, or every training row if there are fewer
    lr: float = 1e-2
    guide_lr: float | None = None
    clip_norm: float | None = 10.0
    patience: int | None = 20
    min_delta: float = 1e-4
    seed: int = 0
    max_steps: int | None = None
    monitor: str | None = None
    restore_best: bool = True
    eval_batch_size: int = 4096
    progress: bool | None = None
    device: str = "cpu"
    distributed: bool = False  # one rank of a torchrun job (see pyro_moe.distributed)
    checkpoint_every: int | None = None  # steps between checkpoints (None: every epoch only)
    max_nonfinite_skips: int = 0  # NaN/inf steps to skip (and warn about) before stopping

    def __post_init__(self) -> None:
        for name in ("epochs", "eval_batch_size"):
            check_int(name, getattr(self, name))
        for name in ("patience", "max_steps", "batch_size", "checkpoint_every"):
            check_int(name, getattr(self, name), optional=True)
        check_int("seed", self.seed, minimum=0)
        check_int("max_nonfinite_skips", self.max_nonfinite_skips, minimum=0)
        check_number("lr", self.lr)
        check_number("guide_lr", self.guide_lr, optional=True)
        check_number("clip_norm", self.clip_norm, optional=True)
        check_number("min_delta", self.min_delta, positive=False)
        check_str("monitor", self.monitor, optional=True)
        check_bool("restore_best", self.restore_best)
        check_bool("progress", self.progress, optional=True)
        check_str("device", self.device)
        try:
            torch.device(self.device)
        except (RuntimeError, ValueError):
            raise ConfigError(f"unknown device {self.device!r}; use cpu or cuda[:N]") from None
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {self.device!r} asked for, but no CUDA device is available")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The config of a dict of options (e.g. config.json's ``train``); an unknown key is an
        :class:`UnknownNameError`, not silently dropped."""
        return cls.from_options(**d)

    @classmethod
    def from_options(cls, **options: Any) -> TrainConfig:
        """Like ``TrainConfig(**options)``, but an unknown option is a :class:`ConfigError`."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise UnknownNameError(
                f"unknown training option {', '.join(unknown)}; known: {', '.join(names)}"
            )
        return cls(**options)


@dataclass
class TrainState:
    """The loop's counters and early-stopping state (saved in every checkpoint)."""

    step: int = 0
    epoch: int = 0  # completed epochs
    batch: int = 0  # batches done in the current epoch
    loss_sum: float = 0.0  # sum of per-point training losses in the current epoch
    loss_count: int = 0  # finite steps in the current epoch (skipped steps do not count)
    nonfinite_skips: int = 0  # steps skipped for a NaN / inf loss or gradient, in the whole run
    wall_seconds: float = 0.0
    best: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stop_reason: str = ""
    batch_size: int = 0  # the batch size the position ``batch`` counts in (0: not recorded)


@dataclass
class FitResult:
    """What :func:`fit` returns: the trained objects, the metrics history and the run folder."""

    model: PyroModel
    guide: PyroGuide
    estimator: Estimator
    config: TrainConfig
    state: TrainState
    history: list[dict[str, Any]] = field(default_factory=list)
    run_dir: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    pretrained: dict[str, Any] | None = None  # the run's pretraining record (PyroModel.pretrain)

    @property
    def stopped_early(self) -> bool:
        return self.state.stop_reason == "early-stopping"

    def history_frame(self):
        """The history as a pandas DataFrame (one row per epoch)."""
        import pandas as pd

        return pd.DataFrame(self.history)


def higher_is_better(metric: str) -> bool:
    return metric.endswith(HIGHER_IS_BETTER)


def epoch_order(num_rows: int, seed: int, epoch: int) -> torch.Tensor:
    """The minibatch order of one epoch: a permutation fixed by (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_rows, generator=generator)


def unique_parameters(*modules: nn.Module) -> list[nn.Parameter]:
    """Parameters of ``modules`` in a fixed order, each once (guides may share model networks)."""
    seen: set[int] = set()
    params = []
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's first parameter, or of its first floating buffer for a
    model without parameters (a Bayesian model whose weights are all sample sites)."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


def make_optimizer(
    model: nn.Module, guide: nn.Module, estimator: nn.Module, config: TrainConfig
) -> torch.optim.Adam:
    """Adam over every parameter once; the guide's own networks get ``guide_lr`` if it is set
    (amortized posteriors often need to learn faster than the model to keep up with it)."""
    params = unique_parameters(model, guide, estimator)
    if config.guide_lr is None:
        return torch.optim.Adam(params, lr=config.lr)
    guide_ids = {id(p) for p in guide.parameters()} - {id(p) for p in model.parameters()}
    groups = [
        {"params": [p for p in params if id(p) not in guide_ids]},
        {"params": [p for p in params if id(p) in guide_ids], "lr": config.guide_lr},
    ]
    return torch.optim.Adam([g for g in groups if g["params"]], lr=config.lr)


def _param_names(**modules: nn.Module) -> dict[int, str]:
    return {
        id(p): f"{prefix}.{name}"
        for prefix, m in modules.items()
        for name, p in m.named_parameters()
    }


def check_compatible(
    model: PyroModel, guide: PyroGuide, estimator: Estimator, data: Dataset, config: TrainConfig
) -> None:
    """Raise a clear error before any work when the pieces cannot train together."""
    if data.task not in model.tasks:
        raise ConfigError(f"{type(model).__name__} cannot train on a {data.task} data set")
    if getattr(guide, "target", model) is not model:
        raise ConfigError("the guide was built for a different model instance")
    estimator.check(guide)
    if config.batch_size is not None and config.batch_size > len(data.train):
        raise DataError(
            f"batch_size {config.batch_size} is larger than the {len(data.train)} training rows"
        )
    if model.input_dim and data.input_dim != model.input_dim:
        raise DataError(
            f"data has {data.input_dim} input dims, the model expects {model.input_dim}"
        )


def validation_objective(model: PyroModel):
    """What validation scores: the discrete objective summed out exactly (TraceEnum), unless the
    model's ``validation_estimator()`` gives another (e.g. a Monte Carlo ELBO where K^L
    assignments cannot be enumerated); either has ``value(model_fn, guide, x, y) -> float``."""
    custom = model.validation_estimator()
    return custom if custom is not None else Enumerate(max_plate_nesting=model.max_plate_nesting)


class Trainer:
    """The loop behind :func:`fit`; one instance trains one (model, guide, estimator) triple."""

    def __init__(
        self,
        model: PyroModel,
        guide: PyroGuide,
        estimator: Estimator,
        data: Dataset,
        config: TrainConfig,
        run: RunFolder | None,
        callbacks: Sequence[Callback] = (),
        parallel: SingleProcess | None = None,
    ) -> None:
        self.model, self.guide, self.estimator, self.config, self.run = (
            model,
            guide,
            estimator,
            config,
            run,
        )
        self.device = torch.device(config.device)
        for module in (model, guide, estimator):
            module.to(self.device)
        dtype = model_dtype(model)
        self.data = data.to(self.device, dtype)
        self.optimizer = make_optimizer(model, guide, estimator, config)
        self.names = _param_names(model=model, guide=guide, estimator=estimator)
        self.validator = validation_objective(model)
        self.monitor = config.monitor or model.monitor
        self.batch_size = config.batch_size or min(DEFAULT_BATCH_SIZE, len(data.train))
        self.state = TrainState(batch_size=self.batch_size)
        self.history: list[dict[str, Any]] = []
        self.last_validation: dict[str, float] = {}  # the latest epoch's validation metrics
        self.best_params: dict[str, Any] | None = None
        self.callbacks = tuple(callbacks)
        self.stop = StopRequest()  # set by fit's signal handlers
        self.pretrained: dict[str, Any] | None = None  # the record of the run's pretraining
        self.parallel = parallel or SingleProcess()  # data-parallel hook (pyro_moe.distributed)
        self.parallel.attach(self)

    # --- one step -----------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return len(self.data.train) // self.batch_size

    def batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        order = epoch_order(len(self.data.train), self.config.seed, self.state.epoch)
        b = self.batch_size
        idx = order[self.state.batch * b : (self.state.batch + 1) * b].to(self.device)
        train = self.data.train
        return self.parallel.shard(train.x[idx], None if train.y is None else train.y[idx])

    def step(self) -> float:
        """One optimisation step; returns the minibatch's loss per data point (NaN if skipped)."""
        x, y = self.batch()
        n = len(self.data.train)
        self.optimizer.zero_grad(set_to_none=True)
        rng = torch.get_rng_state()  # to re-trace a failing step with the same samples
        try:
            loss = self.estimator.loss(self.model.model, self.guide, x, y, num_data=n) / n
        except (ValueError, RuntimeError) as e:
            if not is_invalid_parameter_error(e):
                raise
            return self._nonfinite("a distribution got NaN/inf parameters", x, y, rng)
        if not torch.isfinite(loss):
            return self._nonfinite(f"the loss is {loss.item()}", x, y, rng)
        loss.backward()
        params = self.parameters()
        self.parallel.after_backward(params)
        if not all_finite(p.grad for p in params):  # sums first; names only on failure
            bad = nonfinite_tensors((self.names.get(id(p), "?"), p.grad) for p in params)
            return self._nonfinite(
                f"the gradient of {', '.join(bad)} is not finite", x, y, rng, bad
            )
        if self.config.clip_norm is not None:
            nn.utils.clip_grad_norm_(self.parameters(), self.config.clip_norm)
        self.optimizer.step()
        self.estimator.advance(self.state.step)
        self._count_step()
        self.state.loss_sum += loss.item()
        self.state.loss_count += 1
        return loss.item()

    def _count_step(self) -> None:
        self.state.step += 1
        self.state.batch += 1

    def parameters(self) -> list[nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _nonfinite(
        self,
        what: str,
        x: torch.Tensor,
        y: torch.Tensor | None,
        rng: torch.Tensor,
        bad_gradients: list[str] = (),  # type: ignore[assignment]
    ) -> float:
        """Skip the step (up to ``max_nonfinite_skips`` times, with a warning) or raise
        :class:`NonFiniteError` naming the step, the sites and the parameters involved."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(rng)
            sites, trace_error = nonfinite_sites(
                self.model.model, self.guide, x, y, num_data=len(self.data.train)
            )
        named = ((self.names.get(id(p), "?"), p.detach()) for p in self.parameters())
        parameters = nonfinite_tensors(named)
        message = describe(what, sites, parameters, trace_error)
        site = sites[0].split("'")[1] if sites else None
        parameter = (list(bad_gradients) + parameters or [None])[0]
        if self.state.nonfinite_skips < self.config.max_nonfinite_skips:
            self.state.nonfinite_skips += 1
            warnings.warn(
                f"skipped step {self.state.step + 1}: {message} "
                f"({self.state.nonfinite_skips} of {self.config.max_nonfinite_skips} skips used)",
                NonFiniteStepWarning,
                stacklevel=2,
            )
            self._count_step()
            return math.nan
        raise NonFiniteError(self._failure(message), self.state.step + 1, site, parameter)

    def _failure(self, what: str) -> str:
        kept = (
            f"the last good checkpoint {self.run.checkpoint} is kept"
            if self.run and self.run.has_checkpoint()
            else "no checkpoint was written"
        )
        where = f"step {self.state.step + 1} (epoch {self.state.epoch + 1})"
        skips = (
            f" after skipping {self.state.nonfinite_skips} non-finite step(s)"
            if self.state.nonfinite_skips
            else ""
        )
        return f"training stopped at {where}{skips}: {what}; {kept}"

    # --- validation and early stopping --------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Validation metrics, computed with a fixed seed so they do not disturb training's RNG."""
        split = self.data.valid
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            metrics = {"valid_loss": self._objective(split) / len(split)}
            metrics.update({f"valid_{k}": v for k, v in split_metrics(self.model, split).items()})
        if self.monitor not in metrics:
            raise ConfigError(
                f"monitor {self.monitor!r} is not among the validation metrics {', '.join(metrics)}"
            )
        return metrics

    def _objective(self, split: Split) -> float:
        total = 0.0
        size = self.config.eval_batch_size
        for start in range(0, len(split), size):
            x = split.x[start : start + size]
            y = None if split.y is None else split.y[start : start + size]
            total += self.validator.value(self.model.model, self.guide, x, y)
        return total

    def update_early_stopping(self, metrics: dict[str, float]) -> None:
        value = metrics[self.monitor]
        score = -value if higher_is_better(self.monitor) else value
        if score < self.state.best - self.config.min_delta:
            self.state.best, self.state.best_epoch, self.state.bad_epochs = (
                score,
                self.state.epoch,
                0,
            )
            self.best_params = {
                "model": copy.deepcopy(self.model.state_dict()),
                "guide": copy.deepcopy(self.guide.state_dict()),
            }
            if self.run:
                save_checkpoint(self.run.best, {**self.best_params, "epoch": self.state.epoch})
        else:
            self.state.bad_epochs += 1

    # --- checkpoints --------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        return checkpoint.training_state(
            self.model,
            self.guide,
            self.estimator,
            self.optimizer,
            asdict(self.state),
            pretrain=self.pretrained,
        )

    def pretrain(self) -> None:
        """The model's pretraining (:meth:`~pyro_moe.base.PyroModel.pretrain`) on the training
        inputs, the global RNG seeded with the run's seed inside and left as it was outside;
        its record (with the seed and wall seconds) goes into every checkpoint, and a first
        checkpoint is written at once so that a resume never pretrains again."""
        start = time.perf_counter()
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.config.seed)
            record = self.model.pretrain(self.data.train.x, self.config.seed)
        if record is None:
            return
        seconds = time.perf_counter() - start
        self.pretrained = {"seed": self.config.seed, "seconds": seconds, **record}
        self.score_start()

    def score_start(self) -> None:
        """Validate the pretrained start as epoch 0 (a ``metrics.csv`` row), so early stopping
        keeps it when training does not improve on it, and write the first checkpoint."""
        metrics = self.validate()
        self.update_early_stopping(metrics)
        self.history.append(
            {"step": 0, "epoch": 0, "wall_seconds": 0.0, "train_loss": math.nan, **metrics}
        )
        if self.run:
            self.run.write_metrics(self.history)
        self.save()

    def save(self) -> None:
        if self.run:
            save_checkpoint(self.run.checkpoint, self.checkpoint_state())

    def restore(self) -> None:
        """Load the run folder's checkpoint (and best parameters) into this trainer."""
        if self.run is None:
            raise ConfigError("resume needs a run folder")
        self.run.remove_temporaries()
        stored = checkpoint.restore_training_state(
            self.run.checkpoint,
            self.model,
            self.guide,
            self.estimator,
            self.optimizer,
            asdict(TrainState()),
        )
        self.state = TrainState(**{**stored["train_state"], "stop_reason": ""})
        self.pretrained = stored["pretrain"]
        self._check_batch_size()
        self.state.batch_size = self.batch_size
        if self.run.best.is_file():
            self.best_params = checkpoint.load_best(self.run.best, self.model, self.guide)
        self.history = [r for r in self.run.read_metrics() if r.get("step", 0) <= self.state.step]
        self.run.write_metrics(self.history)

    def _check_batch_size(self) -> None:
        """A new batch size may start at an epoch boundary. It is refused in the middle of an
        epoch (the saved position counts batches of the old size) and when Pyro's param store
        holds per-row state such as decaying-average baselines, whose shape is the old size."""
        old = self.state.batch_size
        if not old or old == self.batch_size:
            return
        keep = f"resume with --batch-size {old}"
        if self.state.batch:
            raise ConfigError(
                f"{self.run.checkpoint} stopped in the middle of epoch {self.state.epoch + 1} "
                f"(batch {self.state.batch} of {len(self.data.train) // old} at batch size {old}); "
                f"{keep}, or change the batch size at an epoch boundary"
            )
        if checkpoint.param_store_state()["params"]:
            raise ConfigError(
                f"{self.run.checkpoint} holds per-row estimator state (Pyro baseline averages) "
                f"for batch size {old}, not {self.batch_size}; {keep}"
            )

    # --- the loop -----------------------------------------------------------------------------
    def total_steps(self) -> int:
        total = self.config.epochs * self.steps_per_epoch
        return min(total, self.config.max_steps) if self.config.max_steps else total

    def run_loop(self) -> None:
        start = time.perf_counter() - self.state.wall_seconds
        bar = tqdm(
            total=self.total_steps(),
            initial=self.state.step,
            disable=self._quiet(),
            desc=f"{type(self.model).__name__}/{self.estimator.name}",
            dynamic_ncols=True,
        )
        with bar:
            while not self._finished():
                bar.set_postfix(loss=f"{self.step():.4g}", refresh=False)
                bar.update()
                self.state.wall_seconds = time.perf_counter() - start
                if self.state.batch == self.steps_per_epoch:
                    self.end_epoch()
                    bar.set_postfix({self.monitor: f"{self.history[-1][self.monitor]:.4g}"})
                elif self._checkpoint_due():
                    self.save()
                if self.stop.requested:
                    self.interrupt()
        self.save()

    def _checkpoint_due(self) -> bool:
        every = self.config.checkpoint_every
        return every is not None and self.state.step % every == 0

    def interrupt(self) -> None:
        """Write a checkpoint after the step that a stop signal interrupted, then stop."""
        self.save()
        where = f"after step {self.state.step} (epoch {self.state.epoch + 1})"
        saved = (
            f"checkpoint written to {self.run.checkpoint}"
            if self.run
            else "no run folder, so nothing was saved"
        )
        raise TrainingInterrupted(
            f"{self.stop.name} received: stopped {where}; {saved}",
            self.stop.signum or 0,
            self.state.step,
            str(self.run.path) if self.run else None,
        )

    def _quiet(self) -> bool | None:
        return None if self.config.progress is None else not self.config.progress

    def _finished(self) -> bool:
        if self.state.stop_reason:
            return True
        patience = self.config.patience
        if patience is not None and self.state.bad_epochs >= patience:
            self.state.stop_reason = "early-stopping"
        elif self.config.max_steps is not None and self.state.step >= self.config.max_steps:
            self.state.stop_reason = "max-steps"
        elif self.state.epoch >= self.config.epochs:
            self.state.stop_reason = "epochs"
        return bool(self.state.stop_reason)

    def end_epoch(self) -> None:
        train_loss = (
            self.state.loss_sum / self.state.loss_count if self.state.loss_count else math.nan
        )
        self.state.epoch += 1
        self.state.batch, self.state.loss_sum, self.state.loss_count = 0, 0.0, 0
        metrics = self.validate()
        self.last_validation = metrics
        self.update_early_stopping(metrics)
        row = {
            "step": self.state.step,
            "epoch": self.state.epoch,
            "wall_seconds": round(self.state.wall_seconds, 3),
            "train_loss": train_loss,
            **metrics,
        }
        if self.config.max_nonfinite_skips:
            row["nonfinite_skips"] = self.state.nonfinite_skips
        for callback in self.callbacks:
            row.update(callback(self) or {})
        self.history.append(row)
        if self.run:
            self.run.write_metrics(self.history)
        self.save()

    def restore_best(self) -> None:
        if self.best_params is not None:
            self.model.load_state_dict(self.best_params["model"])
            self.guide.load_state_dict(self.best_params["guide"])


def fit(
    model: PyroModel,
    guide: PyroGuide,
    estimator: Estimator,
    data: Dataset,
    config: TrainConfig | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    run_info: dict[str, Any] | None = None,
    callbacks: Sequence[Callback] = (),
    overwrite: bool = False,
) -> FitResult:
    """Train ``model`` with ``guide`` and ``estimator`` on ``data.train``; see the module docstring.

    Args:
        model, guide, estimator: from the registries (or your own subclasses).
        data: a :class:`~pyro_moe.data.Dataset`; validation uses ``data.valid``.
        config: :class:`TrainConfig` (defaults if None).
        run_dir: a folder for config.json, metrics.csv and checkpoints (None: nothing written;
            in a distributed run only rank 0 writes, and the other ranks' results have no
            ``run_dir``).
        resume: continue from ``run_dir``'s checkpoint instead of starting fresh.
        overwrite: replace an earlier run in ``run_dir`` (only a run folder; only the files the
            library wrote); without it a folder holding a run's files is refused. The folder is
            locked while ``fit`` runs (:meth:`~pyro_moe.runs.RunFolder.lock`).
        run_info: what to record in config.json besides the training options (names, options).
        callbacks: functions ``callback(trainer) -> dict | None`` called after each epoch's
            validation (whose metrics they can read in ``trainer.last_validation``); the dicts
            they return are added to that epoch's metrics row (e.g. gradient-variance
            measurements during training). They must not touch the global RNG
            if the run is to stay resumable bit for bit (use ``torch.random.fork_rng``).

    Returns:
        :class:`FitResult`; with ``config.restore_best`` the model and guide hold the parameters
        of the best validation epoch.
    """
    config = config or TrainConfig()
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a TrainConfig, got {type(config).__name__}")
    check_dataset(data)
    check_compatible(model, guide, estimator, data, config)
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    if resume and config.distributed:
        raise ConfigError("resuming a distributed run is not supported")
    parallel = process_group(config.distributed, config.device)
    run = RunFolder(run_dir) if run_dir is not None and parallel.is_main else None
    with run.lock() if run else nullcontext():
        trainer = Trainer(model, guide, estimator, data, config, run, callbacks, parallel)
        if resume:
            trainer.restore()
        else:
            if run:
                if overwrite:
                    run.clear()
                else:
                    run.check_fresh()
                run.start()
                run.write_config(run_info or {}, asdict(config))
            trainer.pretrain()
        with stop_on_signals() as trainer.stop:
            trainer.run_loop()
    if config.restore_best:
        trainer.restore_best()
    return FitResult(
        model,
        guide,
        estimator,
        config,
        trainer.state,
        trainer.history,
        run.path if run else None,
        pretrained=trainer.pretrained,
    )
