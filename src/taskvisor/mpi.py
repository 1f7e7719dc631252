"""Run tasks on MPI ranks: ``executors={"mpi": MPIExecutor()}`` under ``mpiexec``.

Why a child process on each rank: MPI cannot lose a rank. Under MPICH a rank that exits
ends the whole job at once (``mpiexec`` returns its exit code and nothing else reports);
with ``-disable-auto-cleanup`` mpi4py waits for ever on the dead rank instead, and MPICH's
fault tolerance (``MPIR_CVAR_ENABLE_FT``) does not make a receive from a dead rank fail.
So a task that crashes (``os._exit``, a segfault in C code, the OOM killer) must not crash
the rank. With ``isolate=True`` (the default) each rank runs its tasks in a child process
of its own, started on its first task and started again after it died; what dies is the
child, and the rank answers ``WorkerCrashed`` for that task (exit code, child pid, rank),
as taskvisor's own process pool does. ``retries`` then decide.

The child is *spawned* (a fresh interpreter, ``multiprocessing``'s ``spawn``), never
forked: a forked copy of an MPI process shares its MPI library state, sockets and shared
memory (and, on InfiniBand, registered memory that ``fork`` breaks). A spawned child
keeps none of the rank's file descriptors, and starts without the variables the launcher
sets for the rank (``PMI_*``, ``PMIX_*``, ``HYDI_*``, ``OMPI_COMM_WORLD_*`` …: see
:data:`LAUNCHER_ENV`), so if it imports ``mpi4py`` (the main script it re-imports may),
MPI starts there as a *singleton* (``COMM_WORLD`` of size 1) and never joins the job.
**A task in isolate mode must not use MPI** to talk to the job: it is not part of it.
``isolate=False`` runs the task on the rank itself (MPI is available to it, as with a
bare ``MPIPoolExecutor``), and a task that kills its rank then ends the whole job.

The payload (function, arguments, ``shared``) is pickled on the supervisor's side at
dispatch (a payload that does not pickle fails its task there) and travels to the rank as
bytes; the rank hands them to its child untouched and the child runs them through
:func:`~taskvisor._worker.run_pickled`, so errors and tracebacks come back as for
``runs_on="process"``.

Threads: :class:`MPIExecutor` is called by the supervisor (see :mod:`taskvisor.abc`); its
futures' done-callbacks run on mpi4py's manager thread and only call the sink.
:func:`run_isolated` runs on a worker rank (the thread mpi4py runs tasks on); the child's
loop :func:`serve_child` on the child's main thread.

``import taskvisor.mpi`` does not import mpi4py: only ``MPIExecutor()`` without a pool
does (to make one), so the rank side and the docs import it freely.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import multiprocessing
import os
import pickle
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Final

from ._errors import WorkerCrashed
from ._job import Job, Outcome
from ._result import ExceptionInfo
from ._worker import (
    _die_with_parent,
    _error_answer,
    _run_payload,
    decode,
    dumps_call,
    run_pickled,
)
from .abc import CancelResult, Executor, Sink

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

__all__ = [
    "LAUNCHER_ENV",
    "MPIExecutor",
    "run_isolated",
    "run_on_rank",
    "serve_child",
    "stop_child",
]

_PROTO: Final = pickle.HIGHEST_PROTOCOL

#: prefixes of the environment variables an MPI launcher sets for each rank (MPICH's
#: Hydra, Open MPI, PMIx), removed from a rank's child's environment so that MPI started
#: there is a singleton instead of a second process claiming the rank's place in the job
LAUNCHER_ENV: Final = (
    "PMI_",
    "PMIX_",
    "HYDI_",
    "HYDRA_",
    "MPI_LOCALNRANKS",
    "MPI_LOCALRANKID",
    "OMPI_COMM_WORLD_",
    "OMPI_UNIVERSE_SIZE",
)


class MPIExecutor(Executor):
    """Tasks with ``runs_on=NAME`` run on the worker ranks of an MPI pool.

    ``pool``: an ``mpi4py.futures.MPIPoolExecutor`` (or any ``concurrent.futures``
    executor whose workers are MPI ranks, such as the one ``MPICommExecutor`` yields);
    ``None`` (default) makes an ``MPIPoolExecutor()`` that this executor owns and shuts
    down with the supervisor. A pool you pass stays yours.

    ``isolate=True`` (default): each rank runs each task in a child process of its own
    (spawned once per rank, again after it died), so a task that kills its process ends
    ``WorkerCrashed`` and the rank, and the job, go on; the task must not use MPI (in the
    child MPI is a singleton, not the job). ``isolate=False``: the task runs on the rank
    itself, MPI available to it; a task that kills its rank ends the whole MPI job (MPI's
    rule), as with a bare ``MPIPoolExecutor`` in ``executors=``.

    A task's ``timeout`` and ``cancel`` withdraw it while it waits for a rank; once a
    rank runs it, it is abandoned (its result dropped) and the rank stays busy until it
    ends.
    """

    pickles = True
    label: ClassVar[str] = "MPI rank"

    def __init__(
        self, pool: concurrent.futures.Executor | None = None, *, isolate: bool = True
    ) -> None:
        if pool is not None and not callable(getattr(pool, "submit", None)):
            raise TypeError(f"MPIExecutor takes a concurrent.futures executor, got {pool!r}")
        self.pool = pool
        self.isolate = isolate
        self._owned = pool is None
        self._sink: Sink | None = None

    def start(self, sink: Sink) -> None:
        self._sink = sink
        if self.pool is None:
            from mpi4py.futures import MPIPoolExecutor  # (only here: see the module doc)

            self.pool = MPIPoolExecutor()

    def submit(self, job: Job) -> None:
        assert self._sink is not None and self.pool is not None
        sink = self._sink
        try:
            if self.isolate:
                payload = dumps_call(job.fn, job.args, job.kwargs, job.shared)
                fut = self.pool.submit(run_isolated, job.name, payload)
            else:
                fut = self.pool.submit(run_on_rank, job.fn, job.args, job.kwargs or {}, job.shared)
        except Exception as exc:  # a payload that does not pickle, a pool shut down
            sink(job, (Outcome.ERROR, None, job.shared, ExceptionInfo.from_exc(exc), None))
            return
        job.handle = fut  # cancellable until a rank takes it
        fut.add_done_callback(lambda f: self._done(job, f))

    def _done(self, job: Job, fut: concurrent.futures.Future[Any]) -> None:
        """(mpi4py's manager thread, or the caller's if the future had ended)"""
        assert self._sink is not None
        sink = self._sink
        if fut.cancelled():
            sink(job, (Outcome.CANCELLED, None, job.shared, None, None))
            return
        exc = fut.exception()
        if exc is not None:  # mpi4py's own failure (the answer never fails: see run_pickled)
            sink(job, (Outcome.ERROR, None, job.shared, ExceptionInfo.from_exc(exc), None))
            return
        ok, ret, shared, excinfo, worker = decode(fut.result())
        if ok:
            sink(job, (Outcome.OK, ret, shared, None, worker))
        else:
            sink(job, (Outcome.ERROR, None, shared, excinfo, worker))

    def cancel(self, job: Job) -> CancelResult:
        if job.handle is not None and job.handle.cancel():
            return CancelResult.WITHDRAWN  # its done-callback reports CANCELLED
        return CancelResult.RUNNING

    def shutdown(self) -> list[str]:
        if self._owned and self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        return []

    def __repr__(self) -> str:
        mode = "isolate" if self.isolate else "on the rank"
        return f"<MPIExecutor {mode} pool={self.pool!r}>"


# ------------------------------------------------------------------ on a worker rank


class _Child:
    """A rank's child process and the pipe to it (the rank's side)."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        mine, theirs = ctx.Pipe()
        self.proc: BaseProcess = ctx.Process(
            target=serve_child, args=(theirs,), name="taskvisor-mpi-child", daemon=True
        )
        with _without_launcher_env():
            self.proc.start()
        theirs.close()  # so that the child's death is an EOF here
        self.conn: Connection = mine

    def run(self, name: str, payload: bytes) -> tuple[Any, ...] | bool:
        """The child's answer; or, if the child is dead (then joined), whether it died
        with the task (False: it was dead before it got the task)."""
        try:
            self.conn.send((name, payload))
        except OSError:  # (a broken pipe: nobody reads)
            self._reap()
            return False
        try:
            answer: tuple[Any, ...] = self.conn.recv()
        except (EOFError, OSError):
            self._reap()
            return True
        return answer

    def _reap(self) -> None:
        self.conn.close()
        self.proc.join()

    def stop(self) -> None:
        self.conn.close()  # an EOF: the child returns
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


_child: _Child | None = None
_child_lock = threading.Lock()  # one task at a time per rank (mpi4py's rule; belt and braces)


@contextlib.contextmanager
def _without_launcher_env() -> Iterator[None]:
    """Hide the launcher's variables while a child is spawned (its environment is the
    process's own at that moment; spawn passes no other). Only a worker rank spawns, from
    the one thread that runs its tasks, and MPI read these variables when it started."""
    saved = {k: v for k, v in os.environ.items() if k.startswith(LAUNCHER_ENV)}
    for key in saved:
        del os.environ[key]
    try:
        yield
    finally:
        os.environ.update(saved)


_where: str | None = None


def _rank() -> str:
    """``"MPI rank N"`` (``COMM_WORLD``), or ``"process PID"`` outside MPI; asked once."""
    global _where
    if _where is None:
        mpi = sys.modules.get("mpi4py.MPI")  # (never imported here: a rank has it already)
        _where = f"process {os.getpid()}"
        with contextlib.suppress(Exception):
            if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
                _where = f"MPI rank {mpi.COMM_WORLD.Get_rank()}"
    return _where


def run_isolated(name: str, payload: bytes) -> tuple[Any, ...]:
    """On a worker rank: run the task called ``name`` (``payload``: its pickled
    function, arguments, kwargs and ``shared``) in this rank's child process and return
    its answer (the :func:`~taskvisor._worker.run_pickled` format, its worker
    ``"MPI rank R, pid P"``), or a ``WorkerCrashed`` answer naming the rank, the child's
    pid and its exit code if the child died running it.

    The child is spawned on the first call and again on the first call after it died.
    A child found dead before the task was sent to it (killed while idle) is replaced and
    the task sent to the new one. (One killed in the instant the task is sent is taken
    for the task's crash: ``retries`` cover it.)
    """
    global _child
    with _child_lock:
        child = _child
        if child is not None and not child.proc.is_alive():  # it died while idle
            child.stop()
            child = None
        # a child that was dead before it got the task is replaced once; a new one that
        # cannot take it (it died starting) is the task's crash too
        for fresh in (child is None, True):
            if child is None:
                child = _child = _Child()
            answer = child.run(name, payload)
            if isinstance(answer, tuple):  # its worker: "MPI rank 1, pid 4242"
                return (*answer[:-1], f"{_rank()}, {answer[-1]}")
            _child = None
            if answer or fresh:
                break
            child = None
    assert child is not None
    where = _rank()
    pid = child.proc.pid
    crashed = WorkerCrashed(name, child.proc.exitcode, pid, where)
    return _error_answer(crashed, None, f"{where}, pid {pid}")


def run_on_rank(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    shared: dict[str, Any] | None,
) -> tuple[Any, ...]:
    """On a worker rank (``isolate=False``): ``fn(*args, **kwargs)`` (with ``shared=``
    when ``shared`` is not None) through :func:`~taskvisor._worker.run_pickled` on the
    rank itself, its answer's worker naming the rank."""
    answer = run_pickled(fn, args, kwargs, shared)
    return (*answer[:-1], f"{_rank()}, {answer[-1]}")


def stop_child() -> None:
    """Stop this process's child, if it has one (a worker rank calls it at exit)."""
    global _child
    with _child_lock:
        child, _child = _child, None
    if child is not None:
        child.stop()


atexit.register(stop_child)  # an EOF ends the child quietly (multiprocessing would kill it)


def serve_child(conn: Connection) -> None:
    """The child's loop: run each ``(name, payload)`` received on ``conn`` and send back
    its answer; return at EOF (the rank closed the pipe). Ends at once if the rank dies."""
    _die_with_parent()
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            try:
                name, payload = conn.recv()
            except EOFError:
                return
            answer = _run_payload(name, payload)
            for stream in (sys.stdout, sys.stderr):  # what the task printed, now
                with contextlib.suppress(Exception):
                    stream.flush()
            conn.send(answer)
