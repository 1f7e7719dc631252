"""The engine: one instruction queue never re-entered, and every method from any thread.

The lost-cancel tests each build the one interleaving where an instruction's own effect
made a new planner event (a projection raising at dispatch, a wait-alarm callback, a
``runs_on="main"`` function) while the rest of its instruction list was still waiting.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import queue
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any, TypeVar, cast

import pytest

import taskvisor as tv
import taskvisor.abc as tv_abc
from taskvisor import State, _engine, _executors
from taskvisor.testing import MockClock

from .conftest import Gates, end_of_turn, noop
from .workloads import add, fails_once, identity

T = TypeVar("T")
WAIT = 30.0  # a bound on a wait that must end long before (never a synchronisation)


async def quick() -> str:
    return "ran"


def task_on_main(gates: Gates, name: str, **meta: Any) -> tv.Task[str]:
    return tv.Task(gates.task, (name,), name=name, runs_on="main", **meta)


async def in_threads(n: int, fn: Callable[[int], T]) -> list[T | BaseException]:
    """Run ``fn(i)`` in ``n`` threads of the test's own; wait without blocking the loop."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    results: list[T | BaseException] = [RuntimeError("did not run")] * n
    left = [n]

    def one() -> None:
        left[0] -= 1
        if left[0] == 0:
            done.set()

    def body(i: int) -> None:
        try:
            results[i] = fn(i)
        except BaseException as exc:
            results[i] = exc
        finally:
            loop.call_soon_threadsafe(one)

    threads = [threading.Thread(target=body, args=(i,), name=f"user-{i}") for i in range(n)]
    for t in threads:
        t.start()
    await done.wait()
    for t in threads:
        t.join()
    return results


# ------------------------------------------------------------------ lost cancels


async def test_fail_fast_cancel_made_by_a_projection_failing_at_dispatch_is_not_lost() -> None:
    """parent readies a and b in one list; a's projection raises at dispatch, so fail_fast
    cancels b: b ends CANCELLED (it used to run to DONE: the cancel found no job yet)."""
    parent = tv.Task(identity, ({"x": 1},), name="parent", runs_on="main", provides="go")
    a = tv.Task(identity, (parent.output["missing"],), name="a", runs_on="main")
    b = tv.Task(quick, name="b", runs_on="main", requires="go")
    async with tv.Supervisor(fail_fast=True) as sup:
        report = await sup.gather([parent, a, b])
    assert report["parent"].state is State.DONE
    assert report["a"].state is State.FAILED and isinstance(report["a"].error, KeyError)
    rb = report["b"]
    assert rb.state is State.CANCELLED, rb
    assert isinstance(rb.error, tv.TaskCancelled) and "fail_fast" in rb.error.reason


async def test_a_wait_alarm_callback_that_cancels_a_task_dispatched_in_the_same_list() -> None:
    """At t=5 one tick raises x's wait alarm and admits b (its delay ended). The callback
    cancels b: b ends CANCELLED (the callback used to run before b's dispatch: lost)."""
    clock = MockClock(autojump=False)
    gates = Gates()
    sup_ref: list[tv.Supervisor] = []
    calls: list[tuple[str, float]] = []

    def alarm(name: str, waited: float) -> None:
        calls.append((name, waited))
        sup_ref[0].cancel("b")

    async with tv.Supervisor(
        pool_size=1, wait_warning=5, on_wait_warning=alarm, clock=clock
    ) as sup:
        sup_ref.append(sup)
        busy = sup.submit(task_on_main(gates, "busy"))
        x = sup.submit(quick, name="x", runs_on="main")
        b = sup.submit(quick, name="b", runs_on="main", tier=tv.CRITICAL, delay=5)
        await gates.wait_started("busy")
        assert x.state is State.QUEUED and b.state is State.DELAYED
        clock.advance(5)
        assert calls == [("x", 5.0)]
        rb = await b
        gates.release("busy")
        assert (await busy).ok and (await x).ok
    assert rb.state is State.CANCELLED, rb
    assert rb.attempts == 1 and rb.started_at is not None  # dispatched, then cancelled


async def test_a_main_function_cancelling_a_sibling_of_its_own_batch() -> None:
    """f (a plain function on the loop) and s are dispatched in one list; f cancels s
    while f's dispatch runs: s ends CANCELLED (it used to run to DONE)."""
    holder: list[tv.Supervisor] = []

    def f() -> str:
        holder[0].cancel("s")
        return "cancelled s"

    async with tv.Supervisor() as sup:
        holder.append(sup)
        report = await sup.gather(
            [tv.Task(f, name="f", runs_on="main"), tv.Task(quick, name="s", runs_on="main")]
        )
    assert report["f"].ret == "cancelled s"
    assert report["s"].state is State.CANCELLED, report["s"]


async def test_a_main_function_may_submit_follow_ups() -> None:
    """Submitting from inside an instruction list queues the new work behind it."""
    holder: list[tv.Supervisor] = []
    handles: list[tv.TaskHandle[int]] = []

    def f() -> str:
        handles.append(holder[0].submit(add, 1, 2, name="follow-up", runs_on="main"))
        return "f"

    async with tv.Supervisor() as sup:
        holder.append(sup)
        assert (await sup.submit(f, runs_on="main")).ret == "f"
        assert (await handles[0]).ret == 3


# ------------------------------------------------------------------ one turn, one admission


async def test_a_submit_is_admitted_at_the_end_of_its_turn() -> None:
    async with tv.Supervisor(aloops=()) as sup:
        h = sup.submit(quick, runs_on="main")
        assert h.state is State.QUEUED
        await end_of_turn()
        assert h.state in (State.RUNNING, State.DONE)
        assert (await h).ret == "ran"


# ------------------------------------------------------------------ any thread


async def test_submit_and_result_from_eight_foreign_threads() -> None:
    async with tv.Supervisor(threads=4) as sup:

        def user(i: int) -> list[int | None]:
            handles = [sup.submit(add, i, k, runs_on="thread") for k in range(50)]
            return [h.result(timeout=WAIT).ret for h in handles]

        results = await in_threads(8, user)
    assert results == [[i + k for k in range(50)] for i in range(8)]


async def test_a_thread_task_submits_a_follow_up_and_waits_for_it() -> None:
    holder: list[tv.Supervisor] = []

    def parent(x: int) -> int:
        child = holder[0].submit(add, x, 1, name="child", runs_on="thread")
        return cast(int, child.result(timeout=WAIT).ret) * 10

    async with tv.Supervisor(threads=2) as sup:
        holder.append(sup)
        res = await sup.submit(parent, 4, name="parent", runs_on="thread")
        assert res.ret == 50
        assert sup.task_state("child") is State.DONE


async def test_graph_errors_raise_in_the_calling_thread() -> None:
    async with tv.Supervisor(aloops=()) as sup:
        sup.submit(noop, name="taken", runs_on="thread")

        def user(i: int) -> str:
            errors = []
            calls: list[Callable[[], object]] = [
                lambda: sup.submit(noop, name="taken"),
                lambda: sup.submit(noop, runs_on="nowhere"),
                lambda: sup.submit(noop, tier="urgent"),
            ]
            for call in calls:
                try:
                    call()
                except tv.SpecError as exc:
                    errors.append(type(exc).__name__)
            return ",".join(errors)

        (got,) = await in_threads(1, user)
    assert got == "DuplicateTaskError,SpecError,SpecError"


async def test_result_with_a_timeout_leaves_the_task_running(gates: Gates) -> None:
    async with tv.Supervisor(aloops=()) as sup:
        h = sup.submit(task_on_main(gates, "slow"))
        await gates.wait_started("slow")

        def user(i: int) -> str:
            try:
                h.result(timeout=0.01)
            except TimeoutError as exc:
                return str(exc)
            return "no timeout"

        (msg,) = await in_threads(1, user)
        assert "did not end within" in str(msg)
        assert h.state is State.RUNNING and not h.done()
        gates.release("slow")
        assert (await h).ret == "slow"
        (again,) = await in_threads(1, lambda i: h.result(timeout=0).ret)
    assert again == "slow"


async def test_result_on_the_loop_never_blocks(gates: Gates) -> None:
    async with tv.Supervisor(aloops=()) as sup:
        h = sup.submit(task_on_main(gates, "x"))
        with pytest.raises(asyncio.InvalidStateError, match="await the handle"):
            h.result()
        gates.release("x")
        await h
        assert h.result().ret == "x"


async def test_cancel_pause_resume_provide_from_a_foreign_thread(gates: Gates) -> None:
    async with tv.Supervisor(aloops=()) as sup:
        victim = sup.submit(task_on_main(gates, "victim"))
        waiter = sup.submit(quick, name="waiter", runs_on="main", requires="item")
        await gates.wait_started("victim")

        def user(i: int) -> tv.TaskHandle[str]:
            sup.pause()
            held = sup.submit(quick, name="held", runs_on="main")
            sup.cancel("victim")
            sup.provide("item")
            return held

        (held,) = await in_threads(1, user)
        assert isinstance(held, tv.TaskHandle)
        assert held.state is State.QUEUED and sup.statistics().paused
        rv = await victim
        assert rv.state is State.CANCELLED and isinstance(rv.error, tv.TaskCancelled)
        await in_threads(1, lambda i: sup.resume())
        assert (await held).ret == "ran"
        assert (await waiter).ret == "ran"


async def test_add_done_callback_runs_on_the_loop_outside_the_engine(gates: Gates) -> None:
    loop_thread = threading.current_thread().name
    seen: list[tuple[str, str, bool]] = []
    holder: list[tv.Supervisor] = []

    def cb(res: tv.TaskRes[Any]) -> None:
        # outside the critical section: calling the supervisor from here is fine
        seen.append((res.name, threading.current_thread().name, holder[0]._engine.depth == 0))
        holder[0].submit(noop, name=f"after-{res.name}", runs_on="main")

    async with tv.Supervisor(aloops=()) as sup:
        holder.append(sup)
        h = sup.submit(task_on_main(gates, "t"))
        await in_threads(1, lambda i: h.add_done_callback(cb))
        gates.release("t")
        await h
        assert seen == [("t", loop_thread, True)]
        h.add_done_callback(cb)  # already ended: at once, in the calling thread
        assert seen[-1] == ("t", loop_thread, True)
        with pytest.raises(tv.SpecError, match="callable"):
            h.add_done_callback("not callable")  # type: ignore[arg-type]


async def test_run_and_gather_from_a_foreign_thread_raise() -> None:
    async with tv.Supervisor(aloops=()) as sup:

        def user(i: int) -> str:
            try:
                sup.run([tv.Task(noop)])
            except RuntimeError as exc:
                return str(exc)
            return "no error"

        (msg,) = await in_threads(1, user)
    assert "belongs to the supervisor's event loop" in str(msg)


# ------------------------------------------------------------------ small defects


async def test_pause_and_resume_after_close_raise_closed_error() -> None:
    async with tv.Supervisor(aloops=()) as sup:
        pass
    with pytest.raises(tv.ClosedError, match="pause"):
        sup.pause()
    with pytest.raises(tv.ClosedError, match="resume"):
        sup.resume()


def test_sample_interval_none_is_a_spec_error_also_under_python_o() -> None:
    with pytest.raises(tv.SpecError, match="sample_interval"):
        tv.Supervisor(sample_interval=None)  # type: ignore[arg-type]
    code = (
        "import taskvisor as tv\n"
        "try:\n    tv.Supervisor(sample_interval=None)\n"
        "except tv.SpecError as e:\n    print('SpecError', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-O", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("SpecError sample_interval"), out


def test_a_completion_after_the_loop_closed_is_logged_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="taskvisor")
    loop = asyncio.new_event_loop()
    inbox = _executors.Inbox(loop, lambda batch: None)
    loop.close()
    inbox.put("late")
    (rec,) = [r for r in caplog.records if "after its event loop closed" in r.message]
    assert rec.levelno == logging.DEBUG


def test_thread_pool_shutdown_joins_a_job_whose_cancel_lost_to_its_finish() -> None:
    """The job returned and its thread is still reporting when a cancel comes (so the
    supervisor does not abandon it): shutdown joins that thread, never calls it left."""
    entered, release = threading.Event(), threading.Event()

    def sink(job: _executors.Job, result: _executors.Result) -> None:
        if result[0] is _executors.Outcome.OK:
            entered.set()
            release.wait(WAIT)

    pool = _executors.ThreadPool(1, sink)
    job = _executors.Job("j", noop, (), {}, None, "thread")
    pool.submit(job)
    assert entered.wait(WAIT)
    job.cancelled = "cancelled"  # the cancel lost: the job had returned (not abandoned)
    (thread,) = pool._threads
    real_join = thread.join

    def join(timeout: float | None = None) -> None:
        release.set()  # shutdown reached the join: let the reporting thread end
        real_join(timeout)

    thread.join = join  # type: ignore[method-assign]
    try:
        assert pool.shutdown() == []
    finally:
        release.set()
        real_join(WAIT)


def test_a_job_submitted_while_a_pool_thread_reports_runs_next_on_that_thread() -> None:
    """The hand-off slot: the first job a pool thread's report submits while the queue is
    empty runs next on that thread (the other, idle, thread is not woken for it); one
    withdrawn while it waits in the slot is dropped like a withdrawn queued job."""
    ran: dict[str, str] = {}
    done, go, other_idle = threading.Event(), threading.Event(), threading.Event()
    jobs: dict[str, _executors.Job] = {}

    def record(name: str) -> None:
        if name == "a":
            assert go.wait(WAIT)
        ran[name] = threading.current_thread().name

    def make(name: str) -> _executors.Job:
        jobs[name] = _executors.Job(name, record, (name,), {}, None, "thread")
        return jobs[name]

    def sink(job: _executors.Job, result: _executors.Result) -> None:
        assert result[0] is _executors.Outcome.OK
        if job.name == "w":
            other_idle.set()
        elif job.name == "a":  # (on a's thread, while it reports)
            pool.submit(make("b"))  # the queue is empty: into the slot
        elif job.name == "b":
            pool.submit(make("y"))  # into the slot again
            assert pool.withdraw(jobs["y"])  # withdrawn while in the slot: never runs
            done.set()

    pool = _executors.ThreadPool(2, sink)
    pool.submit(make("a"))  # thread 0, held until go
    pool.submit(make("w"))  # thread 1, then idle at the queue
    assert other_idle.wait(WAIT)
    go.set()
    assert done.wait(WAIT)
    pool.shutdown()
    assert ran["b"] == ran["a"]  # handed over, not queued for the idle thread
    assert sorted(ran) == ["a", "b", "w"]  # (y withdrawn)
    assert pool._queue.empty() and not pool._next


def test_a_queued_job_is_withdrawn_a_running_one_is_not_and_no_claim_is_left() -> None:
    """Taking a job and withdrawing it are one atomic claim each: a job still queued is
    withdrawn (its thread drops it unrun and unreported), a running one cannot be; the
    pool keeps nothing of either afterwards."""
    started, go, done = threading.Event(), threading.Event(), threading.Event()
    reported: list[str] = []

    def hold() -> None:
        started.set()
        assert go.wait(WAIT)

    def sink(job: _executors.Job, result: _executors.Result) -> None:
        reported.append(job.name)
        if job.name == "last":
            done.set()

    pool = _executors.ThreadPool(1, sink)
    running = _executors.Job("running", hold, (), {}, None, "thread")
    queued = _executors.Job("queued", noop, (), {}, None, "thread")
    pool.submit(running)
    assert started.wait(WAIT)
    pool.submit(queued)
    assert not pool.withdraw(running)  # taken: only abandoned, never withdrawn
    assert pool.withdraw(queued)
    assert not pool.withdraw(queued)  # (once)
    pool.submit(_executors.Job("last", noop, (), {}, None, "thread"))
    go.set()
    assert done.wait(WAIT)
    pool.shutdown()
    assert reported == ["running", "last"]
    assert not pool._unclaimed


def test_idle_tokens_stay_bounded_when_jobs_queue_behind_busy_threads() -> None:
    """Jobs queued while every thread is busy take no idle token, so the threads coming
    back leave more tokens than there are idle threads: their number stays bounded by
    the pool's size (a long-lived service queues millions)."""
    go, done = threading.Event(), threading.Event()
    n = 50

    def sink(job: _executors.Job, result: _executors.Result) -> None:
        if job.name == f"q{n - 1}":
            done.set()

    pool = _executors.ThreadPool(2, sink)
    for i in range(2):
        pool.submit(_executors.Job(f"b{i}", go.wait, (WAIT,), {}, None, "thread"))
    for i in range(n):  # both threads busy: queued, no token taken
        pool.submit(_executors.Job(f"q{i}", noop, (), {}, None, "thread"))
    go.set()
    assert done.wait(WAIT)
    pool.shutdown()
    assert len(pool._idle) <= pool.size


def test_the_hand_off_slot_never_overtakes_a_queued_job() -> None:
    ran: list[str] = []
    done, queued = threading.Event(), threading.Event()

    def record(name: str) -> None:
        if name == "a":
            assert queued.wait(WAIT)
        ran.append(name)

    def sink(job: _executors.Job, result: _executors.Result) -> None:
        if job.name == "a":  # q waits in the queue: b goes behind it, not into the slot
            pool.submit(_executors.Job("b", record, ("b",), {}, None, "thread"))
        elif job.name == "b":
            done.set()

    pool = _executors.ThreadPool(1, sink)
    pool.submit(_executors.Job("a", record, ("a",), {}, None, "thread"))
    pool.submit(_executors.Job("q", record, ("q",), {}, None, "thread"))  # (one thread: a's)
    queued.set()
    assert done.wait(WAIT)
    pool.shutdown()
    assert ran == ["a", "q", "b"]


def test_a_job_in_the_slot_of_a_thread_whose_report_raises_goes_to_another_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the report raising ends its thread: the job it had handed to itself must not be
    # lost with it (it is queued for another thread)
    died: list[type[BaseException] | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_type))
    ran = threading.Event()

    def sink(job: _executors.Job, result: _executors.Result) -> None:
        if job.name == "a":
            pool.submit(_executors.Job("b", ran.set, (), {}, None, "thread"))  # (the slot)
            raise RuntimeError("the report failed")

    pool = _executors.ThreadPool(2, sink)
    pool.submit(_executors.Job("a", noop, (), {}, None, "thread"))
    assert ran.wait(WAIT)
    pool.shutdown()
    assert died == [RuntimeError]


class LateTimers(MockClock):
    """A clock whose timers never fire: a supervisor loop too busy to run them."""

    def call_at(
        self, loop: asyncio.AbstractEventLoop, when: float, callback: Callable[[], None]
    ) -> Any:
        return super().call_at(loop, float("inf"), callback)


async def test_a_thread_task_over_its_timeout_fails_even_when_the_loop_saw_it_late() -> None:
    """timeout 0.1 s, the thread ran 0.8 s (by the clock), the loop's timer never got to
    run: judged against when it really ended, it is a TaskTimeout, and retried."""
    clock = LateTimers(autojump=False)
    runs: list[int] = []

    def slow() -> str:
        runs.append(1)
        clock._now += 0.8  # the work took 0.8 s
        return "too late"

    async with tv.Supervisor(aloops=(), clock=clock) as sup:
        res = await sup.submit(slow, name="slow", runs_on="thread", timeout=0.1, retries=1)
        ok = await sup.submit(noop, name="fast", runs_on="thread", timeout=0.1)
    assert res.state is State.FAILED and isinstance(res.error, tv.TaskTimeout), res
    assert res.attempts == 2 and len(runs) == 2
    assert ok.state is State.DONE


# ------------------------------------------------------------------ failing loudly, story


async def test_an_internal_error_handling_a_completion_fails_that_task_loudly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = tv.Supervisor._on_done

    def broken(sup: tv.Supervisor, job: _executors.Job, result: Any) -> None:
        if job.name == "victim" and result[0] is not _executors.Outcome.STARTED:
            raise ZeroDivisionError("a bug in taskvisor")
        real(sup, job, result)

    monkeypatch.setattr(tv.Supervisor, "_on_done", broken)
    async with tv.Supervisor(aloops=()) as sup:
        victim = await sup.submit(noop, name="victim", runs_on="thread")
        other = await sup.submit(noop, name="other", runs_on="thread")
    assert victim.state is State.FAILED and isinstance(victim.error, ZeroDivisionError)
    assert other.ok
    assert any(
        r.levelno == logging.CRITICAL and "'victim'" in r.getMessage() for r in caplog.records
    )


async def test_story_tells_a_retried_task_from_submit_to_its_end() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("first attempt fails")
        return "ok"

    async with tv.Supervisor(aloops=()) as sup:
        res = await sup.submit(flaky, name="flaky", runs_on="thread", retries=1)
        story = sup.story("flaky")
    assert res.ok and res.attempts == 2
    assert [e.kind for e in story] == [
        "submitted",
        "dispatched",
        "retrying",
        "dispatched",
        "ended",
    ]
    assert story[0].detail == "thread" and story[-1].detail == "DONE"
    assert "first attempt fails" in story[2].detail
    ids = [e.id for e in story]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(isinstance(e, tv.StoryEvent) and e.task == "flaky" for e in story)


# ------------------------------------------------------------------ review regressions


async def test_a_name_reused_while_the_old_tasks_settle_waits_for_the_loop() -> None:
    """result_buffer=1. A thread of the user's submits X and Y (both waiting for an item
    nobody provides), cancels both (their Settles go to the loop, which is held), drops
    its handles, and submits a new X (the planner forgot the old one). Each task gets its
    own TaskRes: the queued Settle is about the old X, never the new one."""
    async with tv.Supervisor(result_buffer=1, threads=2, aloops=()) as sup:
        res: dict[str, tv.TaskRes[Any]] = {}
        hs: dict[str, tv.TaskHandle[Any]] = {}

        def user() -> None:
            for name in ("X", "Y"):
                h = sup.submit(noop, name=name, requires="never")
                h.add_done_callback(functools.partial(res.__setitem__, f"{name}_old"))
                sup.cancel(name)
                del h  # (a live handle would keep the name taken)
            hs["X_new"] = sup.submit(identity, "new", name="X", runs_on="thread")

        t = threading.Thread(target=user)
        t.start()
        t.join()  # the loop's thread is held: nothing queued for it has run yet
        res["X_new"] = await hs["X_new"]
    assert res["X_old"].state is State.CANCELLED and res["Y_old"].state is State.CANCELLED
    assert (res["X_new"].state, res["X_new"].ret) == (State.DONE, "new")


async def test_a_live_handle_keeps_its_tasks_name_and_never_cancels_a_newer_task() -> None:
    async with tv.Supervisor(result_buffer=1, aloops=()) as sup:
        old = sup.submit(noop, name="X", runs_on="thread")
        await old
        await sup.submit(noop, name="Y", runs_on="thread")  # X past the window (size 1)
        with pytest.raises(tv.DuplicateTaskError, match="'X'"):
            sup.submit(identity, "new", name="X")  # ... but its handle is alive
        old.cancel()  # an ended task is left as it is
        assert old.state is State.DONE and sup.task_state("X") is State.DONE
        del old
        new = sup.submit(identity, "new", name="X", requires="later")
        sup.provide("later")
        res = await new
    assert (res.state, res.ret) == (State.DONE, "new")


async def test_an_internal_error_on_a_pool_thread_finishing_its_own_task(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The same internal error, whichever thread finishes the task (its pool thread, under
    the engine lock, or the loop): the task ends FAILED with it, and closing never hangs."""
    real = tv.Supervisor._deliver
    broken = [True]

    def deliver(sup: tv.Supervisor, rec: Any, state: State, *args: Any) -> None:
        if rec.spec.name == "victim" and state is State.DONE and broken:
            broken.clear()
            raise ZeroDivisionError("a bug in taskvisor")
        real(sup, rec, state, *args)

    monkeypatch.setattr(tv.Supervisor, "_deliver", deliver)
    gate = threading.Event()
    async with tv.Supervisor(aloops=()) as sup:
        h = sup.submit(gate.wait, WAIT, name="victim", runs_on="thread")
        await end_of_turn()  # dispatched; the loop holds no lock from here on
        gate.set()  # its pool thread finishes it itself (the loop is idle, in await)
        res = await h
    assert res.state is State.FAILED and isinstance(res.error, ZeroDivisionError)


def test_cancel_from_a_thread_while_closing_under_asyncio_debug() -> None:
    """asyncio's debug mode refuses non-thread-safe calls from other threads: a cancel from
    a thread of the user's while aclose waits must not touch the loop's objects."""
    code = """
import asyncio, threading
import taskvisor as tv

async def main():
    sup = tv.Supervisor(aloops=())
    await sup.start()
    blocker = asyncio.Event()
    h = sup.submit(blocker.wait, name="w", runs_on="main")
    await asyncio.sleep(0)  # a yield, not a wait: the end-of-turn admission runs w
    closing = asyncio.ensure_future(sup.aclose())
    await asyncio.sleep(0)  # a yield: aclose starts and waits for w
    t = threading.Thread(target=sup.cancel, args=("w",))
    t.start()
    t.join()
    await asyncio.wait_for(closing, 10)
    print((await h).state.name)

asyncio.run(main(), debug=True)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "CANCELLED", out


# ------------------------------------------------------------------ instruments


class Recorder:
    """An instrument with every hook: what it was told, on which thread, and whether the
    supervisor's lock was free (outside the critical section)."""

    def __init__(self, sup_ref: list[tv.Supervisor]) -> None:
        self.calls: list[tuple[str, str]] = []
        self.threads: set[str] = set()
        self.lock_free: set[bool] = set()
        self.sup_ref = sup_ref
        self.closed: list[tv.RunReport] = []

    def _note(self, hook: str, name: str) -> None:
        self.calls.append((hook, name))
        self.threads.add(threading.current_thread().name)
        if self.sup_ref:
            self.lock_free.add(self.sup_ref[0]._engine.depth == 0)

    def task_submitted(self, info: tv.TaskInfo) -> None:
        assert info.attempt == 0 and info.worker is None
        self._note("submitted", info.name)

    def task_started(self, info: tv.TaskInfo) -> None:
        self._note(f"started {info.attempt} on {info.runs_on}", info.name)

    def task_finished(self, res: tv.TaskRes[Any]) -> None:
        self._note(f"finished {res.state.name}", res.name)

    def worker_crashed(self, info: tv.TaskInfo) -> None:
        self._note(f"crashed attempt {info.attempt}", info.name)

    def supervisor_closed(self, report: tv.RunReport) -> None:
        self.closed.append(report)


class Broken:
    def __init__(self) -> None:
        self.calls = 0

    def task_finished(self, res: tv.TaskRes[Any]) -> None:
        self.calls += 1
        raise RuntimeError("instrument bug")


async def test_instruments_hear_every_step_on_the_loop_outside_the_engine(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ref: list[tv.Supervisor] = []
    rec, broken = Recorder(ref), Broken()
    flaky = fails_once()

    async with tv.Supervisor(instruments=[rec, broken], aloops=()) as sup:
        ref.append(sup)
        await sup.submit(flaky, name="f", runs_on="thread", retries=1)
        await in_threads(1, lambda i: sup.submit(noop, name="g", runs_on="thread").result(WAIT))
        await sup.submit(noop, name="h", runs_on="main")
    assert [c for c in rec.calls if c[1] == "f"] == [
        ("submitted", "f"),
        ("started 1 on thread", "f"),
        ("started 2 on thread", "f"),
        ("finished DONE", "f"),
    ]
    assert [c[0] for c in rec.calls if c[1] == "g"] == [
        "submitted",
        "started 1 on thread",
        "finished DONE",
    ]
    assert rec.threads == {threading.current_thread().name} and rec.lock_free == {True}
    assert len(rec.closed) == 1
    assert broken.calls == 1  # raised once: logged and removed, the tasks went on
    assert any(
        "instrument" in r.getMessage() and "removed" in r.getMessage() for r in caplog.records
    )


@pytest.mark.slow
async def test_an_instrument_hears_a_worker_crash() -> None:
    from .workloads import die

    rec = Recorder([])
    async with tv.Supervisor(instruments=[rec], processes=1, aloops=()) as sup:
        res = await sup.submit(die, 3, name="d", runs_on="process")
    assert isinstance(res.error, tv.WorkerCrashed)
    assert ("crashed attempt 1", "d") in rec.calls
    assert rec.calls[-1] == ("finished FAILED", "d")


def test_bad_instruments_are_spec_errors() -> None:
    with pytest.raises(tv.SpecError, match="has none of the hooks"):
        tv.Supervisor(instruments=[object()])
    with pytest.raises(tv.SpecError, match="iterable of instruments"):
        tv.Supervisor(instruments=3)  # type: ignore[arg-type]


# ------------------------------------------------------------------ admission rules


async def test_an_admit_rule_keeps_two_db_tasks_apart(gates: Gates) -> None:
    """rule(task, running): at most one task named db* at once; the others go by."""
    seen: list[tuple[str, tuple[str, ...]]] = []

    def one_db(task: tv.Task[Any], running: tuple[tv.Task[Any], ...]) -> bool:
        seen.append((task.name, tuple(sorted(r.name for r in running))))
        return not (task.name.startswith("db") and any(r.name.startswith("db") for r in running))

    async with tv.Supervisor(admit=one_db, aloops=()) as sup:
        report_task = asyncio.ensure_future(
            sup.gather([task_on_main(gates, n) for n in ("db1", "db2", "web")])
        )
        await gates.wait_started("db1", "web")
        assert sup.task_state("db2") is State.QUEUED
        gates.release("web")
        await gates.wait_started("web")
        assert sup.task_state("db2") is State.QUEUED  # asked again when web ended: refused
        gates.release("db1")
        await gates.wait_started("db2")
        gates.release("db2")
        report = await report_task
    assert report.ok and gates.order == ["db1", "web", "db2"]
    assert ("db2", ("db1",)) in seen


def test_admit_must_be_callable() -> None:
    with pytest.raises(tv.SpecError, match="admit must be a callable"):
        tv.Supervisor(admit="fifo")  # type: ignore[arg-type]


# ------------------------------------------------------------------ the executor seam


class OneThread(tv_abc.Executor):
    """A third party's executor: one thread of its own, a queue; a queued job can be
    withdrawn, a running one cannot be stopped (the supervisor abandons it)."""

    label = "one-thread worker"

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[_executors.Job | None] = queue.SimpleQueue()
        self.taken: set[str] = set()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._work, name="one-thread")
        self.sink: Any = None
        self.shut = False

    def start(self, sink: Any) -> None:
        self.sink = sink
        self.thread.start()

    def submit(self, job: _executors.Job) -> None:
        self.jobs.put(job)

    def cancel(self, job: _executors.Job) -> tv_abc.CancelResult:
        with self.lock:
            if job.name in self.taken:
                return tv_abc.CancelResult.RUNNING
            self.taken.add(job.name)  # never to be started
        self.sink(job, (_executors.Outcome.CANCELLED, None, job.shared, None, None))
        return tv_abc.CancelResult.WITHDRAWN

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            with self.lock:
                if job.name in self.taken:
                    continue
                self.taken.add(job.name)
            try:
                ret = job.fn(*job.args, **job.kwargs)
            except Exception as exc:
                info = tv.ExceptionInfo.from_exc(exc)
                self.sink(job, (_executors.Outcome.ERROR, None, job.shared, info, "one"))
            else:
                self.sink(job, (_executors.Outcome.OK, ret, job.shared, None, "one"))

    def shutdown(self) -> list[str]:
        self.shut = True
        self.jobs.put(None)
        self.thread.join()
        return []


async def test_a_third_party_executor_on_the_seam(gates: Gates) -> None:
    mine = OneThread()
    gate = threading.Event()
    async with tv.Supervisor(executors={"mine": mine}, aloops=()) as sup:
        blocked = sup.submit(gate.wait, WAIT, name="blocked", runs_on="mine")
        queued = sup.submit(add, 1, 2, name="queued", runs_on="mine")
        fails = sup.submit(add, 1, "x", name="fails", runs_on="mine")
        await end_of_turn()
        sup.cancel(queued)  # still in the executor's queue: withdrawn, no attempt
        gate.set()
        rb, rq, rf = await blocked, await queued, await fails
        assert (await sup.submit(add, 2, 3, runs_on="mine")).ret == 5
    assert (rb.state, rb.ret, rb.worker, rb.runs_on) == (State.DONE, True, "one", "mine")
    assert (rq.state, rq.attempts) == (State.CANCELLED, 0)
    assert rf.state is State.FAILED and isinstance(rf.error, TypeError)
    assert mine.shut


async def test_a_running_job_an_executor_cannot_stop_is_abandoned() -> None:
    mine = OneThread()
    gate, started = threading.Event(), threading.Event()

    def work() -> str:
        started.set()
        gate.wait(WAIT)
        return "late"

    try:
        async with tv.Supervisor(executors={"mine": mine}, aloops=()) as sup:
            h = sup.submit(work, name="w", runs_on="mine")
            await end_of_turn()
            await in_threads(1, lambda i: started.wait(WAIT))
            with pytest.warns(tv.TaskvisorWarning, match="one-thread worker could not be"):
                sup.cancel(h)
            res = await h
            assert res.state is State.CANCELLED and isinstance(res.error, tv.TaskCancelled)
            assert "abandoned" in res.error.reason
            gate.set()  # it returns: its slot is given back, closing joins the thread
    finally:
        gate.set()


def test_executors_and_backends_cannot_name_the_same_target() -> None:
    with pytest.raises(tv.SpecError, match="given twice"):
        tv.Supervisor(executors={"x": OneThread()}, backends={"x": OneThread()})


# ------------------------------------------------------------------ registered executors

PLUGIN = '''
import threading

import taskvisor.abc as tv_abc

SEEN = []  # (job name, tier name, priority), in submission order
LIFE = []  # "start" / "shutdown"


class Plugged(tv_abc.Executor):
    """Runs each job on a new thread of its own."""

    def start(self, sink):
        self.sink = sink
        LIFE.append("start")

    def submit(self, job):
        SEEN.append((job.name, job.task.tier.name, job.task.priority))

        def run():
            ret = job.fn(*job.args, **job.kwargs)
            self.sink(job, (tv_abc.Outcome.OK, ret, job.shared, None, "plugged"))

        threading.Thread(target=run).start()

    def shutdown(self):
        LIFE.append("shutdown")
        return []


class Cluster(Plugged):
    """A cluster executor: opened at start, with its own worker resources (GPU=2)."""

    own_resources = True

    async def open(self):
        LIFE.append("open")

    def resource_shortfall(self, task):
        need = task.resources.get("GPU", 0.0)
        return {"GPU": need - 2.0} if need > 2.0 else {}


def broken():
    raise RuntimeError("no GPU here")


def wrong():
    return 42
'''


@pytest.fixture
def plugin(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A real installed distribution (a dist-info on sys.path) registering executors in
    the ``taskvisor.executors`` entry point group, as a third-party package would."""
    (tmp_path / "tv_plugin_exec.py").write_text(PLUGIN)
    info = tmp_path / "tv_plugin_exec-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tv-plugin-exec\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[taskvisor.executors]\n"
        "plugged = tv_plugin_exec:Plugged\n"
        "cluster = tv_plugin_exec:Cluster\n"
        "broken = tv_plugin_exec:broken\n"
        "wrong = tv_plugin_exec:wrong\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("tv_plugin_exec", None)


async def test_a_registered_executor_by_name_in_executors(plugin: None) -> None:
    async with tv.Supervisor(executors={"fast": "plugged"}, aloops=()) as sup:
        res = await sup.submit(add, 1, 2, name="a", runs_on="fast", tier="high", priority=3)
        import tv_plugin_exec  # type: ignore[import-not-found]

        assert tv_plugin_exec.LIFE == ["start"]
    assert (res.state, res.ret, res.worker, res.runs_on) == (State.DONE, 3, "plugged", "fast")
    assert tv_plugin_exec.SEEN == [("a", "HIGH", 3.0)]  # the executor sees the Task
    assert tv_plugin_exec.LIFE == ["start", "shutdown"]


async def test_a_registered_executor_is_created_on_first_use(plugin: None) -> None:
    async with tv.Supervisor(aloops=()) as sup:
        first = sup.submit(add, 1, 1, name="one", runs_on="plugged")
        second = sup.submit(add, 2, 2, name="two", runs_on="plugged")
        assert ((await first).ret, (await second).ret) == (2, 4)
        import tv_plugin_exec

        assert tv_plugin_exec.LIFE == ["start"]  # one executor for both tasks
        with pytest.raises(tv.SpecError, match=r"unknown runs_on 'nope' \(known: .*plugged"):
            sup.submit(add, 1, 1, runs_on="nope")
    assert tv_plugin_exec.LIFE == ["start", "shutdown"]


async def test_an_executor_is_opened_at_start_and_may_own_the_resources(plugin: None) -> None:
    """``open()`` is awaited before any task; ``own_resources``: the executor's resources,
    not the supervisor's (it declares none), and its shortfall is the ResourceError."""
    async with tv.Supervisor(executors={"c": "cluster"}, aloops=()) as sup:
        import tv_plugin_exec

        assert tv_plugin_exec.LIFE == ["start", "open"]
        fits = sup.submit(add, 1, 1, runs_on="c", resources={"GPU": 2})
        never = sup.submit(add, 1, 1, runs_on="c", resources={"GPU": 3})
        local = sup.submit(add, 1, 1, runs_on="thread", resources={"GPU": 1})
        assert (await fits).ret == 2
        res, loc = await never, await local
    assert res.state is State.SKIPPED and isinstance(res.error, tv.ResourceError)
    assert res.error.shortfall == {"GPU": 1.0}
    assert loc.state is State.SKIPPED and isinstance(loc.error, tv.ResourceError)
    assert loc.error.shortfall == {"GPU": 1.0}  # (the supervisor itself has no GPU)


async def test_an_executor_that_needs_opening_is_not_created_on_first_use(plugin: None) -> None:
    async with tv.Supervisor(aloops=()) as sup:
        with pytest.raises(tv.SpecError, match=r"must be opened.*executors=\{'cluster'"):
            sup.submit(add, 1, 1, runs_on="cluster")


def test_registered_executor_errors_name_the_entry_point(plugin: None) -> None:
    with pytest.raises(tv.SpecError, match=r"no executor is registered as 'gpu'.*plugged"):
        tv.Supervisor(executors={"x": "gpu"})
    with pytest.raises(tv.SpecError, match=r"'broken'.*failed: RuntimeError\('no GPU here'\)"):
        tv.Supervisor(executors={"x": "broken"})
    with pytest.raises(tv.SpecError, match=r"'wrong'.*made int, not a taskvisor.abc.Executor"):
        tv.Supervisor(executors={"x": "wrong"})


async def test_a_registered_executor_that_fails_to_load_fails_the_submit(plugin: None) -> None:
    async with tv.Supervisor(aloops=()) as sup:
        with pytest.raises(tv.SpecError, match=r"runs_on 'broken'.*no GPU here"):
            sup.submit(add, 1, 1, runs_on="broken")
        assert (await sup.submit(add, 1, 1)).ret == 2  # nothing else is affected


class Measured(tv_abc.Executor):
    """Holds each job until the test ends it, reporting the seconds it "ran" in its
    worker (``job.ran``), as the process pool does."""

    def start(self, sink: Any) -> None:
        self.sink = sink
        self.jobs: list[_executors.Job] = []

    def submit(self, job: _executors.Job) -> None:
        self.jobs.append(job)

    def end(self, ran: float) -> None:
        job = self.jobs.pop(0)
        job.ran = ran
        self.sink(job, (tv_abc.Outcome.OK, job.attempt, job.shared, None, "w1"))


async def test_run_time_measured_in_the_worker_excludes_its_start_up() -> None:
    """An executor that measured the job in its worker (``job.ran``, real seconds): that
    is the attempt's run time, and the task started then, not at its dispatch; the time
    before (a worker starting, a queue) is waiting. On a mock clock it is not used."""
    ex = Measured()
    async with tv.Supervisor(executors={"m": ex}, aloops=()) as sup:
        a = sup.submit(abs, 1, name="a", runs_on="m")
        b = sup.submit(abs, 2, name="b", runs_on="m")
        await end_of_turn()
        ex.end(3600.0)  # (more than has passed: the start stays the dispatch)
        ex.end(0.0)  # it began as it ended
        ra, rb = await a, await b
    assert ra.run_time == 3600.0 and rb.run_time == 0.0
    # b began as it ended, after a ended: not at its dispatch, which came before both
    assert rb.started_at is not None and ra.finished_at <= rb.started_at <= rb.finished_at
    assert ra.started_at is not None and ra.started_at < ra.finished_at
    clock = MockClock(autojump=False)
    ex = Measured()
    async with tv.Supervisor(executors={"m": ex}, aloops=(), clock=clock) as sup:
        h = sup.submit(abs, 1, name="t", runs_on="m")
        await end_of_turn()
        clock.advance(100.0)
        ex.end(5.0)
        res = await h
    assert res.run_time == 100.0 and res.wait_time == 0.0  # mock time, not real seconds


@pytest.mark.slow
async def test_process_task_run_time_is_its_time_in_the_worker() -> None:
    """The process pool measures each job in its worker: the task's run_time covers the
    function's own run (what it measured itself) and never the worker's start, which
    happens after the dispatch (workers start on demand)."""
    from .workloads import timed

    async with tv.Supervisor(processes=1, aloops=()) as sup:
        res = await sup.submit(timed, runs_on="process")
        (dispatched,) = [e.time for e in sup.story(res.name) if e.kind == "dispatched"]
    assert res.ok and res.started_at is not None and res.ret is not None
    # it started after its dispatch: the worker was spawned in between, and that is
    # waiting (before, started_at was the dispatch and run_time included the spawn)
    assert sup.clock.to_wall(dispatched) < res.started_at.timestamp()
    own, _pid = res.ret
    # physical order, not a tolerance: the function ran inside the measured interval,
    # and the measured interval ended before the supervisor heard of it
    assert own <= res.run_time
    assert res.run_time <= (res.finished_at - res.started_at).total_seconds() + 1e-6


async def test_a_burst_of_completions_admits_once_with_every_slot_it_freed() -> None:
    """Completions that reach the loop together are finished first and admitted once:
    the higher tier's head gets the two slots they freed together (admitting after each
    would give the first freed slot to the low task, and the high one would wait)."""
    go_a, go_b, both_run = asyncio.Event(), asyncio.Event(), asyncio.Event()
    started: list[str] = []

    async def hold(ev: asyncio.Event) -> None:
        started.append("held")
        if len(started) == 2:
            both_run.set()
        await ev.wait()

    async def note(name: str) -> str:
        started.append(name)
        return name

    async with tv.Supervisor(pool_size=2, aloops=()) as sup:
        a = sup.submit(hold, go_a, runs_on="main", name="a")
        b = sup.submit(hold, go_b, runs_on="main", name="b")
        await both_run.wait()  # (the pool is full)
        low = sup.submit(note, "low", runs_on="main", tier="low", name="low")
        big = sup.submit(note, "big", runs_on="main", tier="high", weight=2, name="big")
        assert sup.task_state("low") is State.QUEUED and sup.task_state("big") is State.QUEUED
        go_a.set()
        go_b.set()  # (both end in one turn of the loop: one burst)
        for h in (a, b, low, big):
            assert (await h).ok
    assert started == ["held", "held", "big", "low"]


# ------------------------------------------------ coroutine jobs start in slices (W3)

SLICE = _executors.START_SLICE


@pytest.mark.parametrize("runs_on", ["main", "aloop"])
async def test_a_burst_of_coroutine_tasks_starts_a_slice_per_turn_of_the_loop(
    runs_on: str,
) -> None:
    """200 coroutine tasks at once: each turn of the loop they run on creates at most
    START_SLICE asyncio Tasks, and runs their first steps before it creates more (it
    created all 200 before the first one ran); they start in the order submitted."""
    n = 200 if SLICE < 100 else 4 * SLICE
    seen: list[tuple[int, int]] = []  # (task, asyncio Tasks alive at its first step)

    async def first_step(i: int) -> None:
        seen.append((i, len(asyncio.all_tasks())))

    async def baseline() -> int:
        return len(asyncio.all_tasks())

    async with tv.Supervisor(aloops=("default",) if runs_on == "aloop" else ()) as sup:
        before = cast(int, (await sup.submit(baseline, runs_on=runs_on)).ret)
        report = await sup.gather(
            tv.Task(first_step, (i,), name=f"c{i}", runs_on=runs_on) for i in range(n)
        )
    assert report.ok
    assert [i for i, _ in seen] == list(range(n))
    most = max(alive for _, alive in seen)
    assert most - before <= SLICE, (most, before)  # (n + before without slices)


async def test_a_main_loop_job_cancelled_before_its_turn_never_starts() -> None:
    release = asyncio.Event()
    started: list[int] = []

    async def held(i: int) -> None:
        started.append(i)
        await release.wait()

    async with tv.Supervisor(aloops=()) as sup:
        handles = [sup.submit(held, i, runs_on="main") for i in range(SLICE + 10)]
        last = handles[-1]
        last.cancel()  # (same turn: its job waits in the main executor's inbox)
        res = await last
        assert res.state is State.CANCELLED, res
        release.set()
        assert all([(await h).ok for h in handles[:-1]])
    assert started == list(range(SLICE + 9))


def test_an_inbox_with_a_limit_drains_a_slice_per_turn_and_flushes_everything() -> None:
    loop = asyncio.new_event_loop()
    try:
        drained: list[list[int]] = []
        inbox = _executors.Inbox(loop, drained.append, 3)
        for i in range(8):
            inbox.put_local(i)
        loop.call_soon(loop.stop)  # (after the first drain: one turn)
        loop.run_forever()
        assert drained == [[0, 1, 2]]
        inbox.flush()
        assert drained == [[0, 1, 2], [3, 4, 5], [6, 7]]
    finally:
        loop.close()


async def test_a_main_loop_jobs_timeout_runs_from_its_start_not_its_turn_in_the_queue() -> None:
    """A job waiting in the main executor's inbox has not started: its timeout must not
    run yet. The first job of a burst moves the clock 10 s on its first step; the jobs
    of the next slice (timeout 5 s) start after that and end DONE, not TaskTimeout."""
    clock = MockClock(autojump=False)

    async def first() -> None:
        clock.advance(10.0)

    async def quick(i: int) -> int:
        return i

    async with tv.Supervisor(aloops=(), clock=clock) as sup:
        batch: list[tv.Task[Any]] = [tv.Task(first, name="first", runs_on="main")]
        batch += [
            tv.Task(quick, (i,), name=f"q{i}", runs_on="main", timeout=5.0)
            for i in range(2 * SLICE)
        ]
        report = await sup.gather(batch)
    late = [r for r in report.results if r.name != "first" and int(r.name[1:]) >= SLICE]
    assert late and all(r.state is State.DONE for r in late), [
        (r.name, r.state) for r in report.results if not r.ok
    ]


def test_a_job_the_loop_refuses_to_start_fails_alone() -> None:
    """``create_task`` raising (a task factory of the loop's) fails that job, reported;
    the rest of its slice starts."""
    loop = asyncio.new_event_loop()
    try:

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> Any:
            if "refused" in repr(coro):
                raise RuntimeError("no")  # (the executor closes the coroutine)
            return asyncio.Task(coro, loop=loop, **kw)

        loop.set_task_factory(factory)
        reports: dict[str, Any] = {}
        done = loop.create_future()

        def sink(job: Any, result: Any) -> None:
            reports[job.name] = result[0]
            if len(reports) == 3 and not done.done():
                done.set_result(None)

        async def ok() -> None:
            pass

        async def refused() -> None:
            pass

        ex = _executors.MainExecutor(loop)
        ex.start(sink)
        for name, fn in (("a", ok), ("b", refused), ("c", ok)):
            loop.call_soon(ex.submit, _executors.Job(name, fn, (), {}, None, "main"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loop.run_until_complete(asyncio.wait_for(done, 10))  # (a guard: not a hang)
            gc.collect()
        outcome = _executors.Outcome
        assert reports == {"a": outcome.OK, "b": outcome.ERROR, "c": outcome.OK}
        assert not [w for w in caught if "never awaited" in str(w.message)]  # (closed)
    finally:
        loop.close()


async def test_mock_clock_autojump_waits_while_a_burst_is_still_starting() -> None:
    """A burst longer than autojump's idle turns (IDLE_TURNS_OPAQUE on uvloop, whose run
    queue it cannot see) is not idle: the time must not jump to a pending deadline (a
    delayed task's) while coroutines of the burst are still waiting for their turn."""
    from taskvisor.testing import IDLE_TURNS_OPAQUE

    clock = MockClock()
    release, all_started = asyncio.Event(), asyncio.Event()
    n = (IDLE_TURNS_OPAQUE + 5) * SLICE
    started = 0

    async def waiter() -> None:
        nonlocal started
        started += 1
        if started == n:
            all_started.set()
        await release.wait()

    async with tv.Supervisor(aloops=(), clock=clock) as sup:
        later = sup.submit(noop, runs_on="main", delay=1.0)  # (the pending deadline)
        burst = sup.run(tv.Task(waiter, name=f"w{i}", runs_on="main") for i in range(n))
        await all_started.wait()
        assert clock.jumps == 0, "the time jumped while the burst was starting"
        release.set()
        assert all([r.ok async for r in burst])
        assert (await later).ok


# ------------------------------------------------ an aloop is handed a window of jobs (W3)

WINDOW = _engine.ALOOP_WINDOW


async def _block(aloop: tv.Aloop, gate: threading.Event) -> None:
    """Block ``aloop``'s thread (a plain function runs inline there) until ``gate``."""
    blocked = threading.Event()

    def stall() -> None:
        blocked.set()
        gate.wait()

    aloop.loop.call_soon_threadsafe(stall)
    await asyncio.to_thread(blocked.wait)


async def _event_on(aloop: tv.Aloop) -> asyncio.Event:
    """An ``asyncio.Event`` made on ``aloop``'s loop (for its coroutines to wait on)."""

    async def make() -> asyncio.Event:
        return asyncio.Event()

    return await asyncio.wrap_future(aloop.submit_coro(make()))


async def test_an_aloop_is_handed_at_most_a_window_of_jobs_it_has_not_started() -> None:
    """A burst of 4 windows and more: the aloop's inbox never holds more than
    ALOOP_WINDOW jobs (it held the whole burst, each job made at once), the rest wait in
    the engine, yet every task runs at the same time (the window counts jobs not yet
    started, never running ones), and they start in the order submitted."""
    n = 4 * WINDOW + 10
    order: list[int] = []
    queued: list[int] = []  # jobs in the aloop's inbox at each first step
    main_loop = asyncio.get_running_loop()
    all_started = asyncio.Event()
    async with tv.Supervisor(aloops=("default",)) as sup:
        aloop = sup.aloop("default")

        release = await _event_on(aloop)

        async def step(i: int) -> None:
            order.append(i)
            queued.append(len(aloop._inbox or ()))
            if len(order) == n:
                main_loop.call_soon_threadsafe(all_started.set)
            await release.wait()

        stream = sup.run(tv.Task(step, (i,), name=f"s{i}", runs_on="aloop") for i in range(n))
        await all_started.wait()  # (all n wait for release at once)
        aloop.loop.call_soon_threadsafe(release.set)
        assert all([r.ok async for r in stream])
    assert order == list(range(n))
    assert max(queued) <= WINDOW, max(queued)


async def test_a_task_held_back_for_its_aloop_is_cancelled_at_once_and_never_runs() -> None:
    """The aloop's thread is stalled: a window of jobs waits in its inbox, the rest of the
    burst in the engine. Cancelling a held task ends it there and then (no attempt: its
    coroutine never runs), while the aloop is still stalled; the rest run afterwards."""
    ran: list[int] = []
    gate = threading.Event()

    async def work(i: int) -> int:
        ran.append(i)
        return i

    async with tv.Supervisor(aloops=("default",)) as sup:
        await _block(sup.aloop("default"), gate)
        try:
            handles = [
                sup.submit(work, i, runs_on="aloop", name=f"w{i}") for i in range(2 * WINDOW)
            ]
            await end_of_turn()  # (admitted: a window handed to the aloop, the rest held)
            last = handles[-1]
            assert sup.task_state(last.name) is State.RUNNING
            last.cancel()
            assert last.done()  # (it never left: no wait for the stalled aloop)
        finally:
            gate.set()
        res = await last
        assert res.state is State.CANCELLED and res.attempts == 0, res
        assert isinstance(res.error, tv.TaskCancelled)
        assert [(await h).ret for h in handles[:-1]] == list(range(2 * WINDOW - 1))
    assert sorted(ran) == list(range(2 * WINDOW - 1))


async def test_closing_with_cancel_ends_the_tasks_held_back_for_an_aloop() -> None:
    gate = threading.Event()

    async def forever() -> None:
        await asyncio.Event().wait()

    sup = tv.Supervisor(aloops=("default",))
    await sup.start()
    await _block(sup.aloop("default"), gate)
    handles = [sup.submit(forever, runs_on="aloop", name=f"f{i}") for i in range(3 * WINDOW)]
    await end_of_turn()  # (admitted: a window handed to the aloop, the rest held)
    gate.set()
    report = await sup.aclose(cancel=True)
    assert len(report.results) == 3 * WINDOW
    assert all(h.done() and h.result().state is State.CANCELLED for h in handles)


async def test_a_held_back_task_s_timeout_runs_from_its_start() -> None:
    """Held in the engine while the clock moves past its timeout: it has not started,
    so it does not time out."""
    clock = MockClock(autojump=False)
    gate = threading.Event()

    async def quick(i: int) -> int:
        return i

    async with tv.Supervisor(aloops=("default",), clock=clock) as sup:
        await _block(sup.aloop("default"), gate)
        try:
            handles = [
                sup.submit(quick, i, runs_on="aloop", name=f"q{i}", timeout=5.0)
                for i in range(2 * WINDOW)
            ]
            await end_of_turn()  # (admitted: a window handed to the aloop, the rest held)
            clock.advance(10.0)
        finally:
            gate.set()
        results = [await h for h in handles]
    assert all(r.ok for r in results), [r for r in results if not r.ok][:3]


async def test_mock_clock_autojump_waits_while_an_aloop_burst_is_handed_over() -> None:
    """(From a review.) A burst of 6 windows on an aloop, a delayed task pending on the
    main loop: the time must not jump while jobs wait to be started on the aloop's
    thread (it read no time meanwhile; a window refill left 256 jobs unstarted: it
    jumped in most runs)."""
    clock = MockClock()
    main = asyncio.get_running_loop()
    first, all_started = asyncio.Event(), asyncio.Event()
    n = 6 * WINDOW
    started = 0
    async with tv.Supervisor(aloops=("default",), clock=clock) as sup:
        aloop = sup.aloop("default")

        release = await _event_on(aloop)

        async def waiter() -> None:
            nonlocal started
            started += 1
            if started == 1:
                main.call_soon_threadsafe(first.set)
            if started == n:
                main.call_soon_threadsafe(all_started.set)
            await release.wait()

        burst = sup.run(tv.Task(waiter, name=f"w{i}", runs_on="aloop") for i in range(n))
        await first.wait()  # (the aloop's thread is up)
        later = sup.submit(noop, runs_on="main", delay=1.0)  # (the pending deadline)
        await all_started.wait()
        jumps = clock.jumps
        aloop.loop.call_soon_threadsafe(release.set)
        assert all([r.ok async for r in burst])
        assert (await later).ok
    assert jumps == 0, "the time jumped while the aloop burst was being handed over"
    assert not clock._busy_checks  # (the closed supervisor's check is gone)


async def test_statistics_count_the_tasks_held_back_for_an_aloop_as_running() -> None:
    gate = threading.Event()

    async def work(i: int) -> int:
        return i

    async with tv.Supervisor(aloops=("default",)) as sup:
        await _block(sup.aloop("default"), gate)
        try:
            hs = [sup.submit(work, i, runs_on="aloop", name=f"w{i}") for i in range(2 * WINDOW)]
            await end_of_turn()
            st = sup.statistics()
            hs[-1].cancel()  # (a held one: it no longer counts)
            after = sup.statistics()
        finally:
            gate.set()
        for h in hs:
            await h
        end = sup.statistics()
    assert st.running["aloop:default"] == st.tasks[State.RUNNING] == 2 * WINDOW
    assert after.running["aloop:default"] == 2 * WINDOW - 1
    assert end.running["aloop:default"] == 0


@pytest.mark.parametrize("seed", range(4))
async def test_small_windows_with_retries_and_cancels_from_two_threads(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(From a review.) Windows of 1-7 jobs, two aloops, retries, cancels from the loop
    and from another thread: every task ends once; one cancelled while held (no attempt)
    never ran; nothing stays held or counted as running."""
    import random

    rnd = random.Random(seed)
    monkeypatch.setattr(_engine, "ALOOP_WINDOW", rnd.choice([1, 2, 3, 7]))
    calls: dict[str, int] = {}

    async def work(i: int, fail_first: bool) -> int:
        calls[f"t{i}"] = calls.get(f"t{i}", 0) + 1
        if fail_first and calls[f"t{i}"] == 1:
            raise ValueError(i)
        await end_of_turn()  # (one step more: a cancel may land while it runs)
        return i

    n = 600
    async with tv.Supervisor(aloops=("a", "b")) as sup:
        hs = []
        for i in range(n):
            on = rnd.choice(["aloop:a", "aloop:b"])
            fail = rnd.random() < 0.3
            hs.append(sup.submit(work, i, fail, runs_on=on, name=f"t{i}", retries=1, timeout=60))
            if rnd.random() < 0.05:
                await end_of_turn()
        for h in rnd.sample(hs, 60):
            h.cancel()
        victims = rnd.sample(hs, 60)

        def cancel_victims() -> None:
            for h in victims:
                h.cancel()

        await asyncio.to_thread(cancel_victims)
        results = [await h for h in hs]
        st = sup.statistics()
        assert st.tasks[State.RUNNING] == 0
        assert not any(st.running.values()), st.running
        assert not any(w.held for w in sup._windows.values())
    for r in results:
        assert r.state in (State.DONE, State.CANCELLED, State.FAILED), r
        if r.state is State.FAILED:  # (cancelled while its first attempt failed: no retry)
            assert r.attempts == 1 and isinstance(r.error, ValueError), r
        if r.attempts == 0:
            assert r.state is State.CANCELLED and r.name not in calls, r
        if r.state is State.DONE:
            assert calls[r.name] == r.attempts


async def test_a_dispatch_held_as_the_aloop_frees_its_window_is_handed_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """(From a review.) The window looks full when the Dispatch is held, and the aloop has
    meanwhile started everything it had (so it saw nothing held and sends no wake-up):
    the carry-out's own re-check of the count must hand it over."""

    async def work() -> int:
        return 1

    async with tv.Supervisor(aloops=("default",)) as sup:
        real_room, calls = sup._room, 0

        def room(target: str) -> int:
            nonlocal calls
            calls += 1
            return 0 if calls == 1 else real_room(target)  # (full at the check)

        monkeypatch.setattr(sup, "_room", room)
        handle = sup.submit(work, name="a", runs_on="aloop")
        assert (await handle).state is State.DONE
