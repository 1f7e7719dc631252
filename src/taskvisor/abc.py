"""The executor seam: one interface for every place a task can run.

Every ``runs_on`` target — ``"main"``, each ``"aloop:NAME"``, ``"thread"``,
``"process"`` and each name given in ``Supervisor(executors={...})`` — is an
:class:`Executor`, resolved once per task through the supervisor's registry. What differs
between them is stated by capability flags, not by ``if target == ...`` in the
supervisor (the model is anyio's ``AsyncBackend`` and httpx's ``BaseTransport``).

Threads: ``start``, ``submit`` and ``cancel`` are called with the supervisor's engine lock
held (on its loop's thread, or, for ``submit`` of a thread task, on the thread that
handles a completion or calls ``submit``); ``shutdown`` from a helper thread while the
supervisor closes. An executor reports every end of a job exactly once, from any thread,
through the ``sink`` it was started with: ``sink(job, (outcome, ret, shared, excinfo,
worker))``.

A package can make its executor available by name through the entry point group
``taskvisor.executors``, as pytest plugins register through ``pytest11``::

    [project.entry-points."taskvisor.executors"]
    gpu = "taskvisor_gpu:GpuExecutor"   # an Executor subclass, or a function returning one

Then ``Supervisor(executors={"fast": "gpu"})`` creates it (called with no arguments) under
the name ``fast``, and a task with ``runs_on="gpu"`` that no ``executors=`` entry names
creates it under its own name on first use. It is started and shut down with the
supervisor like any other.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ._job import Job, Outcome, Result, Sink

if TYPE_CHECKING:
    from ._spec import Task

__all__ = ["CancelResult", "Executor", "Job", "Outcome", "Result", "Sink"]


class CancelResult(enum.Enum):
    """What :meth:`Executor.cancel` did with a job."""

    WITHDRAWN = "withdrawn"  # no worker had started it; the executor reports it CANCELLED
    STOPPING = "stopping"  # it is being stopped (or already ended); its end is reported
    RUNNING = "running"  # it cannot be stopped: the supervisor abandons it


class Executor(abc.ABC):
    """Where admitted jobs run. Subclass it and pass an instance in
    ``Supervisor(executors={"name": executor})``; tasks use it with ``runs_on="name"``."""

    #: ``cancel`` can stop a job that has started (a coroutine, a process worker)
    kills_running: ClassVar[bool] = False
    #: a coroutine function's coroutine runs on it (else it is run to its end in a thread)
    runs_coroutines: ClassVar[bool] = False
    #: jobs cross a process boundary (function, arguments and results are pickled)
    pickles: ClassVar[bool] = False
    #: it reports ``Outcome.STARTED`` for jobs with ``job.watch`` set, when a worker really
    #: starts them: their ``timeout`` runs from then (else from the dispatch)
    reports_start: ClassVar[bool] = False
    #: what the supervisor calls a job it abandons ("its worker could not be interrupted")
    label: ClassVar[str] = "worker"
    #: a task's ``resources`` are this executor's own (a cluster's worker resources): the
    #: supervisor's ``resources=`` capacity does not count them, and
    #: :meth:`resource_shortfall` says what no worker can ever provide
    own_resources: ClassVar[bool] = False

    def start(self, sink: Sink) -> None:  # noqa: B027 - optional hook
        """Called once, when the supervisor starts: keep ``sink`` to report endings."""

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Awaited once on the supervisor's loop after :meth:`start`, before any task is
        submitted (connect, check the cluster). Raising here fails the supervisor's start."""

    def resource_shortfall(self, task: Task[Any]) -> Mapping[str, float]:
        """With ``own_resources``: ``{resource: missing amount}`` for a need of ``task`` no
        worker can ever meet (the task then ends with ``ResourceError`` without running);
        empty if it can run. Called at submission, engine lock held: answer from a cache."""
        return {}

    @abc.abstractmethod
    def submit(self, job: Job) -> None:
        """Run ``job`` (``job.fn(*job.args, **job.kwargs)``, plus ``shared=job.shared``
        when that is not None) and report its end through the sink. Raising here fails
        the attempt with that exception."""

    def cancel(self, job: Job) -> CancelResult:
        """Stop ``job`` (``job.cancelled`` says why). The default cannot stop anything."""
        return CancelResult.RUNNING

    def shutdown(self) -> list[str]:
        """Stop and join what this executor started (closing, from a helper thread).
        Returns the names of abandoned jobs still running that were not joined."""
        return []
