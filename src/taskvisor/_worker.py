"""Code that runs inside a worker process (or any pickling backend), and its decoder.

The child pickles its own answer, so nothing it returns can break the pool: a result,
exception or ``shared`` dict that cannot be pickled becomes a :class:`RemoteError` that
keeps the type name, message and traceback text (as Dask does). The answer is an outer
tuple of strings and bytes, which always unpickles; each inner payload is unpickled
separately in the parent, so one that fails to unpickle there is contained too.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import pickle
import traceback
from collections.abc import Callable
from typing import Any

from tblib import pickling_support

from ._errors import RemoteError
from ._result import ExceptionInfo

__all__ = ["Decoded", "decode", "run_pickled"]

_PROTO = pickle.HIGHEST_PROTOCOL

# (ok, ret, shared, excinfo, worker)
Decoded = tuple[bool, Any, dict[str, Any] | None, ExceptionInfo | None, str]


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
        if inspect.iscoroutine(ret):
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
    return "".join(traceback.format_exception(exc))


def _error_answer(
    exc: BaseException, shared: dict[str, Any] | None, worker: str
) -> tuple[Any, ...]:
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
            return False, None, None, ExceptionInfo.from_exc(err), worker
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
    return False, None, shared, ExceptionInfo.from_exc(error, text), worker
