"""MPI: the per-task cost of a rank's child process (``MPIExecutor(isolate=True)``).

Needs ``mpiexec``, so it is not one of ``python -m benchmarks``' workloads; run it as::

    mpiexec -n 3 python -m mpi4py.futures -m benchmarks.mpi_ranks [N] [REPS]

Rank 0 runs N no-op tasks (default 2,000) through ``tv.run`` on one ``MPIPoolExecutor``
in four ways, alternated for REPS repetitions (default 3) after a warm-up round that
starts every rank's child: raw ``pool.submit`` futures (the baseline), the pool given as
is in ``executors=`` (the generic path), ``MPIExecutor(pool, isolate=False)`` and
``MPIExecutor(pool, isolate=True)``. Prints the median µs per task of each and its ratio
to the raw futures. The numbers and what they mean are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from mpi4py.futures import MPIPoolExecutor

import taskvisor as tv
from benchmarks._fns import noop
from taskvisor.mpi import MPIExecutor


def _raw(pool: MPIPoolExecutor, n: int) -> None:
    futures = [pool.submit(noop) for _ in range(n)]
    for f in futures:
        f.result()


def _through(executor: Any) -> Callable[[MPIPoolExecutor, int], None]:
    def run(pool: MPIPoolExecutor, n: int) -> None:
        tasks = [tv.Task(noop, name=f"t{i}", runs_on="mpi") for i in range(n)]
        report = tv.run(tasks, aloops=(), executors={"mpi": executor})
        assert len(report.returns) == n, report

    return run


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    with MPIPoolExecutor() as pool:
        ways: dict[str, Callable[[MPIPoolExecutor, int], None]] = {
            "raw pool.submit": _raw,
            "bare pool in executors=": _through(pool),
            "MPIExecutor(isolate=False)": _through(MPIExecutor(pool, isolate=False)),
            "MPIExecutor(isolate=True)": _through(MPIExecutor(pool, isolate=True)),
        }
        for run in ways.values():  # warm-up: the ranks, their children, the imports
            run(pool, 50)
        samples: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(reps):
            for name, run in ways.items():
                t0 = time.perf_counter()
                run(pool, n)
                samples[name].append((time.perf_counter() - t0) / n * 1e6)
        workers = pool.num_workers
    base = statistics.median(samples["raw pool.submit"])
    print(f"{n} no-op tasks on {workers} worker ranks, median of {reps}")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:28} {median:8.1f} µs/task  {median / base:5.2f}x")


if __name__ == "__main__":
    main()
