"""One record per task (issue 13): the planner keeps the supervisor's own record of each
task, and a coroutine task in flight costs no wrapper object of ours beside its ``Job``.

Every long-lived object per task is walked by each full pass of the cyclic GC; these tests
keep the count from creeping back. They count objects by type after ``gc.collect()``,
with the tasks held at a known point by events (never by time).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import threading
import weakref
from collections import Counter
from typing import Any

import pytest

import taskvisor as tv
from taskvisor._delivery import Record
from taskvisor._job import Job
from taskvisor._planner import _T

from .conftest import noop

N = 200


def _count(*types: type) -> Counter[type]:
    gc.collect()
    wanted = set(types)
    return Counter(type(o) for o in gc.get_objects() if type(o) in wanted)


def _same_records(sup: tv.Supervisor, names: list[str]) -> None:
    planner_recs = sup._planner._tasks  # (a white-box test: the point is the identity)
    for name in names:
        rec = sup._recs[name]
        assert type(rec) is Record
        assert planner_recs[name] is rec, name


async def test_the_planner_keeps_the_supervisors_record() -> None:
    release = asyncio.Event()

    async def blocker() -> None:
        await release.wait()

    async with tv.Supervisor(pool_size=1, aloops=()) as sup:
        first = sup.submit(blocker, runs_on="main", name="blocker")
        queued = [sup.submit(noop, name=f"q{i}") for i in range(3)]  # (pool full: queued)
        stream = sup.run(tv.Task(noop, name=f"b{i}") for i in range(3))  # (one batch)
        _same_records(sup, ["blocker", "q0", "q1", "q2", "b0", "b1", "b2"])
        assert sup.task_state("q0") is tv.State.QUEUED
        release.set()
        assert (await first).ok
        for h in queued:
            assert (await h).ok
        assert [res.ok async for res in stream] == [True] * 3
        _same_records(sup, ["q0", "b2"])  # (and still the same once ended)


async def test_a_submit_from_another_thread_hands_its_record_to_the_planner() -> None:
    async with tv.Supervisor(aloops=()) as sup:
        handles: list[Any] = []
        t = threading.Thread(target=lambda: handles.append(sup.submit(noop, name="far")))
        t.start()
        await asyncio.to_thread(t.join)
        with sup._engine:  # (entering takes in what other threads queued)
            _same_records(sup, ["far"])
        assert (await handles[0]).ok


async def test_pending_tasks_cost_one_record_each_and_no_planner_record() -> None:
    release = asyncio.Event()

    async def blocker() -> None:
        await release.wait()

    async with tv.Supervisor(pool_size=1, aloops=()) as sup:
        sup.submit(blocker, runs_on="main")
        before = _count(Record, _T, Job)
        handles = [sup.submit(noop) for _ in range(N)]
        grew = _count(Record, _T, Job) - before
        assert grew == Counter({Record: N}), grew  # no _T of the planner's, no Job yet
        release.set()
        for h in handles:
            assert (await h).ok


async def test_an_awaited_handle_has_one_future_beside_its_record_until_its_task_ends() -> None:
    """``await handle`` makes one future per task, kept in the engine's map (not a slot
    of every record: 8 bytes of every pending task), shared by every awaiter, popped when
    the task ends; a task nobody awaits never has one."""
    release = asyncio.Event()

    async def blocker() -> int:
        await release.wait()
        return 7

    assert "fut" not in Record.__slots__
    async with tv.Supervisor(aloops=()) as sup:
        handle = sup.submit(blocker, runs_on="main")
        entered = [asyncio.Event(), asyncio.Event()]

        async def waiter(i: int) -> tv.TaskRes[int]:
            entered[i].set()
            return await handle  # (in the same step as the set: done before we wake)

        waiters = [asyncio.create_task(waiter(i)) for i in (0, 1)]
        for ev in entered:
            await ev.wait()
        assert list(sup._futures) == [sup._recs[handle.name]]  # one, shared
        waiters[0].cancel()  # one awaiter gone: the future stays for the other
        gone: list[Any] = await asyncio.gather(waiters[0], return_exceptions=True)
        assert isinstance(gone[0], asyncio.CancelledError)
        assert len(sup._futures) == 1
        release.set()
        assert (await waiters[1]).ret == 7
        assert sup._futures == {}  # popped when the task ended
        assert (await handle).ret == 7  # ended: no future made
        assert (await sup.gather([tv.Task(noop)])).ok  # nobody awaits a handle
        assert sup._futures == {}


async def test_a_gather_keeps_the_results_of_its_ended_tasks_not_their_records() -> None:
    """A task of a ``gather`` that ended can be forgotten inside the batch (past the
    ``result_buffer`` window): the gather keeps its ``TaskRes``, not its record, and still
    returns every result in submission order."""
    release = asyncio.Event()

    async def last() -> str:
        await release.wait()
        return "last"

    others_ended = asyncio.Event()

    class Ended:
        """An instrument: its hook runs once the engine has finished the task."""

        count = 0

        def task_finished(self, res: tv.TaskRes[Any]) -> None:
            self.count += 1
            if self.count == N:
                others_ended.set()

    async with tv.Supervisor(aloops=(), result_buffer=1, instruments=[Ended()]) as sup:
        batch: list[tv.Task[Any]] = [tv.Task(noop, name=f"t{i}", runs_on="main") for i in range(N)]
        batch.insert(N // 2, tv.Task(last, name="last", runs_on="main"))
        waiting = asyncio.ensure_future(sup.gather(batch))
        await others_ended.wait()
        assert sup.report().pending == ("last",)
        # the N that ended: one record kept for result_buffer=1, and the pending one
        assert _count(Record)[Record] == 2
        release.set()
        report = await waiting
    assert [r.name for r in report] == [t.name for t in batch]
    assert report["last"].ret == "last" and report.ok


async def test_a_running_coroutine_has_no_wrapper_of_ours_beside_its_job() -> None:
    release = asyncio.Event()
    started = 0
    all_started = asyncio.Event()

    async def waits() -> None:
        nonlocal started
        started += 1
        if started == N:
            all_started.set()
        await release.wait()

    async with tv.Supervisor(aloops=()) as sup:
        before = _count(Record, _T, Job, functools.partial)
        handles = [sup.submit(waits, runs_on="main") for _ in range(N)]
        await all_started.wait()
        grew = _count(Record, _T, Job, functools.partial) - before
        # its asyncio Task's done-callback is the Job itself (Job.__call__): no partial
        assert grew == Counter({Record: N, Job: N}), grew
        release.set()
        for h in handles:
            assert (await h).ok


async def test_a_dependency_item_has_collections_only_when_it_needs_them() -> None:
    # one provider is held as itself, no failures as the shared empty list; a set and a
    # list of its own appear only with a second provider and a first failure
    from taskvisor._planner import _NO_PARENTS
    from taskvisor._spec import OutputItem

    async with tv.Supervisor(aloops=()) as sup:
        sup.pause()
        a = tv.Task(noop, name="a", provides="x")
        b = tv.Task(noop, name="b", provides="x")
        users = [tv.Task(noop, (a.output,), name=f"u{i}", requires="x") for i in range(2)]
        stream = sup.run([a, *users])
        items = sup._planner._items
        out, x = items[OutputItem("a")], items["x"]
        assert out.providers is sup._recs["a"] and x.providers is sup._recs["a"]
        assert out.failed is _NO_PARENTS and x.failed is _NO_PARENTS
        assert out.waiters == [sup._recs["u0"], sup._recs["u1"]]
        second = sup.submit(b)
        assert isinstance(x.providers, set) and set(x.pending()) == {sup._recs["a"], sup._recs["b"]}
        sup.resume()
        assert [r.ok async for r in stream] == [True] * 3
        assert (await second).ok
        sup._planner.validate_state()  # (the shared empty list is still empty)


class _Value:
    """A return value whose lifetime the test watches (weakref)."""


async def test_a_task_past_its_wait_alarm_is_not_kept_alive_by_the_alarm() -> None:
    # a task queued long enough to get a wait alarm (in an hour) runs at once after;
    # once it is forgotten, nothing of the planner's may keep its record, and with it
    # its return value, alive until the alarm time
    refs: list[weakref.ref[_Value]] = []

    def make() -> _Value:
        value = _Value()
        refs.append(weakref.ref(value))
        return value

    gate = asyncio.Event()

    async def blocker() -> None:
        await gate.wait()

    async with tv.Supervisor(
        pool_size=1, result_buffer=1, wait_warning=3600, aloops=(), threads=1
    ) as sup:
        first = sup.submit(blocker, runs_on="main")
        held = sup.submit(make, name="held")
        assert sup.task_state("held") is tv.State.QUEUED  # (its alarm is armed)
        gate.set()
        assert (await first).ok
        res = await held
        assert isinstance(res.ret, _Value) and sup._planner._alarms
        del res, held  # (no handle: it may be forgotten)
        for i in range(3):  # past the result_buffer window
            assert (await sup.submit(noop, name=f"after{i}")).ok
        with sup._engine:
            sup._unpin()  # (dropped handles are told in batches: tell them now)
        gc.collect()
        assert "held" not in sup._recs
        assert refs[0]() is None, gc.get_referrers(refs[0]())


async def test_one_map_of_records_by_name_the_planners() -> None:
    """The engine keeps no map of its own: it reads the planner's, so a task the planner
    forgets is gone for the engine at once, and the planner emits no ``Forget`` for it."""
    async with tv.Supervisor(result_buffer=1, aloops=()) as sup:
        assert sup._recs is sup._planner.tasks
        first = sup.submit(noop, name="first")
        await first
        del first  # (a live handle keeps its task)
        await sup.submit(noop, name="second")  # "first" past the window (size 1) ...
        with pytest.raises(KeyError, match="'first'"):
            sup.task_state("first")  # ... forgotten once its handle is gone
        assert "first" not in sup._recs
        with pytest.raises(KeyError, match="'first'"):
            sup.cancel("first")


async def test_a_parent_forgotten_as_its_child_starts_still_gives_it_value_and_shared() -> None:
    """result_buffer=1: ``a`` is past the window and has no handle, so the planner forgets
    it in the very call that starts its consumer ``b`` (its last consumer). ``Dispatch(b)``
    carries a's record: ``b`` gets a's value and its ``shared`` all the same."""
    gate = asyncio.Event()

    async def make(shared: dict[str, Any]) -> int:
        shared["from_a"] = 1
        return 5

    async def hold() -> None:
        await gate.wait()

    def plus_one(x: int, shared: dict[str, Any]) -> tuple[int, int]:
        return x + 1, shared["from_a"]

    async with tv.Supervisor(result_buffer=1, aloops=()) as sup:
        a = sup.submit(make, name="a", runs_on="main")
        held = sup.submit(hold, name="held", runs_on="main", provides="go")
        b = sup.submit(plus_one, a.output, name="b", requires="go", runs_on="main")
        await a
        await sup.submit(noop, name="later")  # "a" past the window (size 1)
        del a
        assert sup.task_state("a") is tv.State.DONE  # (kept: b still needs its value)
        gate.set()
        await held
        res = await b
        assert (res.state, res.ret) == (tv.State.DONE, (6, 1))
        assert "a" not in sup._planner  # forgotten when b started, as the test means


def test_a_coroutine_job_lets_go_of_its_asyncio_task_as_it_ends() -> None:
    """The done-callback drops the job's reference to its asyncio Task: an ended Task
    (its coroutine, Context, weak reference) dies then, not when the supervisor takes in
    the report, which a burst of coroutine tasks on an aloop delays until the supervisor
    has dispatched the whole burst (W3 aloop 22 -> 17.5 µs per task)."""
    from taskvisor._executors import _start_coro
    from taskvisor._job import Outcome

    async def seven() -> int:
        return 7

    loop = asyncio.new_event_loop()
    try:
        reported = loop.create_future()

        def sink(job: Job, result: Any) -> None:
            reported.set_result((job.handle is None, result))  # (let go of by then?)

        job = Job("seven", seven, (), {}, None, "main")
        _start_coro(job, loop, sink, "main")
        task = weakref.ref(job.handle)
        let_go, (outcome, ret, *_) = loop.run_until_complete(reported)
        assert (outcome, ret) == (Outcome.OK, 7)
        assert let_go
        assert job.handle is None and task() is None  # (gone by reference count)
    finally:
        loop.close()
