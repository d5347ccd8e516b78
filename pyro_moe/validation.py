"""Checks for values that cross the library's boundary: options, temperatures, whole data sets.

Each check raises :class:`~pyro_moe.errors.ConfigError` (options) or
:class:`~pyro_moe.errors.DataError` (data) with a message that names the value and what was wrong,
so that a bad input never surfaces as a stack trace from deep inside PyTorch or Pyro. Arrays are
checked where they enter (:func:`pyro_moe.data.as_inputs` / :func:`~pyro_moe.data.as_targets`);
:func:`check_dataset` re-checks a :class:`~pyro_moe.data.Dataset` handed to ``fit`` directly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyro
import torch

from pyro_moe.errors import ConfigError, DataError


def check_int(
    name: str,
    value: Any,
    minimum: int = 1,
    optional: bool = False,
    error: type[Exception] = ConfigError,
) -> Any:
    """``value`` is a whole number >= ``minimum`` (or None when ``optional``); returns it. The
    library's one integer check: ``error`` is :class:`ConfigError` for options,
    :class:`DataError` for data-set arguments."""
    if optional and value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise error(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_number(name: str, value: Any, positive: bool = True, optional: bool = False) -> None:
    """``value`` is a finite real number, > 0 when ``positive`` (or None when ``optional``)."""
    if optional and value is None:
        return
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > 0 or not positive)
    )
    if not ok:
        what = "a finite number > 0" if positive else "a finite number"
        raise ConfigError(f"{name} must be {what}, got {value!r}")


def check_bool(name: str, value: Any, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")


def check_str(name: str, value: Any, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} must be a non-empty string, got {value!r}")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` is one of ``choices``; returns it."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_temperature(value: Any, name: str = "temperature") -> float:
    """A relaxation temperature: a finite number > 0 (tau -> 0 is the discrete limit, never 0)."""
    if isinstance(value, torch.Tensor):
        if not bool(torch.isfinite(value).all() and (value > 0).all()):
            raise ConfigError(f"{name} must be finite and > 0, got {value}")
        return value
    check_number(name, value)
    return float(value)


def check_dataset(data: Any) -> None:
    """A :class:`~pyro_moe.data.Dataset` whose splits are non-empty, finite and consistent."""
    from pyro_moe.data.base import TASKS, Dataset

    if not isinstance(data, Dataset):
        raise DataError(f"expected a pyro_moe Dataset, got {type(data).__name__}")
    if data.task not in TASKS:
        raise DataError(f"data set {data.name!r} has unknown task {data.task!r}")
    width = None
    for split_name in ("train", "valid", "test"):
        split = getattr(data, split_name)
        x = split.x
        what = f"{data.name} {split_name}"
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise DataError(f"{what} x must be a 2-D float tensor, got {shape}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise DataError(f"{what} x is empty (shape {tuple(x.shape)})")
        if width is not None and x.shape[1] != width:
            raise DataError(f"{what} x has {x.shape[1]} columns, train has {width}")
        width = x.shape[1]
        if not bool(torch.isfinite(x).all()):
            raise DataError(f"{what} x has NaN/inf values")
        _check_split_targets(data, split.y, x.shape[0], what)


def _check_split_targets(data: Any, y: torch.Tensor | None, rows: int, what: str) -> None:
    if data.task == "clustering":
        return
    if y is None:
        raise DataError(f"{what}: a {data.task} data set needs targets y")
    if y.shape[:1] != (rows,):
        raise DataError(f"{what}: x has {rows} rows but y has shape {tuple(y.shape)}")
    if data.task == "regression":
        if y.dim() != 2 or not y.is_floating_point() or not bool(torch.isfinite(y).all()):
            raise DataError(f"{what}: regression y must be a finite float tensor [N, M]")
        return
    if y.dim() != 1 or y.is_floating_point():
        raise DataError(f"{what}: class labels y must be an integer tensor [N]")
    k = data.num_classes
    check_int(f"{what}: num_classes of a classification data set", k, error=DataError)
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise DataError(
            f"{what}: class labels must lie in [0, {k}), got [{int(y.min())}, {int(y.max())}]"
        )


@contextmanager
def distribution_checks_off() -> Iterator[None]:
    """Pyro's validation off (distribution arguments, supports, plate shapes) inside the block;
    afterwards Pyro's flag *and* torch's default ``validate_args`` are as they were.

    ``pyro.validation_enabled`` alone sets torch's default to Pyro's flag on exit, so a program
    that had turned torch's checks off (Storchastic does on import) would find them on again.
    """
    torch_default = torch.distributions.Distribution._validate_args
    try:
        with pyro.validation_enabled(False):
            yield
    finally:
        torch.distributions.Distribution.set_default_validate_args(torch_default)
