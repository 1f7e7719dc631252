"""A hypothesis state machine over the pure attempt machine (``taskvisor._attempts``).

Three tasks, each with its own ``retries`` (0-2), ``timeout`` (none, or 1 s) and executor
(does it report when a worker starts a job? can it stop a running one?). Rules play what
the supervisor and the executors can do, in any order: dispatch, a worker taking a job,
a deadline passing, a user cancel, an executor reporting any outstanding job (the current
attempt, a stopped one, an abandoned one) with any outcome and run time, and the
supervisor ending a task some other way (closing, an internal error). Executors keep
their contract: every job handed to them is reported exactly once, a withdrawn job as
cancelled.

Checked against an independent model after every step and at teardown:

- every dispatched task ends exactly once, and once ended every report is stale, except
  an abandoned attempt's, which releases its slot exactly once;
- a task that has not ended always has a current attempt its executor still owes a
  report (nothing can hang);
- attempts = jobs begun minus withdrawn ones that did not time out; never more than
  ``retries + 1``; a retry happens only after the attempt really ended;
- DONE only from an OK report of the current attempt that kept to its deadline; an
  attempt that overran its deadline ends in a retry or ``TIMED_OUT``, never DONE;
- CANCELLED only after a cancel (or a coroutine cancelled from inside); a failure that may
  not be retried (a controlled failure) is never retried;
- a deadline starts at dispatch, or, for executors that report starts, when a worker
  reports it began the attempt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from taskvisor._attempts import ENDS, TIMEOUT, Act, Attempts
from taskvisor._job import Job, Outcome
from taskvisor._spec import Task
from taskvisor.abc import CancelResult


class _Machine(Attempts):
    """The attempt machine alone (a mixin: its user declares the slots)."""

    __slots__ = ("attempts", "job", "res", "spec")


def noop() -> None:
    pass


@dataclass
class Model:
    """What the test knows about one task and its executor."""

    m: Attempts
    reports_start: bool
    can_stop: bool
    jobs: list[Job] = field(default_factory=list)
    owed: list[Job] = field(default_factory=list)  # jobs whose end the executor owes
    taken: set[int] = field(default_factory=set)  # ids of jobs a worker took
    withdrawn: set[int] = field(default_factory=set)
    deadline: Job | None = None  # the job whose deadline timer is armed
    counted: int = 0
    end: Act | str | None = None  # the first end (an Act, or "external")
    ends: int = 0
    cancelled_by_user: bool = False
    abandoned: set[int] = field(default_factory=set)
    released: set[int] = field(default_factory=set)

    @property
    def current(self) -> Job | None:
        return self.jobs[-1] if self.jobs else None


class AttemptsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tasks: list[Model] = []
        self.clock = 0.0

    @initialize(
        kinds=st.lists(
            st.tuples(
                st.integers(0, 2),  # retries
                st.sampled_from([None, 1.0]),  # timeout
                st.booleans(),  # the executor reports starts
                st.booleans(),  # the executor can stop a running job
            ),
            min_size=3,
            max_size=3,
        )
    )
    def three_tasks(self, kinds: list[tuple[int, float | None, bool, bool]]) -> None:
        for i, (retries, timeout, reports_start, can_stop) in enumerate(kinds):
            spec = Task(noop, name=f"t{i}", retries=retries, timeout=timeout)
            self.tasks.append(Model(_Machine(spec), reports_start, can_stop))

    # ------------------------------------------------------------------ helpers

    def _begin(self, t: Model) -> None:
        spec = t.m.spec
        job = Job(spec.name, spec.fn, (), {}, None, "x", spec)
        arm = t.m.begin(job, t.reports_start)
        assert arm == (spec.timeout is not None and not t.reports_start)
        assert job.watch == (spec.timeout is not None and t.reports_start)
        t.jobs.append(job)
        t.owed.append(job)
        t.counted += 1
        assert t.m.attempts == t.counted == job.attempt
        t.deadline = job if arm else None

    def _ended(self, t: Model, act: Act | str) -> None:
        assert t.end is None, f"{t.m.spec.name} ended twice: {t.end} then {act}"
        t.end = act
        t.ends += 1
        t.deadline = None
        t.m.res = act  # the owner delivers the end

    def _stop(self, t: Model, job: Job) -> None:
        if id(job) not in t.taken:
            how = CancelResult.WITHDRAWN
            t.withdrawn.add(id(job))
            if job.cancelled != TIMEOUT:
                t.counted -= 1
        elif t.can_stop:
            how = CancelResult.STOPPING
        else:
            how = CancelResult.RUNNING
        act = t.m.stopped(job, how)
        if how is CancelResult.RUNNING:
            assert act is Act.ABANDONED and job.abandoned
            t.abandoned.add(id(job))
            self._ended(t, act)
        else:
            assert act is Act.NOTHING

    def _pick(self, data: st.DataObject, jobs: list[Job]) -> Job:
        return jobs[data.draw(st.integers(0, len(jobs) - 1))]

    # ------------------------------------------------------------------ rules

    @rule(data=st.data())
    def dispatch(self, data: st.DataObject) -> None:
        ready = [t for t in self.tasks if not t.jobs]
        if ready:  # (rules with nothing to do return: a rule never disabled draws faster)
            self._begin(data.draw(st.sampled_from(ready)))

    @rule(data=st.data())
    def worker_takes_a_job(self, data: st.DataObject) -> None:
        waiting = [
            t
            for t in self.tasks
            if any(id(j) not in t.taken and id(j) not in t.withdrawn for j in t.owed)
        ]
        if not waiting:
            return
        t = data.draw(st.sampled_from(waiting))
        job = self._pick(data, [j for j in t.owed if id(j) not in t.taken | t.withdrawn])
        t.taken.add(id(job))
        self.clock += 1.0
        job.began = self.clock
        if job.watch:
            arm = t.m.began(job)
            assert arm == (job is t.current and t.end is None and job.cancelled is None)
            if arm:
                t.deadline = job

    @rule(data=st.data())
    def deadline_passes(self, data: st.DataObject) -> None:
        armed = [t for t in self.tasks if t.deadline is not None]
        if not armed:
            return
        t = data.draw(st.sampled_from(armed))
        job = t.deadline
        assert job is not None
        t.deadline = None
        was = job.cancelled
        stop = t.m.timed_out(job)
        if job is t.current and t.end is None and was is None:
            assert stop is job and job.cancelled == TIMEOUT
            self._stop(t, job)
        else:
            assert stop is None

    @rule(data=st.data())
    def user_cancels(self, data: st.DataObject) -> None:
        t = data.draw(st.sampled_from(self.tasks))
        cur = t.current
        was = None if cur is None else cur.cancelled
        job = t.m.stop("cancelled by the user")
        if cur is not None and t.end is None and was is None:
            assert job is cur
            t.cancelled_by_user = True
            self._stop(t, job)
        else:
            assert job is None

    @rule(
        data=st.data(),
        outcome=st.sampled_from([Outcome.OK, Outcome.ERROR, Outcome.CANCELLED]),
        retryable=st.booleans(),
        ran_for=st.sampled_from([None, 0.5, 2.0]),
    )
    def executor_reports(
        self, data: st.DataObject, outcome: Outcome, retryable: bool, ran_for: float | None
    ) -> None:
        owing = [t for t in self.tasks if t.owed]
        if not owing:
            return
        t = data.draw(st.sampled_from(owing))
        job = self._pick(data, t.owed)
        self._report(t, job, outcome, retryable, ran_for)

    def _report(
        self, t: Model, job: Job, outcome: Outcome, retryable: bool, ran_for: float | None
    ) -> None:
        t.owed.remove(job)
        if id(job) in t.withdrawn:
            outcome, ran_for = Outcome.CANCELLED, None  # a withdrawn job never ran
        elif id(job) not in t.taken:
            t.taken.add(id(job))
            self.clock += 1.0
            job.began = self.clock
        if ran_for is not None and job.began is not None:
            job.ended = job.began + ran_for
        timeout = t.m.spec.timeout
        overran = (
            timeout is not None
            and job.ended is not None
            and job.began is not None
            and job.cancelled in (None, TIMEOUT)
            and job.ended - job.began > timeout
        )
        attempts_before = t.m.attempts
        cancelled_before = job.cancelled
        act = t.m.report(job, outcome, retryable)
        if id(job) in t.abandoned:
            assert act is Act.RELEASE and id(job) not in t.released
            t.released.add(id(job))
            return
        if t.end is not None or job is not t.current:
            assert act is Act.NOTHING, (act, t.end)
            return
        assert act in ENDS or act is Act.RETRY, act
        if act is Act.DONE:
            assert outcome is Outcome.OK and not overran
        if overran:
            assert act in (Act.RETRY, Act.TIMED_OUT)
        if act is Act.CANCELLED:
            assert outcome is Outcome.CANCELLED
            assert t.cancelled_by_user or cancelled_before is None  # (or from inside)
        if act is Act.TIMED_OUT:
            assert job.cancelled == TIMEOUT and attempts_before > t.m.spec.retries
        if act is Act.FAILED:
            assert outcome is Outcome.ERROR
        if act is Act.RETRY:
            assert attempts_before <= t.m.spec.retries
            if job.cancelled != TIMEOUT:
                assert outcome is Outcome.ERROR and retryable and cancelled_before is None
            self._begin(t)
        else:
            self._ended(t, act)

    @rule(data=st.data())
    def supervisor_ends_it_otherwise(self, data: st.DataObject) -> None:
        live = [t for t in self.tasks if t.jobs and t.end is None]
        if live:
            self._ended(data.draw(st.sampled_from(live)), "external")

    # ------------------------------------------------------------------ invariants

    @invariant()
    def attempts_add_up(self) -> None:
        for t in self.tasks:
            assert t.m.attempts == t.counted
            assert 0 <= t.m.attempts <= t.m.spec.retries + 1

    @invariant()
    def nothing_can_hang(self) -> None:
        for t in self.tasks:
            if t.jobs and t.end is None:
                assert t.current in t.owed, f"{t.m.spec.name}: no report can end it"
                assert t.m.job is t.current

    def teardown(self) -> None:
        # the executors deliver every report they owe; retries may add jobs (bounded)
        for t in self.tasks:
            for _ in range(2 * (t.m.spec.retries + 1) + len(t.owed)):  # (a bound: no hang)
                if not t.owed:
                    break
                self._report(t, t.owed[0], Outcome.OK, True, None)
            assert not t.owed, f"{t.m.spec.name}: retried without end"
            if t.jobs:
                assert t.ends == 1, f"{t.m.spec.name} ended {t.ends} times"
            assert t.released == t.abandoned


TestAttempts = AttemptsMachine.TestCase
TestAttempts.settings = settings(
    max_examples=250,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
