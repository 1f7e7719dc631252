"""Submits from threads other than the loop's, queued without the engine lock (issue 13).

A single ``submit`` from another thread that the planner cannot refuse is queued
(``Engine._queue_in``) and handed to the planner by whoever next takes the engine lock
(``Engine._take_in``). These tests hold the engine lock on the loop's thread to keep such a
task queued, and check that its handle works at once, that a duplicate name still fails
in the submitting thread, and that closing never strands a queued task.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

import taskvisor as tv
from taskvisor import State, _engine

from .conftest import noop
from .workloads import add

WAIT = 30.0  # a bound on a wait that must end long before (never a synchronisation)


class InThread:
    """``fn()`` in a thread of the test's own: ``value`` is its return value (or
    exception); ``await it.done()`` waits for it without blocking the loop."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.value: Any = RuntimeError("did not run")
        loop = asyncio.get_running_loop()
        self._ended = asyncio.Event()

        def body() -> None:
            try:
                self.value = fn()
            except BaseException as exc:
                self.value = exc
            finally:
                loop.call_soon_threadsafe(self._ended.set)

        self._thread = threading.Thread(target=body)
        self._thread.start()

    async def done(self) -> Any:
        await self._ended.wait()
        self._thread.join()
        return self.value


async def test_a_foreign_submit_does_not_wait_for_the_engine_lock() -> None:
    """The loop holds the engine lock: the submit returns anyway, and the handle works."""
    submitted = threading.Event()
    handles: list[tv.TaskHandle[Any]] = []

    def user() -> None:
        handles.append(sup.submit(add, 2, 3, name="late", runs_on="thread"))
        submitted.set()

    async with tv.Supervisor(threads=2, aloops=()) as sup:
        with sup._engine:
            t = InThread(user)
            # (the old locked submit waited here for the lock the loop holds)
            assert submitted.wait(WAIT), "submit() waited for the engine lock"
            (h,) = handles
            assert not h.done()
            assert repr(h) == "<TaskHandle 'late' pending>"
            assert sup._incoming  # queued, not yet known to the planner
            # a lookup takes the queue in first (the same thread re-enters the lock)
            assert sup.task_state(h) is State.RUNNING  # (its end waits for this lock)
            assert [e.kind for e in sup.story("late")] == ["submitted", "dispatched"]
            assert sup.statistics().tasks[State.RUNNING] == 1
        assert await t.done() is None
        res = await h
        assert res.ok and res.ret == 5
        assert sup.task_state("late") is State.DONE


async def test_the_loop_woken_by_a_foreign_submit_takes_it_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loop is blocked in user code while a thread submits: nothing takes the engine
    lock meanwhile, so the task waits for the wake-up; the loop, once free, takes it in."""
    submitted = threading.Event()
    took_in = asyncio.Event()

    def user() -> tv.TaskHandle[Any]:
        h = sup.submit(add, 40, 2, runs_on="thread")
        submitted.set()
        return h

    async with tv.Supervisor(threads=2, aloops=()) as sup:
        take_in = sup._take_in

        def spy(closing: bool = False) -> None:
            if sup._incoming and threading.get_ident() == sup._tid:
                took_in.set()
            take_in(closing)

        monkeypatch.setattr(sup, "_take_in", spy)
        t = InThread(user)
        assert submitted.wait(WAIT)  # (the loop is blocked in this call meanwhile)
        await took_in.wait()
        h = await t.done()
        assert (await h).ret == 42


def test_cancel_state_and_story_of_a_just_submitted_foreign_task() -> None:
    with tv.BackgroundSupervisor(threads=2, aloops=()) as sup:
        sup.pause()  # (taken in, it stays queued for a slot)
        h = sup.submit(noop, name="held", runs_on="thread")
        assert sup.task_state(h) is State.QUEUED
        assert [e.kind for e in sup.story(h)] == ["submitted"]
        assert sup.report().pending == ("held",)
        sup.cancel(h)
        res = h.result(timeout=WAIT)
        assert res.state is State.CANCELLED
        assert sup.task_state("held") is State.CANCELLED
        sup.resume()


async def test_a_main_function_cancels_a_task_a_thread_just_queued() -> None:
    """A ``runs_on="main"`` function runs under the engine lock: a cancel from it still
    finds the task another thread queued meanwhile (waiting for the lock it holds)."""
    handles: list[tv.TaskHandle[Any]] = []

    def main_fn() -> str:
        t = threading.Thread(
            target=lambda: handles.append(
                sup.submit(noop, name="victim", runs_on="thread", claims=("r",))
            )
        )
        t.start()
        t.join(WAIT)
        assert handles and sup._incoming
        sup.cancel("victim")
        return "cancelled"

    async with tv.Supervisor(threads=2, aloops=()) as sup:
        res = await sup.submit(main_fn, runs_on="main", claims=("r",))
        assert res.ret == "cancelled", res
        (h,) = handles
        assert (await h).state is State.CANCELLED


async def test_a_duplicate_of_a_queued_name_fails_in_the_submitting_thread() -> None:
    first = threading.Event()
    kept: list[tv.TaskHandle[Any]] = []  # (a live handle: the name stays taken)

    def user() -> str:
        kept.append(sup.submit(noop, name="twice", runs_on="thread"))
        first.set()
        try:
            sup.submit(noop, name="twice", runs_on="thread")  # waits for the lock
        except tv.DuplicateTaskError as exc:
            return exc.name
        return "no error"

    async with tv.Supervisor(threads=2, aloops=()) as sup:
        with sup._engine:
            t = InThread(user)
            assert first.wait(WAIT)
            assert "twice" in sup._reserved
            # the loop's own submit of the name fails too (the queued one is taken in first)
            with pytest.raises(tv.DuplicateTaskError):
                sup.submit(noop, name="twice", runs_on="thread")
        assert await t.done() == "twice"
        assert (await kept[0]).ok


@pytest.mark.parametrize("other", ["thread", "loop"])
async def test_one_name_submitted_from_two_threads_at_once_fails_exactly_once(
    other: str,
) -> None:
    """Two submitters meet at a barrier and submit the same name: one of them gets
    ``DuplicateTaskError``, every time (the loop's submit takes the locked path)."""
    rounds = 200
    barrier = threading.Barrier(2, timeout=WAIT)
    handles: list[tv.TaskHandle[Any]] = []  # (alive: the names stay taken)

    def one(i: int) -> int:
        barrier.wait()
        try:
            handles.append(sup.submit(noop, name=f"same-{i}", runs_on="thread"))
        except tv.DuplicateTaskError:
            return 1
        return 0

    def user() -> list[int]:
        return [one(i) for i in range(rounds)]

    async with tv.Supervisor(threads=2, aloops=()) as sup:
        t = InThread(user)
        if other == "thread":
            mine = await InThread(user).done()
        else:  # the loop's thread (blocked at the barrier meanwhile: nothing else to do)
            mine = user()
        theirs = await t.done()
        assert [a + b for a, b in zip(theirs, mine, strict=True)] == [1] * rounds
        assert len(handles) == rounds
        for h in handles:
            assert (await h).ok


async def test_a_dropped_handle_of_a_queued_task_unpins_it() -> None:
    """A handle that dies while its task is still queued: the planner hears of it only
    after it has the task (``_unpin`` takes the queue in first): the name is reusable
    once the task has ended."""
    queued = threading.Event()

    def user() -> None:
        sup.submit(noop, name="dropped", runs_on="thread")  # its handle dies at once
        queued.set()

    async with tv.Supervisor(threads=2, aloops=()) as sup:
        sup.pause()
        with sup._engine:
            t = InThread(user)
            assert queued.wait(WAIT)
            assert list(sup._handles_gone) == ["dropped"]
            assert sup._incoming
            assert sup._unpin()
            sup.cancel("dropped")  # (paused: it ends at once)
            assert sup.task_state("dropped") is State.CANCELLED
            again = sup.submit(noop, name="dropped", runs_on="thread")  # not pinned
        assert await t.done() is None
        sup.resume()
        assert (await again).ok


def test_submit_before_start_and_after_close_raises_as_before() -> None:
    sup = tv.BackgroundSupervisor(threads=2, aloops=())
    with pytest.raises(tv.ClosedError):
        sup.submit(noop, runs_on="thread")  # not started
    sup.start()
    sup.close()
    box: list[BaseException] = []

    def user() -> None:
        try:
            sup.submit(noop, runs_on="thread")
        except tv.ClosedError as exc:
            box.append(exc)

    t = threading.Thread(target=user)
    t.start()
    t.join(WAIT)
    assert len(box) == 1


def test_every_accepted_foreign_submit_ends_before_close_returns() -> None:
    """Threads submit until the supervisor refuses: each submit either raised
    ``ClosedError`` or its task ended by the time ``close()`` returned."""
    users = 4
    going = threading.Barrier(users + 1, timeout=WAIT)  # each has had 25 submits accepted
    handles: list[list[tv.TaskHandle[Any]]] = [[] for _ in range(users)]

    def user(i: int) -> None:
        while True:
            try:
                handles[i].append(sup.submit(noop, runs_on="thread"))
            except tv.ClosedError:
                return
            if len(handles[i]) == 25:
                going.wait()

    sup = tv.BackgroundSupervisor(threads=2, aloops=())
    sup.start()
    threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
    for t in threads:
        t.start()
    going.wait()
    sup.close()
    for t in threads:
        t.join(WAIT)
    everything = [h for hs in handles for h in hs]
    assert len(everything) >= 100
    assert all(h.done() and h.result().ok for h in everything)
    assert not sup.supervisor._incoming and not sup.supervisor._reserved


async def test_a_full_intake_makes_the_submitter_take_the_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Backpressure: with ``INTAKE_LIMIT`` submits queued, the next submit takes the
    locked path (it waits for the lock the loop holds here), and takes the queue in."""
    monkeypatch.setattr(_engine, "INTAKE_LIMIT", 3)
    three, fourth = threading.Event(), threading.Event()
    handles: list[tv.TaskHandle[Any]] = []

    def user() -> None:
        for i in range(4):
            if i == 3:
                three.set()
            handles.append(sup.submit(add, i, 1, runs_on="thread"))
        fourth.set()

    async with tv.Supervisor(threads=2, aloops=()) as sup:
        with sup._engine:
            t = InThread(user)
            assert three.wait(WAIT)
            assert len(sup._incoming) == 3
            assert not fourth.is_set()  # (it waits for this lock)
        assert await t.done() is None
        assert [(await h).ret for h in handles] == [1, 2, 3, 4]
        assert not sup._incoming


def test_result_waits_without_a_lock_and_whoever_pops_a_waiter_sets_it() -> None:
    """``handle.result()`` from another thread takes no lock: a waiter's Event sits in a
    dict that the delivery pops after it sets the result. Forced interleaving: thread C
    has put its Event in and saw no result (it waits); thread A saw no result either,
    gets C's Event from the dict, and only then does the delivery set the result (and
    stop before its pop); A sees the result and pops the entry itself: it must set C's
    Event, or C never wakes (the delivery's pop then finds nothing)."""
    gate, popping, a_done = threading.Event(), threading.Event(), threading.Event()
    got: list[tv.TaskRes[Any]] = []
    with tv.BackgroundSupervisor(threads=1, aloops=()) as sup:
        handle = sup.submit(gate.wait, WAIT)
        c_waits = threading.Event()  # C's: in the dict, no result seen, waiting
        a = threading.Thread(target=lambda: got.append(handle.result(WAIT)))

        class Hooked(dict[Any, threading.Event]):
            def get(self, key: Any, default: Any = None) -> Any:
                event = super().get(key, default)
                if threading.current_thread() is a:  # A has C's Event: now let the
                    gate.set()  # delivery set res (it stops before its pop)
                    assert popping.wait(WAIT)
                return event

            def pop(self, key: Any, default: Any = None) -> Any:
                if threading.current_thread() is not a:  # the delivery: A goes first
                    popping.set()
                    assert a_done.wait(WAIT)
                return super().pop(key, default)

        inner = handle._sup
        inner._result_waiters = Hooked({handle._rec: c_waits})
        try:
            a.start()
            a.join(WAIT)
            assert got and got[0].ok  # A read the result once it was set
            assert c_waits.is_set()  # and woke C, whose entry it popped
        finally:
            a_done.set()
    assert not inner._result_waiters


def test_result_timeouts_of_zero_or_less_and_polling() -> None:
    """``result(timeout)`` as ``concurrent.futures.Future.result``: zero, a negative
    timeout or NaN on a running task raise ``TimeoutError`` at once, and a thread
    polling with ``result(0)`` leaves one waiter behind for the task, not one per call (a
    cheaper waiter per call was tried and reverted for both; see benchmarks/README.md)."""
    gate = threading.Event()
    with tv.BackgroundSupervisor(threads=1, aloops=()) as sup:
        handle = sup.submit(gate.wait, WAIT)
        for timeout in (0, -1, -0.5, float("nan")):
            with pytest.raises(TimeoutError):
                handle.result(timeout)
        for _ in range(1000):
            with pytest.raises(TimeoutError):
                handle.result(0)
        waiters = handle._sup._result_waiters
        assert list(waiters) == [handle._rec] and isinstance(waiters[handle._rec], threading.Event)
        gate.set()
        assert handle.result(WAIT).ok
        assert not waiters
