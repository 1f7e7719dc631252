"""DASK: taskvisor on a real ``distributed`` cluster beside raw distributed futures.

One ``LocalCluster`` (2 workers of 4 threads, ``processes=False``) and one synchronous
``Client`` serve every contender, alternating in the same process:

* ``n`` no-op tasks: taskvisor (a ``BackgroundSupervisor`` with a
  :class:`taskvisor.dask.DaskExecutor`, ``sup.gather`` of ``n`` tasks on ``runs_on="dask"``)
  beside ``client.submit`` per task + ``client.gather``, and ``client.map``;
* W4's layered DAG (100 x 100, each task taking the results of 2 tasks of the layer
  before) through taskvisor beside the same graph as raw futures (each
  ``client.submit(f, *parent_futures)``), and through a ``DaskExecutor(keep_remote=True)``
  (each output passed on as a Dask future: no batching, one Dask task per task, its
  answer back as a Dask event);
* the no-op tasks through a ``DaskExecutor(isolate=True)`` too (each task in a child
  process of its worker, so that a cancel or a crash costs the child, not the worker):
  what one round trip to a child per task adds.

Targets (issue 11): with batching, µs per task <= 1/3 of raw futures; the DAG no slower
than raw futures. ``keep_remote`` has no target: it trades speed (no batching, a layer of
the graph sent when the one before has answered) for values that never come back
through the client; its row says what that costs. Skipped when ``distributed`` is not installed.
"""

from __future__ import annotations

import time
from typing import Any

import taskvisor as tv

from ._common import Config, Contender, Row, Target, optional_import, timed_rows
from ._fns import noop, noop_args
from .w4_dag import WIDTH, layered

__all__ = ["run"]


def run(cfg: Config) -> list[Row]:
    distributed = optional_import("distributed")
    if distributed is None:
        return [Row("DASK", "distributed is not installed", 0, "skipped", 0.0)]
    from taskvisor.dask import DaskExecutor

    n = cfg.size(10_000, 200)
    depth = cfg.size(100, 4)
    graph = layered(WIDTH, depth)
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=4, processes=False, dashboard_address=":0"
    )
    client = distributed.Client(cluster)
    sup = tv.BackgroundSupervisor(aloops=(), executors={"dask": DaskExecutor(client)})
    sup.start()
    kept = tv.BackgroundSupervisor(
        aloops=(), executors={"dask": DaskExecutor(client, keep_remote=True)}, result_buffer=1
    )
    kept.start()
    isolated = tv.BackgroundSupervisor(
        aloops=(), executors={"dask": DaskExecutor(client, isolate=True)}
    )
    isolated.start()

    def noops_on(on: tv.BackgroundSupervisor, n: int) -> float:
        tasks = [tv.Task(noop, runs_on="dask") for _ in range(n)]
        t0 = time.perf_counter()
        assert on.gather(tasks).ok
        return time.perf_counter() - t0

    def ours(n: int) -> float:
        return noops_on(sup, n)

    def isolated_noops(n: int) -> float:
        return noops_on(isolated, n)

    def submit(n: int) -> float:
        t0 = time.perf_counter()
        futs = [client.submit(noop, pure=False) for _ in range(n)]
        client.gather(futs)
        return time.perf_counter() - t0

    def map_(n: int) -> float:
        t0 = time.perf_counter()
        client.gather(client.map(noop_args, range(n), pure=False))
        return time.perf_counter() - t0

    def dag_on(on: tv.BackgroundSupervisor) -> float:
        t0 = time.perf_counter()
        tasks: dict[str, tv.Task[None]] = {}
        for name, parents in graph:
            args = tuple(tasks[p].output for p in parents)
            tasks[name] = tv.Task(noop_args, args, name=name, runs_on="dask")
        assert on.gather(tasks.values()).ok
        return time.perf_counter() - t0

    def ours_dag(_n: int) -> float:
        return dag_on(sup)

    def kept_dag(_n: int) -> float:
        return dag_on(kept)

    def raw_dag(_n: int) -> float:
        t0 = time.perf_counter()
        futs: dict[str, Any] = {}
        for name, parents in graph:
            futs[name] = client.submit(noop_args, *(futs[p] for p in parents), pure=False)
        client.gather(list(futs.values()))
        return time.perf_counter() - t0

    try:
        for warm in (ours, submit, isolated_noops):  # (isolated: each thread's child starts)
            warm(100)
        base = "client.submit + gather"
        rows = timed_rows(
            "DASK",
            "no-op tasks on a LocalCluster (2 workers x 4 threads)",
            n,
            [
                Contender(
                    "taskvisor DaskExecutor",
                    ours,
                    taskvisor=True,
                    baseline=base,
                    target=Target("<=", 1 / 3, text="<= 0.33x (with batching)"),
                ),
                Contender(base, submit),
                Contender("client.map + gather", map_),
                Contender(
                    "taskvisor DaskExecutor(isolate=True)",
                    isolated_noops,
                    taskvisor=True,
                    baseline=base,
                ),
            ],
            cfg.reps,
        )
        base = "raw futures (submit with parent futures)"
        rows += timed_rows(
            "DASK",
            f"layered DAG {WIDTH} x {depth} on the same cluster",
            len(graph),
            [
                Contender(
                    "taskvisor DaskExecutor",
                    ours_dag,
                    taskvisor=True,
                    baseline=base,
                    target=Target("<=", 1.0),
                ),
                Contender(base, raw_dag),
                Contender(
                    "taskvisor DaskExecutor(keep_remote=True)",
                    kept_dag,
                    taskvisor=True,
                    baseline=base,
                ),
            ],
            cfg.reps,
        )
    finally:
        sup.close()
        kept.close()
        isolated.close()
        client.close()
        cluster.close()
    return rows
