"""Where admitted work runs: aloops, the thread pool, process pools and backends.

Every executor takes a :class:`Job` and, when the job ends, calls the supervisor's sink
``sink(job, outcome)`` from whatever thread it is on. The sink batches: one wake-up of
the supervisor loop per burst of completions, not one per task (see ``Inbox``).

An **aloop** is an asyncio event loop (uvloop when available) running in its own thread,
named ``taskvisor-aloop-NAME``. Jobs reach it through an ``Inbox`` too, so a burst of
dispatches costs one ``call_soon_threadsafe``. ``Aloop.run(coro)`` is the blocking portal
for other threads, like anyio's ``BlockingPortal.call``.

The **thread pool** is a small pool of our own rather than ``ThreadPoolExecutor``: a job
is a queue entry with no ``concurrent.futures.Future`` (about 2 KB and a lock each) and no
done-callback hop; idle threads are reused and new ones start up to the limit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import inspect
import queue
import threading
import types
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures.process import BrokenProcessPool
from importlib import metadata
from typing import Any, Final

from ._errors import ClosedError, SpecError, WorkerCrashed
from ._job import _OK, Job, Outcome, Result, Sink
from ._log import logger
from ._result import ExceptionInfo
from ._worker import decode, run_pickled
from .abc import CancelResult, Executor

__all__ = [
    "Aloop",
    "AloopExecutor",
    "AloopState",
    "FuturesExecutor",
    "MainExecutor",
    "ProcessExecutor",
    "ThreadExecutor",
    "Inbox",
    "Job",
    "Outcome",
    "PickledPool",
    "Result",
    "Sink",
    "ThreadPool",
    "as_executor",
    "registered_executors",
]

try:  # uvloop is a runtime dependency except on Windows
    import uvloop

    _new_uvloop: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
except ImportError:  # pragma: no cover - Windows
    _new_uvloop = None


#: How many coroutine jobs the main loop's and each aloop's executor start per turn of
#: their loop; the rest wait in its inbox, in order, for the next turn. A burst of 100,000
#: coroutine tasks no longer creates 100,000 asyncio Tasks before the first one runs: the
#: loop runs each slice's first steps (a no-op ends there) before it starts the next, so
#: the loop stays responsive and what a slice allocates dies young, before the cyclic GC
#: promotes it. (W3, 100,000 no-op coroutines on the main loop: 9 full collections of
#: 0.8-0.9 s in all became 3 of ~0.1 s, 23-25 -> 14-15 µs per task; slices of 10-64 did
#: the same, 100 and more gave part of it: a slice's objects must fit in the young
#: generation, 700 allocations.)
START_SLICE: Final = 32


class Inbox:
    """A thread-safe queue drained on one loop, with one wake-up per burst.

    ``put`` appends and schedules ``drain`` on the loop only if no drain is pending. The
    drain clears the flag *before* it empties the deque, so an item put while it runs is
    either seen by this drain or schedules the next one: none is ever stranded. With a
    ``limit`` a drain takes at most that many items and schedules the next one for the
    rest (``START_SLICE``).
    """

    __slots__ = ("_drain", "_items", "_limit", "_loop", "_scheduled")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        drain: Callable[[list[Any]], None],
        limit: int | None = None,
    ) -> None:
        self._items: deque[Any] = deque()
        self._scheduled = False
        self._loop = loop
        self._drain = drain
        self._limit = limit

    def put(self, item: Any) -> None:
        self._items.append(item)
        if not self._scheduled:
            self._scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._run)
            except RuntimeError:  # the loop is closed: nobody will drain it any more
                # (expected: an abandoned thread that returns after the supervisor closed)
                self._scheduled = False
                logger.debug("a completion arrived after its event loop closed: %r", item)

    def __len__(self) -> int:
        """How many items wait for a drain."""
        return len(self._items)

    def put_local(self, item: Any) -> None:
        """``put`` from the loop's own thread (no thread-safe wake-up needed)."""
        self._items.append(item)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._run)

    def flush(self) -> None:
        """Drain now, on the loop's thread (closing: nothing may be left behind)."""
        self._run()
        while self._items:  # (a limit: the rest too)
            self._run()

    def _run(self) -> None:
        self._scheduled = False
        items = self._items
        batch = []
        if self._limit is None:
            while items:
                batch.append(items.popleft())
        else:
            for _ in range(min(self._limit, len(items))):
                batch.append(items.popleft())
            try:
                self._drain(batch)
            finally:  # the rest on the next turn, after what this drain scheduled
                if items and not self._scheduled:
                    self._scheduled = True
                    self._loop.call_soon(self._run)
            return
        if batch:
            self._drain(batch)


_Coroutine = types.CoroutineType


def _call(job: Job) -> Any:
    if job.shared is not None:
        return job.fn(*job.args, **job.kwargs, shared=job.shared)
    return job.fn(*job.args, **job.kwargs)


def _error(exc: BaseException) -> ExceptionInfo:
    return ExceptionInfo.from_exc(exc)


def _start_coro(job: Job, loop: asyncio.AbstractEventLoop, sink: Sink, worker: str) -> None:
    """Start a job on ``loop`` (from ``loop``'s own thread) and report its end.

    A coroutine function's coroutine becomes the asyncio Task itself (no wrapper
    coroutine): its done-callback reads the outcome, including a cancellation before its
    first step. A plain function runs inline, here; an awaitable it returns is awaited.
    """
    if job.cancelled is not None:
        sink(job, (Outcome.CANCELLED, None, job.shared, None, worker))
        return
    if job.watch:  # its timeout runs from now (an aloop's thread may start it late)
        sink(job, (Outcome.STARTED, None, None, None, worker))
    try:  # (_call, inline: a frame less per coroutine task)
        if job.shared is None:
            ret = job.fn(*job.args, **job.kwargs)
        else:
            ret = job.fn(*job.args, **job.kwargs, shared=job.shared)
    except BaseException as exc:
        sink(job, (Outcome.ERROR, None, job.shared, _error(exc), worker))
        return
    coro: Coroutine[Any, Any, Any]
    if type(ret) is _Coroutine:
        coro = ret
    elif not inspect.isawaitable(ret):
        sink(job, (_OK, ret, job.shared, None, worker))
        return
    else:
        coro = ret if inspect.iscoroutine(ret) else _await(ret)
    try:
        task = loop.create_task(coro, name=job.name)
    except BaseException:  # (a task factory that refuses it: see _start_all)
        coro.close()  # (no "never awaited" warning on top of the reported error)
        raise
    # the job is its Task's done-callback (Job.__call__): no partial, closure or bound
    # method per task in flight for the cyclic GC to walk while it lives
    job.sink, job.worker = sink, worker
    task.add_done_callback(job)
    job.handle = task


def _start_all(jobs: list[Job], loop: asyncio.AbstractEventLoop, sink: Sink, worker: str) -> None:
    """Start a slice of jobs (see ``START_SLICE``); a job that cannot be started (a task
    factory of the loop's that raises, say) fails alone, reported, and the rest start."""
    for job in jobs:
        try:
            _start_coro(job, loop, sink, worker)
        except Exception as exc:
            sink(job, (Outcome.ERROR, None, job.shared, _error(exc), worker))


async def _await(awaitable: Any) -> Any:
    return await awaitable


class AloopState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"


_ALOOP_RUNNING: Final = AloopState.RUNNING  # (read per task: see _planner's constants)


class Aloop:
    """A named event loop in its own thread (``taskvisor-aloop-NAME``).

    The supervisor makes one per name in ``Supervisor(aloops=...)`` (``use_uvloop``: its
    ``uvloop=``) and starts and stops it; get one with ``sup.aloop(name)``.
    """

    def __init__(self, name: str, *, use_uvloop: bool = True) -> None:
        self.name = name
        self.thread_name = f"taskvisor-aloop-{name}"
        self.uses_uvloop = use_uvloop and _new_uvloop is not None
        self.state = AloopState.CREATED
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._inbox: Inbox | None = None
        self._sink: Sink | None = None
        self.running = 0
        # called (from this loop's thread) after a slice of jobs while more wait: the
        # supervisor sets its clock's ``now`` (see MainExecutor._start_jobs)
        self.busy: Callable[[], object] | None = None
        # jobs taken from the inbox so far (started, or reported ended unstarted), written
        # by this loop's thread only; then ``on_started`` is called (this loop's thread).
        # The supervisor hands an aloop at most ``ALOOP_WINDOW`` jobs it has not started
        # yet and holds the rest of a burst back (see Engine._carry_out)
        self.started_jobs = 0
        self.on_started: Callable[[], object] | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise ClosedError(self.state.value, f"use aloop {self.name!r}")
        return self._loop

    def start(self, sink: Sink) -> concurrent.futures.Future[None]:
        """Start the thread; the future resolves once its loop runs."""
        if self.state is not AloopState.CREATED:
            raise RuntimeError(f"aloop {self.name!r} is already {self.state.value}")
        self._sink = sink
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._main, args=(ready,), name=self.thread_name, daemon=True
        )
        self.state = AloopState.RUNNING
        self._thread.start()
        return ready

    def _main(self, ready: concurrent.futures.Future[None]) -> None:
        factory = _new_uvloop if self.uses_uvloop and _new_uvloop else asyncio.new_event_loop
        try:
            loop = factory()
        except BaseException as exc:  # e.g. EMFILE: start() must not wait for ever
            self.state = AloopState.STOPPED
            ready.set_exception(exc)
            return
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._inbox = Inbox(loop, self._start_jobs, START_SLICE)
        loop.call_soon(ready.set_result, None)
        try:
            loop.run_forever()
        finally:
            try:
                pending = asyncio.all_tasks(loop)
                for t in pending:
                    t.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    def submit(self, job: Job) -> None:
        """Run a job on this loop (from any thread)."""
        if self._inbox is None or self.state is not _ALOOP_RUNNING:
            raise ClosedError(self.state.value, f"submit to aloop {self.name!r}")
        self._inbox.put(job)

    def _start_jobs(self, jobs: list[Job]) -> None:
        assert self._sink is not None and self._loop is not None and self._inbox is not None
        try:
            _start_all(jobs, self._loop, self._sink, self.thread_name)
        finally:  # (counted, then told: see Engine._aloop_started)
            self.started_jobs += len(jobs)
            if self.on_started is not None:
                self.on_started()
        if self._inbox and self.busy is not None:
            self.busy()  # (more wait for the next turn: see MainExecutor._start_jobs)

    def cancel(self, job: Job) -> None:
        """Cancel a job's coroutine on this loop (thread-safe)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def _cancel() -> None:
            if job.handle is not None:
                job.handle.cancel()

        loop.call_soon_threadsafe(_cancel)

    def run(self, coro: Any, timeout: float | None = None) -> Any:
        """Run a coroutine on this aloop from another thread and return its result.

        Blocks the calling thread; calling it from this aloop's thread, or from a thread
        running an event loop, would deadlock or stall that loop, so it raises.
        """
        loop = self.loop
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError(f"Aloop.run() called from aloop {self.name!r}'s own thread")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coro.close()
            raise RuntimeError(
                "Aloop.run() blocks; from async code use "
                "`await asyncio.wrap_future(aloop.submit_coro(coro))`"
            )
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    def submit_coro(self, coro: Any) -> concurrent.futures.Future[Any]:
        """Schedule a coroutine on this aloop; returns a concurrent future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        """Stop the loop (cancelling what still runs on it) and join the thread."""
        if self.state is not AloopState.RUNNING:
            self.state = AloopState.STOPPED
            return
        self.state = AloopState.STOPPED
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join()

    def __repr__(self) -> str:
        kind = "uvloop" if self.uses_uvloop else "asyncio"
        return f"<Aloop {self.name!r} {self.state.value} {kind}>"


class ThreadPool:
    """Worker threads fed from one queue; threads start on demand up to ``size``.

    A thread cannot be interrupted: cancelling a job that a thread has taken *abandons* it
    (the supervisor ends the task; the thread runs on and its late result is dropped).
    ``withdraw`` and the taking thread each try to claim the job with one atomic
    ``dict.pop``, so a job is either withdrawn before any thread takes it or taken and
    then only abandoned.

    The hand-off slot (tokio's "LIFO slot", Go's ``runnext``): while a pool thread reports
    its job's end, the first job submitted *from that thread* (its completion, finished
    right there, started the next task: a chain) while the queue is empty is kept for
    that thread to run next instead of going through the queue (and waking another
    thread for it). Each link of a chain of thread tasks then stays on one thread; a job
    that waits in the queue is never overtaken.
    """

    def __init__(
        self,
        size: int,
        sink: Sink,
        prefix: str = "taskvisor-thread",
        now: Callable[[], float] | None = None,
    ) -> None:
        self.size = size
        self._sink = sink
        self._now = now  # the supervisor's clock, to stamp when watched jobs begin and end
        self._prefix = prefix
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        # one token per thread back at the queue that no submitted job has counted on
        # yet: a thread appends one, a submit pops one, each a single operation the GIL
        # makes atomic (threading.Semaphore is Python code, ~2 µs a job; a counter under
        # the pool's lock made submitting threads queue on that lock, W7)
        self._idle: deque[None] = deque()
        self._threads: list[threading.Thread] = []
        self._current: dict[threading.Thread, Job] = {}
        # thread ident -> the job it runs next (None: its slot is open): present only
        # while that thread reports a job's end (see the class docstring)
        self._next: dict[int, Job | None] = {}
        # submitted jobs that no thread has taken and the supervisor has not withdrawn: a
        # thread takes one, ``withdraw`` takes one back, each with one ``dict.pop`` (atomic
        # under the GIL), so exactly one of them gets it (no lock for threads to queue on)
        self._unclaimed: dict[Job, bool] = {}
        self._closed = False

    @property
    def threads(self) -> int:
        return len(self._threads)

    @property
    def busy(self) -> int:
        """How many threads are running a job right now (a reporting thread included)."""
        return len(self._current)

    def submit(self, job: Job) -> None:
        if self._closed:
            raise ClosedError("closed", "submit to the thread pool")
        self._unclaimed[job] = True
        # a pool thread is reporting, nothing waits in the queue (so nothing is overtaken):
        # is it this thread, its slot open?
        if self._next and self._queue.empty():
            me = threading.get_ident()
            if me in self._next and self._next[me] is None:
                self._next[me] = job  # (only this thread reads or writes its entry)
                return
        self._enqueue(job)

    def _enqueue(self, job: Job) -> None:
        self._queue.put(job)
        try:
            self._idle.pop()  # an idle thread will take it
            return
        except IndexError:
            pass
        if len(self._threads) < self.size:
            t = threading.Thread(
                target=self._work, name=f"{self._prefix}-{len(self._threads)}", daemon=True
            )
            self._threads.append(t)
            t.start()

    def withdraw(self, job: Job) -> bool:
        """Take back a job no thread has started (True), or say it runs already (False).

        Call after setting ``job.cancelled``: a withdrawn job is reported CANCELLED by the
        caller and silently dropped by the thread that later dequeues it.
        """
        # (no thread will start it now; a job this pool was never given counts as taken)
        return self._unclaimed.pop(job, False)

    def _work(self) -> None:
        sink, q, now = self._sink, self._queue, self._now
        me = threading.current_thread()
        ident = threading.get_ident()
        worker = me.name
        current, handoff = self._current, self._next
        after: Job | None = None
        while True:
            if after is None:
                job = q.get()
                if job is None:
                    return
            else:  # the job this thread's last report submitted: no queue, no wake-up
                job, after = after, None
            if self._unclaimed.pop(job, False):  # (False: withdrawn)
                current[me] = job
                watch = job.watch
                if watch:
                    if now is not None:
                        job.began = now()
                    sink(job, (Outcome.STARTED, None, None, None, worker))
                ret, error = None, None
                try:
                    ret = _call(job)
                    if isinstance(ret, _Coroutine):  # (inspect.iscoroutine, without a call)
                        ret = asyncio.run(ret)
                except BaseException as exc:
                    error = exc
                if watch and now is not None:
                    job.ended = now()
                job.returned = True
                result: Result = (
                    (_OK, ret, job.shared, None, worker)
                    if error is None
                    else (Outcome.ERROR, None, job.shared, _error(error), worker)
                )
                del ret, error
                handoff[ident] = None  # (the slot is open while it reports)
                try:
                    sink(job, result)
                except BaseException:
                    self._slot_to_queue(ident)
                    raise
                after = handoff.pop(ident)
                current.pop(me, None)
            del job
            if after is None and len(self._idle) < self.size:
                # (bounded: a job queued while every thread was busy took no token, so
                # the tokens may outnumber the idle threads; a stale one only means no
                # new thread, and every thread has been started by then)
                self._idle.append(None)

    def _slot_to_queue(self, ident: int) -> None:
        """This thread's report raised (the thread is about to end): the job in its slot
        goes to the queue, for another thread."""
        job = self._next.pop(ident)
        if job is not None:
            self._enqueue(job)

    def shutdown(self) -> list[str]:
        """Stop every thread after the jobs already queued and join them, except threads
        still running an abandoned job: those are left to finish (daemon threads) and their
        job names returned, so closing never hangs on a function that never returns."""
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        left = []
        for t in self._threads:
            job = self._current.get(t)
            # (a job whose cancel lost to its own finish was never abandoned: joined)
            if job is not None and job.abandoned and not job.returned:
                left.append(job.name)
                continue
            t.join()
        return left


class PickledPool:
    """Runs jobs through any ``concurrent.futures.Executor`` whose payloads are pickled.

    User backends (a Dask client's ``get_executor()``, a ``ProcessPoolExecutor`` of your
    own …) come through here; ``runs_on="process"`` uses the crash-tolerant
    :class:`~taskvisor._procpool.ProcessPool` instead.
    The callable runs inside :func:`run_pickled`, so every payload problem becomes that
    task's ``RemoteError``. A dead worker breaks a stdlib process pool as a whole: the
    tasks it ran end with ``WorkerCrashed``.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        factory: Callable[[], concurrent.futures.Executor] | None = None,
        executor: concurrent.futures.Executor | None = None,
        label: str = "process",
    ) -> None:
        self._sink = sink
        self._factory = factory
        self._executor = executor
        self._owned = factory is not None
        self._made: list[concurrent.futures.Executor] = []  # every pool we built, to shut down
        self.label = label
        self._closed = False

    @property
    def started(self) -> bool:
        return self._executor is not None

    def submit(self, job: Job) -> None:
        if self._closed:
            raise ClosedError("closed", f"submit to {self.label}")
        ex = self._executor
        if ex is None:
            assert self._factory is not None  # only pools we own are ever dropped
            ex = self._executor = self._factory()
            self._made.append(ex)
        try:
            fut = ex.submit(run_pickled, job.fn, job.args, job.kwargs or {}, job.shared)
        except BrokenProcessPool:
            if self._owned:
                self._drop(ex)
                return self.submit(job)
            crashed = WorkerCrashed(job.name, None, None)
            self._sink(job, (Outcome.ERROR, None, job.shared, _error(crashed), None))
            return
        except Exception as exc:  # e.g. a backend that refuses the job
            self._sink(job, (Outcome.ERROR, None, job.shared, _error(exc), None))
            return
        job.handle = fut  # cancellable until a worker picks it up
        fut.add_done_callback(lambda f: self._done(job, ex, f))

    def _drop(self, ex: concurrent.futures.Executor) -> None:
        """Forget a broken pool we own, only if it is still the current one: the manager
        thread reporting the break may run after a new pool replaced it."""
        if self._executor is ex:
            self._executor = None

    def _done(
        self, job: Job, ex: concurrent.futures.Executor, fut: concurrent.futures.Future[Any]
    ) -> None:
        if fut.cancelled():
            self._sink(job, (Outcome.CANCELLED, None, job.shared, None, None))
            return
        exc = fut.exception()
        if exc is not None:
            if isinstance(exc, BrokenProcessPool):
                if self._owned:
                    self._drop(ex)
                exc = WorkerCrashed(job.name, None, None)
            self._sink(job, (Outcome.ERROR, None, job.shared, _error(exc), None))
            return
        ok, ret, shared, excinfo, worker = decode(fut.result())
        if ok:
            self._sink(job, (Outcome.OK, ret, shared, None, worker))
        else:
            self._sink(job, (Outcome.ERROR, None, shared, excinfo, worker))

    def shutdown(self) -> None:
        """Shut down every pool this object built (a user's backend stays theirs)."""
        self._closed = True
        if self._owned:
            self._executor = None
        for ex in self._made:
            ex.shutdown(wait=True, cancel_futures=True)
        self._made.clear()


# ---------------------------------------------------------------- the executor seam


class MainExecutor(Executor):
    """``runs_on="main"``: the supervisor's own loop (a plain function runs there too,
    in its turn: see ``START_SLICE``)."""

    runs_coroutines = True
    kills_running = True
    # a job may wait turns of the loop for its start (START_SLICE): a timeout runs from
    # its start, which _start_coro reports for a job with one, as on an aloop
    reports_start = True
    label = "main loop"

    def __init__(
        self, loop: asyncio.AbstractEventLoop, busy: Callable[[], object] | None = None
    ) -> None:
        self._loop = loop
        self._sink: Sink | None = None
        # jobs wait here for their turn, START_SLICE per turn of the loop (a job
        # cancelled meanwhile reports CANCELLED when its turn comes: see _start_coro)
        self._inbox = Inbox(loop, self._start_jobs, START_SLICE)
        self._busy = busy

    def start(self, sink: Sink) -> None:
        self._sink = sink

    def submit(self, job: Job) -> None:
        self._inbox.put_local(job)  # (the engine dispatches "main" jobs on the loop)

    def _start_jobs(self, jobs: list[Job]) -> None:
        assert self._sink is not None
        _start_all(jobs, self._loop, self._sink, "main")
        if self._inbox and self._busy is not None:
            # more jobs wait for the next turn: the supervisor is not idle. (Its clock's
            # ``now``: a MockClock's autojump counts reads, and on uvloop it cannot see
            # the loop's run queue, so a long burst looked idle and the time jumped.)
            self._busy()

    def cancel(self, job: Job) -> CancelResult:
        if job.handle is not None:
            job.handle.cancel()
        return CancelResult.STOPPING


class AloopExecutor(Executor):
    """``runs_on="aloop:NAME"``: one :class:`Aloop` (started by the supervisor itself)."""

    runs_coroutines = True
    kills_running = True
    reports_start = True
    label = "aloop"

    def __init__(self, aloop: Aloop) -> None:
        self.aloop = aloop
        # one call less per coroutine task (as ThreadExecutor): the aloop's own submit
        self.submit = aloop.submit  # type: ignore[method-assign]

    def submit(self, job: Job) -> None:
        self.aloop.submit(job)  # (shadowed per instance, see __init__)

    def cancel(self, job: Job) -> CancelResult:
        self.aloop.cancel(job)
        return CancelResult.STOPPING

    def shutdown(self) -> list[str]:
        self.aloop.stop()
        return []


class ThreadExecutor(Executor):
    """``runs_on="thread"``: the :class:`ThreadPool`. A thread cannot be interrupted:
    a job a thread has taken is abandoned, unless it has already returned."""

    reports_start = True
    label = "thread"
    finishes_inline = True  # its threads may finish their own tasks (Supervisor._sink)

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool
        self._sink: Sink | None = None
        # one call less per thread task (measured: W1, W4): the pool's own submit
        self.submit = pool.submit  # type: ignore[method-assign]

    def start(self, sink: Sink) -> None:
        self._sink = sink

    def submit(self, job: Job) -> None:
        self.pool.submit(job)  # (shadowed per instance, see __init__)

    def cancel(self, job: Job) -> CancelResult:
        assert self._sink is not None
        if self.pool.withdraw(job):
            self._sink(job, (Outcome.CANCELLED, None, job.shared, None, None))
            return CancelResult.WITHDRAWN
        if job.returned:  # its real ending is on its way; it wins
            return CancelResult.STOPPING
        return CancelResult.RUNNING

    def shutdown(self) -> list[str]:
        return self.pool.shutdown()


class ProcessExecutor(Executor):
    """``runs_on="process"``: the crash-tolerant process pool (``_procpool``)."""

    kills_running = True
    pickles = True
    reports_start = True
    label = "process"

    def __init__(self, pool: Any) -> None:
        self.pool = pool  # a taskvisor._procpool.ProcessPool

    def submit(self, job: Job) -> None:
        self.pool.submit(job)

    def cancel(self, job: Job) -> CancelResult:
        # True: no worker had started it (the pool reports it); else its worker is killed
        return CancelResult.WITHDRAWN if self.pool.cancel(job) else CancelResult.STOPPING

    def shutdown(self) -> list[str]:
        self.pool.shutdown()
        return []


ENTRY_POINTS = "taskvisor.executors"


def registered_executors() -> dict[str, metadata.EntryPoint]:
    """The executors installed packages register (entry point group
    ``taskvisor.executors``), by name."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINTS)}


def as_executor(name: str, value: Any, what: str = "executor") -> Executor:
    """One ``executors=`` value as an :class:`Executor`: an Executor as it is, the name of a
    registered one (created with no arguments), or a ``concurrent.futures.Executor``-like
    object with ``submit()`` (wrapped: its payloads are pickled). Raises ``SpecError``."""
    if isinstance(value, Executor):
        return value
    if isinstance(value, str):
        ep = registered_executors().get(value)
        if ep is None:
            known = ", ".join(sorted(registered_executors())) or "none installed"
            raise SpecError(
                f"{what} {name!r}: no executor is registered as {value!r} (entry point group "
                f"{ENTRY_POINTS!r}: {known})"
            )
        try:
            made = ep.load()()
        except Exception as exc:
            raise SpecError(
                f"{what} {name!r}: creating the registered executor {value!r} ({ep.value}) "
                f"failed: {exc!r}"
            ) from exc
        if not isinstance(made, Executor):
            raise SpecError(
                f"{what} {name!r}: the registered executor {value!r} ({ep.value}) made "
                f"{type(made).__name__}, not a taskvisor.abc.Executor"
            )
        return made
    try:
        submit = getattr(value, "submit", None)
    except Exception:
        submit = None
    if not callable(submit):
        raise SpecError(
            f"{what} {name!r} has no submit(): give a taskvisor.abc.Executor, the name of a "
            "registered one, or a concurrent.futures.Executor"
        )
    return FuturesExecutor(value, name)


class FuturesExecutor(Executor):
    """Any ``concurrent.futures.Executor`` (a user's ``executors={"name": pool}``), its
    payloads pickled through :func:`run_pickled` (see :class:`PickledPool`). A future no
    worker has taken is withdrawn; a running one is abandoned."""

    pickles = True
    label = "worker"

    def __init__(self, executor: concurrent.futures.Executor, name: str) -> None:
        self.executor = executor
        self.name = name
        self._pool: PickledPool | None = None

    def start(self, sink: Sink) -> None:
        self._pool = PickledPool(sink, executor=self.executor, label=f"executor {self.name!r}")

    def submit(self, job: Job) -> None:
        assert self._pool is not None
        self._pool.submit(job)

    def cancel(self, job: Job) -> CancelResult:
        if job.handle is not None and job.handle.cancel():
            return CancelResult.WITHDRAWN  # its done-callback reports CANCELLED
        return CancelResult.RUNNING

    def shutdown(self) -> list[str]:
        if self._pool is not None:
            self._pool.shutdown()  # (a user's executor stays theirs: not shut down)
        return []
