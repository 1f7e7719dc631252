"""The process pool's window policy: which worker gets the next job, and how many it holds.

:class:`~taskvisor._procpool.ProcessPool`'s manager thread asks this module where each job
goes and when to take jobs back; it does the I/O, the spawning and the revoking itself.
The code here is pure: no I/O, no threads, no clock (the manager passes ``now`` in). It
reads a worker through :class:`WorkerView` (the manager's ``_Worker`` is one) and writes
only the view's ``mean``, ``fast`` and ``busy_since``, in :func:`answered` and
:func:`steal_due`.

The prefetch window
    A pipe round trip per job would leave a worker idle between short jobs, so the manager
    keeps several jobs in flight per worker (its *window*), sent as one message per burst.
    The window is adaptive (:func:`has_room`): about ``PREFETCH_TIME`` (2 ms) of work by the
    moving average of the worker's recent job durations (``mean``, updated by
    :func:`answered`), at most ``PREFETCH`` (32) jobs and, beyond the first, at most
    ``PREFETCH_BYTES`` (1 MiB) of payload. An empty window always has room: a job of any
    size may go to an idle worker. No job is ever sent behind a ``watch``-ed one (a task
    with a timeout), so a timeout's kill never takes prefetched jobs down with it, and
    none behind a job that ran long (``fast`` is False: one job at a time, see below).

Which worker (:func:`pick`)
    An idle worker that has started up; else the least loaded started worker with room;
    else an idle one still starting. Before queueing behind a worker that is still
    starting (that may take a second) the manager is asked for a new worker (``spawn``:
    it starts one if the pool's size, a failed start and shutdown allow); without one,
    the least loaded starting worker with room. Among equals the first (oldest) wins.

Head-of-line blocking: stealing (:func:`steal_due`, :func:`next_steal`)
    A prefetched job must not wait behind a long one while other workers idle. When a
    worker's current job has run for ``STEAL_AFTER`` (10 ms) with jobs behind it (or the
    worker is still starting up, with jobs waiting), those jobs are due to be stolen: the
    manager revokes them and requeues them at the front, so another worker takes them.
    The worker is then sent one job at a time (``fast`` is False) until one takes less
    than ``STEAL_AFTER`` again (:func:`answered`). ``busy_since`` is when the worker's
    current job (approximately) started: set by the manager when a job goes to an empty
    window and when the worker reports it has started up, and by :func:`answered` at each
    answer. The manager's only select() timeout besides shutdown is :func:`next_steal`.

Speed
    :func:`pick` runs once per job sent, :func:`answered` once per answer, :func:`steal_due`
    and :func:`next_steal` once per manager wake-up: plain loops over the few workers (the
    pool is benchmarked: ``python -m benchmarks --only W2``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Final, Protocol, TypeVar

__all__ = [
    "PREFETCH",
    "PREFETCH_BYTES",
    "PREFETCH_TIME",
    "STEAL_AFTER",
    "WorkerView",
    "answered",
    "has_room",
    "next_steal",
    "pick",
    "steal_due",
    "stealable",
]

PREFETCH: Final = 32  # at most this many jobs in flight per worker ...
PREFETCH_TIME: Final = 0.002  # ... and about this much work by its recent job durations
PREFETCH_BYTES: Final = 1 << 20  # ... and beyond its first job, this many payload bytes
STEAL_AFTER: Final = 0.010  # a job running longer than this: revoke what waits behind it


class _Watched(Protocol):
    @property
    def watch(self) -> bool: ...


class Sent(Protocol):
    """A job in a worker's window (the manager's ``_Slot``)."""

    @property
    def job(self) -> _Watched: ...


class WorkerView(Protocol):
    """What the policy knows of a worker (the manager's ``_Worker``)."""

    @property
    def window(self) -> Sequence[Sent]:
        """The jobs sent to it, not answered, not revoked; oldest first."""

    @property
    def window_bytes(self) -> int:
        """The payload bytes of its window."""

    @property
    def ready(self) -> bool:
        """It has started up (its first frame arrived)."""

    fast: bool  # its last job was short: prefetch to it
    mean: float  # moving average of its jobs' durations, as the parent sees them
    busy_since: float  # when its current job (approximately) started

    def usable(self) -> bool:
        """Alive as far as the manager knows, and taking jobs."""


W = TypeVar("W", bound=WorkerView)


def has_room(w: WorkerView, size: int) -> bool:
    """Whether a job of ``size`` payload bytes may join the worker's window now."""
    window = w.window
    n = len(window)
    if not n:
        return True
    if not w.fast or window[-1].job.watch or w.window_bytes + size > PREFETCH_BYTES:
        return False
    mean = w.mean
    limit = PREFETCH if mean * PREFETCH <= PREFETCH_TIME else 1 + int(PREFETCH_TIME / mean)
    return n < limit


def pick(workers: Iterable[W], size: int, spawn: Callable[[int], W | None]) -> W | None:
    """Where a job of ``size`` payload bytes goes now, if anywhere (see the module docstring).

    ``spawn(live)`` is called, with the number of usable workers, only when a new worker
    is wanted: it returns one, or None if the pool may not (or cannot) start one now.
    """
    ready: W | None = None  # started up, least loaded with room
    booting: W | None = None  # still starting, least loaded with room
    live = 0
    for w in workers:
        if not w.usable():
            continue
        live += 1
        n = len(w.window)
        if w.ready:
            if n == 0:
                return w
            if (ready is None or n < len(ready.window)) and has_room(w, size):
                ready = w
        elif (booting is None or n < len(booting.window)) and has_room(w, size):
            booting = w
    if ready is not None:
        return ready
    if booting is not None and not booting.window:
        return booting
    fresh = spawn(live)
    if fresh is not None:
        return fresh
    return booting


def answered(w: WorkerView, now: float) -> None:
    """The worker answered its oldest job at ``now``: update its window's size and pace."""
    took = now - w.busy_since  # answers read together: the first takes it all
    w.mean += (took - w.mean) / 4
    w.fast = took < STEAL_AFTER
    w.busy_since = now


def stealable(workers: Iterable[W]) -> list[W]:
    """Workers with jobs waiting behind their current one (or behind their start-up)."""
    return [w for w in workers if w.fast and len(w.window) > 1 and w.usable()]


def steal_due(workers: Iterable[W], now: float) -> list[W]:
    """The workers whose waiting jobs are to be revoked now (current job ran STEAL_AFTER).

    Each is switched to one job at a time (``fast`` False) until one is short again.
    """
    after = STEAL_AFTER  # (one pass, usable() last: this runs at every manager wake-up)
    due = [
        w
        for w in workers
        if w.fast and len(w.window) > 1 and w.busy_since + after <= now and w.usable()
    ]
    for w in due:
        w.fast = False
    return due


def next_steal(workers: Iterable[WorkerView], now: float) -> float | None:
    """Seconds from ``now`` until :func:`steal_due` may find one, None if it cannot."""
    due = min((w.busy_since for w in stealable(workers)), default=None)
    if due is None:
        return None
    return max(due + STEAL_AFTER - now, 0.0)
