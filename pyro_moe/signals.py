"""Stop training cleanly on SIGINT / SIGTERM: finish the step, write a checkpoint, then stop.

While :func:`stop_on_signals` is active, SIGINT (Ctrl-C) and SIGTERM (``kill``, a cluster
scheduler's pre-emption) only set a flag. The training loop checks the flag between steps; when it
is set the loop writes a checkpoint and raises :class:`~pyro_moe.errors.TrainingInterrupted`, and
``pyro-moe train --resume`` continues the run exactly. A second SIGINT while the first is being
handled raises ``KeyboardInterrupt`` at once (for a step that hangs).

Handlers can only be installed from the main thread; elsewhere the context manager does nothing
and the signals keep their previous behaviour.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

#: the signals that request a clean stop
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """A flag set by the signal handler: ``signum`` is the first stop signal received (or None)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the checkpoint
        self.signum = signum


@contextmanager
def stop_on_signals(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[StopRequest]:
    """Within the block, ``signals`` set the returned :class:`StopRequest` instead of killing
    the process; the previous handlers are restored on exit."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.signal(s, request) for s in signals}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
