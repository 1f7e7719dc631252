"""OpenTelemetry tracing for taskvisor: an instrument on ``opentelemetry-api``.

    pip install taskvisor[otel]     # and an SDK and exporter of your choice

:class:`OpenTelemetryInstrument` makes one span per task, from its submission to its end.

Why the span is made when the task ends. Every submitted task ends in exactly one
``TaskRes`` (``task_finished``), and that result carries the task's real times
(``submitted_at``, ``finished_at``) and everything the span says (state, attempts, wait
and run time, the exception). So the span is started and ended in that one hook, with
``start_time`` at the submission and ``end_time`` at the end: it ends exactly once, also
for a task that was skipped or cancelled without ever running, and no span is left open if
a supervisor is abandoned. What happens in between (each attempt's start, a worker's
crash) is kept as a few numbers per task and becomes span events with their own times:
the supervisor's clock readings (``TaskInfo.time``) are moved onto the wall clock by the
task's own submission (``submitted_at`` is ``to_wall`` of the submission's reading, and
``to_wall`` is a fixed offset). The cost of that choice: a span is exported when its task
ends, not before (as with any span), and its context does not exist while the task runs,
so the task's own code cannot open child spans of it.

Links. A task's span links to the spans of the tasks that provided what it required: for
each item in ``requires``, the task that last provided it (ended ``DONE``, or failed with
``TaskFailError(deps_ok=True)``) before this task first started, and the task behind each
``output`` reference. A task skipped because a parent did not succeed links to the
parents its :class:`~taskvisor.DependencyError` names. Providers are remembered per
thread that runs the hooks (a supervisor's loop thread), so two supervisors on different
threads never link to each other's tasks; the memory is dropped when a supervisor closes
and bounded by ``keep``.

Threads. Hooks run on each supervisor's loop thread; one instrument may serve several
supervisors, each on its own thread.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ._errors import missing_extra

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import Link, SpanContext, Status, StatusCode
except ImportError as exc:  # pragma: no cover (the tests run with it installed)
    raise missing_extra("taskvisor.otel", "opentelemetry-api", "otel") from exc

from ._errors import DependencyError, TaskFailError
from ._spec import safe_repr

if TYPE_CHECKING:
    from ._delivery import TaskInfo
    from ._result import RunReport, TaskRes
    from ._spec import Task

__all__ = ["OpenTelemetryInstrument"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_ROOT = otel_context.Context()  # no parent: the span starts a trace


def _str(item: object) -> str:
    """An item as text for an attribute (an item's own ``__str__`` may raise)."""
    try:
        return str(item)
    except Exception:
        return safe_repr(item)


def _ns(dt: datetime) -> int:
    """Epoch nanoseconds of an aware datetime, exact to its microsecond."""
    return (dt - _EPOCH) // _US * 1000


class _Live:
    """What is kept of a task between its submission and its end."""

    __slots__ = ("events", "links", "parent", "spec", "submitted")

    def __init__(self, spec: Task[Any], submitted: float, parent: otel_context.Context) -> None:
        self.spec = spec
        self.submitted = submitted  # the supervisor's clock
        self.parent = parent
        self.events: list[tuple[str, float, dict[str, Any]]] = []
        self.links: list[Link] | None = None  # fixed at the first start


class _Scope:
    """The spans of the tasks that ended on one thread (see the module docstring)."""

    __slots__ = ("by_item", "by_name")

    def __init__(self) -> None:
        self.by_item: dict[Hashable, tuple[SpanContext, str]] = {}
        self.by_name: dict[str, SpanContext] = {}


class OpenTelemetryInstrument:
    """An instrument that traces every task as an OpenTelemetry span.

    ::

        from opentelemetry.sdk.trace import TracerProvider
        from taskvisor.otel import OpenTelemetryInstrument

        provider = TracerProvider()  # with your span processors and exporters
        tv.run(tasks, instruments=[OpenTelemetryInstrument(tracer_provider=provider)])

    Parameters:

    * ``tracer_provider``: where the tracer comes from (default: the global one,
      ``opentelemetry.trace.set_tracer_provider``, looked up when spans are made, so the
      instrument may be built before the provider is set).
    * ``tracer``: a tracer to use instead (give at most one of the two).
    * ``keep``: how many ended tasks' span contexts each thread remembers for the links
      of tasks that depend on them (default 10,000, as ``result_buffer``).

    One span per task, named after the task, from ``submitted_at`` to ``finished_at``
    (made when the task ends: see the module's essay), kind ``INTERNAL``. Its parent is
    the span that was current where the task was submitted (the code that called
    ``submit``, ``run``, ``gather`` or :func:`taskvisor.run` on the supervisor's loop),
    else it starts a trace. Attributes: ``taskvisor.task.name``, ``.tier`` (the tier's
    name), ``.priority``, ``.runs_on``, ``.state``, ``.attempts``, ``.wait_time`` and
    ``.run_time`` (seconds), and ``.worker`` when known. Events: ``taskvisor.attempt``
    at each attempt's dispatch (attribute ``taskvisor.attempt``: 1, 2 …), and
    ``taskvisor.worker_crashed`` (``taskvisor.attempt``, ``taskvisor.worker``). A task
    that did not succeed (``FAILED``, a timeout included, ``SKIPPED``, ``CANCELLED``) has
    status ``ERROR`` with ``"STATE: Type: message"`` and its exception recorded (with the
    traceback text of ``excinfo``, a process task's as formatted in its worker). Links to
    the spans of its providers carry ``taskvisor.link`` (``"provided"`` or ``"failed"``),
    ``taskvisor.task`` (the provider's name) and ``taskvisor.items`` (what it provided:
    ``str`` of each item, ``"output"`` for an ``output`` reference).
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        tracer: trace.Tracer | None = None,
        *,
        keep: int = 10_000,
    ) -> None:
        if tracer is not None and tracer_provider is not None:
            raise TypeError("give OpenTelemetryInstrument a tracer or a tracer_provider, not both")
        if tracer is None:
            from . import __version__

            tracer = trace.get_tracer("taskvisor", __version__, tracer_provider=tracer_provider)
        self.tracer = tracer
        self.keep = keep
        self._live: dict[int, _Live] = {}
        self._scopes: dict[int, _Scope] = {}

    # -- hooks -----------------------------------------------------------------------------

    def task_submitted(self, info: TaskInfo) -> None:
        """Instrument hook: remember the submission (its clock reading, and the current
        span as the parent)."""
        ctx = otel_context.get_current()
        parent = ctx if trace.get_current_span(ctx).get_span_context().is_valid else _ROOT
        self._live[id(info.task)] = _Live(info.task, info.time, parent)

    def task_started(self, info: TaskInfo) -> None:
        """Instrument hook: an attempt was dispatched (an event; the first fixes the
        links, the dependencies being met then)."""
        live = self._live.get(id(info.task))
        if live is None or live.spec is not info.task:
            return
        live.events.append(("taskvisor.attempt", info.time, {"taskvisor.attempt": info.attempt}))
        if live.links is None:
            live.links = self._links(info.task, None)

    def worker_crashed(self, info: TaskInfo) -> None:
        """Instrument hook: the worker running an attempt died (an event)."""
        live = self._live.get(id(info.task))
        if live is None or live.spec is not info.task:
            return
        attrs: dict[str, Any] = {"taskvisor.attempt": info.attempt}
        if info.worker is not None:
            attrs["taskvisor.worker"] = info.worker
        live.events.append(("taskvisor.worker_crashed", info.time, attrs))

    def task_finished(self, res: TaskRes[Any]) -> None:
        """Instrument hook: the task ended: its span is made and ended, with the times,
        attributes, events, links and status of ``res``."""
        spec = res.task
        live = self._live.pop(id(spec), None)
        if live is not None and live.spec is not spec:  # (not ours: put it back)
            self._live[id(spec)] = live
            live = None
        start = _ns(res.submitted_at)
        end = max(_ns(res.finished_at), start)
        err = res.error
        links = live.links if live is not None and live.links is not None else None
        if links is None:
            links = self._links(spec, err)
        attrs: dict[str, Any] = {
            "taskvisor.task.name": res.name,
            "taskvisor.task.tier": spec.tier.name,
            "taskvisor.task.priority": spec.priority,
            "taskvisor.task.runs_on": res.runs_on,
            "taskvisor.task.state": res.state.name,
            "taskvisor.task.attempts": res.attempts,
            "taskvisor.task.wait_time": res.wait_time,
            "taskvisor.task.run_time": res.run_time,
        }
        if res.worker is not None:
            attrs["taskvisor.task.worker"] = res.worker
        span = self.tracer.start_span(
            res.name,
            context=live.parent if live is not None else _ROOT,
            kind=trace.SpanKind.INTERNAL,
            attributes=attrs,
            links=links,
            start_time=start,
            record_exception=False,
            set_status_on_exception=False,
        )
        try:
            if live is not None:
                for name, t, event_attrs in live.events:
                    at = start + int((t - live.submitted) * 1e9)
                    span.add_event(name, event_attrs, timestamp=min(max(at, start), end))
            if err is not None:
                text = res.excinfo.text if res.excinfo is not None else ""
                span.record_exception(err, attributes={"exception.stacktrace": text}, timestamp=end)
                span.set_status(
                    Status(StatusCode.ERROR, f"{res.state.name}: {type(err).__name__}: {_str(err)}")
                )
        finally:
            span.end(end_time=end)
        self._remember(res, span.get_span_context())

    def supervisor_closed(self, report: RunReport) -> None:
        """Instrument hook: a supervisor closed: forget the span contexts kept for links
        on its thread (every task it had has ended)."""
        self._scopes.pop(threading.get_ident(), None)

    # -- links -----------------------------------------------------------------------------

    def _scope(self) -> _Scope:
        tid = threading.get_ident()
        scope = self._scopes.get(tid)
        if scope is None:
            scope = self._scopes[tid] = _Scope()
        return scope

    def _links(self, spec: Task[Any], err: BaseException | None) -> list[Link]:
        """Links to the spans of the tasks that provided what ``spec`` requires (and, for
        a task skipped after a parent's failure, to those parents)."""
        if not (spec.requires or spec.refs or isinstance(err, DependencyError)):
            return []
        scope = self._scope()
        # one link per provider (a SpanContext is a tuple, but its TraceState is no
        # hashable: keyed by the provider's name)
        found: dict[str, tuple[SpanContext, str, list[str]]] = {}
        for item in spec.requires:
            hit = scope.by_item.get(item)
            if hit is not None:
                found.setdefault(hit[1], (hit[0], "provided", []))[2].append(_str(item))
        for name in spec.refs:
            ctx = scope.by_name.get(name)
            if ctx is not None:
                found.setdefault(name, (ctx, "provided", []))[2].append("output")
        if isinstance(err, DependencyError):
            for name in err.failed:
                ctx = scope.by_name.get(name)
                if ctx is not None and name not in found:
                    found[name] = (ctx, "failed", [])
        return [
            Link(
                ctx,
                {
                    "taskvisor.link": kind,
                    "taskvisor.task": name,
                    "taskvisor.items": tuple(sorted(items)),
                },
            )
            for name, (ctx, kind, items) in found.items()
        ]

    def _remember(self, res: TaskRes[Any], ctx: SpanContext) -> None:
        scope = self._scope()
        keep = self.keep
        by_name = scope.by_name
        by_name.pop(res.name, None)  # (a reused name: now the newest)
        by_name[res.name] = ctx
        if len(by_name) > keep:
            del by_name[next(iter(by_name))]
        provides = res.task.provides
        if not provides:
            return
        err = res.error
        if res.ok or (isinstance(err, TaskFailError) and err.deps_ok):
            by_item = scope.by_item
            for item in provides:
                by_item.pop(item, None)
                by_item[item] = (ctx, res.name)
            while len(by_item) > keep:
                del by_item[next(iter(by_item))]

    def __repr__(self) -> str:
        return f"<OpenTelemetryInstrument {len(self._live)} task(s) in flight>"
