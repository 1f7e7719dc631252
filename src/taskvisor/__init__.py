"""taskvisor: an asyncio-native scheduling runtime.

Describe work as :class:`Task` specs with dependencies (``requires``/``provides`` and
``output`` references), locks (``claims``/``uses``), tiers and priorities; run it on named
aloops, a thread pool or a process pool under a :class:`Supervisor`; read every task's
:class:`TaskRes` as it finishes. Every submitted task ends in exactly one ``TaskRes``.
"""

from __future__ import annotations

import logging

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
from ._helpers import controlled_failure
from ._planner import State
from ._result import ExceptionInfo, RunReport, TaskRes
from ._spec import CRITICAL, HIGH, LOW, NORMAL, ResultRef, Task, Tier, task
from ._supervisor import Statistics, StoryEvent, Supervisor, SupervisorState, TaskHandle, run

__version__ = "0.1.0"

__all__ = [
    "CRITICAL",
    "HIGH",
    "LOW",
    "NORMAL",
    "Aloop",
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
    "TaskRes",
    "TaskTimeout",
    "TaskvisorError",
    "TaskvisorWarning",
    "Tier",
    "WorkerCrashed",
    "controlled_failure",
    "run",
    "task",
]

logging.getLogger("taskvisor").addHandler(logging.NullHandler())
