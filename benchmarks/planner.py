"""The planner alone, with no event loop: events per second for submit, admit and finish.

``taskvisor._planner.Planner`` is the pure state machine behind the supervisor. Here it
is fed events directly: ``submit`` of N independent specs while paused (one call per task,
as ``sup.submit`` does, and one batch, as ``gather`` does), the admission of all of them
on ``set_paused(False)``, and ``finish(name, DONE)`` of each; then a whole W4-shaped
layered graph (submit as a sealed batch, finish every task in dispatch order). Building
the ``Task`` specs is timed on its own line and kept out of the others.
"""

from __future__ import annotations

import gc
import statistics
import time

import taskvisor as tv
from taskvisor._planner import Dispatch, Planner, State

from ._common import Config, Row, profiled
from ._fns import noop
from .w4_dag import WIDTH, layered, tv_tasks

__all__ = ["run"]


def _specs(n: int) -> list[tv.Task[None]]:
    return [tv.Task(noop, name=f"p{i}") for i in range(n)]


def _build(n: int) -> float:
    gc.collect()
    t0 = time.perf_counter()
    _specs(n)
    return time.perf_counter() - t0


def _cycle(specs: list[tv.Task[None]], *, batch: bool) -> dict[str, float]:
    """Seconds for submit (paused), admit (resume) and finish of independent specs."""
    n = len(specs)
    p = Planner()
    p.set_paused(True)
    gc.collect()
    t0 = time.perf_counter()
    if batch:
        p.submit(specs)
    else:
        for s in specs:
            p.submit([s])
    t1 = time.perf_counter()
    out = p.set_paused(False)
    t2 = time.perf_counter()
    for s in specs:
        p.finish(s.name, State.DONE)
    t3 = time.perf_counter()
    assert sum(isinstance(i, Dispatch) for i in out) == n
    return {"submit": t1 - t0, "admit": t2 - t1, "finish": t3 - t2}


def _dag(specs: list[tv.Task[None]]) -> float:
    """Seconds to submit a layered graph and finish all of it."""
    n = len(specs)
    p = Planner()
    gc.collect()
    t0 = time.perf_counter()
    todo = [i.name for i in p.submit(specs, sealed=True) if isinstance(i, Dispatch)]
    done = 0
    while todo:
        name = todo.pop()
        done += 1
        todo += [i.name for i in p.finish(name, State.DONE) if isinstance(i, Dispatch)]
    dt = time.perf_counter() - t0
    assert done == n, (done, n)
    return dt


def run(cfg: Config) -> list[Row]:
    n = cfg.size(100_000, 10_000)
    samples: dict[str, list[float]] = {}

    def add(label: str, seconds: float) -> None:
        samples.setdefault(label, []).append(n / seconds)

    specs = _specs(n)  # a fresh planner each time: the same specs serve every run
    dag = tv_tasks(layered(WIDTH, n // WIDTH))
    for _ in range(cfg.reps):  # the measurements interleaved, rep by rep
        add("Task() construction", _build(n))
        for event, seconds in _cycle(specs, batch=False).items():
            add(f"{event}, one call per task", seconds)
        add("submit, one batch", _cycle(specs, batch=True)["submit"])
        add("layered DAG: submit + admit + finish", _dag(dag))
    rows = []
    for label, s in samples.items():
        eps = statistics.median(s)
        row = Row("PLANNER", "planner alone, no loop", n, label, eps, unit="events/s", samples=s)
        row.note = f"({1e6 / eps:.1f} µs each)"
        rows.append(row)
    with profiled(cfg.profile, f"planner: layered DAG of {n:,}"):
        _dag(dag)
    return rows
