"""A run folder: everything one training run writes, and how to read it back.

run_dir/
  config.json      what was trained: model, guide, estimator, data, training options, versions
  metrics.csv      one row per epoch: step, epoch, wall_seconds, train_loss, valid_* metrics
  checkpoint.pt    the latest training state (atomic; enough for an exact resume)
  best.pt          model and guide parameters at the best validation score
  summary.json     test metrics after training
  *.png            figures
"""

from __future__ import annotations

import csv
import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from pyro_moe.checkpoint import atomic_write_json
from pyro_moe.errors import CheckpointError, ConfigError
from pyro_moe.tables import write_csv


def versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on."""
    found = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("pyro-moe", "pyro-ppl", "torch", "numpy", "scikit-learn"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


class RunFolder:
    """Paths and file operations of one run folder (created on first write)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"run folder {self.path} exists and is not a folder")

    config = property(lambda self: self.path / "config.json")
    metrics = property(lambda self: self.path / "metrics.csv")
    checkpoint = property(lambda self: self.path / "checkpoint.pt")
    best = property(lambda self: self.path / "best.pt")
    summary = property(lambda self: self.path / "summary.json")

    def figure(self, name: str) -> Path:
        return self.path / f"{name}.png"

    def has_checkpoint(self) -> bool:
        return self.checkpoint.is_file()

    def check_fresh(self) -> None:
        """Refuse to start a new run over an earlier one's checkpoint."""
        if self.has_checkpoint():
            raise ConfigError(
                f"{self.path} already holds a run (checkpoint.pt); resume it (--resume) or choose "
                "another output folder"
            )

    def clear(self) -> None:
        """Delete the files a run writes (and nothing else) so a new run can start here."""
        if not self.path.is_dir():
            return
        for name in ("config.json", "metrics.csv", "checkpoint.pt", "best.pt", "summary.json"):
            (self.path / name).unlink(missing_ok=True)
        for figure in self.path.glob("*.png"):
            figure.unlink()

    def remove_temporaries(self) -> None:
        """Delete temporary files left by a write that a crash interrupted (``.NAME.*.tmp``)."""
        if self.path.is_dir():
            for tmp in self.path.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    def write_json(self, path: Path, obj: Any) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, obj)

    def read_config(self) -> dict[str, Any]:
        if not self.config.is_file():
            raise CheckpointError(f"{self.path} has no config.json; it is not a run folder")
        try:
            return json.loads(self.config.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{self.config} is unreadable: {e}") from None

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        with self.metrics.open(newline="") as f:
            return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite metrics.csv atomically; columns are the rows' keys, first seen first."""
        write_csv(self.metrics, rows)


def _number(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text
