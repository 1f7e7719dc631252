"""Service mode: ``sup.call`` (one task, its value or its exception, cancelled with its
awaiter) and ``grace`` (how long leaving the block waits before it cancels)."""

from __future__ import annotations

import asyncio
import threading

import pytest

import taskvisor as tv
from taskvisor import State
from taskvisor._engine import UNPIN_BATCH
from taskvisor.testing import MockClock

from .workloads import add

WAIT = 30.0  # a bound on a wait that must end long before (never a synchronisation)


async def double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


def boom(msg: str) -> None:
    raise ValueError(msg)


async def test_call_returns_the_value_of_a_function_or_a_coroutine() -> None:
    async with tv.Supervisor(aloops=("default",)) as sup:
        assert await sup.call(add, 2, 3) == 5
        assert await sup.call(double, 21) == 42  # on the default aloop
        assert await sup.call(double, 4, runs_on="main", tier="high") == 8
        assert await sup.call(tv.Task(add, (1, 1), name="spec")) == 2


async def test_call_raises_the_tasks_own_exception_with_its_traceback() -> None:
    async with tv.Supervisor(aloops=()) as sup:
        with pytest.raises(ValueError, match="broken") as info:
            await sup.call(boom, "broken")
        assert any(f.name == "boom" for f in info.traceback)  # raised where it happened
        with pytest.raises(tv.TaskTimeout):
            await sup.call(asyncio.sleep, 3600, runs_on="main", timeout=0.01)
        with pytest.raises(tv.SpecError, match=r"option 'tire' \(did you mean 'tier'\?\)"):
            await sup.call(add, 1, 2, tire="high")  # a bad option fails at submission


async def test_cancelling_the_awaiter_cancels_a_coroutine_task_and_waits_for_it() -> None:
    started, stopped = asyncio.Event(), asyncio.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            stopped.set()

    async with tv.Supervisor(aloops=()) as sup:
        caller = asyncio.create_task(sup.call(forever, runs_on="main", name="forever"))
        await started.wait()
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert stopped.is_set()  # the task had ended when the awaiter's cancel came out
        assert sup.task_state("forever") is State.CANCELLED


async def test_cancelling_the_awaiter_abandons_a_thread_task() -> None:
    started, gate = threading.Event(), threading.Event()

    def blocked() -> str:
        started.set()
        gate.wait(WAIT)
        return "late"

    try:
        async with tv.Supervisor(aloops=()) as sup:
            caller = asyncio.create_task(sup.call(blocked, name="blocked"))
            await asyncio.to_thread(started.wait, WAIT)
            caller.cancel()
            with (
                pytest.warns(tv.TaskvisorWarning, match="could not be interrupted"),
                pytest.raises(asyncio.CancelledError),
            ):
                await caller
            assert sup.task_state("blocked") is State.CANCELLED
            gate.set()  # the thread returns: closing joins it
    finally:
        gate.set()


async def test_call_belongs_to_the_loop() -> None:
    async with tv.Supervisor(aloops=()) as sup:

        def from_thread() -> None:
            coro = sup.call(add, 1, 2)
            try:
                with pytest.raises(RuntimeError, match="belongs to the supervisor's event loop"):
                    coro.send(None)
            finally:
                coro.close()

        await asyncio.to_thread(from_thread)


async def test_grace_waits_that_long_then_cancels_running_work() -> None:
    clock = MockClock()
    quick_done = asyncio.Event()

    async def quick() -> str:
        await asyncio.sleep(0)
        quick_done.set()
        return "quick"

    async with tv.Supervisor(aloops=(), clock=clock, grace=5.0) as sup:
        slow = sup.submit(asyncio.sleep, 3600, runs_on="main", name="slow")
        fast = sup.submit(quick, runs_on="main", name="fast")
        t0 = clock.now()
    assert (await fast).ret == "quick"
    res = await slow
    assert res.state is State.CANCELLED
    assert "5 s" in str(res.error)  # "aclose waited 5 s"
    assert clock.now() - t0 == pytest.approx(5.0)  # mock time: no real wait


async def test_grace_none_waits_for_the_work_and_a_raising_block_cancels_at_once() -> None:
    gate = asyncio.Event()

    async def waits() -> str:
        await gate.wait()
        return "done"

    async with tv.Supervisor(aloops=(), grace=None) as sup:
        h = sup.submit(waits, runs_on="main")
        asyncio.get_running_loop().call_soon(gate.set)
    assert (await h).ret == "done"
    with pytest.raises(KeyError):
        async with tv.Supervisor(aloops=(), grace=3600) as sup:
            h = sup.submit(asyncio.sleep, 3600, runs_on="main")
            raise KeyError("the block failed")
    assert (await h).state is State.CANCELLED


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "5", True])
def test_grace_must_be_seconds(bad: object) -> None:
    with pytest.raises(tv.SpecError, match="grace"):
        tv.Supervisor(grace=bad)  # type: ignore[arg-type]


def noop() -> None:
    pass


async def test_a_long_running_supervisor_keeps_flat_memory_by_default() -> None:
    async with tv.Supervisor(aloops=()) as sup:
        for batch in range(6):  # 12,000 tasks, in batches as a service would see them
            report = await sup.gather(
                [tv.Task(noop, name=f"t{batch}-{i}", runs_on="main") for i in range(2_000)]
            )
            assert report.ok
        assert len(sup.report()) == 10_000  # the last 10,000 ended tasks
        assert len(sup._recs) <= 10_000 and len(sup._planner._tasks) <= 10_000
        # the oldest were forgotten: their names may be used again
        assert (await sup.submit(noop, name="t0-0", runs_on="main")).ok


# ---------------------------------------------------------------- forgetting ended tasks


async def test_a_fire_and_forget_tasks_name_is_free_again_once_it_has_ended() -> None:
    """A service submitting the same named job again and again, dropping each handle."""
    async with tv.Supervisor(aloops=()) as sup:
        for i in range(3):
            res = await sup.submit(add, i, 1, name="refresh-cache", runs_on="main")
            assert (res.name, res.ret) == ("refresh-cache", i + 1)
        assert [r.ret for r in sup.report()] == [1, 2, 3]  # report() keeps every run
        story = sup.story("refresh-cache")  # the newest task of that name only
        assert story[0].kind == "submitted" and story[-1].detail == "DONE"
        assert len([e for e in story if e.kind == "submitted"]) == 1
        # a gather's tasks have no handles: their names are free once it returned
        assert (await sup.gather([tv.Task(add, (1, 1), name="g", runs_on="main")])).ok
        assert (await sup.gather([tv.Task(add, (2, 2), name="g", runs_on="main")])).ok


async def test_a_task_whose_result_a_pending_task_needs_keeps_its_name() -> None:
    async with tv.Supervisor(aloops=()) as sup:
        a = tv.Task(add, (20, 1), name="a", runs_on="main")
        assert (await sup.submit(a)).ok  # its handle is gone at once
        b = sup.submit(add, a.output, 21, name="b", requires="go", runs_on="main")
        with pytest.raises(tv.DuplicateTaskError, match="'a'"):
            sup.submit(noop, name="a")  # b has not read a's result yet
        sup.provide("go")
        assert (await b).ret == 42
        assert (await sup.submit(add, 1, 2, name="a", runs_on="main")).ret == 3


async def test_old_tasks_are_forgotten_past_the_window_unless_a_handle_holds_them() -> None:
    async with tv.Supervisor(aloops=(), result_buffer=3) as sup:
        kept = sup.submit(noop, name="kept", runs_on="main")
        await kept
        for i in range(6):
            await sup.submit(noop, name=f"n{i}", runs_on="main")
        assert [r.name for r in sup.report()] == ["n3", "n4", "n5"]
        for i in range(3):
            with pytest.raises(KeyError):
                sup.task_state(f"n{i}")  # forgotten: past the window, no handle
        assert sup.task_state("n5") is State.DONE  # recent ones can still be looked up
        assert sup.task_state("kept") is State.DONE  # its handle holds it
        assert len(sup._recs) == 4 and len(sup._planner._tasks) == 4
        del kept
        with pytest.raises(KeyError):
            sup.task_state("kept")
        assert len(sup._recs) == 3 and len(sup._planner._tasks) == 3


async def test_dropped_handles_never_let_records_pile_up() -> None:
    """No lookup ever asks: the engine hears of dropped handles in batches on its own."""
    async with tv.Supervisor(aloops=(), result_buffer=10) as sup:
        for i in range(3 * UNPIN_BATCH):
            await sup.submit(noop, name=f"t{i}", runs_on="main")
            assert len(sup._recs) <= 10 + UNPIN_BATCH + 1
        assert len(sup.report()) == 10


def test_a_handle_dropped_on_another_thread_frees_the_name() -> None:
    with tv.BackgroundSupervisor(aloops=()) as sup:
        errors: list[BaseException] = []

        def client() -> None:
            try:
                for i in range(20):
                    assert sup.submit(add, i, 0, name="job").result(timeout=WAIT).ret == i
            except BaseException as exc:  # (reported below, not lost in the thread)
                errors.append(exc)

        t = threading.Thread(target=client)
        t.start()
        t.join()
        assert errors == []
        assert sup.call(add, 1, 1, name="job") == 2
