"""SIGINT / SIGTERM during training: remember the signal, stop at the next step boundary."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress


@contextmanager
def deferred_stop_signals(on_signal: Callable[[int], None]) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM only call ``on_signal(signum)``; the previous handlers
    come back on exit. Outside the main thread (no handlers can be set) nothing changes."""

    def handler(signum, _frame):
        on_signal(signum)

    old = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        with suppress(ValueError):
            old[s] = signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
