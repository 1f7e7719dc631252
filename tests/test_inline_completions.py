"""Pool threads that handle their own completions (``Supervisor._sink``).

A thread task that succeeds is finished by its own pool thread, under the supervisor's
engine lock, and the next thread task it makes ready is started right there; futures,
listeners and everything else the loop owns are queued to the loop. These tests pin
where each dispatch happens (a spy on the thread pool's ``submit``) and that results,
streams, reports and closing stay exactly as they are on the loop path.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

import taskvisor as tv
from taskvisor import State, _executors
from taskvisor.testing import MockClock

from .conftest import end_of_turn
from .workloads import add


def plus_one(x: int) -> int:
    return x + 1


def zero() -> int:
    return 0


class SubmitSpy:
    """Records, for every job handed to the thread pool, the thread that handed it."""

    def __init__(self) -> None:
        self.by: dict[str, str] = {}

    def wrap(self, real: Any) -> Any:
        def submit(pool: _executors.ThreadPool, job: _executors.Job) -> None:
            self.by[job.name] = threading.current_thread().name
            real(pool, job)

        return submit


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> SubmitSpy:
    s = SubmitSpy()
    monkeypatch.setattr(_executors.ThreadPool, "submit", s.wrap(_executors.ThreadPool.submit))
    return s


def blocked_on(gate: threading.Event, value: int = 41) -> Callable[[], int]:
    """A thread-task function that returns ``value`` once the test opens ``gate``."""

    def blocked() -> int:
        gate.wait()
        return value

    return blocked


def _blocked_then_child(gate: threading.Event) -> tuple[tv.Task[int], tv.Task[int]]:
    a = tv.Task(blocked_on(gate), name="a", runs_on="thread")
    b = tv.Task(plus_one, (a.output,), name="b", runs_on="thread")
    return a, b


async def test_the_pool_thread_that_finishes_a_task_starts_its_child(spy: SubmitSpy) -> None:
    gate = threading.Event()
    a, b = _blocked_then_child(gate)
    async with tv.Supervisor(threads=2, aloops=()) as sup:
        ha, hb = sup.submit(a), sup.submit(b)
        await end_of_turn()  # a is dispatched
        gate.set()  # the loop does nothing else until b's result: the engine lock is free
        rb = await hb
        ra = await ha
    assert (ra.state, ra.ret, rb.state, rb.ret) == (State.DONE, 41, State.DONE, 42)
    assert spy.by["a"] == threading.current_thread().name  # submitted from the loop
    assert spy.by["b"].startswith("taskvisor-thread-")  # started by a's pool thread
    assert rb.wait_time >= 0 and rb.started_at is not None
    assert ra.finished_at <= rb.started_at <= rb.finished_at


async def test_with_a_mock_clock_every_dispatch_stays_on_the_loop(spy: SubmitSpy) -> None:
    gate = threading.Event()
    a, b = _blocked_then_child(gate)
    async with tv.Supervisor(threads=2, aloops=(), clock=MockClock()) as sup:
        ha, hb = sup.submit(a), sup.submit(b)
        gate.set()
        assert (await hb).ret == 42 and (await ha).ret == 41
    assert spy.by["a"] == spy.by["b"] == threading.current_thread().name


async def test_live_gates_keep_every_dispatch_on_the_loop(spy: SubmitSpy) -> None:
    from taskvisor.testing import FakeSampler

    gate = threading.Event()
    a, b = _blocked_then_child(gate)
    async with tv.Supervisor(threads=2, aloops=(), cpu_limit="90%", sampler=FakeSampler()) as sup:
        ha, hb = sup.submit(a), sup.submit(b)
        gate.set()
        assert (await hb).ret == 42 and (await ha).ret == 41
    assert spy.by["b"] == threading.current_thread().name


def _chain(prefix: str, n: int, fail_at: int | None = None) -> list[tv.Task[int]]:
    tasks = [tv.Task(zero, name=f"{prefix}0", runs_on="thread")]
    for i in range(1, n):
        fn: Any = add if i == fail_at else plus_one
        args = (tasks[-1].output, "not a number") if i == fail_at else (tasks[-1].output,)
        tasks.append(tv.Task(fn, args, name=f"{prefix}{i}", runs_on="thread"))
    return tasks


async def test_many_chains_at_once_each_task_ends_once_with_its_value() -> None:
    """8 threads, 12 chains of 40 through run(), gather() and handles at once, one chain
    failing half-way: every task ends exactly once, with the value or the error the
    loop path gives."""
    chains = [_chain(f"c{k}-", 40, fail_at=20 if k == 3 else None) for k in range(12)]
    seen: dict[str, tv.TaskRes[Any]] = {}

    async def run_all() -> tv.RunReport:
        async with tv.Supervisor(threads=8, aloops=()) as sup:
            handles = [sup.submit(t) for t in chains[0]]
            report = await sup.gather([t for c in chains[1:6] for t in c])
            async for res in sup.run([t for c in chains[6:] for t in c]):
                assert res.name not in seen
                seen[res.name] = res
                sup.report()  # reading while pool threads finish tasks
                sup.statistics()
            for h in handles:
                res = await h
                assert res.name not in seen
                seen[res.name] = res
        return report

    with pytest.warns(tv.TaskvisorWarning, match="c3-20"):
        report = await run_all()
    for res in report:
        assert res.name not in seen
        seen[res.name] = res
    assert len(seen) == 12 * 40
    for k, chain in enumerate(chains):
        for i, t in enumerate(chain):
            res = seen[t.name]
            if k == 3 and i == 20:
                assert res.state is State.FAILED and isinstance(res.error, TypeError)
            elif k == 3 and i > 20:
                assert res.state is State.SKIPPED
                assert isinstance(res.error, tv.DependencyError)
            else:
                assert (res.state, res.ret, res.attempts) == (State.DONE, i, 1), res
                assert res.runs_on == "thread" and res.worker is not None


async def test_closing_waits_for_a_chain_that_flows_on_pool_threads() -> None:
    chain = _chain("x", 200)
    sup = tv.Supervisor(threads=4, aloops=())
    await sup.start()
    handles = [sup.submit(t) for t in chain]
    first = await handles[0]
    assert first.ret == 0
    await sup.aclose()  # wait=True: the rest of the chain runs to its end
    results = [h.result() for h in handles]
    assert [r.ret for r in results] == list(range(200))
    assert all(r.state is State.DONE for r in results)
    assert sup.statistics().tasks[State.DONE] == 200


# ------------------------------------------------------------------ regressions (review)


class DeferSpy:
    """Set when a pool thread, finishing a task itself, has queued work for the loop."""

    def __init__(self) -> None:
        self.queued = threading.Event()

    def wrap(self, real: Any) -> Any:
        def to_loop(sup: tv.Supervisor, what: object, arg: Any) -> None:
            real(sup, what, arg)
            self.queued.set()

        return to_loop


@pytest.fixture
def deferred(monkeypatch: pytest.MonkeyPatch) -> DeferSpy:
    s = DeferSpy()
    monkeypatch.setattr(tv.Supervisor, "_to_loop", s.wrap(tv.Supervisor._to_loop))
    return s


async def test_a_cancel_right_after_an_inline_finish_is_not_lost(deferred: DeferSpy) -> None:
    """a (thread) finishes on its pool thread, whose planner answer, run c on the loop, is
    queued for the loop. A cancel of c before the loop ran it must still cancel c."""
    gate = threading.Event()
    blocked = blocked_on(gate)

    async def child(x: int) -> int:
        await asyncio.Event().wait()  # never ends by itself
        return x

    async with tv.Supervisor(threads=2, aloops=()) as sup:
        ha = sup.submit(tv.Task(blocked, name="a", runs_on="thread"))
        hc = sup.submit(tv.Task(child, (tv.ResultRef("a"),), name="c", runs_on="main"))
        await end_of_turn()
        gate.set()
        assert deferred.queued.wait(WAIT)  # the loop thread waits: nothing of it runs
        sup.cancel("c")
        rc = await hc
        assert (await ha).ret == 41
    assert rc.state is State.CANCELLED and isinstance(rc.error, tv.TaskCancelled)


class DeliverSpy:
    """Set when a pool thread, finishing a task itself, has delivered its TaskRes."""

    def __init__(self) -> None:
        self.delivered = threading.Event()

    def wrap(self, real: Any) -> Any:
        def deliver(sup: tv.Supervisor, *args: Any) -> None:
            real(sup, *args)
            if threading.get_ident() != sup._tid:
                self.delivered.set()

        return deliver


async def test_a_forgotten_name_reused_after_an_inline_finish(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """result_buffer=1: a's inline finish forgets p; a new task named p submitted before
    the loop caught up is the new p, and ends with its own result."""
    gate = threading.Event()
    blocked = blocked_on(gate)
    spy = DeliverSpy()
    monkeypatch.setattr(tv.Supervisor, "_deliver", spy.wrap(tv.Supervisor._deliver))

    # one pool thread: p's completion has let go of the engine lock before a runs, so a's
    # own finish takes it (with two, the other thread could still hold it, and a's
    # completion would go to the loop instead)
    async with tv.Supervisor(threads=1, aloops=(), result_buffer=1) as sup:
        assert (await sup.submit(plus_one, 0, name="p", runs_on="thread")).ret == 1
        ha = sup.submit(tv.Task(blocked, name="a", runs_on="thread"))
        await end_of_turn()
        gate.set()
        assert spy.delivered.wait(WAIT)  # a ended on its pool thread; the loop was not told
        hp = sup.submit(plus_one, 10, name="p", runs_on="thread")
        rp = await hp
        assert (await ha).ret == 41
    assert (rp.state, rp.ret) == (State.DONE, 11)


async def test_cancel_all_settles_a_task_a_nested_finish_would_forget() -> None:
    """result_buffer=1, pool_size=1: closing with cancel=True settles the queued y and
    abandons the running x, whose own finish retires y. y still gets its TaskRes."""
    gate = threading.Event()
    blocked = blocked_on(gate, 1)

    sup = tv.Supervisor(threads=2, aloops=(), pool_size=1, result_buffer=1)
    await sup.start()
    started = threading.Event()

    def x_fn() -> int:
        started.set()
        return blocked()

    hx = sup.submit(x_fn, name="x", runs_on="thread")
    hy = sup.submit(plus_one, 1, name="y", runs_on="thread")
    await end_of_turn()
    assert started.wait(WAIT)
    try:
        with pytest.warns(tv.TaskvisorWarning, match="interrupted|abandoned"):
            await sup.aclose(cancel=True)
    finally:
        gate.set()  # the abandoned thread returns
    rx, ry = hx.result(), hy.result()
    assert rx.state is State.CANCELLED and ry.state is State.CANCELLED
    assert isinstance(ry.error, tv.TaskCancelled)


WAIT = 10.0  # a bound on a wait that must end long before (never a synchronisation)


async def test_a_gathered_chain_never_wakes_the_loop_to_deliver_a_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A gather's countdown runs where a task ends (under the engine lock): a pool thread
    that finishes a link itself queues no notification for the loop; the loop is woken
    once, by the last link."""
    from taskvisor import _engine

    notified: list[str] = []
    real = tv.Supervisor._to_loop

    def to_loop(sup: tv.Supervisor, what: object, arg: Any) -> None:
        if what is _engine._NOTIFY:
            notified.append(arg[0].spec.name)
        real(sup, what, arg)

    monkeypatch.setattr(tv.Supervisor, "_to_loop", to_loop)
    async with tv.Supervisor(threads=2, aloops=()) as sup:
        tasks = [tv.Task(plus_one, (0,), name="c0", runs_on="thread")]
        for i in range(1, 50):
            tasks.append(tv.Task(plus_one, (tasks[-1].output,), name=f"c{i}", runs_on="thread"))
        report = await sup.gather(tasks)
    assert report.ok and report["c49"].ret == 50
    assert notified == []
