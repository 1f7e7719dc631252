"""Every exception and warning taskvisor raises or reports.

::

    TaskvisorError
     ├── SpecError                 bad Task(...) / Supervisor(...) arguments
     │    ├── CycleError           the submitted graph has a cycle
     │    └── DuplicateTaskError   a task name is already known to the supervisor
     ├── TaskFailError             raised *by a task*: a controlled failure
     ├── NotRunError               the task never ran (its TaskRes is SKIPPED/CANCELLED/FAILED)
     │    ├── DependencyError      a requirement failed or can never be provided
     │    ├── LockError            a lock it needs is held by a failed task
     │    ├── CapacityError        its weight can never fit its tier's slots
     │    ├── ResourceError        a declared resource need exceeds the capacity
     │    └── TaskCancelled        cancelled (sup.cancel, fail_fast, aclose)
     ├── TaskTimeout               ran longer than its ``timeout``
     ├── WorkerCrashed             the process running it died
     ├── RemoteError               an exception/result that could not cross a process boundary
     └── ClosedError               the supervisor is closed (or not started)

    TaskvisorWarning (UserWarning)  skips, held locks, abandoned threads

Each exception keeps its context as attributes and builds its message from them, so
``str(err)`` is always readable and code can still inspect ``err.task``, ``err.missing`` …
This module imports nothing from asyncio or threading: the planner raises these too.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Hashable, Iterable, Mapping, Sequence

# (no typing import: a process worker imports this module, and typing is ~3 ms of its
# start; every annotation here resolves with builtins and collections.abc alone)

__all__ = [
    "CapacityError",
    "ClosedError",
    "CycleError",
    "DependencyError",
    "DuplicateTaskError",
    "LockError",
    "NotRunError",
    "RemoteError",
    "ResourceError",
    "SpecError",
    "TaskCancelled",
    "TaskFailError",
    "TaskTimeout",
    "TaskvisorError",
    "TaskvisorWarning",
    "WorkerCrashed",
]


class TaskvisorError(Exception):
    """Base of every taskvisor error."""


class SpecError(TaskvisorError, ValueError):
    """A task or supervisor was described wrongly; raised where it was described."""


class CycleError(SpecError):
    """The submitted tasks depend on each other in a cycle; nothing was submitted."""

    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle = tuple(cycle)
        super().__init__(f"dependency cycle: {' -> '.join(self.cycle)}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.cycle,))


class DuplicateTaskError(SpecError):
    """A task name is already used in this supervisor (or twice in one batch)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"duplicate task name {name!r}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.name,))


class TaskFailError(TaskvisorError):
    """Raise it from a task for a *controlled* failure.

    The task ends ``FAILED``; with ``deps_ok=True`` its ``provides`` are still satisfied
    (its dependents run) and with ``locks_ok=True`` its locks are released.
    """

    def __init__(self, message: str = "", *, deps_ok: bool = True, locks_ok: bool = True) -> None:
        self.message = message
        self.deps_ok = deps_ok
        self.locks_ok = locks_ok
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_fail, (type(self), self.message, self.deps_ok, self.locks_ok))


def _rebuild_fail(
    cls: type[TaskFailError], msg: str, deps_ok: bool, locks_ok: bool
) -> TaskFailError:
    return cls(msg, deps_ok=deps_ok, locks_ok=locks_ok)


class NotRunError(TaskvisorError):
    """The task did not run to its end; the subclass says why."""

    _verb = "did not run"

    def __init__(self, task: str, reason: str) -> None:
        self.task = task
        self.reason = reason
        super().__init__(f"task {task!r} {self._verb}: {reason}")

    def __reduce__(self) -> tuple[object, ...]:
        return (NotRunError.__new__, (type(self),), self.__dict__)

    def __setstate__(self, state: dict[str, object] | None) -> None:
        if state is None:
            return
        self.__dict__.update(state)
        self.args = (f"task {self.task!r} {self._verb}: {self.reason}",)


class DependencyError(NotRunError):
    """A requirement of the task failed, or nothing can ever provide it.

    ``missing`` holds the items nobody can provide; ``failed`` the names of the parents
    whose failure (or skip, or cancellation) made them unavailable; ``root`` the task whose
    failure started a transitive skip, when that is not a direct parent.
    """

    def __init__(
        self,
        task: str,
        missing: Iterable[Hashable] = (),
        failed: Iterable[str] = (),
        root: str | None = None,
    ) -> None:
        self.missing = tuple(missing)
        self.failed = tuple(failed)
        self.root = root  # the failure a transitive skip started from
        parts = []
        if self.failed:
            names = ", ".join(repr(f) for f in self.failed)
            cause = f" (after {root!r} failed)" if root else ""
            parts.append(f"parent {names} did not succeed{cause}")
        if self.missing:
            items = ", ".join(_item(m) for m in self.missing)
            parts.append(f"nothing provides {items}")
        super().__init__(task, "; ".join(parts) or "unmet dependency")


class LockError(NotRunError):
    """A lock the task needs stays held by a task that failed."""

    def __init__(self, task: str, resource: Hashable, holder: str) -> None:
        self.resource = resource
        self.holder = holder
        super().__init__(task, f"lock {_item(resource)} stays held by failed task {holder!r}")


class CapacityError(NotRunError):
    """The task's weight can never fit the admission slots its tier can reach."""

    def __init__(self, task: str, weight: int, limit: int) -> None:
        self.weight = weight
        self.limit = limit
        self.shortfall = weight - limit
        super().__init__(
            task,
            f"weight {weight} exceeds the {limit} slot(s) its tier can reach "
            f"(short by {self.shortfall})",
        )


class ResourceError(NotRunError):
    """A declared resource need exceeds the supervisor's capacity for it."""

    def __init__(self, task: str, shortfall: Mapping[str, float]) -> None:
        self.shortfall = dict(shortfall)
        what = ", ".join(f"{k!r} short by {v:g}" for k, v in sorted(self.shortfall.items()))
        super().__init__(task, f"resource needs can never be met: {what}")


class TaskCancelled(NotRunError):
    """The task was cancelled before or while it ran."""

    _verb = "was cancelled"

    def __init__(self, task: str, reason: str = "cancelled") -> None:
        super().__init__(task, reason)


class TaskTimeout(TaskvisorError):
    """The task ran longer than its ``timeout``."""

    def __init__(self, task: str, timeout: float, abandoned: bool = False) -> None:
        self.task = task
        self.timeout = timeout
        self.abandoned = abandoned
        extra = " (its thread was abandoned and still runs)" if abandoned else ""
        super().__init__(f"task {task!r} timed out after {timeout:g} s{extra}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.task, self.timeout, self.abandoned))


class WorkerCrashed(TaskvisorError):
    """The worker process running the task died. ``where`` names the host of that process
    when it is not this machine's pool (``"MPI rank 2"``)."""

    def __init__(
        self, task: str, exitcode: int | None, pid: int | None, where: str | None = None
    ) -> None:
        self.task = task
        self.exitcode = exitcode  # negative: killed by signal -exitcode (multiprocessing's rule)
        self.pid = pid
        self.where = where
        self.signal = _signal_name(exitcode)
        who = "a worker process" if pid is None else f"worker process {pid}"
        if where is not None:
            who = f"{who} on {where}"
        if self.signal is not None:
            how = f"was killed by {self.signal}"
        elif exitcode is not None:
            how = f"exited with code {exitcode}"
        else:
            how = "died"
        super().__init__(f"{who} {how} while running {task!r}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.task, self.exitcode, self.pid, self.where))


class RemoteError(TaskvisorError):
    """An exception or result that could not cross a process boundary intact.

    ``type_name``, ``message`` and ``traceback_text`` keep what could be recovered.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str = "") -> None:
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text
        super().__init__(f"{type_name}: {message}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.type_name, self.message, self.traceback_text))


class ClosedError(TaskvisorError, RuntimeError):
    """The supervisor is not running (not started yet, closing, or closed)."""

    def __init__(self, state: str, action: str = "submit") -> None:
        self.state = state
        self.action = action
        super().__init__(f"cannot {action}: supervisor is {state}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.state, self.action))


class TaskvisorWarning(UserWarning):
    """Something went wrong that did not raise: skips, locks left held, abandoned threads."""


def _not_user() -> tuple[str, ...]:
    """Where a warning's location is never the user's line: taskvisor itself, and the
    loop and thread machinery that calls it (a callback's stack goes up to the user's
    ``asyncio.run``). Found in ``sys.modules``, never imported: a module that is not
    loaded has no frame on the stack, and process workers import this module light."""
    skip = [os.path.dirname(__file__) + os.sep]
    for name, package in (("asyncio", True), ("concurrent.futures", True), ("threading", False)):
        where = getattr(sys.modules.get(name), "__file__", None)
        if where:
            skip.append(os.path.dirname(where) + os.sep if package else where)
    return tuple(skip)


def missing_extra(module: str, package: str, extra: str) -> ImportError:
    """The error of an optional module whose library is not installed: what it needs and
    the ``pip install`` that brings it."""
    return ImportError(f"{module} needs {package}: pip install taskvisor[{extra}]")


def warn_user(message: str) -> None:
    """Issue a :class:`TaskvisorWarning` located at the user's line: the innermost frame
    outside taskvisor and the asyncio/threading machinery (``warnings.warn``'s
    ``skip_file_prefixes`` arrived only in Python 3.12)."""
    skip = _not_user()
    frame = sys._getframe(1)
    level = 2
    while frame.f_back is not None and frame.f_code.co_filename.startswith(skip):
        frame = frame.f_back
        level += 1
    warnings.warn(message, TaskvisorWarning, stacklevel=level)


def _item(x: object) -> str:
    from ._spec import OutputItem  # local: _spec imports this module

    if isinstance(x, OutputItem):
        return f"the output of {x.name!r}"
    try:
        return repr(x)
    except Exception as exc:  # a user's item: an error message must never raise
        return f"<{type(x).__name__} object (repr failed: {type(exc).__name__})>"


def _signal_name(exitcode: int | None) -> str | None:
    if exitcode is None or exitcode >= 0:
        return None
    import signal

    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"
