"""Delivery of results: the task record, handles, result streams, and the types of the
events the supervisor tells about.

The supervisor keeps one :class:`Record` per task from submission until it is forgotten,
and the planner keeps the same object as its own record of the task: the planner's
fields (the base class), its attempt machine (a mixin; the running attempt's call,
``shared`` and timer live in its ``Job``), and who waits for its :class:`TaskRes` — a
future for ``await handle``, listeners (``run()`` streams, ``gather`` counters, done
callbacks), and, in maps of the engine's, the future of an awaited handle and the event
of a ``handle.result()`` in another thread (few tasks have either: a slot for them in
every record was 8 bytes of every pending task). The engine builds the ``TaskRes``
(``Engine._deliver``) and tells them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar, cast

from ._attempts import Attempts
from ._errors import SpecError
from ._job import Job
from ._log import heard, logger
from ._planner import _DONE, State
from ._planner import _T as PlannerRecord
from ._result import TaskRes
from ._spec import Task, safe_repr

if TYPE_CHECKING:
    from ._supervisor import Supervisor

__all__ = [
    "Listener",
    "Record",
    "ResultStream",
    "StoryEvent",
    "TaskHandle",
    "TaskInfo",
    "log_result",
    "set_exc",
    "set_result",
]

T = TypeVar("T")

#: told that a task ended: called with its record, whose ``res`` is set (a ``gather``'s
#: countdown puts the result where the record's submission number says)
Listener = Callable[["Record"], None]


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


class Record(PlannerRecord, Attempts):
    """The one record of a task, from its submission until it is forgotten: the
    planner's (the base class), its attempt machine (the mixin), and what the supervisor
    keeps beside them. The engine builds it and hands it to the planner with the spec
    (``Planner.submit(records=...)``): one object per task, not one per layer (issue 13:
    every long-lived object per task costs its share of each full cyclic-GC pass)."""

    __slots__ = (
        "attempts",
        "job",
        "listeners",
        "res",
        "run_time",
        "started",
        "submitted",
        "target",
    )

    spec: Task[Any]

    def __init__(self, spec: Task[Any], target: str, now: float) -> None:
        PlannerRecord.__init__(self, spec, 0)  # (the planner numbers it at submit)
        # (Attempts' slots set here, not through its __init__: one call less per task)
        self.target = target
        self.submitted = now
        self.started: float | None = None
        self.run_time = 0.0
        self.attempts = 0
        self.res: TaskRes[Any] | None = None
        # who wants the TaskRes: None, one callable, or a list of them (one is the usual)
        self.listeners: Listener | list[Listener] | None = None
        # the running attempt, from its dispatch until the task ends: what it received
        # (``shared_in``), its call and its deadline live there, not in four slots of
        # every pending task (issue 13: W5)
        self.job: Job | None = None

    def add_listener(self, cb: Listener) -> None:
        listeners = self.listeners
        if listeners is None:
            self.listeners = cb
        elif isinstance(listeners, list):
            listeners.append(cb)
        else:
            self.listeners = [listeners, cb]


class TaskHandle(Generic[T]):
    """What ``submit`` returns (never built directly): await it for the task's
    :class:`TaskRes`.

    While a handle is alive its task stays known by name (``task_state``, ``cancel``,
    output references) and its name stays taken; once the task has ended and the handle
    is gone, the supervisor may forget the task and the name may be reused.
    """

    __slots__ = ("_rec", "_sup")

    def __init__(self, sup: Supervisor, rec: Record) -> None:
        self._sup = sup
        self._rec = rec

    def __del__(self) -> None:
        # the task may be forgotten once it has ended and nothing needs it (its name
        # reused): tell the engine, lock-free (this runs wherever the last reference died,
        # perhaps under the engine lock in this very thread)
        try:  # noqa: SIM105 (no contextlib: at interpreter exit module globals may be gone)
            self._sup._handle_gone(self._rec)
        except Exception:  # (interpreter shutdown, or a half-built handle)
            pass

    def __copy__(self) -> TaskHandle[T]:
        return self  # one handle per task: a copy would unpin it when it died

    def __deepcopy__(self, memo: Any) -> TaskHandle[T]:
        return self

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
        # No lock (eight threads waiting on the engine lock here convoyed under the GIL,
        # W7): one Event per waited task in a dict, each step one operation the GIL makes
        # atomic. _deliver sets res, then pops the entry and sets its Event; a waiter
        # puts its Event in (or gets the one there), then reads res. Whoever pops an
        # entry sets it, and pops come only after res is set: a waiter that read no res
        # put its Event in before the delivery's pop, which (or an earlier pop) sets it.
        waiters = sup._result_waiters
        waiter = waiters.get(rec)
        if waiter is None:
            waiter = waiters.setdefault(rec, threading.Event())
        if rec.res is not None:  # delivered meanwhile: its pop may have come before ours
            done = waiters.pop(rec, None)
            if done is not None:
                done.set()  # (another thread may wait on it)
        elif not waiter.wait(timeout):
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
                rec.add_listener(lambda ended: engine.after.append((fn, (ended.res,))))
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
            sup = self._sup
            with sup._engine:  # (a pool thread's _deliver reads the futures under it)
                if rec.res is None:
                    fut = sup._futures.get(rec)
                    if fut is None:
                        fut = sup._futures[rec] = sup._loop_or_raise().create_future()
                    # shielded: one awaiter cancelled (wait_for, a cancel scope) must not
                    # cancel the shared future under every other awaiter
                    waiting = asyncio.shield(fut)
            if rec.res is None:
                return (yield from waiting.__await__())
        return cast(TaskRes[T], rec.res)

    def __repr__(self) -> str:
        state = self._rec.res.state.name if self._rec.res else "pending"
        return f"<TaskHandle {self.name!r} {state}>"


class ResultStream:
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

    def push(self, rec: Record) -> None:
        """A listener (see :data:`Listener`): ``rec``'s task ended."""
        res = rec.res
        assert res is not None
        self._items.append(res)
        self._wake()

    def _wake(self) -> None:
        for w in self._waiters:
            if not w.done():
                w.set_result(None)
        self._waiters.clear()

    def __aiter__(self) -> ResultStream:
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


def log_result(res: TaskRes[Any]) -> None:
    if res.state is _DONE:
        if logger.isEnabledFor(logging.INFO):
            logger.info("%r done in %.1f ms on %s", res.name, res.run_time * 1e3, res.runs_on)
    elif res.state is State.FAILED:
        assert res.excinfo is not None
        if not heard(logging.ERROR):  # (nobody listens: no record built, see heard)
            return
        logger.error(
            "%r failed on %s: %r",
            res.name,
            res.runs_on,
            res.excinfo.val,
            exc_info=(res.excinfo.type, res.excinfo.val, res.excinfo.tb),
        )
    elif heard(logging.WARNING):
        logger.warning(
            "%r %s: %s", res.name, res.state.name.lower(), getattr(res.error, "reason", res.error)
        )


def set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def set_exc(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
