"""Data sets as three splits of tensors, checked at the boundary.

A :class:`Dataset` holds ``train`` / ``valid`` / ``test`` :class:`Split` s. Each split has inputs
``x`` ``[N, D]`` (float), targets ``y`` (regression ``[N, M]`` float, classification ``[N]`` long,
clustering ``None``) and, where the generating component is known, ``labels`` ``[N]`` (long, for
evaluation only; never shown to a model).

A user's own arrays become a data set with :meth:`Dataset.from_arrays` (and a ``.npz`` file with
:func:`load_npz`, which reads the same array names):

* ``x`` with ``y`` and / or ``labels``: the library splits the rows by a permutation seeded with
  ``seed``, ``train_fraction`` (default 0.6) to train, ``valid_fraction`` (0.2) to validation and
  the rest (0.2) to test;
* ``x_train``, ``x_valid``, ``x_test`` with ``y_*`` and / or ``labels_*``: your own split, used
  as is.

The task is ``classification`` for integer ``y``, ``regression`` for float ``y`` and
``clustering`` without ``y``, unless ``task`` says otherwise. ``labels`` are the ground-truth
cluster key: accuracy (Hungarian), NMI and ARI are reported against them for every model that
assigns clusters; a clustering set needs no ``y`` (with ``task="clustering"`` a given ``y`` is
taken as its labels), and a classification set without ``labels`` uses its classes.

Everything that enters the library from outside passes :func:`as_inputs` / :func:`as_targets`,
which raise :class:`~pyro_moe.errors.DataError` naming the problem (shape, dtype, NaN / inf, empty,
length mismatch, label range) instead of failing deep inside a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyro_moe.checkpoint import ZIP_MAGIC as NPZ_MAGIC
from pyro_moe.checkpoint import check_regular_file
from pyro_moe.errors import DataError, StorageError

TASKS = ("regression", "classification", "clustering")
SPLITS = ("train", "valid", "test")
LIBRARY_SPLIT = ("x", "y", "labels")
OWN_SPLIT = tuple(f"{array}_{split}" for split in SPLITS for array in LIBRARY_SPLIT)
ARRAY_NAMES = LIBRARY_SPLIT + OWN_SPLIT
#: train and validation shares of a library split (the test split takes the rest)
DEFAULT_FRACTIONS = (0.6, 0.2)


@dataclass(frozen=True)
class Split:
    """One split: inputs ``x`` [N, D], targets ``y`` and ground-truth component ``labels``."""

    x: torch.Tensor
    y: torch.Tensor | None = None
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
        """A copy on ``device`` with floating tensors cast to ``dtype``."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return Split(move(self.x), move(self.y), move(self.labels))


@dataclass(frozen=True)
class Dataset:
    """A named data set with its task and three splits."""

    name: str
    task: str
    train: Split
    valid: Split
    test: Split
    num_classes: int | None = None
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def input_dim(self) -> int:
        return self.train.x.shape[1]

    @property
    def output_dim(self) -> int:
        """Regression: the width M of y; classification: the number of classes; clustering: 0."""
        if self.task == "regression":
            return self.train.y.shape[1]
        if self.task == "classification":
            return int(self.num_classes)
        return 0

    def to(self, device=None, dtype=None) -> Dataset:
        return replace(
            self,
            train=self.train.to(device, dtype),
            valid=self.valid.to(device, dtype),
            test=self.test.to(device, dtype),
        )

    @classmethod
    def from_arrays(
        cls,
        name: str = "arrays",
        task: str | None = None,
        *,
        seed: int = 0,
        train_fraction: float = DEFAULT_FRACTIONS[0],
        valid_fraction: float = DEFAULT_FRACTIONS[1],
        num_classes: int | None = None,
        **arrays: Any,
    ) -> Dataset:
        """A checked data set from arrays named as in the module docstring: ``x`` / ``y`` /
        ``labels`` (split by the library) or ``x_train`` ... ``labels_test`` (used as is).

        ``Dataset.from_arrays(**np.load("file.npz"))`` reads a file's arrays; an unknown array
        name, a mix of both forms or a missing split is a :class:`DataError`."""
        check_array_names(arrays)
        if "x" in arrays:
            mixed = sorted(set(arrays) & set(OWN_SPLIT))
            if mixed:
                raise DataError(f"give x, y, labels or per-split arrays, not both ({mixed[0]})")
            y, labels, task = _task_arrays(task, arrays.get("y"), arrays.get("labels"))
            fractions = _check_fractions(train_fraction, valid_fraction)
            x = arrays["x"]
            return split_arrays(
                name, task, x, y, labels, seed=seed, fractions=fractions, num_classes=num_classes
            )
        return _own_split(name, task, num_classes, arrays)

    def summary(self) -> str:
        sizes = f"{len(self.train)}/{len(self.valid)}/{len(self.test)}"
        return f"{self.name}: {self.task}, D={self.input_dim}, train/valid/test={sizes}"


def _as_tensor(a: Any, name: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        if a.is_complex():
            raise DataError(f"{name} must be real, got dtype {a.dtype}")
        return a.detach()
    try:
        arr = np.asarray(a)
    except Exception as e:  # ragged lists and the like
        raise DataError(f"{name} cannot be read as an array: {e}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise DataError(f"{name} must be numeric, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise DataError(f"{name} must be real, got dtype {arr.dtype}")
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.to(torch.get_default_dtype()) if t.is_floating_point() else t


def _check_finite(t: torch.Tensor, name: str) -> None:
    if t.is_floating_point():
        bad = ~torch.isfinite(t)
        if bad.any():
            rows = bad.reshape(t.shape[0], -1).any(1).nonzero().flatten()
            raise DataError(
                f"{name} has {int(bad.sum())} NaN/inf value(s), first in row {int(rows[0])}"
            )


def as_inputs(x: Any, name: str = "x") -> torch.Tensor:
    """Check and convert inputs to a float tensor ``[N, D]`` with N, D >= 1 and finite values."""
    t = _as_tensor(x, name)
    if t.dim() != 2:
        raise DataError(f"{name} must be 2-D [N, D], got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise DataError(f"{name} is empty (shape {tuple(t.shape)})")
    t = t.to(torch.get_default_dtype()) if not t.is_floating_point() else t
    _check_finite(t, name)
    return t


def as_targets(
    y: Any, task: str, num_rows: int, num_classes: int | None = None, name: str = "y"
) -> torch.Tensor | None:
    """Check and convert targets for ``task`` (see the module docstring for the shapes)."""
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    if task == "clustering" or y is None:
        if task != "clustering":
            raise DataError(f"a {task} data set needs targets {name}")
        return None
    t = _as_tensor(y, name)
    if t.shape[:1] != (num_rows,):
        raise DataError(f"x has {num_rows} rows but {name} has shape {tuple(t.shape)}")
    if task == "regression":
        return _regression_targets(t, name)
    return _class_targets(t, num_classes, name)


def _regression_targets(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.dim() == 1:
        t = t[:, None]
    if t.dim() != 2:
        raise DataError(f"regression {name} must be [N] or [N, M], got shape {tuple(t.shape)}")
    t = t.to(torch.get_default_dtype()) if not t.is_floating_point() else t
    _check_finite(t, name)
    return t


def _class_targets(t: torch.Tensor, num_classes: int | None, name: str) -> torch.Tensor:
    if t.dim() != 1:
        raise DataError(f"class labels {name} must be 1-D [N], got shape {tuple(t.shape)}")
    if t.is_floating_point():
        _check_finite(t, name)
        if not torch.equal(t, t.round()):
            raise DataError(f"class labels {name} must be whole numbers")
    t = t.long()
    if num_classes is None:
        raise DataError("a classification data set needs num_classes")
    low, high = int(t.min()), int(t.max())
    if low < 0 or high >= num_classes:
        raise DataError(f"class labels {name} must lie in [0, {num_classes}), got [{low}, {high}]")
    return t


def _infer_num_classes(y: Any, name: str = "y") -> int:
    """1 + the largest label (the labels themselves are checked by :func:`as_targets`)."""
    t = _as_tensor(y, name)
    if t.numel() == 0:
        raise DataError(f"{name} is empty (shape {tuple(t.shape)})")
    _check_finite(t.reshape(t.shape[0] if t.dim() else 1, -1), name)
    return int(t.max()) + 1


def split_arrays(
    name: str,
    task: str,
    x: Any,
    y: Any = None,
    labels: Any = None,
    *,
    seed: int = 0,
    fractions: tuple[float, float] = DEFAULT_FRACTIONS,
    num_classes: int | None = None,
    description: str = "",
    meta: dict[str, Any] | None = None,
) -> Dataset:
    """Check arrays and split them by a seeded permutation into train / valid / test.

    ``fractions`` are the train and validation shares; the test split takes the rest.
    """
    x = as_inputs(x)
    n = x.shape[0]
    if task == "classification" and num_classes is None and y is not None:
        num_classes = _infer_num_classes(y)
    y = as_targets(y, task, n, num_classes)
    labels = _as_labels(labels, n, "labels")
    n_train, n_valid = int(round(fractions[0] * n)), int(round(fractions[1] * n))
    if min(n_train, n_valid, n - n_train - n_valid) < 1:
        raise DataError(f"{n} rows are too few to split into train/valid/test")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts = order[:n_train], order[n_train : n_train + n_valid], order[n_train + n_valid :]

    def take(idx: torch.Tensor) -> Split:
        return Split(x[idx], None if y is None else y[idx], None if labels is None else labels[idx])

    return Dataset(
        name,
        task,
        *map(take, parts),
        num_classes=num_classes,
        description=description,
        meta=meta or {},
    )


def check_array_names(arrays: Any) -> None:
    """Every name is one of :data:`ARRAY_NAMES`, else a :class:`DataError` listing them."""
    unknown = sorted(set(arrays) - set(ARRAY_NAMES))
    if unknown:
        raise DataError(
            f"unknown array(s) {', '.join(unknown)}; use {', '.join(LIBRARY_SPLIT)} "
            f"(split by the library) or {', '.join(OWN_SPLIT)} (your own split)"
        )


def infer_task(y: Any) -> str:
    """``classification`` for integer (or boolean) ``y``, ``regression`` for float ``y``,
    ``clustering`` without ``y``."""
    if y is None:
        return "clustering"
    kind = _as_tensor(y, "y")
    return "regression" if kind.is_floating_point() else "classification"


def _task_arrays(task: str | None, y: Any, labels: Any) -> tuple[Any, Any, str]:
    """``(y, labels, task)``: the task inferred from ``y`` when not given; a clustering set's
    ``y`` becomes its labels; a classification set without labels uses its classes."""
    task = infer_task(y) if task is None else task
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    if task == "clustering" and y is not None:
        if labels is not None:
            raise DataError("a clustering set has no targets: give labels or y, not both")
        return None, y, task
    if task == "classification" and labels is None:
        labels = y
    return y, labels, task


def _check_fractions(train: Any, valid: Any) -> tuple[float, float]:
    for name, value in (("train_fraction", train), ("valid_fraction", valid)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise DataError(f"{name} must be a number in (0, 1), got {value!r}")
    if train + valid >= 1:
        raise DataError(
            f"train_fraction + valid_fraction must be < 1 (the test split takes the rest), "
            f"got {train} + {valid}"
        )
    return float(train), float(valid)


def _own_split(
    name: str, task: str | None, num_classes: int | None, arrays: dict[str, Any]
) -> Dataset:
    """A data set from per-split arrays ``x_train`` ... ``labels_test``, used as given."""
    missing = [f"x_{split}" for split in SPLITS if f"x_{split}" not in arrays]
    if missing:
        raise DataError(
            f"missing {', '.join(missing)}: give x_train, x_valid and x_test (your own split), "
            "or x (split by the library)"
        )
    for kind in ("y", "labels"):
        given = [f"{kind}_{split}" for split in SPLITS if f"{kind}_{split}" in arrays]
        if given and len(given) < len(SPLITS):
            raise DataError(f"{', '.join(given)} given: {kind} needs all of train, valid, test")
    resolved = {
        split: _task_arrays(task, arrays.get(f"y_{split}"), arrays.get(f"labels_{split}"))
        for split in SPLITS
    }
    task = resolved["train"][2]
    if task == "classification" and num_classes is None:
        num_classes = max(_infer_num_classes(resolved[s][0], f"y_{s}") for s in SPLITS)

    def take(split: str) -> Split:
        y, labels, _ = resolved[split]
        x = as_inputs(arrays[f"x_{split}"], f"x_{split}")
        n = x.shape[0]
        y = as_targets(y, task, n, num_classes, f"y_{split}")
        labels = _as_labels(labels, n, f"labels_{split}")
        return Split(x, y, labels)

    parts = [take(split) for split in SPLITS]
    widths = {p.x.shape[1] for p in parts}
    if len(widths) > 1:
        raise DataError(f"x_train, x_valid, x_test have different widths {sorted(widths)}")
    return Dataset(name, task, *parts, num_classes=num_classes, meta={"split": "given"})


def _as_labels(labels: Any, num_rows: int, name: str) -> torch.Tensor | None:
    """Ground-truth cluster labels: whole numbers >= 0, one per row (``None`` stays ``None``)."""
    if labels is None:
        return None
    return as_targets(labels, "classification", num_rows, _infer_num_classes(labels, name), name)


def check_npz_file(path: Path) -> None:
    """A :class:`DataError` naming the problem unless ``path`` is a regular file that starts as a
    ``.npz`` (zip) archive does: not a missing file, a folder, a device (``/dev/zero``), a
    symbolic-link loop, or a CSV / pickle / ``.npy`` file under a ``.npz`` name."""
    try:
        check_regular_file(path, "data file")
        with path.open("rb") as f:
            head = f.read(16)
    except StorageError as e:
        raise DataError(str(e)) from None
    except OSError as e:
        raise DataError(f"cannot read data file {path}: {e.strerror or e}") from None
    if not head.startswith(NPZ_MAGIC):
        raise DataError(
            f"cannot read data file {path}: it is not a .npz file (a zip archive written by "
            f"numpy.savez) but starts with {head!r}"
        )


def load_npz(
    path: str | Path,
    task: str | None = None,
    seed: int = 0,
    split_seed: int | None = None,
    train_fraction: float = DEFAULT_FRACTIONS[0],
    valid_fraction: float = DEFAULT_FRACTIONS[1],
) -> Dataset:
    """A data set from a user's ``.npz`` file: the arrays of :meth:`Dataset.from_arrays`
    (``x`` / ``y`` / ``labels``, or ``x_train`` ... ``labels_test``). A library split is seeded
    with ``split_seed`` (default: ``seed``, the run's seed)."""
    path = Path(path)
    check_npz_file(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:
        raise DataError(f"cannot read {path} as .npz: {e}") from None
    if "x" not in arrays and "x_train" not in arrays:
        found = ", ".join(arrays) or "none"
        raise DataError(f"{path} has no array 'x' or 'x_train' (found: {found})")
    check_array_names(arrays)
    return Dataset.from_arrays(
        path.stem,
        task,
        seed=seed if split_seed is None else split_seed,
        train_fraction=train_fraction,
        valid_fraction=valid_fraction,
        **arrays,
    )
