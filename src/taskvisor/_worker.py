"""Code that runs inside a worker process (or any pickling backend), and its decoder.

Runs in the worker (its own main thread): :func:`child_main`, the loop of a
:class:`~taskvisor._procpool.ProcessPool` worker, and :func:`run_pickled`, which also runs
each job of a pickling backend. :func:`decode` runs in the parent (the pool's manager
thread, a backend's done callback).

The child pickles its own answer, so nothing it returns can break the pool: a result,
exception or ``shared`` dict that cannot be pickled becomes a :class:`RemoteError` that
keeps the type name, message and traceback text (as Dask does). The answer is an outer
tuple of strings and bytes, which always unpickles; each inner payload is unpickled
separately in the parent, so one that fails to unpickle there is contained too.

Import-light, because a spawned worker imports this module before it can take its first
job: at module level only what the loop needs (``os``, ``pickle``, ``struct``,
``contextlib``, ``types`` and ``_errors``, which imports nothing heavy). ``asyncio`` is
imported when a task returns a coroutine, ``tblib`` and ``traceback`` when one fails,
``_result`` (and with it the planner) only in the parent. ``benchmarks/worker_start.py``
measures what a worker's start-up costs; a test checks what this module imports.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
import threading
import time
import types
from collections.abc import Callable

from ._errors import RemoteError, SpecError

# typing.TYPE_CHECKING without importing typing (~3 ms of a worker's start; type checkers
# treat any name TYPE_CHECKING as true)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from typing import Any, Final, TypeAlias

    from ._result import ExceptionInfo

    # (ok, ret, shared, excinfo, worker)
    Decoded: TypeAlias = tuple[bool, Any, dict[str, Any] | None, ExceptionInfo | None, str]

__all__ = ["child_main", "decode", "dumps_call", "run_pickled"]

_PROTO: Final = pickle.HIGHEST_PROTOCOL

# ---------------------------------------------------- the pool worker's loop and its frames

HEADER: Final = struct.Struct("<Q")  # every frame: its length, then a pickle
STOP: Final = HEADER.pack(0)  # an empty frame: exit

# frames a worker sends: (kind, seq, answer)
READY: Final = 0
STARTED: Final = 1
ANSWER: Final = 2

# the array a worker shares with the parent: [started, floor]
RUN: Final = 0
FLOOR: Final = 1
#: a worker's exit code when it ends because its parent process is gone
ORPHANED: Final = 75


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _raise(exc: BaseException) -> None:
    raise exc


def _run_payload(name: str, payload: bytes) -> tuple[Any, ...]:
    try:
        fn, args, kwargs, shared = pickle.loads(payload)
    except Exception as exc:
        err = SpecError(
            f"task {name!r}: its function or arguments could not be unpickled in process "
            f"worker pid {os.getpid()}: {type(exc).__name__}: {exc}"
        )
        err.__cause__ = exc
        return run_pickled(_raise, (err,), {}, None)
    return run_pickled(fn, args, kwargs, shared)


def child_main(
    jobs: Connection, answers: Connection, lock: Any, ctl: Any, inherited: list[Connection]
) -> None:
    """A pool worker: run the jobs of each batch in order, send each answer at once.

    Ends on an empty frame, when the parent closes the job pipe (EOF) or goes away (a
    broken answer pipe). ``inherited``: the parent's ends of the pipes a ``fork`` copied
    into this process; closed, or the parent closing its end would never be an EOF here.
    """
    for conn in inherited:
        conn.close()
    del inherited
    _die_with_parent()
    # Ctrl-C reaches the whole process group: an idle worker exits quietly (one running a
    # job reports it as that job's error first); SIGINT is not ignored, as the processes
    # a task starts would inherit that
    with contextlib.suppress(KeyboardInterrupt):
        _serve(jobs, answers.fileno(), lock, ctl)


def _die_with_parent() -> None:
    """End this worker the moment its parent process is gone, however it went (SIGKILL
    included): a watcher thread waits on multiprocessing's parent sentinel (a pipe whose
    other end only the parent holds) and calls ``os._exit``. Without it a worker whose
    parent died would run its job to the end as an orphan and only then find the pipes
    broken. (A job that holds the GIL in C code for long delays the exit until it lets
    go of it.)"""
    import multiprocessing
    from multiprocessing.connection import wait

    parent = multiprocessing.parent_process()
    sentinel = None if parent is None else parent.sentinel
    if sentinel is None:
        return

    def watch() -> None:
        wait([sentinel])
        os._exit(ORPHANED)

    threading.Thread(target=watch, name="taskvisor-lifeline", daemon=True).start()


def _serve(jobs: Connection, wfd: int, lock: Any, ctl: Any) -> None:
    header = HEADER

    def send(kind: int, seq: int, answer: tuple[Any, ...] | None, ran: float = 0.0) -> None:
        data = pickle.dumps((kind, seq, answer, ran), _PROTO)
        _write_all(wfd, header.pack(len(data)) + data)

    with open(jobs.fileno(), "rb", closefd=False) as reader:
        send(READY, 0, None)
        while True:
            head = reader.read(header.size)
            if len(head) < header.size:
                return
            (size,) = header.unpack(head)
            body = reader.read(size)
            if not size or len(body) < size:  # an empty frame says stop
                return
            batch: list[tuple[int, str, bool, bytes]] = pickle.loads(body)
            del body
            for seq, name, watch, payload in batch:
                # the parent revokes jobs (raises FLOOR) and reads RUN under this lock:
                # after the check below, a job either starts here or never does
                with lock:
                    revoked = seq <= ctl[FLOOR]
                    if not revoked:
                        ctl[RUN] = seq
                if revoked:
                    continue
                if watch:
                    send(STARTED, seq, None)
                # the job's own time in this worker (its start-up and its queue excluded):
                # the task's run_time, and its start as the supervisor reports it
                t0 = time.perf_counter()
                answer = _run_payload(name, payload)
                send(ANSWER, seq, answer, time.perf_counter() - t0)
                del answer
            del batch


# ------------------------------------------------------------- any pickling worker


def dumps_call(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], shared: Any
) -> bytes:
    """A job's call as :func:`_run_payload` unpickles it (the parent's side).

    Empty ``kwargs`` go as a plain ``{}``: the read-only empty dict every task without
    keywords shares pickles through its ``__reduce__`` (a Python call and a global), which
    made a no-op's payload 2.5 times as slow to pickle (1.8 µs against 0.7) and longer.
    """
    return pickle.dumps((fn, args, kwargs or {}, shared), _PROTO)


def run_pickled(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    shared: dict[str, Any] | None,
) -> tuple[Any, ...]:
    """Run ``fn`` and return ``("ok", ret, shared, worker)`` or an error answer.

    ``shared`` is passed as the ``shared`` keyword when it is not None.
    """
    worker = f"pid {os.getpid()}"
    try:
        if shared is not None:
            kwargs = {**kwargs, "shared": shared}
        ret = fn(*args, **kwargs)
        if isinstance(ret, types.CoroutineType):  # (what inspect.iscoroutine checks)
            import asyncio  # only now: most workers never need it

            ret = asyncio.run(ret)
    except BaseException as exc:
        return _error_answer(exc, shared, worker)
    try:
        payload = pickle.dumps((ret, shared), _PROTO)
    except Exception as exc:
        wrapped = RemoteError(
            type(exc).__name__,
            f"the result of type {type(ret).__name__} (or its shared dict) "
            f"could not be pickled: {exc}",
            _format(exc),
        )
        return _error_answer(wrapped, None, worker)
    return ("ok", payload, type(ret).__name__, worker)


def _format(exc: BaseException) -> str:
    import traceback  # (errors only)

    return "".join(traceback.format_exception(exc))


def _error_answer(
    exc: BaseException, shared: dict[str, Any] | None, worker: str
) -> tuple[Any, ...]:
    from tblib import pickling_support  # (errors only)

    text = _format(exc)
    pickling_support.install(exc)
    try:
        data = pickle.dumps(exc, _PROTO)
        pickle.loads(data)  # round-trip here: what cannot come back is caught in the child
    except Exception as err:
        data = pickle.dumps(
            RemoteError(
                type(exc).__qualname__,
                f"{exc} (the exception could not be pickled: {err})",
                text,
            ),
            _PROTO,
        )
    try:
        shared_data = pickle.dumps(shared, _PROTO)
    except Exception:
        shared_data = pickle.dumps(None, _PROTO)
    return ("err", data, type(exc).__qualname__, str(exc), text, shared_data, worker)


def decode(answer: tuple[Any, ...]) -> Decoded:
    """The parent's side of :func:`run_pickled`."""
    if answer[0] == "ok":
        _, payload, type_name, worker = answer
        try:
            ret, shared = pickle.loads(payload)
        except Exception as exc:
            err = RemoteError(
                type(exc).__name__,
                f"the result of type {type_name} could not be unpickled: {exc}",
                _format(exc),
            )
            return False, None, None, _info(err), worker
        return True, ret, shared, None, worker
    _, data, type_name, message, text, shared_data, worker = answer
    error: BaseException
    try:
        error = pickle.loads(data)
    except Exception as err:
        error = RemoteError(
            type_name, f"{message} (the exception could not be unpickled: {err})", text
        )
    try:
        shared = pickle.loads(shared_data)
    except Exception:
        shared = None
    return False, None, shared, _info(error, text), worker


def _info(exc: BaseException, text: str | None = None) -> ExceptionInfo:
    from ._result import ExceptionInfo  # (parent only, errors only: never in a worker)

    return ExceptionInfo.from_exc(exc, text)
