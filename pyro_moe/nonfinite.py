"""Where did the NaN come from? Locate a non-finite loss or gradient in a training step.

When a step's loss or a gradient is NaN / inf, the trainer (:mod:`pyro_moe.train`) reports:

* the parameters whose values or gradients are not finite (:func:`nonfinite_tensors`);
* the Pyro sites whose value or ``log_prob`` is not finite (:func:`nonfinite_sites`): the guide is
  traced, the model replayed against it, and every sample site's ``fn.log_prob(value)`` checked,
  the same terms an ELBO adds up. The trainer re-runs this with the RNG state the failing step
  started from, so the guide draws the same samples that produced the failure.

A distribution built from NaN parameters fails Pyro's argument validation with a ``ValueError``
before any loss exists, and where validation is off (the sampling estimators validate only their
first call) drawing from NaN probabilities fails in ``torch.multinomial`` with a
``RuntimeError``; :func:`is_invalid_parameter_error` recognises both so the trainer can report
them as a non-finite step rather than as a crash.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from pyro import poutine
from pyro.poutine.subsample_messenger import _Subsample


def is_finite(t: Any) -> bool:
    """Whether a tensor (or number) holds only finite values; non-float tensors are finite."""
    if isinstance(t, torch.Tensor):
        return not t.is_floating_point() or bool(torch.isfinite(t).all())
    return bool(torch.isfinite(torch.as_tensor(t)).all())


def all_finite(tensors: Iterable[torch.Tensor | None]) -> bool:
    """Whether every tensor (``None`` entries skipped) holds only finite values. Fast path: one
    sum per tensor and one test of the sums; a NaN or inf entry makes its tensor's sum NaN or
    inf, so finite sums prove every entry finite. A non-finite sum (a bad entry, or finite
    entries whose sum overflows) is settled by the exact per-entry test."""
    floats = [t for t in tensors if t is not None and t.is_floating_point()]
    if not floats:
        return True
    sums = torch.stack([t.sum().to(floats[0].device) for t in floats])
    return bool(torch.isfinite(sums).all()) or all(is_finite(t) for t in floats)


def nonfinite_tensors(named: Iterable[tuple[str, torch.Tensor | None]]) -> list[str]:
    """The names whose tensors hold a NaN or inf (``None`` entries, e.g. absent grads, skipped)."""
    return [name for name, t in named if t is not None and not is_finite(t)]


def is_invalid_parameter_error(error: BaseException) -> bool:
    """Whether ``error`` is a distribution's argument validation failing on invalid values, or a
    categorical draw from NaN / inf probabilities."""
    if isinstance(error, ValueError):
        return "found invalid values" in str(error)
    return isinstance(error, RuntimeError) and "probability tensor contains" in str(error)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def nonfinite_sites(
    model: Callable, guide: Callable, *args: Any, **kwargs: Any
) -> tuple[list[str], str | None]:
    """Sample sites of ``guide`` and of ``model`` (replayed against the guide) whose value or
    log-probability is not finite, as ``["model site 'label' (log_prob)", ...]``; and the error
    message if tracing itself failed (e.g. a distribution built from NaN parameters)."""
    found: list[str] = []
    traces = []
    try:
        with torch.no_grad():
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            traces.append(("guide", guide_trace))
            replayed = poutine.replay(model, trace=guide_trace)
            traces.append(("model", poutine.trace(replayed).get_trace(*args, **kwargs)))
    except Exception as e:  # report what could be traced and why the rest could not
        error = _first_line(e)
    else:
        error = None
    for label, trace in traces:
        found += _check_trace(label, trace)
    return found, error


def _check_trace(label: str, trace: poutine.Trace) -> list[str]:
    found = []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or isinstance(site["fn"], _Subsample):
            continue
        if not is_finite(site["value"]):
            found.append(f"{label} site {name!r} (value)")
            continue
        try:
            log_prob = site["fn"].log_prob(site["value"])
        except Exception as e:
            found.append(f"{label} site {name!r} (log_prob raised {_first_line(e)})")
            continue
        if not is_finite(log_prob):
            found.append(f"{label} site {name!r} (log_prob)")
    return found


def describe(
    what: str,
    sites: list[str] = (),  # type: ignore[assignment]
    parameters: list[str] = (),  # type: ignore[assignment]
    trace_error: str | None = None,
) -> str:
    """One sentence: what was non-finite and where it came from."""
    parts = [what]
    if sites:
        parts.append(f"non-finite at {', '.join(sites)}")
    if parameters:
        parts.append(f"non-finite parameter values: {', '.join(parameters)}")
    if trace_error:
        parts.append(f"tracing the step failed ({trace_error})")
    if len(parts) == 1:
        parts.append("every site and parameter is finite, so the estimator's surrogate made it")
    return "; ".join(parts)
