"""The fault suite's process-pool scenarios (issue 3): worker deaths, retries after a crash,
payloads that cannot cross the process boundary, timeouts and cancellation by killing.

Each asserts the whole ``TaskRes`` of every task, then runs a fresh process task on the
same supervisor. Synchronisation: a worker announces that a job started by writing to a
FIFO the test reads through the event loop (no polling, no sleeps), and the mock clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import taskvisor as tv
from taskvisor import State
from taskvisor.testing import MockClock

from . import fault_workloads as fw
from .conftest import DeadlineClock

pytestmark = pytest.mark.filterwarnings("ignore::taskvisor.TaskvisorWarning")


@contextlib.asynccontextmanager
async def announced(tmp_path: Path, name: str) -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A FIFO a child writes to when its job starts, and the event set when it did."""
    path = tmp_path / f"{name}.fifo"
    os.mkfifo(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    # our own write end: once the child closes its end the FIFO has a writer still, so it
    # never reports end-of-file (which would wake the reader in a spin)
    wfd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    loop = asyncio.get_running_loop()
    started = asyncio.Event()

    def readable() -> None:
        with contextlib.suppress(BlockingIOError):
            if os.read(fd, 64):
                started.set()

    loop.add_reader(fd, readable)
    try:
        yield str(path), started
    finally:
        loop.remove_reader(fd)
        os.close(fd)
        os.close(wfd)


async def fresh_task_runs(sup: tv.Supervisor) -> int:
    """After a fault, the same process pool still runs a new task."""
    res = await sup.submit(fw.pid, runs_on="process")
    assert res.state is State.DONE and res.ok and res.attempts == 1
    assert isinstance(res.ret, int) and res.worker == f"pid {res.ret}"
    return res.ret


def assert_done(res: tv.TaskRes[Any], ret: Any) -> None:
    assert (res.state, res.ok, res.ret, res.excinfo, res.runs_on) == (
        State.DONE,
        True,
        ret,
        None,
        "process",
    )
    assert res.attempts == 1 and res.worker is not None and res.worker.startswith("pid ")


def crashed(res: tv.TaskRes[Any], exitcode: int) -> tv.WorkerCrashed:
    assert res.state is State.FAILED and not res.ok and res.ret is None
    err = res.error
    assert isinstance(err, tv.WorkerCrashed)
    assert err.task == res.name and err.exitcode == exitcode and err.pid is not None
    assert res.worker == f"pid {err.pid}"
    return err


def remote(res: tv.TaskRes[Any], type_name: str, *words: str) -> tv.RemoteError:
    assert res.state is State.FAILED and not res.ok and res.ret is None
    err = res.error
    assert isinstance(err, tv.RemoteError), err
    assert err.type_name.endswith(type_name), err.type_name
    for w in words:
        assert w in str(err), (w, str(err))
    assert res.excinfo is not None and res.excinfo.text
    return err


# ------------------------------------------------------------------ worker deaths


@pytest.mark.parametrize(
    ("killer", "args", "exitcode"),
    [(fw.kill_self, (), -signal.SIGKILL), (fw.exit_now, (3,), 3)],
    ids=["sigkill", "os._exit"],
)
async def test_a_dying_worker_fails_only_its_task(killer: Any, args: Any, exitcode: int) -> None:
    """SIGKILL / os._exit mid-task with 6 others queued and running: only it fails."""
    async with tv.Supervisor(processes=2, aloops=()) as sup:
        others = [tv.Task(fw.add, (i, 1), name=f"ok{i}", runs_on="process") for i in range(6)]
        dying = tv.Task(killer, args, name="dying", runs_on="process")
        child = tv.Task(fw.add, (1,), name="child", requires="x", runs_on="process")
        dying_p = tv.Task(killer, args, name="dying-p", provides="x", runs_on="process")
        report = await sup.gather([others[0], others[1], dying, *others[2:], dying_p, child])
        for i in range(6):
            assert_done(report[f"ok{i}"], i + 1)
        err = crashed(report["dying"], exitcode)
        if exitcode < 0:
            assert err.signal == "SIGKILL" and "killed by SIGKILL" in str(err)
        else:
            assert err.signal is None and "exited with code 3" in str(err)
        crashed(report["dying-p"], exitcode)
        skipped = report["child"]
        assert skipped.state is State.SKIPPED and skipped.attempts == 0
        assert isinstance(skipped.error, tv.DependencyError) and tuple(skipped.error.failed) == (
            "dying-p",
        )
        await fresh_task_runs(sup)


async def test_a_crash_is_an_attempt_and_retries_run_it_again(tmp_path: Path) -> None:
    """retries=1: the worker dies on the first attempt, the second succeeds."""
    async with tv.Supervisor(processes=2, aloops=()) as sup:
        marker = str(tmp_path / "crashed")
        res = await sup.submit(fw.crash_once, marker, runs_on="process", retries=1)
        assert (res.state, res.ok, res.ret, res.attempts) == (
            State.DONE,
            True,
            "second attempt",
            2,
        )
        assert os.path.exists(marker)  # noqa: ASYNC240 - a test assertion
        await fresh_task_runs(sup)


async def test_after_the_last_attempt_a_crash_is_final() -> None:
    """retries=1 and the worker dies both times: FAILED with WorkerCrashed, 2 attempts."""
    async with tv.Supervisor(processes=1, aloops=()) as sup:
        res = await sup.submit(fw.kill_self, runs_on="process", retries=1)
        crashed(res, -signal.SIGKILL)
        assert res.attempts == 2
        await fresh_task_runs(sup)


# ------------------------------------------------------------------ payload containment


async def test_unpicklable_result_fails_only_that_task() -> None:
    """A result that cannot be pickled in the child: RemoteError naming its type."""
    async with tv.Supervisor(processes=1, aloops=()) as sup:
        bad = sup.submit(fw.unpicklable_result, runs_on="process")
        good = sup.submit(fw.add, 2, 3, runs_on="process")
        remote(await bad, "TypeError", "lock", "could not be pickled")
        assert_done(await good, 5)
        await fresh_task_runs(sup)


async def test_unpicklable_exception_keeps_type_message_and_traceback() -> None:
    """An exception that cannot be pickled: RemoteError with its type, message, traceback."""
    async with tv.Supervisor(processes=1, aloops=()) as sup:
        res = await sup.submit(fw.raise_unpicklable, runs_on="process")
        err = remote(res, "Unpicklable", "cannot travel")
        assert "raise_unpicklable" in err.traceback_text
        assert res.attempts == 1
        await fresh_task_runs(sup)


async def test_exception_that_pickles_but_cannot_be_rebuilt() -> None:
    """Pickles, but unpickling fails (round-tripped in the child, as Dask does)."""
    async with tv.Supervisor(processes=1, aloops=()) as sup:
        res = await sup.submit(fw.raise_wont_load, runs_on="process")
        err = remote(res, "WontLoad", "x/y", "could not be pickled", "refusing to rebuild")
        assert "raise_wont_load" in err.traceback_text
        await fresh_task_runs(sup)


async def test_unpicklable_shared_dict_fails_only_that_task() -> None:
    """A shared dict the task filled with something unpicklable: RemoteError."""
    async with tv.Supervisor(processes=1, aloops=(), shared={"seed": 1}) as sup:
        res = await sup.submit(fw.bad_shared, runs_on="process")
        remote(res, "TypeError", "shared dict")
        assert res.shared == {"seed": 1}  # what it received: its writes could not come back
        await fresh_task_runs(sup)


async def test_unpicklable_argument_fails_at_dispatch_without_retry() -> None:
    """An argument that cannot be pickled: SpecError at dispatch, no retry, locks freed."""
    async with tv.Supervisor(processes=1, aloops=()) as sup:
        bad = sup.submit(fw.add, lambda: 1, runs_on="process", retries=2, claims="db")
        after = sup.submit(fw.add, 4, runs_on="process", claims="db")
        res = await bad
        assert res.state is State.FAILED and res.attempts == 1 and res.worker is None
        assert isinstance(res.error, tv.SpecError)
        assert res.name in str(res.error) and "pickled" in str(res.error)
        assert_done(await after, 4)  # the lock was released: it never ran
        await fresh_task_runs(sup)


# ------------------------------------------------------------------ killing on purpose


async def test_timeout_kills_the_worker_and_replaces_it(tmp_path: Path) -> None:
    """timeout= on a process task: the worker is killed at the deadline, a new one runs."""
    clock = DeadlineClock()  # the child computes before it blocks: move time by hand
    async with (
        tv.Supervisor(processes=1, aloops=(), clock=clock) as sup,
        announced(tmp_path, "t") as (fifo, started),
    ):
        before = await fresh_task_runs(sup)
        h = sup.submit(fw.announce_then_hang, fifo, runs_on="process", timeout=5)
        await started.wait()
        await clock.armed(5.0)  # the worker's STARTED notice arms the timeout
        assert clock.next_deadline == 5.0
        clock.advance(5)
        res = await h
        assert res.state is State.FAILED and res.attempts == 1
        assert isinstance(res.error, tv.TaskTimeout)
        assert res.error.timeout == 5 and res.error.abandoned is False
        assert res.worker == f"pid {before}"
        after = await fresh_task_runs(sup)
        assert after != before  # the killed worker was replaced


async def test_timeout_starts_when_a_worker_takes_the_job(tmp_path: Path) -> None:
    """With one worker busy, a queued process job's timeout has not started yet."""
    clock = MockClock(autojump=False)
    async with (
        tv.Supervisor(processes=1, aloops=(), clock=clock) as sup,
        announced(tmp_path, "a") as (fifo, started),
    ):
        first = sup.submit(fw.announce_then_hang, fifo, runs_on="process", name="first")
        queued = sup.submit(fw.add, 7, runs_on="process", timeout=1, name="queued")
        await started.wait()
        clock.advance(100)  # far beyond its timeout, but it never reached a worker
        sup.cancel(first)
        assert_done(await queued, 7)
        res = await first
        assert res.state is State.CANCELLED and isinstance(res.error, tv.TaskCancelled)


async def test_cancel_a_running_process_task_kills_its_worker(tmp_path: Path) -> None:
    """Cancel of a running process task: CANCELLED, its worker killed and replaced."""
    async with (
        tv.Supervisor(processes=1, aloops=()) as sup,
        announced(tmp_path, "c") as (fifo, started),
    ):
        before = await fresh_task_runs(sup)
        h = sup.submit(fw.announce_then_hang, fifo, runs_on="process", provides="p")
        child = sup.submit(fw.add, 1, runs_on="process", requires="p")
        await started.wait()
        h.cancel()
        res = await h
        assert res.state is State.CANCELLED and res.attempts == 1 and not res.ok
        assert isinstance(res.error, tv.TaskCancelled) and res.worker == f"pid {before}"
        skipped = await child
        assert skipped.state is State.SKIPPED
        assert isinstance(skipped.error, tv.DependencyError)
        assert tuple(skipped.error.failed) == (h.name,)
        assert await fresh_task_runs(sup) != before


async def test_cancel_a_queued_process_task_never_runs_it(tmp_path: Path) -> None:
    """Cancel of a process task waiting for a worker: CANCELLED, 0 attempts, nobody killed."""
    async with (
        tv.Supervisor(processes=1, aloops=()) as sup,
        announced(tmp_path, "q") as (fifo, started),
    ):
        busy = sup.submit(fw.announce_then_hang, fifo, runs_on="process", timeout=3600)
        await started.wait()
        queued = sup.submit(fw.add, 1, runs_on="process")
        queued.cancel()
        res = await queued
        assert res.state is State.CANCELLED and res.attempts == 0 and res.worker is None
        assert sup.task_state(busy) is State.RUNNING  # its worker was not touched
        busy.cancel()
        assert (await busy).state is State.CANCELLED
        await fresh_task_runs(sup)


async def test_fail_fast_with_a_crash_keeps_finished_siblings(tmp_path: Path) -> None:
    """fail_fast: a worker death cancels the running rest; what finished stays DONE."""
    async with (
        tv.Supervisor(processes=2, aloops=(), fail_fast=True) as sup,
        announced(tmp_path, "f") as (fifo, started),
    ):
        done = await sup.submit(fw.add, 1, 1, runs_on="process")
        hanging = sup.submit(fw.announce_then_hang, fifo, runs_on="process")
        await started.wait()
        dying = await sup.submit(fw.kill_self, runs_on="process")
        crashed(dying, -signal.SIGKILL)
        res = await hanging
        assert res.state is State.CANCELLED and isinstance(res.error, tv.TaskCancelled)
        assert "fail_fast" in res.error.reason
        assert_done(done, 2)
        await fresh_task_runs(sup)


async def test_closing_kills_running_process_tasks(tmp_path: Path) -> None:
    """aclose(cancel=True): a running process task is killed, ends CANCELLED, no child left."""
    sup = tv.Supervisor(processes=1, aloops=())
    await sup.start()
    async with announced(tmp_path, "x") as (fifo, started):
        h = sup.submit(fw.announce_then_hang, fifo, runs_on="process")
        await started.wait()
        with warnings.catch_warnings():
            report = await sup.aclose(cancel=True)
    res = await h
    assert res.state is State.CANCELLED and res.attempts == 1
    assert [r.name for r in report] == [h.name]
