"""SOAK (issue 3): does a long-lived supervisor stay flat in memory, and do crashes stay local?

Two runs, each in a fresh interpreter, driving one ``Supervisor(result_buffer=1000)`` as a
long-lived service would: a bounded window of tasks in flight (batches submitted with
``sup.run`` and read to the end; a new batch goes in as soon as one completes).

- thread: 1,000,000 no-op functions on the thread pool, a window of 10,000.
- process: 100,000 no-op functions on 2 worker processes, a window of 1,000, where 1% of
  the tasks kill their own worker (``os.kill(os.getpid(), SIGKILL)``). Those must end
  ``FAILED`` with ``WorkerCrashed``; every other task must end ``DONE``.

RSS is read at the start (before any task), after a warm-up of 10% of the tasks, in the
middle and at the end (when all but one window have ended, so that every reading but the
first has a full window in flight); memory is *flat* when the end is within 10% of both
the middle and the post-warm-up reading. The reading after the last task is kept too.
The quick run scales the counts down (50,000 and 1,000).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import taskvisor as tv

from ._common import THREADS, Config, Row, child_main, rss, run_child
from ._fns import die_if, noop

__all__ = ["run"]

KILL_EVERY = 100  # 1% of the process tasks kill their worker
FLAT = 0.10


async def _soak(kind: str, n: int, window: int, batch: int) -> dict[str, Any]:
    # readings taken with a full window in flight, so that they compare like with like
    marks = {"warm": n // 10, "middle": n // 2, "end": n - window}
    if not 0 < marks["warm"] < marks["middle"] < marks["end"]:
        raise ValueError(f"soak of {n} tasks with a window of {window}: window too big")
    rss_at: dict[str, int] = {}
    curve: list[tuple[int, int]] = []
    states: Counter[str] = Counter()
    crashed_as_expected = 0
    collateral: Counter[str] = Counter()  # tasks that should be DONE and are not: why
    wrong_killers: Counter[str] = Counter()  # killer tasks that did not end WorkerCrashed
    ended = 0
    step = max(1, n // 20)

    def make(i: int) -> tv.Task[Any]:
        if kind == "thread":
            return tv.Task(noop, runs_on="thread")
        kill = i % KILL_EVERY == KILL_EVERY // 2
        return tv.Task(die_if, (kill,), name=f"{'kill' if kill else 'ok'}-{i}", runs_on="process")

    sup = tv.Supervisor(threads=THREADS, processes=2, aloops=(), result_buffer=1000)
    await sup.start()
    if kind == "process":  # start the workers before the first reading
        warm = await sup.gather([tv.Task(noop, runs_on="process") for _ in range(4)])
        assert warm.ok, warm
    rss_at["start"] = rss()
    slots = asyncio.Semaphore(max(1, window // batch))
    t0 = time.perf_counter()

    async def consume(specs: list[tv.Task[Any]]) -> None:
        nonlocal ended, crashed_as_expected
        try:
            async for res in sup.run(specs):
                ended += 1
                states[res.state.name] += 1
                killer = res.name.startswith("kill-")
                crashed = res.excinfo is not None and isinstance(res.excinfo.val, tv.WorkerCrashed)
                if killer:
                    if crashed and res.state is tv.State.FAILED:
                        crashed_as_expected += 1
                    else:
                        wrong_killers[f"{res.state.name} {_why(res)}"] += 1
                elif res.state is not tv.State.DONE:
                    collateral[f"{res.state.name} {_why(res)}"] += 1
                for label, at in marks.items():
                    if ended == at and label not in rss_at:
                        rss_at[label] = rss()
                if ended % step == 0:
                    curve.append((ended, rss()))
        finally:
            slots.release()

    async with asyncio.TaskGroup() as tg:
        for first in range(0, n, batch):
            await slots.acquire()
            specs = [make(i) for i in range(first, min(n, first + batch))]
            tg.create_task(consume(specs))
    elapsed = time.perf_counter() - t0
    rss_at["drained"] = rss()
    await sup.aclose()
    return {
        "rss": rss_at,
        "curve": curve,
        "states": dict(states),
        "ended": ended,
        "crashed_as_expected": crashed_as_expected,
        "killers": sum(1 for i in range(n) if i % KILL_EVERY == KILL_EVERY // 2)
        if kind == "process"
        else 0,
        "collateral": dict(collateral),
        "wrong_killers": dict(wrong_killers),
        "us_per_task": elapsed / n * 1e6,
    }


def _why(res: tv.TaskRes[Any]) -> str:
    return "" if res.excinfo is None else res.excinfo.type.__name__


def child(args: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_soak(args["kind"], args["n"], args["window"], args["batch"]))


def run(cfg: Config) -> list[Row]:
    plans = [
        ("thread", cfg.size(1_000_000, 50_000), 10_000, 1_000),
        ("process", cfg.size(100_000, 1_000), cfg.size(1_000, 200), cfg.size(100, 20)),
    ]
    rows = []
    for kind, n, window, batch in plans:
        got = run_child(__name__, {"kind": kind, "n": n, "window": window, "batch": batch})
        r = got["rss"]
        mid_end = r["end"] / r["middle"] - 1
        warm_end = r["end"] / r["warm"] - 1
        flat = abs(mid_end) <= FLAT and abs(warm_end) <= FLAT
        what = (
            f"{n:,} no-op functions on threads, window {window:,}"
            if kind == "thread"
            else f"{n:,} on 2 processes, 1% kill their worker, window {window:,}"
        )
        mib = 1024 * 1024
        row = Row(
            "SOAK",
            what,
            n,
            f"taskvisor result_buffer=1000 ({kind})",
            (r["end"] - r["warm"]) / mib,
            unit="MiB growth",
            extra=got,
        )
        row.target = "flat within 10%"
        row.met = flat
        notes = [
            f"RSS MiB start {r['start'] / mib:.0f}, warm {r['warm'] / mib:.0f}, "
            f"mid {r['middle'] / mib:.0f}, end {r['end'] / mib:.0f} "
            f"(end/mid {mid_end:+.0%}, end/warm {warm_end:+.0%}); {got['us_per_task']:.0f} µs/task"
        ]
        if kind == "process":
            notes.append(
                f"; {got['crashed_as_expected']}/{got['killers']} killers WorkerCrashed, "
                f"collateral {sum(got['collateral'].values())} {got['collateral'] or ''}"
            )
        row.note = "".join(notes)
        rows.append(row)
    return rows


if __name__ == "__main__":
    child_main(child)
