"""Prometheus metrics for taskvisor: an instrument on ``prometheus-client``.

    pip install taskvisor[prometheus]

:class:`PrometheusInstrument` registers its metrics once, when it is built, and is then
given to any number of supervisors (``Supervisor(instruments=[inst])``); they all count
into the same series. Its hooks run on each supervisor's loop thread (a supervisor in
another thread calls them there); prometheus-client's metrics are thread-safe.

Cost. A hook runs once per event of every task, so each does one dict look-up for the
label children bound to its (tier, executor) or (state, tier, executor) and then only
``inc``/``dec``/``observe`` on them: ``labels(...)`` (which validates and hashes the label
values under a lock) runs once per new combination, not once per task. The gauges need no
per-task state either: a first attempt (``info.attempt == 1``) moves a task from queued
to running, and its ``TaskRes`` says whether it ever ran (``attempts > 0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._errors import missing_extra

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
except ImportError as exc:  # pragma: no cover (the tests run with it installed)
    raise missing_extra("taskvisor.prometheus", "prometheus-client", "prometheus") from exc

if TYPE_CHECKING:
    from ._delivery import TaskInfo
    from ._planner import State
    from ._result import TaskRes
    from ._spec import Tier

__all__ = ["DEFAULT_BUCKETS", "PrometheusInstrument"]

#: histogram buckets in seconds, from a no-op thread task (tens of µs) to an hour's batch
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.0005,
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    float("inf"),
)


class PrometheusInstrument:
    """An instrument that counts tasks into Prometheus metrics.

    ::

        from prometheus_client import CollectorRegistry, generate_latest
        from taskvisor.prometheus import PrometheusInstrument

        registry = CollectorRegistry()
        metrics = PrometheusInstrument(registry=registry)
        tv.run(tasks, instruments=[metrics])
        print(generate_latest(registry).decode())

    Parameters:

    * ``registry``: the ``CollectorRegistry`` the metrics are registered in (default
      ``prometheus_client.REGISTRY``, which ``start_http_server`` and the WSGI/ASGI apps
      serve). Build one instrument per registry and namespace: registering the same
      names twice is an error (prometheus-client's ``ValueError``).
    * ``namespace``: the prefix of every metric name (default ``"taskvisor"``).
    * ``buckets``: the histograms' upper bounds in seconds (default
      :data:`DEFAULT_BUCKETS`, 100 µs to an hour).

    Metrics (``NS`` is the namespace; ``tier`` is the tier's name such as ``NORMAL``,
    ``runs_on`` the resolved executor such as ``thread``, ``process`` or
    ``aloop:default``, ``state`` the final state's name: ``DONE``, ``FAILED``,
    ``SKIPPED`` or ``CANCELLED``):

    * ``NS_tasks_submitted_total{tier, runs_on}``: tasks submitted;
    * ``NS_tasks_started_total{tier, runs_on}``: attempts started (a retry counts again);
    * ``NS_tasks_finished_total{state, tier, runs_on}``: tasks ended, by final state (a
      timeout is ``FAILED``, as its ``TaskRes`` says);
    * ``NS_worker_crashes_total{runs_on}``: attempts whose worker died
      (:class:`~taskvisor.WorkerCrashed`);
    * ``NS_task_wait_seconds{tier, runs_on}`` (histogram): from submission to the first
      start, or to the end for a task that never ran (``TaskRes.wait_time``);
    * ``NS_task_run_seconds{tier, runs_on}`` (histogram): run time over all attempts, for
      tasks that ran (``TaskRes.run_time``);
    * ``NS_tasks_queued{tier}`` (gauge): submitted and not started yet;
    * ``NS_tasks_running{runs_on}`` (gauge): started and not ended (a task between two
      attempts stays running).

    The metric objects are attributes (``submitted``, ``started``, ``finished``,
    ``crashes``, ``wait``, ``run``, ``queued``, ``running``), beside ``registry``. Hooks
    run on each supervisor's loop thread; the instrument may serve several supervisors at
    once.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        namespace: str = "taskvisor",
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        reg = REGISTRY if registry is None else registry
        ns = namespace
        by = ("tier", "runs_on")
        self.registry = reg
        self.submitted = Counter(
            "tasks_submitted", "Tasks submitted.", by, namespace=ns, registry=reg
        )
        self.started = Counter(
            "tasks_started", "Attempts started (retries included).", by, namespace=ns, registry=reg
        )
        self.finished = Counter(
            "tasks_finished",
            "Tasks ended, by final state.",
            ("state", *by),
            namespace=ns,
            registry=reg,
        )
        self.crashes = Counter(
            "worker_crashes",
            "Attempts whose worker died.",
            ("runs_on",),
            namespace=ns,
            registry=reg,
        )
        self.wait = Histogram(
            "task_wait_seconds",
            "Seconds from submission to the first start (or to the end, if never started).",
            by,
            namespace=ns,
            registry=reg,
            buckets=buckets,
        )
        self.run = Histogram(
            "task_run_seconds",
            "Seconds running, over all attempts, of tasks that ran.",
            by,
            namespace=ns,
            registry=reg,
            buckets=buckets,
        )
        self.queued = Gauge(
            "tasks_queued",
            "Tasks submitted and not started yet.",
            ("tier",),
            namespace=ns,
            registry=reg,
        )
        self.running = Gauge(
            "tasks_running",
            "Tasks started and not ended.",
            ("runs_on",),
            namespace=ns,
            registry=reg,
        )
        # label children bound once per combination (see the module docstring)
        self._kids: dict[tuple[Tier, str], _Kids] = {}
        self._ended: dict[tuple[State, Tier, str], Counter] = {}
        self._crashed: dict[str, Counter] = {}

    def _bind(self, tier: Tier, runs_on: str) -> _Kids:
        kids = self._kids.get((tier, runs_on))
        if kids is None:  # (two threads may both get here: labels() returns the same child)
            name = tier.name
            kids = self._kids[(tier, runs_on)] = _Kids(
                self.submitted.labels(name, runs_on),
                self.started.labels(name, runs_on),
                self.wait.labels(name, runs_on),
                self.run.labels(name, runs_on),
                self.queued.labels(name),
                self.running.labels(runs_on),
            )
        return kids

    def task_submitted(self, info: TaskInfo) -> None:
        """Instrument hook: ``info.task`` was submitted (counted, and queued)."""
        kids = self._kids.get((info.task.tier, info.runs_on)) or self._bind(
            info.task.tier, info.runs_on
        )
        kids.submitted.inc()
        kids.queued.inc()

    def task_started(self, info: TaskInfo) -> None:
        """Instrument hook: attempt ``info.attempt`` was started (counted; the first one
        moves the task from queued to running)."""
        kids = self._kids.get((info.task.tier, info.runs_on)) or self._bind(
            info.task.tier, info.runs_on
        )
        kids.started.inc()
        if info.attempt == 1:
            kids.queued.dec()
            kids.running.inc()

    def worker_crashed(self, info: TaskInfo) -> None:
        """Instrument hook: the worker running ``info.task`` died (counted)."""
        child = self._crashed.get(info.runs_on)
        if child is None:
            child = self._crashed[info.runs_on] = self.crashes.labels(info.runs_on)
        child.inc()

    def task_finished(self, res: TaskRes[Any]) -> None:
        """Instrument hook: the task ended as ``res`` (counted by state; its wait and run
        times observed; it leaves the queued or running gauge)."""
        tier, runs_on = res.task.tier, res.runs_on
        kids = self._kids.get((tier, runs_on)) or self._bind(tier, runs_on)
        key = (res.state, tier, runs_on)
        ended = self._ended.get(key)
        if ended is None:
            ended = self._ended[key] = self.finished.labels(res.state.name, tier.name, runs_on)
        ended.inc()
        kids.wait.observe(res.wait_time)
        if res.attempts:
            kids.run.observe(res.run_time)
            kids.running.dec()
        else:
            kids.queued.dec()

    def __repr__(self) -> str:
        return f"<PrometheusInstrument {len(self._kids)} label set(s)>"


class _Kids:
    """The label children of one (tier, executor)."""

    __slots__ = ("queued", "run", "running", "started", "submitted", "wait")

    def __init__(
        self,
        submitted: Counter,
        started: Counter,
        wait: Histogram,
        run: Histogram,
        queued: Gauge,
        running: Gauge,
    ) -> None:
        self.submitted = submitted
        self.started = started
        self.wait = wait
        self.run = run
        self.queued = queued
        self.running = running
