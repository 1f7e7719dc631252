"""The crash-tolerant process pool behind ``runs_on="process"``: its manager.

Three modules
    This one is the parent's side: :class:`ProcessPool`, its manager thread (all the I/O,
    starting, revoking, reaping and killing workers, reporting jobs, closing down).
    :mod:`taskvisor._worker` is the child protocol: the worker's loop, its frames and the
    shared ``[started, floor]`` words (import-light: a spawned worker imports it).
    :mod:`taskvisor._procwindow` is the window policy, pure code the manager asks which
    worker gets the next job, how many jobs a worker may hold (the prefetch window) and
    when to take jobs back from a worker whose current job runs long (stealing).

Why not ``concurrent.futures.ProcessPoolExecutor``
    When one of its workers dies the stdlib pool breaks as a whole: every pending future
    fails with ``BrokenProcessPool`` and the pool must be rebuilt. Here each worker is
    supervised on its own: a worker that dies (SIGKILL, ``os._exit``, segfault, OOM kill)
    fails only the job it was running, with :class:`~taskvisor.WorkerCrashed` (exit code and
    pid), is replaced on demand, and every other job runs on. Cancelling (or timing out) a
    running job kills only its worker.

Threads and processes
    ``submit`` (on the supervisor's loop) only appends the job to a deque under a lock and,
    if the manager is not already due to wake, writes one byte to a wake-up pipe. Everything
    else happens on one manager thread (``taskvisor-<label>-pool``): pickling the jobs,
    starting workers (up to ``size``, on demand), writing batches to them, reading their
    answers, reaping dead ones and calling the sink. It sleeps in one ``epoll`` (a
    ``selectors`` selector) over the wake-up pipe, every worker's answer pipe and every
    worker's process sentinel: no polling, no sleeps. Its only timeout is a deadline (the
    policy's next steal, :func:`taskvisor._procwindow.next_steal`, or the grace period of a
    shutdown).

    A worker is a ``multiprocessing`` process (spawn by default) running
    :func:`taskvisor._worker.child_main` (the child's side lives there, in a module that
    imports little, so a worker starts fast): it reads length-prefixed batches of pickled
    jobs from its pipe, runs each one through :func:`taskvisor._worker.run_pickled` (which
    contains every payload problem in the child) and writes each answer back at once; the
    parent decodes it with :func:`taskvisor._worker.decode`. The parent's ends of the pipes
    are non-blocking: a worker that does not read (it runs a long job and its pipe is
    full) never blocks the manager, which keeps the rest in a per-worker buffer until the
    pipe is writable.

Windows, and knowing what a dead worker was running
    The manager keeps several jobs in flight per worker (its window), sent as one message
    per burst; :mod:`taskvisor._procwindow` (:func:`~taskvisor._procwindow.pick`) says
    which worker each job goes to and how large a window may grow. Each job sent to a
    worker gets a sequence number. The worker runs its jobs in order; before running one
    it takes a small lock it shares with the parent, checks the job was not revoked
    (``seq > floor``) and records ``started = seq`` in a two-word shared array. So the
    parent always knows exactly which job a worker runs:

    * the worker dies → the answers already in its pipe are read first (an answer fully
      received wins over the death, a half-written one does not); the job with
      ``seq == started`` and no answer crashed (``WorkerCrashed``) or, if we killed the
      worker to cancel it, is ``CANCELLED``; the later jobs of its window never started
      and are requeued at the front, not failed. A worker that dies before it could even
      start (say its main module fails to import in the child) fails the first job of its
      window, so that such a pool fails jobs instead of respawning for ever;
    * the parent *revokes* jobs it sent but the worker has not started by taking the lock,
      reading ``started`` and setting ``floor`` to the last sequence number sent: the jobs
      after ``started`` are requeued (the worker will skip them). ``cancel`` of such a job
      revokes it at once, on the caller's thread, and reports it ``CANCELLED`` without
      touching the worker (and returns True: no worker started it); ``cancel`` of the job
      the worker is running kills the worker (SIGKILL) and the replacement starts on
      demand;
    * head-of-line blocking: when the policy says a worker's current job has run long
      with jobs waiting behind it (:func:`~taskvisor._procwindow.steal_due`), the manager
      revokes them the same way (requeued at the front: another worker takes them).

    A watched job (``job.watch``: a task with a timeout) reports ``Outcome.STARTED`` when the
    worker really starts it (the worker sends a notice first), so time spent waiting in a
    window does not count against its timeout.

Exactly once
    ``_pending`` maps every job not yet reported to where it is: ``None`` (in the pool, not
    on a worker) or its slot in a worker's window. A job is reported only by the thread that
    removes it from ``_pending`` under the lock, so it is reported exactly once: ``cancel``
    of a job no worker has started reports ``CANCELLED`` at once from the caller's thread;
    a job on a worker that it could not revoke (started) is settled by the manager
    (answer, revoke or kill).

Shutdown
    Jobs not on a worker end ``CANCELLED``; idle workers get a stop frame and EOF and exit
    on their own (after ``_GRACE``, 5 s, they are killed); busy ones, and ones still
    starting up, are killed and their jobs end ``CANCELLED``; no worker is started once
    shutdown has begun; every process is joined, then the manager thread. An ``atexit``
    hook shuts down pools still open when the interpreter exits. Workers are not daemonic
    (tasks may start processes of their own) and do not ignore SIGINT (the processes they
    start would inherit that); an idle worker exits quietly on Ctrl-C.

Speed
    2,000 no-op tasks on 2 warm workers, 2-core machine, CPython 3.11, both pools measured
    in the same process (a throwaway script; the machine was shared, load average ~3):
    this pool, with jobs submitted from an event loop and completions counted in the sink,
    18-30 µs per task; ``ProcessPoolExecutor(2)`` with ``loop.run_in_executor`` 125-260 µs,
    with ``ex.submit`` and ``wait`` 90-230 µs (ratio 0.07-0.22; design.md measured
    80-110 µs for the stdlib pool on a quiet machine). The parent spends about 11 µs of CPU
    per task. ``submit`` itself is a lock, a dict store and a deque append (plus one pipe
    write per burst). A worker's start-up (a spawn child: the interpreter, multiprocessing's
    bootstrap, the ``taskvisor`` package ``__init__``, :mod:`taskvisor._worker` and the
    main module; ``benchmarks/worker_start.py`` measures it) is paid once per worker, in
    the background, by the manager thread; again for each replacement of a killed one.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import multiprocessing.util  # its atexit hook must run after ours (atexit is LIFO)
import os
import pickle
import selectors
import threading
import time
import weakref
from collections import deque
from multiprocessing.connection import Connection
from typing import Any, Final, cast

from ._errors import ClosedError, SpecError, WorkerCrashed
from ._executors import Job, Outcome, Result, Sink
from ._log import logger as log
from ._procwindow import answered, next_steal, pick, steal_due
from ._result import ExceptionInfo
from ._worker import ANSWER as _ANSWER
from ._worker import FLOOR as _FLOOR
from ._worker import HEADER as _HEADER
from ._worker import RUN as _RUN
from ._worker import STARTED as _STARTED
from ._worker import STOP as _STOP
from ._worker import child_main, decode, dumps_call

__all__ = ["ProcessPool"]


_GRACE: Final = 5.0  # shutdown: how long an idle worker gets to exit on its own
_LOCK_TIMEOUT: Final = 1.0  # the child holds the shared lock for microseconds
_WITHDRAW_WAIT: Final = 0.05  # cancel() on the caller's thread waits no longer for it
_PROTO: Final = pickle.HIGHEST_PROTOCOL
_READ_SIZE: Final = 1 << 18

# selector keys' data
_WAKE: Final = 0
_IN: Final = 1
_DEATH: Final = 2
_OUT: Final = 3

_MISSING: Final[Any] = object()


# --------------------------------------------------------------------------- the parent


class _Slot:
    """A job on its way through the pool; ``worker`` is set while it is in a window."""

    __slots__ = ("job", "payload", "seq", "worker")

    def __init__(self, job: Job) -> None:
        self.job = job
        self.payload: bytes | None = None  # pickled once, kept when the job is requeued
        self.seq = 0
        self.worker: _Worker | None = None


class _Worker:
    """The parent's view of one worker process (touched by the manager thread only).

    A :class:`taskvisor._procwindow.WorkerView`: the policy reads its window and writes
    ``fast``, ``mean`` and ``busy_since``.
    """

    __slots__ = (
        "answers",
        "busy_since",
        "ctl",
        "dead",
        "fast",
        "inbuf",
        "input_closed",
        "jobs",
        "killed",
        "label",
        "last_seq",
        "lock",
        "mean",
        "outbuf",
        "pid",
        "proc",
        "ready",
        "rfd",
        "sentinel",
        "wfd",
        "window",
        "window_bytes",
        "writing",
    )

    def __init__(
        self,
        proc: multiprocessing.process.BaseProcess,
        jobs: Connection,
        answers: Connection,
        lock: Any,
        ctl: Any,
    ) -> None:
        self.proc = proc
        assert proc.pid is not None
        self.pid: int = proc.pid
        self.label = f"pid {self.pid}"
        self.sentinel: int = proc.sentinel
        self.jobs = jobs  # our end: we write batches of jobs
        self.answers = answers  # our end: we read answers
        self.wfd = jobs.fileno()
        self.rfd = answers.fileno()
        os.set_blocking(self.wfd, False)
        os.set_blocking(self.rfd, False)
        self.lock = lock
        self.ctl = ctl
        self.window: deque[_Slot] = deque()  # sent, not answered, not revoked; by seq
        self.last_seq = 0
        self.outbuf: deque[memoryview] = deque()
        self.writing = False  # registered for EVENT_WRITE
        self.inbuf = bytearray()
        self.ready = False  # its first frame arrived: it has booted
        self.window_bytes = 0  # the payloads in the window
        self.fast = True  # its last job was short: prefetch to it
        self.mean = 0.0  # moving average of its jobs' durations, as the parent sees them
        self.busy_since = 0.0  # when its current job (approximately) started
        self.killed = False
        self.input_closed = False
        self.dead = False

    def usable(self) -> bool:
        """Alive as far as we know, and taking jobs."""
        return not (self.killed or self.dead or self.input_closed) and self.rfd >= 0


class ProcessPool:
    """Worker processes supervised one by one; see the module docstring.

    ``submit`` is called on the supervisor's loop and never blocks; ``cancel`` is
    thread-safe; ``shutdown`` blocks until every worker and the manager thread are gone.
    Every submitted job is reported to ``sink`` exactly once with ``OK``, ``ERROR`` or
    ``CANCELLED`` (a watched job also with ``STARTED`` before that).
    """

    def __init__(
        self, size: int, sink: Sink, *, start_method: str = "spawn", label: str = "process"
    ) -> None:
        if size < 1:
            raise ValueError(f"a process pool needs at least one worker, not {size}")
        self.size = size
        self.label = label
        self._sink = sink
        # typed as the default context: typeshed's BaseContext has no ``Process``
        self._ctx = cast(
            "multiprocessing.context.DefaultContext", multiprocessing.get_context(start_method)
        )
        self._lock = threading.Lock()
        # guarded by _lock
        self._queue: deque[Job] = deque()
        self._pending: dict[Job, _Slot | None] = {}
        self._cancels: list[Job] = []
        # what cancel() revoked on a worker: (worker, its started, the floor set)
        self._withdrawn: list[tuple[_Worker, int, int]] = []
        self._woken = False
        self._closed = False
        self._broken: BaseException | None = None
        self._workers: list[_Worker] = []  # mutated by the manager, under _lock
        # the manager thread's own
        self._ready: deque[_Slot] = deque()  # taken from _queue or requeued, not sent
        self._cancelling: set[Job] = set()  # jobs whose worker we killed to cancel them
        self._reports: list[tuple[Job, Result]] = []
        self._spawned = 0
        self._spawn_error: BaseException | None = None
        self._sel: selectors.BaseSelector | None = None
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ public side

    @property
    def started(self) -> bool:
        """Whether the manager thread (and so any worker) was ever started."""
        return self._thread is not None

    @property
    def pids(self) -> list[int]:
        """The pids of the workers alive now (not killed, not reaped)."""
        with self._lock:
            return [w.pid for w in self._workers if not (w.dead or w.killed)]

    def submit(self, job: Job) -> None:
        """Queue a job (on the supervisor's loop: an append and at most one pipe write)."""
        with self._lock:
            if not self._closed:
                self._pending[job] = None
                self._queue.append(job)
                if not self._woken:
                    if self._thread is None:
                        try:
                            self._start_manager()
                        except BaseException:  # no thread or no pipe: nothing was queued
                            del self._pending[job]
                            self._queue.pop()
                            raise
                    self._woken = True
                    self._wake()
                return
            broken = self._broken
        if broken is None:
            raise ClosedError("closed", f"submit to {self.label}")
        exc = RuntimeError(f"the {self.label} pool's manager failed: {broken!r}")
        self._call_sink(job, (Outcome.ERROR, None, job.shared, ExceptionInfo.from_exc(exc), None))

    def cancel(self, job: Job) -> bool:
        """Stop a job (thread-safe): not started → ``CANCELLED`` now; running → kill its worker.

        True if no worker ever started the job: it was queued, or sent to a worker that
        had not started it yet (revoked there, see :meth:`_withdraw`); it was reported
        ``CANCELLED`` here, now. False if it has ended already or a worker runs it (the
        manager kills that worker and reports the job).
        """
        with self._lock:
            where = self._pending.get(job, _MISSING)
            if where is _MISSING:
                return False
            if where is not None and not self._withdraw(where):
                self._cancels.append(job)  # it runs: the manager kills its worker
                if not self._woken:
                    self._woken = True
                    self._wake()
                return False
            del self._pending[job]  # it never started: ours to report
        self._call_sink(job, (Outcome.CANCELLED, None, job.shared, None, None))
        return True

    def shutdown(self) -> None:
        """Cancel what is queued or running, stop every worker and join everything.

        Idle workers exit on their own (their job pipe is closed); workers still running a
        job are killed and their jobs reported ``CANCELLED``. Idempotent; blocking.
        """
        with self._lock:
            self._closed = True
            thread = self._thread
            if thread is not None and not self._woken:
                self._woken = True
                self._wake()
        _POOLS.discard(self)
        if thread is None or thread is threading.current_thread():
            return
        thread.join()
        with self._lock:  # _wake() writes under the lock: never to a closed (reused) fd
            fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._thread else "idle"
        return f"<ProcessPool {self.label!r} size={self.size} {state} pids={self.pids}>"

    # ------------------------------------------------------------------ helpers

    def _start_manager(self) -> None:
        """Called with _lock held, on the first submit."""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        thread = threading.Thread(
            target=self._main, name=f"taskvisor-{self.label}-pool", daemon=True
        )
        self._wake_r, self._wake_w = wake_r, wake_w
        try:
            thread.start()
        except BaseException:
            self._wake_r = self._wake_w = -1
            os.close(wake_r)
            os.close(wake_w)
            raise
        self._thread = thread
        _POOLS.add(self)

    def _wake(self) -> None:
        """Wake the manager (called with _lock held)."""
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):  # full: it is due to wake anyway
                os.write(self._wake_w, b"\0")

    def _withdraw(self, slot: _Slot) -> bool:
        """Revoke a job its worker was sent but has not started (caller's thread, _lock held).

        The race this closes. A supervisor closing (``aclose(wait=...)`` at its deadline,
        ``cancel=True``, an exception in ``async with``) with one process task running and
        one queued behind it cancels them one at a time, the running one first. That
        cancel wakes the manager, which kills the worker and, in the same pass, starts a
        replacement (the killed one no longer counts) and sends it the queued job: the
        wake-up write releases the GIL, so this can all happen before the supervisor's
        next statement. The queued job's cancel then found it "on a worker" and returned
        False, and the supervisor counted an attempt for a job no worker ever started
        (its ``_never_ran`` needs True); and the replacement, once up, could even run the
        job the supervisor had cancelled. On a loaded machine the aclose-with-deadline test
        failed so intermittently. Now whether cancel() returns True depends only on what
        the worker did, never on how far the manager got: not started → withdrawn, True.

        Exact because the worker records ``started`` under this same lock after checking
        ``floor``: once we read ``started < seq`` and raise ``floor`` it can never start
        the job. Like :meth:`_revoke`, the floor revokes every job sent so far that has not
        started; the manager takes the others back (:meth:`_take_withdrawals`). False (the
        manager settles the job, as before) if the worker started it, is being killed or
        reaped, or its lock is not free within ``_WITHDRAW_WAIT`` (it died holding it).
        """
        w = slot.worker
        if w is None or w.killed or w.dead:
            return False
        if not w.lock.acquire(timeout=_WITHDRAW_WAIT):
            return False
        try:
            started = int(w.ctl[_RUN])
            if started >= slot.seq:
                return False
            floor = w.last_seq  # (assigned under _lock, which we hold)
            if w.ctl[_FLOOR] < floor:
                w.ctl[_FLOOR] = floor
        finally:
            w.lock.release()
        self._withdrawn.append((w, started, floor))
        if not self._woken:
            self._woken = True
            self._wake()
        return True

    def _call_sink(self, job: Job, result: Result) -> None:
        try:
            self._sink(job, result)
        except Exception:
            log.exception("the %s pool's sink failed on %r", self.label, job.name)

    def _finish(self, job: Job, result: Result) -> None:
        """Report a job's end if nobody did yet (manager thread; flushed by _flush)."""
        with self._lock:
            if self._pending.pop(job, _MISSING) is _MISSING:
                return
        self._cancelling.discard(job)
        self._reports.append((job, result))

    def _flush(self) -> None:
        reports, self._reports = self._reports, []
        for job, result in reports:
            self._call_sink(job, result)

    def _cancelled(self, job: Job, worker: str | None) -> None:
        self._finish(job, (Outcome.CANCELLED, None, job.shared, None, worker))

    def _error(self, job: Job, exc: BaseException, worker: str | None) -> None:
        self._finish(job, (Outcome.ERROR, None, job.shared, ExceptionInfo.from_exc(exc), worker))

    # ------------------------------------------------------------------ manager thread

    def _main(self) -> None:
        try:
            self._sel = selectors.DefaultSelector()
            self._sel.register(self._wake_r, selectors.EVENT_READ, (_WAKE, None))
            self._loop()
            self._close_down()
        except BaseException as exc:  # a bug here must not leave jobs or workers behind
            log.exception("the %s pool's manager failed", self.label)
            self._abort(exc)
        finally:
            if self._sel is not None:
                self._sel.close()

    def _loop(self) -> None:
        sel = self._sel
        assert sel is not None
        timeout: float | None = None
        while True:
            events = sel.select(timeout)
            now = time.monotonic()
            deaths = []
            for key, _ in events:
                kind, w = key.data
                if kind == _IN:
                    self._read(w, now)
                elif kind == _DEATH:
                    deaths.append(w)
                elif kind == _OUT:
                    self._write(w)
                else:
                    with contextlib.suppress(OSError):
                        while os.read(self._wake_r, 4096):
                            pass
            for w in deaths:
                self._reap(w, now, closing=False)
            with self._lock:
                self._woken = False
                closing = self._closed
                cancels, self._cancels = self._cancels, []
                queued = None
                if self._queue:
                    queued, self._queue = self._queue, deque()
            # (the slots are made outside the lock: submit() on the loop waits for it)
            if queued is not None:
                self._ready.extend(map(_Slot, queued))
            if closing:
                return
            self._take_withdrawals()
            for job in cancels:
                self._cancel_sent(job, now)
            self._steal(now)
            self._dispatch(now)
            self._flush()
            timeout = next_steal(self._workers, time.monotonic())

    def _dispatch(self, now: float) -> None:
        """Send ready jobs to workers with room in their window (starting workers)."""
        ready = self._ready
        batches: dict[_Worker, list[tuple[int, str, bool, bytes]]] = {}
        pending = self._pending
        workers = self._workers
        spawn = self._spawn_for
        while ready:
            slot = ready.popleft()
            job = slot.job
            if pending.get(job, _MISSING) is not None:  # cancelled meanwhile (or a stale copy)
                continue
            if slot.payload is None:
                try:
                    slot.payload = dumps_call(job.fn, job.args, job.kwargs, job.shared)
                except Exception as exc:
                    err = SpecError(
                        f"task {job.name!r}: its function or arguments could not be pickled "
                        f"for a process worker: {type(exc).__name__}: {exc}"
                    )
                    err.__cause__ = exc
                    self._error(job, err, None)
                    continue
            w = pick(workers, len(slot.payload), spawn)
            if w is None:
                if not self._live() and self._spawn_error is not None:
                    self._error(job, self._spawn_error, None)
                    continue
                ready.appendleft(slot)
                break
            with self._lock:  # (cancel() reads these three under it: see _withdraw)
                if pending.get(job, _MISSING) is not None:
                    continue
                pending[job] = slot
                w.last_seq += 1
                slot.seq = w.last_seq
                slot.worker = w
            if not w.window:
                w.busy_since = now
            w.window.append(slot)
            w.window_bytes += len(slot.payload)
            item = (slot.seq, job.name, job.watch, slot.payload)
            batch = batches.get(w)
            if batch is None:
                batches[w] = [item]
            else:
                batch.append(item)
        for w, batch in batches.items():
            data = pickle.dumps(batch, _PROTO)
            self._send(w, _HEADER.pack(len(data)) + data)

    def _live(self) -> list[_Worker]:
        return [w for w in self._workers if w.usable()]

    def _spawn_for(self, live: int) -> _Worker | None:
        """The policy wants a new worker (``live`` are usable): start one if we may."""
        # after a failed start, try again only when a worker goes or none is left; never
        # once shutdown began (an unlocked read: a stale False costs one worker it kills)
        if live < self.size and (self._spawn_error is None or live == 0) and not self._closed:
            return self._spawn()
        return None

    def _spawn(self) -> _Worker | None:
        ctx = self._ctx
        try:
            jobs_r, jobs_w = ctx.Pipe(duplex=False)
            answers_r, answers_w = ctx.Pipe(duplex=False)
        except OSError as exc:
            self._spawn_error = exc
            log.error("the %s pool cannot start a worker: %r", self.label, exc)
            return None
        try:
            lock = ctx.Lock()
            ctl = ctx.RawArray("q", 2)
            inherited: list[Connection] = []
            if ctx.get_start_method() == "fork":  # passed as is, not pickled (duplicated)
                inherited = [jobs_w, answers_r]
                inherited += [c for w in self._workers for c in (w.jobs, w.answers) if not c.closed]
            self._spawned += 1
            proc = ctx.Process(
                target=child_main,
                args=(jobs_r, answers_w, lock, ctl, inherited),
                name=f"taskvisor-{self.label}-worker-{self._spawned}",
            )
            proc.start()
        except Exception as exc:
            for conn in (jobs_r, jobs_w, answers_r, answers_w):
                conn.close()
            self._spawn_error = exc
            log.error("the %s pool cannot start a worker: %r", self.label, exc)
            return None
        jobs_r.close()
        answers_w.close()
        self._spawn_error = None
        w = _Worker(proc, jobs_w, answers_r, lock, ctl)
        sel = self._sel
        assert sel is not None
        sel.register(w.rfd, selectors.EVENT_READ, (_IN, w))
        sel.register(w.sentinel, selectors.EVENT_READ, (_DEATH, w))
        with self._lock:
            self._workers.append(w)
        return w

    # -- pipes

    def _send(self, w: _Worker, data: bytes) -> None:
        if not w.usable():
            return
        if not w.outbuf:
            try:
                n = os.write(w.wfd, data)
            except BlockingIOError:
                n = 0
            except OSError:  # EPIPE: it is dying, its sentinel will tell
                return
            if n == len(data):
                return
            w.outbuf.append(memoryview(data)[n:])
        else:
            w.outbuf.append(memoryview(data))
        if not w.writing:
            w.writing = True
            assert self._sel is not None
            self._sel.register(w.wfd, selectors.EVENT_WRITE, (_OUT, w))

    def _write(self, w: _Worker) -> None:
        out = w.outbuf
        while out:
            try:
                n = os.write(w.wfd, out[0])
            except BlockingIOError:
                return
            except OSError:
                out.clear()
                break
            if n < len(out[0]):
                out[0] = out[0][n:]
                return
            out.popleft()
        self._stop_writing(w)

    def _stop_writing(self, w: _Worker) -> None:
        if w.writing:
            w.writing = False
            assert self._sel is not None
            self._sel.unregister(w.wfd)

    def _read(self, w: _Worker, now: float) -> None:
        """Read what the worker sent and handle every complete frame."""
        if self._withdrawn:  # before any answer to a job sent after a revoke's floor
            self._take_withdrawals()
        buf = w.inbuf
        while w.rfd >= 0:
            try:
                chunk = os.read(w.rfd, _READ_SIZE)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:  # EOF: it is gone (its sentinel says so too)
                self._stop_reading(w)
                break
            buf += chunk
            if len(chunk) < _READ_SIZE:
                break
        pos = 0
        end = len(buf)
        frames = []
        with memoryview(buf) as view:
            while end - pos >= 8:
                (size,) = _HEADER.unpack_from(view, pos)
                if end - pos - 8 < size:
                    break
                frames.append(pickle.loads(view[pos + 8 : pos + 8 + size]))
                pos += 8 + size
        if pos:
            del buf[:pos]
        for kind, seq, answer, ran in frames:
            if kind == _ANSWER:
                self._answered(w, seq, answer, now, ran)
            elif kind == _STARTED:
                for slot in w.window:
                    if slot.seq == seq:
                        if slot.job in self._pending:
                            self._reports.append(
                                (slot.job, (Outcome.STARTED, None, None, None, w.label))
                            )
                        break
            else:
                w.ready = True
                w.busy_since = now

    def _stop_reading(self, w: _Worker) -> None:
        if w.rfd >= 0:
            assert self._sel is not None
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(w.rfd)
            w.answers.close()
            w.rfd = -1

    def _answered(
        self, w: _Worker, seq: int, answer: tuple[Any, ...], now: float, ran: float
    ) -> None:
        window = w.window
        while window and window[0].seq < seq:  # never: answers come in window order
            lost = window.popleft()
            self._error(lost.job, RuntimeError(f"worker {w.label} skipped a job"), w.label)
        if not window or window[0].seq != seq:
            return  # a revoked job it ran anyway (a cancel it raced): already reported
        slot = window.popleft()
        job = slot.job
        w.window_bytes -= len(slot.payload or b"")
        answered(w, now)
        if job not in self._pending:
            return
        job.ran = ran
        ok, ret, shared, excinfo, worker = decode(answer)
        if ok:
            self._finish(job, (Outcome.OK, ret, shared, None, worker))
        else:
            if shared is None:
                shared = job.shared
            self._finish(job, (Outcome.ERROR, None, shared, excinfo, worker))

    # -- revoking, cancelling, reaping

    def _revoke(self, w: _Worker) -> int | None:
        """Stop the worker from starting anything sent so far; return what it started.

        None if its lock could not be taken (it died holding it, or is frozen).
        """
        if not w.lock.acquire(timeout=_LOCK_TIMEOUT):
            return None
        try:
            started = int(w.ctl[_RUN])
            w.ctl[_FLOOR] = w.last_seq
        finally:
            w.lock.release()
        return started

    def _requeue(self, w: _Worker, started: int, cancel: Job | None = None) -> None:
        """Take the window's jobs after ``started`` back (``cancel`` ends CANCELLED)."""
        keep: deque[_Slot] = deque()
        back: list[_Slot] = []
        for slot in w.window:
            if slot.seq <= started:
                keep.append(slot)
            elif slot.job is cancel:
                self._cancelled(slot.job, None)
            else:
                back.append(slot)
        w.window = keep
        w.window_bytes = sum(len(slot.payload or b"") for slot in keep)
        self._put_back(back)

    def _take_withdrawals(self) -> None:
        """Take back the jobs cancel() revoked along with the one it withdrew.

        The worker skips everything up to the floor that it had not started; what else is
        in that range goes back to the ready queue. Done before reading any answer: an
        answer to a job sent after the floor comes only after those were skipped (that
        job's ``seq`` was assigned under ``_lock`` after the note was left under it).
        """
        with self._lock:
            notes, self._withdrawn = self._withdrawn, []
        for w, started, floor in notes:
            back = [slot for slot in w.window if started < slot.seq <= floor]
            if back:  # (none if a revoke, a reap or an answer got there first)
                w.window = deque(s for s in w.window if not started < s.seq <= floor)
                w.window_bytes = sum(len(s.payload or b"") for s in w.window)
                self._put_back(back)

    def _put_back(self, slots: list[_Slot]) -> None:
        """Jobs that never started go back to the front of the ready queue, in order."""
        again = []
        for slot in slots:
            job = slot.job
            if job in self._cancelling:  # its cancel came while its worker was going
                self._cancelled(job, None)
                continue
            with self._lock:
                if self._pending.get(job, _MISSING) is not slot:
                    continue  # reported meanwhile (a cancel we could not revoke)
                self._pending[job] = None  # cancel() reports it directly from now on
            slot.worker = None
            again.append(slot)
        self._ready.extendleft(reversed(again))

    def _cancel_sent(self, job: Job, now: float) -> None:
        """A cancel of a job that was on a worker when cancel() looked."""
        with self._lock:
            where = self._pending.get(job, _MISSING)
        if isinstance(where, _Slot):
            w = where.worker
            assert w is not None
            if not w.usable():  # going: _reap settles it
                self._cancelling.add(job)
                return
            self._read(w, now)  # an answer that already arrived wins
            with self._lock:  # (or a withdrawal took it back meanwhile)
                where = self._pending.get(job, _MISSING)
        if where is _MISSING:
            return
        if where is None:  # requeued since
            self._cancelled(job, None)
            return
        w = where.worker
        assert w is not None
        started = self._revoke(w)
        if started is None:  # cannot tell what it runs: report now, drop its answer later
            self._cancelled(job, None)
            return
        self._requeue(w, started, cancel=job)
        if where.seq == started:
            self._cancelling.add(job)
            self._kill(w)
        elif where.seq < started:
            self._read(w, now)  # it finished: its whole answer is in the pipe

    def _kill(self, w: _Worker) -> None:
        w.killed = True
        w.outbuf.clear()
        self._stop_writing(w)
        with contextlib.suppress(OSError, ValueError):
            w.proc.kill()

    def _steal(self, now: float) -> None:
        """Revoke what waits behind a job that has run too long (the policy says which)."""
        for w in steal_due(self._workers, now):
            started = self._revoke(w)
            if started is not None:
                self._requeue(w, started)

    def _reap(self, w: _Worker, now: float, *, closing: bool) -> None:
        """A worker's sentinel fired: settle its window, forget it."""
        if w.dead:
            return
        self._read(w, now)  # the answers it sent in full win over its death
        w.dead = True
        self._stop_reading(w)
        self._stop_writing(w)
        assert self._sel is not None
        self._sel.unregister(w.sentinel)
        w.proc.join(_LOCK_TIMEOUT)  # it has exited: no wait
        if w.proc.exitcode is None:  # it closed its end of the sentinel and lives on
            w.proc.kill()
            w.proc.join()
        code = w.proc.exitcode
        started = int(w.ctl[_RUN])
        # it died before it could read anything: blame the first job, or a worker that
        # cannot start (say its main module fails to import) would be respawned for ever
        boot_failure = not w.ready and not w.killed and not closing
        if boot_failure:
            log.warning(
                "worker %s of the %s pool died while starting (exit code %s)",
                w.label,
                self.label,
                code,
            )
        ran: list[_Slot] = []
        back: list[_Slot] = []
        for i, slot in enumerate(w.window):
            (ran if slot.seq <= started or (boot_failure and i == 0) else back).append(slot)
        w.window.clear()
        w.window_bytes = 0
        for slot in ran:
            job = slot.job
            if closing or job in self._cancelling:
                self._cancelled(job, w.label)
            else:
                self._error(job, WorkerCrashed(job.name, code, w.pid), w.label)
        if closing:
            for slot in back:
                self._cancelled(slot.job, None)
        else:
            self._put_back(back)
            self._spawn_error = None  # room for a new worker: try again
        w.jobs.close()
        with self._lock:
            self._workers.remove(w)
        with contextlib.suppress(ValueError):  # someone else reaped it: exit code unknown
            w.proc.close()

    # -- closing

    def _close_down(self) -> None:
        sel = self._sel
        assert sel is not None
        self._take_withdrawals()  # (what they take back is cancelled just below)
        with self._lock:
            queued = list(self._queue)
            self._queue.clear()
        for job in queued:
            self._cancelled(job, None)
        self._cancel_ready()
        for w in list(self._workers):
            # busy: killed. Still starting: killed too, it has nothing to finish (a close
            # right after a cancel killed a worker would otherwise wait out the start-up
            # of the replacement). Idle: told to exit.
            if not w.ready or any(slot.job in self._pending for slot in w.window):
                self._kill(w)
            else:
                self._close_input(w)
        self._flush()
        deadline = time.monotonic() + _GRACE
        while self._workers:
            now = time.monotonic()
            if now >= deadline:
                for w in self._workers:
                    if not w.killed:
                        log.warning(
                            "worker %s of the %s pool did not exit: killed", w.label, self.label
                        )
                        self._kill(w)
                timeout = None
            else:
                timeout = None if all(w.killed for w in self._workers) else deadline - now
            for key, _ in sel.select(timeout):
                kind, w = key.data
                if kind == _IN:
                    self._read(w, now)
                elif kind == _DEATH:
                    self._reap(w, now, closing=True)
                elif kind == _OUT:
                    self._write(w)
                else:
                    with contextlib.suppress(OSError):
                        while os.read(self._wake_r, 4096):
                            pass
            with self._lock:
                cancels, self._cancels = self._cancels, []
                self._woken = False
            del cancels  # whatever is still on a worker ends CANCELLED with it
            self._take_withdrawals()
            self._cancel_ready()
            self._flush()
        self._take_withdrawals()
        self._cancel_ready()
        self._flush()

    def _cancel_ready(self) -> None:
        """Closing: what is in the ready queue (taken back from a worker) ends CANCELLED."""
        for slot in self._ready:
            self._cancelled(slot.job, None)
        self._ready.clear()

    def _close_input(self, w: _Worker) -> None:
        """Tell an idle worker to exit: a stop frame, then EOF on its job pipe."""
        if not w.input_closed:
            w.input_closed = True
            self._stop_writing(w)
            if not w.outbuf:
                with contextlib.suppress(OSError):  # full: EOF (or the grace kill) it is
                    os.write(w.wfd, _STOP)
            w.outbuf.clear()
            w.jobs.close()

    def _abort(self, exc: BaseException) -> None:
        """The manager failed: fail everything, kill every worker, join them."""
        with self._lock:
            self._closed = True
            self._broken = exc
            jobs = list(self._pending)
        for w in list(self._workers):
            with contextlib.suppress(Exception):
                w.proc.kill()
            with contextlib.suppress(Exception):
                w.proc.join()
                w.proc.close()
            for conn in (w.jobs, w.answers):
                with contextlib.suppress(Exception):
                    conn.close()
        with self._lock:
            self._workers.clear()
        err = RuntimeError(f"the {self.label} pool's manager failed: {exc!r}")
        for job in jobs:
            self._error(job, err, None)
        self._flush()


_POOLS: weakref.WeakSet[ProcessPool] = weakref.WeakSet()


@atexit.register
def _shutdown_all() -> None:
    """Interpreter exit: stop live pools before multiprocessing joins their workers."""
    for pool in list(_POOLS):
        pool.shutdown()
