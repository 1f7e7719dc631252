"""The crash-tolerant process pool, end to end (spawn workers, a recording sink).

Nothing here sleeps to synchronise: a job that must be *running* is watched and the test
waits for its ``STARTED`` report (which carries the worker's pid); a job that must stay
running blocks on a shared ``flock`` the test holds, or for ever until it is killed. The
timeouts below only turn a hang into a failure.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import psutil
import pytest

import taskvisor as tv
from taskvisor import _procwindow, _worker
from taskvisor._errors import ClosedError, RemoteError, SpecError, WorkerCrashed
from taskvisor._executors import Job, Outcome, Result
from taskvisor._procpool import ProcessPool

pytestmark = pytest.mark.slow

WAIT = 30.0  # a failure guard, never a synchronisation


# --------------------------------------------------------------- run in the workers


def add(a: int, b: int) -> int:
    return a + b


def my_pid() -> int:
    return os.getpid()


def fail_deep(msg: str) -> None:
    _inner_failure(msg)


def _inner_failure(msg: str) -> None:
    raise ValueError(msg)


def with_shared(x: int, shared: dict[str, Any]) -> int:
    shared["seen"] = x
    return x * 2


def hang() -> None:
    threading.Event().wait()  # until the worker is killed


def gated(gate: str, value: int) -> int:
    """Wait until the test releases its exclusive lock on ``gate``."""
    with open(gate, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_SH)
    return value


def exit3() -> None:
    os._exit(3)


def return_lock() -> threading.Lock:
    return threading.Lock()


class LockedError(Exception):
    def __init__(self) -> None:
        super().__init__("carries a lock")
        self.lock = threading.Lock()


def raise_locked() -> None:
    raise LockedError


def _only_in_a_child(what: str) -> Any:
    if multiprocessing.parent_process() is None:
        raise RuntimeError(f"a {what} that refuses to unpickle in the parent")
    return PickyError(what) if what == "PickyError" else Picky()


class PickyError(Exception):
    """Pickles anywhere, unpickles only in a worker."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_only_in_a_child, ("PickyError",))


class Picky:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_only_in_a_child, ("Picky",))


def raise_picky() -> NoReturn:
    raise PickyError("picky")


def return_picky() -> Picky:
    return Picky()


def identity(x: Any) -> Any:
    return x


async def async_add(a: int, b: int) -> int:
    return a + b


def answer_then_exit(x: int) -> int:
    """Return ``x``; the worker exits right after writing this job's answer."""
    from taskvisor import _worker

    write = _worker._write_all

    def write_then_exit(fd: int, data: bytes) -> None:
        write(fd, data)
        os._exit(7)

    _worker._write_all = write_then_exit
    return x


def half_answer_then_exit(x: int) -> int:
    """Return ``x``; the worker exits half way through writing this job's answer."""
    from taskvisor import _worker

    write = _worker._write_all

    def write_half_and_exit(fd: int, data: bytes) -> None:
        write(fd, data[: len(data) // 2])
        os._exit(7)

    _worker._write_all = write_half_and_exit
    return x


# ------------------------------------------------------------------------- harness


class Reports:
    """The pool's sink: records every report and wakes the waiting test."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.items: list[tuple[Job, Result]] = []

    def __call__(self, job: Job, result: Result) -> None:
        with self.cond:
            self.items.append((job, result))
            self.cond.notify_all()

    def of(self, job: Job) -> list[Result]:
        with self.cond:
            return [r for j, r in self.items if j is job]

    def ends(self, job: Job) -> list[Result]:
        return [r for r in self.of(job) if r[0] is not Outcome.STARTED]

    def wait(self, ready: Callable[[], bool]) -> None:
        with self.cond:
            assert self.cond.wait_for(ready, WAIT), f"timed out; reports: {self.items}"

    def end(self, job: Job) -> Result:
        """Wait for the job's one ending."""
        self.wait(lambda: any(r[0] is not Outcome.STARTED for j, r in self.items if j is job))
        (result,) = self.ends(job)
        return result

    def started(self, job: Job) -> int:
        """Wait for the job's STARTED report; the pid it runs on."""
        self.wait(lambda: any(r[0] is Outcome.STARTED for j, r in self.items if j is job))
        (result,) = [r for r in self.of(job) if r[0] is Outcome.STARTED]
        worker = result[4]
        assert worker is not None and worker.startswith("pid ")
        return int(worker[4:])


def job(fn: Callable[..., Any], *args: Any, name: str | None = None, watch: bool = False) -> Job:
    j = Job(name or fn.__name__, fn, args, {}, None, "process")
    j.watch = watch
    return j


def cancel(pool: ProcessPool, j: Job, reason: str = "cancelled") -> None:
    j.cancelled = reason
    pool.cancel(j)


def children() -> set[int]:
    out = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" in " ".join(child.cmdline()):
                continue
        except psutil.Error:
            continue
        out.add(child.pid)
    return out


@pytest.fixture
def reports() -> Reports:
    return Reports()


@pytest.fixture
def make_pool(reports: Reports) -> Iterator[Callable[..., ProcessPool]]:
    pools: list[ProcessPool] = []

    def make(size: int = 2, **kw: Any) -> ProcessPool:
        pool = ProcessPool(size, reports, **kw)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.shutdown()


class Gate:
    """A file ``gated`` jobs block on (a shared flock) until ``release``."""

    def __init__(self, path: Path) -> None:
        path.write_bytes(b"")
        self.path = str(path)
        self._file = open(path, "rb")  # noqa: SIM115 - held until released
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def release(self) -> None:
        self._file.close()


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    g = Gate(tmp_path / "gate")
    yield g
    g.release()


# --------------------------------------------------------------------------- tests


_FORK_WARNING = "ignore:This process .* is multi-threaded:DeprecationWarning"  # 3.12+


@pytest.mark.parametrize(
    "start_method", ["spawn", pytest.param("fork", marks=pytest.mark.filterwarnings(_FORK_WARNING))]
)
def test_results_errors_and_shared(
    make_pool: Callable[..., ProcessPool], reports: Reports, start_method: str
) -> None:
    pool = make_pool(2, start_method=start_method)
    assert not pool.started
    ok, bad = job(add, 1, 2), job(fail_deep, "boom")
    shared = Job("shared", with_shared, (21,), {}, {"a": 1}, "process")
    for j in (ok, bad, shared):
        pool.submit(j)
    assert pool.started

    outcome, ret, _, excinfo, worker = reports.end(ok)
    assert (outcome, ret, excinfo) == (Outcome.OK, 3, None)
    assert worker is not None and int(worker[4:]) in pool.pids

    outcome, ret, _, excinfo, _ = reports.end(bad)
    assert outcome is Outcome.ERROR and ret is None and excinfo is not None
    assert excinfo.type is ValueError and str(excinfo.val) == "boom"
    assert "_inner_failure" in excinfo.text and "raise ValueError(msg)" in excinfo.text

    outcome, ret, got, _, _ = reports.end(shared)
    assert (outcome, ret, got) == (Outcome.OK, 42, {"a": 1, "seen": 21})
    assert [r[0] for r in reports.of(ok)] == [Outcome.OK]  # not watched: no STARTED


def test_a_coroutine_function_runs_to_its_result_in_the_worker(
    make_pool: Callable[..., ProcessPool], reports: Reports
) -> None:
    pool = make_pool(1)
    j = job(async_add, 2, 3)
    pool.submit(j)
    assert reports.end(j)[:3] == (Outcome.OK, 5, None)


def test_a_call_without_keywords_pickles_them_as_a_plain_dict() -> None:
    """Every task without keywords shares one read-only empty dict; its payload must not
    go through that dict's ``__reduce__`` (a Python call and a ``builtins.dict`` global
    per job: 2.5 times the pickling time of a no-op's payload), and the worker must get a
    dict of its own it may fill."""
    spec = tv.Task(add, (1, 2))
    payload = _worker.dumps_call(spec.fn, spec.args, spec.kwargs, None)
    assert b"builtins" not in payload
    fn, args, kwargs, shared = pickle.loads(payload)
    assert (fn, args, kwargs, shared) == (add, (1, 2), {}, None)
    kwargs["x"] = 1  # a plain dict: writable
    assert spec.kwargs == {}
    keyed = tv.Task(add, (1,), {"b": 2})
    assert pickle.loads(_worker.dumps_call(keyed.fn, keyed.args, keyed.kwargs, None))[2] == {"b": 2}


_WORKER_IMPORTS = """
import sys
before = set(sys.modules)
import taskvisor._worker
print(" ".join(sorted(set(sys.modules) - before)))
"""


def test_the_worker_side_imports_little() -> None:
    """A spawned worker imports ``taskvisor._worker`` (and with it the package
    ``__init__``) before its first job: that is only ``_errors`` and light stdlib modules,
    never the runtime (asyncio, psutil, uvloop, tblib, the planner, the supervisor), nor
    ``logging`` or ``typing`` (~5 and ~3 ms of a worker's start: the package's logger is
    set up by the modules that log)."""
    out = subprocess.run(
        [sys.executable, "-c", _WORKER_IMPORTS], capture_output=True, text=True, check=True
    ).stdout.split()
    assert {"taskvisor", "taskvisor._errors", "taskvisor._worker"} <= set(out), out
    light = {"taskvisor", "taskvisor._errors", "taskvisor._worker"}
    heavy = {"asyncio", "psutil", "uvloop", "tblib", "concurrent", "logging", "typing"}
    loaded = [
        m for m in out if m.split(".")[0] in heavy or (m.startswith("taskvisor") and m not in light)
    ]
    assert not loaded, loaded


def test_the_library_logger_drops_records_until_configured() -> None:
    """The ``taskvisor`` logger has its ``NullHandler`` once any module that logs is
    imported (the logging HOWTO's advice for a library), even though the package
    ``__init__`` no longer sets it up."""
    import logging

    import taskvisor._engine  # noqa: F401  (a module that logs)

    handlers = logging.getLogger("taskvisor").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers), handlers


def test_many_jobs_each_reported_once(
    make_pool: Callable[..., ProcessPool], reports: Reports
) -> None:
    pool = make_pool(2)
    jobs = [job(add, i, 1, name=f"j{i}") for i in range(500)]
    for j in jobs:
        pool.submit(j)
    reports.wait(lambda: len(reports.items) >= len(jobs))
    for i, j in enumerate(jobs):
        assert [r[:2] for r in reports.of(j)] == [(Outcome.OK, i + 1)]
    assert 1 <= len(pool.pids) <= 2


def test_sigkill_mid_task_fails_only_that_job(
    make_pool: Callable[..., ProcessPool], reports: Reports, gate: Gate
) -> None:
    pool = make_pool(2)
    victim = job(hang, name="victim", watch=True)
    first = job(gated, gate.path, 0, name="g0", watch=True)
    others = [job(gated, gate.path, i, name=f"g{i}") for i in range(1, 6)]
    for j in (victim, first, *others):
        pool.submit(j)
    pid = reports.started(victim)
    other_pid = reports.started(first)  # running on the other worker
    assert pid != other_pid

    os.kill(pid, signal.SIGKILL)
    outcome, _, _, excinfo, worker = reports.end(victim)
    assert outcome is Outcome.ERROR and excinfo is not None
    err = excinfo.val
    assert isinstance(err, WorkerCrashed)
    assert (err.task, err.pid, err.exitcode, err.signal) == ("victim", pid, -9, "SIGKILL")
    assert worker == f"pid {pid}"
    assert not any(reports.ends(j) for j in (first, *others))  # the rest runs on

    gate.release()
    for i, j in enumerate((first, *others)):
        assert reports.end(j)[:2] == (Outcome.OK, i)
    assert pid not in pool.pids and other_pid in pool.pids

    after = job(my_pid)
    pool.submit(after)
    outcome, ret, *_ = reports.end(after)
    assert outcome is Outcome.OK and ret != pid


def test_exit_mid_task_and_the_jobs_behind_it(
    make_pool: Callable[..., ProcessPool], reports: Reports
) -> None:
    pool = make_pool(1)
    dying = job(exit3, name="dying")
    behind = [job(add, i, 1, name=f"b{i}") for i in range(5)]  # prefetched behind it
    for j in (dying, *behind):
        pool.submit(j)
    outcome, _, _, excinfo, _ = reports.end(dying)
    assert outcome is Outcome.ERROR and excinfo is not None
    assert isinstance(excinfo.val, WorkerCrashed)
    assert excinfo.val.exitcode == 3 and excinfo.val.signal is None
    assert "exited with code 3 while running 'dying'" in str(excinfo.val)
    for i, j in enumerate(behind):
        assert reports.end(j)[:2] == (Outcome.OK, i + 1)
    assert excinfo.val.pid not in pool.pids


def test_unpicklable_argument_fails_only_its_job(
    make_pool: Callable[..., ProcessPool], reports: Reports
) -> None:
    pool = make_pool(1)
    bad_arg = job(add, lambda: 1, 2, name="bad-arg")
    bad_fn = Job("bad-fn", lambda: 1, (), {}, None, "process")
    good = job(add, 2, 2)
    for j in (bad_arg, bad_fn, good):
        pool.submit(j)
    for j in (bad_arg, bad_fn):
        outcome, _, _, excinfo, worker = reports.end(j)
        assert outcome is Outcome.ERROR and excinfo is not None and worker is None
        assert isinstance(excinfo.val, SpecError)
        msg = str(excinfo.val)
        assert repr(j.name) in msg
        assert "arguments could not be pickled for a process worker" in msg
        assert "lambda" in msg  # the underlying error
    assert reports.end(good)[:2] == (Outcome.OK, 4)


@pytest.mark.parametrize(
    ("fn", "type_name", "words"),
    [
        (return_lock, "TypeError", "could not be pickled"),
        (raise_locked, "LockedError", "the exception could not be pickled"),
        (raise_picky, "PickyError", "the exception could not be unpickled"),
        (return_picky, "RuntimeError", "could not be unpickled"),
    ],
)
def test_what_cannot_cross_the_boundary_is_a_remote_error(
    make_pool: Callable[..., ProcessPool],
    reports: Reports,
    fn: Callable[[], Any],
    type_name: str,
    words: str,
) -> None:
    pool = make_pool(1)
    j, after = job(fn), job(add, 1, 1)
    pool.submit(j)
    pool.submit(after)
    outcome, _, _, excinfo, worker = reports.end(j)
    assert outcome is Outcome.ERROR and excinfo is not None and worker is not None
    err = excinfo.val
    assert isinstance(err, RemoteError), err
    assert err.type_name == type_name and words in err.message
    assert err.traceback_text and excinfo.text
    assert reports.end(after)[:2] == (Outcome.OK, 2)  # the worker is fine


def test_cancel_queued_reports_at_once(
    make_pool: Callable[..., ProcessPool], reports: Reports
) -> None:
    pool = make_pool(1)
    running = job(hang, name="running", watch=True)
    queued = job(add, 1, 1, name="queued")  # nothing is ever sent behind a watched job
    pool.submit(running)
    pool.submit(queued)
    pid = reports.started(running)
    cancel(pool, queued)
    assert reports.ends(queued) == [(Outcome.CANCELLED, None, None, None, None)]
    cancel(pool, queued)  # already reported: nothing
    assert pool.pids == [pid] and not reports.ends(running)
    cancel(pool, running)
    assert reports.end(running)[0] is Outcome.CANCELLED
    assert len(reports.ends(queued)) == 1


def test_cancel_a_job_waiting_behind_a_running_one(
    make_pool: Callable[..., ProcessPool], reports: Reports, gate: Gate
) -> None:
    pool = make_pool(1)
    head = job(gated, gate.path, 7, name="head")
    waiting = job(add, 1, 1, name="waiting")
    last = job(add, 2, 2, name="last")
    for j in (head, waiting, last):
        pool.submit(j)
    cancel(pool, waiting)
    assert reports.end(waiting)[0] is Outcome.CANCELLED
    gate.release()
    assert reports.end(head)[:2] == (Outcome.OK, 7)
    assert reports.end(last)[:2] == (Outcome.OK, 4)
    assert len(reports.ends(waiting)) == 1
    assert reports.end(head)[4] == reports.end(last)[4]  # same worker: nobody was killed


def test_cancel_running_kills_and_replaces_the_worker(
    make_pool: Callable[..., ProcessPool], reports: Reports
) -> None:
    pool = make_pool(1)
    running = job(hang, name="running", watch=True)
    pool.submit(running)
    pid = reports.started(running)
    queued = job(my_pid, name="queued")
    pool.submit(queued)
    cancel(pool, running, "timeout")
    assert reports.end(running) == (Outcome.CANCELLED, None, None, None, f"pid {pid}")
    assert pid not in children()  # killed and reaped before the report
    outcome, ret, *_ = reports.end(queued)
    assert outcome is Outcome.OK and ret != pid
    assert pool.pids == [ret]
    cancel(pool, queued)  # already reported: nothing
    assert len(reports.ends(queued)) == 1


class Hold:
    """Workers forked from now on wait before they serve (start any job) until released.

    A pipe, not a ``Gate``: a forked worker would inherit the test's ``flock`` (the same
    open file description), and so hold its own gate for ever."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._r, self._w = os.pipe()
        serve, rfd = _worker._serve, self._r

        def held(*args: Any) -> None:
            os.read(rfd, 1)
            serve(*args)

        monkeypatch.setattr(_worker, "_serve", held)  # a forked worker inherits it

    def release(self, workers: int = 1) -> None:
        os.write(self._w, b"x" * workers)

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)


@pytest.fixture
def hold(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], Hold]]:
    holds: list[Hold] = []

    def make() -> Hold:
        holds.append(Hold(monkeypatch))
        return holds[-1]

    yield make
    for h in holds:
        h.close()


def replacement_holding(
    pool: ProcessPool, reports: Reports, hold: Callable[[], Hold], n: int
) -> tuple[Hold, int, list[Job]]:
    """Cancel a running job while ``n`` wait behind it: its worker is killed and, in the
    same pass, the manager starts a replacement and sends it the ``n`` (the report of the
    kill comes after that pass). The replacement is held before it serves: it provably
    has started none of them. Returns the hold, the replacement's pid and the ``n`` jobs."""
    running = job(hang, name="running", watch=True)
    pool.submit(running)
    pid = reports.started(running)
    held = hold()
    queued = [job(my_pid, name=f"q{i}") for i in range(n)]  # none sent behind a watched job
    for j in queued:
        pool.submit(j)
    cancel(pool, running)
    assert reports.end(running) == (Outcome.CANCELLED, None, None, None, f"pid {pid}")
    (replacement,) = pool.pids
    assert replacement != pid and not any(reports.ends(j) for j in queued)
    return held, replacement, queued


@pytest.mark.filterwarnings(_FORK_WARNING)
def test_cancel_withdraws_a_job_sent_to_a_replacement_that_has_not_started_it(
    make_pool: Callable[..., ProcessPool], reports: Reports, hold: Callable[[], Hold]
) -> None:
    """The close race, forced: a closing supervisor cancels its running task, then the
    one queued behind it; between the two the manager has sent the queued job to the
    replacement of the killed worker. Its cancel must still return True (the supervisor
    then counts no attempt), as no worker started it; the replacement skips it."""
    pool = make_pool(1, start_method="fork")
    held, replacement, (queued,) = replacement_holding(pool, reports, hold, 1)
    queued.cancelled = "cancelled"
    assert pool.cancel(queued) is True  # was False: it is on a worker
    assert reports.ends(queued) == [(Outcome.CANCELLED, None, None, None, None)]
    held.release()
    after = job(my_pid, name="after")
    pool.submit(after)
    assert reports.end(after)[:2] == (Outcome.OK, replacement)
    assert len(reports.ends(queued)) == 1


@pytest.mark.filterwarnings(_FORK_WARNING)
def test_withdrawing_a_prefetched_job_gives_back_the_rest_of_the_window(
    make_pool: Callable[..., ProcessPool],
    reports: Reports,
    hold: Callable[[], Hold],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Withdrawing one job of a window revokes the whole unstarted window (one floor);
    the others are taken back, sent again and run, each reported once."""
    monkeypatch.setattr(_procwindow, "STEAL_AFTER", 3600.0)  # the manager revokes nothing
    pool = make_pool(1, start_method="fork")
    held, replacement, queued = replacement_holding(pool, reports, hold, 4)
    withdrawn = queued[1], queued[3]
    for j in withdrawn:
        j.cancelled = "cancelled"
        assert pool.cancel(j) is True
        assert reports.ends(j) == [(Outcome.CANCELLED, None, None, None, None)]
    held.release()
    for j in (queued[0], queued[2]):
        assert reports.end(j)[:2] == (Outcome.OK, replacement)
    assert pool.pids == [replacement]  # nobody was killed
    assert all(len(reports.ends(j)) == 1 for j in queued)


def test_watch_reports_started_once_before_the_end(
    make_pool: Callable[..., ProcessPool], reports: Reports
) -> None:
    pool = make_pool(1)
    watched = [job(my_pid, name=f"w{i}", watch=True) for i in range(3)]
    plain = job(my_pid, name="plain")
    for j in (*watched, plain):
        pool.submit(j)
    for j in watched:
        end = reports.end(j)
        assert end[0] is Outcome.OK and end[4] == f"pid {end[1]}"
        assert reports.of(j) == [(Outcome.STARTED, None, None, None, f"pid {end[1]}"), end]
    reports.end(plain)
    assert [r[0] for r in reports.of(plain)] == [Outcome.OK]


def test_shutdown_cancels_queued_and_running(
    make_pool: Callable[..., ProcessPool], reports: Reports
) -> None:
    before = children()
    pool = make_pool(2)
    running = [job(hang, name=f"r{i}", watch=True) for i in range(2)]
    queued = [job(add, i, 1, name=f"q{i}") for i in range(3)]
    for j in (*running, *queued):
        pool.submit(j)
    pids = {reports.started(j) for j in running}
    assert pids == set(pool.pids) and len(pids) == 2
    assert children() - before == pids

    pool.shutdown()
    for j in running:
        outcome, _, _, _, worker = reports.end(j)
        assert outcome is Outcome.CANCELLED and worker in {f"pid {p}" for p in pids}
    for j in queued:
        assert reports.end(j) == (Outcome.CANCELLED, None, None, None, None)
    assert len(reports.items) == 7  # 2 STARTED + 5 endings, each once
    assert children() == before
    assert not [t for t in threading.enumerate() if t.name.startswith("taskvisor-process")]
    assert pool.pids == []
    pool.shutdown()  # idempotent

    with pytest.raises(ClosedError) as info:
        pool.submit(job(add, 1, 1))
    assert (info.value.state, info.value.action) == ("closed", "submit to process")


def test_shutdown_lets_idle_workers_exit(
    make_pool: Callable[..., ProcessPool], reports: Reports, caplog: pytest.LogCaptureFixture
) -> None:
    before = children()
    pool = make_pool(2, label="procs")
    jobs = [job(add, i, 1) for i in range(4)]
    for j in jobs:
        pool.submit(j)
    reports.wait(lambda: len(reports.items) == 4)
    procs = [psutil.Process(p) for p in pool.pids]
    pool.shutdown()
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in procs)
    assert children() == before
    assert not [r for r in caplog.records if "did not exit" in r.getMessage()]
    with pytest.raises(ClosedError, match="submit to procs"):
        pool.submit(job(add, 1, 1))


def test_idle_worker_death_is_not_a_failure(
    make_pool: Callable[..., ProcessPool], reports: Reports
) -> None:
    pool = make_pool(1)
    first = job(my_pid)
    pool.submit(first)
    pid = reports.end(first)[1]
    os.kill(pid, signal.SIGKILL)  # idle: nothing to report; the next jobs may reach it
    again = [job(my_pid, name=f"a{i}") for i in range(3)]
    for j in again:
        pool.submit(j)
    for j in again:
        outcome, ret, *_ = reports.end(j)
        assert outcome is Outcome.OK and ret != pid
    assert len(reports.items) == 4


def test_shutdown_before_any_submit(make_pool: Callable[..., ProcessPool]) -> None:
    pool = make_pool(3)
    pool.shutdown()
    assert not pool.started and pool.pids == []
    with pytest.raises(ClosedError):
        pool.submit(job(add, 1, 1))


def test_size_must_be_positive(reports: Reports) -> None:
    with pytest.raises(ValueError, match="at least one worker"):
        ProcessPool(0, reports)


def test_jobs_behind_a_long_one_move_to_a_free_worker(
    make_pool: Callable[..., ProcessPool], reports: Reports, gate: Gate
) -> None:
    pool = make_pool(2)
    long = job(gated, gate.path, 0, name="long")
    short = [job(add, i, 1, name=f"s{i}") for i in range(12)]  # some prefetched behind it
    for j in (long, *short):
        pool.submit(j)
    for i, j in enumerate(short):  # all done while "long" still runs: none waits behind it
        assert reports.end(j)[:2] == (Outcome.OK, i + 1)
    assert not reports.ends(long)
    gate.release()
    assert reports.end(long)[:2] == (Outcome.OK, 0)


def test_a_watched_job_starts_when_it_runs_not_when_it_is_sent(
    make_pool: Callable[..., ProcessPool], reports: Reports, gate: Gate
) -> None:
    pool = make_pool(1)
    head = job(gated, gate.path, 1, name="head")
    watched = job(my_pid, name="watched", watch=True)
    pool.submit(head)
    pool.submit(watched)
    gate.release()
    reports.end(watched)
    order = [(j.name, r[0]) for j, r in reports.items]
    assert order.index(("watched", Outcome.STARTED)) > order.index(("head", Outcome.OK))


def test_a_function_the_worker_cannot_import(
    make_pool: Callable[..., ProcessPool], reports: Reports, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = types.ModuleType("parent_only_module")
    exec("def here():\n    return 1\n", module.__dict__)
    monkeypatch.setitem(sys.modules, "parent_only_module", module)
    pool = make_pool(1)
    bad, good = job(module.here, name="bad"), job(add, 1, 2)
    pool.submit(bad)
    pool.submit(good)
    outcome, _, _, excinfo, worker = reports.end(bad)
    assert outcome is Outcome.ERROR and excinfo is not None and worker is not None
    assert isinstance(excinfo.val, SpecError)
    assert "'bad': its function or arguments could not be unpickled" in str(excinfo.val)
    assert "ModuleNotFoundError" in str(excinfo.val)
    assert reports.end(good)[:3] == (Outcome.OK, 3, None)
    assert reports.end(good)[4] == worker  # the worker survived


def test_large_arguments_and_results(
    make_pool: Callable[..., ProcessPool], reports: Reports
) -> None:
    pool = make_pool(1)  # a full pipe must never block the manager
    blobs = [bytes([i]) * 3_000_000 for i in range(4)]
    jobs = [job(identity, b, name=f"blob{i}") for i, b in enumerate(blobs)]
    for j in jobs:
        pool.submit(j)
    for j, b in zip(jobs, blobs, strict=True):
        outcome, ret, *_ = reports.end(j)
        assert outcome is Outcome.OK and ret == b


def test_an_answer_fully_sent_wins_over_the_death(
    make_pool: Callable[..., ProcessPool], reports: Reports
) -> None:
    pool = make_pool(1)
    last = job(answer_then_exit, 5, name="last")
    behind = [job(add, i, 1, name=f"b{i}") for i in range(3)]
    for j in (last, *behind):
        pool.submit(j)
    outcome, ret, _, _, worker = reports.end(last)
    assert (outcome, ret) == (Outcome.OK, 5)
    for i, j in enumerate(behind):  # never started there: run on the replacement
        outcome, ret, _, _, other = reports.end(j)
        assert (outcome, ret) == (Outcome.OK, i + 1) and other != worker


def test_a_half_sent_answer_is_a_crash(
    make_pool: Callable[..., ProcessPool], reports: Reports
) -> None:
    pool = make_pool(1)
    torn, after = job(half_answer_then_exit, 5, name="torn"), job(add, 1, 1)
    pool.submit(torn)
    pool.submit(after)
    outcome, _, _, excinfo, _ = reports.end(torn)
    assert outcome is Outcome.ERROR and excinfo is not None
    assert isinstance(excinfo.val, WorkerCrashed) and excinfo.val.exitcode == 7
    assert reports.end(after)[:2] == (Outcome.OK, 2)


def test_a_failing_manager_fails_every_job_and_stops_its_workers(
    make_pool: Callable[..., ProcessPool],
    reports: Reports,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def bug(*_: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(ProcessPool, "_answered", bug)
    before = children()
    pool = make_pool(1)
    jobs = [job(add, i, 1, name=f"j{i}") for i in range(3)]
    for j in jobs:
        pool.submit(j)
    for j in jobs:
        outcome, _, _, excinfo, _ = reports.end(j)
        assert outcome is Outcome.ERROR and excinfo is not None
        assert "manager failed" in str(excinfo.val) and "a bug" in str(excinfo.val)
    assert children() == before and pool.pids == []
    late = job(add, 1, 1, name="late")
    pool.submit(late)  # reported, not raised: the supervisor is not closing
    assert reports.end(late)[0] is Outcome.ERROR
    assert any("manager failed" in r.getMessage() for r in caplog.records)


def test_cancels_and_kills_in_a_stream_each_job_ends_once(
    make_pool: Callable[..., ProcessPool], reports: Reports
) -> None:
    pool = make_pool(2)
    jobs = [job(add, i, 1, name=f"j{i}") for i in range(600)]
    cancelled: set[Job] = set()
    killed: list[int] = []
    for i, j in enumerate(jobs):
        pool.submit(j)
        if i % 7 == 3:
            cancel(pool, jobs[i // 2])  # some still queued or on a worker, some done
            cancelled.add(jobs[i // 2])
        if i in (200, 400):
            reports.wait(lambda: any(r[4] for _, r in reports.items))
            with reports.cond:
                worker = next(r[4] for _, r in reversed(reports.items) if r[4])
            assert worker is not None
            pid = int(worker[4:])
            if pid not in killed:
                killed.append(pid)
                os.kill(pid, signal.SIGKILL)
    reports.wait(lambda: sum(r[0] is not Outcome.STARTED for _, r in reports.items) >= len(jobs))
    crashed = 0
    for i, j in enumerate(jobs):
        (end,) = reports.ends(j)
        if end[0] is Outcome.OK:
            assert end[1] == i + 1
        elif end[0] is Outcome.CANCELLED:
            assert j in cancelled
        else:
            assert end[3] is not None and isinstance(end[3].val, WorkerCrashed)
            assert end[3].val.pid in killed
            crashed += 1
    assert crashed <= len(killed)
    pool.shutdown()
    assert len(reports.items) == len(jobs)
