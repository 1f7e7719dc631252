"""SERVICE (issue 10): background workers in a long-lived supervisor, default settings.

Each run in a fresh interpreter, on one ``Supervisor()`` with its defaults (so
``result_buffer=10,000``: flat memory is the default, not an option):

- interval: ``sup.every(0.001, noop)`` on the main loop for 60 s (quick: 5 s);
- queue: ``sup.consume(asyncio.Queue, noop, concurrency=8)`` over 1,000,000 items (quick:
  50,000), a producer keeping up to 10,000 items queued (``queue.join()`` paces it: the worker calls
  ``task_done()`` after each run).

RSS is read after a warm-up (10%), in the middle and at the end; memory is *flat* when the
end is within 5% of the middle. Every run must succeed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import taskvisor as tv

from ._common import Config, Row, child_main, rss, run_child
from ._fns import noop

__all__ = ["run"]

FLAT = 0.05
CONCURRENCY = 8  # runs of the queue worker at a time


def _noop_item(item: int) -> None:
    del item


async def _interval(seconds: float) -> dict[str, Any]:
    readings: dict[str, int] = {}
    async with tv.Supervisor(aloops=()) as sup:
        w = sup.every(0.001, noop, runs_on="main", name="tick")
        t0 = time.perf_counter()
        for label, frac in (("warm", 0.1), ("middle", 0.5), ("end", 1.0)):
            await asyncio.sleep(t0 + seconds * frac - time.perf_counter())
            readings[label] = rss()
        w.stop()
        await w.wait()
    return {"rss": readings, "runs": w.runs, "failures": w.failures, "seconds": seconds}


async def _queue(n: int) -> dict[str, Any]:
    readings: dict[str, int] = {}
    q: asyncio.Queue[int] = asyncio.Queue()
    marks = {n // 10: "warm", n // 2: "middle", n - 10_000: "end"}
    t0 = time.perf_counter()
    async with tv.Supervisor(aloops=()) as sup:
        w = sup.consume(q, _noop_item, runs_on="main", name="items", concurrency=CONCURRENCY)
        for i in range(n):
            q.put_nowait(i)
            if q.qsize() >= 10_000:
                await q.join()
            label = marks.get(i)
            if label is not None:
                readings[label] = rss()
        await q.join()
        w.stop()
    elapsed = time.perf_counter() - t0
    return {"rss": readings, "runs": w.runs, "failures": w.failures, "us": elapsed / n * 1e6}


def child(args: dict[str, Any]) -> dict[str, Any]:
    if args["kind"] == "interval":
        return asyncio.run(_interval(args["seconds"]))
    return asyncio.run(_queue(args["n"]))


def run(cfg: Config) -> list[Row]:
    rows = []
    mib = 1024 * 1024
    plans: list[tuple[str, dict[str, Any], str]] = [
        (
            "interval",
            {"kind": "interval", "seconds": 5.0 if cfg.quick else 60.0},
            "every(0.001) for {seconds:.0f} s",
        ),
        (
            "queue",
            {"kind": "queue", "n": cfg.size(1_000_000, 50_000)},
            "consume() over {n:,} items",
        ),
    ]
    for kind, args, what in plans:
        got = run_child(__name__, args)
        r = got["rss"]
        mid_end = r["end"] / r["middle"] - 1
        row = Row(
            "SERVICE",
            what.format(**args),
            got["runs"],
            f"taskvisor defaults ({kind} worker)",
            (r["end"] - r["warm"]) / mib,
            unit="MiB growth",
            extra=got,
        )
        row.target = "flat within 5%"
        row.met = abs(mid_end) <= FLAT and got["failures"] == 0
        speed = f"; {got['us']:.0f} µs/item" if "us" in got else ""
        row.note = (
            f"RSS MiB warm {r['warm'] / mib:.0f}, mid {r['middle'] / mib:.0f}, "
            f"end {r['end'] / mib:.0f} (end/mid {mid_end:+.1%}); {got['runs']:,} runs, "
            f"{got['failures']} failed{speed}"
        )
        rows.append(row)
    return rows


if __name__ == "__main__":
    child_main(child)
