"""W3: no-op coroutines on the default aloop and on the main loop.

Baseline: ``asyncio.gather`` of the coroutines on one loop, on the stdlib loop and on
uvloop. taskvisor runs them with ``runs_on="aloop"`` (the default aloop, a uvloop in its
own thread) and ``runs_on="main"`` (tasks on the supervisor's own loop), each with the
supervisor on either kind of loop; every taskvisor row is compared with the baseline on
the same kind of loop. Each run gets a fresh loop; the supervisor's start and close are
outside the timing, building the ``Task`` specs is inside it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import taskvisor as tv

from ._common import Config, Contender, Row, Target, optional_import, profiled, run_loop, timed_rows
from ._fns import anoop

__all__ = ["run"]

WORKLOAD = "no-op coroutines"
LoopFactory = Callable[[], asyncio.AbstractEventLoop] | None


async def _ours(n: int, runs_on: str) -> float:
    aloops = ("default",) if runs_on == "aloop" else ()
    async with tv.Supervisor(aloops=aloops) as sup:
        t0 = time.perf_counter()
        report = await sup.gather(tv.Task(anoop, runs_on=runs_on) for _ in range(n))
        dt = time.perf_counter() - t0
    assert report.ok, report
    return dt


async def _gather(n: int) -> float:
    t0 = time.perf_counter()
    await asyncio.gather(*(anoop() for _ in range(n)))
    return time.perf_counter() - t0


def run(cfg: Config) -> list[Row]:
    n = cfg.size(100_000, 3_000)
    uvloop = optional_import("uvloop")
    loops: list[tuple[str, LoopFactory]] = [("asyncio", None)]
    if uvloop is not None:
        loops.append(("uvloop", uvloop.new_event_loop))
    contenders: list[Contender] = []
    for kind, factory in loops:
        base = f"asyncio.gather on {kind}"

        def gather(n: int, factory: LoopFactory = factory) -> float:
            return run_loop(_gather(n), factory)

        contenders.append(Contender(base, gather))
        for runs_on, target in (("aloop", 2.0), ("main", 1.5)):

            def ours(n: int, factory: LoopFactory = factory, runs_on: str = runs_on) -> float:
                return run_loop(_ours(n, runs_on), factory)

            contenders.append(
                Contender(
                    f"taskvisor runs_on={runs_on}, supervisor on {kind}",
                    ours,
                    taskvisor=True,
                    baseline=base,
                    target=Target("<=", target),
                )
            )
    rows = timed_rows("W3", WORKLOAD, n, contenders, cfg.reps)
    for runs_on in ("aloop", "main"):
        with profiled(cfg.profile, f"W3 taskvisor runs_on={runs_on}, {n} coroutines"):
            run_loop(_ours(n, runs_on), None)
    return rows
