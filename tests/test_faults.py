"""The deterministic fault suite (issue 3): timeouts, cancellation, stopping, pause, time,
alarms, live gates, retries and failure containment, on main, aloops and threads.

Every scenario asserts the whole ``TaskRes`` of each of its tasks and, where the
supervisor stays open, that a fresh task still runs on the same executor afterwards.
Synchronisation is by events only (:class:`Gate`, :class:`Counter`) and the mock clock;
nothing here sleeps. Process-pool scenarios live with the process pool's tests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import warnings
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

import taskvisor as tv
from taskvisor import State
from taskvisor.testing import FakeSampler, MockClock

from .conftest import end_of_turn

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)

#: a hang guard, never a synchronisation: a gate nobody opens fails its task after this long
HANG_GUARD = 30.0
_GATES: list[Gate] = []


@pytest.fixture(autouse=True)
def release_gates(no_leaks: None) -> Iterator[None]:
    """A test that fails half-way leaves no blocked thread behind (before the leak check)."""
    yield
    while _GATES:
        _GATES.pop().release()


# ------------------------------------------------------------------ helpers


class Counter:
    """A count on the test's loop that any thread may bump; ``reach(n)`` waits for it."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.count = 0
        self._changed = asyncio.Event()

    def bump(self) -> None:
        """From any thread (the bump lands on the test's loop, in order)."""
        with contextlib.suppress(RuntimeError):  # the test is over (released at teardown)
            self._loop.call_soon_threadsafe(self._bump)

    def _bump(self) -> None:
        self.count += 1
        self._changed.set()

    async def reach(self, n: int = 1) -> None:
        while self.count < n:
            self._changed.clear()
            await self._changed.wait()


class Gate:
    """A task body that reports its start and blocks until the test releases it.

    ``block`` blocks its thread (thread tasks, or a coroutine hogging its loop);
    ``wait`` is a coroutine usable on any loop (main or an aloop): it awaits a
    ``concurrent.futures.Future`` of its own, so cancelling one call touches no other.
    """

    def __init__(self) -> None:
        self.started = Counter()
        self.cancelled = Counter()  # coroutine calls that saw CancelledError
        self.returned = Counter()
        self.calls = 0
        self._lock = threading.Lock()
        self._open = threading.Event()
        self._futs: list[concurrent.futures.Future[None]] = []
        _GATES.append(self)

    def release(self) -> None:
        with self._lock:
            self._open.set()
            futs, self._futs = self._futs, []
        for fut in futs:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                fut.set_result(None)  # (unless that call was cancelled meanwhile)

    def block(self, ret: T) -> T:
        with self._lock:
            self.calls += 1
        self.started.bump()
        if not self._open.wait(HANG_GUARD):
            raise RuntimeError("test bug: a gate was never released")
        self.returned.bump()
        return ret

    async def wait(self, ret: T) -> T:
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._lock:
            self.calls += 1
            if self._open.is_set():
                fut.set_result(None)
            else:
                self._futs.append(fut)
        self.started.bump()
        try:
            await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            self.cancelled.bump()
            raise
        self.returned.bump()
        return ret


def echo(x: T) -> T:
    return x


async def aecho(x: T) -> T:
    return x


def expect_done(
    res: tv.TaskRes[Any],
    ret: object,
    *,
    name: str,
    runs_on: str,
    attempts: int = 1,
    wait_time: float | None = 0.0,
    run_time: float | None = 0.0,
) -> None:
    """The whole TaskRes of a task that succeeded (times exact: the clock is a MockClock)."""
    assert res.name == name and res.task.name == name, res
    assert res.state is State.DONE, res
    assert res.ok is True
    assert res.ret == ret
    assert res.excinfo is None and res.error is None
    assert res.runs_on == runs_on
    assert res.attempts == attempts
    assert res.started_at is not None and res.submitted_at <= res.started_at <= res.finished_at
    if wait_time is not None:
        assert res.wait_time == wait_time, res.wait_time
    if run_time is not None:
        assert res.run_time == run_time, res.run_time


def expect_error(
    res: tv.TaskRes[Any],
    state: State,
    error: type[E],
    *,
    name: str,
    runs_on: str,
    attempts: int,
    wait_time: float | None = 0.0,
    run_time: float | None = 0.0,
    dispatched: bool | None = None,
) -> E:
    """The whole TaskRes of a task that did not succeed; returns its exception.

    ``dispatched`` (default: ``attempts > 0``): ``started_at`` is set, the dispatch time.
    """
    assert res.name == name and res.task.name == name, res
    assert res.state is state, res
    assert res.ok is False
    assert res.ret is None
    assert res.runs_on == runs_on
    assert res.attempts == attempts
    assert res.excinfo is not None, res
    assert res.excinfo.type is error and type(res.excinfo.val) is error, res.excinfo
    assert res.error is res.excinfo.val
    if dispatched is None:
        dispatched = attempts > 0
    if dispatched:
        assert res.started_at is not None and res.submitted_at <= res.started_at
    else:
        assert res.started_at is None and res.run_time == 0.0, res
    if attempts == 0:
        assert res.worker is None
    if wait_time is not None:
        assert res.wait_time == wait_time, res.wait_time
    if run_time is not None:
        assert res.run_time == run_time, res.run_time
    return res.excinfo.val


def expect_not_run(
    res: tv.TaskRes[Any],
    state: State,
    error: type[E],
    *,
    name: str,
    runs_on: str,
    reason: str | None = None,
    wait_time: float = 0.0,
) -> E:
    """A task settled before it ran: SKIPPED/CANCELLED, never started."""
    err = expect_error(
        res, state, error, name=name, runs_on=runs_on, attempts=0, wait_time=wait_time
    )
    assert isinstance(err, tv.NotRunError)
    assert err.task == name
    if reason is not None:
        assert err.reason == reason, err.reason
    return err


def warned(rec: pytest.WarningsRecorder) -> list[str]:
    """The TaskvisorWarning messages recorded, in order (and nothing else was warned)."""
    assert all(issubclass(w.category, tv.TaskvisorWarning) for w in rec), [str(w) for w in rec]
    return [str(w.message) for w in rec]


def abandoned_warning(name: str) -> str:
    return (
        f"task {name!r}: its thread could not be interrupted and still runs; "
        "its slot stays busy until it returns"
    )


async def expect_still_runs(sup: tv.Supervisor, runs_on: str, tag: str = "") -> None:
    """After a fault, the same executor still runs a fresh task to DONE."""
    name = f"fresh-{runs_on}{tag}"
    fn: Callable[[str], Any] = echo if runs_on == "thread" else aecho
    res = await sup.submit(fn, name, name=name, runs_on=runs_on)
    target = "aloop:default" if runs_on == "aloop" else runs_on
    expect_done(res, name, name=name, runs_on=target, wait_time=None, run_time=None)


async def call_and_mark(entered: asyncio.Event, call: Awaitable[T]) -> T:
    """Run ``call`` in a task; ``entered`` is set in the same step the call begins, so once
    it is set the call has run up to its first suspension."""
    entered.set()
    return await call


# ------------------------------------------------------------------ timeouts


async def test_timeout_on_main_cancels_the_coroutine() -> None:
    """main: a hung coroutine is cancelled on the loop at its timeout, FAILED TaskTimeout."""
    clock = MockClock(autojump=False)
    gate = Gate()
    async with tv.Supervisor(clock=clock) as sup:
        h = sup.submit(gate.wait, "never", name="hung", runs_on="main", timeout=5)
        await gate.started.reach(1)
        clock.advance(4.9)
        assert not h.done()
        clock.advance(0.1)
        res = await h
        await gate.cancelled.reach(1)  # cancelled inside the coroutine, on its loop
        err = expect_error(
            res, State.FAILED, tv.TaskTimeout, name="hung", runs_on="main", attempts=1, run_time=5.0
        )
        assert (err.task, err.timeout, err.abandoned) == ("hung", 5.0, False)
        assert str(err) == "task 'hung' timed out after 5 s"
        assert res.worker == "main"
        await expect_still_runs(sup, "main")
    gate.release()


async def test_timeout_on_aloop_cancels_the_coroutine_on_its_loop() -> None:
    """aloop: a hung coroutine is cancelled on its own loop at its timeout, FAILED."""
    clock = MockClock(autojump=False)
    gate = Gate()
    async with tv.Supervisor(clock=clock) as sup:
        h = sup.submit(gate.wait, "never", name="hung", runs_on="aloop", timeout=2.5)
        await gate.started.reach(1)
        clock.advance(2.5)
        res = await h
        await gate.cancelled.reach(1)
        err = expect_error(
            res,
            State.FAILED,
            tv.TaskTimeout,
            name="hung",
            runs_on="aloop:default",
            attempts=1,
            run_time=2.5,
        )
        assert (err.task, err.timeout, err.abandoned) == ("hung", 2.5, False)
        assert res.worker == "taskvisor-aloop-default"
        await expect_still_runs(sup, "aloop")
    gate.release()


async def test_autojump_lets_a_main_coroutine_start_before_its_timeout() -> None:
    """MockClock autojump: a main coroutine takes its first step before its timeout fires."""
    gate = Gate()
    async with tv.Supervisor(clock=MockClock()) as sup:
        res = await sup.submit(gate.wait, "never", name="hung", runs_on="main", timeout=5)
        err = expect_error(
            res, State.FAILED, tv.TaskTimeout, name="hung", runs_on="main", attempts=1, run_time=5.0
        )
        assert err.abandoned is False
        assert gate.calls == 1, "the timeout fired before the coroutine ever ran"
        await gate.cancelled.reach(1)
        await expect_still_runs(sup, "main")
    gate.release()


async def test_timeout_on_thread_abandons_it_and_keeps_its_slot() -> None:
    """thread: abandoned at its timeout (warning), slot busy until it returns, no retry."""
    clock = MockClock()
    gate = Gate()
    async with tv.Supervisor(pool_size=1, clock=clock) as sup:
        h = sup.submit(gate.block, "late", name="stuck", runs_on="thread", timeout=2, retries=2)
        nxt = sup.submit(echo, "next", name="next", runs_on="thread")
        with pytest.warns(tv.TaskvisorWarning) as rec:
            res = await h
        assert warned(rec) == [abandoned_warning("stuck")]
        err = expect_error(
            res, State.FAILED, tv.TaskTimeout, name="stuck", runs_on="thread", attempts=1,
            run_time=2.0,
        )  # fmt: skip
        assert (err.task, err.timeout, err.abandoned) == ("stuck", 2.0, True)
        assert "its thread was abandoned and still runs" in str(err)
        assert res.worker is None
        # the thread still runs: its slot stays busy, the next task waits for it
        assert sup.task_state("next") is State.QUEUED and not nxt.done()
        assert sup.statistics().busy_slots == 1
        clock.advance(3)
        assert sup.task_state("next") is State.QUEUED
        gate.release()
        expect_done(await nxt, "next", name="next", runs_on="thread", wait_time=5.0)
        assert (await h) is res and h.result() is res  # its late "late" was dropped
        assert gate.calls == 1  # a thread timeout is never retried
        await expect_still_runs(sup, "thread")


async def test_thread_timeout_keeps_declared_resources_until_it_returns() -> None:
    """thread: an abandoned task's declared resources stay in use until the thread returns."""
    clock = MockClock()
    gate = Gate()
    async with tv.Supervisor(resources={"gpu": 1}, clock=clock) as sup:
        h = sup.submit(
            gate.block, "late", name="on-gpu", runs_on="thread", timeout=4, resources={"gpu": 1}
        )
        nxt = sup.submit(echo, "next", name="next-gpu", runs_on="thread", resources={"gpu": 1})
        with pytest.warns(tv.TaskvisorWarning) as rec:
            res = await h
        assert warned(rec) == [abandoned_warning("on-gpu")]
        err = expect_error(
            res, State.FAILED, tv.TaskTimeout, name="on-gpu", runs_on="thread", attempts=1,
            run_time=4.0,
        )  # fmt: skip
        assert (err.timeout, err.abandoned) == (4.0, True)
        # (a NORMAL task would queue behind "next-gpu": admission is FIFO within a tier)
        free = await sup.submit(echo, "free", name="no-gpu", runs_on="thread", tier=tv.HIGH)
        expect_done(free, "free", name="no-gpu", runs_on="thread")  # only the gpu is taken
        assert sup.task_state("next-gpu") is State.QUEUED  # the gpu is still in use
        gate.release()
        expect_done(await nxt, "next", name="next-gpu", runs_on="thread", wait_time=4.0)
        await expect_still_runs(sup, "thread")


async def test_thread_timeout_starts_when_a_pool_thread_takes_the_task() -> None:
    """thread: time spent queued in the pool (threads=1) does not count against timeout."""
    clock = MockClock(autojump=False)
    first, second = Gate(), Gate()
    async with tv.Supervisor(threads=1, clock=clock) as sup:
        a = sup.submit(first.block, "a", name="first", runs_on="thread")
        b = sup.submit(second.block, "b", name="second", runs_on="thread", timeout=5)
        await first.started.reach(1)
        clock.advance(100)  # "second" waits for the only thread: no timeout is running yet
        assert not b.done() and second.calls == 0
        first.release()
        expect_done(await a, "a", name="first", runs_on="thread", run_time=100.0)
        await second.started.reach(1)  # (its STARTED report is drained before this bump)
        clock.advance(4.5)
        assert not b.done()
        with pytest.warns(tv.TaskvisorWarning) as rec:
            clock.advance(0.5)
        assert warned(rec) == [abandoned_warning("second")]
        res = b.result()
        assert clock.now() == 105.0
        second.release()
        await second.returned.reach(1)
        await expect_still_runs(sup, "thread")
    # started_at/wait_time/run_time count from dispatch (docs/failures.rst), not from when
    # the thread took the job: run_time 105 s for a task that timed out after 5 s of running
    err = expect_error(
        res, State.FAILED, tv.TaskTimeout, name="second", runs_on="thread", attempts=1,
        wait_time=0.0, run_time=105.0,
    )  # fmt: skip
    assert (err.timeout, err.abandoned) == (5.0, True)


async def test_coroutine_timeout_is_retried_with_the_full_timeout_each_attempt() -> None:
    """aloop: timeout=3, retries=2; two attempts time out, the third succeeds: DONE."""
    clock = MockClock(autojump=False)
    started = Counter()
    calls: list[int] = []

    async def third_time_lucky() -> str:
        calls.append(1)
        n = len(calls)
        started.bump()
        if n < 3:
            await asyncio.wrap_future(concurrent.futures.Future())  # until cancelled
        return f"attempt {n}"

    async with tv.Supervisor(clock=clock) as sup:
        h = sup.submit(third_time_lucky, name="lucky", runs_on="aloop", timeout=3, retries=2)
        await started.reach(1)
        clock.advance(2.9)
        assert not h.done()
        clock.advance(0.1)  # attempt 1 times out at t=3; attempt 2 starts with a full 3 s
        await started.reach(2)
        clock.advance(2.9)
        assert not h.done() and len(calls) == 2
        clock.advance(0.1)  # attempt 2 times out at t=6
        res = await h
        expect_done(
            res, "attempt 3", name="lucky", runs_on="aloop:default", attempts=3, run_time=6.0
        )
        await expect_still_runs(sup, "aloop")


async def test_timeout_retries_exhausted_on_main() -> None:
    """main: timeout=2, retries=1, always hangs: FAILED TaskTimeout after 2 attempts."""
    clock = MockClock(autojump=False)
    gate = Gate()
    async with tv.Supervisor(clock=clock) as sup:
        h = sup.submit(gate.wait, "x", name="hangs", runs_on="main", timeout=2, retries=1)
        await gate.started.reach(1)
        clock.advance(2)  # attempt 1 times out; attempt 2 starts with a full 2 s
        await gate.started.reach(2)
        clock.advance(1.9)
        assert not h.done()
        clock.advance(0.1)
        res = await h
        err = expect_error(
            res, State.FAILED, tv.TaskTimeout, name="hangs", runs_on="main", attempts=2,
            run_time=4.0,
        )  # fmt: skip
        assert (err.task, err.timeout, err.abandoned) == ("hangs", 2.0, False)
        assert gate.calls == 2
        await gate.cancelled.reach(2)
        await expect_still_runs(sup, "main")
    gate.release()


async def test_thread_finishing_before_its_timeout_is_done() -> None:
    """thread: released after 9 s of a 10 s timeout, it is DONE; the timer is disarmed."""
    clock = MockClock(autojump=False)
    gate = Gate()
    async with tv.Supervisor(clock=clock) as sup:
        h = sup.submit(gate.block, "in time", name="quick", runs_on="thread", timeout=10)
        await gate.started.reach(1)
        clock.advance(9)
        gate.release()
        res = await h
        expect_done(res, "in time", name="quick", runs_on="thread", run_time=9.0)
        assert res.worker is not None and res.worker.startswith("taskvisor-thread")
        clock.advance(50)  # the disarmed timeout changes nothing
        assert h.result() is res
        await expect_still_runs(sup, "thread")


# ------------------------------------------------------------------ cancellation


async def test_cancel_queued_task_skips_its_dependents_transitively() -> None:
    """queued → CANCELLED at once; child and grandchild SKIPPED naming their parents."""
    clock = MockClock()
    gate = Gate()
    async with tv.Supervisor(pool_size=1, clock=clock) as sup:
        busy = sup.submit(gate.wait, "busy", name="busy", runs_on="main")
        queued = sup.submit(echo, "q", name="queued", runs_on="thread", provides="q")
        child = sup.submit(echo, "c", name="child", requires="q", provides="c")
        grandchild = sup.submit(echo, "g", name="grandchild", requires="c")
        await gate.started.reach(1)
        assert queued.state is State.QUEUED
        assert (child.state, grandchild.state) == (State.WAITING, State.WAITING)
        queued.cancel()
        assert queued.done() and child.done() and grandchild.done()  # settled at once
        expect_not_run(
            queued.result(), State.CANCELLED, tv.TaskCancelled, name="queued",
            runs_on="thread", reason="cancelled",
        )  # fmt: skip
        err = expect_not_run(
            child.result(), State.SKIPPED, tv.DependencyError, name="child", runs_on="thread"
        )
        assert (err.failed, err.missing, err.root) == (("queued",), (), None)
        err = expect_not_run(
            grandchild.result(), State.SKIPPED, tv.DependencyError, name="grandchild",
            runs_on="thread",
        )  # fmt: skip
        assert (err.failed, err.root) == (("child",), "queued")
        gate.release()
        expect_done(await busy, "busy", name="busy", runs_on="main")
        await expect_still_runs(sup, "thread")
    assert gate.calls == 1


async def test_cancel_waiting_delayed_and_locked_tasks_at_once() -> None:
    """WAITING, DELAYED and LOCKED tasks are CANCELLED at once; the lock goes on to others."""
    clock = MockClock(autojump=False)
    gate = Gate()
    async with tv.Supervisor(clock=clock) as sup:
        holder = sup.submit(gate.wait, "held", name="holder", runs_on="main", claims="db")
        await gate.started.reach(1)
        waiting = sup.submit(echo, "w", name="waiting", requires="later")
        delayed = sup.submit(echo, "d", name="delayed", delay=30)
        locked = sup.submit(echo, "l", name="locked", claims="db")
        states = (waiting.state, delayed.state, locked.state)
        assert states == (State.WAITING, State.DELAYED, State.LOCKED)
        clock.advance(2)
        for h in (waiting, delayed, locked):
            sup.cancel(h.name)
            assert h.done()
            expect_not_run(
                h.result(), State.CANCELLED, tv.TaskCancelled, name=h.name, runs_on="thread",
                reason="cancelled", wait_time=2.0,
            )  # fmt: skip
        gate.release()
        expect_done(await holder, "held", name="holder", runs_on="main", run_time=2.0)
        sup.provide("later")
        clock.advance(30)  # the cancelled delay falls due: nothing happens
        after = await sup.submit(echo, "next", name="next-claimant", claims="db")
        expect_done(after, "next", name="next-claimant", runs_on="thread")
        await expect_still_runs(sup, "thread")


async def test_cancel_running_coroutine_on_main() -> None:
    """main: a running coroutine is cancelled on the loop; its dependent SKIPPED."""
    clock = MockClock()
    gate = Gate()
    async with tv.Supervisor(clock=clock) as sup:
        h = sup.submit(gate.wait, "r", name="running", runs_on="main", provides="out")
        child = sup.submit(echo, "c", name="child", requires="out", runs_on="main")
        await gate.started.reach(1)
        clock.advance(1.5)
        sup.cancel("running")
        res = await h
        await gate.cancelled.reach(1)
        err = expect_error(
            res, State.CANCELLED, tv.TaskCancelled, name="running", runs_on="main", attempts=1,
            run_time=1.5,
        )  # fmt: skip
        assert (err.task, err.reason) == ("running", "cancelled")
        dep = expect_not_run(
            await child, State.SKIPPED, tv.DependencyError, name="child", runs_on="main",
            wait_time=1.5,
        )  # fmt: skip
        assert dep.failed == ("running",)
        await expect_still_runs(sup, "main")
    gate.release()


async def test_cancel_running_coroutine_on_aloop() -> None:
    """aloop: handle.cancel() cancels a running coroutine on its own loop: CANCELLED."""
    clock = MockClock()
    gate = Gate()
    async with tv.Supervisor(clock=clock) as sup:
        h = sup.submit(gate.wait, "r", name="running", runs_on="aloop", provides="out")
        child = sup.submit(echo, "c", name="child", requires="out")
        await gate.started.reach(1)
        h.cancel()
        res = await h
        await gate.cancelled.reach(1)
        err = expect_error(
            res, State.CANCELLED, tv.TaskCancelled, name="running", runs_on="aloop:default",
            attempts=1,
        )  # fmt: skip
        assert err.reason == "cancelled"
        assert res.worker == "taskvisor-aloop-default"
        dep = expect_not_run(
            await child, State.SKIPPED, tv.DependencyError, name="child", runs_on="thread"
        )
        assert dep.failed == ("running",)
        await expect_still_runs(sup, "aloop")
    gate.release()


async def test_cancel_running_thread_abandons_it_and_keeps_its_slot() -> None:
    """thread: a running thread is abandoned: CANCELLED at once, warning, slot kept."""
    clock = MockClock()
    gate = Gate()
    async with tv.Supervisor(pool_size=1, clock=clock) as sup:
        h = sup.submit(gate.block, "late", name="blocked", runs_on="thread", provides="b")
        child = sup.submit(echo, "c", name="child", requires="b")
        await gate.started.reach(1)
        nxt = sup.submit(echo, "next", name="next", runs_on="thread")
        assert sup.task_state("next") is State.QUEUED
        clock.advance(3)
        with pytest.warns(tv.TaskvisorWarning) as rec:
            sup.cancel(h)
        assert warned(rec) == [abandoned_warning("blocked")]
        assert h.done() and child.done()
        res = h.result()
        err = expect_error(
            res, State.CANCELLED, tv.TaskCancelled, name="blocked", runs_on="thread",
            attempts=1, run_time=3.0,
        )  # fmt: skip
        assert err.reason == "cancelled; its thread was abandoned and still runs"
        dep = expect_not_run(
            child.result(), State.SKIPPED, tv.DependencyError, name="child", runs_on="thread",
            wait_time=3.0,
        )  # fmt: skip
        assert dep.failed == ("blocked",)
        assert sup.task_state("next") is State.QUEUED  # the slot is still busy
        assert sup.statistics().busy_slots == 1
        gate.release()
        expect_done(await nxt, "next", name="next", runs_on="thread", wait_time=3.0)
        assert h.result() is res  # its late result was dropped
        await expect_still_runs(sup, "thread")


async def test_cancel_thread_job_no_thread_took_yet_withdraws_it() -> None:
    """thread: a job still waiting for a pool thread is withdrawn: CANCELLED, never runs."""
    clock = MockClock()
    first, second = Gate(), Gate()
    async with tv.Supervisor(threads=1, clock=clock) as sup:
        a = sup.submit(first.block, "a", name="first", runs_on="thread")
        b = sup.submit(second.block, "b", name="second", runs_on="thread")
        await first.started.reach(1)
        assert b.state is State.RUNNING  # dispatched to the pool, no thread free
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sup.cancel("second")
            res = await b
        assert [str(w.message) for w in caught] == []  # withdrawn, not abandoned
        first.release()
        expect_done(await a, "a", name="first", runs_on="thread")
        await expect_still_runs(sup, "thread")
    assert second.calls == 0  # it never ran
    # docs/failures.rst: a job no thread took is withdrawn and "never ran": attempts 0
    # (but it was dispatched to the pool, so started_at is set)
    err = expect_error(
        res, State.CANCELLED, tv.TaskCancelled, name="second", runs_on="thread", attempts=0,
        dispatched=True,
    )  # fmt: skip
    assert err.reason == "cancelled"


async def test_cancel_after_the_task_finished_keeps_its_result() -> None:
    """A cancel arriving after the task ended changes nothing: DONE and FAILED are kept."""

    def broken() -> None:
        raise LookupError("gone")

    async with tv.Supervisor(clock=MockClock()) as sup:
        ok = sup.submit(echo, 7, name="ok", runs_on="thread")
        bad = sup.submit(broken, name="bad", runs_on="thread")
        done_res, bad_res = await ok, await bad
        sup.cancel("ok")
        bad.cancel()
        assert ok.result() is done_res and bad.result() is bad_res
        expect_done(done_res, 7, name="ok", runs_on="thread")
        err = expect_error(
            bad_res, State.FAILED, LookupError, name="bad", runs_on="thread", attempts=1
        )
        assert str(err) == "gone"
        assert sup.task_state("ok") is State.DONE and sup.task_state("bad") is State.FAILED
        await expect_still_runs(sup, "thread")


async def test_cancel_racing_a_coroutine_that_just_returned_keeps_its_result() -> None:
    """main: cancelled after it returned but before its end was reported: it stays DONE."""
    finished = asyncio.Event()

    async def quick() -> str:
        finished.set()  # wakes the test before the task's done-callback reports the end
        return "made it"

    async with tv.Supervisor(clock=MockClock()) as sup:
        h = sup.submit(quick, name="quick", runs_on="main", provides="q")
        child = sup.submit(aecho, "child", name="child", runs_on="main", requires="q")
        await finished.wait()
        assert sup.task_state("quick") is State.RUNNING  # its end is not reported yet
        sup.cancel("quick")
        expect_done(await h, "made it", name="quick", runs_on="main")
        expect_done(await child, "child", name="child", runs_on="main")
        await expect_still_runs(sup, "main")


async def test_abandoned_thread_that_fails_later_changes_nothing() -> None:
    """thread: a cancelled (abandoned) thread that later raises leaves its result as is."""

    gate = Gate()

    def fails_when_released() -> None:
        gate.block(None)
        raise RuntimeError("late failure")

    async with tv.Supervisor(pool_size=1, clock=MockClock()) as sup:
        h = sup.submit(fails_when_released, name="doomed", runs_on="thread", retries=3)
        await gate.started.reach(1)
        with pytest.warns(tv.TaskvisorWarning) as rec:
            sup.cancel("doomed")
        assert warned(rec) == [abandoned_warning("doomed")]
        res = h.result()
        gate.release()
        await gate.returned.reach(1)
        # the slot comes back when the thread returns: the next task runs
        await expect_still_runs(sup, "thread")
        assert h.result() is res and gate.calls == 1  # not retried, not changed
        expect_error(
            res, State.CANCELLED, tv.TaskCancelled, name="doomed", runs_on="thread", attempts=1
        )


async def test_cancelled_thread_keeps_its_locks_until_it_returns() -> None:
    """thread: an abandoned (cancelled) claimant holds its lock until the thread returns."""
    gate = Gate()
    async with tv.Supervisor(pool_size=1, clock=MockClock()) as sup:
        h = sup.submit(gate.block, "late", name="writer", runs_on="thread", claims="db")
        await gate.started.reach(1)
        reader = sup.submit(echo, "r", name="reader", uses="db", tier=tv.CRITICAL)
        assert reader.state is State.LOCKED
        with pytest.warns(tv.TaskvisorWarning) as rec:
            sup.cancel("writer")
        assert warned(rec) == [abandoned_warning("writer")]
        err = expect_error(
            h.result(), State.CANCELLED, tv.TaskCancelled, name="writer", runs_on="thread",
            attempts=1,
        )  # fmt: skip
        assert err.reason == "cancelled; its thread was abandoned and still runs"
        assert reader.state is State.LOCKED  # the thread may still write to "db"
        gate.release()
        expect_done(await reader, "r", name="reader", runs_on="thread")
        assert h.result().error is err  # its late result was dropped
        await expect_still_runs(sup, "thread")


async def test_thread_timed_out_holding_a_lock_leaves_it_held_by_a_failed_task() -> None:
    """thread: a timed-out claimant FAILED: its lock stays held, waiters end LockError."""
    gate = Gate()
    async with tv.Supervisor(pool_size=1, clock=MockClock()) as sup:
        h = sup.submit(gate.block, "late", name="writer", runs_on="thread", claims="db", timeout=3)
        waiter = sup.submit(echo, "w", name="waiter", claims="db", tier=tv.CRITICAL)
        assert waiter.state is State.LOCKED
        with pytest.warns(tv.TaskvisorWarning) as rec:
            res = await h
        assert warned(rec) == [
            abandoned_warning("writer"),
            "task 'writer' failed: 1 task(s) waiting for a lock it held skipped; "
            "lock(s) 'db' stay held",
        ]
        err = expect_error(
            res, State.FAILED, tv.TaskTimeout, name="writer", runs_on="thread", attempts=1,
            run_time=3.0,
        )  # fmt: skip
        assert (err.timeout, err.abandoned) == (3.0, True)
        lock = expect_not_run(
            waiter.result(), State.SKIPPED, tv.LockError, name="waiter", runs_on="thread",
            wait_time=3.0,
        )  # fmt: skip
        assert (lock.resource, lock.holder) == ("db", "writer")
        gate.release()
        await expect_still_runs(sup, "thread")  # (pool_size=1: the thread has returned)
        late = await sup.submit(echo, "l", name="late", uses="db")
        lock = expect_not_run(late, State.SKIPPED, tv.LockError, name="late", runs_on="thread")
        assert lock.holder == "writer"


# ------------------------------------------------------------------ fail_fast


async def test_fail_fast_cancels_everything_on_every_executor_and_keeps_finished() -> None:
    """fail_fast: the first failure cancels queued and running work; DONE results stay."""
    clock = MockClock()
    on_main_g, on_aloop_g, on_thread_g, bad_g = Gate(), Gate(), Gate(), Gate()

    async def breaks() -> None:
        await bad_g.wait(None)
        raise ValueError("first failure")

    async with tv.Supervisor(fail_fast=True, pool_size=4, clock=clock) as sup:
        early = await sup.submit(echo, "early", name="early", runs_on="thread")
        on_main = sup.submit(on_main_g.wait, "m", name="on-main", runs_on="main")
        on_aloop = sup.submit(on_aloop_g.wait, "a", name="on-aloop", runs_on="aloop")
        on_thread = sup.submit(on_thread_g.block, "t", name="on-thread", runs_on="thread")
        bad = sup.submit(breaks, name="bad", runs_on="main", provides="bad-out")
        queued = sup.submit(echo, "q", name="queued", runs_on="thread")
        child = sup.submit(echo, "c", name="child", requires="bad-out")
        waiting = sup.submit(echo, "w", name="waiting", requires="never")
        for g in (on_main_g, on_aloop_g, on_thread_g, bad_g):
            await g.started.reach(1)
        assert queued.state is State.QUEUED
        clock.advance(1)
        bad_g.release()
        with pytest.warns(tv.TaskvisorWarning) as rec:
            res = await bad
        assert warned(rec) == [
            "task 'bad' failed: 1 dependent task(s) skipped",
            abandoned_warning("on-thread"),
        ]
        err = expect_error(
            res, State.FAILED, ValueError, name="bad", runs_on="main", attempts=1, run_time=1.0
        )
        assert str(err) == "first failure"
        dep = expect_not_run(
            await child, State.SKIPPED, tv.DependencyError, name="child", runs_on="thread",
            wait_time=1.0,
        )  # fmt: skip
        assert dep.failed == ("bad",)
        reason = "fail_fast: 'bad' failed"
        for h, target in ((on_main, "main"), (on_aloop, "aloop:default")):
            cerr = expect_error(
                await h, State.CANCELLED, tv.TaskCancelled, name=h.name, runs_on=target,
                attempts=1, run_time=1.0,
            )  # fmt: skip
            assert cerr.reason == reason
        cerr = expect_error(
            await on_thread, State.CANCELLED, tv.TaskCancelled, name="on-thread",
            runs_on="thread", attempts=1, run_time=1.0,
        )  # fmt: skip
        assert cerr.reason == f"{reason}; its thread was abandoned and still runs"
        for h in (queued, waiting):
            expect_not_run(
                await h, State.CANCELLED, tv.TaskCancelled, name=h.name, runs_on="thread",
                reason=reason, wait_time=1.0,
            )  # fmt: skip
        assert early.ok and sup.report()["early"] is early  # finished before: kept
        expect_done(early, "early", name="early", runs_on="thread")
        await on_main_g.cancelled.reach(1)
        await on_aloop_g.cancelled.reach(1)
        on_thread_g.release()
        await on_thread_g.returned.reach(1)
        for target in ("main", "aloop", "thread"):  # only the first failure cancels
            await expect_still_runs(sup, target)
    for g in (on_main_g, on_aloop_g):
        g.release()


# ------------------------------------------------------------------ closing


async def test_aclose_wait_true_waits_for_running_and_queued_work() -> None:
    """aclose(wait=True) waits for every task; the report lists what was pending."""
    clock = MockClock()
    gate = Gate()
    sup = tv.Supervisor(pool_size=1, clock=clock)
    async with sup:
        before = await sup.submit(echo, "before", name="before", runs_on="thread")
        running = sup.submit(gate.wait, "r", name="running", runs_on="main")
        queued = sup.submit(echo, "q", name="queued", runs_on="thread")
        waiting = sup.submit(echo, "w", name="waiting", requires="never")
        await gate.started.reach(1)
        entered = asyncio.Event()
        closing = asyncio.create_task(call_and_mark(entered, sup.aclose(wait=True)))
        await entered.wait()
        assert sup.state is tv.SupervisorState.CLOSING and not closing.done()
        assert (running.state, queued.state) == (State.RUNNING, State.QUEUED)
        with pytest.raises(tv.ClosedError, match="closing"):
            sup.submit(echo, 1)
        gate.release()
        report = await closing
    assert sup.statistics().state is tv.SupervisorState.CLOSED
    assert [r.name for r in report] == ["running", "queued", "waiting"]
    assert report["running"] is running.result() and report.pending == ()
    expect_done(before, "before", name="before", runs_on="thread")
    expect_done(running.result(), "r", name="running", runs_on="main")
    expect_done(queued.result(), "q", name="queued", runs_on="thread")
    err = expect_not_run(
        waiting.result(), State.SKIPPED, tv.DependencyError, name="waiting", runs_on="thread"
    )
    assert (err.missing, err.failed) == (("never",), ())


async def test_aclose_wait_seconds_waits_that_long_then_cancels_the_rest() -> None:
    """aclose(wait=10): what ends within 10 s is kept, the rest CANCELLED at t=10."""
    clock = MockClock(autojump=False)
    gate = Gate()
    sup = tv.Supervisor(pool_size=1, clock=clock)
    async with sup:
        running = sup.submit(gate.wait, "r", name="running", runs_on="main")
        queued = sup.submit(echo, "q", name="queued", runs_on="thread")
        soon = sup.submit(aecho, "soon", name="soon", runs_on="main", delay=4, tier=tv.CRITICAL)
        waiting = sup.submit(echo, "w", name="waiting", requires="never")
        await gate.started.reach(1)
        entered = asyncio.Event()
        closing = asyncio.create_task(call_and_mark(entered, sup.aclose(wait=10)))
        await entered.wait()
        clock.advance(4)
        expect_done(await soon, "soon", name="soon", runs_on="main", wait_time=4.0)
        clock.advance(5.9)
        assert not closing.done() and running.state is State.RUNNING
        clock.advance(0.1)
        report = await closing
    assert clock.now() == 10.0 and report.elapsed == 10.0
    assert [r.name for r in report] == ["running", "queued", "soon", "waiting"]
    reason = "supervisor closing: aclose waited 10 s"
    err = expect_error(
        running.result(), State.CANCELLED, tv.TaskCancelled, name="running", runs_on="main",
        attempts=1, run_time=10.0,
    )  # fmt: skip
    assert err.reason == reason
    await gate.cancelled.reach(1)
    for h in (queued, waiting):
        expect_not_run(
            h.result(), State.CANCELLED, tv.TaskCancelled, name=h.name, runs_on="thread",
            reason=reason, wait_time=10.0,
        )  # fmt: skip
    gate.release()


async def test_aclose_cancel_true_cancels_at_once() -> None:
    """aclose(cancel=True) cancels running coroutines and queued/waiting tasks at once."""
    clock = MockClock()
    main_g, aloop_g = Gate(), Gate()
    sup = tv.Supervisor(pool_size=2, clock=clock)
    async with sup:
        done = await sup.submit(echo, "done", name="done-before")
        on_main = sup.submit(main_g.wait, "m", name="on-main", runs_on="main")
        on_aloop = sup.submit(aloop_g.wait, "a", name="on-aloop", runs_on="aloop")
        queued = sup.submit(echo, "q", name="queued")
        waiting = sup.submit(echo, "w", name="waiting", requires="never")
        await main_g.started.reach(1)
        await aloop_g.started.reach(1)
        report = await sup.aclose(cancel=True)
    assert [r.name for r in report] == ["on-main", "on-aloop", "queued", "waiting"]
    expect_done(done, "done", name="done-before", runs_on="thread")
    for h, target in ((on_main, "main"), (on_aloop, "aloop:default")):
        err = expect_error(
            h.result(), State.CANCELLED, tv.TaskCancelled, name=h.name, runs_on=target,
            attempts=1,
        )  # fmt: skip
        assert err.reason == "supervisor closing"
    for h in (queued, waiting):
        expect_not_run(
            h.result(), State.CANCELLED, tv.TaskCancelled, name=h.name, runs_on="thread",
            reason="supervisor closing",
        )  # fmt: skip
    await main_g.cancelled.reach(1)
    await aloop_g.cancelled.reach(1)
    main_g.release()
    aloop_g.release()


async def test_aclose_wait_false_withdraws_and_abandons_threads() -> None:
    """aclose(wait=False): a running thread is abandoned, a pool-queued job withdrawn."""
    clock = MockClock()
    first, second = Gate(), Gate()
    sup = tv.Supervisor(threads=1, clock=clock)

    async def scenario() -> tuple[tv.TaskHandle[str], tv.TaskHandle[str], tv.RunReport]:
        async with sup:
            a = sup.submit(first.block, "a", name="running", runs_on="thread")
            b = sup.submit(second.block, "b", name="in-pool", runs_on="thread")
            await first.started.reach(1)
            return a, b, await sup.aclose(wait=False)

    with pytest.warns(tv.TaskvisorWarning) as rec:
        a, b, report = await scenario()
    assert warned(rec) == [
        abandoned_warning("running"),
        "1 abandoned thread(s) still running at close, not joined: 'running'",
    ]
    assert [r.name for r in report] == ["running", "in-pool"]
    err = expect_error(
        a.result(), State.CANCELLED, tv.TaskCancelled, name="running", runs_on="thread",
        attempts=1,
    )  # fmt: skip
    assert err.reason == "supervisor closing; its thread was abandoned and still runs"
    first.release()
    await first.returned.reach(1)
    assert second.calls == 0  # withdrawn: it never ran
    err = expect_error(
        b.result(), State.CANCELLED, tv.TaskCancelled, name="in-pool", runs_on="thread",
        attempts=0, dispatched=True,
    )  # fmt: skip
    assert err.reason == "supervisor closing"


async def test_aclose_while_paused_admits_what_pause_held() -> None:
    """aclose(wait=True) on a paused supervisor admits the held tasks and waits for them."""
    clock = MockClock()
    sup = tv.Supervisor(clock=clock)
    async with sup:
        sup.pause()
        held = sup.submit(echo, "held", name="held", runs_on="thread")
        held_main = sup.submit(aecho, "main", name="held-main", runs_on="main")
        assert (held.state, held_main.state) == (State.QUEUED, State.QUEUED)
        report = await sup.aclose()
    assert [r.name for r in report] == ["held", "held-main"]
    expect_done(held.result(), "held", name="held", runs_on="thread")
    expect_done(held_main.result(), "main", name="held-main", runs_on="main")


async def test_leaving_async_with_on_an_exception_cancels_and_settles_everything() -> None:
    """An exception in the block cancels and settles every task; it propagates."""
    clock = MockClock(autojump=False)
    main_g, aloop_g, thread_g = Gate(), Gate(), Gate()
    sup = tv.Supervisor(pool_size=3, clock=clock)
    handles: list[tv.TaskHandle[str]] = []

    async def scenario() -> None:
        async with sup:
            handles.extend(
                [
                    sup.submit(main_g.wait, "m", name="on-main", runs_on="main"),
                    sup.submit(aloop_g.wait, "a", name="on-aloop", runs_on="aloop"),
                    sup.submit(thread_g.block, "t", name="on-thread", runs_on="thread"),
                    sup.submit(echo, "q", name="queued"),
                    sup.submit(echo, "w", name="waiting", requires="never"),
                    sup.submit(echo, "d", name="delayed", delay=60, tier=tv.CRITICAL),
                ]
            )
            for g in (main_g, aloop_g, thread_g):
                await g.started.reach(1)
            clock.advance(2)
            raise KeyError("user code broke")

    with pytest.warns(tv.TaskvisorWarning) as rec, pytest.raises(KeyError, match="user code"):
        await scenario()
    on_main, on_aloop, on_thread, queued, waiting, delayed = handles
    assert warned(rec) == [
        abandoned_warning("on-thread"),
        "1 abandoned thread(s) still running at close, not joined: 'on-thread'",
    ]
    assert sup.state is tv.SupervisorState.CLOSED
    for h, target in ((on_main, "main"), (on_aloop, "aloop:default")):
        err = expect_error(
            await h, State.CANCELLED, tv.TaskCancelled, name=h.name, runs_on=target,
            attempts=1, run_time=2.0,
        )  # fmt: skip
        assert err.reason == "supervisor closing"
    err = expect_error(
        await on_thread, State.CANCELLED, tv.TaskCancelled, name="on-thread", runs_on="thread",
        attempts=1, run_time=2.0,
    )  # fmt: skip
    assert err.reason == "supervisor closing; its thread was abandoned and still runs"
    for h in (queued, waiting, delayed):
        expect_not_run(
            await h, State.CANCELLED, tv.TaskCancelled, name=h.name, runs_on="thread",
            reason="supervisor closing", wait_time=2.0,
        )  # fmt: skip
    await main_g.cancelled.reach(1)
    await aloop_g.cancelled.reach(1)
    thread_g.release()
    await thread_g.returned.reach(1)
    for g in (main_g, aloop_g):
        g.release()


# ------------------------------------------------------------------ pause, report, delay


async def test_pause_holds_admission_and_resume_releases_it() -> None:
    """pause(): running work goes on, new tasks of every tier stay QUEUED until resume()."""
    clock = MockClock(autojump=False)
    gate = Gate()
    async with tv.Supervisor(clock=clock) as sup:
        running = sup.submit(gate.wait, "r", name="running", runs_on="main")
        await gate.started.reach(1)
        sup.pause()
        held = [
            sup.submit(echo, "t", name="held-thread", runs_on="thread"),
            sup.submit(aecho, "a", name="held-aloop", runs_on="aloop"),
            sup.submit(aecho, "m", name="held-main", runs_on="main"),
            sup.submit(echo, "c", name="held-critical", runs_on="thread", tier=tv.CRITICAL),
        ]
        assert [h.state for h in held] == [State.QUEUED] * 4
        assert sup.statistics().paused
        clock.advance(3)
        gate.release()
        expect_done(await running, "r", name="running", runs_on="main", run_time=3.0)
        clock.advance(4)
        assert [h.state for h in held] == [State.QUEUED] * 4
        sup.resume()
        assert not sup.statistics().paused
        rets = ["t", "a", "m", "c"]
        targets = ["thread", "aloop:default", "main", "thread"]
        for h, ret, target in zip(held, rets, targets, strict=True):
            expect_done(await h, ret, name=h.name, runs_on=target, wait_time=7.0)
        for target in ("main", "aloop", "thread"):
            await expect_still_runs(sup, target)


async def test_report_gives_an_interim_run_report_at_any_time() -> None:
    """report(): the results so far and the names still pending, in submission order."""
    clock = MockClock()
    gate = Gate()
    async with tv.Supervisor(pool_size=1, clock=clock) as sup:
        assert len(sup.report()) == 0 and sup.report().pending == ()
        first = await sup.submit(echo, 1, name="first", runs_on="thread")
        running = sup.submit(gate.wait, "r", name="running", runs_on="main")
        queued = sup.submit(echo, 2, name="queued", runs_on="thread")
        waiting = sup.submit(echo, 3, name="waiting", requires="w")
        await gate.started.reach(1)
        interim = sup.report()
        assert [r.name for r in interim] == ["first"] and interim["first"] is first
        assert interim.pending == ("running", "queued", "waiting")
        assert not interim.ok and "3 pending" in str(interim)
        gate.release()
        expect_done(await running, "r", name="running", runs_on="main")
        sup.provide("w")
        expect_done(await queued, 2, name="queued", runs_on="thread")
        expect_done(await waiting, 3, name="waiting", runs_on="thread")
        final = sup.report()
        assert final.ok and final.pending == ()
        assert final.returns == {"first": 1, "running": "r", "queued": 2, "waiting": 3}
        expect_done(first, 1, name="first", runs_on="thread")


async def test_delay_holds_no_slot_and_is_the_wait_time() -> None:
    """delay=30 with pool_size=1: another task runs meanwhile; wait_time is exactly 30."""
    clock = MockClock(autojump=False)
    gate = Gate()
    async with tv.Supervisor(pool_size=1, clock=clock) as sup:
        later = sup.submit(echo, "later", name="later", runs_on="thread", delay=30)
        now = sup.submit(gate.wait, "now", name="now", runs_on="main")
        await gate.started.reach(1)
        assert (later.state, now.state) == (State.DELAYED, State.RUNNING)
        assert sup.statistics().busy_slots == 1
        clock.advance(10)
        gate.release()
        expect_done(await now, "now", name="now", runs_on="main", run_time=10.0)
        clock.advance(19.5)
        assert later.state is State.DELAYED
        clock.advance(0.5)
        res = await later
        expect_done(res, "later", name="later", runs_on="thread", wait_time=30.0)
        assert res.started_at is not None
        assert (res.started_at - res.submitted_at).total_seconds() == 30.0
        await expect_still_runs(sup, "thread")


# ------------------------------------------------------------------ wait alarms


async def test_wait_alarms_call_each_callback_once_per_task() -> None:
    """wait_warning=5, wait_critical=10: each callback once per task, with the time waited."""
    clock = MockClock(autojump=False)
    gate = Gate()
    alarms: list[tuple[str, str, float]] = []
    async with tv.Supervisor(
        pool_size=1,
        wait_warning=5,
        wait_critical=10,
        on_wait_warning=lambda n, w: alarms.append(("warning", n, w)),
        on_wait_critical=lambda n, w: alarms.append(("critical", n, w)),
        clock=clock,
    ) as sup:
        busy = sup.submit(gate.wait, "busy", name="busy", runs_on="main")
        queued = sup.submit(echo, "q", name="queued", runs_on="thread")
        vip = sup.submit(aecho, "vip", name="vip", runs_on="main", tier=tv.CRITICAL)
        await gate.started.reach(1)
        expect_done(await vip, "vip", name="vip", runs_on="main")  # admitted at once: no alarm
        clock.advance(4.9)
        assert alarms == []
        clock.advance(0.1)
        assert alarms == [("warning", "queued", 5.0)]
        clock.advance(5)
        assert alarms == [("warning", "queued", 5.0), ("critical", "queued", 10.0)]
        clock.advance(100)  # once each
        gate.release()
        expect_done(await busy, "busy", name="busy", runs_on="main", run_time=110.0)
        expect_done(await queued, "q", name="queued", runs_on="thread", wait_time=110.0)
        assert alarms == [("warning", "queued", 5.0), ("critical", "queued", 10.0)]
        await expect_still_runs(sup, "thread")


async def test_wait_alarm_counts_from_queued_not_from_waiting_for_dependencies() -> None:
    """The alarm clock starts when the task is ready for a slot, not at submission."""
    clock = MockClock(autojump=False)
    gate = Gate()
    alarms: list[tuple[str, float]] = []
    async with tv.Supervisor(
        pool_size=1,
        wait_warning=5,
        on_wait_warning=lambda n, w: alarms.append((n, w)),
        clock=clock,
    ) as sup:
        busy = sup.submit(gate.wait, "busy", name="busy", runs_on="main")
        dependent = sup.submit(echo, "d", name="dependent", requires="item")
        await gate.started.reach(1)
        clock.advance(20)
        assert dependent.state is State.WAITING and alarms == []
        sup.provide("item")
        assert sup.task_state(dependent) is State.QUEUED
        clock.advance(4.9)
        assert alarms == []
        clock.advance(0.1)
        assert alarms == [("dependent", 5.0)]
        gate.release()
        expect_done(await busy, "busy", name="busy", runs_on="main", run_time=25.0)
        expect_done(await dependent, "d", name="dependent", runs_on="thread", wait_time=25.0)
        assert alarms == [("dependent", 5.0)]
        await expect_still_runs(sup, "thread")


async def test_no_wait_alarm_for_a_task_admitted_before_its_deadline() -> None:
    """A task admitted at t=4 with wait_warning=5 gets no alarm, ever."""
    clock = MockClock(autojump=False)
    gate = Gate()
    alarms: list[tuple[str, float]] = []
    async with tv.Supervisor(
        pool_size=1,
        wait_warning=5,
        wait_critical=6,
        on_wait_warning=lambda n, w: alarms.append((n, w)),
        on_wait_critical=lambda n, w: alarms.append((n, w)),
        clock=clock,
    ) as sup:
        busy = sup.submit(gate.wait, "busy", name="busy", runs_on="main")
        queued = sup.submit(echo, "q", name="queued", runs_on="thread")
        await gate.started.reach(1)
        clock.advance(4)
        gate.release()
        expect_done(await busy, "busy", name="busy", runs_on="main", run_time=4.0)
        expect_done(await queued, "q", name="queued", runs_on="thread", wait_time=4.0)
        clock.advance(10)
        assert alarms == []
        await expect_still_runs(sup, "thread")


async def test_wait_alarms_without_callbacks_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    """No callbacks: wait_warning logs a WARNING, wait_critical an ERROR on 'taskvisor'."""
    caplog.set_level(logging.WARNING, logger="taskvisor")
    clock = MockClock(autojump=False)
    gate = Gate()
    async with tv.Supervisor(pool_size=1, wait_warning=2, wait_critical=3, clock=clock) as sup:
        busy = sup.submit(gate.wait, "busy", name="busy", runs_on="main")
        queued = sup.submit(echo, "q", name="queued", runs_on="thread")
        await gate.started.reach(1)
        clock.advance(2)
        clock.advance(1)
        gate.release()
        expect_done(await busy, "busy", name="busy", runs_on="main", run_time=3.0)
        expect_done(await queued, "q", name="queued", runs_on="thread", wait_time=3.0)
        await expect_still_runs(sup, "thread")
    logged = [
        (r.name, r.levelname, r.getMessage())
        for r in caplog.records
        if "for admission" in r.getMessage()
    ]
    assert logged == [
        ("taskvisor", "WARNING", "'queued' has waited 2 s for admission (wait_warning)"),
        ("taskvisor", "ERROR", "'queued' has waited 3 s for admission (wait_critical)"),
    ]


# ------------------------------------------------------------------ live gates


async def test_cpu_gate_holds_non_critical_admissions_and_critical_pass() -> None:
    """cpu above cpu_limit: NORMAL/HIGH stay QUEUED, CRITICAL runs; re-sampled per interval."""
    clock = MockClock(autojump=False)
    sampler = FakeSampler(cpu=95, memory=10)
    async with tv.Supervisor(
        cpu_limit="90%", sampler=sampler, sample_interval=0.5, clock=clock
    ) as sup:
        normal = sup.submit(echo, "n", name="normal", runs_on="thread")
        high = sup.submit(aecho, "h", name="high", runs_on="aloop", tier=tv.HIGH)
        crit = sup.submit(echo, "c", name="critical", runs_on="thread", tier=tv.CRITICAL)
        assert sampler.calls == 1  # three submissions within one interval: one sample
        assert (normal.state, high.state) == (State.QUEUED, State.QUEUED)
        expect_done(await crit, "c", name="critical", runs_on="thread")
        assert sampler.calls == 1
        clock.advance(0.5)  # the gate's timer samples again: still too busy
        assert sampler.calls == 2
        assert (normal.state, high.state) == (State.QUEUED, State.QUEUED)
        sampler.cpu = 10
        clock.advance(0.4)
        assert sampler.calls == 2 and normal.state is State.QUEUED
        clock.advance(0.1)
        assert sampler.calls == 3
        expect_done(await high, "h", name="high", runs_on="aloop:default", wait_time=1.0)
        expect_done(await normal, "n", name="normal", runs_on="thread", wait_time=1.0)
        for target in ("thread", "aloop"):
            await expect_still_runs(sup, target)
        assert sampler.calls == 3  # no time passed since the last sample


async def test_memory_gate_holds_until_memory_drops() -> None:
    """memory above memory_limit=80: held; after it drops, the autojumped timer releases."""
    clock = MockClock()
    sampler = FakeSampler(cpu=99, memory=85)
    async with tv.Supervisor(
        memory_limit=80, sampler=sampler, sample_interval=0.5, clock=clock
    ) as sup:
        held = [sup.submit(echo, i, name=f"held-{i}", runs_on="thread") for i in range(5)]
        assert sampler.calls == 1 and all(h.state is State.QUEUED for h in held)
        crit = sup.submit(aecho, "c", name="critical", runs_on="main", tier=tv.CRITICAL)
        await end_of_turn()  # admission: the critical task passes the gate
        assert crit.state is State.RUNNING
        sampler.memory = 50  # (no await since the first sample) cpu 99 has no limit
        expect_done(await crit, "c", name="critical", runs_on="main", run_time=None)
        for i, h in enumerate(held):
            res = await h  # autojump: the gate's timer samples again at t=0.5
            expect_done(res, i, name=f"held-{i}", runs_on="thread", wait_time=0.5)
        assert sampler.calls == 2 and clock.now() == 0.5
        await expect_still_runs(sup, "thread")


@pytest.mark.parametrize("label", ["cpu_limit", "memory_limit"])
@pytest.mark.parametrize("value", ["abc", 0, 101, -5, "0%", "101%"])
def test_bad_live_gate_limits_raise_spec_error_naming_the_argument(label: str, value: Any) -> None:
    """Limits outside (0, 100] or not a number/percentage: SpecError naming the argument."""
    with pytest.raises(tv.SpecError, match=label) as info:
        tv.Supervisor(**{label: value})
    assert repr(value) in str(info.value)


# ------------------------------------------------------------------ retries


async def test_thread_task_retried_succeeds_on_the_second_attempt() -> None:
    """thread: retries=1, the first attempt raises, the second succeeds: DONE, attempts 2."""
    calls: list[int] = []

    def flaky(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            raise ConnectionError("first attempt fails")
        return 2 * x

    async with tv.Supervisor(clock=MockClock()) as sup:
        res = await sup.submit(flaky, 21, name="flaky", runs_on="thread", retries=1)
        expect_done(res, 42, name="flaky", runs_on="thread", attempts=2)
        assert calls == [21, 21]
        await expect_still_runs(sup, "thread")


async def test_aloop_task_retried_succeeds_on_the_second_attempt() -> None:
    """aloop: retries=1, the first attempt raises, the second succeeds: DONE, attempts 2."""
    calls: list[int] = []

    async def flaky(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            raise ConnectionError("first attempt fails")
        return 2 * x

    async with tv.Supervisor(clock=MockClock()) as sup:
        res = await sup.submit(flaky, 21, name="flaky", runs_on="aloop", retries=1)
        expect_done(res, 42, name="flaky", runs_on="aloop:default", attempts=2)
        assert calls == [21, 21]
        await expect_still_runs(sup, "aloop")


async def test_task_fail_error_is_never_retried_and_retries_run_out() -> None:
    """TaskFailError ends at once despite retries; other errors use them all up."""
    tries = {"controlled": 0, "always": 0}

    def controlled() -> None:
        tries["controlled"] += 1
        raise tv.TaskFailError("do not retry me")

    async def always() -> None:
        tries["always"] += 1
        raise ValueError(f"attempt {tries['always']}")

    async with tv.Supervisor(clock=MockClock()) as sup:
        c = await sup.submit(controlled, name="controlled", runs_on="thread", retries=3)
        a = await sup.submit(always, name="always", runs_on="aloop", retries=2)
        err = expect_error(
            c, State.FAILED, tv.TaskFailError, name="controlled", runs_on="thread", attempts=1
        )
        assert (err.message, err.deps_ok, err.locks_ok) == ("do not retry me", True, True)
        verr = expect_error(
            a, State.FAILED, ValueError, name="always", runs_on="aloop:default", attempts=3
        )
        assert str(verr) == "attempt 3"  # the last attempt's error
        assert tries == {"controlled": 1, "always": 3}
        await expect_still_runs(sup, "thread")
        await expect_still_runs(sup, "aloop")


# ------------------------------------------------------------------ containment


async def test_a_blocked_aloop_blocks_neither_the_supervisor_nor_other_executors() -> None:
    """A coroutine blocking aloop 'a' in a sync wait: aloop 'b', main and threads go on."""
    clock = MockClock()
    hog = Gate()

    async def blocks_its_loop() -> str:
        return hog.block("unblocked")  # a blocking call inside a coroutine

    async with tv.Supervisor(aloops=("a", "b"), clock=clock) as sup:
        h = sup.submit(blocks_its_loop, name="hog", runs_on="aloop:a")
        await hog.started.reach(1)
        behind = sup.submit(aecho, "behind", name="behind-hog", runs_on="aloop:a")
        on_b = await sup.submit(aecho, "b", name="on-b", runs_on="aloop:b")
        on_main = await sup.submit(aecho, "m", name="on-main", runs_on="main")
        on_thread = await sup.submit(echo, "t", name="on-thread", runs_on="thread")
        expect_done(on_b, "b", name="on-b", runs_on="aloop:b")
        assert on_b.worker == "taskvisor-aloop-b"
        expect_done(on_main, "m", name="on-main", runs_on="main")
        expect_done(on_thread, "t", name="on-thread", runs_on="thread")
        assert (h.state, behind.state) == (State.RUNNING, State.RUNNING)
        hog.release()
        expect_done(await h, "unblocked", name="hog", runs_on="aloop:a")
        expect_done(await behind, "behind", name="behind-hog", runs_on="aloop:a")
        await expect_still_runs(sup, "aloop:a")


async def test_failure_skips_dependents_and_lock_waiters_with_a_warning() -> None:
    """A raising task: FAILED; dependents SKIPPED (DependencyError), lock waiters LockError."""
    clock = MockClock()
    gate = Gate()

    async def breaks() -> None:
        await gate.wait(None)
        raise OSError("disk full")

    async with tv.Supervisor(clock=clock) as sup:
        writer = sup.submit(breaks, name="writer", runs_on="main", provides="data", claims="disk")
        await gate.started.reach(1)
        reader = sup.submit(echo, "r", name="reader", requires="data")
        next_writer = sup.submit(echo, "w", name="next-writer", claims="disk")
        bystander = sup.submit(echo, "b", name="bystander")
        expect_done(await bystander, "b", name="bystander", runs_on="thread")
        assert (reader.state, next_writer.state) == (State.WAITING, State.LOCKED)
        gate.release()
        with pytest.warns(tv.TaskvisorWarning) as rec:
            res = await writer
        assert warned(rec) == [
            "task 'writer' failed: 1 dependent task(s) and 1 task(s) waiting for a lock it held "
            "skipped; lock(s) 'disk' stay held"
        ]
        err = expect_error(res, State.FAILED, OSError, name="writer", runs_on="main", attempts=1)
        assert str(err) == "disk full"
        dep = expect_not_run(
            reader.result(), State.SKIPPED, tv.DependencyError, name="reader", runs_on="thread"
        )
        assert (dep.failed, dep.missing) == (("writer",), ())
        lock = expect_not_run(
            next_writer.result(), State.SKIPPED, tv.LockError, name="next-writer",
            runs_on="thread",
        )  # fmt: skip
        assert (lock.resource, lock.holder) == ("disk", "writer")
        late = await sup.submit(echo, "l", name="late-user", uses="disk")
        lock = expect_not_run(late, State.SKIPPED, tv.LockError, name="late-user", runs_on="thread")
        assert lock.holder == "writer"
        await expect_still_runs(sup, "main")


async def test_result_buffer_forgets_old_tasks_but_handles_still_work() -> None:
    """result_buffer=2: older ended tasks are forgotten once their handles are gone; a live
    handle keeps its task known (and its name taken) past the window; handles still work."""
    async with tv.Supervisor(result_buffer=2, clock=MockClock()) as sup:
        handles = []
        for i, name in enumerate(("a", "b", "c", "d")):
            h = sup.submit(echo, i, name=name, runs_on="thread")
            expect_done(await h, i, name=name, runs_on="thread")
            handles.append(h)
        report = sup.report()
        assert [r.name for r in report] == ["c", "d"] and report.pending == ()
        a = handles[0]
        a_res = a.result()
        assert sup.task_state("a") is State.DONE  # past the window, but a handle holds it
        with pytest.raises(tv.DuplicateTaskError, match="'a'"):
            sup.submit(echo, "again", name="a", runs_on="thread")
        assert a.state is State.DONE and a.done() and (await a) is a_res
        del handles[:2], a
        with pytest.raises(KeyError):
            sup.task_state("a")  # forgotten: past the window, its handle gone
        again = await sup.submit(echo, "again", name="a", runs_on="thread")
        expect_done(again, "again", name="a", runs_on="thread")
        assert a_res.ret == 0 and again.ret == "again"  # the old result is its own
        with pytest.raises(KeyError):
            sup.task_state("b")  # forgotten: past the window, no handle left
        assert [r.name for r in sup.report()] == ["d", "a"]
        assert sup.task_state("a") is State.DONE
        await expect_still_runs(sup, "thread")


WARNING_SCRIPT = """\
import asyncio
import taskvisor as tv

def boom():
    raise ValueError("x")

def graph():
    return [tv.Task(boom, name="a", provides={"x"}, claims={"db"}),
            tv.Task(abs, (1,), name="b", requires={"x"}),
            tv.Task(abs, (2,), name="c", claims={"db"})]

async def main():
    async with tv.Supervisor(pool_size=1) as sup:
        await sup.gather(graph())

asyncio.run(main())  # line 16
report = tv.run(graph(), pool_size=1)  # line 17
"""


def test_warnings_point_at_the_users_line(tmp_path: Any) -> None:
    """A TaskvisorWarning's location is the user's line, never taskvisor's own frames,
    even when the failure is handled in a loop callback; skips are counted by cause."""
    import subprocess
    import sys

    script = tmp_path / "user_script.py"
    script.write_text(WARNING_SCRIPT)
    out = subprocess.run(
        [sys.executable, "-W", "always::taskvisor.TaskvisorWarning", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    warned = [line for line in out.stderr.splitlines() if "TaskvisorWarning" in line]
    message = (
        "TaskvisorWarning: task 'a' failed: 1 dependent task(s) and 1 task(s) waiting for a "
        "lock it held skipped; lock(s) 'db' stay held"
    )
    assert warned == [f"{script}:16: {message}", f"{script}:17: {message}"], out.stderr
