"""A job (one attempt of a task, as an executor sees it) and how its end is reported.

Shared by the supervisor, the built-in executors and third-party ones (re-exported by
:mod:`taskvisor.abc`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from ._result import ExceptionInfo

if TYPE_CHECKING:
    import asyncio

    from ._spec import Task

__all__ = ["Job", "Outcome", "Result", "Sink"]


class Job:
    """One attempt of a task, as an executor sees it.

    An executor reads ``fn``, ``args``, ``kwargs`` and ``shared`` (passed as the ``shared``
    keyword when it is not None) to run it, ``task`` for what the user asked of it (its
    ``tier``, ``priority``, ``resources``, ``timeout``: a cluster executor maps them to
    its own), ``target`` (the ``runs_on`` name it was sent to), ``name`` and ``attempt``
    to name it, and ``cancelled`` for why the supervisor asked it to stop. It may keep
    what it needs to cancel it in ``handle``, and set ``ran`` (the seconds the job ran in
    its worker, when it can measure them there) before reporting its end: the attempt's
    run time is then that, not the time since its dispatch. Every other slot belongs to
    the supervisor and the built-in pools.
    """

    __slots__ = (
        "abandoned",
        "args",
        "attempt",
        "began",
        "cancelled",
        "ended",
        "fn",
        "handle",
        "kwargs",
        "name",
        "ran",
        "record",
        "returned",
        "shared",
        "shared_in",
        "sink",
        "started",
        "target",
        "task",
        "timer",
        "watch",
        "worker",
    )

    def __init__(
        self,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        shared: dict[str, Any] | None,
        target: str,
        task: Task[Any] | None = None,
    ) -> None:
        self.name = name
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.shared = shared  # passed as the ``shared`` keyword when not None
        self.attempt = 0
        self.started = 0.0
        self.cancelled: str | None = None  # why the supervisor asked it to stop
        self.handle: Any = None  # the asyncio.Task running it, for cancellation
        self.returned = False  # its function returned; the report is on its way
        self.abandoned = False  # the supervisor ended its task while a thread still ran it
        # when a worker really began and ended it (watched thread jobs: the deadline is
        # judged by these, not by when the loop got round to the reports)
        self.began: float | None = None
        self.ended: float | None = None
        # seconds it ran in its worker, when the executor measured it there (a process
        # worker: its start-up and its queue are not the task's run time)
        self.ran: float | None = None
        self.target = target
        self.task = task  # the Task it is an attempt of (None in pool-level tests)
        # report Outcome.STARTED when a worker really starts it (its timeout runs from then)
        self.watch = False
        # where a coroutine job's asyncio Task reports its end (``__call__``: the Task's
        # done-callback is the job itself, no partial per task)
        self.sink: Sink | None = None
        self.worker: str | None = None
        # the supervisor's record of the task (its reports find it without a lookup by
        # name, which may name a newer task by then)
        self.record: Any = None
        # what the task received (its parents' and the supervisor's ``shared``): each
        # attempt's ``shared`` is a copy of it, and an end without one reports it
        self.shared_in: dict[str, Any] | None = None
        # the attempt's deadline (the supervisor's clock), while it is armed
        self.timer: Any = None

    def __call__(self, t: asyncio.Task[Any]) -> None:
        """The done-callback of the asyncio Task running this job: report how it ended."""
        # let go of the ended Task now (its coroutine, Context and weak reference with
        # it), not when the supervisor takes in the report: a burst's ended Tasks died
        # only after the whole burst was started (see _executors.START_SLICE)
        self.handle = None
        sink, worker = self.sink, self.worker
        assert sink is not None
        if t.cancelled():
            sink(self, (Outcome.CANCELLED, None, self.shared, None, worker))
            return
        exc = t.exception()
        if exc is not None:
            sink(self, (Outcome.ERROR, None, self.shared, ExceptionInfo.from_exc(exc), worker))
        else:
            sink(self, (_OK, t.result(), self.shared, None, worker))


class Outcome(enum.Enum):
    """How a job ended, as its executor reports it through the sink."""

    OK = "ok"
    ERROR = "error"
    CANCELLED = "cancelled"
    STARTED = "started"  # not an ending: a watched job has reached a worker


# read on every task's path, as constants (see taskvisor._planner's: on Python 3.11 an
# enum member read off its class costs ~75 ns, a global ~7); the other modules import them
_OK: Final = Outcome.OK
_STARTED: Final = Outcome.STARTED

#: what an executor reports: (outcome, the return value, the job's ``shared`` after it ran,
#: the error for ERROR, the worker's name or None)
Result = tuple[Outcome, Any, dict[str, Any] | None, ExceptionInfo | None, str | None]


class Sink(Protocol):
    """The supervisor's report function an executor is started with; any thread."""

    def __call__(self, job: Job, result: Result) -> None: ...
