"""The engine: the supervisor's records, its planner, and the one instruction queue.

Every event (a submit, a completion, a cancel, a timer) reaches the planner under the
engine lock (:class:`EngineLock`), and the planner's instructions are carried out through
one FIFO that is never re-entered (``Engine._execute``): an instruction that makes a new
event queues that event's instructions behind the ones still waiting, as distributed's
``handle_stimulus`` does. Each queued instruction carries the records it names as they
were when the planner gave it.

Threads. The loop's thread takes the lock at every entry point. A pool thread takes it
without waiting, to finish a lone successful thread task itself and start the next one
at once (``_sink``: a chain of thread tasks makes no loop round trip per link); a user's
thread waits for it, except for a single ``submit`` the planner cannot refuse: that one
takes no lock at all, queues its record (``_queue_in``) and wakes the loop, and whoever
next enters the lock, on any thread and at any depth, hands the queue to the planner
first (``_take_in``), so every holder of the lock sees every task a returned handle
names. Off the loop, only thread dispatches are carried out in the calling
thread; everything the loop owns (futures, listeners, timers, warnings, other executors)
is queued to it, in order (``_to_loop``, ``_catch_up``). User callbacks run after the
outermost release of the lock, on the loop's thread.

What happens to a task's attempts is decided by its record's attempt machine
(``_attempts``); how its ``TaskRes`` reaches whoever waits is in ``_delivery``. See the
design page, "One instruction queue, never re-entered".
"""

from __future__ import annotations

import asyncio
import enum
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final, cast

from ._attempts import _ACT_DONE, _NOTHING, _RELEASE, TIMEOUT, Act
from ._clock import Clock, SystemClock, TimerHandle
from ._config import Config
from ._delivery import Record, TaskInfo, log_result
from ._errors import (
    ClosedError,
    DuplicateTaskError,
    NotRunError,
    SpecError,
    TaskCancelled,
    TaskFailError,
    TaskTimeout,
    WorkerCrashed,
    warn_user,
)
from ._executors import _ALOOP_RUNNING, Aloop, Inbox, Job, Outcome, Result, ThreadPool
from ._gates import Gates
from ._job import _OK, _STARTED
from ._log import logger
from ._planner import (
    _DONE,
    Alarm,
    Cancel,
    Dispatch,
    Instruction,
    Settle,
    State,
    WakeAt,
    Warn,
)
from ._result import ExceptionInfo, TaskRes
from ._spec import substitute_call
from .abc import Executor

__all__ = ["STORY_EVENTS", "Countdown", "Engine", "EngineLock", "SupervisorState", "Window", "warn"]


STORY_EVENTS = 10_000  # how many recent task events story() can look back on
UNPIN_BATCH = 256  # dropped handles the planner hears of together (see Engine._unpin)
INTAKE_LIMIT = 1024  # queued foreign submits beyond which a submit takes the lock (backpressure)
# jobs an aloop has been handed and not yet started, at most: the rest of a burst waits as
# its Dispatch instructions (see Engine._carry_out). Measured on W3 (100,000 coroutines):
# 128-512 alike, 2,048 worse, no window (every Job made at once) 25% slower
ALOOP_WINDOW = 256
_new_tuple: Callable[..., Any] = tuple.__new__  # builds each TaskRes (see Engine._deliver)
_FINAL_ERRORS = (TaskFailError, SpecError)  # never retried (see Engine._on_done)


def _any_thread(listeners: Any) -> bool:
    """No listener, or one that may run on any thread under the engine lock (it says so
    with ``any_thread = True``: :class:`Countdown`)."""
    return listeners is None or getattr(listeners, "any_thread", False) is True


class Countdown:
    """A batch's listener (``gather``): resolves ``done`` on the loop when the last of
    its tasks has ended. It may run on any thread, under the engine lock (``_deliver``
    then calls it right there instead of waking the loop per task).

    ``results`` holds a task's record while it is pending and its :class:`TaskRes` once
    it has ended, in submission order: the planner numbers a batch's records one after
    another (``seq``), so an ending task's place is its number less the first one's. No
    ended task's record is kept: it can be forgotten inside the batch, as any other, and
    a long ``gather`` keeps no record per task alive for the cyclic GC to walk until it
    returns (issue 13). (Keyed by name instead, a dict cost 0.45 µs per task.)"""

    __slots__ = ("base", "done", "left", "loop", "results", "tid")
    any_thread = True

    def __init__(self, loop: asyncio.AbstractEventLoop, recs: list[Record]) -> None:
        self.loop = loop  # (made on the loop's own thread)
        self.tid = threading.get_ident()
        self.base = recs[0].seq if recs else 0
        if recs and recs[-1].seq - self.base != len(recs) - 1:  # (see Planner.submit)
            raise RuntimeError("a batch's records are not numbered one after another")
        self.results: list[Any] = list(recs)
        left = 0
        for i, rec in enumerate(recs):
            if rec.res is not None:  # (ended at its submission)
                self.results[i] = rec.res
            else:
                left += 1
                rec.add_listener(self)
        self.left = left
        self.done: asyncio.Future[None] = loop.create_future()
        if not left:
            self.done.set_result(None)

    def __call__(self, rec: Record) -> None:
        self.results[rec.seq - self.base] = rec.res
        self.left -= 1
        if self.left == 0:
            if threading.get_ident() == self.tid:
                _resolve(self.done)
            else:
                self.loop.call_soon_threadsafe(_resolve, self.done)

    def pending(self) -> list[str]:
        """The names of the batch's tasks that have not ended (a record whose result is
        on its way to the loop has ended)."""
        return [r.spec.name for r in self.results if type(r) is Record and r.res is None]


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class SupervisorState(enum.Enum):
    """``created → running → closing → closed``; each misuse raises ``ClosedError``."""

    CREATED = "created"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


# read on every task's path, as constants (see _planner's: on Python 3.11 reading an enum
# member off its class costs ~75 ns, a global ~7; the others come from their modules)
_SUP_RUNNING: Final = SupervisorState.RUNNING
_SUP_CLOSING: Final = SupervisorState.CLOSING

# work queued to the loop by other threads: tell listeners, run instructions, call hooks
_NOTIFY, _EXECUTE, _CALL, _DEFERRED, _PUMP = object(), object(), object(), object(), object()


class Window:
    """An aloop's dispatch window (see ``Engine._carry_out``): how many jobs it was handed
    (written by the loop's thread only; the aloop counts the ones it took, in its
    ``started_jobs``), the Dispatches held back while ``ALOOP_WINDOW`` of them wait for
    their start, and how many of those held have not ended (``live``)."""

    __slots__ = ("aloop", "handed", "held", "live")

    def __init__(self, aloop: Aloop) -> None:
        self.aloop = aloop
        self.handed = aloop.started_jobs
        self.held: deque[Dispatch] = deque()
        self.live = 0


class EngineLock:
    """The engine lock (an ``RLock``) and what runs when its outermost holder leaves.

    Entered on the loop's thread it first runs what other threads queued for the loop
    (``_NOTIFY``/``_EXECUTE``), in order, so the planner never gets a new event
    from the loop while instructions it gave earlier are still waiting to be carried out.
    Entered on any thread, at any depth, it then hands the planner the submits other
    threads queued without it (``Engine._take_in``): whoever holds the lock sees every
    task a returned ``TaskHandle`` names (``cancel``, ``task_state``, ``story`` ...).
    ``after`` holds user callbacks (wait alarms, done callbacks): the outermost exit on the
    loop's thread releases the lock first and then calls them, so user code never runs
    while an instruction list is half done, and may call the supervisor again. Pool
    threads use ``try_acquire`` and never wait for the lock; threads of the user wait.
    """

    __slots__ = ("_lock", "_sup", "after", "depth")

    def __init__(self, sup: Engine) -> None:
        self._lock = threading.RLock()
        self._sup = sup
        self.depth = 0  # nesting of the holder (read and written only by the holder)
        self.after: list[tuple[Callable[..., object], tuple[Any, ...]]] = []

    def __enter__(self) -> None:
        self._lock.acquire()
        self.depth += 1
        sup = self._sup
        catch_up = self.depth == 1 and sup._deferred and threading.get_ident() == sup._tid
        if catch_up or sup._incoming or sup._intake_woken:
            try:
                if catch_up:
                    sup._catch_up()
                # (at any depth: a main function may look up a task a thread just queued)
                if sup._incoming or sup._intake_woken:
                    sup._take_in()
            except BaseException:
                self.depth -= 1
                self._lock.release()
                raise

    def __exit__(self, *_: object) -> None:
        self.depth -= 1
        if self.depth == 0 and self.after and threading.get_ident() == self._sup._tid:
            calls, self.after = self.after, []
            self._lock.release()
            for fn, args in calls:
                try:
                    fn(*args)
                except Exception:
                    logger.exception("a callback %r raised; ignored", fn)
            return
        self._lock.release()

    def try_acquire(self) -> bool:
        if self._lock.acquire(blocking=False):
            self.depth += 1
            return True
        return False

    def release(self) -> None:
        self.depth -= 1
        self._lock.release()


class Engine:
    """The supervisor's core: its task records, the planner, and the one queue through
    which the planner's instructions are carried out (see the module docstring).
    :class:`~taskvisor.Supervisor` is the public API on top of it."""

    def __init__(self, cfg: Config) -> None:
        self.state = SupervisorState.CREATED
        self._planner = cfg.planner
        self._on_alarm = cfg.on_alarm
        self._gates = Gates(cfg.limits, cfg.sampler, cfg.sample_interval)
        self._gates_on = self._gates.on
        self._shared = cfg.shared
        self._instruments = cfg.instruments
        # instrument calls due after the engine lock is released (loop thread): one list
        # run by one `after` entry, a (hook, arg) pair each (see _instrument)
        self._hooks: list[tuple[str, Any]] = []
        self._clock: Clock = cfg.clock if cfg.clock is not None else SystemClock()
        # an executor's own measure of a job (job.ran) is in real seconds: it is taken
        # on the real clock only (a mock clock's run times stay mock time)
        self._real_clock = type(self._clock) is SystemClock
        # read on every event (the real clock's is time.monotonic itself: no frame of ours)
        self._now: Callable[[], float] = time.monotonic if self._real_clock else self._clock.now
        # ... and its readings become wall time by one addition (SystemClock.to_wall)
        self._wall0 = self._clock.to_wall(0.0) if self._real_clock else None
        self._results: deque[TaskRes[Any]] = deque(maxlen=cfg.result_buffer)
        # threads blocked in TaskHandle.result(), by record: whoever pops an entry (after
        # the task's res is set) sets its Event (see TaskHandle.result)
        self._result_waiters: dict[Record, threading.Event] = {}
        # the future of each awaited handle whose task has not ended (``await handle``
        # makes it, under the engine lock; the loop pops and resolves it at delivery)
        self._futures: dict[Record, asyncio.Future[TaskRes[Any]]] = {}
        # the task records by name: the planner's own map (it keeps the supervisor's
        # records, and forgets them itself: one map per supervisor, not two)
        self._recs = cast("Mapping[str, Record]", self._planner.tasks)
        # names whose TaskHandle died (TaskHandle.__del__, any thread, no lock: a deque's
        # append is atomic); the planner hears of them in batches of UNPIN_BATCH (a planner
        # call per dropped handle cost ~2 µs per submit), and at once before a lookup by
        # name or a submit that would otherwise be refused as a duplicate. With
        # result_buffer=None nothing is forgotten, so nothing is pinned either.
        self._pinning = cfg.result_buffer is not None
        self._handles_gone: deque[str] = deque()
        self._abandoned: dict[Job, Record] = {}  # attempts still running after their end
        self._running: dict[str, int] = {}  # running attempts per target (slots in use)
        # the engine lock: the planner and the task records change only under it, on the
        # loop's thread or on a pool thread that handles its own completion (see _sink)
        self._engine = EngineLock(self)
        # what pool threads handling their own completions left for the loop, in order
        self._deferred: deque[tuple[object, Any]] = deque()
        # single submits from other threads, queued without any lock (see _queue_in) for
        # whoever next takes the engine lock to hand to the planner (_take_in); a wake-up
        # of the loop is pending while _intake_woken is set
        self._incoming: deque[Record] = deque()
        self._intake_woken = False
        # names between a submit and the planner: each maps to its owner (a queued record,
        # or the token of a locked submit), set and deleted by that owner only
        self._reserved: dict[str, object] = {}
        self._pending_exec = 0  # instruction lists among them (results are harmless)
        # the instructions to carry out, in the planner's order; one drain at a time
        self._todo: deque[Instruction] = deque()
        self._draining = False
        # the loop is taking a burst of completions in: admit once, after it (see _drain)
        self._burst = False
        # admission of single submits on the loop runs once per turn (tier order holds
        # among back-to-back submits)
        self._admit_soon = False
        # recent events of every task, for story(): time, task, kind, detail, flat (four
        # items per event: no tracked object per event for the cyclic GC to count, see
        # story()); the newest event's id is _events
        self._story: deque[Any] = deque(maxlen=4 * STORY_EVENTS)
        self._events = 0
        self._windows: dict[str, Window] = {}  # per aloop target (see _carry_out)
        # set at start
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tid = 0
        self._inbox: Inbox | None = None
        self._thread_pool: ThreadPool | None = None
        self._executors: dict[str, Executor] = {}
        self._inline = False  # may pool threads handle their completions?
        self._inline_targets: frozenset[str] = frozenset()
        self._timer: TimerHandle | None = None
        self._timer_at = math.inf
        self._quiet: asyncio.Event | None = None
        self._lock_releasing: set[str] = set()  # background workers' runs (see _finish)

    def _admit_later(self) -> None:
        """Run admission once the current turn of the loop is over (loop thread)."""
        if not self._admit_soon:
            self._admit_soon = True
            self._loop_or_raise().call_soon(self._admit_turn)

    def _admit_turn(self) -> None:
        with self._engine:
            self._admit_soon = False
            if self.state is not SupervisorState.CLOSED:
                self._execute(self._planner.admit(now=self._now()))

    def _event(self, name: str, kind: str, detail: str) -> None:
        """Record an event of a task for story() (engine held)."""
        self._events += 1
        self._story.extend((self._now(), name, kind, detail))

    def _loop_or_raise(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise ClosedError(self.state.value, "use the supervisor")
        return self._loop

    def _check_running(self, action: str) -> None:
        if self.state is not _SUP_RUNNING:
            raise ClosedError(self.state.value, action)

    def _sink(self, job: Job, result: Result) -> None:
        """Executors report here, from any thread.

        A pool thread whose job succeeded while no other pool thread is busy handles the
        completion itself, under the engine lock (if nobody holds it): the planner's answer
        is usually "run the next thread task", which it starts right there, so a chain of
        thread tasks flows without a round trip through the loop per link. Everything that
        belongs to the loop (futures, listeners, timers, warnings, other executors) is
        queued to it: see ``_execute`` and ``_deliver``. Anything else goes through the
        inbox, and so does a burst: while several pool threads are busy, the loop taking
        their completions in batches is cheaper than each thread taking the lock.
        """
        inbox = self._inbox
        assert inbox is not None
        if threading.get_ident() == self._tid:
            inbox.put_local((job, result))
            return
        if (
            self._inline
            and result[0] is _OK
            and job.target in self._inline_targets
            and not job.watch
            and self._pool_busy() == 1
            and self._engine.try_acquire()
        ):
            try:
                # (with instructions queued for the loop, the planner waits for the loop)
                if self.state is _SUP_RUNNING and not self._pending_exec:
                    try:
                        self._on_done(job, result)
                    except Exception as exc:  # a taskvisor bug: the task fails loudly
                        self._internal_error(job.name, exc, job=job, rec=job.record)
                    return
            finally:
                self._engine.release()
        inbox.put((job, result))

    def _pool_busy(self) -> int:
        pool = self._thread_pool
        return 0 if pool is None else pool.busy

    def _drain(self, batch: list[tuple[Any, Any]]) -> None:
        """The completions of one burst, in one engine entry: the planner finishes each
        and admits once, at the end, with every slot the burst freed (``_burst``: one
        admission pass and one round of instructions instead of one per task)."""
        with self._engine:
            if self._gates_on:
                self._sample(self._now())
            self._burst = len(batch) > 1
            try:
                for what, arg in batch:
                    if what is _DEFERRED:  # a wake-up for the deferred work: done on entry
                        continue
                    if what is _PUMP:  # an aloop started jobs: hand it what was held
                        self._pump_now(arg)
                        continue
                    try:
                        self._on_done(what, arg)
                    except Exception as exc:  # a taskvisor bug: fail the task loudly, go on
                        self._internal_error(what.name, exc, job=what, rec=what.record)
            finally:
                if self._burst:
                    self._burst = False
                    self._execute(self._planner.admit_queued(now=self._now()))
            self._check_quiet()

    def _internal_error(
        self, name: str, exc: Exception, job: Job | None = None, rec: Record | None = None
    ) -> None:
        """A bug in taskvisor while handling one task's event: log it at CRITICAL and end
        that task FAILED with the exception, so it never waits for ever without a TaskRes.
        (Engine held.)"""
        logger.critical("internal error handling task %r", name, exc_info=exc)
        if rec is None:
            rec = self._recs.get(name)
        if rec is None or rec.res is not None or (job is not None and rec.job is not job):
            return
        try:
            info = ExceptionInfo.from_exc(exc)
            if self._recs.get(name) is rec and self._planner.state(name) is State.RUNNING:
                if rec.job is None:  # (a dispatch that broke before its attempt began)
                    rec.job = Job(name, rec.spec.fn, (), {}, None, rec.target)
                    rec.job.record = rec
                self._finish(rec, State.FAILED, None, None, info, None)
            else:
                self._deliver(rec, State.FAILED, None, {}, info, None, self._now())
        except Exception:
            logger.critical("could not end task %r after an internal error", name, exc_info=True)

    def _queue_in(self, spec: Any, target: str) -> Record | None:
        """A single submit from a thread other than the loop's, without any lock: queue it
        for the planner and return its record, or ``None`` when it must take the locked
        path (``Supervisor._submit``) instead, which raises as it always did.

        Only a spec the planner cannot refuse qualifies: no dependency (a task that needs
        nothing closes no cycle and names no unknown output) and only plain items (no
        ``__eq__`` of the user's to raise, see ``_plain_items``), with a name nobody holds.
        A lock, even one held for a microsecond, made the eight submitting threads of W7
        convoy on it under the GIL (a thread switched out while holding it stalls the
        others): every step here is one operation the GIL makes atomic, in an order that
        makes it safe.

        * The name: reserved with ``dict.setdefault`` (of two threads, one wins), then
          looked up in the planner (read without the engine lock: one dict lookup). Every
          name reaches the planner reserved (``_reserve`` for the locked path), so a name
          not reserved by someone else and unknown to the planner is free; anything else
          (a duplicate, a name an ended task may hand on) goes the locked way.
        * Closing: the record is appended, *then* the state read again (``aclose`` writes
          the state, then takes the queue in, under the engine lock; after that, nothing
          takes it in: ``_take_in``). Still running: the close's take-in will see it. Not
          running: withdraw it (``deque.remove``); if it is gone, the close took it in.
        * Backpressure: with ``INTAKE_LIMIT`` submits queued, the next one takes the
          locked path, and so takes the queue in itself: threads that submit faster than
          the loop admits do the admitting (as every submit did before) instead of
          growing the queue without bound.
        * The wake-up, as ``Inbox``: after the append, the first submit to find no
          wake-up pending sets the flag and wakes the loop; ``_take_in`` clears the flag
          before it empties the queue. A record is thus either seen by a take-in already
          on its way, or wakes the loop itself: none is stranded.
        """
        if self.state is not _SUP_RUNNING or len(self._incoming) >= INTAKE_LIMIT:
            return None  # (a full queue: this thread takes the lock and the queue in itself)
        name = spec.name
        rec = Record(spec, target, self._now())
        reserved = self._reserved
        if reserved.setdefault(name, rec) is not rec:
            return None
        if name in self._planner:
            del reserved[name]
            return None
        incoming = self._incoming
        incoming.append(rec)
        if self.state is not _SUP_RUNNING:
            try:
                incoming.remove(rec)
            except ValueError:  # the close took it in: accepted
                return rec
            del reserved[name]
            return None
        if not self._intake_woken:
            self._intake_woken = True
            assert self._inbox is not None
            self._inbox.put((_DEFERRED, None))
        return rec

    def _reserve(self, names: list[str]) -> object:
        """Reserve the names of a locked submit (engine held) against the threads that
        queue without the lock: a name one of them holds raises ``DuplicateTaskError``
        (the engine lock's holder took the queue in on entry: it is queued since, and
        taken). Returns the token to ``_unreserve`` with."""
        token, reserved = object(), self._reserved
        for i, name in enumerate(names):
            owner = reserved.setdefault(name, token)
            if owner is not token:
                self._unreserve(names[:i], token)
                raise DuplicateTaskError(name)
        return token

    def _unreserve(self, names: list[str], token: object) -> None:
        reserved = self._reserved
        for name in names:
            if reserved.get(name) is token:  # (a name twice in the batch: once)
                del reserved[name]

    def _take_in(self, closing: bool = False) -> None:
        """Hand the queued submits to the planner, as one batch admitted at once (engine
        held; any thread). Once the supervisor has stopped running only ``closing`` (the
        close itself) takes them in: any queued later is withdrawn by its submitter."""
        self._intake_woken = False  # (before the queue is read: see _queue_in)
        if self.state is not SupervisorState.RUNNING and not closing:
            return
        incoming, recs = self._incoming, []
        while True:  # (one atomic popleft each: another thread may append meanwhile)
            try:
                recs.append(incoming.popleft())
            except IndexError:
                break
        if not recs:
            return
        specs = [r.spec for r in recs]
        reserved = self._reserved
        try:
            instrs = self._planner.submit(
                specs, admit=True, pinned=self._pinning, now=self._now(), records=recs
            )
        except Exception as exc:  # (cannot happen: see _queue_in) each task fails loudly
            for rec in recs:
                del reserved[rec.spec.name]
                self._internal_error(rec.spec.name, exc, rec=rec)
            return
        tell = self._story.extend
        for rec in recs:
            name = rec.spec.name
            del reserved[name]  # (the planner has it now)
            tell((rec.submitted, name, "submitted", rec.target))
        self._events += len(recs)
        if self._instruments:
            for rec in recs:
                self._instrument("task_submitted", self._info(rec, 0, None))
        self._execute(instrs)

    def _to_loop(self, what: object, arg: Any) -> None:
        """Queue work for the loop's thread (from another thread, engine held); the loop
        runs it before anything else it does under the engine lock."""
        assert self._inbox is not None
        if what is _EXECUTE:
            self._pending_exec += 1
        self._deferred.append((what, arg))
        self._inbox.put((_DEFERRED, None))

    def _catch_up(self) -> None:
        """Run what other threads queued for the loop, in order (loop thread, engine held)."""
        deferred = self._deferred
        while deferred:
            what, arg = deferred.popleft()
            try:
                if what is _NOTIFY:
                    self._notify(*arg)
                elif what is _CALL:
                    self._engine.after.append(arg)
                else:  # instructions (see _execute)
                    self._pending_exec -= 1
                    self._todo.extend(arg)
                    self._run_todo()
            except Exception:  # a taskvisor bug: report it, and go on
                logger.critical("internal error running deferred work", exc_info=True)

    def _execute(self, instrs: list[Instruction]) -> None:
        """Carry out the planner's instructions, in the order the planner gave them.

        Never re-entered: when carrying out an instruction makes a new planner event (a
        projection that raises at dispatch finishes its task; a ``runs_on="main"``
        function cancels a sibling; closing abandons a thread), that event's instructions
        join the queue behind the ones still waiting, as in distributed's
        ``handle_stimulus``. (Running them at once would act on a later planner state
        before an earlier one is carried out: a Cancel before its Dispatch is a lost
        cancel.) Off the loop's thread, only thread dispatches are carried out here;
        from the first other instruction on, the rest goes to the loop, in order.

        An instruction about a task carries its record (``ins.task``): by the time it is
        carried out, the planner may have forgotten that task and a submit reused its
        name, and the instruction is about the old one.
        """
        self._todo.extend(instrs)
        if self._draining:  # (an instruction being carried out made this event)
            return
        self._run_todo()

    def _run_todo(self) -> None:
        if self._draining:
            return
        self._draining = True
        try:
            self._carry_out()
        finally:
            self._draining = False
        if len(self._handles_gone) >= UNPIN_BATCH and self.state is _SUP_RUNNING:
            self._unpin()
        if self.state is _SUP_CLOSING and threading.get_ident() == self._tid:
            self._check_quiet()  # (an asyncio.Event: the loop's thread only)

    def _handle_gone(self, rec: Record) -> None:
        """``TaskHandle.__del__``: any thread, perhaps under the engine lock already."""
        if self._pinning and self.state is _SUP_RUNNING:
            self._handles_gone.append(rec.spec.name)

    def _unpin(self) -> bool:
        """Tell the planner which handles died (engine held): an ended task nobody holds a
        handle to may be forgotten, and its name reused. False if none had."""
        if not self._handles_gone or self.state is not SupervisorState.RUNNING:
            return False
        gone = self._handles_gone
        names = [gone.popleft() for _ in range(len(gone))]
        # a handle dies after its submit returned: a task still queued (see _queue_in)
        # is taken in first, or the planner would not know the name it unpins
        self._take_in()
        self._execute(self._planner.unpin(names, now=self._now()))
        return True

    def _carry_out(self) -> None:
        todo = self._todo
        on_loop = threading.get_ident() == self._tid
        due: set[str] = set()  # the aloops this carry-out held Dispatches for
        try:
            while todo or due:
                if not todo:  # (the aloops may have started some since: re-read their counts)
                    for target in due:
                        self._pump(target)
                    due.clear()
                    continue
                ins = todo[0]
                if not on_loop and (
                    type(ins) is not Dispatch or ins.task.target not in self._inline_targets
                ):
                    self._to_loop(_EXECUTE, list(todo))  # the loop's to do, in order
                    todo.clear()
                    return
                todo.popleft()
                if type(ins) is Dispatch and self._windows:
                    target = ins.task.target
                    window = self._windows.get(target)
                    if window is not None:
                        if ins.task.res is not None:  # (ended: cancelled while held, say)
                            continue
                        if window.held or self._room(target) <= 0:
                            window.held.append(ins)
                            window.live += 1
                            due.add(target)
                            continue
                try:
                    if type(ins) is Dispatch:
                        self._dispatch(ins.task, ins.parent_tasks)
                    elif type(ins) is Settle:
                        self._settle(ins.task, ins.state, ins.error)
                    elif type(ins) is Cancel:
                        self._cancel_running(ins.task, ins.reason)
                    elif type(ins) is Warn:
                        warn(ins.message)
                    elif type(ins) is WakeAt:
                        self._wake_at(ins.when)
                    elif type(ins) is Alarm:
                        self._engine.after.append((self._alarm, (ins,)))
                    # (no Forget: the planner forgets the records itself, see __init__)
                except Exception as exc:  # a taskvisor bug: the task fails loudly, the rest goes on
                    if type(ins) is Dispatch or type(ins) is Settle or type(ins) is Cancel:
                        self._internal_error(ins.name, exc, rec=ins.task)
                    else:
                        logger.critical("internal error carrying out %r", ins, exc_info=exc)
        finally:  # (an exception escaped: each hold still gets its re-check, see
            for target in due:  # _aloop_started; on a normal exit nothing is due)
                self._pump(target)

    def _dispatch(self, rec: Record, parents: tuple[Record, ...]) -> None:
        spec = rec.spec
        now = self._now()
        shared = dict(self._shared) if self._shared else {}
        # the parents' values by name (output references name parents, and a parent's
        # value is its TaskRes's ret) and their ``shared``, in one pass
        values: dict[str, Any] = {}
        for prec in parents:
            pres = prec.res
            if pres is not None:
                if pres.shared:
                    shared.update(pres.shared)
                values[prec.name] = pres.ret
        args, kwargs = spec.args, spec.kwargs
        if spec.refs:
            if not spec.refs <= values.keys():  # (a planner bug: fails the task loudly)
                raise RuntimeError(
                    f"task {spec.name!r}: no result of {set(spec.refs - values.keys())}"
                )
            try:
                args, kwargs = substitute_call(args, kwargs, values)
            except BaseException as exc:  # a projection is user code: it fails the task
                rec.started = now
                self._finish(rec, State.FAILED, None, shared, ExceptionInfo.from_exc(exc), None)
                return
        rec.started = now
        self._running[rec.target] = self._running.get(rec.target, 0) + 1
        # (after projections, user code that may take a while: their time is not run time)
        self._launch(rec, args, kwargs, shared, self._now() if spec.refs else now)

    def _launch(
        self,
        rec: Record,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        shared: dict[str, Any],
        now: float,
    ) -> None:
        """Start one attempt of the call ``args``/``kwargs`` (references substituted), which
        received ``shared``. Each attempt is a new Job with its own copy of ``shared``: a
        failed attempt's writes must not reach a retry, nor its late reports the next one.
        A retry takes the call and ``shared_in`` of the attempt before it."""
        spec = rec.spec
        job = Job(
            spec.name,
            spec.fn,
            args,
            kwargs,
            dict(shared) if spec._opts.wants_shared else None,
            rec.target,
            spec,
        )
        job.record = rec
        job.shared_in = shared
        target = rec.target
        ex = self._executors[target]
        arm = rec.begin(job, ex.reports_start)
        job.started = now
        self._events += 1
        self._story.extend((now, spec.name, "dispatched", target))
        if self._instruments:
            self._instrument("task_started", self._info(rec, rec.attempts, None))
        if arm:
            self._arm_timeout(rec, job)
        try:
            ex.submit(job)
        except Exception as exc:
            self._sink(job, (Outcome.ERROR, None, job.shared, ExceptionInfo.from_exc(exc), None))
            return
        window = self._windows.get(target)
        if window is not None:  # (the loop's thread: the only writer)
            window.handed += 1

    def _arm_timeout(self, rec: Record, job: Job, began: float | None = None) -> None:
        """The attempt's deadline: ``timeout`` after it began (when a worker reported it
        began, or now)."""
        assert rec.spec.timeout is not None
        if job.timer is not None:
            job.timer.cancel()
        job.timer = self._clock.call_at(
            self._loop_or_raise(),
            (self._now() if began is None else began) + rec.spec.timeout,
            lambda: self._on_timeout(rec, job),
        )

    def _on_timeout(self, rec: Record, job: Job) -> None:
        with self._engine:
            self._timed_out(rec, job)

    def _timed_out(self, rec: Record, job: Job) -> None:
        if rec.timed_out(job) is not None:
            job.timer = None
            self._event(job.name, "timed out", f"attempt {job.attempt}")
            self._cancel_job(rec, job)

    def _cancel_running(self, rec: Record, reason: str) -> None:
        job = rec.stop(reason)
        if job is not None:
            self._event(rec.spec.name, "cancelling", reason)
            self._cancel_job(rec, job)
        elif rec.job is None and rec.res is None and rec.target in self._windows:
            # held back for its aloop (see _carry_out): it never left, it ends here, as a
            # thread job withdrawn from the pool's queue (no attempt); _pump skips it
            self._windows[rec.target].live -= 1
            self._event(rec.spec.name, "cancelling", reason)
            err = TaskCancelled(rec.spec.name, reason)
            self._finish(rec, State.CANCELLED, None, None, ExceptionInfo.from_exc(err), None)

    def _room(self, target: str) -> int:
        """How many more jobs the aloop may be handed now: its window's room (all of them
        once it stopped: handing one over then fails it at once, ``ClosedError``, rather
        than holding it for ever)."""
        window = self._windows[target]
        if window.aloop.state is not _ALOOP_RUNNING:
            return len(window.held) + 1
        return ALOOP_WINDOW - (window.handed - window.aloop.started_jobs)

    def _handing_over(self) -> bool:
        """Has an aloop been handed jobs it has not started, or are some held for it? (A
        MockClock's autojump: the supervisor is not idle, see taskvisor.testing.)"""
        return any(w.live or w.handed > w.aloop.started_jobs for w in self._windows.values())

    def _aloop_started(self, target: str) -> None:
        """An aloop took jobs from its inbox (its thread, after counting them): wake the
        loop to hand it more, if any are held. (The loop appends to ``held``, then reads
        the count; the aloop writes the count, then reads ``held``: of two such threads,
        one sees the other's step, so a held Dispatch never waits with nobody to pump it.)
        """
        if self._windows[target].held:
            self._now()  # (a MockClock: a burst being handed over is not idle)
            inbox = self._inbox
            if inbox is not None:
                inbox.put((_PUMP, target))

    def _pump(self, target: str) -> None:
        """Hand an aloop its held Dispatches, in order, while its window has room (while
        carrying out instructions: see _carry_out). Never re-entered (``_draining`` is set:
        what a dispatch makes joins the queue), which the batch below relies on."""
        window = self._windows[target]
        held = window.held
        while held:
            room = self._room(target)  # (then again: the aloop may have started more)
            if room <= 0:
                return
            for _ in range(min(room, len(held))):
                ins = held.popleft()
                if ins.task.res is not None:  # cancelled while held
                    continue
                window.live -= 1
                try:
                    self._dispatch(ins.task, ins.parent_tasks)
                except Exception as exc:  # a taskvisor bug: the task fails loudly
                    self._internal_error(ins.name, exc, rec=ins.task)

    def _pump_now(self, target: str) -> None:
        """``_pump`` outside ``_carry_out`` (engine held, the loop's thread): what carrying
        out a Dispatch makes (a finish, say) joins the queue, run after it."""
        if self._draining:
            self._pump(target)
            return
        self._draining = True
        try:
            self._pump(target)
        finally:
            self._draining = False
        if self._todo:
            self._run_todo()

    def _cancel_job(self, rec: Record, job: Job) -> None:
        """Stop a running attempt (``job.cancelled`` says why), as its executor can: a job
        no worker took is withdrawn, a coroutine cancelled on its loop, a process worker
        killed; what cannot be stopped is abandoned (see the attempt machine)."""
        ex = self._executors[rec.target]
        if rec.stopped(job, ex.cancel(job)) is Act.ABANDONED:
            self._abandon(rec, job, ex.label)

    def _abandon(self, rec: Record, job: Job, what: str) -> None:
        """End a task whose attempt cannot be interrupted; its slot stays busy until the
        attempt really returns (then ``_on_done`` releases it)."""
        spec = rec.spec
        self._abandoned[job] = rec
        err: BaseException
        if job.cancelled == TIMEOUT:
            assert spec.timeout is not None
            err = TaskTimeout(spec.name, spec.timeout, abandoned=True)
            state = State.FAILED
        else:
            reason = f"{job.cancelled}; its {what} was abandoned and still runs"
            err = TaskCancelled(spec.name, reason)
            state = State.CANCELLED
        warn(
            f"task {spec.name!r}: its {what} could not be interrupted and still runs; "
            "its slot stays busy until it returns"
        )
        self._event(spec.name, "abandoned", what)
        rec.run_time += self._now() - job.started
        self._finish(rec, state, None, None, ExceptionInfo.from_exc(err), None, keep_slot=True)

    def _on_done(self, job: Job, result: Result) -> None:
        """An executor's report about ``job``: the attempt machine decides (engine held)."""
        outcome, ret, shared, excinfo, worker = result
        rec: Record | None = job.record  # (its own task's, whatever its name names now)
        if outcome is _STARTED:
            if rec is not None and rec.began(job):
                self._event(job.name, "started", worker or "")
                self._arm_timeout(rec, job, job.began)
            return
        abandoned = self._abandoned.pop(job, None) if self._abandoned else None
        if rec is None:  # (a job the engine did not make: nothing to report to)
            return
        exc = None if excinfo is None else excinfo.val
        # a controlled failure, or a call that cannot even be sent (SpecError), is final
        act = rec.report(job, outcome, exc is None or not isinstance(exc, _FINAL_ERRORS))
        if act is _NOTHING:
            return
        if act is _RELEASE:  # an abandoned attempt really returned: its slot is free now
            if abandoned is not None:
                self._running[rec.target] -= 1
                self._event(rec.spec.name, "abandoned attempt returned", outcome.value)
                logger.info("abandoned task %r returned (%s)", rec.spec.name, outcome.value)
                self._execute(self._planner.release(rec.spec.name, now=self._now()))
            return
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
        now = self._now()
        if job.ran is None or not self._real_clock:
            rec.run_time += now - job.started
        else:  # measured in the worker: it really began then, not at the dispatch
            rec.run_time += job.ran
            if job.attempt == 1 and rec.started is not None:
                rec.started = max(rec.started, now - job.ran)
        spec = rec.spec
        if self._instruments and isinstance(exc, WorkerCrashed):
            self._instrument("worker_crashed", self._info(rec, job.attempt, worker))
        err: BaseException
        if act is _ACT_DONE:
            self._finish(rec, _DONE, ret, shared, None, worker, now=now)
        elif act is Act.RETRY:
            if job.cancelled == TIMEOUT:
                logger.warning("%r timed out on attempt %d, retrying", spec.name, rec.attempts)
                self._event(spec.name, "retrying", f"attempt {rec.attempts} timed out")
            else:
                logger.warning(
                    "%r failed on attempt %d, retrying: %r", spec.name, rec.attempts, exc
                )
                self._event(spec.name, "retrying", f"attempt {rec.attempts} failed: {exc!r}")
            self._launch(rec, job.args, job.kwargs, job.shared_in or {}, now)
        elif act is Act.TIMED_OUT:
            assert spec.timeout is not None
            err = TaskTimeout(spec.name, spec.timeout)
            self._finish(rec, State.FAILED, None, shared, ExceptionInfo.from_exc(err), worker)
        elif act is Act.CANCELLED:
            err = TaskCancelled(
                spec.name, job.cancelled or "its coroutine was cancelled from inside"
            )
            self._finish(rec, State.CANCELLED, None, shared, ExceptionInfo.from_exc(err), worker)
        else:
            assert act is Act.FAILED and excinfo is not None, act
            self._finish(rec, State.FAILED, None, shared, excinfo, worker)

    def _finish(
        self,
        rec: Record,
        state: State,
        ret: Any,
        shared: dict[str, Any] | None,
        excinfo: ExceptionInfo | None,
        worker: str | None,
        *,
        keep_slot: bool = False,
        now: float | None = None,
    ) -> None:
        """``now``: the clock's reading, when the caller has just taken it."""
        spec = rec.spec
        job = rec.job
        if job is not None:
            if job.timer is not None:
                job.timer.cancel()
                job.timer = None
            if not keep_slot:
                self._running[rec.target] -= 1
        deps_ok = locks_ok = False
        if excinfo is not None and isinstance(excinfo.val, TaskFailError):
            deps_ok, locks_ok = excinfo.val.deps_ok, excinfo.val.locks_ok
        elif excinfo is not None and isinstance(excinfo.val, SpecError):
            locks_ok = True  # its call could not be made: it never touched the resources
        if self._lock_releasing:  # a background worker's run: its next run needs the locks
            locks_ok = locks_ok or spec.name in self._lock_releasing
            self._lock_releasing.discard(spec.name)
        if spec._opts.wants_shared and shared is not None:
            out_shared = shared
        elif job is not None and job.shared_in is not None:
            out_shared = job.shared_in  # what it received
        else:  # (never launched: what it received, if anything)
            out_shared = shared if shared is not None else {}
        if now is None:
            now = self._now()
        self._deliver(rec, state, ret, out_shared, excinfo, worker, now)
        burst = self._burst  # (admission comes once, after the burst: see _drain)
        instrs = self._planner.finish(
            spec.name,
            state,
            deps_ok=deps_ok,
            locks_ok=locks_ok,
            keep_slot=keep_slot,
            now=now,
            admit=not burst,
            record=rec,
        )
        if instrs or not burst:
            self._execute(instrs)

    def _settle(self, rec: Record, state: State, error: NotRunError) -> None:
        self._deliver(
            rec,
            state,
            None,
            {},  # (it never ran: it received nothing)
            ExceptionInfo(type(error), error, None),
            None,
            self._now(),
        )

    def _deliver(
        self,
        rec: Record,
        state: State,
        ret: Any,
        shared: dict[str, Any],
        excinfo: ExceptionInfo | None,
        worker: str | None,
        now: float,
    ) -> None:
        spec = rec.spec
        started, wall0 = rec.started, self._wall0
        if wall0 is not None:  # (the real clock: additions, not three calls per task)
            sub_ts, fin_ts = rec.submitted + wall0, now + wall0
            start_ts = None if started is None else started + wall0
        else:
            wall = self._clock.to_wall
            sub_ts, fin_ts = wall(rec.submitted), wall(now)
            start_ts = None if started is None else wall(started)
        # positional, in TaskRes's field order (a test keeps it so): the named tuple's
        # keyword __new__ cost 0.8 µs of every task, tuple.__new__ 0.13
        res: TaskRes[Any] = _new_tuple(
            TaskRes,
            (
                spec,
                shared,
                ret,
                excinfo,
                spec.name,
                state,
                state is _DONE,
                sub_ts,
                start_ts,
                fin_ts,  # (datetimes only when read: TaskRes.submitted_at ...)
                (now if started is None else started) - rec.submitted,
                rec.run_time,
                rec.attempts,
                rec.target,
                worker,
            ),
        )
        rec.res = res
        rec.job = None
        if self._result_waiters:  # (after rec.res is set: see TaskHandle.result)
            waiter = self._result_waiters.pop(rec, None)
            if waiter is not None:
                waiter.set()
        self._results.append(res)
        self._events += 1
        self._story.extend((now, spec.name, "ended", state))  # (State: named when read)
        if threading.get_ident() == self._tid:
            self._notify(rec, res)
        elif not self._instruments and rec not in self._futures and _any_thread(rec.listeners):
            # nothing here needs the loop (no future, no instrument; a gather's countdown
            # wakes it once, for the batch's last task): a chain of thread tasks flows on
            # without a loop wake-up per link
            listeners, rec.listeners = rec.listeners, None
            if listeners is not None:
                cast(Countdown, listeners)(rec)
            log_result(res)
        else:  # futures and listeners live on the loop
            self._to_loop(_NOTIFY, (rec, res))

    def _notify(self, rec: Record, res: TaskRes[Any]) -> None:
        """Tell whoever waits for a task's result (on the loop's thread)."""
        if self._instruments:
            self._instrument("task_finished", res)
        if self._futures:
            fut = self._futures.pop(rec, None)
            if fut is not None and not fut.done():
                fut.set_result(res)
        listeners, rec.listeners = rec.listeners, None
        if listeners is not None:
            if isinstance(listeners, list):
                for cb in listeners:
                    cb(rec)
            else:
                listeners(rec)
        log_result(res)

    def _info(self, rec: Record, attempt: int, worker: str | None) -> TaskInfo:
        spec = rec.spec
        return TaskInfo(spec.name, spec, rec.target, attempt, worker, self._now())

    def _instrument(self, hook: str, arg: Any) -> None:
        """Call ``hook(arg)`` on every instrument that has it, outside the critical
        section: after the engine lock is released, on the loop's thread (engine held)."""
        if threading.get_ident() == self._tid:
            # (a burst queues a hook per task and event: a pair each, not three tuples,
            # which the cyclic GC walks until they run)
            if not self._hooks:
                self._engine.after.append((self._run_hooks, ()))
            self._hooks.append((hook, arg))
        else:
            call = (self._call_hook, (hook, (arg,)))
            assert self._inbox is not None
            self._deferred.append((_CALL, call))
            self._inbox.put((_DEFERRED, None))

    def _run_hooks(self) -> None:
        """The instrument calls queued on the loop's thread, in order."""
        hooks, self._hooks = self._hooks, []
        for hook, arg in hooks:
            self._call_hook(hook, (arg,))

    def _call_hook(self, hook: str, args: tuple[Any, ...]) -> None:
        """Like trio's instruments: one that raises is logged and removed."""
        for inst in list(self._instruments):
            fn = getattr(inst, hook, None)
            if fn is None:
                continue
            try:
                fn(*args)
            except Exception:
                logger.exception("instrument %r raised in %s; it is removed", inst, hook)
                if inst in self._instruments:
                    self._instruments.remove(inst)

    def _alarm(self, ins: Alarm) -> None:
        cb = self._on_alarm[ins.level]
        if cb is None:
            log = logger.error if ins.level == "critical" else logger.warning
            log("%r has waited %.3g s for admission (wait_%s)", ins.name, ins.waited, ins.level)
            return
        try:
            cb(ins.name, ins.waited)
        except Exception:
            logger.exception("on_wait_%s callback failed for %r", ins.level, ins.name)

    def _sample(self, now: float) -> None:
        """Live gates: sample cpu/memory at most once per ``sample_interval``; while the
        machine is above a limit, admission holds and one timer samples again."""
        gates = self._gates
        closed = gates.read(now)
        if closed is None:
            return
        if closed != self._planner.gate_closed:
            if closed:
                logger.info("admission held: cpu %.0f%%, memory %.0f%%", *gates.last)
            self._execute(self._planner.set_gate(closed))
        if closed and gates.timer is None:
            gates.timer = self._clock.call_at(
                self._loop_or_raise(), now + gates.interval, self._on_sample_timer
            )

    def _on_sample_timer(self) -> None:
        self._gates.timer = None
        with self._engine:
            if self.state in (SupervisorState.RUNNING, SupervisorState.CLOSING):
                self._sample(self._now())

    def _wake_at(self, when: float) -> None:
        if when >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._clock.call_at(self._loop_or_raise(), when, self._on_timer)

    def _on_timer(self) -> None:
        with self._engine:
            self._timer, self._timer_at = None, math.inf
            self._execute(self._planner.tick(self._now()))

    def _idle_except_waiting(self) -> bool:
        by = self._planner.stats.by_state
        return not any(
            by[s] for s in (State.NEW, State.DELAYED, State.LOCKED, State.QUEUED, State.RUNNING)
        )

    def _check_quiet(self) -> None:
        if self.state is _SUP_CLOSING and self._quiet is not None and self._idle_except_waiting():
            self._quiet.set()


def warn(message: str) -> None:
    try:
        warn_user(message)
    except Warning as w:  # warnings turned into errors must not break the supervisor loop
        logger.error("warning raised as an error: %s", w)
