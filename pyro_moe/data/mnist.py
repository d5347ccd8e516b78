"""Real image data: MNIST, statically binarized MNIST and scikit-learn's 8x8 digits.

* ``mnist``: 70,000 handwritten digits, 28x28 grey levels scaled to [0, 1] and flattened to 784
  (LeCun et al. 1998). ``split="standard"``: train = the first 50,000 training images, valid = the
  last 10,000 (the last sixth, for a file with fewer rows), test = the 10,000 test images.
  ``split="all"``: the clustering protocol of VaDE (Jiang et al. 2017, "Variational Deep
  Embedding"): train on all 70,000 images and report on them (valid and test are the 10,000 test
  images, which are also in train: clustering is unsupervised).
* ``binarized-mnist``: the fixed binarization of Larochelle & Murray (2011), 50,000 / 10,000 /
  10,000 rows of 784 bits, the standard set of VAE papers. Its test rows are the MNIST test set
  sorted by label, so test ``labels`` are known (from ``mnist.npz`` when present); train and valid
  rows are a permutation with no labels.
* ``digits``: scikit-learn's bundled 1,797 8x8 digits (pixels / 16), split 60/20/20 with the seed.
  Ships with scikit-learn: the real-data default when nothing is on disk.

Files are looked up in the ``path`` option, else along the search path: the folders of
``$PYRO_MOE_DATA`` (separated by ``os.pathsep``; a file entry counts for its own name) when it is
set, otherwise ``../shared/data`` beside the working directory or the project, then
``~/.cache/pyro_moe``. If none has the file, :func:`fetch` downloads it into the cache (users with a
network) unless ``download=False`` or ``$PYRO_MOE_OFFLINE=1``. The test suite sets both variables,
so it reads only the small files under ``tests/fixtures/data``.
``task`` is ``"clustering"`` (digit kept as ``labels`` for evaluation only) or
``"classification"`` (digit as the target ``y``). ``limit`` keeps the first rows of every split.
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import numpy as np

from pyro_moe.data.base import Dataset, Split, as_inputs, as_targets, split_arrays
from pyro_moe.errors import DataError
from pyro_moe.registry import DATASETS
from pyro_moe.validation import check_int

#: where each file can be downloaded from (the Keras copy of MNIST has the same array names)
URLS = {
    "mnist.npz": "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",
    "binarized_mnist.npz": (
        "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
        "binarized_mnist_{split}.amat"
    ),
}
CACHE = Path.home() / ".cache" / "pyro_moe"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


OFFLINE_VARIABLE, SEARCH_VARIABLE = "PYRO_MOE_OFFLINE", "PYRO_MOE_DATA"


def default_search_path() -> list[Path]:
    """``../shared/data`` beside the working directory and beside the project, then the cache."""
    return [root.parent / "shared" / "data" for root in (Path.cwd(), PROJECT_ROOT)] + [CACHE]


def search_path() -> list[Path]:
    """The folders (or files) searched: ``$PYRO_MOE_DATA``'s entries if set, else the default."""
    entries = os.environ.get(SEARCH_VARIABLE, "")
    if entries:
        return [Path(e).expanduser() for e in entries.split(os.pathsep) if e]
    return default_search_path()


def candidate_paths(
    filename: str, path: str | Path | None = None, places: list[Path] | None = None
) -> list[Path]:
    """Where ``filename`` is looked for, in order: ``path``, then ``places`` (the search path)."""
    found = [Path(path).expanduser()] if path else []
    for place in search_path() if places is None else places:
        if place.is_dir() or place.suffix != ".npz":
            found.append(place / filename)
        elif place.name == filename:
            found.append(place)
    if path and found[0].is_dir():
        found[0] = found[0] / filename
    return found


def downloads_allowed(download: bool = True) -> bool:
    """``download``, unless ``$PYRO_MOE_OFFLINE`` is set to something other than 0 / empty."""
    return download and os.environ.get(OFFLINE_VARIABLE, "0") in ("", "0")


def data_file(filename: str, path: str | Path | None = None, download: bool = True) -> Path:
    """The first existing candidate for ``filename``; else download it, or say where we looked."""
    candidates = candidate_paths(filename, path)
    if path is not None and not candidates[0].is_file():
        raise DataError(f"data file {candidates[0]} does not exist")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if not downloads_allowed(download):
        looked = ", ".join(str(c) for c in candidates)
        raise DataError(
            f"{filename} not found (looked in: {looked}); pass path= or set ${SEARCH_VARIABLE}"
        )
    return fetch(filename)


def fetch(filename: str, folder: Path = CACHE) -> Path:
    """Download ``filename`` into ``folder`` (atomically), converting the binarized ``.amat`` text
    files into one ``.npz``; a clear :class:`DataError` when the network is unreachable."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / filename
    try:
        if filename == "binarized_mnist.npz":
            arrays = {s: _download_amat(URLS[filename].format(split=s)) for s in SPLITS}
            _save_npz(target, arrays)
        else:
            tmp = target.with_suffix(".part")
            urllib.request.urlretrieve(URLS[filename], tmp)
            os.replace(tmp, target)
    except OSError as e:
        raise DataError(f"cannot download {filename} from {URLS[filename]}: {e}") from None
    return target


SPLITS = ("train", "valid", "test")


def _download_amat(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=60) as response:
        return np.loadtxt(response, dtype=np.uint8)


def _save_npz(target: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = target.with_name(target.name + ".part.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, target)


def read_npz(file: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays ``names`` of ``file``; a :class:`DataError` naming what is missing or broken."""
    try:
        with np.load(file, allow_pickle=False) as f:
            missing = [n for n in names if n not in f.files]
            if missing:
                raise DataError(f"{file} lacks arrays {missing} (has: {f.files})")
            return {n: f[n] for n in names}
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {file} as .npz: {e}") from None


def _check_task(task: str) -> None:
    if task not in ("clustering", "classification"):
        raise DataError(f"task must be 'clustering' or 'classification', got {task!r}")


def _check_limit(limit: int | None) -> None:
    check_int("limit (rows)", limit, 3, optional=True, error=DataError)


def make_split(x: np.ndarray, digits: np.ndarray | None, task: str, limit: int | None) -> Split:
    """A checked split: pixels as float inputs, the digit as target or as evaluation label."""
    if limit is not None:
        x, digits = x[:limit], None if digits is None else digits[:limit]
    inputs = as_inputs(x.reshape(len(x), -1).astype(np.float32))
    if digits is None:
        return Split(inputs)
    digits = as_targets(digits.astype(np.int64), "classification", len(x), 10, "digits")
    return Split(inputs, digits if task == "classification" else None, digits)


def _image_dataset(name: str, task: str, parts: tuple[Split, Split, Split], doc: str) -> Dataset:
    return Dataset(
        name,
        task,
        *parts,
        num_classes=10 if task == "classification" else None,
        description=doc,
        meta={"image_shape": (28, 28)},
    )


@DATASETS.register("mnist")
def load_mnist(
    seed: int = 0,
    split: str = "standard",
    task: str = "clustering",
    limit: int | None = None,
    path: str | None = None,
    download: bool = True,
) -> Dataset:
    """MNIST, 70,000 28x28 digits in [0, 1]; split 'standard' (50k/10k/10k) or 'all' (VaDE)."""
    _check_task(task)
    _check_limit(limit)
    if split not in ("standard", "all"):
        raise DataError(f"MNIST split must be 'standard' or 'all', got {split!r}")
    a = read_npz(data_file("mnist.npz", path, download), ("x_train", "y_train", "x_test", "y_test"))
    xs, ys = a["x_train"] / np.float32(255), a["y_train"]
    x_test, y_test = a["x_test"] / np.float32(255), a["y_test"]
    test = make_split(x_test, y_test, task, limit)
    if split == "all":
        train = make_split(np.concatenate([xs, x_test]), np.concatenate([ys, y_test]), task, limit)
        parts = (train, test, test)
    else:
        cut = len(xs) - len(xs) // 6  # 50,000 of MNIST's 60,000 training images
        parts = (
            make_split(xs[:cut], ys[:cut], task, limit),
            make_split(xs[cut:], ys[cut:], task, limit),
            test,
        )
    return _image_dataset("mnist", task, parts, load_mnist.__doc__)


def binarized_test_labels(num_rows: int, path: str | None = None) -> np.ndarray | None:
    """The digits of the ``num_rows`` binarized test rows (the MNIST test labels sorted), when an
    ``mnist.npz`` with as many test labels is on disk; ``None`` otherwise."""
    try:
        file = data_file("mnist.npz", None if path is None else Path(path).parent, download=False)
    except DataError:
        return None
    digits = read_npz(file, ("y_test",))["y_test"]
    return np.sort(digits, kind="stable") if len(digits) == num_rows else None


@DATASETS.register("binarized-mnist")
def load_binarized_mnist(
    seed: int = 0, limit: int | None = None, path: str | None = None, download: bool = True
) -> Dataset:
    """Binarized MNIST (Larochelle & Murray 2011), 50k/10k/10k rows of 784 bits."""
    _check_limit(limit)
    file = data_file("binarized_mnist.npz", path, download)
    a = read_npz(file, SPLITS)
    for name, array in a.items():
        if array.ndim != 2 or array.shape[1] != 784 or array.max(initial=0) > 1:
            raise DataError(f"{file}: '{name}' must be rows of 784 bits, got shape {array.shape}")
    test_digits = binarized_test_labels(len(a["test"]), path)
    parts = (
        make_split(a["train"], None, "clustering", limit),
        make_split(a["valid"], None, "clustering", limit),
        make_split(a["test"], test_digits, "clustering", limit),
    )
    return _image_dataset("binarized-mnist", "clustering", parts, load_binarized_mnist.__doc__)


@DATASETS.register("digits")
def load_digits_dataset(seed: int = 0, task: str = "clustering", n: int | None = None) -> Dataset:
    """scikit-learn's 1,797 8x8 digits (pixels / 16), split 60/20/20 with the seed."""
    from sklearn.datasets import load_digits

    _check_task(task)
    _check_limit(n)
    bunch = load_digits()
    x, digits = bunch.data[:n] / 16.0, bunch.target[:n]
    data = split_arrays(
        "digits",
        task,
        x,
        digits if task == "classification" else None,
        digits,
        seed=seed,
        num_classes=10 if task == "classification" else None,
        description=load_digits_dataset.__doc__,
        meta={"image_shape": (8, 8)},
    )
    return data
