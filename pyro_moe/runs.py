"""A run folder: everything one training run writes, the one owner of its file formats, its lock.

run_dir/
  config.json      what was trained: model, guide, estimator, data (a file's absolute path and
                   SHA-256), training options, versions, ``"format"``
  metrics.csv      one row per epoch: step, epoch, wall_seconds, train_loss, valid_* metrics
  checkpoint.pt    the latest training state (atomic; enough for an exact resume)
  best.pt          model and guide parameters at the best validation score
  summary.json     validation and test metrics after training
  *.png            figures
  .pyro-moe-run    the marker: the folder's kind and every file the library wrote into it
  .pyro-moe.lock   held (``flock``) by the one process writing the folder

A folder is a run folder when it holds the marker (or, written by an earlier version, a
config.json with ``model`` and ``train``). One process at a time may write it: the lock is an
exclusive ``fcntl.flock`` on ``.pyro-moe.lock``, held for the whole command and released by the
kernel when the process ends, however it ends, so a lock file left by a killed process (its pid is
in the file) never blocks a later run. A second writer gets a :class:`RunFolderError` naming the
holder. A new run refuses a folder that already holds a run's files; ``overwrite`` replaces only
a run folder of the same kind and deletes only the files its marker lists.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from pyro_moe.checkpoint import (
    atomic_write_bytes,
    atomic_write_json,
    check_regular_file,
    read_regular_file,
)
from pyro_moe.errors import CheckpointError, DataError, RunFolderError, StorageError
from pyro_moe.tables import write_csv

try:
    import fcntl
except ImportError:  # not POSIX: no lock (documented in docs/reliability.md)
    fcntl = None  # type: ignore[assignment]

#: the kinds of run folder, as messages name them
KINDS = {
    "train": "run",
    "compare": "comparison of estimators",
    "bayes": "Bayesian comparison of expert counts",
}
MARKER = ".pyro-moe-run"
LOCK = ".pyro-moe.lock"
#: the files every training run may write (figures are recorded in the marker as they are drawn)
RUN_FILES = ("config.json", "metrics.csv", "checkpoint.pt", "best.pt", "summary.json")
#: config.json's sections besides the run spec's own fields
CONFIG_SECTIONS = ("format", "train", "versions", "data_file")
CONFIG_FORMAT = 1
#: run-spec fields whose values must be JSON objects, and those that must be strings (or null);
#: only ``model`` must be there
OPTION_FIELDS = ("model_options", "data_options", "estimator_options")
NAME_FIELDS = {"model": False, "data": True, "estimator": False, "guide": True}

_held: dict[str, int] = {}  # folders whose lock this process holds, with a re-entry count


def versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on."""
    found = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("pyro-moe", "pyro-ppl", "torch", "numpy", "scikit-learn"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


@dataclass(frozen=True)
class StoredRun:
    """config.json, checked: the run spec's fields, the training options and the data file."""

    spec: dict[str, Any]
    train: dict[str, Any]
    data_file: dict[str, Any] | None


class RunFolder:
    """Paths and file operations of one run folder (created on first write); ``kind`` is
    ``"train"`` (a training run) or ``"compare"`` (an estimator comparison), ``files`` the names
    of the files that kind of folder holds besides those recorded in its marker."""

    def __init__(
        self, path: str | Path, kind: str = "train", files: tuple[str, ...] = RUN_FILES
    ) -> None:
        self.path = Path(path)
        self.kind, self.files = kind, files
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"run folder {self.path} exists and is not a folder")

    config = property(lambda self: self.path / "config.json")
    metrics = property(lambda self: self.path / "metrics.csv")
    checkpoint = property(lambda self: self.path / "checkpoint.pt")
    best = property(lambda self: self.path / "best.pt")
    summary = property(lambda self: self.path / "summary.json")
    marker = property(lambda self: self.path / MARKER)

    def figure(self, name: str) -> Path:
        """The path of figure ``name``, recorded in the marker (so ``overwrite`` removes it)."""
        self.record(f"{name}.png")
        return self.path / f"{name}.png"

    def save_figure(self, name: str, figure: Any, **savefig: Any) -> Path:
        """Draw a matplotlib ``figure`` into ``name.png`` atomically (never half a PNG)."""
        import io

        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", **savefig)
        path = self.figure(name)
        atomic_write_bytes(path, buffer.getvalue())
        return path

    def has_checkpoint(self) -> bool:
        return self.checkpoint.is_file()

    # --- what the folder is -----------------------------------------------------------------
    def read_marker(self) -> dict[str, Any] | None:
        """The marker's contents (None when there is none); a malformed marker is an error."""
        if not self.marker.exists():
            return None
        try:
            marker = json.loads(read_regular_file(self.marker, "run-folder marker"))
        except (ValueError, UnicodeDecodeError):
            marker = None
        ok = isinstance(marker, dict) and isinstance(marker.get("files"), list)
        if not ok or not all(isinstance(f, str) and "/" not in f for f in marker["files"]):
            raise RunFolderError(f"{self.marker} is malformed; remove it to reuse the folder")
        return marker

    def folder_kind(self) -> str | None:
        """``"train"`` / ``"compare"`` for a run folder, None for any other folder."""
        marker = self.read_marker()
        if marker is not None:
            return str(marker.get("kind", "train"))
        if self.config.is_file():  # a run folder written before the marker existed
            try:
                legacy = json.loads(self.config.read_bytes())
            except (OSError, ValueError):
                return None
            if isinstance(legacy, dict) and {"model", "train"} <= set(legacy):
                return "train"
        return None

    def written_files(self) -> list[str]:
        """Names of the files the library wrote here (the marker's list, and the run files)."""
        marker = self.read_marker()
        recorded = marker["files"] if marker else [p.name for p in self._legacy_figures()]
        names = [*self.files, *recorded]
        return [n for n in dict.fromkeys(names) if (self.path / n).exists()]

    def _legacy_figures(self) -> list[Path]:
        return sorted(self.path.glob("[!.]*.png")) if self.kind == "train" else []

    def record(self, *names: str) -> None:
        """Add ``names`` to the marker's list of files the library wrote here."""
        marker = self.read_marker() or {"format": CONFIG_FORMAT, "kind": self.kind, "files": []}
        new = [n for n in names if n not in marker["files"]]
        if new:
            marker["files"] = [*marker["files"], *new]
            atomic_write_json(self.marker, marker)

    def check_fresh(self) -> None:
        """Refuse to start a new run where a run's files already are (nothing is replaced)."""
        if not self.path.is_dir():
            return
        clash = [n for n in (*self.files, MARKER) if (self.path / n).exists()]
        clash += [p.name for p in self._legacy_figures()]
        if clash:
            resume = "continue it with --resume, " if self.kind == "train" else ""
            raise RunFolderError(
                f"{self.path} already holds a {KINDS[self.kind]} or files one writes "
                f"({', '.join(clash[:4])}); "
                f"{resume}replace it with --overwrite, or choose another folder"
            )

    def check_replaceable(self) -> None:
        """``overwrite`` may replace only a run folder of this kind (or an absent / empty one)."""
        if not self.path.is_dir() or not any(p.name != LOCK for p in self.path.iterdir()):
            return
        kind = self.folder_kind()
        if kind is None:
            raise RunFolderError(
                f"{self.path} is not a pyro-moe run folder; --overwrite replaces only run folders "
                "and deleted nothing"
            )
        if kind != self.kind:
            raise RunFolderError(
                f"{self.path} holds a {KINDS.get(kind, kind)}, not a {KINDS[self.kind]}; "
                "--overwrite deleted nothing"
            )

    def clear(self) -> None:
        """Delete the files the library wrote here (and nothing else) so a new run can start."""
        self.check_replaceable()
        if not self.path.is_dir():
            return
        for name in self.written_files():
            entry = self.path / name
            if entry.is_dir() and not entry.is_symlink():  # a comparison's run folder
                RunFolder(entry).clear()
                _rmdir_if_empty(entry)
            else:
                _unlink(entry)
        _unlink(self.marker)
        self.remove_temporaries()

    def start(self) -> None:
        """Mark the folder as a fresh run folder of this kind (no files recorded yet)."""
        atomic_write_json(self.marker, {"format": CONFIG_FORMAT, "kind": self.kind, "files": []})

    def remove_temporaries(self) -> None:
        """Delete temporary files left by a write that a crash interrupted (``.NAME.*.tmp``)."""
        if self.path.is_dir():
            for tmp in self.path.glob(".*.tmp"):
                _unlink(tmp)

    # --- the lock -----------------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[RunFolder]:
        """Hold the folder's exclusive lock for the block (re-entrant within a process)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            key = str(self.path.resolve())
        except OSError as e:
            raise StorageError.from_os_error(e, self.path, "cannot create run folder") from None
        if key in _held or fcntl is None:
            _held[key] = _held.get(key, 0) + 1
            try:
                yield self
            finally:
                _release_count(key)
            return
        fd = self._acquire()
        _held[key] = 1
        try:
            yield self
        finally:
            _release_count(key)
            with suppress(OSError):  # an error already on its way must not be replaced
                (self.path / LOCK).unlink()
            os.close(fd)

    def _acquire(self) -> int:
        path = self.path / LOCK
        for _ in range(10):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise StorageError.from_os_error(e, path, "cannot create the lock") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "unknown"
                os.close(fd)
                raise RunFolderError(
                    f"{self.path} is in use by another pyro-moe process ({holder}); wait for it "
                    "to finish or choose another folder"
                ) from None
            except OSError as e:  # a file system without locks
                os.close(fd)
                raise StorageError.from_os_error(e, path, "cannot lock") from None
            if _same_file(fd, path):  # not a lock file that its holder removed meanwhile
                _write_holder(fd)
                return fd
            os.close(fd)
        raise RunFolderError(f"cannot take the lock {path}: it keeps being replaced")

    # --- config.json and summary.json ---------------------------------------------------------
    def write_config(self, spec: dict[str, Any], train: dict[str, Any]) -> None:
        """config.json: the run spec's fields, the training options, versions and, for a data
        file, its absolute path and SHA-256 (:func:`data_file_record`)."""
        record = data_file_record(spec.get("data"))
        spec = {**spec, "data": record["path"]} if record else spec
        document = {**spec, "format": CONFIG_FORMAT, "train": train, "versions": versions()}
        if record:
            document["data_file"] = record
        self.write_json(self.config, document)

    def read_config(self) -> StoredRun:
        """config.json, checked (:func:`parse_config`)."""
        if not self.config.exists():
            raise CheckpointError(f"{self.path} has no config.json; it is not a run folder")
        return parse_config(read_regular_file(self.config, "config.json"), self.config)

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.write_json(self.summary, summary)

    def write_json(self, path: Path, obj: Any) -> None:
        self.record(path.name)
        atomic_write_json(path, obj)

    def write_text(self, name: str, text: str) -> Path:
        self.record(name)
        atomic_write_bytes(self.path / name, text.encode("utf-8"))
        return self.path / name

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        try:
            with self.metrics.open(newline="") as f:
                rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise CheckpointError(f"{self.metrics} is unreadable: {e}") from None
        for number, row in enumerate(rows, start=2):
            if type(row.get("step")) is not int:
                raise CheckpointError(f"{self.metrics} is malformed: line {number} has no step")
        return rows

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite metrics.csv atomically; columns are the rows' keys, first seen first."""
        self.record(self.metrics.name)
        write_csv(self.metrics, rows)

    def write_table(self, name: str, rows: list[dict[str, Any]]) -> Path:
        """Rows as ``name`` (CSV) in the folder, atomically and recorded."""
        self.record(name)
        write_csv(self.path / name, rows)
        return self.path / name


def parse_config(data: bytes, path: Path | str = "config.json") -> StoredRun:
    """The run spec, training options and data-file record of a config.json's bytes; anything
    malformed is a :class:`CheckpointError` naming the file and the problem."""
    try:
        stored = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path} is not JSON text ({type(e).__name__})") from None
    if not isinstance(stored, dict):
        raise CheckpointError(f"{path} holds {type(stored).__name__}, not a run configuration")
    if "model" not in stored:
        raise CheckpointError(f"{path} names no model; it is not a run configuration")
    for name, optional in NAME_FIELDS.items():
        value = stored.get(name, "")
        if not (isinstance(value, str) or (optional and value is None)):
            need = "a name" + (" or null" if optional else "")
            raise CheckpointError(f"{path}: {name!r} must be {need}, got {value!r:.60}")
    for name in OPTION_FIELDS:
        options = stored.get(name, {})
        if not isinstance(options, dict):
            raise CheckpointError(f"{path}: {name!r} must be a JSON object, got {options!r:.60}")
    seed = stored.get("seed", 0)
    if type(seed) is not int:
        raise CheckpointError(f"{path}: 'seed' must be an integer, got {seed!r:.60}")
    train = stored.get("train", {})
    if not isinstance(train, dict):
        raise CheckpointError(f"{path}: 'train' must be a JSON object, got {train!r:.60}")
    data_file = stored.get("data_file")
    if data_file is not None and not _is_data_record(data_file):
        raise CheckpointError(f"{path}: 'data_file' is malformed")
    spec = {k: v for k, v in stored.items() if k not in CONFIG_SECTIONS}
    return StoredRun(spec=spec, train=train, data_file=data_file)


def _is_data_record(record: Any) -> bool:
    return (
        isinstance(record, dict)
        and isinstance(record.get("path"), str)
        and isinstance(record.get("sha256"), str)
        and type(record.get("bytes")) is int
    )


# --- the data file a run was trained on -----------------------------------------------------------
def data_file_record(name: Any) -> dict[str, Any] | None:
    """``{"path", "sha256", "bytes"}`` of the data file ``name`` (None: a registered data set)."""
    from pyro_moe.registry import DATASETS

    if not isinstance(name, str) or name in DATASETS:
        return None
    path = Path(name)
    if not (name.endswith(".npz") or path.exists()):
        return None
    absolute = path.absolute()
    digest, size = file_digest(absolute)
    return {"path": str(absolute), "sha256": digest, "bytes": size}


def file_digest(path: Path) -> tuple[str, int]:
    """SHA-256 (hex) and size of a regular file."""
    check_regular_file(path, "data file")
    digest, size = hashlib.sha256(), 0
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
    except OSError as e:
        raise StorageError.from_os_error(e, path, "cannot read data file") from None
    return digest.hexdigest(), size


def check_data_file(record: dict[str, Any] | None, allow_changed: bool = False) -> None:
    """Refuse a run's data file that has changed since the run started (``allow_changed``: use
    it anyway); a missing file is refused either way."""
    if record is None:
        return
    path = Path(record["path"])
    try:
        digest, _ = file_digest(path)
    except StorageError as e:
        raise DataError(f"the run's data file is gone or unreadable: {e}") from None
    if digest != record["sha256"] and not allow_changed:
        raise DataError(
            f"data file {path} has changed since the run started (SHA-256 {digest[:12]}..., "
            f"recorded {record['sha256'][:12]}...); pass --allow-changed-data to use it anyway"
        )


# --- small helpers --------------------------------------------------------------------------------
def _release_count(key: str) -> None:
    _held[key] -= 1
    if not _held[key]:
        del _held[key]


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _write_holder(fd: int) -> None:
    text = f"pid {os.getpid()} on {socket.gethostname()}\n".encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, text, 0)
    except OSError:
        pass  # the holder's name is only for the message; the lock itself is held


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        raise StorageError.from_os_error(e, path, "cannot delete") from None


def _rmdir_if_empty(path: Path) -> None:
    with suppress(OSError):  # it holds files the library did not write: they stay
        path.rmdir()


def _number(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text
