"""Run tasks on a Dask cluster: ``executors={"dask": DaskExecutor(client)}``.

Every attempt of a task is its own Dask computation, keyed ``NAME-ATTEMPT-TOKEN`` (the
token is this executor's, so two supervisors on one cluster never share a key) and
submitted with ``pure=False``: Dask never merges two tasks that make the same call, and a
retry is a new computation, never a cached answer. The function runs inside taskvisor's
:func:`~taskvisor._worker.run_pickled`, as on the process pool, so errors and tracebacks
come back the same way; the payload is pickled (``cloudpickle``) in the supervisor at
dispatch, so a payload that cannot be pickled fails its task there, with the reason.

What maps to what:

* ``tier`` and ``priority`` → one Dask priority (higher tiers first, then lower
  ``priority`` values first, as in taskvisor's own queues);
* ``resources`` → Dask worker resources. They are not counted against the supervisor's
  own ``resources=`` capacity; a need no current worker can meet ends the task with
  ``ResourceError`` at submission (``new_workers=True``: a warning, and the task waits
  in Dask for a worker that has them);
* a worker lost while running the task (Dask's ``KilledWorker``) → ``WorkerCrashed``; the
  scheduler's ``allowed-failures`` is set to ``allowed_failures`` (0 by default) when the
  supervisor starts, so Dask does not quietly re-run a task that killed its worker:
  taskvisor's ``retries`` decide;
* ``cancel`` and ``timeout`` cancel the Dask future (a function already running in a
  worker thread runs on, as Dask cannot interrupt it; its result is dropped);
* a finished task's future is released as soon as its result is in: Dask never holds
  (and never recomputes after a worker loss) the result of a task that has ended.

The workers need taskvisor installed (they import :mod:`taskvisor._worker`), as they need
your own code.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import math
import threading
import uuid
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import cloudpickle  # type: ignore[import-untyped]
from distributed import Client, KilledWorker

from ._errors import TaskvisorWarning, WorkerCrashed
from ._job import Job, Outcome
from ._result import ExceptionInfo
from ._spec import Task
from ._worker import decode, run_pickled
from .abc import CancelResult, Executor, Sink

__all__ = ["DaskExecutor"]

#: tiers are this far apart in Dask priority; a task's own ``priority`` moves it within
#: its tier (clamped to stay inside it)
TIER_STEP = 1e9


def dask_priority(task: Task[Any]) -> float:
    """Dask runs higher priorities first; taskvisor runs higher tiers first and, within a
    tier, lower ``priority`` values first."""
    within = min(max(-task.priority, -TIER_STEP / 2 + 1), TIER_STEP / 2 - 1)
    if math.isnan(within):  # (Task refuses NaN; belt and braces)
        within = 0.0
    return int(task.tier) * TIER_STEP + within


def run_payload(payload: bytes) -> tuple[Any, ...]:
    """On a Dask worker: unpickle the call and run it as the process pool does."""
    try:
        fn, args, kwargs, shared = cloudpickle.loads(payload)
    except BaseException as exc:
        from ._worker import _error_answer

        return _error_answer(exc, None, "dask worker")
    return run_pickled(fn, args, kwargs, shared)


def _set_allowed_failures(n: int, dask_scheduler: Any = None) -> int:
    old: int = dask_scheduler.allowed_failures
    dask_scheduler.allowed_failures = n
    return old


class DaskExecutor(Executor):
    """Tasks with ``runs_on=NAME`` run on the Dask cluster of ``client`` (see the module
    docstring for what maps to what).

    ``client`` is a ``distributed.Client``: an asynchronous one on the supervisor's own
    loop (``Client(address, asynchronous=True)`` inside the same ``async`` code), or a
    synchronous one from anywhere (then ``tv.run`` and :class:`BackgroundSupervisor` work
    too). ``allowed_failures``: what the scheduler's ``allowed-failures`` is set to when
    the supervisor starts (``None`` leaves it alone). ``new_workers``: a resource need no
    current worker meets waits for workers that may still join (with a warning) instead
    of ending with ``ResourceError``.
    """

    pickles = True
    kills_running = True  # cancel() cancels the Dask future; CANCELLED is reported
    own_resources = True
    label: ClassVar[str] = "Dask worker"

    def __init__(
        self, client: Client, *, allowed_failures: int | None = 0, new_workers: bool = False
    ) -> None:
        if not isinstance(client, Client):
            raise TypeError(f"DaskExecutor takes a distributed.Client, got {client!r}")
        if allowed_failures is not None and (
            isinstance(allowed_failures, bool)
            or not isinstance(allowed_failures, int)
            or allowed_failures < 0
        ):
            raise ValueError(
                f"allowed_failures must be an int >= 0 or None, got {allowed_failures!r}"
            )
        self.client: Any = client  # (distributed is only partly typed)
        self.allowed_failures = allowed_failures
        self.new_workers = new_workers
        self.token = uuid.uuid4().hex[:8]
        self._sink: Sink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._async = False  # an asynchronous client on the supervisor's loop (see open)
        self._worker_resources: list[dict[str, float]] = []
        self._lock = threading.Lock()  # the live futures, shared with Dask's callback thread
        self._live: dict[Any, Job] = {}
        self._watchers: set[asyncio.Future[Any]] = set()

    # ------------------------------------------------------------ the seam

    def start(self, sink: Sink) -> None:
        self._sink = sink

    async def open(self) -> None:
        client = self.client
        loop = asyncio.get_running_loop()
        self._loop = loop
        # (Client.asynchronous answers for the calling thread's loop: ask how it was made)
        self._async = bool(getattr(client, "_asynchronous", False))
        if self._async:
            if client.loop.asyncio_loop is not loop:
                raise RuntimeError(
                    "DaskExecutor: this asynchronous Client runs on another event loop; "
                    "create it inside the supervisor's loop, or pass a synchronous Client"
                )
            if self.allowed_failures is not None:
                await client.run_on_scheduler(_set_allowed_failures, self.allowed_failures)
            try:
                info = await client.scheduler.identity(n_workers=-1)
            except TypeError:  # (a scheduler older than n_workers: it lists them all)
                info = await client.scheduler.identity()
        else:
            info = await asyncio.to_thread(self._sync_open)
        self._worker_resources = _resources_of(info)

    def _sync_open(self) -> dict[str, Any]:
        if self.allowed_failures is not None:
            self.client.run_on_scheduler(_set_allowed_failures, self.allowed_failures)
        return self._sync_info()

    def _sync_info(self) -> dict[str, Any]:
        try:
            info: dict[str, Any] = self.client.scheduler_info(n_workers=-1)
        except TypeError:  # (a client older than n_workers: it lists them all)
            info = self.client.scheduler_info()
        return info

    def resource_shortfall(self, task: Task[Any]) -> Mapping[str, float]:
        short = self._shortfall(task.resources)
        if short and not self._async:  # a worker may have joined: look again
            with contextlib.suppress(Exception):  # (unreachable: answer from what we knew)
                self._worker_resources = _resources_of(self._sync_info())
            short = self._shortfall(task.resources)
        if short and self.new_workers:
            what = ", ".join(f"{k}={v:g}" for k, v in sorted(task.resources.items()))
            warnings.warn(
                f"task {task.name!r} needs {what}, which no current Dask worker has: "
                "it waits for a worker that has",
                TaskvisorWarning,
                stacklevel=2,
            )
            return {}
        return short

    def _shortfall(self, needs: Mapping[str, float]) -> dict[str, float]:
        """What the best-placed current worker lacks ({} if one has it all)."""
        needs = {k: v for k, v in needs.items() if v}
        if not needs:
            return {}
        best: dict[str, float] | None = None
        for w in self._worker_resources or [{}]:
            short = {k: v - w.get(k, 0.0) for k, v in needs.items() if v > w.get(k, 0.0)}
            if not short:
                return {}
            if best is None or sum(short.values()) < sum(best.values()):
                best = short
        assert best is not None
        return best

    def submit(self, job: Job) -> None:
        task = job.task
        payload = cloudpickle.dumps((job.fn, job.args, job.kwargs, job.shared))
        fut = self.client.submit(
            run_payload,
            payload,
            key=f"{job.name}-{job.attempt}-{self.token}",
            pure=False,
            retries=0,
            fifo_timeout=0,  # each submit its own generation: FIFO among equal priorities
            priority=0 if task is None else dask_priority(task),
            resources=dict(task.resources) if task is not None and task.resources else None,
        )
        job.handle = fut
        with self._lock:
            self._live[fut] = job
        if self._async:
            self._later(self._watch(job, fut))
        else:
            fut.add_done_callback(functools.partial(self._done, job))

    def cancel(self, job: Job) -> CancelResult:
        fut = job.handle
        if fut is None:
            return CancelResult.STOPPING  # (its end is being reported)
        self._later(self.client.cancel([fut], reason=job.cancelled or "cancelled by taskvisor"))
        return CancelResult.STOPPING

    def shutdown(self) -> list[str]:
        with self._lock:
            left = list(self._live)
            self._live.clear()
        for fut in left:  # (every task has ended by now: nothing needs these)
            fut.release()
        return []

    def _later(self, result: Any) -> None:
        """What a client method returned: a coroutine (asynchronous client) runs on the
        loop as a task this executor holds until it ends."""
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._watchers.add(task)
            task.add_done_callback(self._watchers.discard)

    # ------------------------------------------------------------ endings

    async def _watch(self, job: Job, fut: Any) -> None:
        """An asynchronous client: wait for the future on the supervisor's loop."""
        result: Any
        try:
            answer = await fut
        except Exception as exc:  # (distributed's FutureCancelledError is an Exception)
            if fut.status == "cancelled":
                result = (Outcome.CANCELLED, None, job.shared, None, None)
            else:
                result = self._error(job, exc)
        else:
            result = _decoded(answer)
        self._report(job, fut, result)

    def _done(self, job: Job, fut: Any) -> None:
        """A synchronous client: Dask's callback thread, once the future is done."""
        status = fut.status
        if status == "finished":
            try:
                result = _decoded(fut.result())
            except BaseException as exc:  # (the result could not be fetched)
                result = self._error(job, exc)
        elif status == "cancelled":
            result = (Outcome.CANCELLED, None, job.shared, None, None)
        else:
            result = self._error(job, fut.exception())
        self._report(job, fut, result)

    def _error(self, job: Job, exc: BaseException | None) -> Any:
        if isinstance(exc, KilledWorker):
            exc = WorkerCrashed(job.name, None, None)
        elif exc is None:
            exc = RuntimeError("the Dask future ended without a result")
        return (Outcome.ERROR, None, job.shared, ExceptionInfo.from_exc(exc), None)

    def _report(self, job: Job, fut: Any, result: Any) -> None:
        with self._lock:
            if self._live.pop(fut, None) is None:
                return  # (reported already, or the executor shut down)
        job.handle = None
        fut.release()  # nothing needs it any more: Dask may forget the result now
        assert self._sink is not None
        self._sink(job, result)


def _decoded(answer: tuple[Any, ...]) -> Any:
    ok, ret, shared, excinfo, worker = decode(answer)
    if ok:
        return (Outcome.OK, ret, shared, None, worker)
    return (Outcome.ERROR, None, shared, excinfo, worker)


def _resources_of(info: Mapping[str, Any]) -> list[dict[str, float]]:
    return [dict(w.get("resources") or {}) for w in info.get("workers", {}).values()]
