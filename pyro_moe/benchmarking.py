"""What every benchmark script shares: the results files and the machine description.

A benchmark writes ``benchmarks/results/NAME.json``::

    {"command": ..., "seed": ..., "versions": {...}, "machine": ..., "wall_seconds": ...,
     "results": {...}}

and ``NAME.md``, the same as a table for people (with the published figures it compares with).
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pyro_moe.checkpoint import atomic_write_json, atomic_write_text
from pyro_moe.errors import ConfigError
from pyro_moe.runs import RunFolder, versions
from pyro_moe.tables import markdown_table

__all__ = [
    "RESULTS",
    "TimeBudget",
    "add_run_folder_arguments",
    "check_run_folder",
    "command_line",
    "default_runs_folder",
    "fixed_budget",
    "machine",
    "markdown_table",
    "run_script",
    "settle_run_folder_arguments",
    "write_results",
]

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def add_run_folder_arguments(parser: Any, checkpoint_every: int | None = None) -> None:
    """``--runs`` and ``--checkpoint-every`` (default ``checkpoint_every`` steps; None: at each
    epoch's end) for a benchmark that trains in checkpointed run folders (finish with
    :func:`settle_run_folder_arguments`)."""
    parser.add_argument(
        "--runs",
        help="checkpointed run folders, resumed when cut (default: runs/NAME for results under "
        "benchmarks/results, else OUT/runs)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=checkpoint_every,
        help="steps between checkpoints (default: "
        + ("epochs" if checkpoint_every is None else str(checkpoint_every))
        + ")",
    )


def settle_run_folder_arguments(parser: Any, args: Any, name: str) -> None:
    """Refuse ``--checkpoint-every`` below 1 and fill in the default ``--runs``."""
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        parser.error("--checkpoint-every must be >= 1")
    if args.runs is None:
        args.runs = str(default_runs_folder(args.out, name))


def default_runs_folder(out: str | Path, name: str) -> Path:
    """Where a benchmark keeps its checkpointed run folders when ``--runs`` is not given: for
    results written under ``benchmarks/results`` (committed), ``runs/<that subfolder>/NAME`` at
    the project's root (ignored by git), so checkpoints never land in the results tree; for any
    other ``--out``, ``OUT/runs``."""
    out, results = Path(out).resolve(), RESULTS.resolve()
    if out == results or results in out.parents:
        return results.parent.parent / "runs" / out.relative_to(results) / name
    return out / "runs"


class TimeBudget:
    """Stop training once another epoch (at the mean epoch time so far) would end past
    ``seconds`` of training wall time, counted over every resumed part of the run (the
    trainer's ``wall_seconds``); a callback of :func:`~pyro_moe.train.fit` (``None``: no cap)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds

    def __call__(self, trainer) -> None:
        state = trainer.state
        if self.seconds is not None and state.wall_seconds * (1 + 1 / state.epoch) > self.seconds:
            state.stop_reason = "time-budget"


def check_run_folder(run: RunFolder, expected: dict[str, Any]) -> bool:
    """Whether ``run`` holds a checkpoint to resume (a folder without one is cleared for a fresh
    start); raise :class:`~pyro_moe.errors.ConfigError` if its run was started with another
    protocol than ``expected`` (the ``protocol`` entry of the run's config)."""
    if not run.has_checkpoint():
        run.clear()
        return False
    stored = run.read_config().spec.get("protocol")
    if stored != expected:
        raise ConfigError(
            f"{run.path} holds a run of another protocol ({stored}); remove it or choose --runs"
        )
    return True


def fixed_budget(epochs: int, batch_size: int, lr: float, seed: int, **options: Any) -> Any:
    """The :class:`~pyro_moe.train.TrainConfig` of a benchmark run: exactly ``epochs`` epochs (no
    early stopping), no progress bar; ``options`` sets any other field."""
    from pyro_moe.train import TrainConfig

    return TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        patience=None,
        progress=False,
        **options,
    )


def machine() -> str:
    """A one-line description of this machine, measured when called: CPU cores, processor, OS,
    the GPU torch sees (or that it sees none) and the 1-minute load average (how busy the CPUs
    were, which inflates wall times)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [f"{cpus} CPU cores", platform.processor() or platform.machine(), platform.system()]
    parts.append(gpu())
    if hasattr(os, "getloadavg"):
        parts.append(f"load average {os.getloadavg()[0]:.1f}")
    return ", ".join(parts)


def gpu() -> str:
    """The CUDA device torch sees (name and count), or ``"no CUDA device"``."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"


def command_line(argv: Sequence[str] | None = None) -> str:
    argv = sys.argv if argv is None else argv
    return " ".join(shlex.quote(a) for a in ["python", *argv])


def write_results(
    name: str,
    *,
    seed: int,
    wall_seconds: float,
    results: dict[str, Any],
    markdown: str,
    out_dir: str | Path = RESULTS,
    command: str | None = None,
) -> tuple[Path, Path]:
    """Write ``NAME.json`` and ``NAME.md`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    record = {
        "command": command or command_line(),
        "seed": seed,
        "versions": versions(),
        "machine": machine(),
        "wall_seconds": round(wall_seconds, 1),
        "results": results,
    }
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    atomic_write_json(json_path, record)
    header = (
        f"Command: `{record['command']}`  \nSeed: {seed}; machine: {record['machine']}; "
        f"wall time {record['wall_seconds']} s; torch {record['versions']['torch']}, "
        f"pyro-ppl {record['versions']['pyro-ppl']}.\n\n"
    )
    atomic_write_text(md_path, header + markdown.strip() + "\n")
    return json_path, md_path


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MiB, from /proc (Linux) or
    ``resource`` (peak only elsewhere). The peak covers PyTorch's CPU allocator, which
    ``tracemalloc`` does not see."""
    status = Path("/proc/self/status")
    if status.is_file():
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024)  # bytes on macOS
    return peak, peak


def reset_peak_rss() -> bool:
    """Restart the peak-RSS counter (Linux ``clear_refs``); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def live_tensors() -> int:
    """How many torch tensors the garbage collector can reach (a leak of graphs grows this)."""
    import gc
    import warnings

    import torch

    gc.collect()
    # ``type(o)`` rather than ``isinstance(o, ...)``: isinstance asks a weak proxy for its
    # ``__class__``, which raises ReferenceError once the referent is gone (numba keeps such
    # proxies); the subclass test touches deprecated torch module attributes, hence the filter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


def run_script(main: Callable[[], int | None]) -> None:
    """Run a benchmark's ``main`` as a command: exit with its status; bad input (a
    :class:`~pyro_moe.errors.PyroMoeError`) is one ``error:`` line and status 2; a training run
    stopped by a signal says how to resume and exits with its status (128 + signal)."""
    from pyro_moe.cli import one_line
    from pyro_moe.errors import PyroMoeError, TrainingInterrupted

    try:
        status = main()
    except TrainingInterrupted as e:  # the run folder's checkpoint resumes it
        print(
            f"interrupted: {one_line(str(e))}; run the same command again to resume",
            file=sys.stderr,
        )
        sys.exit(e.exit_code)
    except PyroMoeError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        sys.exit(2)
    sys.exit(status or 0)
