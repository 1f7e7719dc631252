"""INSTRUMENTS: what each instrument adapter costs per task.

The same batch of no-op thread tasks (``Supervisor(threads=8)``, ``runs_on="thread"``,
specs built inside the timing as in W1) on four supervisors started on one event loop:
one with no instrument (the baseline), one with an instrument whose hooks do nothing
(what the engine itself pays to call instruments), one with ``taskvisor.prometheus``'s
``PrometheusInstrument`` (a private registry), one with ``taskvisor.otel``'s
``OpenTelemetryInstrument`` on the SDK (``SimpleSpanProcessor`` into an
``InMemorySpanExporter``, cleared before each run), one with the same instrument on the
API's no-op tracer (the instrument's own work without the SDK's). They alternate in one
process; the rows give the median µs per task, the ratio to the baseline, and in a
footnote the difference (the cost of the instrument per task).

A second group calls the hooks alone (``task_submitted``, ``task_started``,
``task_finished`` with a real ``TaskInfo`` and ``TaskRes``) in a loop: the same cost with
no scheduling noise around it, on the loop thread it is paid on.

A library that is not installed (``pip install -e '.[bench]'`` brings both) skips its
rows.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import taskvisor as tv
from taskvisor._delivery import TaskInfo

from ._common import THREADS, Config, Contender, Row, optional_import, profiled, timed_rows
from ._fns import noop

__all__ = ["run"]

WORKLOAD = f"no-op functions on {THREADS} threads"
HOOKS = "hooks alone (submitted, started, finished)"
BASE = "taskvisor, no instrument"


def _instruments() -> dict[str, tuple[object, Callable[[], None]]]:
    """label -> (instrument, what to do before each timed run)."""
    out: dict[str, tuple[object, Callable[[], None]]] = {
        "an instrument whose hooks do nothing": (_Empty(), lambda: None)
    }
    if optional_import("prometheus_client") is not None:
        from prometheus_client import CollectorRegistry

        from taskvisor.prometheus import PrometheusInstrument

        prom = PrometheusInstrument(registry=CollectorRegistry())
        out["PrometheusInstrument"] = (prom, lambda: None)
    if optional_import("opentelemetry.sdk.trace") is not None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )
        from opentelemetry.trace import NoOpTracer

        from taskvisor.otel import OpenTelemetryInstrument

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        otel = OpenTelemetryInstrument(tracer_provider=provider)
        out["OpenTelemetryInstrument, SDK + in-memory exporter"] = (otel, exporter.clear)
        noop_otel = OpenTelemetryInstrument(tracer=NoOpTracer())
        out["OpenTelemetryInstrument, no-op tracer"] = (noop_otel, lambda: None)
    return out


class _Empty:
    """The engine's own cost of calling an instrument: hooks that do nothing."""

    def task_submitted(self, info: TaskInfo) -> None:
        pass

    def task_started(self, info: TaskInfo) -> None:
        pass

    def task_finished(self, res: tv.TaskRes[Any]) -> None:
        pass


def run(cfg: Config) -> list[Row]:
    n = cfg.size(10_000, 2_000)
    reps = cfg.reps if cfg.quick else max(cfg.reps, 5)  # small differences: more samples
    instruments = _instruments()
    rows: list[Row] = []
    with asyncio.Runner() as runner:
        sups = {BASE: tv.Supervisor(threads=THREADS, aloops=())}
        for label, (inst, _) in instruments.items():
            sups[label] = tv.Supervisor(threads=THREADS, aloops=(), instruments=[inst])
        for sup in sups.values():
            runner.run(sup.start())

        def contender(label: str) -> Callable[[int], float]:
            sup = sups[label]
            before = instruments[label][1] if label in instruments else None

            async def go(n: int) -> float:
                t0 = time.perf_counter()
                report = await sup.gather(tv.Task(noop, runs_on="thread") for _ in range(n))
                dt = time.perf_counter() - t0
                assert report.ok, report
                return dt

            def timed(n: int) -> float:
                if before is not None:
                    before()
                return runner.run(go(n))

            return timed

        try:
            for label in sups:  # start every pool's threads
                contender(label)(4 * THREADS)
            contenders = [Contender(BASE, contender(BASE))] + [
                Contender(f"with {label}", contender(label), taskvisor=True, baseline=BASE)
                for label in instruments
            ]
            rows = timed_rows("INSTRUMENTS", WORKLOAD, n, contenders, reps)
            base = rows[0].value
            for row in rows[1:]:
                if base is not None and row.value is not None:
                    row.note = f"{row.contender}: {row.value - base:+.1f} µs per task"
                    row.extra["added_us"] = row.value - base
            for label in instruments:
                with profiled(cfg.profile, f"INSTRUMENTS with {label}, {n} thread tasks"):
                    contender(label)(n)
        finally:
            for sup in sups.values():
                runner.run(sup.aclose())
        # a real TaskInfo and TaskRes to feed the hooks with
        res = runner.run(_one_result())
    for label, (inst, before) in instruments.items():
        if isinstance(inst, _Empty):
            continue
        rows.append(_hooks_row(label, inst, before, res, n, reps))
    return rows


async def _one_result() -> tv.TaskRes[Any]:
    async with tv.Supervisor(aloops=()) as sup:
        return await sup.submit(noop, runs_on="thread")


def _hooks_row(
    label: str, inst: Any, before: Callable[[], None], res: tv.TaskRes[Any], n: int, reps: int
) -> Row:
    """µs per task of the three hooks a task makes, called directly."""
    samples = []
    for _ in range(reps):
        before()
        infos = [
            (
                TaskInfo(res.name, spec, res.runs_on, 0, None, 0.0),
                TaskInfo(res.name, spec, res.runs_on, 1, None, 1e-5),
                res._replace(task=spec),
            )
            for spec in (tv.Task(noop, runs_on="thread") for _ in range(n))
        ]  # (a spec per task: the OpenTelemetry instrument keeps state per spec)
        gc.collect()
        t0 = time.perf_counter()
        for sub, start, end in infos:
            inst.task_submitted(sub)
            inst.task_started(start)
            inst.task_finished(end)
        samples.append((time.perf_counter() - t0) / n * 1e6)
    return Row("INSTRUMENTS", HOOKS, n, label, statistics.median(samples), samples=samples)
