"""The attempt machine: one task's life from its dispatch to its end.

A dispatched task runs as one or more *attempts*, each a :class:`~taskvisor.abc.Job`
handed to an executor. What happens to them is decided here, and only here: when an
attempt counts, when its deadline starts, whether a timeout or a cancel stops it or
abandons it, whether a report ends the task, retries it or is stale. The machine is pure:
no clock, no executor, no loop, no lock. The supervisor feeds it events (under its engine
lock) and carries out what it answers (submits the next job, arms or cancels a timer,
builds the ``TaskRes``); ``tests/test_attempts_machine.py`` drives it with hypothesis
through every order of events an executor can produce.

Events and answers:

- :meth:`Attempts.begin` — a new attempt is handed to an executor. Answers whether its
  deadline starts now (else it starts when a worker reports it began: executors that
  ``reports_start``).
- :meth:`Attempts.began` — a worker reports it began a watched attempt: arm its deadline?
- :meth:`Attempts.timed_out` / :meth:`Attempts.stop` — a deadline passed / someone cancels:
  the job to ask the executor to stop (``job.cancelled`` says why), or None.
- :meth:`Attempts.stopped` — what the executor did: a job no worker took is *withdrawn*
  (not counted as an attempt, unless it timed out: else a timeout while queued would retry
  for ever); one it cannot stop is *abandoned*: the task ends at once, the job keeps its
  worker until it returns.
- :meth:`Attempts.report` — an executor reports an attempt's end: ends the task, retries,
  releases an abandoned attempt's slot, or is stale (an earlier attempt, or the task has
  ended).

The owner sets ``res`` when the task's end is delivered, by this machine's answer or any
other way (a projection that fails at dispatch, closing, an internal error): from then on
every event about the task is stale.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Final

from ._job import _OK, Job, Outcome
from .abc import CancelResult

if TYPE_CHECKING:
    from ._spec import Task

__all__ = ["Act", "Attempts", "TIMEOUT"]

TIMEOUT = "timeout"  # job.cancelled when its deadline passed


class Act(enum.Enum):
    """What the owner does after an event."""

    NOTHING = "nothing"  # the event changes nothing (stale, or the end is still to come)
    RELEASE = "release"  # an abandoned attempt returned: its worker slot is free
    RETRY = "retry"  # start the next attempt
    DONE = "done"  # the task ends DONE with the reported value
    FAILED = "failed"  # ... FAILED with the reported error
    TIMED_OUT = "timed out"  # ... FAILED with TaskTimeout
    CANCELLED = "cancelled"  # ... CANCELLED, ``job.cancelled`` (or "from inside") the reason
    ABANDONED = "abandoned"  # ... now (timed out or cancelled), its worker still busy


#: the answers that end the task
ENDS = frozenset({Act.DONE, Act.FAILED, Act.TIMED_OUT, Act.CANCELLED, Act.ABANDONED})

# read on every task's report, as constants (see taskvisor._planner's: on Python 3.11 an
# enum member read off its class costs ~75 ns, a global ~7); the engine imports them
_NOTHING: Final = Act.NOTHING
_RELEASE: Final = Act.RELEASE
_ACT_DONE: Final = Act.DONE


class Attempts:
    """The attempts of one task (the supervisor's record of a task is one).

    A mixin without slots of its own: the class that mixes it in declares ``spec``,
    ``attempts``, ``job`` and ``res`` (the supervisor's ``Record`` is also the planner's
    record of the task: one object per task, see ``_delivery.Record``).
    """

    # no slots of its own and no instance dict (the subclass has the slots); written as
    # a call so that mypy does not take ``()`` to mean "assigns no attribute at all"
    __slots__ = tuple[str, ...]()

    spec: Task[Any]
    attempts: int  # attempts counted so far (a withdrawn one is not)
    job: Job | None  # the current attempt, from its dispatch until the task ends
    res: Any  # the task's end once delivered (the owner sets it)

    def __init__(self, spec: Task[Any]) -> None:
        self.spec = spec
        self.attempts = 0
        self.job = None
        self.res = None

    def begin(self, job: Job, reports_start: bool) -> bool:
        """``job`` is the next attempt. True: its deadline starts now."""
        self.job = job
        self.attempts += 1
        job.attempt = self.attempts
        if self.spec._opts.timeout is None:
            return False
        if reports_start:
            job.watch = True  # the deadline runs from when a worker really starts it
            return False
        return True

    def began(self, job: Job) -> bool:
        """A worker began the watched ``job`` (at ``job.began``). True: arm its deadline."""
        return self.job is job and self.res is None and job.cancelled is None

    def timed_out(self, job: Job) -> Job | None:
        """``job``'s deadline passed: the job to stop, or None (it ended or is stopping)."""
        if self.job is job and self.res is None and job.cancelled is None:
            job.cancelled = TIMEOUT
            return job
        return None

    def stop(self, reason: str) -> Job | None:
        """Cancel the task's running attempt: the job to stop, or None."""
        job = self.job
        if job is not None and self.res is None and job.cancelled is None:
            job.cancelled = reason
            return job
        return None

    def stopped(self, job: Job, how: CancelResult) -> Act:
        """The executor answered a stop of ``job`` (see :class:`CancelResult`)."""
        if how is CancelResult.WITHDRAWN:
            if job.cancelled != TIMEOUT:
                self.attempts -= 1  # it never ran: not an attempt
            return Act.NOTHING  # its executor reports it CANCELLED
        if how is CancelResult.RUNNING:
            job.abandoned = True
            return Act.ABANDONED
        return Act.NOTHING

    def report(self, job: Job, outcome: Outcome, retryable: bool = True) -> Act:
        """An executor reports the end of ``job`` (``retryable``: may its error be retried;
        a controlled failure or a call that could not be made may not)."""
        if job.abandoned:
            return Act.RELEASE
        if self.job is not job or self.res is not None:
            return Act.NOTHING
        opts = self.spec._opts
        timeout = opts.timeout
        if (
            timeout is not None
            and job.ended is not None
            and job.began is not None
            and job.cancelled in (None, TIMEOUT)
            and job.ended - job.began > timeout
        ):  # it overran its deadline while the loop was too busy to see it: a timeout
            job.cancelled = TIMEOUT
            outcome = Outcome.CANCELLED
        if outcome is _OK:  # it finished: a cancel or timeout that came late loses
            return _ACT_DONE
        if outcome is Outcome.CANCELLED:
            if job.cancelled == TIMEOUT:  # the attempt really stopped: try again?
                return Act.RETRY if self.attempts <= opts.retries else Act.TIMED_OUT
            return Act.CANCELLED
        if retryable and job.cancelled is None and self.attempts <= opts.retries:
            return Act.RETRY
        return Act.FAILED
