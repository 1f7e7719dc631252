"""The supervisor end to end: the behaviours the core runtime issue names, one test each."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
from typing import Any

import pytest

import taskvisor as tv
from taskvisor import State

from .conftest import Gates, end_of_turn, noop
from .workloads import add, child_shared, fail_deep, identity, parent_shared, where

# every test here runs on both paths a thread task's completion can take into the engine
pytestmark = pytest.mark.usefixtures("completion_path")


def task_on_main(gates: Gates, name: str, **meta: Any) -> tv.Task[str]:
    return tv.Task(gates.task, (name,), name=name, runs_on="main", **meta)


@pytest.mark.parametrize("how", ["one batch", "six submits in one turn"])
async def test_atasker_reserve_scenario(gates: Gates, how: str) -> None:
    """pool 1, reserves 1 and 1, a LOW running: H1, H2, C1 start at once, then N1, N2, L2,
    whether the six arrive as one batch or as six submit() calls in one turn of the loop."""
    async with tv.Supervisor(pool_size=1, reserve_normal=1, reserve_high=1) as sup:
        first = sup.submit(task_on_main(gates, "L1", tier=tv.LOW))
        await gates.wait_started("L1")
        batch = [
            task_on_main(gates, "L2", tier=tv.LOW),
            task_on_main(gates, "N1", tier=tv.NORMAL),
            task_on_main(gates, "N2", tier=tv.NORMAL),
            task_on_main(gates, "H1", tier=tv.HIGH),
            task_on_main(gates, "H2", tier=tv.HIGH),
            task_on_main(gates, "C1", tier=tv.CRITICAL),
        ]
        if how == "one batch":
            stream = sup.run(batch)
        else:
            handles = [sup.submit(t) for t in batch]
        await gates.wait_started("H1", "H2", "C1")
        assert sorted(gates.order[1:]) == ["C1", "H1", "H2"]
        assert [sup.task_state(n) for n in ("N1", "N2", "L2")] == [State.QUEUED] * 3

        gates.release("H1", "H2")
        await gates.wait_started("N1")  # two HIGH ended: busy = L1, so one NORMAL fits
        assert sup.task_state("N2") is State.QUEUED
        gates.release("L1")
        await gates.wait_started("N2")
        assert sup.task_state("L2") is State.QUEUED
        gates.release("C1", "N1", "N2")
        await gates.wait_started("L2")
        gates.release("L2")
        done = [r async for r in stream] if how == "one batch" else [await h for h in handles]
        assert (await first).ok
    assert all(r.ok for r in done)
    assert gates.order[0] == "L1"
    assert sorted(gates.order[1:4]) == ["C1", "H1", "H2"]
    assert gates.order[4:] == ["N1", "N2", "L2"]


async def test_nine_task_graph_runs_in_dependency_order() -> None:
    """One slot: serial order [4, 2, 5, 6, 3, 1, 7, 9, 8], each after all its dependencies."""
    deps = {1: {3}, 2: {4}, 3: {6}, 4: set(), 5: {4}, 6: {2, 5}, 7: {1}, 8: {9, 5}, 9: {7, 2}}
    order: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            assert deps[i] <= set(order), f"{i} ran before {deps[i] - set(order)}"
            order.append(i)
        return i

    tasks = [
        tv.Task(work, (i,), name=f"t{i}", requires={f"r{d}" for d in deps[i]}, provides=f"r{i}")
        for i in range(1, 10)
    ]
    async with tv.Supervisor(pool_size=1) as sup:
        report = await sup.gather(tasks)
    assert report.ok, str(report)
    assert order == [4, 2, 5, 6, 3, 1, 7, 9, 8]


@pytest.mark.slow
async def test_results_passed_as_arguments_across_processes_and_threads() -> None:
    ps = [
        tv.Task(add, (1, 2, 3), name="p1", runs_on="process"),
        tv.Task(add, (4, 5, 6), name="p2", runs_on="process"),
        tv.Task(add, (7, 8, 9), name="p3", runs_on="process"),
    ]
    ts = [
        tv.Task(identity, (p.output,), name=f"t{i}", runs_on="thread") for i, p in enumerate(ps, 1)
    ]
    p4 = tv.Task(add, tuple(t.output for t in ts), name="p4", runs_on="process")
    t4 = tv.Task(identity, (p4.output,), name="t4", runs_on="thread")
    async with tv.Supervisor(processes=2) as sup:
        report = await sup.gather([t4, p4, *ts, *ps])
    assert report.ok, str(report)
    assert report.returns == {
        "p1": 6,
        "p2": 15,
        "p3": 24,
        "t1": 6,
        "t2": 15,
        "t3": 24,
        "p4": 45,
        "t4": 45,
    }
    assert report["p1"].worker is not None and report["p1"].worker.startswith("pid ")


async def test_output_projections() -> None:
    def make() -> dict[str, list[int]]:
        return {"xs": [1, 2, 3]}

    src = tv.Task(make, name="src")
    total = tv.Task(sum, (src.output["xs"],), name="total")
    doubled = tv.Task(
        identity, (src.output["xs"].map(lambda xs: [2 * x for x in xs]),), name="doubled"
    )
    async with tv.Supervisor() as sup:
        report = await sup.gather([src, total, doubled])
    assert report.returns["total"] == 6
    assert report.returns["doubled"] == [2, 4, 6]


@pytest.mark.parametrize("runs_on", ["thread", "main", "aloop", "process"])
async def test_shared_state_flows_from_parent_to_child(runs_on: str) -> None:
    parent = tv.Task(parent_shared, name="parent", provides="p", runs_on=runs_on)
    child = tv.Task(child_shared, name="child", requires="p", runs_on=runs_on)
    async with tv.Supervisor(processes=1, shared={"base": 1}) as sup:
        report = await sup.gather([parent, child])
    assert report.ok, str(report)
    assert report["parent"].shared == {"base": 1, "p": 2345}
    assert report["child"].shared == {"base": 1, "p": 2345, "c": 1234}
    assert report["child"].ret == {"base": 1, "p": 2345, "c": 1234}


async def test_claimants_never_interleave_users_do(gates: Gates) -> None:
    async with tv.Supervisor() as sup:
        a = sup.submit(task_on_main(gates, "A", claims="db"))
        b = sup.submit(task_on_main(gates, "B", claims="db"))
        await gates.wait_started("A")
        assert b.state is State.LOCKED  # decided by the planner at A's admission
        u1 = sup.submit(task_on_main(gates, "U1", uses="cache"))
        u2 = sup.submit(task_on_main(gates, "U2", uses="cache"))
        await gates.wait_started("U1", "U2")  # both users hold the shared lock at once
        assert b.state is State.LOCKED
        gates.release("A")
        await a
        await gates.wait_started("B")
        gates.release("B", "U1", "U2")
        for h in (b, u1, u2):
            assert (await h).ok
    assert gates.order.index("B") > gates.order.index("A")


async def test_waiting_claimant_holds_back_later_users(gates: Gates) -> None:
    async with tv.Supervisor() as sup:
        u1 = sup.submit(task_on_main(gates, "U1", uses="r"))
        await gates.wait_started("U1")
        c = sup.submit(task_on_main(gates, "C", claims="r"))
        u2 = sup.submit(task_on_main(gates, "U2", uses="r"))
        assert (c.state, u2.state) == (State.LOCKED, State.LOCKED)  # no writer starvation
        gates.release("U1", "C", "U2")
        for h in (u1, c, u2):
            assert (await h).ok
    assert gates.order == ["U1", "C", "U2"]


async def test_failing_provider_skips_child_naming_it() -> None:
    def parent() -> None:
        raise RuntimeError("parent broke")

    p = tv.Task(parent, name="parent", provides="x")
    c = tv.Task(noop, name="child", requires="x", provides="y")
    g = tv.Task(noop, name="grandchild", requires="y")
    async with tv.Supervisor() as sup:
        with pytest.warns(tv.TaskvisorWarning, match="2 dependent task"):
            report = await sup.gather([p, c, g])
    assert report["parent"].state is State.FAILED
    assert isinstance(report["parent"].error, RuntimeError)
    child = report["child"]
    assert child.state is State.SKIPPED
    assert isinstance(child.error, tv.DependencyError)
    assert child.error.failed == ("parent",)
    assert "parent" in str(child.error)
    grand = report["grandchild"].error
    assert isinstance(grand, tv.DependencyError)
    assert grand.failed == ("child",) and grand.root == "parent"


async def test_held_lock_ends_its_waiter_with_lock_error(gates: Gates) -> None:
    async def breaks() -> None:
        await gates.task("holder")
        raise OSError("disk full")

    async with tv.Supervisor() as sup:
        holder = sup.submit(breaks, name="holder", claims="disk", runs_on="main")
        await gates.wait_started("holder")
        waiter = sup.submit(noop, name="waiter", claims="disk")
        gates.release("holder")
        with pytest.warns(tv.TaskvisorWarning, match="'disk' stay held"):
            assert (await holder).state is State.FAILED
        res = await waiter
        late = await sup.submit(noop, name="late", uses="disk")
    assert res.state is State.SKIPPED
    assert isinstance(res.error, tv.LockError)
    assert res.error.resource == "disk" and res.error.holder == "holder"
    assert isinstance(late.error, tv.LockError)


async def test_controlled_failure_lets_child_run() -> None:
    def soft() -> None:
        raise tv.TaskFailError("partial", deps_ok=True, locks_ok=True)

    @tv.controlled_failure
    def wrapped() -> None:
        raise KeyError("k")

    async with tv.Supervisor() as sup:
        report = await sup.gather(
            [
                tv.Task(soft, name="soft", provides="x", claims="r"),
                tv.Task(noop, name="after-soft", requires="x", claims="r"),
                tv.Task(wrapped, name="wrapped", provides="y"),
                tv.Task(noop, name="after-wrapped", requires="y"),
            ]
        )
    assert report["soft"].state is State.FAILED
    assert report["after-soft"].ok
    assert report["wrapped"].state is State.FAILED
    assert isinstance(report["wrapped"].error, tv.TaskFailError)
    assert isinstance(report["wrapped"].error.__cause__, KeyError)
    assert report["after-wrapped"].ok


def test_controlled_failure_pickles_as_a_decorator() -> None:
    """@tv.controlled_failure replaces the function under its name: it must pickle by that
    name (a process task), and a wrapper made by a call must pickle with its function."""
    import pickle

    from . import workloads

    assert pickle.loads(pickle.dumps(workloads.soft_fail_in_process)) is (
        workloads.soft_fail_in_process
    )
    assert pickle.loads(pickle.dumps(workloads.soft_fail_async)) is workloads.soft_fail_async
    called = pickle.loads(pickle.dumps(tv.controlled_failure(deps_ok=False)(fail_deep)))
    assert called.fn is fail_deep and called.deps_ok is False


@pytest.mark.slow
async def test_controlled_failure_decorator_on_a_process_task() -> None:
    from .workloads import soft_fail_in_process

    async with tv.Supervisor(processes=1) as sup:
        report = await sup.gather(
            [
                tv.Task(soft_fail_in_process, ("k",), name="soft", runs_on="process", provides="x"),
                tv.Task(noop, name="after", requires="x"),
            ]
        )
    assert report["soft"].state is State.FAILED
    assert isinstance(report["soft"].error, tv.TaskFailError)
    assert "KeyError: 'k'" in str(report["soft"].error)
    assert report["after"].ok


async def test_cycle_raises_before_anything_runs() -> None:
    ran: list[str] = []

    def spy(name: str) -> None:
        ran.append(name)

    a = tv.Task(spy, ("a",), name="a", requires="y", provides="x")
    b = tv.Task(spy, ("b",), name="b", requires="x", provides="y")
    free = tv.Task(spy, ("free",), name="free")
    async with tv.Supervisor() as sup:
        with pytest.raises(tv.CycleError) as err:
            sup.run([free, a, b])
        assert set(err.value.cycle) == {"a", "b"}
        with pytest.raises(tv.CycleError):
            await sup.gather([a, b])
        assert (await sup.gather([free])).ok  # nothing of the failed batch was kept
    assert ran == ["free"]


async def test_unprovided_requirement_fails_at_once_naming_the_item() -> None:
    async with tv.Supervisor() as sup:
        report = await sup.gather([tv.Task(noop, name="orphan", requires="nobody-makes-this")])
    res = report["orphan"]
    assert res.state is State.SKIPPED
    assert isinstance(res.error, tv.DependencyError)
    assert res.error.missing == ("nobody-makes-this",)
    assert res.started_at is None and res.attempts == 0


async def test_single_submit_waits_for_a_later_provider_and_aclose_settles_the_rest() -> None:
    sup = tv.Supervisor()
    async with sup:
        early = sup.submit(identity, 1, name="early", requires="late-item")
        stuck = sup.submit(noop, name="stuck", requires="never")
        assert early.state is State.WAITING
        await sup.submit(noop, name="provider", provides="late-item")
        assert (await early).ret == 1
        sup.provide("manual")
        assert (await sup.submit(noop, name="manual", requires="manual")).ok
    res = await stuck
    assert isinstance(res.error, tv.DependencyError) and res.error.missing == ("never",)


@pytest.mark.slow
async def test_process_exception_keeps_child_frames() -> None:
    async with tv.Supervisor(processes=1) as sup:
        res = await sup.submit(fail_deep, "boom", runs_on="process")
    assert res.state is State.FAILED
    assert res.excinfo is not None
    assert isinstance(res.error, ValueError)
    text = res.excinfo.text
    assert "_inner_failure" in text and "fail_deep" in text and "boom" in text
    with pytest.raises(ValueError, match="boom") as info:
        res.excinfo.reraise()
    assert any(e.name == "_inner_failure" for e in info.traceback)


async def test_coroutine_runs_in_its_aloop_thread() -> None:
    async def here() -> str:
        return threading.current_thread().name

    async with tv.Supervisor(aloops=("default", "io")) as sup:
        io = await sup.submit(here, runs_on="aloop:io")
        default = await sup.submit(here)
        plain = await sup.submit(where)
        main = await sup.submit(here, runs_on="main")
    assert io.ret == "taskvisor-aloop-io" and io.runs_on == "aloop:io"
    assert default.ret == "taskvisor-aloop-default"
    assert plain.ret is not None and plain.ret.startswith("taskvisor-thread")
    assert main.ret == threading.current_thread().name


async def test_aloop_run_from_another_thread() -> None:
    async def double(x: int) -> int:
        return 2 * x

    async with tv.Supervisor(aloops=("io",)) as sup:
        aloop = sup.aloop("io")
        box: list[Any] = []
        t = threading.Thread(target=lambda: box.append(aloop.run(double(21))))
        t.start()
        assert await asyncio.wrap_future(aloop.submit_coro(double(4))) == 8  # async side

        def joined() -> Any:
            t.join()
            return box[0]

        res = await sup.submit(joined, runs_on="thread")
        with pytest.raises(RuntimeError, match="blocks"):
            aloop.run(double(1))
    assert res.ret == 42


async def test_handles_priorities_and_fifo(gates: Gates) -> None:
    async with tv.Supervisor(pool_size=1) as sup:
        sup.submit(task_on_main(gates, "first"))
        await gates.wait_started("first")
        later = [
            sup.submit(task_on_main(gates, n, priority=p))
            for n, p in (("p5", 5), ("p1a", 1), ("p1b", 1), ("p0", 0))
        ]
        gates.release("first", "p5", "p1a", "p1b", "p0")
        for h in later:
            await h
    assert gates.order == ["first", "p0", "p1a", "p1b", "p5"]


async def test_capacity_and_resource_errors_at_once() -> None:
    async with tv.Supervisor(pool_size=2, reserve_normal=1, resources={"gpu": 1}) as sup:
        heavy = await sup.submit(noop, weight=4)
        greedy = await sup.submit(noop, resources={"gpu": 3})
        ok = await sup.submit(noop, weight=3, resources={"gpu": 1})
    assert isinstance(heavy.error, tv.CapacityError) and heavy.error.shortfall == 1
    assert isinstance(greedy.error, tv.ResourceError) and greedy.error.shortfall == {"gpu": 2}
    assert ok.ok


async def test_retries_rerun_a_failed_task() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("try again")
        return "ok"

    async with tv.Supervisor() as sup:
        res = await sup.submit(flaky, retries=2)
        out = await sup.submit(lambda: 1 / 0, retries=1)
    assert res.ok and res.ret == "ok" and res.attempts == 3
    assert out.state is State.FAILED and out.attempts == 2


async def test_coroutine_timeout_on_main_and_aloop() -> None:
    forever = asyncio.Event()

    async def hang() -> None:
        await asyncio.Event().wait()

    async with tv.Supervisor(clock=None) as sup:
        on_main = await sup.submit(forever.wait, runs_on="main", timeout=0.01)
        on_aloop = await sup.submit(hang, timeout=0.01)
    for res in (on_main, on_aloop):
        assert res.state is State.FAILED
        assert isinstance(res.error, tv.TaskTimeout)


async def test_cancel_queued_and_running(gates: Gates) -> None:
    async with tv.Supervisor(pool_size=1) as sup:
        running = sup.submit(task_on_main(gates, "running"))
        queued = sup.submit(task_on_main(gates, "queued", provides="q"))
        child = sup.submit(noop, name="child", requires="q")
        await gates.wait_started("running")
        sup.cancel("queued")
        assert (await queued).state is State.CANCELLED
        assert (await child).state is State.SKIPPED
        running.cancel()
        res = await running
    assert res.state is State.CANCELLED and isinstance(res.error, tv.TaskCancelled)
    assert gates.order == ["running"]


async def test_fail_fast_cancels_the_rest_and_keeps_finished(gates: Gates) -> None:
    async def fails() -> None:
        await gates.task("fails")
        raise ValueError("first failure")

    async with tv.Supervisor(fail_fast=True, pool_size=1) as sup:
        done = await sup.submit(noop, name="done-before")
        f = sup.submit(fails, name="fails", runs_on="main", tier=tv.HIGH)
        later = sup.submit(noop, name="later")
        await gates.wait_started("fails")
        gates.release("fails")
        assert (await f).state is State.FAILED
        assert (await later).state is State.CANCELLED
    assert done.ok


async def test_leaving_on_exception_cancels_everything(gates: Gates) -> None:
    sup = tv.Supervisor()
    with pytest.raises(KeyError):
        async with sup:
            h = sup.submit(task_on_main(gates, "hangs"))
            w = sup.submit(noop, requires="never")
            await gates.wait_started("hangs")
            raise KeyError("user code broke")
    assert (await h).state is State.CANCELLED
    assert (await w).state is State.CANCELLED
    with pytest.raises(tv.ClosedError, match="closed"):
        sup.submit(noop)


async def test_aclose_with_a_time_limit_cancels_what_remains(gates: Gates) -> None:
    async with tv.Supervisor() as sup:
        h = sup.submit(task_on_main(gates, "slow"))
        await gates.wait_started("slow")
        report = await sup.aclose(wait=0.01)
    assert [r.name for r in report] == ["slow"]
    assert (await h).state is State.CANCELLED


async def test_bad_input_is_refused_at_the_call() -> None:
    with pytest.raises(tv.SpecError, match="callable"):
        tv.Task(42)  # type: ignore[call-overload]
    with pytest.raises(tv.SpecError, match="both claims and uses"):
        tv.Task(noop, claims="r", uses="r")
    with pytest.raises(tv.SpecError, match="tier"):
        tv.Task(noop, tier=9)
    with pytest.raises(tv.SpecError, match="weight"):
        tv.Task(noop, weight=-1)
    with pytest.raises(tv.SpecError, match="hashable"):
        tv.Task(noop, requires=[["x"]])
    with pytest.raises(tv.SpecError, match="pool_size"):
        tv.Supervisor(pool_size=-1)
    with pytest.raises(tv.ClosedError, match="created"):
        tv.Supervisor().submit(noop)
    async with tv.Supervisor() as sup:
        with pytest.raises(tv.SpecError, match="unknown runs_on 'gpu'"):
            sup.submit(noop, runs_on="gpu")
        with pytest.raises(tv.SpecError, match="no aloop named 'x'"):
            sup.submit(noop, runs_on="aloop:x")
        sup.submit(noop, name="dup")
        with pytest.raises(tv.DuplicateTaskError):
            sup.submit(noop, name="dup")
        with pytest.raises(tv.SpecError, match="kwargs"):
            sup.submit(noop, colour="red")

        async def coro_fn() -> None:
            return None

        with pytest.raises(tv.SpecError, match="coroutine object"):
            sup.submit(coro_fn())  # type: ignore[call-overload]


async def test_decorator_metadata_and_kwargs() -> None:
    @tv.task(provides={"bin"}, tier=tv.HIGH)
    def build(flag: bool = False) -> str:
        return f"built {flag}"

    assert build(flag=True) == "built True"  # the function itself, unchanged
    async with tv.Supervisor() as sup:
        res = await sup.submit(build, kwargs={"flag": True})
        after = await sup.submit(noop, requires="bin")
    assert res.ret == "built True" and res.task.tier is tv.HIGH
    assert after.ok


async def test_logging_on_the_taskvisor_logger(caplog: pytest.LogCaptureFixture) -> None:
    def bad() -> None:
        raise ValueError("nope")

    caplog.set_level(logging.INFO, logger="taskvisor")
    async with tv.Supervisor() as sup:
        await sup.submit(noop, name="p1")
        await sup.submit(bad, name="bad")
        waiting = sup.submit(noop, name="skipped", requires="never-ever")
        await sup.gather([tv.Task(noop, name="sealed", requires="x")])
    assert (await waiting).state is State.SKIPPED  # settled by aclose
    msgs = {(r.levelname, r.getMessage().split(" ")[0]) for r in caplog.records}
    assert ("INFO", "'p1'") in msgs and ("ERROR", "'bad'") in msgs
    assert ("WARNING", "'sealed'") in msgs and ("WARNING", "'skipped'") in msgs
    assert any(
        "'p1' done in" in r.getMessage() and "on thread" in r.getMessage() for r in caplog.records
    )


async def test_no_log_record_is_built_for_a_logger_nobody_hears(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A program that configures no logging leaves our logger its NullHandler only: a
    close that cancels a backlog must not build one warning record per task for it (56%
    of such a close); once a handler listens, every warning is there again."""
    from taskvisor._log import heard, logger

    built: list[logging.LogRecord] = []
    make = logging.Logger.makeRecord

    def counting(self: logging.Logger, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(self, *args, **kwargs)
        built.append(record)
        return record

    monkeypatch.setattr(logging.Logger, "makeRecord", counting)
    monkeypatch.setattr(logger, "propagate", False)  # (pytest's own handlers sit on root)
    assert [type(h) for h in logger.handlers] == [logging.NullHandler]
    assert not heard(logging.WARNING) and not heard(logging.ERROR)

    async def close_with_a_backlog() -> None:
        release = asyncio.Event()

        async def blocker() -> None:
            await release.wait()

        sup = tv.Supervisor(pool_size=1, aloops=())
        await sup.start()
        sup.submit(blocker, runs_on="main")
        for i in range(20):
            sup.submit(noop, name=f"queued-{i}")
        await sup.aclose(cancel=True)

    await close_with_a_backlog()
    assert [r for r in built if r.name == "taskvisor"] == []

    handler = logging.Handler(logging.ERROR)
    handler.emit = lambda record: None  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        assert not heard(logging.WARNING) and heard(logging.ERROR)  # (its level)
        handler.setLevel(logging.WARNING)
        assert heard(logging.WARNING)
        await close_with_a_backlog()
    finally:
        logger.removeHandler(handler)
    cancelled = [r.getMessage() for r in built if r.levelno == logging.WARNING]
    assert len(cancelled) == 21, cancelled  # the blocker and the 20 queued tasks
    assert any(m.startswith("'queued-0' cancelled: ") for m in cancelled), cancelled


async def test_report_statistics_and_str() -> None:
    async with tv.Supervisor(result_buffer=2) as sup:
        report = await sup.gather(
            [
                tv.Task(add, (1, 2), name="a"),
                tv.Task(add, (3,), name="b"),
                tv.Task(add, (4,), name="c"),
            ]
        )
        stats = sup.statistics()
        interim = sup.report()
    assert report.ok and report.returns == {"a": 3, "b": 3, "c": 4}
    assert len(interim) == 2 and not interim.pending
    text = str(report)
    assert "a " in text and "DONE" in text and "3 task(s)" in text
    assert stats.tasks[State.DONE] == 3 and stats.state is tv.SupervisorState.RUNNING
    assert report.by_state[State.DONE][0].name == "a"


def test_sync_facade() -> None:
    report = tv.run(
        [tv.Task(add, (1, 2), name="x"), tv.Task(identity, (5,), name="y")], threads=2, aloops=()
    )
    assert report.returns == {"x": 3, "y": 5}


async def test_sync_facade_refuses_inside_a_loop() -> None:
    with pytest.raises(RuntimeError, match="inside an event loop"):
        tv.run([])


def test_cycles_are_detected_under_python_O() -> None:
    code = (
        "import taskvisor as tv\n"
        "a = tv.Task(print, name='a', requires='y', provides='x')\n"
        "b = tv.Task(print, name='b', requires='x', provides='y')\n"
        "try:\n"
        "    tv.run([a, b], aloops=())\n"
        "except tv.CycleError as e:\n"
        "    print('cycle', e.cycle)\n"
    )
    out = subprocess.run(
        [sys.executable, "-O", "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.startswith("cycle"), out.stdout + out.stderr


async def test_zero_need_of_an_undeclared_resource_is_no_need() -> None:
    async with tv.Supervisor() as sup:
        res = await sup.submit(noop, resources={"gpu": 0})
        short = await sup.submit(noop, resources={"gpu": 0.5})
    assert res.ok
    assert isinstance(short.error, tv.ResourceError) and short.error.shortfall == {"gpu": 0.5}


def plus_one(x: int) -> int:
    return x + 1


async def test_the_completion_paths_differ(completion_path: str) -> None:
    """The fixture really changes the path. A chain of six thread tasks, the first blocked
    until the loop waits for the results and holds nothing: on the inline path its pool
    thread takes in its own completion (off the loop's thread); on the loop path every
    completion is taken in on the loop's thread, through the inbox."""
    gate = threading.Event()

    def first() -> int:
        gate.wait()
        return 0

    chain = [tv.Task(first, name="c0", runs_on="thread")]
    for i in range(1, 6):
        chain.append(tv.Task(plus_one, (chain[-1].output,), name=f"c{i}", runs_on="thread"))
    on_loop: list[tuple[str, bool]] = []  # per completion taken in: (task, on the loop?)
    async with tv.Supervisor(threads=2, aloops=()) as sup:
        assert sup._inline is (completion_path == "inline")
        loop_thread = threading.get_ident()
        take_in = sup._on_done

        def counting(job: Any, result: Any) -> None:  # (called with the engine held)
            on_loop.append((job.name, threading.get_ident() == loop_thread))
            take_in(job, result)

        sup._on_done = counting  # type: ignore[method-assign]
        handles = [sup.submit(t) for t in chain]
        await end_of_turn()  # c0 is dispatched; its thread waits at the gate
        gate.set()  # the loop now only awaits the results: the engine lock is free
        results = [await h for h in handles]
    assert [r.ret for r in results] == [0, 1, 2, 3, 4, 5]
    assert sorted(name for name, _ in on_loop) == [t.name for t in chain]  # each once
    off_loop = [name for name, here in on_loop if not here]
    if completion_path == "inline":
        assert "c0" in off_loop  # (the later links may meet a busy loop: then the inbox)
    else:
        assert off_loop == []
