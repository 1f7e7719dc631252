"""Test helpers: a mock clock and a fake system sampler.

``MockClock`` replaces the supervisor's real clock (``Supervisor(clock=MockClock())``).
Time stands still until it is moved: ``advance(seconds)`` or ``jump()`` (to the next
deadline), or by itself with ``autojump`` (the default): once the supervisor is idle — it
read no time (so no event reached it) and nothing else was ready to run, for two turns of
asyncio's loop in a row (twenty on uvloop, whose run queue cannot be seen; a burst of
coroutine tasks still being started, a slice per turn, reads the time once a slice, and a
supervisor whose aloop has jobs it has not started yet is busy, so neither is idle) — the
clock jumps to the next deadline and runs what is due. Delays,
timeouts, wait alarms, gate sampling and ``aclose(wait=seconds)`` then take microseconds of
real time and never sleep.

Autojump assumes what trio's ``MockClock(autojump_threshold=0)`` assumes: every running task
in the test is *blocked* on something the test controls (an event, a gate) rather than
computing. A task that computes for a while with a deadline pending may see the deadline
jump past it; use ``autojump=False`` and ``advance()`` for such tests.

``FakeSampler`` stands in for psutil in the live gates (``cpu_limit``/``memory_limit``):
``Supervisor(cpu_limit="90%", sampler=FakeSampler(cpu=95))``, then ``sampler.cpu = 10``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

__all__ = ["FakeSampler", "MockClock"]


class _MockTimer:
    __slots__ = ("callback", "cancelled", "seq", "when")

    def __init__(self, when: float, seq: int, callback: Callable[[], None]) -> None:
        self.when = when
        self.seq = seq
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: _MockTimer) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)


class MockClock:
    """A :class:`~taskvisor.Clock` whose time moves only when told (or when idle).

    ``start`` is the first reading of ``now()``; ``wall_start`` the epoch seconds that
    reading maps to in ``TaskRes`` datetimes; ``autojump`` moves time by itself to the next
    deadline once the supervisor is idle (see the module's docstring; ``False``: only
    ``advance()`` and ``jump()`` move it). Use it on one event loop (the supervisor's).
    """

    def __init__(
        self, start: float = 0.0, *, autojump: bool = True, wall_start: float = 1_767_225_600.0
    ) -> None:
        self._now = float(start)
        self._wall = wall_start - float(start)
        self._timers: list[_MockTimer] = []
        self._seq = itertools.count()
        self.autojump = autojump
        self._reads = 0  # every now() call: the supervisor reads the time on every event
        self._watch: asyncio.Handle | None = None
        self.jumps = 0  # how many times autojump moved the time
        # a supervisor using this clock adds a check of its own here while it runs: True
        # while it has handed an aloop jobs that have not started (another thread's work
        # in progress that reads no time: see Engine._handing_over)
        self._busy_checks: list[Callable[[], bool]] = []

    # ------------------------------------------------------------ the Clock protocol

    def now(self) -> float:
        """The mock time (read on every supervisor event: autojump counts the reads)."""
        self._reads += 1
        return self._now

    def to_wall(self, t: float) -> float:
        """Epoch seconds of the mock time ``t`` (``wall_start`` at ``start``)."""
        return self._wall + t

    def call_at(
        self, loop: asyncio.AbstractEventLoop, when: float, callback: Callable[[], None]
    ) -> _MockTimer:
        """Call ``callback`` once the mock time reaches ``when`` (never by itself: by
        ``advance``, ``jump`` or autojump)."""
        timer = _MockTimer(float(when), next(self._seq), callback)
        heapq.heappush(self._timers, timer)
        self._arm(loop)
        return timer

    # ------------------------------------------------------------ moving time

    @property
    def next_deadline(self) -> float | None:
        """The earliest pending deadline, or None."""
        self._drop_cancelled()
        return self._timers[0].when if self._timers else None

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, running every callback that falls due, in
        deadline order (each sees ``now()`` equal to its own deadline)."""
        if seconds < 0:
            raise ValueError(f"time cannot go backwards: advance({seconds!r})")
        self._run_until(self._now + seconds)

    def jump(self) -> bool:
        """Move time to the next deadline and run what is due; False if there is none."""
        when = self.next_deadline
        if when is None:
            return False
        self._run_until(max(when, self._now))
        return True

    def _run_until(self, target: float) -> None:
        timers = self._timers
        while timers and timers[0].when <= target:
            timer = heapq.heappop(timers)
            if timer.cancelled:
                continue
            self._now = max(self._now, timer.when)
            timer.callback()
        self._now = max(self._now, target)

    def _drop_cancelled(self) -> None:
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)

    # ------------------------------------------------------------ autojump

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.autojump and self._watch is None and not loop.is_closed():
            self._watch = loop.call_soon(self._check, loop, self._reads, 0)

    def _check(self, loop: asyncio.AbstractEventLoop, reads: int, quiet: int) -> None:
        """One loop turn later: the supervisor is idle if nobody read the time meanwhile and
        nothing else is ready to run, for ``IDLE_TURNS`` turns in a row."""
        self._watch = None
        if self.next_deadline is None or loop.is_closed():
            return
        ready = getattr(loop, "_ready", None)  # asyncio's run queue; uvloop hides its own
        if self._reads != reads or ready or any(busy() for busy in self._busy_checks):
            quiet = 0
        else:
            quiet += 1
        needed = IDLE_TURNS if ready is not None else IDLE_TURNS_OPAQUE
        if quiet >= needed:
            self.jumps += 1
            self.jump()
            quiet = 0
        if self.autojump and self._watch is None and self.next_deadline is not None:
            # a real zero delay: each turn polls I/O, so threads' reports get in first
            self._watch = loop.call_later(0, self._check, loop, self._reads, quiet)


#: loop turns with nothing ready and no supervisor event before autojump moves the time
IDLE_TURNS = 2
#: the same on loops whose run queue cannot be seen (uvloop): a coroutine taking up to this
#: many steps in a row without awaiting anything external still finishes before a jump
IDLE_TURNS_OPAQUE = 20


class FakeSampler:
    """A settable stand-in for the psutil sampler of the live gates: it returns
    ``(cpu, memory)``, percentages you set and change between steps; ``calls`` counts
    the readings."""

    def __init__(self, cpu: float = 0.0, memory: float = 0.0) -> None:
        self.cpu = cpu
        self.memory = memory
        self.calls = 0

    def __call__(self) -> tuple[float, float]:
        self.calls += 1
        return self.cpu, self.memory
