"""Background workers (atasker's interval, queue and event workers) on a supervisor.

``sup.every(seconds, fn)``, ``sup.consume(queue, fn)`` and ``sup.on_event(event, fn)``
each start a driver coroutine on the supervisor's loop. Every run is an ordinary task
named ``NAME#N`` with its own ``TaskRes`` (tier, ``runs_on``, locks, timeout, retries:
the usual options); what is particular to a run:

- a failed run releases its locks (a worker's next run must not find them held for
  ever, as a failed task's locks otherwise are: see the guide, "Failure");
- a failed run never stops the worker, unless ``max_failures`` failures come in a row;
  ``backoff`` seconds (doubling, up to ``backoff_max``) are waited after each failure;
- an interval worker never overlaps itself: the next run starts ``seconds`` after the
  previous one started, or when it ends if it took longer;
- closing the supervisor stops its workers first (a run in progress is waited for, or
  cancelled, like any task), so a worker never holds ``aclose`` open.

Waiting on a ``queue.Queue`` or a ``threading.Event`` happens in a helper thread that
looks again every ``POLL`` seconds for a stop (they have no way to be woken otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue as stdlib_queue
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ._errors import ClosedError, SpecError
from ._log import logger
from ._result import TaskRes
from ._spec import META_KEYS, Task, real_number, safe_repr, unknown_options, whole_number

if TYPE_CHECKING:
    from ._supervisor import Supervisor

__all__ = ["POLL", "Worker"]


POLL = 0.1  # seconds: how often a thread blocked on a stdlib queue or event looks for a stop


class Worker:
    """A background worker's handle, returned by ``every``, ``consume`` or ``on_event``
    (never built directly: their options are its own). Its methods work from any
    thread."""

    def __init__(
        self,
        sup: Supervisor,
        name: str,
        make: Callable[[int, tuple[Any, ...]], Task[Any]],
        *,
        max_failures: int | None,
        backoff: float | None,
        backoff_max: float,
    ) -> None:
        self.name = name
        self._sup = sup
        self._make = make
        self._numbers = itertools.count(1)
        self.max_failures = max_failures
        self.backoff = backoff
        self.backoff_max = backoff_max
        #: runs started
        self.runs = 0
        #: runs that did not succeed
        self.failures = 0
        #: failed runs since the last one that succeeded
        self.failures_in_a_row = 0
        #: the last run's result
        self.last: TaskRes[Any] | None = None
        self._stop = threading.Event()
        self._resumed = threading.Event()
        self._resumed.set()
        self._driver: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None

    # ------------------------------------------------------------ control

    @property
    def stopped(self) -> bool:
        """Asked to stop (or stopped)."""
        return self._stop.is_set()

    def stop(self) -> None:
        """No new runs (a run in progress goes on to its end)."""
        self._stop.set()
        self._resumed.set()
        self._poke()

    def pause(self) -> None:
        """No new runs until :meth:`resume`."""
        self._resumed.clear()

    def resume(self) -> None:
        """Undo :meth:`pause`: the worker runs again on its next trigger."""
        self._resumed.set()
        self._poke()

    def _poke(self) -> None:
        loop, wake = self._sup._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # (the loop is closing)
                loop.call_soon_threadsafe(wake.set)

    async def wait(self) -> None:
        """Until the worker has stopped (its driver has ended)."""
        if self._driver is not None:
            await asyncio.shield(self._driver)

    def __repr__(self) -> str:
        state = "stopped" if self.stopped else "running"
        return f"<Worker {self.name!r} {state}, {self.runs} runs, {self.failures} failed>"

    # ------------------------------------------------------------ driving

    def _start(self, body: Callable[[], Awaitable[None]]) -> None:
        self._wake = asyncio.Event()

        async def drive() -> None:
            try:
                await body()
            except asyncio.CancelledError:
                pass
            except ClosedError:
                pass  # the supervisor is closing: no new runs
            except Exception:  # a taskvisor bug: say so, never silently
                logger.critical(
                    "background worker %r stopped on an error", self.name, exc_info=True
                )
            finally:
                self._stop.set()

        self._driver = asyncio.get_running_loop().create_task(drive(), name=f"worker {self.name}")

    async def _gate(self) -> bool:
        """Wait while paused; False once stopped."""
        while not self._resumed.is_set() and not self._stop.is_set():
            assert self._wake is not None
            self._wake.clear()
            await self._wake.wait()
        return not self._stop.is_set()

    async def _run(self, args: tuple[Any, ...]) -> None:
        """One run, to its end; then the failure rules."""
        sup = self._sup
        task = self._make(next(self._numbers), args)
        self.runs += 1
        handle = sup._submit_run(task)
        try:
            res = await handle
        finally:
            sup._lock_releasing.discard(task.name)  # (a run that never ran leaves none)
        self.last = res
        if res.ok:
            self.failures_in_a_row = 0
            return
        self.failures += 1
        self.failures_in_a_row += 1
        if self.max_failures is not None and self.failures_in_a_row >= self.max_failures:
            logger.error(
                "background worker %r stopped after %d failed runs in a row",
                self.name,
                self.failures_in_a_row,
            )
            self.stop()
            return
        if self.backoff is not None:
            delay = min(self.backoff * 2 ** (self.failures_in_a_row - 1), self.backoff_max)
            await self._sleep(delay)

    async def _sleep(self, seconds: float) -> None:
        """``seconds`` on the supervisor's clock (a MockClock in tests), cut short by a
        stop."""
        sup = self._sup
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        wake = self._wake
        wake.clear()
        timer = sup._clock.call_at(loop, sup._now() + seconds, wake.set)
        try:
            while not wake.is_set():
                await wake.wait()
        finally:
            timer.cancel()


def check_options(kind: str, fn: Any, meta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The worker's own options out of ``meta``; the rest are Task options (checked by
    building one Task here, in the caller's thread)."""
    if not callable(fn):
        raise SpecError(f"{kind}() needs a callable, got {safe_repr(fn)}")
    name = meta.pop("name", None)
    if name is None:
        name = getattr(fn, "__qualname__", None) or type(fn).__name__
    if not isinstance(name, str) or not name:
        raise SpecError(f"{kind}(): name must be a non-empty string, got {safe_repr(name)}")
    unknown = set(meta) - META_KEYS - {"kwargs"}
    if unknown:
        known = {*META_KEYS, "kwargs", *WORKER_OPTIONS}
        raise SpecError(f"{kind}(): {unknown_options('worker', unknown, known)}")
    Task(fn, (), meta.get("kwargs"), **{k: v for k, v in meta.items() if k != "kwargs"})
    return name, meta


#: the workers' own options (for "did you mean"), beside the task options
WORKER_OPTIONS = ("max_failures", "backoff", "backoff_max", "concurrency")


def worker_options(
    kind: str, max_failures: Any, backoff: Any, backoff_max: Any
) -> tuple[int | None, float | None, float]:
    if max_failures is not None:
        max_failures = whole_number("max_failures", max_failures, 1)
    if backoff is not None:
        backoff = real_number("backoff", backoff)
        if not 0 < backoff < float("inf"):
            raise SpecError(f"{kind}(): backoff must be seconds > 0 or None, got {backoff!r}")
    backoff_max = real_number("backoff_max", backoff_max)
    if not 0 < backoff_max < float("inf"):
        raise SpecError(f"{kind}(): backoff_max must be seconds > 0, got {backoff_max!r}")
    return max_failures, backoff, backoff_max


async def next_item(source: Any, worker: Worker) -> tuple[bool, Any]:
    """The next item of an ``asyncio.Queue``, a ``queue.Queue`` or an anyio receive
    stream: ``(True, item)``, or ``(False, None)`` once the worker stops or the stream
    ends."""
    if isinstance(source, asyncio.Queue):
        if not source.empty():  # (the common case under load: no waiting machinery)
            return True, source.get_nowait()
        getter = asyncio.ensure_future(source.get())
        stopper = asyncio.ensure_future(_stopped(worker))
        done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            stopper.cancel()
            return True, getter.result()
        getter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await getter
        return False, None
    if isinstance(source, stdlib_queue.Queue):

        def get() -> tuple[bool, Any]:
            while not worker.stopped:
                try:
                    return True, source.get(timeout=POLL)
                except stdlib_queue.Empty:
                    continue
            return False, None

        return await asyncio.to_thread(get)
    # an anyio receive stream (anything with an async receive())
    import anyio

    nowait = getattr(source, "receive_nowait", None)
    if nowait is not None:
        try:
            return True, nowait()
        except anyio.WouldBlock:
            pass
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return False, None

    receiver = asyncio.ensure_future(source.receive())
    stopper = asyncio.ensure_future(_stopped(worker))
    done, _ = await asyncio.wait({receiver, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if receiver in done:
        stopper.cancel()
        try:
            return True, receiver.result()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return False, None
    receiver.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await receiver
    return False, None


async def wait_event(event: Any, worker: Worker) -> bool:
    """Until ``event`` (asyncio or threading) is set (then cleared, True) or the worker
    stops (False)."""
    if isinstance(event, asyncio.Event):
        waiter = asyncio.ensure_future(event.wait())
        stopper = asyncio.ensure_future(_stopped(worker))
        done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if waiter in done:
            stopper.cancel()
            event.clear()
            return True
        waiter.cancel()
        return False

    def wait() -> bool:
        while not worker.stopped:
            if event.wait(POLL):
                event.clear()
                return True
        return False

    return await asyncio.to_thread(wait)


async def _stopped(worker: Worker) -> None:
    while not worker.stopped:
        assert worker._wake is not None
        worker._wake.clear()
        await worker._wake.wait()


def is_source(value: Any) -> bool:
    return isinstance(value, asyncio.Queue | stdlib_queue.Queue) or callable(
        getattr(value, "receive", None)
    )


def is_event(value: Any) -> bool:
    return isinstance(value, asyncio.Event | threading.Event)
