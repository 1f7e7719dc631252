"""Live gates: admission held while the machine is above a cpu or memory limit.

``Supervisor(cpu_limit="90%", memory_limit=...)`` samples the machine (``psutil``, or the
``sampler`` given) at most once per ``sample_interval``: when the supervisor takes in
completions or a submit on its loop, and, while admission is held, on one timer of its
own. The planner only knows "the gate is closed" (``Planner.set_gate``); what the reading
was and when to take the next one is kept here. Off by default: without a limit, nothing
here runs.
"""

from __future__ import annotations

import math

import psutil

from ._clock import TimerHandle
from ._config import Sampler
from ._log import logger

__all__ = ["Gates", "psutil_sample"]


def psutil_sample() -> tuple[float, float]:
    """The machine's cpu and memory use, in percent (the default sampler)."""
    return psutil.cpu_percent(interval=None), psutil.virtual_memory().percent


class Gates:
    """The limits, the sampler, and when it last read the machine."""

    __slots__ = ("interval", "last", "limits", "on", "sampled_at", "sampler", "timer")

    def __init__(
        self, limits: tuple[float | None, float | None], sampler: Sampler | None, interval: float
    ) -> None:
        self.limits = limits
        self.on = any(v is not None for v in limits)
        self.sampler: Sampler = psutil_sample if sampler is None else sampler
        self.interval = interval
        self.sampled_at = -math.inf
        self.last = (0.0, 0.0)  # the last reading: cpu %, memory %
        self.timer: TimerHandle | None = None  # the next sample while admission is held

    def prime(self) -> None:
        """At start: psutil's first cpu reading only starts its measurement."""
        if self.on and self.sampler is psutil_sample:
            psutil.cpu_percent(interval=None)

    def read(self, now: float) -> bool | None:
        """Sample unless one was taken in the last ``interval``: True when the machine is
        above a limit, False when not, None when it is not time yet or the sampler failed
        (the gates stay as they were)."""
        if now - self.sampled_at < self.interval:
            return None
        self.sampled_at = now
        try:
            cpu, mem = self.sampler()
        except Exception:
            logger.exception("the system sampler failed; gates stay as they were")
            return None
        self.last = (cpu, mem)
        cpu_limit, mem_limit = self.limits
        return (cpu_limit is not None and cpu > cpu_limit) or (
            mem_limit is not None and mem > mem_limit
        )
