"""Run tasks on a Dask cluster: ``executors={"dask": DaskExecutor(client)}``.

Every attempt of a task is its own Dask computation, keyed ``NAME-ATTEMPT-TOKEN-N`` (the
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
  worker thread runs on, as Dask cannot interrupt it; its result is dropped), and with
  ``isolate=True`` stop it: its child process is killed and the worker thread is free;
* a finished task's future is released as soon as its result is in: Dask never holds
  (and never recomputes after a worker loss) the result of a task that has ended;
* small tasks dispatched together (same Dask priority, no ``resources``) go as fewer Dask
  tasks, each running a batch on one worker (:func:`run_batch`); the size adapts to the
  time per task measured on the workers (see ``DaskExecutor``, and the "Scaling out" page).

``DaskExecutor(client, keep_remote=True)``: values stay on the cluster. Each task goes alone
as one Dask task (:func:`run_remote`) whose result is the value, which Dask keeps on the
worker. The small part taskvisor needs (the *answer*: ok or the error with its traceback,
the ``shared`` dict, the worker) comes back as a Dask event, ``(key, answer)``, on a topic
of this executor's (``Worker.log_event``; the client subscribes before the first task is
sent and the handler runs on the client's loop). The worker sends the event before it
reports the task done, on the same stream, so the answer is usually in when the future
is seen done; if not, the finished future waits for it (parked). No second Dask task, no
fetch per task. The task's ``TaskRes.ret`` is then a :class:`Remote` holding the future:
passed on to another Dask task it travels as that future (Dask moves the value worker to
worker, the task receives the value), passed to any other task it arrives as the
``Remote`` itself, and it is released when the last reference to it goes. Batching is off
in this mode (a batch's values would live and die together). When the supervisor closes
the topic is unsubscribed and dropped from the scheduler (which keeps a topic's last
events, up to ``distributed.admin.low-level-log-length``).

How a ``Remote`` reaches the worker: the payload is pickled with a pickler whose
``persistent_id`` turns each ``Remote`` (anywhere in the arguments: top level, nested in
containers, inside an object) into a slot number; the futures go to ``client.submit`` as a
separate list argument, which Dask resolves into their values on the worker, and the
worker's unpickler fills each slot with its value. Tried only when the plain pickle fails
(a ``Remote`` refuses to be pickled): tasks without one pay nothing.

``DaskExecutor(client, isolate=True)``: each task runs in a child process of its worker
(:mod:`taskvisor._child`: started with ``subprocess``, as a nanny's worker is a daemonic
process that ``multiprocessing`` refuses children to; one per worker thread, kept for the
next task). The worker thread hands it the call and waits. A task that kills its process
costs the child, not the worker: it ends ``WorkerCrashed`` naming the worker, the child's
pid and exit code, the rest of its batch goes on, and the worker keeps its other tasks and
the values it holds. A worker plugin (``_Isolation``) is told when Dask releases a key
that is executing (our cancel, our timeout) and kills the child running it, so the
thread waiting for it is free at once; a task cancelled inside a running batch is
stopped on the workers by name (``client.run``), the rest of its batch goes on. A task
with a ``timeout`` goes alone (not in a batch). The child leads a process group, and a
kill takes the group: what the task started goes too. The plugin is registered once per
cluster (one name, idempotent) and stays: taking it off at a supervisor's close could
overtake the release of a task cancelled just before. At close the workers' idle
children stop. Cost: one round trip to the child per task (numbers in
``benchmarks/README.md``); the child imports :mod:`taskvisor._dask_worker`, not
``distributed``.

The workers need taskvisor installed (they import :mod:`taskvisor._worker`), as they need
your own code.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import itertools
import math
import os
import pickle
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any, ClassVar, NoReturn

import cloudpickle  # type: ignore[import-untyped]
from distributed import Client, KilledWorker
from distributed.diagnostics.plugin import WorkerPlugin

from ._child import Child, ChildDied, ChildError
from ._dask_worker import run_kept, run_payload
from ._errors import WorkerCrashed, warn_user
from ._job import Job, Outcome
from ._log import logger
from ._result import ExceptionInfo
from ._spec import Task, Tier, safe_repr
from ._worker import _error_answer, decode
from .abc import CancelResult, Executor, Sink

__all__ = ["DaskExecutor", "Remote"]


#: an adaptive batch aims at about this many seconds of work per Dask task
BATCH_SECONDS = 0.05
#: and holds at most this many tasks
MAX_BATCH = 1000
#: before anything is measured, one task goes ahead alone; the rest of its burst waits for
#: its timing at most this long
PROBE_WAIT = 0.05

_CHAINED = object()  # (a job's place in DaskExecutor._jobs while it waits to be resent)

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


def run_batch(
    payloads: list[bytes], values: list[Any] | None = None
) -> tuple[list[tuple[Any, ...]], float]:
    """On a Dask worker: run each call in turn (one failing never stops the others);
    their answers and the seconds the whole batch took. ``values``: what Dask made of the
    futures of the :class:`Remote` arguments."""
    t0 = time.perf_counter()
    answers = [run_payload(p, values) for p in payloads]
    return answers, time.perf_counter() - t0


def run_remote(
    key: str, topic: str, name: str, isolate: bool, payload: bytes, values: list[Any]
) -> Any:
    """On a Dask worker (``keep_remote=True``): run the call (in a child process with
    ``isolate``), tell the client its answer as an event on ``topic`` (``(key, answer)``),
    and return the value (``None`` if the call failed), which Dask keeps on this worker."""
    if isolate:
        answer, value = run_kept_isolated(key, name, payload, values)
    else:
        answer, value = run_kept(payload, values)
    from distributed import get_worker  # (only here: the child never imports distributed)

    get_worker().log_event(topic, (key, answer))
    return value


def _item(value: Any, key: Any) -> Any:
    """On a Dask worker: ``value[key]`` (a projection of a :class:`Remote`)."""
    return value[key]


# ------------------------------------------------------------ isolate=True, on a worker
#
# Each worker thread that runs a task takes an idle child process of this worker's (or
# starts one) and hands it each call; the child is registered under the Dask key and the
# task name it runs. Two ways to stop a call, both from the worker's loop thread:
# * Dask releases a key while it executes (a cancel or timeout of a task sent alone, a
#   whole batch released): the worker's plugin (_Isolation) dooms the key and kills its
#   child; the thread raises at once (Dask drops the error of a cancelled task) and runs
#   nothing more of the batch. The key stays doomed until Dask says its thread returned
#   (a transition out of "cancelled"), so a thread that had not taken a child yet never
#   starts one.
# * one task of a running batch is cancelled: the executor asks the workers
#   (``client.run(_stop_call, key, name)``) to kill the child if it runs that call, or to
#   skip the call if it has not started; the rest of the batch goes on.
# A child whose task killed it is the task's WorkerCrashed; the worker itself lives on.
# The plugin is registered once per cluster under one name and stays (unregistering it
# at a supervisor's close could overtake the release of a task cancelled just before).

_children = threading.Lock()  # the four below (worker threads and the worker's loop)
_idle: list[Child] = []
_running: dict[str, tuple[Child, str]] = {}  # Dask key -> the child and the task it runs
_doomed: set[str] = set()  # keys released while executing, until their thread returned
_skipped: dict[str, set[str]] = {}  # key -> names of calls cancelled before they started


class _Stopped(RuntimeError):
    """Raised by a computation whose key Dask released (Dask drops it: it was cancelled)."""


def run_isolated(
    key: str, names: list[str], payloads: list[bytes], values: list[Any] | None = None
) -> tuple[list[tuple[Any, ...]], float]:
    """On a Dask worker (``isolate=True``): :func:`run_batch`, each call in a child
    process (one child for the batch, a new one after a call that killed it)."""
    t0 = time.perf_counter()
    answers = []
    try:
        for name, payload in zip(names, payloads, strict=True):
            value, error = _in_child(key, name, run_payload, payload, values)
            answers.append(error if error is not None else value)
    finally:
        with _children:
            _skipped.pop(key, None)
    return answers, time.perf_counter() - t0


def run_kept_isolated(
    key: str, name: str, payload: bytes, values: list[Any]
) -> tuple[tuple[Any, ...], Any]:
    """On a Dask worker (``isolate=True, keep_remote=True``): :func:`run_kept` in a
    child process; the value comes back to the worker, where Dask keeps it."""
    value, error = _in_child(key, name, run_kept, payload, values)
    return (error, None) if error is not None else value


def _in_child(
    key: str, name: str, fn: Callable[..., Any], *args: Any
) -> tuple[Any, tuple[Any, ...] | None]:
    """``(fn(*args), None)`` run in a child of this worker's, or ``(None, error answer)``
    if the child died with it (``WorkerCrashed``), the call was cancelled, or it could not
    be sent or answered. Raises :class:`_Stopped` if the key was released. A child found
    dead before it got the call is replaced once."""
    where = _where()
    for fresh in (False, True):
        child = _take(key, name)
        if child is None:  # (cancelled before it could start)
            return None, _error_answer(_stopped(name), None, where)
        try:
            value = child.call(fn, *args)
        except ChildDied as died:
            _give_back(key, child)
            at = f"{where}, pid {died.pid}"
            if died.killed:
                return None, _error_answer(_stopped(name), None, at)
            if died.sent or fresh:
                crashed = WorkerCrashed(name, died.exitcode, died.pid, where)
                return None, _error_answer(crashed, None, at)
            continue
        except ChildError as err:  # (the child lives on)
            _give_back(key, child)
            failed = RuntimeError(f"task {name!r} in a child process: {err.text}")
            return None, _error_answer(failed, None, f"{where}, pid {child.pid}")
        except BaseException:
            _give_back(key, child)
            raise
        _give_back(key, child)
        answer = value[0] if fn is run_kept else value
        named = (*answer[:-1], f"{where}, {answer[-1]}")  # "Dask worker tcp://..., pid 42"
        return ((named, value[1]) if fn is run_kept else named), None
    raise AssertionError("unreachable")  # pragma: no cover


def _stopped(name: str) -> BaseException:
    return RuntimeError(f"task {name!r} was stopped: it was cancelled (or timed out)")


def _where() -> str:
    try:
        from distributed import get_worker

        return f"Dask worker {get_worker().address}"
    except Exception:  # (not on a worker: called directly)
        return f"process {os.getpid()}"


def _take(key: str, name: str) -> Child | None:
    """An idle live child (or a new one) registered as running ``name`` of ``key``; None
    if that call was cancelled before it started. Raises :class:`_Stopped` if ``key`` was
    released."""

    def check() -> bool:  # (under _children)
        if key in _doomed:
            raise _Stopped(f"Dask released {key!r}")
        skipped = _skipped.get(key)
        return skipped is None or name not in skipped

    child = None
    dead = []
    with _children:
        if not check():
            return None
        while _idle and child is None:
            child = _idle.pop()
            if not child.alive():
                dead.append(child)
                child = None
    for gone in dead:
        gone.stop()
    if child is None:
        child = Child()
    with _children:
        try:
            go = check()  # (released, or cancelled, while the child started)
        except _Stopped:
            _idle.append(child)
            raise
        if not go:
            _idle.append(child)
            return None
        _running[key] = (child, name)
    return child


def _give_back(key: str, child: Child) -> None:
    """``key`` is done with ``child``: idle again, unless it died or was killed. Raises
    :class:`_Stopped` if ``key`` was released meanwhile (the rest of its batch goes)."""
    with _children:
        _running.pop(key, None)
        keep = not child.killed and child.alive()
        if keep:
            _idle.append(child)
        doomed = key in _doomed
    if not keep:
        child.stop()
    if doomed:
        raise _Stopped(f"Dask released {key!r}")


def _release_running(key: str) -> None:
    """Dask released ``key`` while it was executing (the worker's loop): doom it, and
    kill its child if one runs it."""
    with _children:
        _doomed.add(key)
        running = _running.pop(key, None)
        if running is not None:
            running[0].kill()


def _stop_call(key: str, name: str, dask_worker: Any = None) -> None:
    """On every worker (``client.run``, the worker's loop): the task ``name`` of the batch
    ``key`` was cancelled. Kill the child if it runs that call now; skip it if the batch
    is on this worker and the call has not started."""
    with _children:
        running = _running.get(key)
        if running is not None and running[1] == name:
            del _running[key]
            running[0].kill()
            return
        ts = None if dask_worker is None else dask_worker.state.tasks.get(key)
        if ts is not None and ts.state not in ("memory", "error", "released", "forgotten"):
            _skipped.setdefault(key, set()).add(name)


def _stop_idle() -> None:
    """On every worker, when a supervisor closes: stop the idle children (a busy one
    goes back to idle when its thread is done, and ends with the worker)."""
    with _children:
        idle = _idle[:]
        _idle.clear()
    for child in idle:
        child.stop()


class _Isolation(WorkerPlugin):
    """On each worker (``isolate=True``): a task released while it executes has its child
    process killed, which frees the worker thread that waited for it."""

    name = "taskvisor-isolate"
    idempotent = True  # (registered by every isolate executor: once is enough)

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if not isinstance(key, str):
            return
        if start in ("executing", "long-running") and finish in ("released", "cancelled"):
            _release_running(key)
        elif start == "cancelled":  # (its thread has returned: nothing to kill any more)
            with _children:
                _doomed.discard(key)

    def teardown(self, worker: Any) -> None:
        _stop_idle()


class _Lifter(cloudpickle.Pickler):  # type: ignore[misc]
    """The supervisor's pickler of a payload with :class:`Remote` arguments: each one
    (anywhere) becomes a slot number, its future goes into ``futures``."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.futures: list[Any] = []
        self._slots: dict[int, int] = {}
        self._held: list[Remote] = []  # (alive while pickling: their ids stay theirs)

    def persistent_id(self, obj: Any) -> int | None:
        if type(obj) is not Remote:
            return None
        slot = self._slots.get(id(obj))
        if slot is None:
            slot = self._slots[id(obj)] = len(self.futures)
            self.futures.append(obj._live())
            self._held.append(obj)
        return slot


def _dumps(call: tuple[Any, ...]) -> tuple[bytes, list[Any]]:
    """The pickled call and the futures of the :class:`Remote` objects in it (most calls
    have none: a plain pickle, and the slower pickler only when that fails)."""
    try:
        return cloudpickle.dumps(call), []
    except Exception:
        buf = io.BytesIO()
        lifter = _Lifter(buf)
        lifter.dump(call)  # (raises the real error if it was not a Remote)
        return buf.getvalue(), lifter.futures


_items = itertools.count(1)


def _refuse(what: str) -> str:
    return (
        f"{what}: its value stays on the Dask cluster. Fetch it first (await remote, or "
        "remote.result() from a thread) and pass the value, or run the task that needs it "
        "on Dask (runs_on= the DaskExecutor's name)"
    )


class Remote:
    """A task's value kept on the Dask cluster: ``TaskRes.ret`` of a task that ran on a
    ``DaskExecutor(client, keep_remote=True)``.

    Passed to another task on a Dask executor of the same client (as ``a.output``, or by
    hand, anywhere in its arguments), it travels as a Dask future: Dask moves the value
    worker to worker and the task receives the value itself. Passed to any other task it
    arrives as the ``Remote``: a coroutine awaits it, a thread task calls
    :meth:`result`. It refuses to be pickled (for a process or foreign executor) with a
    ``TypeError`` saying what to do.

    It holds the only reference taskvisor keeps to the Dask future: once it is gone (your
    ``TaskRes``, the arguments of the tasks it was passed to, the supervisor's
    ``result_buffer``), or at once with :meth:`release`, Dask forgets the value. While it is
    held, Dask may compute it again if the worker holding it is lost (Dask's own rule: the
    task's function runs again).

    ``remote[key]`` is a Remote of ``value[key]``, computed on the cluster (so
    ``a.output["k"]`` works); ``.map(f)`` of an ``output`` calls ``f`` with the ``Remote``
    itself, in the supervisor: fetch there, or do the work in a Dask task.
    """

    __slots__ = ("__weakref__", "_future", "_name", "_type")

    def __init__(self, future: Any, name: str, type_name: str | None = None) -> None:
        self._future: Any = future
        self._name = name
        self._type = type_name

    @property
    def key(self) -> str:
        """The Dask key of the computation holding the value."""
        return str(self._live().key)

    @property
    def task_name(self) -> str:
        """The name of the task (or projection) whose value this is."""
        return self._name

    @property
    def released(self) -> bool:
        """Whether :meth:`release` was called."""
        return self._future is None

    def _live(self) -> Any:
        fut = self._future
        if fut is None:
            raise RuntimeError(f"the Remote of task {self._name!r} was released")
        return fut

    async def fetch(self) -> Any:
        """The value, brought to this process. On the asynchronous client's own loop it
        waits there; anywhere else it waits in a thread (``asyncio.to_thread``)."""
        fut = self._live()
        client = fut.client
        if client.asynchronous:
            return await fut
        return await asyncio.to_thread(fut.result)

    def __await__(self) -> Generator[Any, None, Any]:
        return self.fetch().__await__()

    def result(self, timeout: float | None = None) -> Any:
        """The value, brought to this process: blocks. For a synchronous client, from
        anywhere; for an asynchronous one, from any thread but its loop's (there, ``await``
        the Remote). ``timeout``: seconds, then Dask's ``TimeoutError``."""
        fut = self._live()
        if fut.client.asynchronous:
            raise RuntimeError(
                f"Remote.result() of task {self._name!r} would block the asynchronous "
                "client's own event loop: await the Remote there instead"
            )
        return fut.result(timeout)

    def release(self) -> None:
        """Let Dask forget the value now (once no Dask task that was given it still
        needs it). The Remote cannot be used after."""
        fut, self._future = self._future, None
        if fut is not None:
            fut.release()

    def __getitem__(self, key: Any) -> Remote:
        fut = self._live()
        item = fut.client.submit(
            _item,
            fut,
            key,
            key=f"{fut.key}-item-{next(_items)}",
            pure=False,
            # (a tiny task some other task waits for: ahead of everything)
            priority=int(Tier.CRITICAL) * TIER_STEP + TIER_STEP / 2,
        )
        return Remote(item, f"{self._name}[{safe_repr(key)}]")

    def __repr__(self) -> str:
        if self._future is None:
            return f"<Remote of task {self._name!r}, released>"
        kind = f" {self._type}" if self._type else ""
        return f"<Remote{kind} of task {self._name!r} on Dask, key {self._future.key!r}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            _refuse(f"a taskvisor.dask.Remote (of task {self._name!r}) cannot be pickled")
        )

    def __copy__(self) -> Remote:
        return self  # (a handle: a copy is the same value)

    def __deepcopy__(self, memo: Any) -> Remote:
        return self

    def __bool__(self) -> bool:
        return True

    def __len__(self) -> NoReturn:
        raise TypeError(_refuse(f"len() of the Remote of task {self._name!r}"))

    def __iter__(self) -> Iterator[Any]:
        raise TypeError(_refuse(f"iterating over the Remote of task {self._name!r}"))

    def __getattr__(self, name: str) -> NoReturn:
        if name.startswith("_"):
            raise AttributeError(name)
        raise AttributeError(
            _refuse(f"the Remote of task {self._name!r} has no attribute {name!r}")
        )


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
    of ending with ``ResourceError``. ``batch``: how many small tasks go to Dask as one
    Dask task — ``None`` (default) adapts it (about ``BATCH_SECONDS`` of work per Dask
    task, at the mean time per task measured so far, at most ``MAX_BATCH``), ``1`` sends
    every task alone. Tasks with ``resources`` always go alone.

    ``keep_remote``: values stay on the cluster. A task that succeeds has a
    :class:`Remote` as its ``TaskRes.ret``; passed to another Dask task (``a.output``) it
    travels worker to worker as a Dask future, never through the client; only what you or
    a non-Dask task fetch comes back. Each task goes alone (no batching) as one Dask task;
    its small answer comes back as a Dask event (see the module docstring). Off by
    default: then every value comes back with its answer and Dask keeps nothing of a task
    that ended, so a later worker loss never runs a ``DONE`` task again; a ``Remote`` that
    is held may be computed again by Dask after a worker loss.

    ``isolate``: each task runs in a child process of its worker (kept for the next task,
    started again after one died). A task that kills its process ends ``WorkerCrashed``
    and the worker lives on; a ``cancel`` or ``timeout`` of a running task kills its
    child, which frees the worker thread at once (without it the function runs on to its
    end in the thread: Python cannot stop a thread). Tasks with a ``timeout`` then go
    alone. Costs a round trip to the child per task; off by default.
    """

    pickles = True
    kills_running = True  # cancel() cancels the Dask future; CANCELLED is reported
    own_resources = True
    label: ClassVar[str] = "Dask worker"

    def __init__(
        self,
        client: Client,
        *,
        allowed_failures: int | None = 0,
        new_workers: bool = False,
        batch: int | None = None,
        keep_remote: bool = False,
        isolate: bool = False,
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
        if batch is not None and (
            isinstance(batch, bool) or not isinstance(batch, int) or batch < 1
        ):
            raise ValueError(f"batch must be an int >= 1 or None (adaptive), got {batch!r}")
        self.client: Any = client  # (distributed is only partly typed)
        self.batch = batch
        self.allowed_failures = allowed_failures
        self.new_workers = new_workers
        self.keep_remote = bool(keep_remote)
        self.isolate = bool(isolate)
        self.token = uuid.uuid4().hex[:8]
        self._sink: Sink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._async = False  # an asynchronous client on the supervisor's loop (see open)
        self._worker_resources: list[dict[str, float]] = []
        self._lock = threading.Lock()  # the live futures, shared with Dask's callback thread
        # each Dask future with its jobs and their payloads (kept to send a task again
        # alone when its batch lost its worker), and each job not yet reported, with its
        # future (a job of a batch cancelled early is reported at once, and leaves here)
        self._live: dict[Any, tuple[list[Job], list[bytes]]] = {}
        self._jobs: dict[Job, Any] = {}
        # keep_remote: the answers come as events on this topic (see _hear); the keys
        # whose answer is awaited, answers heard before their future was seen done, and
        # futures seen done before their answer was heard
        self._topic = f"taskvisor-{self.token}"
        self._expected: set[str] = set()
        self._heard: dict[str, tuple[Any, ...]] = {}
        self._parked: dict[str, Any] = {}
        self._watchers: set[asyncio.Future[Any]] = set()
        # batching (the supervisor's loop only): jobs waiting for the end of this turn,
        # by Dask priority; the measured mean seconds per task on a worker
        self._pending: dict[float, dict[Job, bytes]] = {}
        # a batch that lost its worker: the rest of its tasks, sent one after the other
        self._chains: dict[Any, deque[tuple[Job, bytes]]] = {}
        self._flush_soon = False
        self._per_task: float | None = None
        self._probe: Job | None = None  # the job sent alone to measure a first timing
        self._sent = 0  # Dask computations sent (a part of each key)
        self._told_threads = False  # (see cancel)

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
            if self.isolate:
                await client.register_plugin(_Isolation())
            if self.keep_remote:  # (before any task is sent: on the same stream)
                client.subscribe_topic(self._topic, self._hear)
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
        if self.isolate:
            self.client.register_plugin(_Isolation())
        if self.keep_remote:  # (before any task is sent: on the same stream)
            self.client.subscribe_topic(self._topic, self._hear)
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
            warn_user(
                f"task {task.name!r} needs {what}, which no current Dask worker has: "
                "it waits for a worker that has"
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
        # (a payload that cannot be pickled raises here: that attempt fails with the reason;
        # no keywords go as a plain {}, see taskvisor._worker.dumps_call)
        payload, futures = _dumps((job.fn, job.args, job.kwargs or {}, job.shared))
        if (
            task is None
            or task.resources
            or self.batch == 1
            or self.keep_remote
            or futures
            or (self.isolate and task.timeout is not None)  # (alone: its timeout frees it)
        ):
            prio = 0.0 if task is None else dask_priority(task)
            self._send([job], [payload], prio, task, futures=futures)
            return
        prio = dask_priority(task)
        group = self._pending.setdefault(prio, {})
        group[job] = payload
        if self._per_task is not None and len(group) >= self._size():
            self._flush_group(prio)
        elif not self._flush_soon:  # the rest of this turn's jobs join the batch
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _size(self) -> int:
        """Jobs per Dask task: the set ``batch``, or enough of them to take about
        ``BATCH_SECONDS`` on a worker at the mean time per task measured so far."""
        if self.batch is not None:
            return self.batch
        if self._per_task is None:
            return 1
        return max(1, min(MAX_BATCH, int(BATCH_SECONDS / max(self._per_task, 1e-7))))

    def _flush(self) -> None:
        self._flush_soon = False
        if self.batch is None and self._per_task is None and self._pending:
            # nothing measured yet: one job goes ahead alone, the rest wait for its
            # timing (at most PROBE_WAIT seconds, then they go one by one)
            while self._probe is None and self._pending:
                prio = next(iter(self._pending))
                job, payload = self._pending[prio].popitem()
                if not self._pending[prio]:
                    del self._pending[prio]
                self._probe = job
                if self._send([job], [payload], prio, job.task):
                    asyncio.get_running_loop().call_later(PROBE_WAIT, self._probe_late, job)
                else:  # (it failed, reported: the next one goes ahead)
                    self._probe = None
            return
        for prio in list(self._pending):
            self._flush_group(prio)

    def _probe_ended(self, jobs: list[Job]) -> None:
        """A computation ended (the supervisor's loop): if it was the probe, what waited
        for its timing goes now (or the next probe, if it brought no timing)."""
        if self._probe is not None and self._probe in jobs:
            self._probe = None
            self._flush()

    def _probe_late(self, job: Job) -> None:
        """The probe takes longer than PROBE_WAIT: these are not small tasks (unless
        something else was measured meanwhile); what waited for it goes now."""
        if self._probe is job:
            if self._per_task is None:
                self._per_task = BATCH_SECONDS  # (batches of one)
            self._probe = None
            self._flush()

    def _flush_group(self, prio: float) -> None:
        group = self._pending.pop(prio, {})
        size = self._size()
        items = list(group.items())
        for i in range(0, len(items), size):
            chunk = items[i : i + size]
            self._send([j for j, _ in chunk], [p for _, p in chunk], prio, None)

    def _send(
        self,
        jobs: list[Job],
        payloads: list[bytes],
        prio: float,
        task: Task[Any] | None,
        chain: deque[tuple[Job, bytes]] | None = None,
        futures: list[Any] | None = None,
    ) -> bool:
        """One Dask computation for ``jobs``; False if it could not be sent (each job is
        then reported FAILED with the reason: this may run from ``call_soon``, where no
        one else would see the error). Keys are unique per executor: a name reused by a
        newer task never meets the key of an older attempt still running on Dask."""
        first = jobs[0]
        self._sent += 1
        if len(jobs) == 1:
            key = f"{first.name}-{first.attempt}-{self.token}-{self._sent}"
        else:
            key = f"{first.name}+{len(jobs) - 1}-{self.token}-{self._sent}"
        submit = self.client.submit
        options: dict[str, Any] = {
            "pure": False,
            "retries": 0,
            "fifo_timeout": 0,  # each submit its own generation: FIFO among equal priorities
            "priority": prio,
            "key": key,
            "resources": dict(task.resources) if task is not None and task.resources else None,
        }
        if self.keep_remote:  # (one job) its value stays; its answer comes as an event
            with self._lock:
                self._expected.add(key)
        try:
            if self.keep_remote:
                fut = submit(
                    run_remote,
                    key,
                    self._topic,
                    first.name,
                    self.isolate,
                    payloads[0],
                    futures or [],
                    **options,
                )
            else:
                fut = submit(
                    *(
                        (run_isolated, key, [j.name for j in jobs])
                        if self.isolate
                        else (run_batch,)
                    ),
                    payloads,
                    *([futures] if futures else []),
                    **options,
                )
        except Exception as exc:  # (a closed client, a scheduler gone ...)
            with self._lock:
                self._expected.discard(key)
            assert self._sink is not None
            for j in jobs:
                self._sink(j, self._error(j, exc))
            return False
        with self._lock:
            self._live[fut] = (jobs, payloads)
            for j in jobs:
                self._jobs[j] = fut
            if chain:  # (sent on when this one ends)
                self._chains[fut] = chain
        for j in jobs:
            j.handle = fut
        if self._async and not self.keep_remote:
            self._later(self._watch(fut))
        else:  # (keep_remote: the value is not fetched, so not awaited either)
            fut.add_done_callback(self._done)
        return True

    def cancel(self, job: Job) -> CancelResult:
        assert self._sink is not None
        cancelled = (Outcome.CANCELLED, None, job.shared, None, None)
        for prio, group in self._pending.items():
            if group.pop(job, None) is not None:  # not sent yet
                if not group:
                    del self._pending[prio]
                self._sink(job, cancelled)
                return CancelResult.WITHDRAWN
        with self._lock:
            fut = self._jobs.get(job)
            if fut is _CHAINED:  # waiting to be sent again alone (its batch crashed)
                del self._jobs[job]
                self._sink(job, cancelled)
                return CancelResult.STOPPING  # (it ran, in its batch: not withdrawn)
            alone = fut is not None and len(self._live[fut][0]) == 1
            if fut is not None and not alone:  # in a batch: it ends now, its result is dropped
                del self._jobs[job]
        if fut is None:
            return CancelResult.STOPPING  # (its end is being reported)
        if not self.isolate and not self._told_threads:  # (once: not silent, not noisy)
            self._told_threads = True
            logger.warning(
                "DaskExecutor: %r was cancelled (or timed out) after it was sent to Dask; "
                "if its function already runs in a worker thread it runs on to its end "
                "(a thread cannot be stopped): DaskExecutor(client, isolate=True) stops it",
                job.name,
            )
        if self.isolate and not alone:  # stop its call on the worker (or never start it)
            self._later(self._stop_call(fut.key, job.name))
        if alone:
            reason = job.cancelled or "cancelled by taskvisor"
            self._later(self.client.cancel([fut], reason=reason))
        else:
            self._sink(job, cancelled)
        return CancelResult.STOPPING

    def shutdown(self) -> list[str]:
        with self._lock:
            left = list(self._live)
            self._live.clear()
            self._jobs.clear()
            self._expected.clear()
            self._heard.clear()
            self._parked.clear()
        for fut in left:  # (every task has ended by now: nothing needs these)
            fut.release()
        if (self.isolate or self.keep_remote) and self._loop is not None:
            self._leave()
        # the sink is the supervisor's: an executor kept by its user must not keep a
        # closed supervisor (its result buffer, the Remotes in it) alive; what Dask still
        # reports late goes nowhere
        self._sink = _ignore
        return []

    def _leave(self) -> None:
        """(The supervisor's closer thread) take off the cluster what this executor put
        there: the workers' idle children (so a closed supervisor leaves no process behind;
        the plugin stays, see _Isolation) and the answers' event topic (the scheduler keeps
        a topic's last events). From a thread of its own, an asynchronous
        client's methods run on its loop, the supervisor's, free meanwhile: it waits for
        this thread."""
        assert self._loop is not None
        client = self.client
        try:
            if self.keep_remote:
                # the scheduler forgets the topic and its subscribers at once (an
                # unsubscribe message would go on the client's stream and could come
                # after, making the topic again). The client's handler, which holds this
                # executor, becomes one that holds nothing (an event already on its way
                # must still find one: distributed fails on a topic it has no handler for)
                _settled(client.run_on_scheduler(_drop_topic, self._topic), self._loop)
                client._event_handlers[self._topic] = _ignore_event
            if self.isolate:
                _settled(client.run(_stop_idle), self._loop)
        except Exception as exc:  # (a client closed first, a lost scheduler)
            warn_user(f"DaskExecutor: what it left on the cluster was not cleared: {exc}")

    async def _stop_call(self, key: str, name: str) -> None:
        """Ask every worker to stop (or skip) the call ``name`` of the batch ``key``."""
        try:
            if self._async:
                await self.client.run(_stop_call, key, name)
            else:
                await asyncio.to_thread(self.client.run, _stop_call, key, name)
        except Exception as exc:  # (a lost worker, a closed client: its result is dropped)
            logger.debug("stopping %r of %r on the workers failed: %r", name, key, exc)

    def _later(self, result: Any) -> None:
        """What a client method returned: a coroutine (asynchronous client) runs on the
        loop as a task this executor holds until it ends."""
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._watchers.add(task)
            task.add_done_callback(self._watchers.discard)

    # ------------------------------------------------------------ endings

    async def _watch(self, fut: Any) -> None:
        """An asynchronous client: wait for the future on the supervisor's loop."""
        try:
            answers = await fut
        except Exception as exc:  # (distributed's FutureCancelledError is an Exception)
            self._ended(fut, None, exc, cancelled=fut.status == "cancelled")
        else:
            self._ended(fut, answers, None)

    def _done(self, fut: Any) -> None:
        """A synchronous client: Dask's callback thread, once the future is done.

        A finished future's answers are fetched together with those of every other live
        future that has finished meanwhile: one ``gather`` (one round trip) for the lot
        instead of one each. (The callbacks run one at a time on that one thread, so the
        ones that finished while a fetch was under way wait behind it: the sweep takes
        them now, and their own callbacks find them ended.)"""
        status = fut.status
        if status == "finished" and self.keep_remote:
            self._kept_done(fut)
        elif status == "finished":
            with self._lock:
                if fut not in self._live:  # (fetched with an earlier batch)
                    return
                batch = [fut, *(f for f in self._live if f is not fut and f.status == "finished")]
            try:
                results = self.client.gather(batch)
            except Exception:  # (one was cancelled meanwhile, or lost its result): each alone
                results = None
            for i, f in enumerate(batch):
                if results is not None:
                    self._ended(f, results[i], None)
                    continue
                try:
                    answers = f.result()
                except Exception as exc:
                    self._ended(f, None, exc, cancelled=f.status == "cancelled")
                else:
                    self._ended(f, answers, None)
        elif status == "cancelled":
            reason = getattr(getattr(fut, "_state", None), "exception", None)
            self._ended(fut, None, reason, cancelled=True)
        else:
            self._ended(fut, None, fut.exception() or RuntimeError("no result"))

    def _kept_done(self, fut: Any) -> None:
        """keep_remote: a future finished (its value is on a worker); its answer was
        heard already (the usual order: the worker sends the event before it reports the
        task done, on the same stream), or it is parked until :meth:`_hear` brings it."""
        key = fut.key
        with self._lock:
            if fut not in self._live:
                return
            answer = self._heard.pop(key, None)
            if answer is None:
                self._parked[key] = fut
                return
        self._ended(fut, answer, None)

    def _hear(self, event: tuple[float, Any]) -> None:
        """keep_remote: an answer event ``(key, answer)`` from a worker (the client's loop).
        One nobody waits for (its task ended or was cancelled meanwhile) is dropped."""
        key, answer = event[1]
        with self._lock:
            if key not in self._expected:
                return
            fut = self._parked.pop(key, None)
            if fut is None:
                self._heard[key] = tuple(answer)
                return
        self._on_loop(self._ended, fut, tuple(answer), None)

    def _ended(
        self, fut: Any, answers: Any, exc: BaseException | None, *, cancelled: bool = False
    ) -> None:
        """A Dask computation ended: report each of its jobs that has not ended yet.
        ``answers`` is what :func:`run_batch` returned, else ``exc`` says why not;
        ``cancelled``: Dask cancelled it (on our request, or on its own: a lost scheduler
        connection, a restart)."""
        crashed_batch = isinstance(exc, KilledWorker) and not cancelled
        with self._lock:
            jobs, payloads = self._live.pop(fut, ([], []))
            mine = [(j, p) for j, p in zip(jobs, payloads, strict=True) if self._jobs.pop(j, None)]
            chain = self._chains.pop(fut, None)
            if crashed_batch and len(jobs) > 1:
                for job, _ in mine:  # (in the same critical section: no cancel is lost)
                    self._jobs[job] = _CHAINED
            if self.keep_remote:
                key = fut.key
                self._expected.discard(key)
                self._heard.pop(key, None)
                self._parked.pop(key, None)
        assert self._sink is not None
        if self.keep_remote:  # ``answers`` is the one job's answer
            self._kept_ended(mine, answers, exc, cancelled, fut)
            return
        fut.release()  # nothing needs it any more: Dask may forget the result now
        if answers is not None:
            results, seconds = answers
            per_task = seconds / max(len(results), 1)
            self._per_task = (
                per_task if self._per_task is None else (0.8 * self._per_task + 0.2 * per_task)
            )
        if self._probe is not None:
            self._on_loop(self._probe_ended, jobs)
        if chain:  # (the rest of a crashed batch: the next one goes now)
            self._on_loop(self._resend, chain)
        if answers is not None:
            live = {j for j, _ in mine}
            for job, answer in zip(jobs, results, strict=True):
                if job in live:
                    job.handle = None
                    self._sink(job, _decoded(answer))
            return
        if crashed_batch and len(jobs) > 1:
            # a batch lost its worker: which task killed it is unknown, so each task that
            # had not ended runs again alone, one after the other (not an attempt of its
            # own: nothing came back), and only the killer ends WorkerCrashed
            self._on_loop(self._resend, deque(mine))
            return
        self._failed(mine, exc, cancelled, fut)

    def _failed(
        self,
        mine: list[tuple[Job, bytes]],
        exc: BaseException | None,
        cancelled: bool,
        fut: Any,
    ) -> None:
        """Report each of ``mine`` ended by Dask: cancelled, lost, or an error."""
        assert self._sink is not None
        for job, _ in mine:
            job.handle = None
            if cancelled and job.cancelled is not None:  # (we asked: the engine knows why)
                self._sink(job, (Outcome.CANCELLED, None, job.shared, None, None))
            else:  # (Dask's own cancel is a failure with Dask's reason: retries decide)
                why = exc or RuntimeError(f"Dask cancelled {fut.key!r}")
                self._sink(job, self._error(job, why))

    def _kept_ended(
        self,
        mine: list[tuple[Job, bytes]],
        answer: Any,
        exc: BaseException | None,
        cancelled: bool,
        fut: Any,
    ) -> None:
        """keep_remote: the answer of a job is in (or Dask ended it). A success's value
        stays on the cluster, held by the :class:`Remote` it is reported with (the only
        reference this executor keeps); anything else releases it at once."""
        assert self._sink is not None
        if answer is None or not mine or answer[0] != "ok":
            fut.release()
        if answer is None:
            self._failed(mine, exc, cancelled, fut)
            return
        for job, _ in mine:
            job.handle = None
            ok, _, shared, excinfo, worker = decode(answer)
            if ok:
                self._sink(
                    job, (Outcome.OK, Remote(fut, job.name, answer[2]), shared, None, worker)
                )
            else:
                self._sink(job, (Outcome.ERROR, None, shared, excinfo, worker))

    def _on_loop(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn`` on the supervisor's loop (from Dask's callback thread, or the loop)."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # (the loop has closed: nothing to do)
            self._loop.call_soon_threadsafe(fn, *args)

    def _resend(self, chain: deque[tuple[Job, bytes]]) -> None:
        """Send the next task of a batch that lost its worker (the supervisor's loop)."""
        while chain:
            job, payload = chain.popleft()
            with self._lock:
                if self._jobs.pop(job, None) is not _CHAINED:
                    continue  # (cancelled meanwhile)
            task = job.task
            prio = 0.0 if task is None else dask_priority(task)
            self._send([job], [payload], prio, None, chain)
            return

    def _error(self, job: Job, exc: BaseException) -> Any:
        if isinstance(exc, KilledWorker):
            exc = WorkerCrashed(job.name, None, None)
        return (Outcome.ERROR, None, job.shared, ExceptionInfo.from_exc(exc), None)


def _settled(done: Any, loop: asyncio.AbstractEventLoop) -> None:
    """What a client method returned, settled (a coroutine is run on ``loop``: not seen
    from a thread of its own; belt and braces)."""
    if inspect.isawaitable(done):
        asyncio.run_coroutine_threadsafe(_awaited(done), loop).result(60)


async def _awaited(what: Any) -> Any:
    return await what


def _drop_topic(topic: str, dask_scheduler: Any = None) -> None:
    """On the scheduler: forget an event topic and the events it keeps (no public API)."""
    with contextlib.suppress(Exception):
        dask_scheduler._broker._topics.pop(topic, None)


def _ignore_event(event: Any) -> None:
    """The answers' handler of a shut-down executor."""


def _ignore(job: Job, result: Any) -> None:
    """The sink of a shut-down executor."""


def _decoded(answer: tuple[Any, ...]) -> Any:
    ok, ret, shared, excinfo, worker = decode(answer)
    if ok:
        return (Outcome.OK, ret, shared, None, worker)
    return (Outcome.ERROR, None, shared, excinfo, worker)


def _resources_of(info: Mapping[str, Any]) -> list[dict[str, float]]:
    return [dict(w.get("resources") or {}) for w in info.get("workers", {}).values()]
