"""W5: resident memory per pending task.

A ``Supervisor(pool_size=1)`` has its one slot taken by a blocker (a ``runs_on="main"``
coroutine waiting on an ``asyncio.Event``); then N no-op functions are submitted one by
one with ``sup.submit(fn)``, handles dropped, and the RSS growth divided by N is the cost
of one pending task (its spec, the planner's and the supervisor's records). Then the
blocker is released and the supervisor closed with ``cancel=True`` (running a million
no-ops would only measure W1 again); the time that close takes is reported too.

Baselines, measured the same way: a pending ``asyncio.Task`` waiting on an Event, and a
``ThreadPoolExecutor(1).submit`` queued behind a blocked worker. Each measurement runs in
a fresh interpreter, so that what earlier workloads left in the allocator neither hides
nor inflates the growth; 1,000 tasks are queued before the first reading to warm up.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import taskvisor as tv

from ._common import Config, Row, Target, child_main, run_child, settle_memory
from ._fns import noop

__all__ = ["run"]

WARM = 1_000
KINDS = ("taskvisor", "asyncio.Task", "ThreadPoolExecutor.submit")


async def _taskvisor(n: int) -> dict[str, Any]:
    release = asyncio.Event()

    async def blocker() -> None:
        await release.wait()

    sup = tv.Supervisor(pool_size=1, threads=1, aloops=())
    await sup.start()
    sup.submit(blocker, runs_on="main")
    for _ in range(WARM):
        sup.submit(noop)
    await asyncio.sleep(0)
    before = settle_memory()
    t0 = time.perf_counter()
    for _ in range(n):
        sup.submit(noop)  # the handle is dropped: only taskvisor's own records stay
    submit_s = time.perf_counter() - t0
    after = settle_memory()
    queued = sup.statistics().tasks[tv.State.QUEUED]
    release.set()
    t0 = time.perf_counter()
    report = await sup.aclose(cancel=True)
    close_s = time.perf_counter() - t0
    return {
        "before": before,
        "after": after,
        "submit_s": submit_s,
        "close_s": close_s,
        "queued": queued,
        "closed_with": len(report),
    }


async def _asyncio_tasks(n: int) -> dict[str, Any]:
    release = asyncio.Event()
    loop = asyncio.get_running_loop()
    for _ in range(WARM):
        loop.create_task(release.wait())  # noqa: RUF006 (the Event's waiters keep it)
    await asyncio.sleep(0)
    before = settle_memory()
    t0 = time.perf_counter()
    for _ in range(n):
        loop.create_task(release.wait())  # noqa: RUF006 (the Event's waiters keep it)
    await asyncio.sleep(0)  # every task runs to its first await
    submit_s = time.perf_counter() - t0
    after = settle_memory()
    release.set()
    t0 = time.perf_counter()
    for _ in range(3):
        await asyncio.sleep(0)
    return {
        "before": before,
        "after": after,
        "submit_s": submit_s,
        "close_s": time.perf_counter() - t0,
    }


def _executor(n: int) -> dict[str, Any]:
    release = threading.Event()
    pool = ThreadPoolExecutor(1)
    pool.submit(release.wait)
    for _ in range(WARM):
        pool.submit(noop)
    before = settle_memory()
    t0 = time.perf_counter()
    for _ in range(n):
        pool.submit(noop)
    submit_s = time.perf_counter() - t0
    after = settle_memory()
    release.set()
    t0 = time.perf_counter()
    pool.shutdown(wait=True, cancel_futures=True)
    return {
        "before": before,
        "after": after,
        "submit_s": submit_s,
        "close_s": time.perf_counter() - t0,
    }


def child(args: dict[str, Any]) -> dict[str, Any]:
    kind, n = str(args["kind"]), int(args["n"])
    if kind == "taskvisor":
        return asyncio.run(_taskvisor(n))
    if kind == "asyncio.Task":
        return asyncio.run(_asyncio_tasks(n))
    return _executor(n)


LABELS = {
    "taskvisor": "taskvisor sup.submit(fn), pool_size=1",
    "asyncio.Task": "asyncio.Task pending on an Event",
    "ThreadPoolExecutor.submit": "ThreadPoolExecutor.submit, worker blocked",
}


def run(cfg: Config) -> list[Row]:
    sizes = [5_000, 20_000] if cfg.quick else [100_000, 1_000_000]
    rows = []
    for n in sizes:
        samples: dict[str, list[float]] = {k: [] for k in KINDS}
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
        # memory readings barely vary; a million submits take minutes
        reps = 1 if cfg.quick or n >= 1_000_000 else min(cfg.reps, 2)
        for _ in range(reps):
            for kind in KINDS:
                got = run_child(__name__, {"kind": kind, "n": n})
                samples[kind].append((got["after"] - got["before"]) / n / 1024)
                runs[kind].append(got)
        medians = {k: statistics.median(v) for k, v in samples.items()}
        for kind in KINDS:
            row = Row(
                "W5",
                "RSS per pending task",
                n,
                LABELS[kind],
                medians[kind],
                unit="KiB/task",
                samples=samples[kind],
                extra={"runs": runs[kind]},
            )
            if kind == "taskvisor":
                base = medians["asyncio.Task"]
                row.baseline = LABELS["asyncio.Task"]
                row.ratio = medians[kind] / base if base > 0 else None
                row.set_target(Target("<=", 0.5, on="value", text="<= 0.5 KiB (issue 13)"))
                submit = min(r["submit_s"] for r in runs[kind]) / n * 1e6
                close = min(r["close_s"] for r in runs[kind])
                row.note = f"(submit {submit:.0f} µs/task; aclose(cancel=True) {close:.1f} s)"
            rows.append(row)
    return rows


if __name__ == "__main__":
    child_main(child)
