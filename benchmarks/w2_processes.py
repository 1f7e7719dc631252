"""W2: no-op functions on 2 worker processes.

taskvisor ``Supervisor(processes=2)`` with ``runs_on="process"`` against a raw
``ProcessPoolExecutor(2)`` driven by ``loop.run_in_executor`` (the asyncio way), with
``ProcessPoolExecutor.map(chunksize=100)`` beside them for what chunking buys. Both pools
use the ``spawn`` start method (taskvisor's default) and are warmed up before timing, so
the workers' start-up is in neither number; they stay up across repetitions.
Whatever process pool taskvisor uses (the stdlib one, or its own crash-tolerant pool),
this file measures it as it is: rerun to update.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import taskvisor as tv

from ._common import Config, Contender, Row, Target, profiled, timed_rows
from ._fns import nap, noop, noop_args

__all__ = ["run"]

PROCESSES = 2
CHUNKED = "ProcessPoolExecutor.map chunksize=100"
WORKLOAD = f"no-op functions on {PROCESSES} processes"


def run(cfg: Config) -> list[Row]:
    n = cfg.size(2_000, 400)
    ctx = multiprocessing.get_context("spawn")
    with asyncio.Runner() as runner:
        sup = tv.Supervisor(processes=PROCESSES, aloops=(), start_method="spawn")
        pool = ProcessPoolExecutor(PROCESSES, mp_context=ctx)
        runner.run(sup.start())

        async def warm() -> None:
            # a nap per worker and then some: every worker is up and has imported the
            # benchmark functions before anything is timed
            naps = [tv.Task(nap, (0.2,), runs_on="process") for _ in range(2 * PROCESSES)]
            report = await sup.gather(naps)
            assert report.ok, report
            loop = asyncio.get_running_loop()
            await asyncio.gather(
                *(loop.run_in_executor(pool, nap, 0.2) for _ in range(2 * PROCESSES))
            )
            await ours(50)
            await executor(50)

        async def ours(n: int) -> float:
            t0 = time.perf_counter()
            report = await sup.gather(tv.Task(noop, runs_on="process") for _ in range(n))
            dt = time.perf_counter() - t0
            assert report.ok, report
            return dt

        async def executor(n: int) -> float:
            loop = asyncio.get_running_loop()
            t0 = time.perf_counter()
            await asyncio.gather(*(loop.run_in_executor(pool, noop) for _ in range(n)))
            return time.perf_counter() - t0

        def chunked(n: int) -> float:
            t0 = time.perf_counter()
            for _ in pool.map(noop_args, range(n), chunksize=100):
                pass
            return time.perf_counter() - t0

        runner.run(warm())
        base = "ProcessPoolExecutor run_in_executor"
        contenders = [
            Contender(
                f"taskvisor processes={PROCESSES}",
                lambda n: runner.run(ours(n)),
                taskvisor=True,
                baseline=base,
                target=Target("<=", 1.0, text="<= 1.0x (0.33x chunked)"),
            ),
            Contender(base, lambda n: runner.run(executor(n))),
            Contender(CHUNKED, chunked, baseline=base),
            Contender(
                f"taskvisor processes={PROCESSES}, again beside map(chunksize=100)",
                lambda n: runner.run(ours(n)),
                taskvisor=True,
                baseline=CHUNKED,
                target=Target("<=", 5.0, text="<= 5x (issue 13)"),
            ),
        ]
        rows = timed_rows("W2", WORKLOAD, n, contenders, cfg.reps)
        with profiled(cfg.profile, f"W2 taskvisor, {n} process tasks"):
            runner.run(ours(n))
        runner.run(sup.aclose())
        pool.shutdown()
    return rows
