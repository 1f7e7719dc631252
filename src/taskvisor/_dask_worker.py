"""What a Dask worker's child process runs (``DaskExecutor(isolate=True)``): the call
of a task, from its payload. Kept apart from :mod:`taskvisor.dask` so that a child
imports neither ``distributed`` nor ``dask`` (0.7 s of imports here) to run a task; the
worker's own threads call the same functions (:mod:`taskvisor.dask` re-exports them)."""

from __future__ import annotations

import asyncio
import io
import pickle
import types
from collections.abc import Callable
from typing import Any

from ._worker import _error_answer, run_pickled

__all__ = ["run_kept", "run_payload"]


def run_payload(payload: bytes, values: list[Any] | None = None) -> tuple[Any, ...]:
    """On a Dask worker: unpickle the call and run it as the process pool does."""
    try:
        fn, args, kwargs, shared = _loads(payload, values)
    except BaseException as exc:
        return _error_answer(exc, None, "dask worker")
    return run_pickled(fn, args, kwargs, shared)


def run_kept(payload: bytes, values: list[Any]) -> tuple[tuple[Any, ...], Any]:
    """On a Dask worker (``keep_remote=True``): run the call; return ``(answer, value)``.

    ``answer`` is :func:`~taskvisor._worker.run_pickled`'s, without the value (only the
    ``shared`` dict and the value's type name are pickled into it); ``value`` is what the
    function returned (``None`` when it failed), left for Dask to keep on this worker."""
    try:
        fn, args, kwargs, shared = _loads(payload, values)
    except BaseException as exc:
        return _error_answer(exc, None, "dask worker"), None
    box: list[Any] = []
    answer = run_pickled(_keeping(fn, box), args, kwargs, shared)
    if answer[0] != "ok":
        return answer, None
    value = box[0]
    return (answer[0], answer[1], type(value).__name__, answer[3]), value


def _keeping(fn: Callable[..., Any], box: list[Any]) -> Callable[..., None]:
    """``fn`` whose value goes into ``box`` (a coroutine's awaited first), not into the
    answer :func:`run_pickled` pickles."""

    def call(*args: Any, **kwargs: Any) -> None:
        ret = fn(*args, **kwargs)
        if isinstance(ret, types.CoroutineType):
            ret = asyncio.run(ret)
        box.append(ret)

    return call


class _Filler(pickle.Unpickler):
    """The worker's unpickler of a payload with :class:`Remote` slots: slot ``i`` is the
    ``i``-th value (what Dask made of the ``i``-th future)."""

    def __init__(self, data: bytes, values: list[Any]) -> None:
        super().__init__(io.BytesIO(data))
        self._values = values

    def persistent_load(self, pid: Any) -> Any:
        return self._values[pid]


def _loads(payload: bytes, values: list[Any] | None) -> Any:
    if not values:
        return pickle.loads(payload)  # (what cloudpickle wrote, plain pickle reads)
    return _Filler(payload, values).load()
