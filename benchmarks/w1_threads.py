"""W1: independent no-op functions on threads.

taskvisor ``Supervisor(threads=N)`` with ``runs_on="thread"`` against raw
``loop.run_in_executor`` on a ``ThreadPoolExecutor(N)``, ``anyio.to_thread.run_sync``
with a ``CapacityLimiter(N)``, and the floor of any runtime on a thread pool: a bare
``ThreadPoolExecutor.submit`` with a done-callback per call, the last of which wakes the
loop once (issue 13's baseline: no asyncio future per call, no result kept). All live
on one event loop for the whole workload, with their threads started by a warm-up, so
every repetition measures the steady state.
Building the ``Task`` specs is inside taskvisor's timing, as a coroutine call is inside
the baselines'.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import anyio
import anyio.to_thread

import taskvisor as tv

from ._common import THREADS, Config, Contender, Row, Target, profiled, timed_rows
from ._fns import noop

__all__ = ["run"]

WORKLOAD = f"no-op functions on {THREADS} threads"
FLOOR = "ThreadPoolExecutor.submit + done-callback"


def run(cfg: Config) -> list[Row]:
    n = cfg.size(10_000, 2_000)
    with asyncio.Runner() as runner:
        sup = tv.Supervisor(threads=THREADS, aloops=())
        pool = ThreadPoolExecutor(THREADS)
        runner.run(sup.start())
        limiter = runner.run(_limiter())

        async def ours(n: int) -> float:
            t0 = time.perf_counter()
            report = await sup.gather(tv.Task(noop, runs_on="thread") for _ in range(n))
            dt = time.perf_counter() - t0
            assert report.ok, report
            return dt

        async def executor(n: int) -> float:
            loop = asyncio.get_running_loop()
            t0 = time.perf_counter()
            await asyncio.gather(*(loop.run_in_executor(pool, noop) for _ in range(n)))
            return time.perf_counter() - t0

        async def submit_callback(n: int) -> float:
            loop = asyncio.get_running_loop()
            done = asyncio.Event()
            left = [n]
            lock = threading.Lock()

            def one_done(_f: object) -> None:
                with lock:
                    left[0] -= 1
                    last = left[0] == 0
                if last:
                    loop.call_soon_threadsafe(done.set)

            t0 = time.perf_counter()
            for _ in range(n):
                pool.submit(noop).add_done_callback(one_done)
            await done.wait()
            return time.perf_counter() - t0

        async def to_thread(n: int) -> float:
            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(n):
                    tg.start_soon(_one_to_thread, limiter)
            return time.perf_counter() - t0

        for warm in (ours, executor, to_thread, submit_callback):  # start every pool's threads
            runner.run(warm(4 * THREADS))
        base = "loop.run_in_executor"
        contenders = [
            Contender(
                f"taskvisor threads={THREADS}",
                lambda n: runner.run(ours(n)),
                taskvisor=True,
                baseline=base,
                target=Target("<=", 0.7),
            ),
            Contender(base, lambda n: runner.run(executor(n))),
            Contender(
                "anyio.to_thread.run_sync",
                lambda n: runner.run(to_thread(n)),
                baseline=base,
            ),
            Contender(FLOOR, lambda n: runner.run(submit_callback(n))),
            Contender(
                f"taskvisor threads={THREADS}, again beside the floor",
                lambda n: runner.run(ours(n)),
                taskvisor=True,
                baseline=FLOOR,
                target=Target("<=", 1.5),
            ),
        ]
        rows = timed_rows("W1", WORKLOAD, n, contenders, cfg.reps)
        with profiled(cfg.profile, f"W1 taskvisor, {n} thread tasks"):
            runner.run(ours(n))
        runner.run(sup.aclose())
        pool.shutdown()
    return rows


async def _limiter() -> anyio.CapacityLimiter:
    return anyio.CapacityLimiter(THREADS)


async def _one_to_thread(limiter: anyio.CapacityLimiter) -> None:
    await anyio.to_thread.run_sync(noop, limiter=limiter)
