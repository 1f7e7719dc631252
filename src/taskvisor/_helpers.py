"""Small public helpers."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast, overload

from ._errors import TaskFailError

__all__ = ["controlled_failure"]

P = ParamSpec("P")
R = TypeVar("R")


class _Controlled:
    """Calls ``fn``; an exception of the given types becomes a ``TaskFailError``.

    A class rather than a closure so that it pickles (process tasks) whenever ``fn`` does.
    Used as a decorator, it *replaces* ``fn`` under ``fn``'s own name, so ``fn`` no longer
    pickles by reference (pickle finds the wrapper there): the wrapper then pickles by that
    name itself (``__reduce__``), as a decorated function does.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        deps_ok: bool,
        locks_ok: bool,
        exceptions: tuple[type[BaseException], ...],
    ) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.deps_ok = deps_ok
        self.locks_ok = locks_ok
        self.exceptions = exceptions

    def __reduce__(self) -> str | tuple[Any, ...]:
        qualname: str = getattr(self, "__qualname__", "")  # (copied from fn)
        target: Any = sys.modules.get(self.__module__)
        for part in qualname.split("."):
            target = getattr(target, part, None)
        if target is self:  # @controlled_failure on a module-level function: by name
            return qualname
        return type(self), (self.fn, self.deps_ok, self.locks_ok, self.exceptions)

    def _convert(self, exc: BaseException) -> TaskFailError:
        return TaskFailError(
            f"{type(exc).__name__}: {exc}", deps_ok=self.deps_ok, locks_ok=self.locks_ok
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.fn(*args, **kwargs)
        except TaskFailError:
            raise
        except self.exceptions as exc:
            raise self._convert(exc) from exc


class _ControlledAsync(_Controlled):
    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await self.fn(*args, **kwargs)
        except TaskFailError:
            raise
        except self.exceptions as exc:
            raise self._convert(exc) from exc


@overload
def controlled_failure(fn: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def controlled_failure(
    *,
    deps_ok: bool = True,
    locks_ok: bool = True,
    exceptions: tuple[type[BaseException], ...] = (Exception,),
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def controlled_failure(
    fn: Callable[P, R] | None = None,
    /,
    *,
    deps_ok: bool = True,
    locks_ok: bool = True,
    exceptions: tuple[type[BaseException], ...] = (Exception,),
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Make any exception of ``fn`` a controlled failure (:class:`TaskFailError`).

    The task still ends ``FAILED`` with the original exception as ``__cause__``, but its
    provides are satisfied (``deps_ok``) and its locks released (``locks_ok``). Only
    exceptions of the types in ``exceptions`` (default: every ``Exception``) are turned
    into controlled failures; others fail the task as usual. Use it bare
    (``@controlled_failure``) or with options; it works on coroutine functions and, used
    as a decorator on a module-level function, on process tasks too.
    """

    def wrap(f: Callable[P, R]) -> Callable[P, R]:
        import inspect

        cls = _ControlledAsync if inspect.iscoroutinefunction(f) else _Controlled
        return cast(Callable[P, R], cls(f, deps_ok, locks_ok, exceptions))

    return wrap(fn) if fn is not None else wrap
