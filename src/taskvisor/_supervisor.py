"""The supervisor: taskvisor's public API over its engine.

:class:`Supervisor` checks its options (``_config``), starts and stops the executors
(the registry of ``runs_on`` targets: ``_executors``, ``_procpool``, the user's and the
registered ones), and turns each public call — ``submit``, ``run``, ``gather``,
``cancel``, ``provide``, ``pause``/``resume``, ``story``, ``report`` — into an event for
the engine (``_engine``), which owns the planner, the task records and the instruction
queue. Results reach the caller through ``_delivery`` (handles, streams).

Lifecycle: ``created → running → closing → closed``. Leaving ``async with`` waits for the
work (or cancels it, when the block raised), settles what still waits for a dependency
with ``DependencyError``, stops the aloops and pools and joins their threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import queue
import threading
import weakref
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    Iterable,
    Mapping,
)
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Never, TypeVar, overload

from ._clock import Clock, SystemClock, TimerHandle
from ._config import OPTIONS, Config, Sampler, WaitCallback
from ._delivery import Record, ResultStream, StoryEvent, TaskHandle, TaskInfo, set_exc, set_result
from ._engine import STORY_EVENTS, Countdown, Engine, SupervisorState, Window, warn
from ._errors import ClosedError, DuplicateTaskError, SpecError, TaskCancelled
from ._executors import (
    Aloop,
    AloopExecutor,
    Inbox,
    MainExecutor,
    ProcessExecutor,
    ThreadExecutor,
    ThreadPool,
    as_executor,
    registered_executors,
)
from ._log import logger
from ._planner import State
from ._procpool import ProcessPool
from ._result import ExceptionInfo, RunReport, TaskRes
from ._spec import (
    _PLAIN_ITEMS,
    META_KEYS,
    Task,
    Tier,
    check_item,
    real_number,
    safe_repr,
    unknown_options,
    whole_number,
)
from ._workers import Worker, is_event, is_source, next_item, wait_event, worker_options
from ._workers import check_options as check_worker
from .abc import Executor

__all__ = [
    "STORY_EVENTS",
    "Statistics",
    "StoryEvent",
    "Supervisor",
    "SupervisorState",
    "TaskHandle",
    "TaskInfo",
    "run",
]

_LIVE: weakref.WeakSet[Supervisor] = weakref.WeakSet()  # started and not closed (leak checks)
_BUILT_IN = frozenset({"thread", "process", "main"})  # runs_on names that are their target
T = TypeVar("T")


@dataclass(frozen=True)
class Statistics:
    """A snapshot of the supervisor (``sup.statistics()``): its ``state``; ``tasks`` by
    state, ended ones included; ``queued``: ready tasks waiting for a slot, per tier;
    ``busy_slots`` taken; ``running`` tasks per executor target; ``threads``: pool threads
    started so far; ``aloops``: their names; ``process_pool_started``; ``paused``."""

    state: SupervisorState
    tasks: Mapping[State, int]
    queued: Mapping[Tier, int]
    busy_slots: int
    running: Mapping[str, int]
    threads: int
    aloops: tuple[str, ...]
    process_pool_started: bool
    paused: bool


class Supervisor(Engine):
    """Runs tasks: admits them by tier, priority, dependencies and locks, and runs them on
    its executors (aloops, threads, processes, your own); every task ends in one
    :class:`TaskRes`.

    Use it as ``async with Supervisor(...) as sup:``. Arguments:

    * ``pool_size``, ``reserve_normal``, ``reserve_high``: admission slots and the reserves
      of the NORMAL and HIGH tiers. ``pool_size=0`` (the default) means unlimited.
    * ``threads``: thread-pool size (default 40). ``processes``: process-pool size
      (default ``os.cpu_count()``).
    * ``aloops``: names of the aloops started with the supervisor. The first one is the
      default. ``uvloop``: use uvloop for the aloops when it is installed.
    * ``resources``: capacities for declared resources, such as ``{"gpu": 2}``.
    * ``cpu_limit``, ``memory_limit``: live system gates. While the machine's CPU or
      memory use is above the limit, no task below CRITICAL is admitted. Each is a
      percentage of the whole machine, ``"90%"`` or a number in (0, 100], or ``None`` (the
      default: no gate).
    * ``sampler``: a callable returning ``(cpu_percent, memory_percent)`` for the gates.
      The default uses psutil (``cpu_percent()``, ``virtual_memory().percent``).
      ``sample_interval``: the minimum number of seconds between two readings (default
      0.5). Readings are taken on submissions and completions, and every
      ``sample_interval`` by one timer while the gate is closed.
    * ``wait_warning``, ``wait_critical``: seconds a task may wait in the admission queue
      (dependencies met, waiting for slots, resources, a gate or a pause) before an alarm.
    * ``on_wait_warning``, ``on_wait_critical``: callbacks ``(name, waited)``, called once
      per task and level on the supervisor's loop. Without one, the alarm is logged
      (WARNING or ERROR).
    * ``fail_fast``: the first failure cancels everything that has not ended.
    * ``grace``: how many seconds leaving ``async with`` waits for the work before it
      cancels what is left (``None``, the default: as long as it takes).
    * ``shared``: the initial shared dict that every task's dict starts from.
    * ``result_buffer``: keep only the last *N* tasks that ended (default 10,000: a
      long-running supervisor's memory stays flat). An ended task's name may be reused as
      soon as no handle to it is alive and no pending task needs its result; older ended
      tasks are forgotten on the same terms: their results leave :meth:`report`, lookups
      by their names raise ``KeyError``, and their outputs can no longer be referenced.
      ``None`` keeps everything (names stay unique for the supervisor's life).
    * ``executors``: ``{name: executor}``, extra ``runs_on`` targets: each a
      :class:`taskvisor.abc.Executor`, or any ``concurrent.futures.Executor``-style object
      with ``submit`` (its payloads are then pickled, as for processes). A user's executor
      is used as it is: a ``ProcessPoolExecutor`` of your own still breaks as a whole when
      a worker dies; only ``runs_on="process"`` is crash-tolerant. ``backends`` is the
      older name of the same argument (both may be given, with different names).
    * ``instruments``: objects told about each task and the supervisor, as trio's
      instruments are: each has any of ``task_submitted(info)``, ``task_started(info)``
      (each attempt, at its dispatch), ``task_finished(res)``, ``worker_crashed(info)``
      and ``supervisor_closed(report)``, where ``info`` is a :class:`TaskInfo` and ``res``
      the :class:`TaskRes`. They are called on the supervisor loop's thread, outside its
      critical section; one that raises is logged and removed. With none installed they
      cost one truth test per step.
    * ``admit``: an admission rule (taylorism's pluggable schedulers), a callable
      ``rule(task, running) -> bool`` asked before a ready task that fits is started,
      with the :class:`Task` specs running now. ``False`` holds it back (the next task of
      its tier may go); it is asked again each time a task ends. A rule that raises, or
      that holds a task back while nothing runs (nothing would end to ask it again), is
      overruled with a :class:`TaskvisorWarning`: the task starts.
    * ``clock``: a :class:`Clock`, such as :class:`taskvisor.testing.MockClock` in tests.
      ``start_method``: ``"spawn"`` (the default), ``"forkserver"`` or ``"fork"`` for the
      process pool.

    Every invalid value raises :class:`SpecError` naming the argument and the value
    (bools must be bools, ``clock`` must have ``now``, ``to_wall`` and ``call_at``,
    ``aloops`` is an iterable of names, ``backends`` a mapping of non-empty names to
    objects with ``submit()``; the full list is in :ref:`the guide
    <supervisor-arguments>`), and unknown keywords raise ``TypeError``.
    Every method may be called from any thread, except the async API (``run``,
    ``gather``, ``aclose``), which belongs to the loop that started the supervisor (see
    :ref:`Any thread, one rule <any-thread>`). The failure semantics of every option are in
    :doc:`failures`.
    """

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
        grace: float | None = None,
        shared: Mapping[str, Any] | None = None,
        result_buffer: int | None = 10_000,
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
        **misspelt: Never,
    ) -> None:
        if misspelt:  # (a type checker refuses these already; at run time: a clear error)
            raise TypeError(unknown_options("Supervisor", misspelt, OPTIONS))
        args = locals()
        cfg = Config({name: args[name] for name in OPTIONS})
        super().__init__(cfg)
        self.threads = cfg.threads
        self.processes = cfg.processes
        self._aloops = {n: Aloop(n, use_uvloop=cfg.uvloop) for n in cfg.aloops}
        self._default_aloop = cfg.aloops[0] if cfg.aloops else None
        # where a coroutine task goes by default (one string, not one per task)
        self._coro_target = f"aloop:{self._default_aloop}" if self._default_aloop else "main"
        self._user_execs = cfg.user_execs
        self._start_method = cfg.start_method
        self._grace = cfg.grace
        self._workers: list[Worker] = []
        self._process_pool: ProcessPool | None = None
        self._closed_event: asyncio.Event | None = None
        self._started_wall = datetime.now(UTC)

    @property
    def clock(self) -> Clock:
        """The clock its delays, timeouts and alarms run on (``clock=``, else the system's)."""
        return self._clock

    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        """Leaving the block: wait for the work (at most ``grace`` seconds, then cancel
        the rest), or cancel it at once when the block raised."""
        await self.aclose(
            wait=True if self._grace is None else self._grace, cancel=exc_type is not None
        )

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
        execs["main"] = MainExecutor(loop, busy=self._now)
        execs["thread"] = ThreadExecutor(self._thread_pool)
        execs["process"] = ProcessExecutor(self._process_pool)
        execs.update(self._user_execs)
        for name, ex in execs.items():
            ex.start(self._sink)
            if ex.own_resources:
                self._planner.elsewhere[name] = ex.resource_shortfall
        self._executors = execs
        for n, aloop in self._aloops.items():  # (see Engine._carry_out: ALOOP_WINDOW)
            target = f"aloop:{n}"
            self._windows[target] = Window(aloop)
            aloop.on_started = functools.partial(self._aloop_started, target)
        if self._aloops and hasattr(self._clock, "_busy_checks"):  # (a MockClock)
            self._clock._busy_checks.append(self._handing_over)
        # targets whose pool threads may finish their own tasks under the engine lock
        self._inline_targets = frozenset(
            n for n, ex in execs.items() if getattr(ex, "finishes_inline", False)
        )
        self._gates.prime()
        # pool threads handle their own completions only on the real clock: a mock clock's
        # autojump must see every event arrive on the loop
        self._inline = type(self._clock) is SystemClock and not self._gates_on
        self.state = SupervisorState.RUNNING
        _LIVE.add(self)
        self._started_wall = datetime.now(UTC)
        try:
            for aloop in self._aloops.values():
                aloop.busy = self._now  # (MockClock.now may be read from any thread)
                await asyncio.wrap_future(aloop.start(self._sink))
            for ex in self._user_execs.values():
                await ex.open()
        except BaseException:
            await self._shutdown_executors()
            with self._engine:
                self.state = SupervisorState.CLOSED
                self._take_in(closing=True)  # (what was queued meanwhile: as if locked)
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
        for worker in self._workers:  # workers first: they never hold closing open
            worker.stop()
        with self._engine:
            self.state = SupervisorState.CLOSING
            # submits queued before are accepted work; any later is withdrawn by its
            # submitter, which raises ClosedError (see Engine._queue_in)
            self._take_in(closing=True)
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
        for worker in self._workers:  # (their runs have ended: at most a POLL's wait)
            with contextlib.suppress(asyncio.CancelledError):
                await worker.wait()
        for timer in (self._timer, self._gates.timer):
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
        for window in self._windows.values():  # (every task has ended: ended ones only)
            window.held.clear()
        checks = getattr(self._clock, "_busy_checks", None)
        if checks is not None and self._handing_over in checks:
            checks.remove(self._handing_over)

    async def _shutdown_executors(self) -> bool:
        """Join every worker thread and process off the loop; True if cancelled meanwhile."""

        def stop_all() -> None:
            for aloop in self._aloops.values():  # (also when start() failed half-way)
                aloop.stop()
            for ex in self._executors.values():
                left = ex.shutdown()
                if left:
                    warn(
                        f"{len(left)} abandoned {ex.label}(s) still running at close, not "
                        "joined: " + ", ".join(repr(n) for n in left)
                    )

        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def closer() -> None:
            try:
                stop_all()
            except BaseException as exc:  # reported to the awaiting loop
                loop.call_soon_threadsafe(set_exc, done, exc)
            else:
                loop.call_soon_threadsafe(set_result, done, None)

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
        (rec,) = self._submit([spec], sealed=False, admit=False, pinned=self._pinning)
        return TaskHandle(self, rec)

    def run(self, tasks: Iterable[Task[Any] | Callable[..., Any]]) -> AsyncIterator[TaskRes[Any]]:
        """Submit a sealed batch; iterate its results in completion order."""
        specs = _as_tasks(tasks)
        self._check_running("submit")
        loop = self._own_loop("run")
        with self._engine:  # no result may land between the submit and the listeners
            recs = self._submit(specs, sealed=True)
            stream = ResultStream(loop, len(recs))
            push = stream.push
            for rec in recs:
                if rec.res is not None:
                    push(rec)
                else:
                    rec.add_listener(push)
        return stream

    @overload
    async def call(self, task: Task[T], /) -> T: ...
    @overload
    async def call(self, task: Callable[..., Awaitable[T]], /, *args: Any, **meta: Any) -> T: ...
    @overload
    async def call(self, task: Callable[..., T], /, *args: Any, **meta: Any) -> T: ...
    async def call(self, task: Any, /, *args: Any, **meta: Any) -> Any:
        """Run one task and return its value, or raise its exception (``submit`` then
        ``await``, unwrapped).

        ``await sup.call(fetch, url, timeout=5, tier="high")`` takes what ``submit`` takes.
        A task that did not succeed raises what its ``TaskRes.error`` holds: the
        function's own exception (with its traceback), ``TaskTimeout``,
        ``TaskCancelled``, ``DependencyError`` ... Cancelling the awaiter cancels the
        task, as with an ``asyncio.Task``: the awaiter's ``CancelledError`` is raised once
        the task has ended (at once for a thread, which is abandoned; when its coroutine
        has stopped for a coroutine). On the supervisor's loop only (from another
        thread: ``submit(...).result()``).
        """
        self._own_loop("call")
        handle = self.submit(task, *args, **meta)
        try:
            res = await handle
        except asyncio.CancelledError:
            if self.state is SupervisorState.RUNNING or self.state is SupervisorState.CLOSING:
                self.cancel(handle)
            while not handle.done():  # (a cancel scope may cancel us again meanwhile)
                with contextlib.suppress(asyncio.CancelledError):
                    await handle
            raise
        if res.excinfo is not None:
            res.excinfo.reraise()
        return res.ret

    # ------------------------------------------------------------ background workers

    def every(
        self,
        seconds: float,
        fn: Callable[..., Any],
        /,
        *args: Any,
        max_failures: int | None = None,
        backoff: float | None = None,
        backoff_max: float = 60.0,
        **meta: Any,
    ) -> Worker:
        """Run ``fn(*args)`` every ``seconds`` (the first run at once), as tasks named
        ``NAME#1``, ``NAME#2``... with the Task options in ``meta`` (``name``, ``tier``,
        ``runs_on``, ``claims``, ``timeout``, ``retries`` ...). A run never overlaps the
        previous one: the next starts ``seconds`` after the previous one started, or when
        it ends if it took longer. See :class:`Worker` for failures. On the loop."""
        interval = real_number("seconds", seconds)
        if not 0 < interval < math.inf:
            raise SpecError(f"every(): seconds must be > 0, got {safe_repr(seconds)}")
        worker = self._new_worker("every", fn, args, meta, max_failures, backoff, backoff_max)

        async def body() -> None:
            while await worker._gate():
                started = self._now()
                await worker._run(())
                left = started + interval - self._now()
                if left > 0 and not worker.stopped:
                    await worker._sleep(left)

        worker._start(body)
        return worker

    def consume(
        self,
        source: Any,
        fn: Callable[..., Any],
        /,
        *args: Any,
        concurrency: int = 1,
        max_failures: int | None = None,
        backoff: float | None = None,
        backoff_max: float = 60.0,
        **meta: Any,
    ) -> Worker:
        """Run ``fn(item, *args)`` for each item of ``source`` (an ``asyncio.Queue``, a
        ``queue.Queue`` or an anyio receive stream, which ends the worker when it ends),
        at most ``concurrency`` runs at a time, in the order the items come. A queue's
        ``task_done()`` is called after each run, so ``queue.join()`` waits for them. On
        the loop."""
        if not is_source(source):
            raise SpecError(
                "consume() takes an asyncio.Queue, a queue.Queue or an anyio receive stream, "
                f"got {safe_repr(source)}"
            )
        lanes = whole_number("concurrency", concurrency, 1)
        is_queue = isinstance(source, asyncio.Queue | queue.Queue)
        worker = self._new_worker("consume", fn, args, meta, max_failures, backoff, backoff_max)

        async def lane() -> None:
            while await worker._gate():
                got, item = await next_item(source, worker)
                if not got:
                    return
                try:
                    await worker._run((item,))
                except ClosedError:
                    _put_back(source, item, worker.name)
                    raise
                finally:
                    if is_queue:  # queue.join() waits for the items consumed
                        source.task_done()

        async def body() -> None:
            await asyncio.gather(*(lane() for _ in range(lanes)))

        worker._start(body)
        return worker

    def on_event(
        self,
        event: asyncio.Event | threading.Event,
        fn: Callable[..., Any],
        /,
        *args: Any,
        max_failures: int | None = None,
        backoff: float | None = None,
        backoff_max: float = 60.0,
        **meta: Any,
    ) -> Worker:
        """Run ``fn(*args)`` each time ``event`` (an ``asyncio.Event`` or a
        ``threading.Event``) is set; the worker clears it before the run, so a set
        during a run asks for one more run. On the loop."""
        if not is_event(event):
            raise SpecError(
                f"on_event() takes an asyncio.Event or a threading.Event, got {safe_repr(event)}"
            )
        worker = self._new_worker("on_event", fn, args, meta, max_failures, backoff, backoff_max)

        async def body() -> None:
            while await worker._gate() and await wait_event(event, worker):
                await worker._run(())

        worker._start(body)
        return worker

    def _new_worker(
        self,
        kind: str,
        fn: Any,
        args: tuple[Any, ...],
        meta: dict[str, Any],
        max_failures: Any,
        backoff: Any,
        backoff_max: Any,
    ) -> Worker:
        self._own_loop(kind)
        self._check_running(kind)
        name, meta = check_worker(kind, fn, meta)
        if any(w.name == name and not w.stopped for w in self._workers):
            raise SpecError(f"{kind}(): a worker named {name!r} is running already")
        failures, pause, pause_max = worker_options(kind, max_failures, backoff, backoff_max)
        kwargs = meta.pop("kwargs", None)

        def make(n: int, first: tuple[Any, ...]) -> Task[Any]:
            return Task(fn, (*first, *args), kwargs, name=f"{name}#{n}", **meta)

        worker = Worker(
            self, name, make, max_failures=failures, backoff=pause, backoff_max=pause_max
        )
        self._workers = [w for w in self._workers if not w.stopped] + [worker]
        return worker

    def _submit_run(self, task: Task[Any]) -> TaskHandle[Any]:
        """A worker's run: a task whose failure releases its locks."""
        self._lock_releasing.add(task.name)
        try:
            return self.submit(task)
        except BaseException:
            self._lock_releasing.discard(task.name)
            raise

    async def gather(self, tasks: Iterable[Task[Any] | Callable[..., Any]]) -> RunReport:
        """Submit a sealed batch, wait for all of it, return its :class:`RunReport`.

        Cancelling the ``await`` cancels the batch's tasks that have not ended.
        """
        started, t0 = datetime.now(UTC), self._clock.now()
        specs = _as_tasks(tasks)
        self._check_running("submit")
        loop = self._own_loop("gather")
        with self._engine:  # no result may land between the submit and the listeners
            # (the countdown keeps the TaskRes, and the records only while pending)
            countdown = Countdown(loop, self._submit(specs, sealed=True))
        try:
            await countdown.done
        except asyncio.CancelledError:
            # like asyncio.gather and task groups: the caller gave up, so does the batch
            with self._engine:
                if self.state is SupervisorState.RUNNING:
                    self._execute(
                        self._planner.cancel_many(
                            countdown.pending(),
                            "gather() was cancelled",
                            now=self._now(),
                        )
                    )
            raise
        return RunReport.build(countdown.results, started, self._clock.now() - t0)

    def _own_loop(self, what: str) -> asyncio.AbstractEventLoop:
        """The supervisor's loop, for the async API (run, gather): on its own thread only."""
        loop = self._loop_or_raise()
        if threading.get_ident() != self._tid:
            raise RuntimeError(
                f"{what}() belongs to the supervisor's event loop; from another thread, "
                "submit() and wait with handle.result()"
            )
        return loop

    def _submit(
        self, specs: list[Task[Any]], *, sealed: bool, admit: bool = True, pinned: bool = False
    ) -> list[Record]:
        """``admit=False``: admit at the end of this turn of the loop. (Another thread has
        no turns: its submits are admitted at once, and its thread tasks start from the
        thread that takes them in.) ``pinned``: a :class:`TaskHandle` will hold each task
        (see ``TaskHandle.__del__``).

        A single ``submit`` from another thread that the planner cannot refuse skips the
        engine lock: it is queued, and whoever next takes the lock (the loop, woken for
        it) hands the queue to the planner as one batch (``Engine._queue_in``). With eight
        threads submitting, waiting for the engine lock was most of their time (issue 13).
        """
        # (no lock needed: the caller's thread; a built-in target needs no call)
        targets = [s.runs_on if s.runs_on in _BUILT_IN else self._target(s) for s in specs]
        on_loop = threading.get_ident() == self._tid
        if not on_loop and not sealed and len(specs) == 1 and pinned is self._pinning:
            spec = specs[0]
            if not spec.dependencies and _plain_items(spec):
                rec = self._queue_in(spec, targets[0])
                if rec is not None:
                    return [rec]
        admit = admit or not on_loop
        with self._engine:  # (entering takes in what other threads queued: see _queue_in)
            self._check_running("submit")
            now = self._now()
            if self._gates_on and on_loop:  # (its timer lives on the loop; the loop samples
                self._sample(now)  # again on every completion it takes in)
            names = [s.name for s in specs]
            # (the planner keeps these very records: one object per task)
            recs = [Record(spec, target, now) for spec, target in zip(specs, targets, strict=True)]
            token = self._reserve(names)  # (a name queued since the lock was taken: taken)
            try:
                # graph errors raise here, before anything changed
                try:
                    instrs = self._planner.submit(
                        specs, sealed=sealed, admit=admit, pinned=pinned, now=now, records=recs
                    )
                except DuplicateTaskError:
                    if not self._unpin():  # (the old task's handle may have just died)
                        raise
                    instrs = self._planner.submit(
                        specs, sealed=sealed, admit=admit, pinned=pinned, now=now, records=recs
                    )
            finally:
                self._unreserve(names, token)
            tell = self._story.extend
            for rec in recs:
                tell((now, rec.spec.name, "submitted", rec.target))
            self._events += len(specs)
            if self._instruments:
                for rec in recs:
                    self._instrument("task_submitted", self._info(rec, 0, None))
            if not admit:
                self._admit_later()
            self._execute(instrs)
            return recs

    def _target(self, spec: Task[Any]) -> str:
        on = spec.runs_on
        if on is None:
            target = self._coro_target if spec._opts.is_coroutine else "thread"
        elif on in ("thread", "process", "main"):
            target = on
        elif on == "aloop":
            if self._default_aloop is None:
                raise SpecError(f"task {spec.name!r}: runs_on='aloop' but no aloops are set up")
            target = self._coro_target
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
        if type(ex).open is not Executor.open:
            raise SpecError(
                f"task {spec.name!r}: the executor registered as {on!r} must be opened when "
                f"the supervisor starts: list it in Supervisor(executors={{{on!r}: {on!r}}})"
            )
        with self._engine:
            self._check_running("submit")
            if on not in self._user_execs:  # (else another thread created it meanwhile)
                ex.start(self._sink)
                if ex.own_resources:
                    self._planner.elsewhere[on] = ex.resource_shortfall
                self._user_execs[on] = self._executors[on] = ex
        return on

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
        supervisor. The supervisor keeps its last ``STORY_EVENTS`` events (10,000). Of a
        name used again (see ``result_buffer``), only the newest task's events.
        """
        name = task.name if isinstance(task, TaskHandle) else task
        with self._engine:
            flat, last = list(self._story), self._events
        first = last - len(flat) // 4 + 1  # the id of the oldest event kept
        mine = [i for i in range(0, len(flat), 4) if flat[i + 1] == name]
        # a reused name: only the newest task's events (from its "submitted" on)
        starts = [k for k, i in enumerate(mine) if flat[i + 2] == "submitted"]
        if starts:
            mine = mine[starts[-1] :]
        return [
            StoryEvent(first + i // 4, flat[i], name, flat[i + 2], _detail(flat[i + 3]))
            for i in mine
        ]

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
            self._unpin()  # (a task whose last handle just died is forgotten first)
            if name in self._planner:
                return self._planner.state(name)
            raise KeyError(f"no task named {name!r} in this supervisor")

    def statistics(self) -> Statistics:
        """A snapshot of queue lengths, running tasks and executors."""
        with self._engine:
            return self._statistics()

    def _statistics(self) -> Statistics:
        p = self._planner
        running = dict(self._running)
        for target, window in self._windows.items():  # (running for the planner: counted)
            if window.live:
                running[target] = running.get(target, 0) + window.live
        return Statistics(
            state=self.state,
            tasks=dict(p.stats.by_state),
            queued=dict(p.stats.queued_by_tier),
            busy_slots=p.busy,
            running=running,
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


def run(tasks: Iterable[Task[Any] | Callable[..., Any]], **options: Any) -> RunReport:
    """Run a batch from synchronous code (scripts): ``tv.run([a, b], threads=4)``.

    ``tasks``: :class:`Task` specs or plain callables, run as one sealed batch on a new
    supervisor; returns their :class:`RunReport`. ``options`` go to :class:`Supervisor`.
    Raises ``RuntimeError`` inside a running event loop: there, ``async with
    Supervisor() as sup: await sup.gather(...)``.
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


def _as_tasks(tasks: Iterable[Any]) -> list[Task[Any]]:
    """A batch (``run``, ``gather``): a Task stays as it is, without a call per task."""
    return [t if type(t) is Task else _as_task(t, (), {}) for t in tasks]


def _as_task(task: Any, args: tuple[Any, ...], meta: dict[str, Any]) -> Task[Any]:
    if isinstance(task, Task):
        if args or meta:
            raise SpecError("pass arguments and options to Task(...), not next to a Task")
        return task
    if not callable(task) and not asyncio.iscoroutine(task):
        raise SpecError(f"expected a Task or a callable, got {type(task).__name__} {task!r}")
    kwargs = meta.pop("kwargs", None)
    if not meta.keys() <= META_KEYS:  # (no new set per call unless one is unknown)
        unknown = meta.keys() - META_KEYS
        raise SpecError(
            f"{unknown_options('task', unknown, {*META_KEYS, 'kwargs'})}; pass the function's "
            "own keyword arguments as kwargs={...}"
        )
    return Task(task, args, kwargs, **meta)


def _plain_items(spec: Task[Any]) -> bool:
    """Are all its provides, claims and uses of plain types (no user ``__eq__`` that the
    planner's lookups could make raise)?"""
    opts = spec._opts
    if not (spec.provides or opts.claims or opts.uses):  # the usual: none at all
        return True
    for group in (spec.provides, opts.claims, opts.uses):
        for item in group:
            if type(item) not in _PLAIN_ITEMS:
                return False
    return True


def _put_back(source: Any, item: Any, name: str) -> None:
    """An item taken from a queue when the supervisor began closing: back into it."""
    try:
        source.put_nowait(item)
    except Exception:
        logger.warning("worker %r: closing; an item it had taken is lost: %r", name, item)
    else:
        logger.info("worker %r: closing; an item it had taken is back in its queue", name)


def _detail(value: object) -> str:
    return value.name if isinstance(value, State) else str(value)
