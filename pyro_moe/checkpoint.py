"""All saving and restoring of training state, and files that are never half-written.

Writes go to a temporary file in the same folder, are flushed and fsync'ed, then renamed over the
target with ``os.replace`` (atomic on POSIX), and the folder is fsync'ed so the rename itself
survives a crash. An OS error (disk full, read-only file system, a path through a file) becomes a
:class:`~pyro_moe.errors.StorageError` naming the file; the old file is left as it was.

Checkpoints hold only tensors and plain containers (dict, list, tuple, str, int, float, bool,
None) and are read with ``torch.load(weights_only=True)``: a file that needs anything else (a
pickled object, a raw pickle) is refused before any of it is unpickled into code, so nothing in a
checkpoint can run. The RNG states (torch, numpy, Python's ``random``; Pyro draws from these
three) and Pyro's param-store constraints are stored in that form by :func:`rng_state` and
:func:`param_store_state`. What is read back is checked against the objects it will be loaded
into (:func:`restore_training_state`): keys, shapes, dtypes and value types, before anything is
changed (a module's extra state, such as an estimator's own optimiser, right after it is loaded),
so a checkpoint from another model or version is a :class:`CheckpointError`.
"""

from __future__ import annotations

import io
import json
import os
import random
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from torch import nn
from torch.distributions import constraints

from pyro_moe.errors import CheckpointError, StorageError

#: the first bytes of a zip archive, which is how ``torch.save`` writes
ZIP_MAGIC = b"PK\x03\x04"
#: the keys of a training checkpoint (``checkpoint.pt``)
TRAINING_KEYS = ("model", "guide", "estimator", "optimizer", "param_store", "train_state", "rng")
#: what Adam keeps per parameter (and ``max_exp_avg_sq`` with ``amsgrad``)
ADAM_STATE = {"step", "exp_avg", "exp_avg_sq"}
#: the keys of the best parameters (``best.pt``)
BEST_KEYS = ("model", "guide")


# --- atomic files -------------------------------------------------------------------------------
def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename, fsync folder)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _replace_with(path, data)
    except OSError as e:
        raise StorageError.from_os_error(e, path) from None
    _fsync_dir(path.parent)


def _replace_with(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_regular_file(path: str | Path, what: str) -> bytes:
    """The bytes of ``path``; a :class:`StorageError` naming ``what`` and the problem when it is
    missing, a folder, a device or FIFO (``/dev/zero``), a symbolic-link loop or unreadable."""
    path = Path(path)
    check_regular_file(path, what)
    try:
        return path.read_bytes()
    except OSError as e:
        raise StorageError.from_os_error(e, path, f"cannot read {what}") from None


def check_regular_file(path: Path, what: str) -> None:
    """Raise a :class:`StorageError` unless ``path`` is an existing regular file (after links)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise StorageError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise StorageError.from_os_error(e, path, f"cannot open {what}") from None
    if stat.S_ISDIR(mode):
        raise StorageError(f"{what} {path} is a folder, not a file")
    if not stat.S_ISREG(mode):
        raise StorageError(f"{what} {path} is not a regular file (a device, FIFO or socket)")


# --- checkpoints --------------------------------------------------------------------------------
def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` ``state`` (tensors and plain containers only) to ``path`` atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    Anything but a zip archive of tensors and plain containers is refused with a
    :class:`CheckpointError` before it is unpickled, so no code in the file can run.
    """
    path = Path(path)
    data = read_regular_file(path, "checkpoint")
    if not data.startswith(ZIP_MAGIC):
        raise CheckpointError(
            f"checkpoint {path} is not a checkpoint written by pyro-moe (not a torch zip "
            "archive); it was not loaded"
        )
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch raises many kinds; all mean "refused")
        raise CheckpointError(f"checkpoint {path} was refused: {_load_problem(e)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a training state")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}")
    return state


def _load_problem(error: Exception) -> str:
    """One line for why ``torch.load(weights_only=True)`` refused a file."""
    text = str(error)
    for line in text.splitlines():
        if "Unsupported global" in line or "Unsupported operand" in line:
            return (
                f"it holds objects other than tensors and plain containers ({line.strip()}); "
                "nothing from it was run"
            )
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return f"unreadable ({type(error).__name__}: {first[:200]})"


# --- RNG state -----------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """The torch, numpy and Python RNG states as tensors and plain values (Pyro uses these)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(python_state, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }


def set_rng_state(state: Any, source: Path | str = "checkpoint") -> None:
    """Restore what :func:`rng_state` returned, after checking every entry."""
    torch_state, numpy_state, python_state = _checked_rng(state, source)
    torch.set_rng_state(torch_state)
    np.random.set_state(numpy_state)
    random.setstate(python_state)


def _checked_rng(state: Any, source: Path | str) -> tuple:
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{source}: the RNG state is malformed ({what})")

    if not isinstance(state, dict) or set(state) != {"torch", "numpy", "python"}:
        raise bad("expected torch, numpy and python entries")
    t = state["torch"]
    expected = torch.get_rng_state()
    if not _tensor_like(t, expected):
        raise bad("torch state")
    n = state["numpy"]
    if not (
        isinstance(n, dict)
        and _words(n.get("keys"), 624)
        and _int_in(n.get("pos"), 0, 624)
        and _int_in(n.get("has_gauss"), 0, 1)
        and _is_float(n.get("cached_gaussian"))
    ):
        raise bad("numpy state")
    numpy_state = ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"])
    numpy_state += (n["cached_gaussian"],)
    p = state["python"]
    if not (
        isinstance(p, dict)
        and p.get("version") == random.getstate()[0]
        and _words(p.get("state"), 625)
        and int(p["state"][-1]) <= 624
        and (p.get("gauss_next") is None or _is_float(p.get("gauss_next")))
    ):
        raise bad("python state")
    python_state = (p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"])
    return t, numpy_state, python_state


def _tensor_like(value: Any, like: torch.Tensor) -> bool:
    return (
        isinstance(value, torch.Tensor) and value.dtype == like.dtype and value.shape == like.shape
    )


def _words(value: Any, length: int) -> bool:
    """A 1-D int64 tensor of ``length`` unsigned 32-bit words."""
    return (
        isinstance(value, torch.Tensor)
        and value.dtype == torch.int64
        and value.shape == (length,)
        and bool(((value >= 0) & (value < 2**32)).all())
    )


def _int_in(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _is_float(value: Any) -> bool:
    return type(value) in (float, int)


# --- Pyro's param store -------------------------------------------------------------------------
#: constraints without parameters, by name; the param store's constraints are saved as these names
NAMED_CONSTRAINTS = {
    name: c
    for name, c in vars(constraints).items()
    if isinstance(c, constraints.Constraint) and not name.startswith("_")
}
#: constraints with bounds: name -> (class, the attribute names of its bounds)
BOUNDED_CONSTRAINTS = {
    "greater_than": (constraints.greater_than, ("lower_bound",)),
    "greater_than_eq": (constraints.greater_than_eq, ("lower_bound",)),
    "less_than": (constraints.less_than, ("upper_bound",)),
    "interval": (constraints.interval, ("lower_bound", "upper_bound")),
    "half_open_interval": (constraints.half_open_interval, ("lower_bound", "upper_bound")),
}


def constraint_spec(constraint: constraints.Constraint) -> dict[str, Any]:
    """A constraint as ``{"name": ..., "bounds": [...]}`` (plain values)."""
    for name, c in NAMED_CONSTRAINTS.items():
        if constraint is c or (name == "real" and type(constraint) is type(c)):
            return {"name": name, "bounds": []}
    for name, (cls, attributes) in BOUNDED_CONSTRAINTS.items():
        if type(constraint) is cls:
            return {"name": name, "bounds": [float(getattr(constraint, a)) for a in attributes]}
    raise CheckpointError(f"cannot save a Pyro parameter with the constraint {constraint!r}")


def constraint_from_spec(spec: Any, source: Path | str) -> constraints.Constraint:
    """The constraint that :func:`constraint_spec` described."""
    name = spec.get("name") if isinstance(spec, dict) else None
    bounds = spec.get("bounds") if isinstance(spec, dict) else None
    if not isinstance(name, str) or not isinstance(bounds, list):
        raise CheckpointError(f"{source}: a param-store constraint is malformed ({spec!r:.80})")
    if not all(_is_float(b) for b in bounds):
        raise CheckpointError(f"{source}: a param-store constraint is malformed ({spec!r:.80})")
    if name in BOUNDED_CONSTRAINTS:
        cls, attributes = BOUNDED_CONSTRAINTS[name]
        if len(bounds) == len(attributes):
            return cls(*bounds)
    elif name in NAMED_CONSTRAINTS and not bounds:
        return NAMED_CONSTRAINTS[name]
    raise CheckpointError(f"{source}: unknown param-store constraint {name!r:.80}")


def param_store_state() -> dict[str, Any]:
    """Pyro param-store entries that are not module parameters (e.g. baseline averages), as
    unconstrained tensors and constraint names."""
    state = pyro.get_param_store().get_state()
    keep = [k for k in state["params"] if "$$$" not in k]
    return {
        "params": {k: state["params"][k].detach() for k in keep},
        "constraints": {k: constraint_spec(state["constraints"][k]) for k in keep},
    }


def _checked_param_store(state: Any, source: Path | str) -> dict[str, Any]:
    if not isinstance(state, dict) or set(state) != {"params", "constraints"}:
        raise CheckpointError(f"{source}: the param-store entry is malformed")
    params, specs = state["params"], state["constraints"]
    if not (isinstance(params, dict) and isinstance(specs, dict) and set(params) == set(specs)):
        raise CheckpointError(f"{source}: the param-store entry is malformed")
    for name, value in params.items():
        if not (isinstance(name, str) and isinstance(value, torch.Tensor)):
            raise CheckpointError(f"{source}: param-store entry {name!r:.80} is not a tensor")
        if not value.is_floating_point():
            raise CheckpointError(f"{source}: param-store entry {name!r:.80} is not real-valued")
    return {
        "params": {k: v.clone().requires_grad_() for k, v in params.items()},
        "constraints": {k: constraint_from_spec(specs[k], source) for k in params},
    }


# --- checking a stored state against the objects it is loaded into -------------------------------
def check_state_dict(state: Any, module: nn.Module, what: str, source: Path | str) -> None:
    """``state`` has exactly ``module.state_dict()``'s keys, shapes and dtypes."""
    expected = module.state_dict()
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{source}: the {what} entry is not a state dict")
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        problem = f"lacks {', '.join(missing[:3])}" if missing else f"has {extra[0]!r:.80}"
        raise CheckpointError(
            f"{source} was written for a different {what}: its {what} state {problem}"
        )
    for key, like in expected.items():
        if not isinstance(like, torch.Tensor):
            continue  # a module's extra state: checked after it is loaded (load_module_state)
        if not _tensor_like(state[key], like):
            raise CheckpointError(
                f"{source} was written for a different {what}: {key} is "
                f"{_describe(state[key])}, expected {tuple(like.shape)} {like.dtype}"
            )


def load_module_state(module: nn.Module, state: Any, what: str, source: Path | str) -> None:
    """``module.load_state_dict(state)`` after :func:`check_state_dict`; extra state (e.g. an
    estimator's own optimiser) that does not load, or loads into an optimiser whose state does
    not fit its parameters, is a :class:`CheckpointError`."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
        reason = " ".join(str(e).split())[:200]
        raise CheckpointError(f"{source}: the {what} state does not load ({reason})") from None
    for sub in module.modules():
        optimizer = getattr(sub, "optimizer", None)
        if isinstance(optimizer, torch.optim.Optimizer):
            check_optimizer_state(optimizer.state_dict(), optimizer, source, _rebuilt(optimizer))


def _rebuilt(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer | None:
    """A new optimiser of the same class, groups and defaults: what a loaded one should match."""
    groups = [{"params": g["params"]} for g in optimizer.param_groups]
    try:
        return type(optimizer)(groups, **optimizer.defaults)
    except (TypeError, ValueError):
        return None


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {value.dtype}"
    return f"a {type(value).__name__}, not a tensor"


def check_optimizer_state(
    state: Any,
    optimizer: torch.optim.Optimizer,
    source: Path | str,
    template: torch.optim.Optimizer | None = None,
) -> None:
    """``state`` fits ``optimizer``: the groups and hyperparameter types of ``template`` (default:
    ``optimizer`` itself, not yet loaded), and per-parameter entries shaped like their
    parameters."""
    fresh = (template or optimizer).state_dict()

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{source}: the optimizer state does not fit this run ({what})")

    if not isinstance(state, dict) or set(state) != {"state", "param_groups"}:
        raise bad("expected state and param_groups")
    groups = state["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(fresh["param_groups"]):
        raise bad("number of parameter groups")
    for group, like in zip(groups, fresh["param_groups"], strict=True):
        if not isinstance(group, dict) or set(group) != set(like):
            raise bad("parameter group entries")
        for key, value in like.items():
            if not _same_kind(group[key], value):
                raise bad(f"parameter group entry {key}")
        if list(group["params"]) != like["params"]:
            raise bad("parameters of a group")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    per_param = state["state"]
    if not isinstance(per_param, dict):
        raise bad("per-parameter state")
    for index, entry in per_param.items():
        if type(index) is not int or not 0 <= index < len(params) or not isinstance(entry, dict):
            raise bad(f"per-parameter entry {index!r:.40}")
        group = next(g for g in groups if index in g["params"]) if entry else {}
        expected = ADAM_STATE | ({"max_exp_avg_sq"} if group.get("amsgrad") else set())
        if entry and set(entry) != expected:
            raise bad(f"entries of parameter {index}")
        for key, value in entry.items():
            if not _fits(value, params[index], key == "step"):
                raise bad(f"{key} of parameter {index}")


def _fits(value: Any, param: torch.Tensor, scalar: bool) -> bool:
    """An optimiser's per-parameter tensor: a float scalar (``step``) or shaped like ``param``."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        return False
    if scalar:
        return value.shape == ()
    return value.shape == param.shape and value.dtype == param.dtype


def _same_kind(value: Any, like: Any) -> bool:
    """``value`` has ``like``'s type (ints may stand for floats), recursively for lists/tuples."""
    if isinstance(like, (list, tuple)):
        return (
            isinstance(value, (list, tuple))
            and len(value) == len(like)
            and all(_same_kind(v, w) for v, w in zip(value, like, strict=True))
        )
    if type(like) is float:
        return type(value) in (float, int)
    if isinstance(like, torch.Tensor):
        return isinstance(value, torch.Tensor) and value.shape == like.shape
    return type(value) is type(like)


def check_plain_dict(state: Any, template: dict[str, Any], what: str, source: Path | str) -> None:
    """``state`` has a subset of ``template``'s keys, each of the template value's type."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: the {what} entry is malformed")
    for key, value in state.items():
        if key not in template or not _same_kind(value, template[key]):
            raise CheckpointError(f"{source}: the {what} entry {key!r:.80} is malformed")


# --- whole training states ---------------------------------------------------------------------
def training_state(
    model: nn.Module,
    guide: nn.Module,
    estimator: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_state: dict[str, Any],
    pretrain: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything an exact resume needs, as tensors and plain containers (``pretrain``: the
    record of the model's pretraining step, plain values, kept so a resume does not repeat it)."""
    return {
        "format": 2,
        "model": model.state_dict(),
        "guide": guide.state_dict(),
        "estimator": estimator.state_dict(),
        "optimizer": optimizer.state_dict(),
        "param_store": param_store_state(),
        "train_state": train_state,
        "rng": rng_state(),
        "pretrain": pretrain,
    }


def restore_training_state(
    path: Path,
    model: nn.Module,
    guide: nn.Module,
    estimator: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_template: dict[str, Any],
) -> dict[str, Any]:
    """Load ``path`` (a :func:`training_state`) into the objects and the global RNGs; returns the
    stored ``train_state`` and ``pretrain`` entries. Every entry is checked before anything is
    changed."""
    state = load_checkpoint(path, required=TRAINING_KEYS)
    for what, module in (("model", model), ("guide", guide), ("estimator", estimator)):
        check_state_dict(state[what], module, what, path)
    check_optimizer_state(state["optimizer"], optimizer, path)
    check_plain_dict(state["train_state"], train_template, "train state", path)
    store = _checked_param_store(state["param_store"], path)
    _checked_rng(state["rng"], path)
    pretrain = state.get("pretrain")
    if pretrain is not None and not isinstance(pretrain, dict):
        raise CheckpointError(f"{path}: the pretrain entry is malformed")
    for what, module in (("model", model), ("guide", guide), ("estimator", estimator)):
        load_module_state(module, state[what], what, path)
    optimizer.load_state_dict(state["optimizer"])
    pyro.get_param_store().set_state(store)
    set_rng_state(state["rng"], path)
    return {"train_state": state["train_state"], "pretrain": pretrain}


def load_best(path: Path, model: nn.Module, guide: nn.Module) -> dict[str, Any]:
    """The model and guide state dicts stored in ``path`` (``best.pt``), checked against them."""
    state = load_checkpoint(path, required=BEST_KEYS)
    check_state_dict(state["model"], model, "model", path)
    check_state_dict(state["guide"], guide, "guide", path)
    return {"model": state["model"], "guide": state["guide"]}
