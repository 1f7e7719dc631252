"""``BackgroundSupervisor``: a supervisor on a thread and event loop of its own, for
threaded programs (a Flask app, a worker daemon, a script).

The loop and its thread come from anyio's blocking portal
(``anyio.from_thread.start_blocking_portal``): the supervisor is started and closed on
it, and the async parts of the API (``gather``, ``run``, ``call``, closing) are called
through ``portal.call``, which blocks the calling thread until the coroutine on the loop
is done. Everything else (``submit``, ``cancel``, ``provide``, ``pause``, ...) is the
supervisor's own any-thread API, called directly: no hop through the portal.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from collections.abc import Callable, Generator, Hashable, Iterable, Iterator
from types import FrameType, TracebackType
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._delivery import StoryEvent, TaskHandle
from ._engine import SupervisorState
from ._errors import ClosedError, SpecError
from ._executors import Aloop
from ._log import logger
from ._planner import State
from ._result import RunReport, TaskRes
from ._spec import Task
from ._supervisor import Statistics, Supervisor
from ._workers import Worker

__all__ = ["BackgroundSupervisor"]

T = TypeVar("T")

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class BackgroundSupervisor:
    """A :class:`Supervisor` running on its own thread and event loop; every method is a
    plain blocking call, usable from any thread.

    .. code-block:: python

        with tv.BackgroundSupervisor(threads=8, grace=10.0) as sup:
            h = sup.submit(resize, path, tier="high")    # from any thread
            res = h.result(timeout=5)                    # a TaskRes
            value = sup.call(resize, other)              # the value, or the exception
            report = sup.gather([a, b, c])               # a RunReport

    ``options`` are :class:`Supervisor`'s (checked here, in the calling thread).
    ``grace``: how long leaving the block waits for running work before it cancels the
    rest (``None``: as long as it takes). ``handle_signals=True`` (from the main thread
    only) turns SIGTERM and SIGINT into a graceful stop: no new work, ``grace`` seconds
    for the running work, then it is cancelled, the supervisor closes, and the signal is
    delivered again to the handler that was there before (the default ends the process;
    SIGINT's raises ``KeyboardInterrupt``).
    """

    def __init__(self, *, handle_signals: bool = False, **options: Any) -> None:
        if not isinstance(handle_signals, bool):
            raise SpecError(f"handle_signals must be a bool, got {handle_signals!r}")
        self._sup = Supervisor(**options)  # every option checked here, in this thread
        self._use_uvloop = options.get("uvloop", True)
        self._handle_signals = handle_signals
        self._portal: BlockingPortal | None = None
        self._portal_cm: contextlib.AbstractContextManager[BlockingPortal] | None = None
        self._previous: dict[int, Any] = {}
        self._closing = threading.Lock()  # one close at a time (a signal and __exit__)
        self._stopping = False  # a signal asked for a graceful stop
        # the stop thread hands the signal back to the main thread until it is taken
        self._handed = threading.Event()
        self._hand = threading.Lock()  # a hand-back is sent, or taken, never both at once
        self._report: RunReport | None = None

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> BackgroundSupervisor:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(cancel=exc_type is not None)

    def start(self) -> None:
        """Start the loop's thread and the supervisor on it (``with`` calls it)."""
        if self._portal is not None or self._sup.state is not SupervisorState.CREATED:
            raise ClosedError(self._sup.state.value, "start")
        if self._handle_signals and threading.current_thread() is not threading.main_thread():
            raise RuntimeError("handle_signals=True needs start() in the main thread")
        cm = start_blocking_portal(
            "asyncio",
            backend_options={"use_uvloop": bool(self._use_uvloop)},
            name="taskvisor-supervisor",
        )
        portal = cm.__enter__()
        try:
            portal.call(self._sup.start)
        except BaseException:
            cm.__exit__(None, None, None)
            raise
        self._portal, self._portal_cm = portal, cm
        if self._handle_signals:
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def close(self, wait: bool | float | None = None, cancel: bool = False) -> RunReport:
        """Stop accepting work, wait for what is pending (``wait``: as ``aclose``; the
        default is ``grace``), stop the executors and the loop's thread. Returns the
        report of the tasks that were pending; closing again returns the same report."""
        with self._closing:
            if self._report is not None:
                return self._report
            if self._portal is None:  # never started
                self._report = RunReport.build((), self._sup._started_wall, 0.0)
                return self._report
            if wait is None:
                wait = True if self._sup._grace is None else self._sup._grace
            try:
                self._report = self._portal.call(
                    functools.partial(self._sup.aclose, wait=wait, cancel=cancel)
                )
            finally:
                assert self._portal_cm is not None
                self._portal_cm.__exit__(None, None, None)
                self._restore_signals()
            return self._report

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM/SIGINT (in the main thread). The first: close gracefully on a helper
        thread (the main thread goes on with its work meanwhile), which then raises the
        signal again. The second (that one, or the user's second Ctrl-C): put the
        previous handlers back and hand the signal to them."""
        if self._stopping:
            with self._hand:  # no hand-back is sent after this
                if self._handed.is_set():
                    return  # one sent as this one was taken: the signal is handed back
                self._handed.set()
            self._restore_signals()
            signal.raise_signal(signum)
            return
        self._stopping = True
        logger.warning(
            "%s: stopping gracefully (grace %s s)", signal.Signals(signum).name, self._sup._grace
        )
        threading.Thread(
            target=self._stop_and_hand_back,
            args=(signum,),
            name="taskvisor-signal-stop",
            daemon=True,
        ).start()

    def _stop_and_hand_back(self, signum: int) -> None:
        """Close, then send the signal again to the main thread (raise_signal would hit
        this thread) until its handler has taken it.

        Once is not enough: Python runs a handler between bytecodes, and a signal that
        arrives just before the main thread enters a blocking call (``time.sleep``, a
        lock) is noted but does not interrupt it: the handler would wait for the call
        to return (a hang of its length). Each resend interrupts the call; resends stop
        as the handler takes one (``_hand`` orders the two).
        """
        try:
            self.close()
        finally:
            main = threading.main_thread().ident
            assert main is not None
            wait = 0.05
            while not self._handed.is_set():
                with self._hand:
                    if not self._handed.is_set():
                        signal.pthread_kill(main, signum)
                self._handed.wait(wait)
                wait = min(wait * 2, 1.0)

    def _restore_signals(self) -> None:
        """Put the previous handlers back (main thread only: from another thread they stay
        until the next signal, which then restores them)."""
        if self._previous and threading.current_thread() is threading.main_thread():
            for sig, previous in self._previous.items():
                signal.signal(sig, previous)
            self._previous.clear()

    # ------------------------------------------------------------ the API

    @property
    def supervisor(self) -> Supervisor:
        """The :class:`Supervisor` itself, for code running on its loop."""
        return self._sup

    @property
    def state(self) -> SupervisorState:
        """The supervisor's state."""
        return self._sup.state

    def submit(self, task: Any, /, *args: Any, **meta: Any) -> TaskHandle[Any]:
        """As :meth:`Supervisor.submit`; wait with ``handle.result(timeout)``."""
        return self._sup.submit(task, *args, **meta)

    def call(self, task: Any, /, *args: Any, **meta: Any) -> Any:
        """One task: its value, or its exception raised (blocks the calling thread)."""
        return self._portal_or_raise("call").call(
            functools.partial(self._sup.call, task, *args, **meta)
        )

    def gather(self, tasks: Iterable[Task[Any] | Callable[..., Any]]) -> RunReport:
        """A sealed batch: wait for all of it, return its :class:`RunReport`."""
        batch = list(tasks)
        report: RunReport = self._portal_or_raise("gather").call(self._sup.gather, batch)
        return report

    def run(self, tasks: Iterable[Task[Any] | Callable[..., Any]]) -> Iterator[TaskRes[Any]]:
        """A sealed batch; its results as they end (a blocking iterator)."""
        portal = self._portal_or_raise("run")
        batch = list(tasks)
        stream = portal.call(self._sup.run, batch)
        return _results(portal, stream.__anext__)

    def every(self, seconds: float, fn: Callable[..., Any], /, *args: Any, **meta: Any) -> Worker:
        """As :meth:`Supervisor.every` (the worker runs on the supervisor's loop)."""
        every = functools.partial(self._sup.every, seconds, fn, *args, **meta)
        worker: Worker = self._portal_or_raise("every").call(every)
        return worker

    def consume(self, source: Any, fn: Callable[..., Any], /, *args: Any, **meta: Any) -> Worker:
        """As :meth:`Supervisor.consume` (a ``queue.Queue`` fed by your threads)."""
        consume = functools.partial(self._sup.consume, source, fn, *args, **meta)
        worker: Worker = self._portal_or_raise("consume").call(consume)
        return worker

    def on_event(self, event: Any, fn: Callable[..., Any], /, *args: Any, **meta: Any) -> Worker:
        """As :meth:`Supervisor.on_event` (a ``threading.Event`` set by your threads)."""
        on_event = functools.partial(self._sup.on_event, event, fn, *args, **meta)
        worker: Worker = self._portal_or_raise("on_event").call(on_event)
        return worker

    def cancel(self, task: str | TaskHandle[Any]) -> None:
        """As :meth:`Supervisor.cancel`."""
        self._sup.cancel(task)

    def provide(self, item: Hashable) -> None:
        """As :meth:`Supervisor.provide`."""
        self._sup.provide(item)

    def pause(self) -> None:
        """As :meth:`Supervisor.pause`."""
        self._sup.pause()

    def resume(self) -> None:
        """As :meth:`Supervisor.resume`."""
        self._sup.resume()

    def task_state(self, task: str | TaskHandle[Any]) -> State:
        """As :meth:`Supervisor.task_state`."""
        return self._sup.task_state(task)

    def statistics(self) -> Statistics:
        """As :meth:`Supervisor.statistics`."""
        return self._sup.statistics()

    def story(self, task: str | TaskHandle[Any]) -> list[StoryEvent]:
        """As :meth:`Supervisor.story`."""
        return self._sup.story(task)

    def report(self) -> RunReport:
        """As :meth:`Supervisor.report`."""
        return self._sup.report()

    def aloop(self, name: str = "default") -> Aloop:
        """As :meth:`Supervisor.aloop`."""
        return self._sup.aloop(name)

    def _portal_or_raise(self, what: str) -> BlockingPortal:
        portal = self._portal
        if portal is None or self._report is not None:
            raise ClosedError(self._sup.state.value, what)
        return portal

    def __repr__(self) -> str:
        return f"<BackgroundSupervisor {self._sup.state.value}>"


def _results(portal: BlockingPortal, anext: Callable[[], Any]) -> Generator[TaskRes[Any]]:
    while True:
        try:
            yield portal.call(anext)
        except StopAsyncIteration:
            return
