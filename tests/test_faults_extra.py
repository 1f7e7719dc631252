"""More process-pool fault scenarios (issue 3), each asserting the whole ``TaskRes``.

What ``test_faults_process`` leaves open: a worker killed *from outside* mid-task while a
sibling provably runs on the other worker and five more wait; the same with ``retries=1``;
a segfault; a result that unpickles in the child but not in the parent; arguments that
cannot be unpickled in the worker; an unpicklable supervisor ``shared`` dict; timeouts
retried, exhausted and met; cancel and crash of a lock holder; closing with a time limit
and on an exception.

Synchronisation: a worker writes its pid to a FIFO the test reads on its event loop when
a job starts (the test keeps a write end open, so the FIFO never reports EOF), a job that
must stay running blocks on an ``flock`` the test holds, and time is a hand-moved
``MockClock`` (so ``wait_time`` and ``run_time`` are exact). Nothing sleeps.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import multiprocessing
import os
import signal
import threading
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest

import taskvisor as tv
from taskvisor import State, _worker
from taskvisor._executors import Job
from taskvisor._procpool import ProcessPool
from taskvisor.testing import MockClock

from .conftest import DeadlineClock, end_of_turn

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)

pytestmark = pytest.mark.slow

WAIT = 30.0  # a failure guard, never a synchronisation


# ------------------------------------------------------------------ run in the workers


def job(fifo: str, gate: str | None, then: str, marker: str | None = None) -> int:
    """Announce this worker's pid on ``fifo``, wait for ``gate`` to open, then ``then``.

    With ``marker``: the first attempt creates it; a later attempt returns at once.
    """
    if marker is not None:
        if os.path.exists(marker):
            return os.getpid()
        Path(marker).write_text("first attempt")
    with open(fifo, "w") as f:
        f.write(f"{os.getpid()}\n")
    if gate is not None:
        with open(gate, "rb") as g:
            fcntl.flock(g, fcntl.LOCK_SH)  # blocks while the test holds LOCK_EX
    if then == "hang":
        threading.Event().wait()  # until the worker is killed
    elif then == "exit":
        os._exit(3)
    elif then == "segfault":
        ctypes.string_at(0)
    elif then == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


def whoami(tag: str) -> tuple[str, int]:
    return tag, os.getpid()


def takes_shared(shared: dict[str, Any]) -> list[str]:
    return sorted(shared)


def _only_in_a_worker(what: str) -> Any:
    if multiprocessing.parent_process() is None:
        raise RuntimeError(f"{what} refuses to unpickle in the parent")
    return ParentRefuses()


def _only_in_the_parent(what: str) -> Any:
    if multiprocessing.parent_process() is not None:
        raise RuntimeError(f"{what} refuses to unpickle in a worker")
    return WorkerRefuses()


class ParentRefuses:
    """Pickles anywhere, unpickles only in a worker (so the child's round trip passes)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_only_in_a_worker, ("ParentRefuses",))


class WorkerRefuses:
    """Pickles anywhere, unpickles only in the parent."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_only_in_the_parent, ("WorkerRefuses",))


def return_parent_refuses() -> ParentRefuses:
    return ParentRefuses()


def echo(x: T) -> T:
    return x


# ------------------------------------------------------------------ the test's side


class Kit:
    """A FIFO the workers announce their pids on, and flock gates the test holds."""

    def __init__(self, tmp_path: Path) -> None:
        self._dir = tmp_path
        path = tmp_path / "announce.fifo"
        os.mkfifo(path)
        self.fifo = str(path)
        self._rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self._wfd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # never EOF, never a spin
        self._buf = b""
        self._pids: asyncio.Queue[int] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._rfd, self._readable)
        self._gates: dict[str, int] = {}

    def _readable(self) -> None:
        try:
            data = os.read(self._rfd, 4096)
        except BlockingIOError:
            return
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            self._pids.put_nowait(int(line))

    async def started(self) -> int:
        """The pid of the next worker that announced a job start."""
        return await self._pids.get()

    def path(self, name: str) -> str:
        return str(self._dir / name)

    def gate(self, name: str) -> str:
        """A closed gate: jobs given its path block until :meth:`open` is called."""
        path = self.path(f"{name}.gate")
        fd = os.open(path, os.O_CREAT | os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._gates[path] = fd
        return path

    def open(self, gate: str) -> None:
        fd = self._gates.pop(gate)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def close(self) -> None:
        for gate in list(self._gates):
            self.open(gate)
        self._loop.remove_reader(self._rfd)
        os.close(self._rfd)
        os.close(self._wfd)
        assert self._pids.empty(), "a job announced a start the test did not expect"


@asynccontextmanager
async def kit_for(tmp_path: Path) -> AsyncIterator[Kit]:
    kit = Kit(tmp_path)
    try:
        yield kit
    finally:
        kit.close()


def expect(
    res: tv.TaskRes[Any],
    state: State,
    *,
    name: str,
    attempts: int,
    worker: str | None,
    ret: object = None,
    error: type[E] | None = None,
    wait_time: float = 0.0,
    run_time: float = 0.0,
    dispatched: bool = True,
) -> Any:
    """The whole TaskRes of a process task; returns its exception (or None)."""
    assert res.name == name and res.task.name == name, res
    assert res.state is state, res
    assert res.ok is (state is State.DONE)
    assert res.ret == ret, res.ret
    assert res.runs_on == "process"
    assert res.attempts == attempts, res.attempts
    assert res.worker == worker, res.worker
    assert res.wait_time == wait_time, res.wait_time
    assert res.run_time == run_time, res.run_time
    if dispatched:
        assert res.started_at is not None and res.submitted_at <= res.started_at
    else:
        assert res.started_at is None
    assert res.submitted_at <= res.finished_at
    if error is None:
        assert res.excinfo is None and res.error is None
        return None
    assert res.excinfo is not None, res
    assert res.excinfo.type is error and type(res.error) is error, res.excinfo
    return res.error


def expect_crash(res: tv.TaskRes[Any], pid: int, how: str, *, attempts: int = 1) -> None:
    err = expect(
        res, State.FAILED, name=res.name, attempts=attempts, worker=f"pid {pid}",
        error=tv.WorkerCrashed,
    )  # fmt: skip
    exitcode, sig, text = {
        "sigkill": (-signal.SIGKILL, "SIGKILL", "was killed by SIGKILL"),
        "exit": (3, None, "exited with code 3"),
        "segfault": (-signal.SIGSEGV, "SIGSEGV", "was killed by SIGSEGV"),
    }[how]
    assert (err.task, err.pid, err.exitcode, err.signal) == (res.name, pid, exitcode, sig)
    assert str(err) == f"worker process {pid} {text} while running {res.name!r}"


async def fresh(sup: tv.Supervisor, tag: str = "fresh") -> int:
    """After a fault, the same process pool still runs a new task; returns its pid."""
    res = await sup.submit(whoami, tag, name=tag, runs_on="process")
    assert res.ret is not None
    pid = res.ret[1]
    expect(res, State.DONE, name=tag, attempts=1, worker=f"pid {pid}", ret=(tag, pid))
    return pid


async def call_and_mark(entered: asyncio.Event, call: Awaitable[T]) -> T:
    entered.set()
    return await call


def trigger(kit: Kit, gate: str, pid: int, how: str) -> None:
    """Make the victim's worker die: SIGKILL from outside, or open its gate."""
    if how == "sigkill":
        os.kill(pid, signal.SIGKILL)
    else:
        kit.open(gate)


HOW = pytest.mark.parametrize("how", ["sigkill", "exit", "segfault"])


class Scene:
    """A sibling provably running on one worker, a victim running on the other (about to
    die as ``how`` says), and five tasks waiting behind them."""

    sibling: tv.TaskHandle[int]
    sib_pid: int
    victim: tv.TaskHandle[int]
    vic_pid: int
    queued: list[tv.TaskHandle[tuple[str, int]]]

    def __init__(self, kit: Kit, how: str) -> None:
        self.kit, self.how = kit, how
        self.sib_gate, self.vic_gate = kit.gate("sibling"), kit.gate("victim")

    @classmethod
    async def start(cls, kit: Kit, sup: tv.Supervisor, how: str, *, retries: int = 0) -> Scene:
        self = cls(kit, how)
        self.sibling = sup.submit(
            job, kit.fifo, self.sib_gate, "return", name="sibling", runs_on="process"
        )
        self.sib_pid = await kit.started()
        then = "hang" if how == "sigkill" else how
        marker = kit.path("marker") if retries else None
        self.victim = sup.submit(
            job, kit.fifo, self.vic_gate, then, marker, name="victim", runs_on="process",
            retries=retries,
        )  # fmt: skip
        self.vic_pid = await kit.started()
        assert self.vic_pid != self.sib_pid
        self.queued = [
            sup.submit(whoami, f"q{i}", name=f"q{i}", runs_on="process") for i in range(5)
        ]
        return self

    def trigger(self) -> None:
        trigger(self.kit, self.vic_gate, self.vic_pid, self.how)

    async def sibling_ends_well(self) -> None:
        """The sibling still runs through all of it; released, it ends DONE."""
        assert self.sibling.state is State.RUNNING and not self.sibling.done()
        self.kit.open(self.sib_gate)
        expect(
            await self.sibling, State.DONE, name="sibling", attempts=1,
            worker=f"pid {self.sib_pid}", ret=self.sib_pid,
        )  # fmt: skip


# ------------------------------------------------------------------ worker deaths


@HOW
async def test_worker_dies_mid_task_while_a_sibling_runs_and_five_wait(
    tmp_path: Path, how: str
) -> None:
    """A worker dies mid-task while the other worker runs a sibling and 5 tasks wait:
    only the victim fails; the 5 run on the replacement while the sibling still runs."""
    async with (
        kit_for(tmp_path) as kit,
        tv.Supervisor(processes=2, aloops=(), pool_size=16, clock=MockClock(autojump=False))
        as sup,
    ):  # fmt: skip
        scene = await Scene.start(kit, sup, how)
        victim, vic_pid, sib_pid, queued = scene.victim, scene.vic_pid, scene.sib_pid, scene.queued
        assert not scene.sibling.done() and not victim.done()
        assert not any(h.done() for h in queued)

        scene.trigger()
        res = await victim
        expect_crash(res, vic_pid, how)
        pids = set()
        for i, h in enumerate(queued):
            q = await h  # while the sibling still blocks its worker
            assert q.ret is not None
            pid = q.ret[1]
            expect(q, State.DONE, name=f"q{i}", attempts=1, worker=f"pid {pid}", ret=(f"q{i}", pid))
            pids.add(pid)
        assert not pids & {vic_pid, sib_pid}  # the replacement ran them
        await scene.sibling_ends_well()
        assert await fresh(sup) != vic_pid


@pytest.mark.parametrize("how", ["sigkill", "exit"])
async def test_worker_death_retried_succeeds_on_the_second_attempt(
    tmp_path: Path, how: str
) -> None:
    """retries=1: the victim's worker dies mid-task, the retry succeeds on another worker;
    the running sibling and the 5 waiting tasks are untouched."""
    async with (
        kit_for(tmp_path) as kit,
        tv.Supervisor(processes=2, aloops=(), pool_size=16, clock=MockClock(autojump=False))
        as sup,
    ):  # fmt: skip
        scene = await Scene.start(kit, sup, how, retries=1)
        vic_pid, sib_pid, queued = scene.vic_pid, scene.sib_pid, scene.queued
        scene.trigger()
        res = await scene.victim
        assert isinstance(res.ret, int) and res.ret not in (vic_pid, sib_pid)
        expect(res, State.DONE, name="victim", attempts=2, worker=f"pid {res.ret}", ret=res.ret)
        for i, h in enumerate(queued):
            q = await h
            assert q.ret is not None and q.ret[1] not in (vic_pid, sib_pid)
            expect(
                q, State.DONE, name=f"q{i}", attempts=1, worker=f"pid {q.ret[1]}",
                ret=(f"q{i}", q.ret[1]),
            )  # fmt: skip
        await scene.sibling_ends_well()
        await fresh(sup)


async def test_a_crashed_lock_holder_keeps_its_lock_and_skips_its_dependents(
    tmp_path: Path,
) -> None:
    """WorkerCrashed is a failure: dependents SKIPPED, the claim stays held (LockError)."""
    async with (
        kit_for(tmp_path) as kit,
        tv.Supervisor(processes=1, aloops=(), clock=MockClock(autojump=False)) as sup,
    ):
        gate = kit.gate("holder")
        holder = sup.submit(
            job, kit.fifo, gate, "kill", name="holder", runs_on="process", claims="db",
            provides="data",
        )  # fmt: skip
        pid = await kit.started()
        waiter = sup.submit(echo, 1, name="waiter", runs_on="process", claims="db")
        child = sup.submit(echo, 2, name="child", runs_on="process", requires="data")
        assert (waiter.state, child.state) == (State.LOCKED, State.WAITING)
        kit.open(gate)
        with pytest.warns(tv.TaskvisorWarning) as rec:
            res = await holder
        assert [str(w.message) for w in rec] == [
            "task 'holder' failed: 1 dependent task(s) and 1 task(s) waiting for a lock it held "
            "skipped; lock(s) 'db' stay held"
        ]
        expect_crash(res, pid, "sigkill")
        lock = expect(
            await waiter, State.SKIPPED, name="waiter", attempts=0, worker=None,
            error=tv.LockError, dispatched=False,
        )  # fmt: skip
        assert (lock.resource, lock.holder) == ("db", "holder")
        dep = expect(
            await child, State.SKIPPED, name="child", attempts=0, worker=None,
            error=tv.DependencyError, dispatched=False,
        )  # fmt: skip
        assert dep.failed == ("holder",)
        assert await fresh(sup) != pid


# ------------------------------------------------------------------ payload containment


async def test_a_result_that_cannot_be_unpickled_in_the_parent_is_a_remote_error() -> None:
    """The child's round trip passes, the parent's unpickling fails: RemoteError, retried
    like any exception, and the worker is kept."""
    async with tv.Supervisor(processes=1, aloops=(), clock=MockClock(autojump=False)) as sup:
        before = await fresh(sup, "before")
        res = await sup.submit(return_parent_refuses, name="picky", runs_on="process", retries=1)
        err = expect(
            res, State.FAILED, name="picky", attempts=2, worker=f"pid {before}",
            error=tv.RemoteError,
        )  # fmt: skip
        assert err.type_name == "RuntimeError", err.type_name
        assert "could not be unpickled" in err.message
        assert "ParentRefuses refuses to unpickle in the parent" in err.message
        assert err.traceback_text and res.excinfo is not None and res.excinfo.text
        assert await fresh(sup) == before  # nothing was killed


async def test_arguments_that_cannot_be_unpickled_in_the_worker_are_a_spec_error() -> None:
    """docs/failures.rst: SpecError raised in the worker, attempts 1, worker 'pid N', not
    retried, locks released."""
    async with tv.Supervisor(processes=1, aloops=(), clock=MockClock(autojump=False)) as sup:
        before = await fresh(sup, "before")
        bad = sup.submit(
            echo, WorkerRefuses(), name="bad-arg", runs_on="process", retries=2, claims="db",
            provides="out",
        )  # fmt: skip
        after = sup.submit(echo, "after", name="after", runs_on="process", claims="db")
        child = sup.submit(echo, "child", name="child", runs_on="process", requires="out")
        res = await bad
        err = expect(
            res, State.FAILED, name="bad-arg", attempts=1, worker=f"pid {before}",
            error=tv.SpecError,
        )  # fmt: skip
        assert "'bad-arg'" in str(err)
        expect(
            await after, State.DONE, name="after", attempts=1, worker=f"pid {before}",
            ret="after",
        )  # fmt: skip
        dep = expect(
            await child, State.SKIPPED, name="child", attempts=0, worker=None,
            error=tv.DependencyError, dispatched=False,
        )  # fmt: skip
        assert dep.failed == ("bad-arg",)
        assert await fresh(sup) == before


async def test_an_unpicklable_shared_dict_fails_only_process_tasks_taking_it() -> None:
    """shared={'lock': Lock()}: a process task taking ``shared`` fails at dispatch with
    SpecError (no retry); process tasks without it and thread tasks with it run."""
    lock = threading.Lock()
    async with tv.Supervisor(
        processes=1, aloops=(), shared={"lock": lock}, clock=MockClock(autojump=False)
    ) as sup:
        res = await sup.submit(takes_shared, name="wants-shared", runs_on="process", retries=2)
        err = expect(
            res, State.FAILED, name="wants-shared", attempts=1, worker=None,
            error=tv.SpecError,
        )  # fmt: skip
        assert "'wants-shared'" in str(err) and "pickled" in str(err)
        assert res.shared == {"lock": lock}
        on_thread = await sup.submit(takes_shared, name="on-thread", runs_on="thread")
        assert (on_thread.state, on_thread.ret) == (State.DONE, ["lock"])
        await fresh(sup)


# ------------------------------------------------------------------ timeouts


async def test_process_timeout_is_retried_and_the_second_attempt_succeeds(
    tmp_path: Path,
) -> None:
    """timeout=5, retries=1: the first attempt is killed at t=5, the second succeeds."""
    clock = DeadlineClock()
    async with (
        kit_for(tmp_path) as kit,
        tv.Supervisor(processes=1, aloops=(), clock=clock) as sup,
    ):
        marker = kit.path("marker")
        h = sup.submit(
            job, kit.fifo, None, "hang", marker, name="slow", runs_on="process", timeout=5,
            retries=1,
        )  # fmt: skip
        first = await kit.started()
        await clock.armed(5.0)
        clock.advance(5)
        res = await h
        assert isinstance(res.ret, int) and res.ret != first
        expect(
            res, State.DONE, name="slow", attempts=2, worker=f"pid {res.ret}", ret=res.ret,
            run_time=5.0,
        )  # fmt: skip
        assert await fresh(sup) == res.ret


async def test_process_timeout_on_every_attempt_is_a_task_timeout(tmp_path: Path) -> None:
    """timeout=5, retries=1, hangs each time: FAILED TaskTimeout, 2 attempts, 2 kills."""
    clock = DeadlineClock()
    async with (
        kit_for(tmp_path) as kit,
        tv.Supervisor(processes=1, aloops=(), clock=clock) as sup,
    ):
        h = sup.submit(
            job, kit.fifo, None, "hang", name="slow", runs_on="process", timeout=5, retries=1
        )
        first = await kit.started()
        await clock.armed(5.0)
        clock.advance(5)
        second = await kit.started()
        assert second != first
        await clock.armed(10.0)
        clock.advance(4.9)
        assert not h.done()
        clock.advance(0.1)
        res = await h
        err = expect(
            res, State.FAILED, name="slow", attempts=2, worker=f"pid {second}",
            error=tv.TaskTimeout, run_time=10.0,
        )  # fmt: skip
        assert (err.task, err.timeout, err.abandoned) == ("slow", 5.0, False)
        assert str(err) == "task 'slow' timed out after 5 s"
        assert await fresh(sup) not in (first, second)


async def test_process_task_finishing_within_its_timeout_keeps_its_worker(
    tmp_path: Path,
) -> None:
    """Released after 9 s of a 10 s timeout: DONE; the timer is disarmed, nobody killed."""
    clock = DeadlineClock()
    async with (
        kit_for(tmp_path) as kit,
        tv.Supervisor(processes=1, aloops=(), clock=clock) as sup,
    ):
        gate = kit.gate("quick")
        h = sup.submit(job, kit.fifo, gate, "return", name="quick", runs_on="process", timeout=10)
        pid = await kit.started()
        await clock.armed(10.0)
        clock.advance(9)
        kit.open(gate)
        res = await h
        expect(
            res, State.DONE, name="quick", attempts=1, worker=f"pid {pid}", ret=pid, run_time=9.0
        )
        clock.advance(50)
        assert h.result() is res
        assert await fresh(sup) == pid


# ------------------------------------------------------------------ cancel and close


async def test_cancel_a_running_process_lock_holder_releases_its_lock(tmp_path: Path) -> None:
    """Cancel kills the worker: CANCELLED; the claim is released (the waiter runs) and
    its dependents are SKIPPED naming it."""
    async with (
        kit_for(tmp_path) as kit,
        tv.Supervisor(processes=1, aloops=(), clock=MockClock(autojump=False)) as sup,
    ):
        holder = sup.submit(
            job, kit.fifo, kit.gate("holder"), "return", name="holder", runs_on="process",
            claims="db", provides="data",
        )  # fmt: skip
        pid = await kit.started()
        waiter = sup.submit(whoami, "w", name="waiter", runs_on="process", claims="db")
        child = sup.submit(whoami, "c", name="child", runs_on="process", requires="data")
        assert (waiter.state, child.state) == (State.LOCKED, State.WAITING)
        sup.cancel("holder")
        err = expect(
            await holder, State.CANCELLED, name="holder", attempts=1, worker=f"pid {pid}",
            error=tv.TaskCancelled,
        )  # fmt: skip
        assert (err.task, err.reason) == ("holder", "cancelled")
        w = await waiter
        assert w.ret is not None and w.ret[1] != pid  # on the replacement worker
        expect(w, State.DONE, name="waiter", attempts=1, worker=f"pid {w.ret[1]}", ret=w.ret)
        dep = expect(
            await child, State.SKIPPED, name="child", attempts=0, worker=None,
            error=tv.DependencyError, dispatched=False,
        )  # fmt: skip
        assert dep.failed == ("holder",)
        await fresh(sup)


async def test_aclose_wait_seconds_kills_running_process_tasks_at_the_deadline(
    tmp_path: Path,
) -> None:
    """aclose(wait=10): the running process task is killed at t=10, the one waiting for
    the only worker is withdrawn (0 attempts); no child process is left."""
    clock = DeadlineClock()
    async with kit_for(tmp_path) as kit:
        sup = tv.Supervisor(processes=1, aloops=(), clock=clock)
        async with sup:
            # watched (it has a timeout): nothing is ever sent behind it to its worker
            hung = sup.submit(
                job, kit.fifo, None, "hang", name="hung", runs_on="process", timeout=3600
            )
            pid = await kit.started()
            await clock.armed(3600.0)
            queued = sup.submit(whoami, "q", name="queued", runs_on="process")
            entered = asyncio.Event()
            closing = asyncio.create_task(call_and_mark(entered, sup.aclose(wait=10)))
            await entered.wait()
            clock.advance(9.9)
            assert not closing.done() and not hung.done() and not queued.done()
            clock.advance(0.1)
            report = await closing
        expect_closed_at_the_deadline(report, hung, queued, pid)


def expect_closed_at_the_deadline(
    report: tv.RunReport, hung: tv.TaskHandle[Any], queued: tv.TaskHandle[Any], pid: int
) -> None:
    """aclose(wait=10) ran out: the running 'hung' was killed (1 attempt), the queued one
    never started (0 attempts); both CANCELLED, naming the deadline."""
    assert [r.name for r in report] == ["hung", "queued"]
    reason = "supervisor closing: aclose waited 10 s"
    err = expect(
        hung.result(), State.CANCELLED, name="hung", attempts=1, worker=f"pid {pid}",
        error=tv.TaskCancelled, run_time=10.0,
    )  # fmt: skip
    assert err.reason == reason
    err = expect(
        queued.result(), State.CANCELLED, name="queued", attempts=0, worker=None,
        error=tv.TaskCancelled, run_time=10.0,
    )  # fmt: skip
    assert err.reason == reason


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
async def test_aclose_deadline_withdraws_a_queued_task_already_sent_to_a_new_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The close race, forced. At the deadline the supervisor cancels 'hung', then
    'queued'; in between (the wrapped ``ProcessPool.cancel`` waits for it) the pool kills
    hung's worker, starts a replacement and sends it 'queued'. The replacement is held
    before it serves (start method fork: it inherits a patched ``_serve``), so 'queued'
    provably never started: CANCELLED with 0 attempts. Before the fix the pool said it
    was "on a worker" (cancel returned False): here the released replacement then ran it
    to DONE; unforced, the task ended CANCELLED with 1 attempt (often, under load)."""
    pool_cancel, pool_dispatch = ProcessPool.cancel, ProcessPool._dispatch
    sent = threading.Event()  # the pool sent 'queued' to a worker
    forced: list[bool] = []
    hold_r, hold_w = os.pipe()

    def dispatch(pool: ProcessPool, now: float) -> None:
        pool_dispatch(pool, now)
        with pool._lock:
            if any(s is not None and s.job.name == "queued" for s in pool._pending.values()):
                sent.set()

    def cancel(pool: ProcessPool, job: Job) -> bool:
        out = pool_cancel(pool, job)
        if job.name == "hung":
            with pool._lock:
                behind = any(j.name == "queued" for j in pool._pending)
            if behind:  # the supervisor's next statement cancels it: not before it is sent
                forced.append(sent.wait(WAIT))
        elif job.name == "queued":
            os.write(hold_w, b"x")  # let the replacement serve
        return out

    def held_serve(*args: Any) -> None:
        os.read(hold_r, 1)
        serve(*args)

    serve = _worker._serve
    monkeypatch.setattr(ProcessPool, "_dispatch", dispatch)
    monkeypatch.setattr(ProcessPool, "cancel", cancel)
    clock = DeadlineClock()
    try:
        async with kit_for(tmp_path) as kit:
            sup = tv.Supervisor(processes=1, aloops=(), clock=clock, start_method="fork")
            async with sup:
                hung = sup.submit(
                    job, kit.fifo, None, "hang", name="hung", runs_on="process", timeout=3600
                )
                pid = await kit.started()
                await clock.armed(3600.0)
                monkeypatch.setattr(_worker, "_serve", held_serve)  # forked from now on
                queued = sup.submit(whoami, "q", name="queued", runs_on="process")
                entered = asyncio.Event()
                closing = asyncio.create_task(call_and_mark(entered, sup.aclose(wait=10)))
                await entered.wait()
                clock.advance(10)
                report = await closing
    finally:
        os.close(hold_r)
        os.close(hold_w)
    assert forced == [True]  # the interleaving happened
    expect_closed_at_the_deadline(report, hung, queued, pid)


async def test_leaving_async_with_on_an_exception_kills_process_tasks(tmp_path: Path) -> None:
    """An exception in the block: the running process task is killed, the queued one
    withdrawn, both CANCELLED 'supervisor closing'; the exception propagates."""
    clock = DeadlineClock()
    handles: list[tv.TaskHandle[Any]] = []
    pids: list[int] = []

    async def scenario(kit: Kit) -> NoReturn:
        async with tv.Supervisor(processes=1, aloops=(), clock=clock) as sup:
            handles.append(
                sup.submit(
                    job, kit.fifo, None, "hang", name="hung", runs_on="process", timeout=3600
                )
            )
            pids.append(await kit.started())
            await clock.armed(3600.0)
            handles.append(sup.submit(whoami, "q", name="queued", runs_on="process"))
            await end_of_turn()  # dispatched: queued in the pool behind the hung task
            raise KeyError("user code broke")

    async with kit_for(tmp_path) as kit:
        with pytest.raises(KeyError, match="user code broke"):
            await scenario(kit)
    hung, queued = handles
    err = expect(
        await hung, State.CANCELLED, name="hung", attempts=1, worker=f"pid {pids[0]}",
        error=tv.TaskCancelled,
    )  # fmt: skip
    assert err.reason == "supervisor closing"
    err = expect(
        await queued, State.CANCELLED, name="queued", attempts=0, worker=None,
        error=tv.TaskCancelled,
    )  # fmt: skip
    assert err.reason == "supervisor closing"
