"""Per-task overhead of taskvisor beside raw asyncio baselines, measured in one process.

    python -m benchmarks            # full sizes: 10,000 thread tasks, 100,000 coroutines
    python -m benchmarks --smoke    # tiny sizes: checks that everything runs (CI)

Each workload alternates taskvisor and its baseline for several repetitions and reports
the median µs per task and the ratio taskvisor / baseline. Absolute times mean little on
their own; the ratio against a baseline measured in the same run is the number to read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import taskvisor as tv

THREADS = 8


def noop() -> None:
    return None


async def anoop() -> None:
    return None


async def _tv_gather(tasks: list[tv.Task[Any]], **options: Any) -> float:
    """Seconds for one ``sup.gather`` of ``tasks`` (the supervisor's start/stop excluded)."""
    async with tv.Supervisor(**options) as sup:
        t0 = time.perf_counter()
        report = await sup.gather(tasks)
        dt = time.perf_counter() - t0
    assert report.ok
    return dt


async def tv_threads(n: int) -> float:
    tasks = [tv.Task(noop, name=f"t{i}") for i in range(n)]
    return await _tv_gather(tasks, threads=THREADS, aloops=())


async def raw_run_in_executor(n: int) -> float:
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(THREADS) as pool:
        t0 = time.perf_counter()
        await asyncio.gather(*(loop.run_in_executor(pool, noop) for _ in range(n)))
        return time.perf_counter() - t0


async def tv_coroutines(n: int, runs_on: str) -> float:
    tasks = [tv.Task(anoop, name=f"c{i}", runs_on=runs_on) for i in range(n)]
    return await _tv_gather(tasks, aloops=("default",))


async def raw_gather(n: int) -> float:
    t0 = time.perf_counter()
    await asyncio.gather(*(anoop() for _ in range(n)))
    return time.perf_counter() - t0


def measure(fn: Callable[[int], Awaitable[float]], n: int) -> float:
    return asyncio.run(fn(n))  # type: ignore[arg-type]


def workload(
    label: str,
    n: int,
    reps: int,
    ours: Callable[[int], Awaitable[float]],
    base_label: str,
    base: Callable[[int], Awaitable[float]],
) -> dict[str, object]:
    mine: list[float] = []
    theirs: list[float] = []
    for _ in range(reps):  # alternate, so drift in machine load hits both alike
        mine.append(measure(ours, n) / n * 1e6)
        theirs.append(measure(base, n) / n * 1e6)
    m, b = statistics.median(mine), statistics.median(theirs)
    return {
        "workload": label,
        "tasks": n,
        "taskvisor_us": m,
        "baseline": base_label,
        "baseline_us": b,
        "ratio": m / b,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    scale, reps = (100, 1) if args.smoke else (1, args.reps)
    n_threads, n_coros = 10_000 // scale, 100_000 // scale
    rows = [
        workload(
            "no-op functions on threads",
            n_threads,
            reps,
            tv_threads,
            "loop.run_in_executor",
            raw_run_in_executor,
        ),
        workload(
            "no-op coroutines on the default aloop",
            n_coros,
            reps,
            lambda n: tv_coroutines(n, "aloop"),
            "asyncio.gather",
            raw_gather,
        ),
        workload(
            "no-op coroutines on the main loop",
            n_coros,
            reps,
            lambda n: tv_coroutines(n, "main"),
            "asyncio.gather",
            raw_gather,
        ),
    ]
    print(
        f"python {platform.python_version()} on {platform.processor() or platform.machine()}"
        f", {reps} repetition(s), medians"
    )
    print(
        f"{'workload':<40} {'tasks':>7} {'taskvisor µs':>13} {'baseline':<22} "
        f"{'baseline µs':>11} {'ratio':>6}"
    )
    for r in rows:
        print(
            f"{r['workload']:<40} {r['tasks']:>7} {r['taskvisor_us']:>13.2f} "
            f"{r['baseline']:<22} {r['baseline_us']:>11.2f} {r['ratio']:>6.2f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
