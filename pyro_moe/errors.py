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


class TrainingError(PyroMoeError, RuntimeError):
    """Training cannot go on (non-finite loss or gradient); the last good checkpoint is kept."""
