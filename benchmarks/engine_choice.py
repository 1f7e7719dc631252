"""Who handles a thread task's completion: flat combining, the loop, or an engine thread.

    python -m benchmarks.engine_choice             # 5 repetitions, about 1-2 minutes
    python -m benchmarks.engine_choice --reps 3 --json engine.json

Three engine variants run the same workloads in one process, alternating (the order of
the variants rotates from one repetition to the next):

* ``combining`` — the supervisor as it is: a pool thread whose task succeeded while no
  other pool thread is busy finishes it itself under the engine lock (``Supervisor._sink``)
  and starts the next thread task right there; everything else goes to the loop's inbox;
* ``loop`` — every completion goes to the loop (``sup._inline = False`` after start);
* ``engine thread`` — a prototype: pool threads put their completions on a
  ``queue.SimpleQueue`` drained by one dedicated daemon thread, which takes the engine
  lock once per batch (everything the queue holds) and runs ``_on_done`` for each; the
  engine works from any thread (off the loop, thread dispatches are carried out in the
  calling thread, everything the loop owns is queued to it). Completions the loop itself
  produces keep going to ``inbox.put_local``. The sink is replaced *before* ``start()``,
  because ``start()`` hands ``self._sink`` to the pools (replacing it afterwards would
  not reach them).

The prototype keeps the supervisor's own rules for off-loop completions: only a
successful thread task that is not watched (no timeout) goes to the engine thread
(failures, retries, timeouts and other executors go to the inbox, as in ``_sink``), and
while instructions are queued for the loop (``_pending_exec``) or the supervisor is not
running, a completion is passed on to the inbox rather than given to the planner (the
planner never gets a new event before the loop has carried out what it gave earlier).
How many completions it handled and passed on is printed under the table.

Workloads (the sizes of the main benchmarks): W4's chain of 2,000 thread tasks, each
taking the previous one's ``output``; W1's 10,000 independent thread no-ops through
``gather``; W7's 10,000 no-op thread tasks submitted from 8 foreign threads, each then
blocking in ``result()``. Every run starts a fresh supervisor (8 threads), warms its pool
with ``4 x 8`` tasks, and times only the workload; every task must end ``DONE``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import taskvisor as tv
from taskvisor._executors import Job, Outcome, Result
from taskvisor._supervisor import SupervisorState

from ._common import THREADS, Row, format_table
from ._fns import noop, noop_args
from .w4_dag import chain, tv_tasks
from .w7_foreign import USERS, _in_users

__all__ = ["VARIANTS", "EngineThread", "main"]

COMBINING, LOOP, ENGINE = "combining", "loop", "engine thread"
VARIANTS = (COMBINING, LOOP, ENGINE)
WARM = 4 * THREADS
T = TypeVar("T")
Runs = Callable[[str, int], float]  # (variant, n) -> seconds


class EngineThread:
    """One dedicated thread that handles the pool threads' completions under the engine
    lock, a batch per lock hold. :meth:`install` before ``sup.start()``; :meth:`stop`
    after ``aclose``."""

    def __init__(self, sup: tv.Supervisor) -> None:
        self._sup = sup
        self._queue: queue.SimpleQueue[tuple[Job, Result] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="bench-engine", daemon=True)
        self.handled = 0  # completions given to the planner on the engine thread
        self.passed_on = 0  # sent to the loop's inbox by the engine thread (see the module)
        self.direct = 0  # sent to the inbox by the sink itself (not a plain thread success)
        self.batches = 0  # lock holds

    def install(self) -> None:
        self._sup._sink = self.sink  # type: ignore[method-assign]
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def sink(self, job: Job, result: Result) -> None:
        sup = self._sup
        inbox = sup._inbox
        assert inbox is not None
        if threading.get_ident() == sup._tid:
            inbox.put_local((job, result))
        elif result[0] is Outcome.OK and job.target in sup._inline_targets and not job.watch:
            self._queue.put((job, result))
        else:
            self.direct += 1
            inbox.put((job, result))

    def _run(self) -> None:
        sup, get, get_nowait = self._sup, self._queue.get, self._queue.get_nowait
        while True:
            batch = [get()]
            while True:
                try:
                    batch.append(get_nowait())
                except queue.Empty:
                    break
            stop = False
            self.batches += 1
            with sup._engine:
                for item in batch:
                    if item is None:
                        stop = True
                        continue
                    if sup.state is SupervisorState.RUNNING and not sup._pending_exec:
                        self.handled += 1
                        job, result = item
                        try:
                            sup._on_done(job, result)
                        except Exception as exc:  # as _sink does: the task fails loudly
                            sup._internal_error(job.name, exc, job=job)
                    else:
                        self.passed_on += 1
                        assert sup._inbox is not None
                        sup._inbox.put(item)
            if stop:
                return


class Variant:
    """A supervisor started as one of the VARIANTS, and what it takes to close it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sup = tv.Supervisor(threads=THREADS, aloops=())
        self.engine: EngineThread | None = None
        if name == ENGINE:
            self.engine = EngineThread(self.sup)
            self.engine.install()

    async def start(self) -> None:
        await self.sup.start()
        if self.name == LOOP:
            self.sup._inline = False  # every completion goes through the loop's inbox
        report = await self.sup.gather(tv.Task(noop, runs_on="thread") for _ in range(WARM))
        assert report.ok, report
        if self.engine is not None:  # count the timed work only
            self.engine.handled = self.engine.passed_on = self.engine.direct = 0
            self.engine.batches = 0

    async def close(self) -> None:
        await self.sup.aclose()
        if self.engine is not None:
            self.engine.stop()


def _all_done(results: list[tv.TaskRes[Any]], n: int, what: str) -> None:
    bad = [r for r in results if r.state is not tv.State.DONE]
    assert len(results) == n and not bad, f"{what}: {len(results)} results of {n}, {bad[:3]}"


def _count(v: Variant, stats: dict[str, int]) -> None:
    if v.engine is not None:
        for key in ("handled", "passed_on", "direct", "batches"):
            stats[key] = stats.get(key, 0) + int(getattr(v.engine, key))


async def _started(variant: str) -> Variant:
    v = Variant(variant)
    await v.start()
    return v


async def _gather_run(
    variant: str, make: Callable[[int], list[tv.Task[Any]]], n: int, stats: dict[str, int]
) -> float:
    """W4 chain, W1: one ``gather`` on the supervisor's own loop."""
    v = await _started(variant)
    try:
        gc.collect()
        t0 = time.perf_counter()
        report = await v.sup.gather(make(n))
        dt = time.perf_counter() - t0
    finally:
        await v.close()
    _count(v, stats)
    _all_done(list(report), n, variant)
    return dt


def _chain_tasks(n: int) -> list[tv.Task[Any]]:
    return list(tv_tasks(chain(n)))


def _independent_tasks(n: int) -> list[tv.Task[Any]]:
    return [tv.Task(noop_args, runs_on="thread") for _ in range(n)]


def _foreign_run(variant: str, n: int, stats: dict[str, int]) -> float:
    """W7: the supervisor on a loop of its own thread, USERS threads submit and wait."""
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, name="bench-supervisor-loop")
    loop_thread.start()

    def on_loop(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    results: list[tv.TaskRes[Any]] = []
    try:
        v = on_loop(_started(variant))
        sup = v.sup

        def share(k: int) -> None:
            handles = [sup.submit(noop, runs_on="thread") for _ in range(k)]
            results.extend([h.result() for h in handles])

        try:
            gc.collect()
            dt = _in_users(n, share)
        finally:
            on_loop(v.close())
        _count(v, stats)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        loop_thread.join()
        loop.close()
    _all_done(results, n // USERS * USERS, variant)
    return dt


def run(reps: int, quick: bool = False) -> list[Row]:
    """Alternate the VARIANTS on each workload; rows with µs per task and the ratio."""
    n_chain, n_ind, n_foreign = (500, 2_000, 2_000) if quick else (2_000, 10_000, 10_000)
    stats: dict[str, dict[str, int]] = {}
    runner = asyncio.Runner()

    def gathered(make: Callable[[int], list[tv.Task[Any]]], key: str) -> Runs:
        def one(variant: str, n: int) -> float:
            return runner.run(_gather_run(variant, make, n, stats.setdefault(key, {})))

        return one

    def foreign(variant: str, n: int) -> float:
        return _foreign_run(variant, n, stats.setdefault("W7", {}))

    workloads: list[tuple[str, str, int, Runs]] = [
        ("W4", f"chain of {n_chain:,} thread tasks", n_chain, gathered(_chain_tasks, "W4")),
        ("W1", f"{n_ind:,} independent thread no-ops", n_ind, gathered(_independent_tasks, "W1")),
        ("W7", f"{n_foreign:,} submits from {USERS} foreign threads", n_foreign, foreign),
    ]
    rows: list[Row] = []
    try:
        for group, label, n, one in workloads:
            for variant in VARIANTS:  # warm up imports and code paths (counters reset)
                one(variant, min(n, 400))
            stats.pop(group, None)
            samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for rep in range(reps):
                k = rep % len(VARIANTS)
                for variant in VARIANTS[k:] + VARIANTS[:k]:  # rotate who goes first
                    gc.collect()
                    samples[variant].append(one(variant, n) / n * 1e6)
            base = statistics.median(samples[COMBINING])
            for variant in VARIANTS:
                med = statistics.median(samples[variant])
                row = Row(group, label, n, variant, med, samples=samples[variant])
                if variant != COMBINING:
                    row.baseline, row.ratio = COMBINING, med / base
                if variant == ENGINE:
                    s = stats.get(group, {})
                    row.extra = dict(s)
                    row.note = (
                        f"{group}, engine thread, all timed runs: {s.get('handled', 0):,} "
                        f"completions handled in {s.get('batches', 0):,} lock holds; "
                        f"{s.get('passed_on', 0):,} passed on to the loop (instructions were "
                        f"queued for it); {s.get('direct', 0):,} sent to the loop by the sink"
                    )
                rows.append(row)
            print(f"{group} ({n:,} tasks, {reps} x {len(VARIANTS)} runs) done", flush=True)
    finally:
        runner.close()
    return rows


def _commit() -> str:
    """The git commit of the taskvisor source in use, ``+`` if its src has local changes."""
    here = os.path.dirname(os.path.abspath(tv.__file__))
    try:
        head = subprocess.run(
            ["git", "-C", here, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", here, "diff", "--quiet", "HEAD", "--", "."], check=False
        ).returncode
    except OSError:
        return "?"
    return (head or "?") + ("+" if head and dirty else "")


def main(argv: list[str] | None = None) -> int:
    from .__main__ import cpu_model

    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.engine_choice",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    ap.add_argument("--json", metavar="PATH", help="write every row and sample to PATH")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error("--reps must be >= 1")
    print(
        f"python {platform.python_version()} on {cpu_model()}, taskvisor at {_commit()}, "
        f"{args.reps} repetition(s), medians; ratio against {COMBINING!r}",
        flush=True,
    )
    t0 = time.perf_counter()
    rows = run(args.reps, args.quick)
    print()
    print(format_table(rows))
    print(f"\nin {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.as_json() for r in rows], f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
