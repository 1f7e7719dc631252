"""The supervisor: runs the planner's instructions on real executors.

How a task flows
----------------
``submit``/``run``/``gather`` validate specs, give them to the planner and execute the
instructions it returns. ``Dispatch`` builds a :class:`Job` (arguments with ``output``
references substituted, the merged ``shared`` dict) and hands it to its executor.
Executors report completions from their own threads into one :class:`Inbox`; the loop
drains a whole burst per wake-up, feeds each completion to the planner and executes what
comes back. Nothing polls: the loop sleeps until an executor, a timer of the ``Clock`` or
a user call has something for it.

The engine lock: the planner and the task records change only under ``_engine``. The
loop takes it at every entry point; a pool thread takes it (without waiting) to finish a
lone successful task itself and start the next thread task at once, so a chain of thread
tasks makes no loop round trip per link. On such a thread ``_execute`` and ``_deliver``
queue everything the loop owns (futures, listeners, timers, warnings, other executors)
to the loop through the inbox. See ``_sink`` and the design page.

Lifecycle: ``created → running → closing → closed``. Leaving ``async with`` waits for the
work (or cancels it, when the block raised), settles what still waits for a dependency
with ``DependencyError``, stops the aloops and pools and joins their threads.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import math
import os
import sys
import threading
import warnings
import weakref
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Hashable,
    Iterable,
    Mapping,
)
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, NamedTuple, TypeVar, cast, overload

import psutil

from ._attempts import TIMEOUT, Act, Attempts
from ._clock import Clock, SystemClock, TimerHandle
from ._errors import (
    ClosedError,
    NotRunError,
    SpecError,
    TaskCancelled,
    TaskFailError,
    TaskTimeout,
    TaskvisorWarning,
    WorkerCrashed,
)
from ._executors import (
    Aloop,
    AloopExecutor,
    Inbox,
    Job,
    MainExecutor,
    Outcome,
    ProcessExecutor,
    Result,
    Sink,
    ThreadExecutor,
    ThreadPool,
    as_executor,
    registered_executors,
)
from ._planner import (
    Alarm,
    Cancel,
    Dispatch,
    Forget,
    Instruction,
    Planner,
    Settle,
    State,
    WakeAt,
    Warn,
)
from ._procpool import ProcessPool
from ._result import ExceptionInfo, RunReport, TaskRes
from ._spec import (
    META_KEYS,
    Task,
    Tier,
    check_item,
    real_number,
    resource_map,
    safe_repr,
    substitute_call,
    whole_number,
)
from .abc import Executor

__all__ = [
    "Statistics",
    "StoryEvent",
    "Supervisor",
    "SupervisorState",
    "TaskHandle",
    "TaskInfo",
    "run",
]

logger = logging.getLogger("taskvisor")
_LIVE: weakref.WeakSet[Supervisor] = weakref.WeakSet()  # started and not closed (leak checks)
T = TypeVar("T")

DEFAULT_THREADS = 40  # anyio's default thread limiter
STORY_EVENTS = 10_000  # how many recent task events story() can look back on
WaitCallback = Callable[[str, float], object]
Sampler = Callable[[], tuple[float, float]]  # () -> (cpu %, memory %)


class SupervisorState(enum.Enum):
    """``created → running → closing → closed``; each misuse raises ``ClosedError``."""

    CREATED = "created"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True)
class Statistics:
    """A snapshot of the supervisor (``sup.statistics()``)."""

    state: SupervisorState
    tasks: Mapping[State, int]  # tasks by state, ended ones included
    queued: Mapping[Tier, int]  # admitted-ready tasks waiting for a slot, per tier
    busy_slots: int
    running: Mapping[str, int]  # running tasks per executor target
    threads: int
    aloops: tuple[str, ...]
    process_pool_started: bool
    paused: bool


class StoryEvent(NamedTuple):
    """One event in a task's life, as ``sup.story(name)`` returns it."""

    id: int  # increasing over every event of the supervisor
    time: float  # the supervisor's clock (monotonic seconds)
    task: str
    kind: str  # "submitted", "dispatched", "started", "retrying", "cancel requested", ...
    detail: str  # the executor, the worker, the reason, the final state ...


class TaskInfo(NamedTuple):
    """What an instrument is told about a task (``task_submitted``, ``task_started``,
    ``worker_crashed``)."""

    name: str
    task: Task[Any]
    runs_on: str  # the resolved target: "thread", "process", "aloop:default", "main", ...
    attempt: int  # 0 when submitted; 1, 2 ... for each attempt
    worker: str | None  # the worker that reported (a crash), when known
    time: float  # the supervisor's clock


_HOOKS = ("task_submitted", "task_started", "task_finished", "worker_crashed", "supervisor_closed")

_NO_KWARGS: dict[str, Any] = {}  # a pending record's placeholder, never passed to a call


Listener = Callable[[TaskRes[Any]], None]
# work queued to the loop by other threads: tell listeners, run instructions, call hooks
_NOTIFY, _EXECUTE, _CALL, _DEFERRED = object(), object(), object(), object()


class _Engine:
    """The engine lock (an ``RLock``) and what runs when its outermost holder leaves.

    Entered on the loop's thread it first runs what other threads queued for the loop
    (``_NOTIFY``/``_EXECUTE``), in order, so the planner never gets a new event
    from the loop while instructions it gave earlier are still waiting to be carried out.
    ``after`` holds user callbacks (wait alarms, done callbacks): the outermost exit on the
    loop's thread releases the lock first and then calls them, so user code never runs
    while an instruction list is half done, and may call the supervisor again. Pool
    threads use ``try_acquire`` and never wait for the lock; threads of the user wait.
    """

    __slots__ = ("_lock", "_sup", "after", "depth")

    def __init__(self, sup: Supervisor) -> None:
        self._lock = threading.RLock()
        self._sup = sup
        self.depth = 0  # nesting of the holder (read and written only by the holder)
        self.after: list[tuple[Callable[..., object], tuple[Any, ...]]] = []

    def __enter__(self) -> None:
        self._lock.acquire()
        self.depth += 1
        sup = self._sup
        if self.depth == 1 and sup._deferred and threading.get_ident() == sup._tid:
            try:
                sup._catch_up()
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


class _Rec(Attempts):
    """The supervisor's record of one task: its attempt machine, and what the supervisor
    keeps beside it."""

    __slots__ = (
        "args",
        "fut",
        "kwargs",
        "listeners",
        "run_time",
        "shared_in",
        "started",
        "submitted",
        "target",
        "timer",
        "waiter",
    )

    def __init__(self, spec: Task[Any], target: str, now: float) -> None:
        # (Attempts' slots set here, not through its __init__: one call less per task)
        self.spec = spec
        self.target = target
        self.submitted = now
        self.started: float | None = None
        self.run_time = 0.0
        self.attempts = 0
        self.res: TaskRes[Any] | None = None
        self.fut: asyncio.Future[TaskRes[Any]] | None = None
        # who wants the TaskRes: None, one callable, or a list of them (one is the usual)
        self.listeners: Listener | list[Listener] | None = None
        # what it received (set at dispatch; None before: no dict per pending task)
        self.shared_in: dict[str, Any] | None = None
        self.job: Job | None = None
        self.timer: TimerHandle | None = None
        # the call, references substituted, for every attempt (set at dispatch)
        self.args: tuple[Any, ...] = ()
        self.kwargs: dict[str, Any] = _NO_KWARGS
        # set when the TaskRes is there, for threads blocked in TaskHandle.result()
        self.waiter: threading.Event | None = None

    def add_listener(self, cb: Listener) -> None:
        listeners = self.listeners
        if listeners is None:
            self.listeners = cb
        elif isinstance(listeners, list):
            listeners.append(cb)
        else:
            self.listeners = [listeners, cb]


class TaskHandle(Generic[T]):
    """What ``submit`` returns: await it for the task's :class:`TaskRes`."""

    __slots__ = ("_rec", "_sup")

    def __init__(self, sup: Supervisor, rec: _Rec) -> None:
        self._sup = sup
        self._rec = rec

    @property
    def name(self) -> str:
        """The task's unique name."""
        return self._rec.spec.name

    @property
    def task(self) -> Task[T]:
        """The task's spec."""
        return cast(Task[T], self._rec.spec)

    @property
    def output(self) -> Any:
        """The task's return value, as an argument for another task."""
        return self._rec.spec.output

    @property
    def state(self) -> State:
        """Where the task is now."""
        if self._rec.res is not None:
            return self._rec.res.state
        return self._sup.task_state(self.name)

    def done(self) -> bool:
        """Has the task ended (its TaskRes is there)? From any thread."""
        return self._rec.res is not None

    def result(self, timeout: float | None = None) -> TaskRes[T]:
        """The TaskRes, waiting up to ``timeout`` seconds (``None``: as long as it takes).

        From any thread but the supervisor loop's, it blocks; ``TimeoutError`` leaves the
        task running. On the loop's thread it never blocks (that would stop the loop the
        task needs): before the task has ended it raises ``asyncio.InvalidStateError`` —
        ``await`` the handle there.
        """
        rec = self._rec
        if rec.res is not None:
            return rec.res
        sup = self._sup
        if threading.get_ident() == sup._tid:
            raise asyncio.InvalidStateError(
                f"task {self.name!r} has not ended yet (on the supervisor's loop, await the "
                "handle instead of blocking in result())"
            )
        with sup._engine:  # _deliver sets res and the waiter under the engine lock
            if rec.res is None and rec.waiter is None:
                rec.waiter = threading.Event()
            waiter = rec.waiter
        if waiter is not None and not waiter.wait(timeout):
            raise TimeoutError(f"task {self.name!r} did not end within {timeout:g} s")
        assert rec.res is not None
        return rec.res

    def add_done_callback(self, fn: Callable[[TaskRes[T]], object]) -> None:
        """Call ``fn(res)`` once the task has ended (from any thread).

        It runs on the supervisor loop's thread, outside the supervisor's critical
        section (it may call the supervisor); if the task has already ended, it runs at
        once in the calling thread. An exception it raises is logged and ignored.
        """
        if not callable(fn):
            raise SpecError(f"add_done_callback() takes a callable, got {safe_repr(fn)}")
        sup, rec = self._sup, self._rec
        with sup._engine:
            ended = rec.res is not None
            if not ended:
                engine = sup._engine
                rec.add_listener(lambda res: engine.after.append((fn, (res,))))
        if ended:
            try:
                fn(cast(TaskRes[T], rec.res))
            except Exception:
                logger.exception("a done callback %r raised; ignored", fn)

    def cancel(self) -> None:
        """Same as ``sup.cancel(handle)`` (from any thread)."""
        self._sup.cancel(self)

    def __await__(self) -> Generator[Any, None, TaskRes[T]]:
        rec = self._rec
        if rec.res is None:
            if rec.fut is None:
                rec.fut = self._sup._loop_or_raise().create_future()
            # shielded: one awaiter cancelled (wait_for, a cancel scope) must not cancel the
            # shared future under every other awaiter
            return (yield from asyncio.shield(rec.fut).__await__())
        return rec.res

    def __repr__(self) -> str:
        state = self._rec.res.state.name if self._rec.res else "pending"
        return f"<TaskHandle {self.name!r} {state}>"


class _Stream:
    """Results of one ``run()`` batch, in completion order.

    A deque and a future per waiting reader: the drain never blocks on a slow reader, a
    reader that stops early leaves nothing to clean up (no unclosed-stream warnings), and
    several readers may share one stream (each result goes to one of them).
    """

    __slots__ = ("_items", "_left", "_loop", "_waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self._items: deque[TaskRes[Any]] = deque()
        self._left = count  # results not yet handed to a reader
        self._waiters: list[asyncio.Future[None]] = []
        self._loop = loop

    def push(self, res: TaskRes[Any]) -> None:
        self._items.append(res)
        self._wake()

    def _wake(self) -> None:
        for w in self._waiters:
            if not w.done():
                w.set_result(None)
        self._waiters.clear()

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> TaskRes[Any]:
        while not self._items:
            if self._left == 0:
                raise StopAsyncIteration
            w = self._loop.create_future()
            self._waiters.append(w)
            try:
                await w
            finally:
                if w in self._waiters:
                    self._waiters.remove(w)
        self._left -= 1
        if self._left == 0:
            self._wake()  # other readers waiting for more: there is no more
        return self._items.popleft()


class Supervisor:
    """Owns the planner, the executors and the result streams. See the design page."""

    def __init__(
        self,
        pool_size: int = 0,
        reserve_normal: int = 0,
        reserve_high: int = 0,
        *,
        threads: int | None = None,
        processes: int | None = None,
        aloops: Iterable[str] = ("default",),
        uvloop: bool = True,
        resources: Mapping[str, float] | None = None,
        cpu_limit: float | str | None = None,
        memory_limit: float | str | None = None,
        fail_fast: bool = False,
        shared: Mapping[str, Any] | None = None,
        result_buffer: int | None = None,
        wait_warning: float | None = None,
        wait_critical: float | None = None,
        on_wait_warning: WaitCallback | None = None,
        on_wait_critical: WaitCallback | None = None,
        executors: Mapping[str, Any] | None = None,
        backends: Mapping[str, Any] | None = None,
        instruments: Iterable[object] | None = None,
        admit: Callable[[Task[Any], tuple[Task[Any], ...]], object] | None = None,
        clock: Clock | None = None,
        start_method: str = "spawn",
        sampler: Sampler | None = None,
        sample_interval: float = 0.5,
    ) -> None:
        pool_size = whole_number("pool_size", pool_size)
        reserve_normal = whole_number("reserve_normal", reserve_normal)
        reserve_high = whole_number("reserve_high", reserve_high)
        if result_buffer is not None:
            result_buffer = _positive("result_buffer", result_buffer)
            if result_buffer > sys.maxsize:
                raise SpecError(f"result_buffer is too large, got {safe_repr(result_buffer)}")
        for label, flag in (("fail_fast", fail_fast), ("uvloop", uvloop)):
            if not isinstance(flag, bool):
                raise SpecError(f"{label} must be a bool, got {safe_repr(flag)}")
        if clock is not None:
            try:
                ok = all(callable(getattr(clock, m, None)) for m in ("now", "to_wall", "call_at"))
            except Exception:
                ok = False
            if not ok:
                raise SpecError(
                    f"clock must have now(), to_wall() and call_at() (a taskvisor Clock), "
                    f"got {safe_repr(clock)}"
                )
        warn_after = _seconds("wait_warning", wait_warning)
        critical_after = _seconds("wait_critical", wait_critical)
        callbacks = (("on_wait_warning", on_wait_warning), ("on_wait_critical", on_wait_critical))
        for label, cb in callbacks:
            if cb is not None and not callable(cb):
                raise SpecError(
                    f"{label} must be a callable (name, waited) or None, got {safe_repr(cb)}"
                )
        self._on_alarm = {"warning": on_wait_warning, "critical": on_wait_critical}
        if admit is not None and not callable(admit):
            raise SpecError(
                f"admit must be a callable (task, running) -> bool or None, got {safe_repr(admit)}"
            )
        try:
            self._planner = Planner(
                pool_size=pool_size,
                reserve_normal=reserve_normal,
                reserve_high=reserve_high,
                resources=resource_map(resources, "capacity"),
                fail_fast=fail_fast,
                wait_warning=warn_after,
                wait_critical=critical_after,
                keep_ended=result_buffer,
                admit_rule=cast(Any, admit),
            )
        except ValueError as exc:
            raise SpecError(str(exc)) from None
        self._limits = (_percent("cpu_limit", cpu_limit), _percent("memory_limit", memory_limit))
        if sampler is not None and not callable(sampler):
            raise SpecError(
                f"sampler must be a callable () -> (cpu %, memory %), got {safe_repr(sampler)}"
            )
        self._sampler: Sampler = sampler if sampler is not None else _psutil_sample
        interval = _seconds("sample_interval", sample_interval)
        if interval is None:
            raise SpecError("sample_interval must be a number of seconds > 0, got None")
        self._sample_interval = interval
        self._sampled_at = -math.inf
        self._sample_timer: TimerHandle | None = None
        self._gates_on = any(v is not None for v in self._limits)
        self._abandoned: dict[Job, _Rec] = {}
        self.threads = DEFAULT_THREADS if threads is None else _positive("threads", threads)
        self.processes = (
            (os.cpu_count() or 1) if processes is None else _positive("processes", processes)
        )
        if isinstance(aloops, str):
            aloops = (aloops,)
        try:
            names = tuple(aloops)
        except Exception as exc:
            raise SpecError(
                f"aloops must be an iterable of names, got {type(aloops).__name__} "
                f"{safe_repr(aloops)}"
            ) from exc
        for n in names:
            if not isinstance(n, str) or not n or ":" in n:
                raise SpecError(
                    f"aloop names must be non-empty strings without ':', got {safe_repr(n)}"
                )
        if len(set(names)) != len(names):
            raise SpecError(f"duplicate aloop names in {names!r}")
        self._aloops = {n: Aloop(n, use_uvloop=uvloop) for n in names}
        self._default_aloop = names[0] if names else None
        if shared is not None and not isinstance(shared, Mapping):
            raise SpecError(f"shared must be a mapping, got {type(shared).__name__}")
        self._shared = dict(shared or {})
        self._results: deque[TaskRes[Any]] = deque(maxlen=result_buffer)
        # runs_on names of the user's executors (backends= is the older name of executors=)
        self._user_execs: dict[str, Executor] = {}
        for label, given in (("executors", executors), ("backends", backends)):
            self._user_execs.update(_user_executors(label, given, self._user_execs))
        self._instruments: list[object] = _instruments(instruments)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._now: Callable[[], float] = self._clock.now  # read on every event
        self._report: Sink = self._sink  # bound once: every main-loop job carries it
        # the engine lock: the planner and the task records change only under it, on the
        # loop's thread or on a pool thread that handles its own completion (see _sink)
        self._engine = _Engine(self)
        # what pool threads handling their own completions left for the loop, in order
        self._deferred: deque[tuple[object, Any]] = deque()
        self._pending_exec = 0  # instruction lists among them (results are harmless)
        # the instructions to carry out, in the planner's order; one drain at a time
        # each with the records it names, bound when the planner gave it (see _execute)
        self._todo: deque[tuple[Instruction, Any]] = deque()
        self._draining = False
        # admission of single submits on the loop runs once per turn (tier order holds
        # among back-to-back submits)
        self._admit_soon = False
        # recent events of every task, for story(): (id, time, task, kind, detail)
        self._story: deque[tuple[int, float, str, str, str]] = deque(maxlen=STORY_EVENTS)
        self._event_ids = itertools.count(1)
        self._inline = False  # may pool threads handle their completions? (set at start)
        if start_method not in ("spawn", "forkserver", "fork"):
            raise SpecError(f"start_method must be spawn, forkserver or fork, not {start_method!r}")
        self._start_method = start_method
        self.state = SupervisorState.CREATED
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tid = 0
        self._recs: dict[str, _Rec] = {}
        self._inbox: Inbox | None = None
        self._thread_pool: ThreadPool | None = None
        self._process_pool: ProcessPool | None = None
        self._executors: dict[str, Executor] = {}
        self._inline_targets: frozenset[str] = frozenset()
        self._timer: TimerHandle | None = None
        self._timer_at = math.inf
        self._quiet: asyncio.Event | None = None
        self._closed_event: asyncio.Event | None = None
        self._running: dict[str, int] = {}
        self._started_wall = datetime.now(UTC)

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        await self.aclose(cancel=exc_type is not None)

    async def start(self) -> None:
        """Start the aloops; ``async with`` calls it for you."""
        if self.state is not SupervisorState.CREATED:
            raise ClosedError(self.state.value, "start")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._tid = threading.get_ident()
        self._inbox = Inbox(loop, self._drain)
        self._quiet = asyncio.Event()
        self._closed_event = asyncio.Event()
        self._thread_pool = ThreadPool(self.threads, self._sink, now=self._now)
        self._process_pool = ProcessPool(
            self.processes, self._sink, start_method=self._start_method
        )
        # the registry: every runs_on target, resolved once per task (see _target)
        execs: dict[str, Executor] = {
            f"aloop:{n}": AloopExecutor(a) for n, a in self._aloops.items()
        }
        execs["main"] = MainExecutor(loop)
        execs["thread"] = ThreadExecutor(self._thread_pool)
        execs["process"] = ProcessExecutor(self._process_pool)
        execs.update(self._user_execs)
        for ex in execs.values():
            ex.start(self._sink)
        self._executors = execs
        # targets whose pool threads may finish their own tasks under the engine lock
        self._inline_targets = frozenset(
            n for n, ex in execs.items() if getattr(ex, "finishes_inline", False)
        )
        if self._gates_on and self._sampler is _psutil_sample:
            psutil.cpu_percent(interval=None)  # the first reading only starts the measurement
        # pool threads handle their own completions only on the real clock: a mock clock's
        # autojump must see every event arrive on the loop
        self._inline = type(self._clock) is SystemClock and not self._gates_on
        self.state = SupervisorState.RUNNING
        _LIVE.add(self)
        self._started_wall = datetime.now(UTC)
        try:
            for aloop in self._aloops.values():
                await asyncio.wrap_future(aloop.start(self._sink))
        except BaseException:
            await self._shutdown_executors()
            self.state = SupervisorState.CLOSED
            _LIVE.discard(self)
            raise

    async def aclose(self, wait: bool | float = True, cancel: bool = False) -> RunReport:
        """Stop accepting work, finish (or cancel) what is pending, stop the executors.

        ``wait=True`` waits for running and queued work; a number waits that many seconds
        and then cancels the rest; ``False`` or ``cancel=True`` cancels at once. Tasks
        still waiting for a dependency nobody can provide end with ``DependencyError``.
        Returns a report of the tasks that were pending when it was called.
        """
        if self.state is SupervisorState.CREATED:
            self.state = SupervisorState.CLOSED
            return RunReport.build((), datetime.now(UTC), 0.0)
        assert self._closed_event is not None and self._quiet is not None
        if self.state is not SupervisorState.RUNNING:
            await self._closed_event.wait()
            return RunReport.build((), datetime.now(UTC), 0.0)
        started, t0 = datetime.now(UTC), self._clock.now()
        deadline: TimerHandle | None = None
        with self._engine:
            self.state = SupervisorState.CLOSING
            pending = [self._recs[n] for n in self._planner.live()]
        try:
            with self._engine:
                if self._planner.paused:  # closing admits what pause() held back
                    self._execute(self._planner.set_paused(False))
                if cancel or wait is False:
                    self._execute(self._planner.cancel_all("supervisor closing", now=self._now()))
                elif wait is not True:
                    seconds = float(wait)
                    deadline = self._clock.call_at(
                        self._loop_or_raise(),
                        self._now() + seconds,
                        lambda: self._cancel_all(
                            f"supervisor closing: aclose waited {seconds:g} s"
                        ),
                    )
            while self._live_count():
                with self._engine:
                    self._check_quiet()
                await self._quiet.wait()
                self._quiet.clear()
                with self._engine:
                    if self._idle_except_waiting():
                        self._execute(self._planner.settle_waiting(now=self._now()))
        except BaseException:
            await self._close_down(deadline)
            raise
        if await self._close_down(deadline):
            raise asyncio.CancelledError
        results = [r.res for r in pending if r.res is not None]
        report = RunReport.build(results, started, self._clock.now() - t0)
        if self._instruments:
            self._call_hook("supervisor_closed", (report,))
        return report

    async def _close_down(self, deadline: TimerHandle | None) -> bool:
        """Stop the executors and settle every task still open; True if cancelled meanwhile.

        Runs to its end even when cancelled again and again (anyio cancel scopes re-deliver
        cancellation at every await): a half-closed supervisor would leak its threads.
        """
        if deadline is not None:
            deadline.cancel()
        if self._live_count():  # an abnormal exit: cancel what is still open
            self._cancel_all("supervisor closing")
        cancelled = await self._shutdown_executors()
        with self._engine:
            self._settle_leftovers()
        for timer in (self._timer, self._sample_timer):
            if timer is not None:
                timer.cancel()
        self.state = SupervisorState.CLOSED
        _LIVE.discard(self)
        assert self._closed_event is not None
        self._closed_event.set()
        return cancelled

    def _live_count(self) -> int:
        with self._engine:
            return self._planner.live_count

    def _cancel_all(self, reason: str) -> None:
        with self._engine:
            self._execute(self._planner.cancel_all(reason, now=self._now()))

    def _settle_leftovers(self) -> None:
        """Every worker is joined: take in the last completions, then end what is left."""
        assert self._inbox is not None
        self._inbox.flush()
        self._execute(self._planner.cancel_all("supervisor closed", now=self._now()))
        for name in self._planner.live():  # running, but its executor is gone
            rec = self._recs[name]
            err = TaskCancelled(name, "the supervisor closed before it reported")
            self._finish(rec, State.CANCELLED, None, None, ExceptionInfo.from_exc(err), None)

    async def _shutdown_executors(self) -> bool:
        """Join every worker thread and process off the loop; True if cancelled meanwhile."""

        def stop_all() -> None:
            for aloop in self._aloops.values():  # (also when start() failed half-way)
                aloop.stop()
            for ex in self._executors.values():
                left = ex.shutdown()
                if left:
                    _warn(
                        f"{len(left)} abandoned {ex.label}(s) still running at close, not "
                        "joined: " + ", ".join(repr(n) for n in left)
                    )

        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def closer() -> None:
            try:
                stop_all()
            except BaseException as exc:  # reported to the awaiting loop
                loop.call_soon_threadsafe(_set_exc, done, exc)
            else:
                loop.call_soon_threadsafe(_set_result, done, None)

        t = threading.Thread(target=closer, name="taskvisor-closer")
        t.start()
        cancelled = False
        while not done.done():
            try:
                await asyncio.shield(done)
            except asyncio.CancelledError:
                cancelled = True
        t.join()
        done.result()
        return cancelled

    # ------------------------------------------------------------ submission

    @overload
    def submit(self, task: Task[T], /) -> TaskHandle[T]: ...
    @overload
    def submit(
        self, task: Callable[..., Awaitable[T]], /, *args: Any, **meta: Any
    ) -> TaskHandle[T]: ...
    @overload
    def submit(self, task: Callable[..., T], /, *args: Any, **meta: Any) -> TaskHandle[T]: ...

    def submit(self, task: Any, /, *args: Any, **meta: Any) -> TaskHandle[Any]:
        """Submit one task (or a function with its arguments and Task options).

        From any thread. It may wait for a provider submitted later. Raises ``SpecError``
        for a bad spec (``CycleError``, ``DuplicateTaskError`` for a bad graph) in the
        calling thread, and ``ClosedError`` unless the supervisor is running. Tasks
        submitted back to back in one turn of the loop are admitted together, in tier
        order.
        """
        spec = _as_task(task, args, meta)
        (rec,) = self._submit([spec], sealed=False, admit=False)
        return TaskHandle(self, rec)

    def run(self, tasks: Iterable[Task[Any] | Callable[..., Any]]) -> AsyncIterator[TaskRes[Any]]:
        """Submit a sealed batch; iterate its results in completion order."""
        specs = [_as_task(t, (), {}) for t in tasks]
        self._check_running("submit")
        loop = self._own_loop("run")
        with self._engine:  # no result may land between the submit and the listeners
            recs = self._submit(specs, sealed=True)
            stream = _Stream(loop, len(recs))
            push = stream.push
            for rec in recs:
                if rec.res is not None:
                    push(rec.res)
                else:
                    rec.add_listener(push)
        return stream

    async def gather(self, tasks: Iterable[Task[Any] | Callable[..., Any]]) -> RunReport:
        """Submit a sealed batch, wait for all of it, return its :class:`RunReport`.

        Cancelling the ``await`` cancels the batch's tasks that have not ended.
        """
        started, t0 = datetime.now(UTC), self._clock.now()
        specs = [_as_task(t, (), {}) for t in tasks]
        self._check_running("submit")
        loop = self._own_loop("gather")
        with self._engine:  # no result may land between the submit and the listeners
            recs = self._submit(specs, sealed=True)
            done = loop.create_future()
            left = sum(1 for r in recs if r.res is None)
            counter = [left]

            def one(_res: TaskRes[Any]) -> None:
                counter[0] -= 1
                if counter[0] == 0 and not done.done():
                    done.set_result(None)

            for r in recs:
                if r.res is None:
                    r.add_listener(one)
        if left:
            try:
                await done
            except asyncio.CancelledError:
                # like asyncio.gather and task groups: the caller gave up, so does the batch
                with self._engine:
                    if self.state is SupervisorState.RUNNING:
                        self._execute(
                            self._planner.cancel_many(
                                [r.spec.name for r in recs if r.res is None],
                                "gather() was cancelled",
                                now=self._now(),
                            )
                        )
                raise
        return RunReport.build(
            (cast(TaskRes[Any], r.res) for r in recs), started, self._clock.now() - t0
        )

    def _own_loop(self, what: str) -> asyncio.AbstractEventLoop:
        """The supervisor's loop, for the async API (run, gather): on its own thread only."""
        loop = self._loop_or_raise()
        if threading.get_ident() != self._tid:
            raise RuntimeError(
                f"{what}() belongs to the supervisor's event loop; from another thread, "
                "submit() and wait with handle.result()"
            )
        return loop

    def _submit(self, specs: list[Task[Any]], *, sealed: bool, admit: bool = True) -> list[_Rec]:
        """``admit=False``: admit at the end of this turn of the loop. (Another thread has
        no turns: its submits are admitted at once, and its thread tasks start from it.)"""
        targets = [self._target(s) for s in specs]  # (no lock needed: the caller's thread)
        on_loop = threading.get_ident() == self._tid
        admit = admit or not on_loop
        with self._engine:
            self._check_running("submit")
            now = self._now()
            if self._gates_on and on_loop:  # (its timer lives on the loop; the loop samples
                self._sample(now)  # again on every completion it takes in)
            # graph errors raise here, before anything changed
            instrs = self._planner.submit(specs, sealed=sealed, admit=admit, now=now)
            recs = []
            story = self._story
            for spec, target in zip(specs, targets, strict=True):
                rec = _Rec(spec, target, now)
                self._recs[spec.name] = rec
                recs.append(rec)
                story.append((next(self._event_ids), now, spec.name, "submitted", target))
            if self._instruments:
                for rec in recs:
                    self._instrument("task_submitted", self._info(rec, 0, None))
            if not admit:
                self._admit_later()
            self._execute(instrs)
            return recs

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

    def _target(self, spec: Task[Any]) -> str:
        on = spec.runs_on
        if on is None:
            if spec.is_coroutine:
                target = f"aloop:{self._default_aloop}" if self._default_aloop else "main"
            else:
                target = "thread"
        elif on in ("thread", "process", "main"):
            target = on
        elif on == "aloop":
            if self._default_aloop is None:
                raise SpecError(f"task {spec.name!r}: runs_on='aloop' but no aloops are set up")
            target = f"aloop:{self._default_aloop}"
        elif on.startswith("aloop:"):
            if on[6:] not in self._aloops:
                raise SpecError(
                    f"task {spec.name!r}: no aloop named {on[6:]!r} "
                    f"(aloops: {', '.join(self._aloops) or 'none'})"
                )
            target = on
        elif on in self._user_execs:
            target = on
        else:
            target = self._registered(spec, on)
        return target

    def _registered(self, spec: Task[Any], on: str) -> str:
        """A ``runs_on`` name no ``executors=`` entry gives: an executor an installed
        package registers under that name (entry point group ``taskvisor.executors``),
        created on first use, started and shut down with the supervisor."""
        if on not in registered_executors():
            known = [
                "thread",
                "process",
                "main",
                "aloop",
                *(f"aloop:{a}" for a in self._aloops),
                *self._user_execs,
                *sorted(registered_executors()),
            ]
            raise SpecError(
                f"task {spec.name!r}: unknown runs_on {on!r} (known: {', '.join(known)})"
            )
        ex = as_executor(on, on, f"task {spec.name!r}: runs_on")  # (imports: not under lock)
        with self._engine:
            self._check_running("submit")
            if on not in self._user_execs:  # (else another thread created it meanwhile)
                ex.start(self._sink)
                self._user_execs[on] = self._executors[on] = ex
        return on

    # ------------------------------------------------------------ control

    def provide(self, item: Hashable) -> None:
        """Satisfy ``item`` as if a task had provided it (from any thread)."""
        check_item(item, "provide")
        with self._engine:
            self._check_running("provide")
            self._execute(self._planner.provide(item, now=self._now()))

    def cancel(self, task: str | TaskHandle[Any]) -> None:
        """Cancel a task; it ends CANCELLED (dependents SKIPPED naming it). From any thread.

        Not started yet: at once. Running: a coroutine is cancelled on its own loop, a
        process task's worker is killed (and replaced); a thread cannot be interrupted, so it
        is *abandoned* — the task ends now, the thread runs on, and its slot, resources and
        locks stay taken until it returns. An ended task is left as it is.
        """
        name = task.name if isinstance(task, TaskHandle) else task
        with self._engine:
            if self._loop is None:
                raise ClosedError(self.state.value, "cancel")
            if isinstance(task, TaskHandle) and (
                task._rec.res is not None or self._recs.get(name) is not task._rec
            ):
                return  # its task ended (the name may be a newer task's now)
            if name not in self._planner:
                if name in self._recs:
                    return  # ended, and the planner already forgot it
                raise KeyError(f"no task named {name!r} in this supervisor")
            self._event(name, "cancel requested", "")
            self._execute(self._planner.cancel(name, now=self._now()))

    def pause(self) -> None:
        """Hold every new admission (running tasks go on). From any thread."""
        with self._engine:
            self._check_running("pause")
            self._execute(self._planner.set_paused(True))

    def resume(self) -> None:
        """Release admission held by :meth:`pause`. From any thread."""
        with self._engine:
            self._check_running("resume")
            self._execute(self._planner.set_paused(False))

    def story(self, task: str | TaskHandle[Any]) -> list[StoryEvent]:
        """The recent events of one task, oldest first (from any thread).

        Like distributed's ``story(key)``: what was submitted, dispatched to which
        executor, started, retried, cancelled, timed out, abandoned, and how it ended, with
        the time of each (the supervisor's clock) and an id ordering every event of the
        supervisor. The supervisor keeps its last ``STORY_EVENTS`` events (10,000).
        """
        name = task.name if isinstance(task, TaskHandle) else task
        with self._engine:
            return [StoryEvent(*e) for e in self._story if e[2] == name]

    def _event(self, name: str, kind: str, detail: str) -> None:
        """Record an event of a task for story() (engine held)."""
        self._story.append((next(self._event_ids), self._now(), name, kind, detail))

    def report(self) -> RunReport:
        """An interim report: results kept so far (see ``result_buffer``) and pending names."""
        with self._engine:
            results, live = tuple(self._results), self._planner.live()
        return RunReport.build(
            results,
            self._started_wall,
            (datetime.now(UTC) - self._started_wall).total_seconds(),
            live,
        )

    def task_state(self, task: str | TaskHandle[Any]) -> State:
        """Where a task is now (``State.QUEUED``, ``State.RUNNING``, ``State.DONE`` …)."""
        name = task.name if isinstance(task, TaskHandle) else task
        with self._engine:
            if name in self._planner:
                return self._planner.state(name)
            rec = self._recs.get(name)
            if rec is not None and rec.res is not None:
                return rec.res.state
            raise KeyError(f"no task named {name!r} in this supervisor")

    def statistics(self) -> Statistics:
        """A snapshot of queue lengths, running tasks and executors."""
        with self._engine:
            return self._statistics()

    def _statistics(self) -> Statistics:
        p = self._planner
        return Statistics(
            state=self.state,
            tasks=dict(p.stats.by_state),
            queued=dict(p.stats.queued_by_tier),
            busy_slots=p.busy,
            running=dict(self._running),
            threads=self._thread_pool.threads if self._thread_pool else 0,
            aloops=tuple(self._aloops),
            process_pool_started=bool(self._process_pool and self._process_pool.started),
            paused=p.paused,
        )

    def aloop(self, name: str = "default") -> Aloop:
        """The aloop called ``name`` (its ``run(coro)`` works from other threads)."""
        try:
            return self._aloops[name]
        except KeyError:
            raise KeyError(f"no aloop named {name!r} (aloops: {', '.join(self._aloops)})") from None

    # ------------------------------------------------------------ the engine

    def _loop_or_raise(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise ClosedError(self.state.value, "use the supervisor")
        return self._loop

    def _check_running(self, action: str) -> None:
        if self.state is not SupervisorState.RUNNING:
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
            and result[0] is Outcome.OK
            and job.target in self._inline_targets
            and not job.watch
            and self._pool_busy() == 1
            and self._engine.try_acquire()
        ):
            try:
                # (with instructions queued for the loop, the planner waits for the loop)
                if self.state is SupervisorState.RUNNING and not self._pending_exec:
                    try:
                        self._on_done(job, result)
                    except Exception as exc:  # a taskvisor bug: the task fails loudly
                        self._internal_error(job.name, exc, job=job)
                    return
            finally:
                self._engine.release()
        inbox.put((job, result))

    def _pool_busy(self) -> int:
        pool = self._thread_pool
        return 0 if pool is None else pool.busy

    def _drain(self, batch: list[tuple[Any, Any]]) -> None:
        with self._engine:
            if self._gates_on:
                self._sample(self._now())
            for what, arg in batch:
                if what is _DEFERRED:  # a wake-up for the deferred work: done on entry
                    continue
                try:
                    self._on_done(what, arg)
                except Exception as exc:  # a taskvisor bug: fail the task loudly, go on
                    self._internal_error(what.name, exc, job=what)
            self._check_quiet()

    def _internal_error(
        self, name: str, exc: Exception, job: Job | None = None, rec: _Rec | None = None
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
                self._finish(rec, State.FAILED, None, None, info, None)
            else:
                self._deliver(rec, State.FAILED, None, {}, info, None, self._now())
        except Exception:
            logger.critical("could not end task %r after an internal error", name, exc_info=True)

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
                else:  # instructions already bound to their records (see _execute)
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

        Each instruction is queued with the records of the tasks it names as they are
        *now*, under the same lock as the planner call that gave it: by the time it is
        carried out, a name may belong to a newer task (the planner forgot the old one and
        a submit reused the name), and the instruction is about the old one.
        """
        recs, bind = self._recs, self._todo.append
        bound: Any
        for ins in instrs:
            if type(ins) is Dispatch:
                parents = ins.parents
                bound = (recs[ins.name], [recs.get(p) for p in parents] if parents else ())
            elif type(ins) is Settle or type(ins) is Cancel:
                bound = recs[ins.name]
            elif type(ins) is Forget:
                bound = [recs.get(n) for n in ins.names]
            else:
                bound = None
            bind((ins, bound))
        self._run_todo()

    def _run_todo(self) -> None:
        if self._draining:
            return
        self._draining = True
        try:
            self._carry_out()
        finally:
            self._draining = False
        if self.state is SupervisorState.CLOSING and threading.get_ident() == self._tid:
            self._check_quiet()  # (an asyncio.Event: the loop's thread only)

    def _carry_out(self) -> None:
        todo, recs = self._todo, self._recs
        on_loop = threading.get_ident() == self._tid
        while todo:
            ins, bound = todo[0]
            if not on_loop and (
                type(ins) is not Dispatch or bound[0].target not in self._inline_targets
            ):
                self._to_loop(_EXECUTE, list(todo))  # the loop's to do, in order
                todo.clear()
                return
            todo.popleft()
            try:
                if type(ins) is Dispatch:
                    self._dispatch(ins, bound[0], bound[1])
                elif type(ins) is Settle:
                    self._settle(bound, ins.state, ins.error)
                elif type(ins) is Cancel:
                    self._cancel_running(bound, ins.reason)
                elif type(ins) is Warn:
                    _warn(ins.message)
                elif type(ins) is WakeAt:
                    self._wake_at(ins.when)
                elif type(ins) is Alarm:
                    self._engine.after.append((self._alarm, (ins,)))
                elif type(ins) is Forget:
                    for name, rec in zip(ins.names, bound, strict=True):
                        if rec is not None and recs.get(name) is rec:  # (not a reused name's)
                            del recs[name]
            except Exception as exc:  # a taskvisor bug: the task fails loudly, the rest goes on
                if type(ins) in (Dispatch, Settle, Cancel):
                    rec = bound[0] if type(ins) is Dispatch else bound
                    self._internal_error(rec.spec.name, exc, rec=rec)
                else:
                    logger.critical("internal error carrying out %r", ins, exc_info=exc)

    def _dispatch(self, ins: Dispatch, rec: _Rec, parents: list[_Rec | None] | tuple[()]) -> None:
        spec = rec.spec
        now = self._now()
        shared = dict(self._shared) if self._shared else {}
        for prec in parents:
            pres = None if prec is None else prec.res
            if pres is not None and pres.shared:
                shared.update(pres.shared)
        rec.shared_in = shared
        args, kwargs = spec.args, spec.kwargs
        if spec.refs:
            by_name = {p.spec.name: p for p in parents if p is not None}
            values = {r: cast(TaskRes[Any], by_name[r].res).ret for r in spec.refs}
            try:
                args, kwargs = substitute_call(args, kwargs, values)
            except BaseException as exc:  # a projection is user code: it fails the task
                rec.started = now
                self._finish(rec, State.FAILED, None, shared, ExceptionInfo.from_exc(exc), None)
                return
        rec.args, rec.kwargs = args, kwargs
        rec.started = now
        self._running[rec.target] = self._running.get(rec.target, 0) + 1
        self._launch(rec)

    def _launch(self, rec: _Rec) -> None:
        """Start one attempt. Each attempt is a new Job with its own copy of ``shared``: a
        failed attempt's writes must not reach a retry, nor its late reports the next one."""
        spec = rec.spec
        job = Job(
            spec.name,
            spec.fn,
            rec.args,
            rec.kwargs,
            dict(rec.shared_in or ()) if spec.wants_shared else None,
            rec.target,
            spec,
        )
        target = rec.target
        ex = self._executors[target]
        arm = rec.begin(job, ex.reports_start)
        job.started = now = self._now()
        self._story.append((next(self._event_ids), now, spec.name, "dispatched", target))
        if self._instruments:
            self._instrument("task_started", self._info(rec, rec.attempts, None))
        if arm:
            self._arm_timeout(rec, job)
        try:
            ex.submit(job)
        except Exception as exc:
            self._sink(job, (Outcome.ERROR, None, job.shared, ExceptionInfo.from_exc(exc), None))

    def _arm_timeout(self, rec: _Rec, job: Job, began: float | None = None) -> None:
        """The attempt's deadline: ``timeout`` after it began (when a worker reported it
        began, or now)."""
        assert rec.spec.timeout is not None
        if rec.timer is not None:
            rec.timer.cancel()
        rec.timer = self._clock.call_at(
            self._loop_or_raise(),
            (self._now() if began is None else began) + rec.spec.timeout,
            lambda: self._on_timeout(rec, job),
        )

    def _on_timeout(self, rec: _Rec, job: Job) -> None:
        with self._engine:
            self._timed_out(rec, job)

    def _timed_out(self, rec: _Rec, job: Job) -> None:
        if rec.timed_out(job) is not None:
            rec.timer = None
            self._event(job.name, "timed out", f"attempt {job.attempt}")
            self._cancel_job(rec, job)

    def _cancel_running(self, rec: _Rec, reason: str) -> None:
        job = rec.stop(reason)
        if job is not None:
            self._event(rec.spec.name, "cancelling", reason)
            self._cancel_job(rec, job)

    def _cancel_job(self, rec: _Rec, job: Job) -> None:
        """Stop a running attempt (``job.cancelled`` says why), as its executor can: a job
        no worker took is withdrawn, a coroutine cancelled on its loop, a process worker
        killed; what cannot be stopped is abandoned (see the attempt machine)."""
        ex = self._executors[rec.target]
        if rec.stopped(job, ex.cancel(job)) is Act.ABANDONED:
            self._abandon(rec, job, ex.label)

    def _abandon(self, rec: _Rec, job: Job, what: str) -> None:
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
        _warn(
            f"task {spec.name!r}: its {what} could not be interrupted and still runs; "
            "its slot stays busy until it returns"
        )
        self._event(spec.name, "abandoned", what)
        rec.run_time += self._now() - job.started
        self._finish(rec, state, None, None, ExceptionInfo.from_exc(err), None, keep_slot=True)

    def _on_done(self, job: Job, result: Result) -> None:
        """An executor's report about ``job``: the attempt machine decides (engine held)."""
        outcome, ret, shared, excinfo, worker = result
        if outcome is Outcome.STARTED:
            rec = self._recs.get(job.name)
            if rec is not None and rec.began(job):
                self._event(job.name, "started", worker or "")
                self._arm_timeout(rec, job, job.began)
            return
        abandoned = self._abandoned.pop(job, None)  # (its name may belong to a newer task)
        rec = abandoned or self._recs.get(job.name)
        if rec is None:
            return
        exc = None if excinfo is None else excinfo.val
        # a controlled failure, or a call that cannot even be sent (SpecError), is final
        act = rec.report(job, outcome, not isinstance(exc, TaskFailError | SpecError))
        if act is Act.NOTHING:
            return
        if act is Act.RELEASE:  # an abandoned attempt really returned: its slot is free now
            if abandoned is not None:
                self._running[rec.target] -= 1
                self._event(rec.spec.name, "abandoned attempt returned", outcome.value)
                logger.info("abandoned task %r returned (%s)", rec.spec.name, outcome.value)
                self._execute(self._planner.release(rec.spec.name, now=self._now()))
            return
        if rec.timer is not None:
            rec.timer.cancel()
            rec.timer = None
        rec.run_time += self._now() - job.started
        spec = rec.spec
        if self._instruments and isinstance(exc, WorkerCrashed):
            self._instrument("worker_crashed", self._info(rec, job.attempt, worker))
        err: BaseException
        if act is Act.DONE:
            self._finish(rec, State.DONE, ret, shared, None, worker)
        elif act is Act.RETRY:
            if job.cancelled == TIMEOUT:
                logger.warning("%r timed out on attempt %d, retrying", spec.name, rec.attempts)
                self._event(spec.name, "retrying", f"attempt {rec.attempts} timed out")
            else:
                logger.warning(
                    "%r failed on attempt %d, retrying: %r", spec.name, rec.attempts, exc
                )
                self._event(spec.name, "retrying", f"attempt {rec.attempts} failed: {exc!r}")
            self._launch(rec)
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
        rec: _Rec,
        state: State,
        ret: Any,
        shared: dict[str, Any] | None,
        excinfo: ExceptionInfo | None,
        worker: str | None,
        *,
        keep_slot: bool = False,
    ) -> None:
        spec = rec.spec
        if rec.timer is not None:
            rec.timer.cancel()
            rec.timer = None
        if rec.job is not None and not keep_slot:
            self._running[rec.target] -= 1
        deps_ok = locks_ok = False
        if excinfo is not None and isinstance(excinfo.val, TaskFailError):
            deps_ok, locks_ok = excinfo.val.deps_ok, excinfo.val.locks_ok
        elif excinfo is not None and isinstance(excinfo.val, SpecError):
            locks_ok = True  # its call could not be made: it never touched the resources
        if spec.wants_shared and shared is not None:
            out_shared = shared
        else:
            out_shared = rec.shared_in if rec.shared_in is not None else {}
        now = self._now()
        self._deliver(rec, state, ret, out_shared, excinfo, worker, now)
        self._execute(
            self._planner.finish(
                spec.name, state, deps_ok=deps_ok, locks_ok=locks_ok, keep_slot=keep_slot, now=now
            )
        )

    def _settle(self, rec: _Rec, state: State, error: NotRunError) -> None:
        self._deliver(
            rec,
            state,
            None,
            rec.shared_in if rec.shared_in is not None else {},
            ExceptionInfo(type(error), error, None),
            None,
            self._now(),
        )

    def _deliver(
        self,
        rec: _Rec,
        state: State,
        ret: Any,
        shared: dict[str, Any],
        excinfo: ExceptionInfo | None,
        worker: str | None,
        now: float,
    ) -> None:
        spec = rec.spec
        wall = self._clock.to_wall
        started = rec.started
        res: TaskRes[Any] = TaskRes(
            task=spec,
            shared=shared,
            ret=ret,
            excinfo=excinfo,
            name=spec.name,
            state=state,
            ok=state is State.DONE,
            submitted_at=datetime.fromtimestamp(wall(rec.submitted), UTC),
            started_at=None if started is None else datetime.fromtimestamp(wall(started), UTC),
            finished_at=datetime.fromtimestamp(wall(now), UTC),
            wait_time=(now if started is None else started) - rec.submitted,
            run_time=rec.run_time,
            attempts=rec.attempts,
            runs_on=rec.target,
            worker=worker,
        )
        rec.res = res
        rec.job = None
        if rec.waiter is not None:
            rec.waiter.set()
        self._results.append(res)
        self._story.append((next(self._event_ids), now, spec.name, "ended", state.name))
        if threading.get_ident() != self._tid:  # futures and listeners live on the loop
            self._to_loop(_NOTIFY, (rec, res))
        else:
            self._notify(rec, res)

    def _notify(self, rec: _Rec, res: TaskRes[Any]) -> None:
        """Tell whoever waits for a task's result (on the loop's thread)."""
        if self._instruments:
            self._instrument("task_finished", res)
        if rec.fut is not None and not rec.fut.done():
            rec.fut.set_result(res)
        listeners, rec.listeners = rec.listeners, None
        if listeners is not None:
            if isinstance(listeners, list):
                for cb in listeners:
                    cb(res)
            else:
                listeners(res)
        _log(res)

    def _info(self, rec: _Rec, attempt: int, worker: str | None) -> TaskInfo:
        spec = rec.spec
        return TaskInfo(spec.name, spec, rec.target, attempt, worker, self._now())

    def _instrument(self, hook: str, arg: Any) -> None:
        """Call ``hook(arg)`` on every instrument that has it, outside the critical
        section: after the engine lock is released, on the loop's thread (engine held)."""
        call = (self._call_hook, (hook, (arg,)))
        if threading.get_ident() == self._tid:
            self._engine.after.append(call)
        else:
            assert self._inbox is not None
            self._deferred.append((_CALL, call))
            self._inbox.put((_DEFERRED, None))

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
        if now - self._sampled_at < self._sample_interval:
            return
        self._sampled_at = now
        try:
            cpu, mem = self._sampler()
        except Exception:
            logger.exception("the system sampler failed; gates stay as they were")
            return
        cpu_limit, mem_limit = self._limits
        closed = (cpu_limit is not None and cpu > cpu_limit) or (
            mem_limit is not None and mem > mem_limit
        )
        if closed != self._planner.gate_closed:
            if closed:
                logger.info("admission held: cpu %.0f%%, memory %.0f%%", cpu, mem)
            self._execute(self._planner.set_gate(closed))
        if closed and self._sample_timer is None:
            self._sample_timer = self._clock.call_at(
                self._loop_or_raise(), now + self._sample_interval, self._on_sample_timer
            )

    def _on_sample_timer(self) -> None:
        self._sample_timer = None
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
        if (
            self.state is SupervisorState.CLOSING
            and self._quiet is not None
            and (self._idle_except_waiting())
        ):
            self._quiet.set()


def run(tasks: Iterable[Task[Any] | Callable[..., Any]], **options: Any) -> RunReport:
    """Run a batch from synchronous code (scripts): ``tv.run([a, b], threads=4)``.

    ``options`` go to :class:`Supervisor`. Raises ``RuntimeError`` inside a running event
    loop: there, ``async with Supervisor() as sup: await sup.gather(...)``.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("tv.run() cannot run inside an event loop; use `await sup.gather()`")
    batch = list(tasks)

    async def main() -> RunReport:
        async with Supervisor(**options) as sup:
            return await sup.gather(batch)

    return asyncio.run(main())


def _as_task(task: Any, args: tuple[Any, ...], meta: dict[str, Any]) -> Task[Any]:
    if isinstance(task, Task):
        if args or meta:
            raise SpecError("pass arguments and options to Task(...), not next to a Task")
        return task
    if not callable(task) and not asyncio.iscoroutine(task):
        raise SpecError(f"expected a Task or a callable, got {type(task).__name__} {task!r}")
    kwargs = meta.pop("kwargs", None)
    unknown = set(meta) - META_KEYS
    if unknown:
        raise SpecError(
            f"unknown option(s) {', '.join(sorted(unknown))}; pass the function's own keyword "
            "arguments as kwargs={...}"
        )
    return Task(task, args, kwargs, **meta)


def _user_executors(label: str, given: Any, taken: Mapping[str, Executor]) -> dict[str, Executor]:
    """``executors=`` (or its older name ``backends=``): runs_on name -> a taskvisor
    :class:`~taskvisor.abc.Executor`, or any ``concurrent.futures.Executor``-like object
    with ``submit()`` (wrapped: its payloads are pickled)."""
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise SpecError(
            f"{label} must be a mapping of name to Executor, got {type(given).__name__} "
            f"{safe_repr(given)}"
        )
    out: dict[str, Executor] = {}
    one = label[:-1]  # "executor" or "backend", as the caller called it
    for name, ex in given.items():
        if (
            not isinstance(name, str)
            or not name
            or name in ("thread", "process", "main", "aloop")
            or name.startswith("aloop:")
        ):
            raise SpecError(f"{one} name {safe_repr(name)} is empty, reserved or not a string")
        if name in taken or name in out:
            raise SpecError(f"{one} name {name!r} given twice (executors= and backends=)")
        out[name] = as_executor(name, ex, one)
    return out


def _instruments(value: Any) -> list[object]:
    """``instruments=``: objects with any of the hook methods (trio's ``Instrument``)."""
    if value is None:
        return []
    try:
        items = list(value)
    except Exception:
        raise SpecError(
            f"instruments must be an iterable of instruments, got {safe_repr(value)}"
        ) from None
    for inst in items:
        try:
            hooks = [h for h in _HOOKS if callable(getattr(inst, h, None))]
        except Exception:
            hooks = []
        if not hooks:
            raise SpecError(
                f"instrument {safe_repr(inst)} has none of the hooks {', '.join(_HOOKS)}"
            )
    return items


def _seconds(label: str, v: Any) -> float | None:
    if v is None:
        return None
    seconds = real_number(label, v)
    if not 0 < seconds < math.inf:
        raise SpecError(f"{label} must be a number of seconds > 0, got {safe_repr(v)}")
    return seconds


def _percent(label: str, v: Any) -> float | None:
    """``90``, ``90.0`` or ``"90%"`` → 90.0 (a percentage in (0, 100])."""
    if v is None:
        return None
    raw = v
    if isinstance(v, str):
        text = v.strip()
        try:
            v = float(text[:-1] if text.endswith("%") else text)
        except ValueError:
            raise SpecError(
                f"{label} must be a percentage like '90%', got {safe_repr(raw)}"
            ) from None
    if isinstance(v, bool) or not isinstance(v, int | float) or not (0 < v <= 100):
        raise SpecError(
            f"{label} must be a percentage in (0, 100] like '90%', got {safe_repr(raw)}"
        )
    return float(v)


def _psutil_sample() -> tuple[float, float]:
    return psutil.cpu_percent(interval=None), psutil.virtual_memory().percent


def _positive(label: str, v: Any) -> int:
    return whole_number(label, v, 1)


def _warn(message: str) -> None:
    try:
        warnings.warn(message, TaskvisorWarning, stacklevel=2)
    except Warning as w:  # warnings turned into errors must not break the supervisor loop
        logger.error("warning raised as an error: %s", w)


def _log(res: TaskRes[Any]) -> None:
    if res.state is State.DONE:
        if logger.isEnabledFor(logging.INFO):
            logger.info("%r done in %.1f ms on %s", res.name, res.run_time * 1e3, res.runs_on)
    elif res.state is State.FAILED:
        assert res.excinfo is not None
        logger.error(
            "%r failed on %s: %r",
            res.name,
            res.runs_on,
            res.excinfo.val,
            exc_info=(res.excinfo.type, res.excinfo.val, res.excinfo.tb),
        )
    else:
        logger.warning(
            "%r %s: %s", res.name, res.state.name.lower(), getattr(res.error, "reason", res.error)
        )


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exc(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
