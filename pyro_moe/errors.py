"""Exceptions raised at the library's boundary.

Every error a user can cause (bad data, an unknown name, a bad option, an unreadable checkpoint)
is a :class:`PyroMoeError`; the CLI prints its message and exits with status 2, without a traceback.
"""

from __future__ import annotations


class PyroMoeError(Exception):
    """Base class for errors caused by input: the message says what is wrong and how to fix it."""


class ConfigError(PyroMoeError, ValueError):
    """Options that cannot work (K < 1, a guide the estimator cannot use, ...)."""


class UnknownNameError(ConfigError):
    """A model, guide, estimator or data set name that is not registered."""


class DataError(PyroMoeError, ValueError):
    """Data with the wrong shape, dtype, length, or with NaN / inf values."""


class CheckpointError(PyroMoeError):
    """A checkpoint that is missing, unreadable, or was written for a different run."""


class StorageError(PyroMoeError, OSError):
    """A file the library reads or writes cannot be: disk full, read-only, not a regular file,
    a path through a file; the message names the file and the operating system's reason."""

    @classmethod
    def from_os_error(
        cls, error: OSError, path: object, action: str = "cannot write"
    ) -> StorageError:
        name = error.filename if error.filename is not None else path
        reason = error.strerror or type(error).__name__
        return cls(f"{action} {name}: {reason}")


class RunFolderError(ConfigError):
    """A run folder that is in use by another process, or that a command may not write into."""


class TrainingError(PyroMoeError, RuntimeError):
    """Training cannot go on (non-finite loss or gradient); the last good checkpoint is kept."""


class NonFiniteError(TrainingError):
    """A NaN / inf loss or gradient: ``step``, and the ``site`` or ``parameter`` it came from."""

    def __init__(
        self, message: str, step: int, site: str | None = None, parameter: str | None = None
    ) -> None:
        super().__init__(message)
        self.step, self.site, self.parameter = step, site, parameter


class TrainingInterrupted(Exception):
    """SIGINT / SIGTERM stopped training after a step; a checkpoint was written first.

    Not a :class:`PyroMoeError` (nothing was wrong with the input): the CLI exits with
    128 + the signal number (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, message: str, signum: int, step: int, run_dir: str | None = None) -> None:
        super().__init__(message)
        self.signum, self.step, self.run_dir = signum, step, run_dir  # run_dir: where to resume

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
