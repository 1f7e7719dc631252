"""taskvisor: an asyncio-native scheduling runtime.

Describe work as :class:`Task` specs with dependencies (``requires``/``provides`` and
``output`` references), locks (``claims``/``uses``), tiers and priorities; run it on named
aloops, a thread pool or a process pool under a :class:`Supervisor`; read every task's
:class:`TaskRes` as it finishes. Every submitted task ends in exactly one ``TaskRes``.
"""

from __future__ import annotations

import importlib

from . import _errors  # (standard library only: the process worker imports it anyway)

TYPE_CHECKING = False  # (typing's, without importing typing: see _worker.py)

if TYPE_CHECKING:
    from ._background import BackgroundSupervisor
    from ._clock import Clock, SystemClock
    from ._errors import (
        CapacityError,
        ClosedError,
        CycleError,
        DependencyError,
        DuplicateTaskError,
        LockError,
        NotRunError,
        RemoteError,
        ResourceError,
        SpecError,
        TaskCancelled,
        TaskFailError,
        TaskTimeout,
        TaskvisorError,
        TaskvisorWarning,
        WorkerCrashed,
    )
    from ._executors import Aloop
    from ._graph import TaskGraph, graph
    from ._helpers import controlled_failure
    from ._planner import State
    from ._result import ExceptionInfo, RunReport, TaskRes
    from ._spec import CRITICAL, HIGH, LOW, NORMAL, ResultRef, Task, Tier, task
    from ._supervisor import (
        Statistics,
        StoryEvent,
        Supervisor,
        SupervisorState,
        TaskHandle,
        TaskInfo,
        run,
    )
    from ._timeline import TimelineRecorder
    from ._workers import Worker

__version__ = "0.1.0"

__all__ = [
    "CRITICAL",
    "HIGH",
    "LOW",
    "NORMAL",
    "Aloop",
    "BackgroundSupervisor",
    "CapacityError",
    "Clock",
    "ClosedError",
    "CycleError",
    "DependencyError",
    "DuplicateTaskError",
    "ExceptionInfo",
    "LockError",
    "NotRunError",
    "RemoteError",
    "ResourceError",
    "ResultRef",
    "RunReport",
    "SpecError",
    "State",
    "Statistics",
    "StoryEvent",
    "Supervisor",
    "SupervisorState",
    "SystemClock",
    "Task",
    "TaskCancelled",
    "TaskFailError",
    "TaskHandle",
    "TaskInfo",
    "TaskRes",
    "TaskGraph",
    "TaskTimeout",
    "TaskvisorError",
    "TaskvisorWarning",
    "Tier",
    "TimelineRecorder",
    "Worker",
    "WorkerCrashed",
    "controlled_failure",
    "graph",
    "run",
    "task",
]

# Every public name is imported on first use (PEP 562), not with the package: a process
# worker imports taskvisor._worker, which runs this file, and must not pay for asyncio,
# psutil, uvloop and the supervisor it never uses (~250 ms a worker start; the numbers
# are in benchmarks/README.md, "Worker start").
_HOME = {
    **dict.fromkeys(["Clock", "SystemClock"], "_clock"),
    **dict.fromkeys(_errors.__all__, "_errors"),
    "Aloop": "_executors",
    "BackgroundSupervisor": "_background",
    "Worker": "_workers",
    **dict.fromkeys(["TaskGraph", "graph"], "_graph"),
    "TimelineRecorder": "_timeline",
    "controlled_failure": "_helpers",
    "State": "_planner",
    **dict.fromkeys(["ExceptionInfo", "RunReport", "TaskRes"], "_result"),
    **dict.fromkeys(
        ["CRITICAL", "HIGH", "LOW", "NORMAL", "ResultRef", "Task", "Tier", "task"], "_spec"
    ),
    **dict.fromkeys(
        [
            "Statistics",
            "StoryEvent",
            "Supervisor",
            "SupervisorState",
            "TaskHandle",
            "TaskInfo",
            "run",
        ],
        "_supervisor",
    ),
}


def __getattr__(name: str) -> object:
    if name == "dask":  # the Dask executor, on first use (it imports distributed)
        return importlib.import_module(".dask", __name__)
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'taskvisor' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value  # the next access is a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
