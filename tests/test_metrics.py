"""The instrument adapters, with the real libraries: ``taskvisor.prometheus`` scraped from
its registry, ``taskvisor.otel`` through the OpenTelemetry SDK's in-memory exporter.

Every run is driven by a mock clock where time matters (a timeout jumps, never waits) and
synchronised on events; no assertion reads the wall clock: span times are compared with
the ``TaskRes`` times they must equal.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, StatusCode
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import taskvisor as tv
from taskvisor import State
from taskvisor.otel import OpenTelemetryInstrument
from taskvisor.prometheus import PrometheusInstrument
from taskvisor.testing import MockClock

from .workloads import fails_once

# -- a run with every outcome -----------------------------------------------------------------


def boom() -> None:
    raise ValueError("bad input")


async def hang() -> None:
    await asyncio.Event().wait()  # never set: only a timeout or a cancel ends it


async def on_aloop(x: int) -> int:
    await asyncio.sleep(0)
    return x + 1


def mixed() -> list[tv.Task[Any]]:
    """DONE on a thread and on an aloop (through an item and an output reference), FAILED,
    SKIPPED after it, DONE after a retry, FAILED by a timeout (on the main loop)."""
    a = tv.Task(abs, (-1,), name="a", provides={"x"}, runs_on="thread", tier=tv.HIGH)
    b = tv.Task(on_aloop, (a.output,), name="b", requires={"x"}, runs_on="aloop", priority=3)
    c = tv.Task(boom, name="c", provides={"y"}, runs_on="thread")
    d = tv.Task(abs, (1,), name="d", requires={"y"}, runs_on="thread", tier=tv.LOW)
    e = tv.Task(fails_once(), name="e", retries=1, runs_on="thread")
    f = tv.Task(hang, name="f", runs_on="main", timeout=5)
    return [a, b, c, d, e, f]


async def run_mixed(*instruments: object) -> tv.RunReport:
    async with tv.Supervisor(instruments=instruments, clock=MockClock(), threads=2) as sup:
        with pytest.warns(tv.TaskvisorWarning, match="1 dependent task"):
            report = await sup.gather(mixed())
    assert {r.name: r.state for r in report} == {
        "a": State.DONE,
        "b": State.DONE,
        "c": State.FAILED,
        "d": State.SKIPPED,
        "e": State.DONE,
        "f": State.FAILED,
    }
    assert isinstance(report["f"].error, tv.TaskTimeout)
    return report


# -- Prometheus -------------------------------------------------------------------------------


def sample(reg: CollectorRegistry, name: str, **labels: str) -> float:
    value = reg.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_prometheus_counts_a_run_with_every_outcome() -> None:
    reg = CollectorRegistry()
    report = await run_mixed(PrometheusInstrument(registry=reg))

    def s(name: str, **labels: str) -> float:
        return sample(reg, f"taskvisor_{name}", **labels)

    th, al, main = "thread", "aloop:default", "main"
    assert s("tasks_submitted_total", tier="NORMAL", runs_on=th) == 2  # c, e
    assert s("tasks_submitted_total", tier="HIGH", runs_on=th) == 1  # a
    assert s("tasks_submitted_total", tier="LOW", runs_on=th) == 1  # d
    assert s("tasks_submitted_total", tier="NORMAL", runs_on=al) == 1  # b
    assert s("tasks_submitted_total", tier="NORMAL", runs_on=main) == 1  # f
    # attempts: e twice, d never
    assert s("tasks_started_total", tier="NORMAL", runs_on=th) == 3
    assert s("tasks_started_total", tier="LOW", runs_on=th) == 0
    assert s("tasks_started_total", tier="NORMAL", runs_on=main) == 1
    fin = "tasks_finished_total"
    assert s(fin, state="DONE", tier="HIGH", runs_on=th) == 1
    assert s(fin, state="DONE", tier="NORMAL", runs_on=al) == 1
    assert s(fin, state="DONE", tier="NORMAL", runs_on=th) == 1  # e, after its retry
    assert s(fin, state="FAILED", tier="NORMAL", runs_on=th) == 1  # c
    assert s(fin, state="FAILED", tier="NORMAL", runs_on=main) == 1  # f, timed out
    assert s(fin, state="SKIPPED", tier="LOW", runs_on=th) == 1  # d
    # the histograms saw every task's wait, and the run time of those that ran
    assert s("task_wait_seconds_count", tier="LOW", runs_on=th) == 1
    assert s("task_run_seconds_count", tier="LOW", runs_on=th) == 0
    assert s("task_run_seconds_count", tier="NORMAL", runs_on=th) == 2
    assert s("task_run_seconds_sum", tier="NORMAL", runs_on=main) == report["f"].run_time == 5.0
    assert s("task_run_seconds_bucket", tier="NORMAL", runs_on=main, le="5.0") == 1
    assert s("task_run_seconds_bucket", tier="NORMAL", runs_on=main, le="1.0") == 0
    # nothing left in flight
    for tier in ("LOW", "NORMAL", "HIGH"):
        assert s("tasks_queued", tier=tier) == 0
    for on in (th, al, main):
        assert s("tasks_running", runs_on=on) == 0
    assert s("worker_crashes_total", runs_on=th) == 0


async def test_a_scrape_parses_and_counts_over_supervisors() -> None:
    """One instrument, two supervisors one after the other: the counts add up; the
    exposition text parses; a custom namespace names every metric."""
    reg = CollectorRegistry()
    inst = PrometheusInstrument(registry=reg, namespace="jobs", buckets=(0.5, 1.0))
    for _ in range(2):
        async with tv.Supervisor(instruments=[inst], aloops=()) as sup:
            await sup.gather([tv.Task(abs, (-1,), runs_on="thread") for _ in range(3)])
    text = generate_latest(reg).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # (the text format shows each counter's and histogram's _created as a family of its own)
    assert {n for n in families if not n.endswith("_created")} == {
        "jobs_tasks_submitted",
        "jobs_tasks_started",
        "jobs_tasks_finished",
        "jobs_worker_crashes",
        "jobs_task_wait_seconds",
        "jobs_task_run_seconds",
        "jobs_tasks_queued",
        "jobs_tasks_running",
    }
    [done] = [
        smp
        for smp in families["jobs_tasks_finished"].samples
        if smp.name == "jobs_tasks_finished_total"
    ]
    assert done.labels == {"state": "DONE", "tier": "NORMAL", "runs_on": "thread"}
    assert done.value == 6
    buckets = [
        smp.labels["le"]
        for smp in families["jobs_task_wait_seconds"].samples
        if smp.name.endswith("_bucket")
    ]
    assert buckets == ["0.5", "1.0", "+Inf"]


async def test_the_gauges_follow_tasks_in_flight() -> None:
    reg = CollectorRegistry()
    started = asyncio.Event()
    release = asyncio.Event()

    async def held() -> None:
        started.set()
        await release.wait()

    inst = PrometheusInstrument(registry=reg)
    async with tv.Supervisor(instruments=[inst], pool_size=1, aloops=()) as sup:
        first = sup.submit(held, name="held", runs_on="main")
        second = sup.submit(abs, -1, name="waits", runs_on="thread", tier=tv.LOW)
        await started.wait()
        assert sample(reg, "taskvisor_tasks_running", runs_on="main") == 1
        assert sample(reg, "taskvisor_tasks_queued", tier="NORMAL") == 0
        assert sample(reg, "taskvisor_tasks_queued", tier="LOW") == 1
        release.set()
        assert (await first).ok and (await second).ok
    assert sample(reg, "taskvisor_tasks_running", runs_on="main") == 0
    assert sample(reg, "taskvisor_tasks_queued", tier="LOW") == 0
    assert sample(reg, "taskvisor_tasks_running", runs_on="thread") == 0


def test_prometheus_registers_on_the_default_registry() -> None:
    inst = PrometheusInstrument(namespace="taskvisor_default_registry_test")
    try:
        assert inst.registry is REGISTRY
        tv.run([tv.Task(abs, (-2,))], instruments=[inst], aloops=())
        assert (
            REGISTRY.get_sample_value(
                "taskvisor_default_registry_test_tasks_finished_total",
                {"state": "DONE", "tier": "NORMAL", "runs_on": "thread"},
            )
            == 1
        )
        with pytest.raises(ValueError, match="Duplicated"):  # one instrument per registry
            PrometheusInstrument(namespace="taskvisor_default_registry_test")
    finally:
        for metric in (
            inst.submitted,
            inst.started,
            inst.finished,
            inst.crashes,
            inst.wait,
            inst.run,
            inst.queued,
            inst.running,
        ):
            REGISTRY.unregister(metric)


# -- OpenTelemetry ----------------------------------------------------------------------------


@pytest.fixture
def exporter() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exp = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    yield provider, exp
    provider.shutdown()


def by_name(exp: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    spans = exp.get_finished_spans()
    out = {s.name: s for s in spans}
    assert len(out) == len(spans), "a task has more than one span"
    return out


def ids(ctx: SpanContext | None) -> tuple[int, int]:
    assert ctx is not None
    return (ctx.trace_id, ctx.span_id)


def ns(dt: datetime) -> int:
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


async def test_one_span_per_task_with_its_times_attributes_and_status(
    exporter: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exp = exporter
    inst = OpenTelemetryInstrument(tracer_provider=provider)
    report = await run_mixed(inst)
    spans = by_name(exp)
    assert set(spans) == {r.name for r in report}
    for res in report:
        span = spans[res.name]
        # the TaskRes's own times, not the hook's
        assert (span.start_time, span.end_time) == (ns(res.submitted_at), ns(res.finished_at))
        attrs = dict(span.attributes or {})
        assert attrs == {
            "taskvisor.task.name": res.name,
            "taskvisor.task.tier": res.task.tier.name,
            "taskvisor.task.priority": res.task.priority,
            "taskvisor.task.runs_on": res.runs_on,
            "taskvisor.task.state": res.state.name,
            "taskvisor.task.attempts": res.attempts,
            "taskvisor.task.wait_time": res.wait_time,
            "taskvisor.task.run_time": res.run_time,
            **({"taskvisor.task.worker": res.worker} if res.worker else {}),
        }
        assert span.kind is trace.SpanKind.INTERNAL
        assert span.parent is None  # submitted with no current span: each starts a trace
        attempts = [e for e in span.events if e.name == "taskvisor.attempt"]
        assert [dict(e.attributes or {}) for e in attempts] == [
            {"taskvisor.attempt": n} for n in range(1, res.attempts + 1)
        ]
        times = [e.timestamp for e in span.events]
        assert times == sorted(times)
        assert all(span.start_time <= t <= span.end_time for t in times)  # type: ignore[operator]
        if res.ok:
            assert span.status.status_code is StatusCode.UNSET
            assert not [e for e in span.events if e.name == "exception"]
        else:
            err = res.error
            assert err is not None
            assert span.status.status_code is StatusCode.ERROR
            assert span.status.description == (f"{res.state.name}: {type(err).__name__}: {err}")
            [exc] = [e for e in span.events if e.name == "exception"]
            exc_attrs = dict(exc.attributes or {})
            cls = type(err)  # (named as the SDK names it: qualified, builtins bare)
            qual = cls.__qualname__
            assert exc_attrs["exception.type"] in (qual, f"{cls.__module__}.{qual}")
            assert exc_attrs["exception.message"] == str(err)
            assert exc_attrs["exception.stacktrace"] == res.excinfo.text  # type: ignore[union-attr]
    assert spans["e"].attributes["taskvisor.task.attempts"] == 2  # type: ignore[index]
    assert spans["f"].status.description.startswith("FAILED: TaskTimeout")  # type: ignore[union-attr]
    assert spans["d"].status.description.startswith("SKIPPED: DependencyError")  # type: ignore[union-attr]
    assert inst._live == {}  # nothing kept once every task ended


async def test_links_point_at_the_providers_spans(
    exporter: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exp = exporter
    await run_mixed(OpenTelemetryInstrument(tracer_provider=provider))
    spans = by_name(exp)
    # b needs item "x" and a's output: both from a, one link
    [link] = spans["b"].links
    assert ids(link.context) == ids(spans["a"].context)
    assert dict(link.attributes or {}) == {
        "taskvisor.link": "provided",
        "taskvisor.task": "a",
        "taskvisor.items": ("output", "x"),
    }
    # d was skipped: c never provided "y"; the link names c as the parent that failed
    [link] = spans["d"].links
    assert ids(link.context) == ids(spans["c"].context)
    assert dict(link.attributes or {}) == {
        "taskvisor.link": "failed",
        "taskvisor.task": "c",
        "taskvisor.items": (),
    }
    for name in "acef":
        assert spans[name].links == ()


async def test_a_chain_of_providers_and_the_parent_span(
    exporter: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """Tasks submitted under a current span are its children; a diamond's child links to
    both providers; a task needing an item provided in an earlier batch links to it."""
    provider, exp = exporter
    tracer = provider.get_tracer("test")
    inst = OpenTelemetryInstrument(tracer=tracer)
    async with tv.Supervisor(instruments=[inst], aloops=()) as sup:
        with tracer.start_as_current_span("batch") as batch:
            top = tv.Task(abs, (1,), name="top", provides={"cfg"})
            left = tv.Task(abs, (2,), name="left", requires={"cfg"}, provides={"l"})
            right = tv.Task(abs, (3,), name="right", requires={"cfg"}, provides={"r"})
            join = tv.Task(max, (left.output, right.output), name="join", requires={"l", "r"})
            assert (await sup.gather([top, left, right, join])).ok
        late = tv.Task(abs, (5,), name="late", requires={"cfg"})
        assert (await sup.gather([late])).ok
    spans = by_name(exp)
    for name in ("top", "left", "right", "join"):
        assert ids(spans[name].parent) == ids(batch.get_span_context())
        assert spans[name].context.trace_id == batch.get_span_context().trace_id
    assert spans["late"].parent is None
    links = {dict(lk.attributes or {})["taskvisor.task"]: lk for lk in spans["join"].links}
    assert set(links) == {"left", "right"}
    assert ids(links["left"].context) == ids(spans["left"].context)
    assert ids(links["right"].context) == ids(spans["right"].context)
    assert dict(links["left"].attributes or {})["taskvisor.items"] == ("l", "output")
    [link] = spans["late"].links
    assert ids(link.context) == ids(spans["top"].context)


async def test_spans_end_for_tasks_cancelled_or_skipped_at_close(
    exporter: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exp = exporter
    inst = OpenTelemetryInstrument(tracer_provider=provider)
    started = asyncio.Event()

    async def held() -> None:
        started.set()
        await asyncio.Event().wait()

    sup = tv.Supervisor(instruments=[inst], pool_size=1, aloops=())
    await sup.start()
    sup.submit(held, name="running", runs_on="main", provides={"p"})
    sup.submit(abs, -1, name="queued", runs_on="thread")
    sup.submit(abs, -1, name="waiting", runs_on="thread", requires={"p"})
    sup.submit(abs, -1, name="never provided", runs_on="thread", requires={"nobody"})
    await started.wait()
    assert exp.get_finished_spans() == ()  # nothing has ended yet
    report = await sup.aclose(cancel=True)
    states = {r.name: r.state for r in report}
    assert states["running"] is State.CANCELLED
    assert states["queued"] is State.CANCELLED
    spans = by_name(exp)
    assert set(spans) == {"running", "queued", "waiting", "never provided"}
    for res in report:
        span = spans[res.name]
        assert span.end_time == ns(res.finished_at)
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description.startswith(res.state.name)  # type: ignore[union-attr]
    assert [e.name for e in spans["running"].events] == ["taskvisor.attempt", "exception"]
    assert [e.name for e in spans["queued"].events] == ["exception"]
    assert inst._live == {} and inst._scopes == {}  # closing dropped the link memory


def test_a_tracer_or_a_provider_not_both() -> None:
    provider = TracerProvider()
    with pytest.raises(TypeError, match="not both"):
        OpenTelemetryInstrument(tracer_provider=provider, tracer=provider.get_tracer("x"))
    provider.shutdown()


# -- process tasks: a worker crash --------------------------------------------------------------


@pytest.mark.slow
async def test_process_tasks_and_a_worker_crash(
    exporter: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    from .workloads import die

    provider, exp = exporter
    reg = CollectorRegistry()
    instruments = [PrometheusInstrument(registry=reg), OpenTelemetryInstrument(provider)]
    async with tv.Supervisor(instruments=instruments, processes=1, aloops=()) as sup:
        crash = await sup.submit(die, 3, name="crash", runs_on="process")
        fine = await sup.submit(abs, -1, name="fine", runs_on="process")
    assert isinstance(crash.error, tv.WorkerCrashed) and fine.ok
    assert sample(reg, "taskvisor_worker_crashes_total", runs_on="process") == 1
    assert sample(reg, "taskvisor_tasks_started_total", tier="NORMAL", runs_on="process") == 2
    fin = "taskvisor_tasks_finished_total"
    assert sample(reg, fin, state="FAILED", tier="NORMAL", runs_on="process") == 1
    assert sample(reg, fin, state="DONE", tier="NORMAL", runs_on="process") == 1
    assert sample(reg, "taskvisor_tasks_running", runs_on="process") == 0
    spans = by_name(exp)
    names = [e.name for e in spans["crash"].events]
    assert names == ["taskvisor.attempt", "taskvisor.worker_crashed", "exception"]
    assert spans["crash"].status.description.startswith("FAILED: WorkerCrashed")  # type: ignore[union-attr]
    assert spans["fine"].status.status_code is StatusCode.UNSET


# -- optional: importing taskvisor loads neither library ---------------------------------------


def test_the_libraries_are_optional() -> None:
    code = (
        "import sys, taskvisor\n"
        "taskvisor.Supervisor, taskvisor.run\n"
        "print(sorted(m for m in ('prometheus_client', 'opentelemetry') if m in sys.modules))\n"
        "for mod, lib in (('prometheus', 'prometheus_client'), ('otel', 'opentelemetry')):\n"
        "    sys.modules[lib] = None  # as if not installed\n"
        "    try:\n"
        "        __import__('taskvisor.' + mod)\n"
        "    except ImportError as exc:\n"
        "        print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.splitlines() == [
        "[]",
        "taskvisor.prometheus needs prometheus-client: pip install taskvisor[prometheus]",
        "taskvisor.otel needs opentelemetry-api: pip install taskvisor[otel]",
    ], out
