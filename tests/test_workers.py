"""Background workers: ``every``, ``consume`` and ``on_event`` (atasker's interval, queue
and event workers), on a mock clock where time matters."""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any

import anyio
import pytest

import taskvisor as tv
from taskvisor import State
from taskvisor.testing import MockClock

from .workloads import add

WAIT = 30.0  # a bound on a wait that must end long before (never a synchronisation)


class Calls:
    """What a worker's function saw, and an event per number of calls."""

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.counts: dict[int, asyncio.Event] = {}

    def reached(self, n: int) -> asyncio.Event:
        return self.counts.setdefault(n, asyncio.Event())

    def note(self, value: Any) -> None:
        self.seen.append(value)
        event = self.counts.get(len(self.seen))
        if event is not None:
            event.set()


async def test_every_runs_at_its_interval_on_the_supervisors_clock() -> None:
    clock, calls = MockClock(), Calls()

    async def tick() -> None:
        calls.note(clock.now())

    async with tv.Supervisor(aloops=(), clock=clock) as sup:
        w = sup.every(10, tick, runs_on="main", name="tick")
        await calls.reached(3).wait()
        w.stop()
        await w.wait()
    assert calls.seen[:3] == [0.0, 10.0, 20.0]
    assert w.stopped and w.runs >= 3 and w.failures == 0
    assert w.last is not None and w.last.name.startswith("tick#") and w.last.ok


async def test_a_failed_run_releases_its_locks_and_the_worker_goes_on() -> None:
    clock, calls = MockClock(), Calls()

    async def flaky() -> None:
        calls.note(clock.now())
        if len(calls.seen) == 1:
            raise ValueError("first run fails")

    async with tv.Supervisor(aloops=(), clock=clock) as sup:
        w = sup.every(5, flaky, runs_on="main", claims="db", name="flaky")
        await calls.reached(3).wait()
        w.stop()
        # a plain task that claims the lock still gets it too
        assert (await sup.submit(add, 1, 2, claims="db")).ok
    assert w.failures == 1 and w.runs >= 3
    assert sup.report()["flaky#1"].state is State.FAILED
    assert sup.report()["flaky#2"].ok  # the lock was free for the next run


async def test_an_interval_run_never_overlaps_the_previous_one() -> None:
    clock = MockClock(autojump=False)
    gate, calls = asyncio.Event(), Calls()

    async def slow() -> None:
        calls.note(clock.now())
        if len(calls.seen) == 1:
            await gate.wait()

    async with tv.Supervisor(aloops=(), clock=clock) as sup:
        w = sup.every(10, slow, runs_on="main", name="slow")
        await calls.reached(1).wait()
        clock.advance(35)  # three intervals pass while the first run is still going
        await asyncio.sleep(0)
        assert w.runs == 1 and len(calls.seen) == 1
        gate.set()
        await calls.reached(2).wait()  # the next one starts when it ends, not before
        w.stop()
    assert calls.seen[:2] == [0.0, 35.0]


async def test_max_failures_stops_the_worker_and_backoff_waits_between() -> None:
    clock = MockClock()
    started: list[float] = []

    async def broken() -> None:
        started.append(clock.now())
        raise RuntimeError("down")

    async with tv.Supervisor(aloops=(), clock=clock) as sup:
        w = sup.every(1, broken, runs_on="main", max_failures=3, backoff=2, name="broken")
        await w.wait()  # it stops itself
    assert w.stopped and w.runs == 3 and w.failures == 3
    # run, back off 2 s, run, back off 4 s, run (the interval is shorter than the backoff)
    assert started == [0.0, 2.0, 6.0]


async def test_consume_an_asyncio_queue_in_order_with_concurrency() -> None:
    q: asyncio.Queue[int] = asyncio.Queue()
    calls = Calls()

    async def handle(item: int, factor: int) -> int:
        calls.note(item)
        return item * factor

    async with tv.Supervisor(aloops=()) as sup:
        w = sup.consume(q, handle, 10, runs_on="main", concurrency=2, name="handle")
        for i in range(6):
            q.put_nowait(i)
        await calls.reached(6).wait()
        w.stop()
    assert sorted(calls.seen) == list(range(6))
    assert sorted(sup.report().returns.values()) == [0, 10, 20, 30, 40, 50]


async def test_consume_a_stdlib_queue_fed_by_threads() -> None:
    q: queue.Queue[int] = queue.Queue()
    done = threading.Event()
    seen: list[int] = []
    lock = threading.Lock()

    def handle(item: int) -> None:  # a thread task
        with lock:
            seen.append(item)
            if len(seen) == 20:
                done.set()

    async with tv.Supervisor(aloops=()) as sup:
        sup.consume(q, handle, concurrency=4)

        def feed(start: int) -> None:
            for i in range(start, start + 10):
                q.put(i)

        await asyncio.gather(asyncio.to_thread(feed, 0), asyncio.to_thread(feed, 10))
        assert await asyncio.to_thread(done.wait, WAIT)
    assert sorted(seen) == list(range(20))  # and closing did not wait on the empty queue


async def test_consume_an_anyio_stream_until_it_ends() -> None:
    send, receive = anyio.create_memory_object_stream[str](10)
    seen: list[str] = []

    async def handle(item: str) -> None:
        seen.append(item)

    async with tv.Supervisor(aloops=()) as sup:
        w = sup.consume(receive, handle, runs_on="main")
        async with send:
            for word in ("a", "b", "c"):
                await send.send(word)
        await w.wait()  # the stream ended: so did the worker
        receive.close()
    assert seen == ["a", "b", "c"] and w.stopped


async def test_on_event_runs_each_time_the_event_is_set() -> None:
    calls = Calls()
    aio_event, thread_event = asyncio.Event(), threading.Event()

    async def react(source: str) -> None:
        calls.note(source)

    async with tv.Supervisor(aloops=()) as sup:
        sup.on_event(aio_event, react, "asyncio", runs_on="main", name="aio")
        sup.on_event(thread_event, react, "thread", runs_on="main", name="thr")
        aio_event.set()
        await calls.reached(1).wait()
        threading.Thread(target=thread_event.set).start()
        await calls.reached(2).wait()
        aio_event.set()
        await calls.reached(3).wait()
    assert calls.seen == ["asyncio", "thread", "asyncio"]
    assert not aio_event.is_set() and not thread_event.is_set()  # cleared by the worker


async def test_pause_and_resume_a_worker() -> None:
    q: asyncio.Queue[int] = asyncio.Queue()
    calls = Calls()

    async def handle(item: int) -> None:
        calls.note(item)

    async with tv.Supervisor(aloops=()) as sup:
        w = sup.consume(q, handle, runs_on="main")
        q.put_nowait(1)
        await calls.reached(1).wait()
        w.pause()
        q.put_nowait(2)
        other = sup.submit(add, 0, 0)  # the supervisor goes on meanwhile (loop turns pass)
        assert (await other).ok
        assert calls.seen == [1] and q.qsize() == 1  # paused: the item waits in its queue
        w.resume()
        await calls.reached(2).wait()
    assert calls.seen == [1, 2]


async def test_closing_stops_workers_waiting_on_any_source() -> None:
    aq: asyncio.Queue[int] = asyncio.Queue()
    sq: queue.Queue[int] = queue.Queue()
    event = threading.Event()
    async with tv.Supervisor(aloops=(), clock=MockClock()) as sup:
        workers = [
            sup.consume(aq, add, runs_on="main"),
            sup.consume(sq, add, name="stdlib"),
            sup.on_event(event, add, name="event"),
            sup.every(3600, add, 1, name="hourly"),
        ]
    assert all(w.stopped for w in workers)  # and leaving the block did not hang


def test_bad_worker_arguments_are_refused_at_once() -> None:
    async def main() -> None:
        async with tv.Supervisor(aloops=()) as sup:
            with pytest.raises(tv.SpecError, match="seconds must be > 0"):
                sup.every(0, add)
            with pytest.raises(tv.SpecError, match=r"asyncio\.Queue, a queue\.Queue"):
                sup.consume([1, 2], add)
            with pytest.raises(tv.SpecError, match=r"asyncio\.Event or a threading\.Event"):
                sup.on_event("ready", add)  # type: ignore[arg-type]
            with pytest.raises(tv.SpecError, match=r"option 'tire' \(did you mean 'tier'\?\)"):
                sup.every(1, add, tire="high")
            with pytest.raises(tv.SpecError, match=r"'max_failure' \(did you mean 'max_fail"):
                sup.every(1, add, max_failure=2)
            with pytest.raises(tv.SpecError, match="max_failures"):
                sup.every(1, add, max_failures=0)
            w = sup.every(3600, add, name="dup")
            with pytest.raises(tv.SpecError, match="named 'dup' is running"):
                sup.every(3600, add, name="dup")
            w.stop()

    asyncio.run(main())


def test_workers_on_a_background_supervisor() -> None:
    q: queue.Queue[int] = queue.Queue()
    done = threading.Event()
    seen: list[int] = []

    def handle(item: int) -> None:
        seen.append(item)
        if len(seen) == 3:
            done.set()

    with tv.BackgroundSupervisor(aloops=()) as sup:
        w = sup.consume(q, handle)
        for i in range(3):
            q.put(i)
        assert done.wait(WAIT)
        assert isinstance(w, tv.Worker) and w.runs == 3
    assert seen == [0, 1, 2] and w.stopped
