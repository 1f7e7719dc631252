"""W4: dependency graphs against Dask's threaded scheduler; W6: how the cost scales.

W4 runs a layered DAG of 100 x 100 no-op tasks, each taking the results of 2 random tasks
of the layer before (fixed seed), and a chain of 2,000 tasks, each taking the result of
the one before. taskvisor passes ``parent.output`` as the arguments (an implicit
dependency) and runs the functions on ``THREADS`` threads; Dask runs the same graph as a
dict through ``dask.threaded.get`` with the same number of workers. Both build their graph
from the same edge list inside the timing. Without dask installed (``pip install
'.[bench]'``), the baseline is reported as skipped.

W6 runs W4's layered shape (width 100, each task 2 random parents) at 1k, 10k, 100k and
1M tasks on taskvisor alone and reports µs per task at each size, with the ratio to 10k.
"""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import time
from typing import Any

import taskvisor as tv

from ._common import (
    THREADS,
    Config,
    Contender,
    Row,
    Target,
    optional_import,
    profiled,
    timed_rows,
)
from ._fns import noop_args

__all__ = ["chain", "layered", "run_scaling", "run_w4"]

Graph = list[tuple[str, tuple[str, ...]]]  # (name, parents) in topological order
WIDTH = 100


def layered(width: int, depth: int, seed: int = 4) -> Graph:
    """``depth`` layers of ``width`` tasks, each with 2 distinct random parents."""
    rng = random.Random(seed)
    graph: Graph = [(f"L0-{i}", ()) for i in range(width)]
    for d in range(1, depth):
        for i in range(width):
            a, b = rng.sample(range(width), 2)
            graph.append((f"L{d}-{i}", (f"L{d - 1}-{a}", f"L{d - 1}-{b}")))
    return graph


def chain(n: int) -> Graph:
    return [(f"C{i}", (f"C{i - 1}",) if i else ()) for i in range(n)]


def tv_tasks(graph: Graph) -> list[tv.Task[None]]:
    tasks: dict[str, tv.Task[None]] = {}
    for name, parents in graph:
        args = tuple(tasks[p].output for p in parents)
        tasks[name] = tv.Task(noop_args, args, name=name, runs_on="thread")
    return list(tasks.values())


async def tv_graph(graph: Graph) -> float:
    """Seconds for taskvisor to build and run ``graph`` (start and close excluded)."""
    async with tv.Supervisor(threads=THREADS, aloops=()) as sup:
        t0 = time.perf_counter()
        report = await sup.gather(tv_tasks(graph))
        dt = time.perf_counter() - t0
    assert report.ok, report
    return dt


def dask_graph(threaded: Any, graph: Graph) -> float:
    t0 = time.perf_counter()
    dsk = {name: (noop_args, *parents) for name, parents in graph}
    threaded.get(dsk, list(dsk), num_workers=THREADS)
    return time.perf_counter() - t0


def run_w4(cfg: Config) -> list[Row]:
    depth = cfg.size(100, 20)
    # issue 13's targets: the layered DAG 5x faster than Dask's threaded scheduler, the
    # chain at most 25 µs per link (the row's own number)
    layered_target = Target("<=", 0.2, text="<= 0.2x (5x faster)")
    chain_target = Target("<=", 25.0, on="value", text="<= 25 µs/link (issue 13)")
    shapes = [
        (
            f"layered DAG {depth} x {WIDTH}, 2 parents each",
            layered(WIDTH, depth),
            layered_target,
        ),
        (f"chain of {cfg.size(2_000, 500):,}", chain(cfg.size(2_000, 500)), chain_target),
    ]
    threaded = optional_import("dask.threaded")
    rows: list[Row] = []
    with asyncio.Runner() as runner:
        for label, graph, target in shapes:

            def ours(n: int, graph: Graph = graph) -> float:
                return runner.run(tv_graph(graph))

            def theirs(n: int, graph: Graph = graph) -> float:
                return dask_graph(threaded, graph)

            base = "dask.threaded.get"
            contenders = [
                Contender(
                    f"taskvisor threads={THREADS}",
                    ours,
                    taskvisor=True,
                    baseline=base,
                    target=target,
                )
            ]
            if threaded is not None:
                contenders.append(Contender(base, theirs))
                theirs(len(graph))  # warm Dask's cached pool
            ours(len(graph))
            got = timed_rows("W4", label, len(graph), contenders, cfg.reps)
            if threaded is None:
                got.append(Row("W4", label, len(graph), base, None, note="dask not installed"))
                got[0].baseline = base
                got[0].target = target.describe()
            rows += got
            with profiled(cfg.profile, f"W4 taskvisor, {label}"):
                ours(len(graph))
    return rows


def run_scaling(cfg: Config) -> list[Row]:
    sizes = [1_000, 10_000] if cfg.quick else [1_000, 10_000, 100_000, 1_000_000]

    def reps_for(size: int) -> int:  # the biggest sizes take minutes a run
        return cfg.reps if size <= 10_000 else (min(cfg.reps, 3) if size <= 100_000 else 1)

    samples: dict[int, list[float]] = {s: [] for s in sizes}
    with asyncio.Runner() as runner:
        runner.run(tv_graph(layered(WIDTH, 2)))  # warm up
        for rep in range(cfg.reps):  # sizes interleaved, rep by rep
            for size in sizes:
                if rep < reps_for(size):
                    graph = layered(WIDTH, size // WIDTH)
                    # a closed supervisor's records are freed by the cyclic GC: collect the
                    # last run's now, not inside this one's timing
                    gc.collect()
                    samples[size].append(runner.run(tv_graph(graph)) / size * 1e6)
                    del graph
        if cfg.profile:
            big = sizes[-1] if cfg.quick else 100_000
            graph = layered(WIDTH, big // WIDTH)
            with profiled(cfg.profile, f"W6 taskvisor, {big:,} tasks"):
                runner.run(tv_graph(graph))
    medians = {s: statistics.median(v) for s, v in samples.items()}
    rows = []
    for size in sizes:
        row = Row(
            "W6",
            f"layered DAG, width {WIDTH}, taskvisor threads={THREADS}",
            size,
            f"taskvisor at {size:,}",
            medians[size],
            samples=samples[size],
            baseline="taskvisor at 10,000",
            ratio=medians[size] / medians[10_000],
        )
        if size == 1_000_000:
            row.set_target(Target("<=", 1.2))
        rows.append(row)
    return rows
