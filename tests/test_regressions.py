"""Regression tests for bugs an independent review found (each once a hang or a loss)."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import multiprocessing
import threading
import time
from typing import Any, NamedTuple

import anyio
import pytest

import taskvisor as tv
from taskvisor import State, _executors

from .conftest import Gates, end_of_turn, noop
from .workloads import die, identity


async def test_cancel_of_a_main_coroutine_before_its_first_step() -> None:
    async def never_started() -> None:
        raise AssertionError("must not run")

    async with tv.Supervisor() as sup:
        h = sup.submit(never_started, runs_on="main")
        sup.cancel(h)  # its asyncio Task exists but has not taken a step
        res = await h
    assert res.state is State.CANCELLED


async def test_leaving_on_exception_with_unstarted_main_coroutines(gates: Gates) -> None:
    sup = tv.Supervisor()
    with pytest.raises(LookupError):
        async with sup:
            hs = [sup.submit(gates.task, f"g{i}", runs_on="main") for i in range(3)]
            raise LookupError("before any of them took a step")
    assert [(await h).state for h in hs] == [State.CANCELLED] * 3


async def test_fail_fast_cancels_main_coroutines_dispatched_in_the_same_burst() -> None:
    def boom() -> None:
        raise ValueError("x")

    async with tv.Supervisor(fail_fast=True) as sup:
        report = await sup.gather(
            [
                tv.Task(boom, name="boom", provides="p", runs_on="main"),
                tv.Task(noop, name="child", requires="p", runs_on="main"),
                tv.Task(asyncio.Event().wait, name="waits", runs_on="main"),
            ]
        )
    assert report["boom"].state is State.FAILED
    assert report["waits"].state is State.CANCELLED


async def test_an_awaiter_cancelled_does_not_cancel_the_handle(gates: Gates) -> None:
    async with tv.Supervisor() as sup:
        h = sup.submit(gates.task, "slow", runs_on="main")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(h, 0)
        gates.release("slow")
        res = await h
    assert res.ok and res.ret == "slow"


async def test_closing_while_paused_runs_what_was_held() -> None:
    async with tv.Supervisor() as sup:
        sup.pause()
        h = sup.submit(identity, 7)
        assert h.state is State.QUEUED
    assert (await h).ret == 7


async def test_anyio_cancel_scope_around_the_supervisor(gates: Gates) -> None:
    sup = tv.Supervisor()
    with anyio.CancelScope() as scope:
        async with sup:
            h = sup.submit(gates.task, "held", runs_on="main")
            t = sup.submit(identity, 1)
            await gates.wait_started("held")
            scope.cancel()  # re-delivered at every await inside __aexit__
            await anyio.sleep_forever()
    assert sup.state is tv.SupervisorState.CLOSED
    assert (await h).state is State.CANCELLED
    assert (await t).state in (State.DONE, State.CANCELLED)


async def test_a_retry_does_not_see_the_failed_attempts_writes() -> None:
    seen: list[dict[str, Any]] = []

    def flaky(shared: dict[str, Any]) -> None:
        seen.append(dict(shared))
        shared["partial"] = len(seen)
        if len(seen) == 1:
            raise ConnectionError("first attempt")

    async with tv.Supervisor(shared={"base": 0}) as sup:
        res = await sup.submit(flaky, retries=1)
    assert seen == [{"base": 0}, {"base": 0}]
    assert res.ok and res.shared == {"base": 0, "partial": 2}


async def test_each_attempt_gets_the_substituted_call_and_what_the_task_received() -> None:
    """A retry is started from the attempt before it (its call, references substituted,
    and the ``shared`` the task received live in the running Job, not in the record)."""
    calls: list[tuple[Any, ...]] = []

    def parent(shared: dict[str, Any]) -> int:
        shared["from_parent"] = 1
        return 41

    def flaky(x: int, *, k: int) -> int:
        calls.append((x, k))
        if len(calls) < 3:
            raise ConnectionError("try again")
        return x + k

    a = tv.Task(parent, name="a")
    b = tv.Task(flaky, (a.output,), {"k": a.output.map(lambda v: v - 40)}, name="b", retries=2)
    async with tv.Supervisor(shared={"base": 0}) as sup:
        report = await sup.gather([a, b])
    res = report["b"]
    assert res.ok and res.ret == 42 and res.attempts == 3
    assert calls == [(41, 1)] * 3
    # a task that does not take ``shared`` reports what it received
    assert res.shared == {"base": 0, "from_parent": 1}


class Point(NamedTuple):
    x: int
    y: int


async def test_references_inside_namedtuples_and_dict_subclasses() -> None:
    src = tv.Task(identity, (3,), name="src")
    od = collections.OrderedDict([("b", src.output), ("a", 1)])
    point_ref = Point(src.output, 4)  # type: ignore[arg-type]
    user = tv.Task(identity, ((point_ref, od, [1, 2]),), name="user")
    async with tv.Supervisor() as sup:
        report = await sup.gather([src, user])
    ret = report["user"].ret
    assert ret is not None
    point, got, plain = ret
    assert point == Point(3, 4) and isinstance(point, Point)
    assert isinstance(got, collections.OrderedDict) and list(got.items()) == [("b", 3), ("a", 1)]
    assert plain == [1, 2]


@pytest.mark.slow
async def test_a_broken_user_backend_reports_worker_crashed_each_time() -> None:
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as mine:
        async with tv.Supervisor(backends={"mine": mine}) as sup:
            first = await sup.submit(die, 3, runs_on="mine")
            second = await sup.submit(identity, 1, runs_on="mine")
    for res in (first, second):
        assert res.state is State.FAILED
        assert isinstance(res.error, tv.WorkerCrashed)


async def test_an_aloop_that_cannot_start_fails_the_supervisor_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_loop() -> asyncio.AbstractEventLoop:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(_executors, "_new_uvloop", no_loop)
    monkeypatch.setattr(asyncio, "new_event_loop", no_loop)
    sup = tv.Supervisor(aloops=("io",))
    with pytest.raises(OSError, match="Too many open files"):
        async with sup:
            pass
    assert sup.state is tv.SupervisorState.CLOSED


async def test_two_readers_share_one_result_stream(gates: Gates) -> None:
    async with tv.Supervisor() as sup:
        stream = sup.run(
            [tv.Task(gates.task, (f"t{i}",), name=f"t{i}", runs_on="main") for i in range(4)]
        )

        async def read() -> list[str]:
            return [r.name async for r in stream]

        a = asyncio.ensure_future(read())
        b = asyncio.ensure_future(read())
        await gates.wait_started("t0", "t1", "t2", "t3")
        gates.release("t0", "t1", "t2", "t3")
        got = await a + await b
    assert sorted(got) == ["t0", "t1", "t2", "t3"]


async def test_a_cancel_that_comes_after_the_task_finished_keeps_its_result() -> None:
    finished = threading.Event()

    def precious() -> str:
        finished.set()
        return "precious"

    async with tv.Supervisor(aloops=()) as sup:
        h = sup.submit(precious)
        await end_of_turn()  # admitted and dispatched
        assert finished.wait(30)
        inbox = sup._inbox
        assert inbox is not None
        deadline = time.monotonic() + 30
        while not inbox._items and time.monotonic() < deadline:
            pass  # the worker thread is between return and report; no await: stay in order
        sup.cancel(h)  # the completion is queued but not yet drained
        res = await h
    assert res.ok and res.ret == "precious"


async def test_cancelling_gather_cancels_its_batch(gates: Gates) -> None:
    async with tv.Supervisor(pool_size=1) as sup:
        batch = [tv.Task(gates.task, (n,), name=n, runs_on="main") for n in ("a", "b")]
        waiter = asyncio.ensure_future(sup.gather(batch))
        await gates.wait_started("a")
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert sup.task_state("b") is State.CANCELLED  # queued: cancelled at once
        gates.release("a")
        other = await sup.submit(identity, 1)
    assert other.ok


async def test_a_timeout_while_queued_in_a_backend_counts_as_an_attempt() -> None:
    """A backend future cancelled by its timeout before it started is not retried forever."""
    import concurrent.futures

    from taskvisor.testing import MockClock

    busy = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        ex.submit(busy.wait)  # the backend's only worker is taken
        async with tv.Supervisor(aloops=(), backends={"b": ex}, clock=MockClock()) as sup:
            res = await sup.submit(identity, 1, runs_on="b", timeout=5, retries=1)
            busy.set()
    assert res.state is State.FAILED and isinstance(res.error, tv.TaskTimeout)
    assert res.attempts == 2 and res.error.abandoned is False
