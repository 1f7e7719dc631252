"""The supervisor reads time and sleeps only through a :class:`Clock`.

A test hands the supervisor a fake clock and moves time itself; nothing in taskvisor calls
``time.monotonic`` or ``loop.call_later`` directly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Clock", "SystemClock", "TimerHandle"]


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Where the supervisor gets the time and its alarms."""

    def now(self) -> float:
        """Monotonic seconds."""
        ...

    def to_wall(self, t: float) -> float:
        """Seconds since the epoch of the moment ``now()`` read ``t`` (for datetimes)."""
        ...

    def call_at(
        self, loop: asyncio.AbstractEventLoop, when: float, callback: Callable[[], None]
    ) -> TimerHandle:
        """Run ``callback`` on ``loop`` once ``now() >= when``."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic`` and the loop's timers."""

    def __init__(self) -> None:
        self._offset = time.time() - time.monotonic()

    def now(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def to_wall(self, t: float) -> float:
        """Epoch seconds of the monotonic reading ``t``."""
        return t + self._offset

    def call_at(
        self, loop: asyncio.AbstractEventLoop, when: float, callback: Callable[[], None]
    ) -> TimerHandle:
        """Call ``callback`` on ``loop`` once ``now()`` reaches ``when``."""
        return loop.call_later(max(0.0, when - time.monotonic()), callback)
