"""A log-analytics pipeline on every kind of executor taskvisor has.

- ``fetch_shard``: coroutines on the aloop "io" (simulated downloads)
- ``parse``:       CPU work in worker processes, fed each shard as an argument (``output``)
- ``merge``:       a thread task that sums the parsed counts, providing "stats"
- ``store``/``index``: thread tasks that both claim the "db" lock (never at once); the
  index is HIGH tier so it is admitted first
- ``audit``:       a thread task that fails on a corrupt shard; ``publish`` requires its
  "audited" item and so is SKIPPED with a DependencyError naming it
- ``cleanup``:     LOW tier housekeeping

Each TaskRes is printed as it arrives, then the final RunReport.
Run it with ``nox -s pipeline`` (or ``python examples/pipeline.py`` with taskvisor installed).
"""

from __future__ import annotations

import asyncio
import collections
import json
import shutil
import sqlite3
import tempfile
import warnings
from pathlib import Path
from typing import Any

import taskvisor as tv

SHARDS = 4
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


async def fetch_shard(i: int) -> list[str]:
    """Pretend to download one shard of log lines."""
    await asyncio.sleep(0.01 * (SHARDS - i))  # shards arrive out of order
    lines = [
        f"2026-11-22T10:{n % 60:02d} {LEVELS[(n * (i + 3)) % 4]} svc{n % 3} msg {n}"
        for n in range(2_000)
    ]
    if i == 2:
        lines.append("\x00corrupt\x00")
    return lines


def parse(lines: list[str]) -> dict[str, int]:
    """Count log levels (CPU work: runs in a worker process)."""
    counts: collections.Counter[str] = collections.Counter()
    for line in lines:
        parts = line.split(" ")
        if len(parts) > 1 and parts[1] in LEVELS:
            counts[parts[1]] += 1
        else:
            counts["unparsed"] += 1
    return dict(counts)


def merge(*parts: dict[str, int], shared: dict[str, Any]) -> dict[str, int]:
    total: collections.Counter[str] = collections.Counter()
    for p in parts:
        total.update(p)
    shared["total_lines"] = sum(total.values())
    return dict(total)


def store(stats: dict[str, int], db: str) -> int:
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS levels (level TEXT PRIMARY KEY, n INTEGER)")
        conn.executemany("INSERT OR REPLACE INTO levels VALUES (?, ?)", stats.items())
    return len(stats)


def index(db: str) -> str:
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS levels (level TEXT PRIMARY KEY, n INTEGER)")
        conn.execute("CREATE INDEX IF NOT EXISTS by_n ON levels (n)")
    return "indexed"


def audit(stats: dict[str, int]) -> None:
    if stats.get("unparsed"):
        raise ValueError(f"{stats['unparsed']} corrupt line(s): refusing to publish")


def publish(stats: dict[str, int], shared: dict[str, Any]) -> str:
    return json.dumps({"stats": stats, "lines": shared["total_lines"]})


def cleanup(workdir: str) -> int:
    return sum(1 for _ in Path(workdir).iterdir())


async def main() -> None:
    workdir = tempfile.mkdtemp(prefix="taskvisor-example-")
    db = str(Path(workdir) / "stats.db")
    fetches = [
        tv.Task(fetch_shard, (i,), name=f"fetch{i}", runs_on="aloop:io") for i in range(SHARDS)
    ]
    parses = [
        tv.Task(parse, (f.output,), name=f"parse{i}", runs_on="process")
        for i, f in enumerate(fetches)
    ]
    merged = tv.Task(merge, tuple(p.output for p in parses), name="merge", provides="stats")
    tasks: list[tv.Task[Any]] = [
        *fetches,
        *parses,
        merged,
        tv.Task(store, (merged.output, db), name="store", claims="db"),
        tv.Task(index, (db,), name="index", claims="db", tier=tv.HIGH, requires="stats"),
        tv.Task(audit, (merged.output,), name="audit", provides="audited"),
        tv.Task(publish, (merged.output,), name="publish", requires="audited"),
        tv.Task(cleanup, (workdir,), name="cleanup", tier=tv.LOW, requires="stats"),
    ]
    async with tv.Supervisor(aloops=("io",), processes=2, pool_size=4) as sup:
        print(f"{'task':<8} {'state':<8} {'on':<9} result")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", tv.TaskvisorWarning)  # we print the skips below
            async for res in sup.run(tasks):
                what: Any = res.ret if res.ok else f"{type(res.error).__name__}: {res.error}"
                if isinstance(what, list):
                    what = f"{len(what)} lines"
                print(f"{res.name:<8} {res.state.name:<8} {res.runs_on:<9} {str(what)[:70]}")
        print()
        print(sup.report())
    shutil.rmtree(workdir)


if __name__ == "__main__":
    asyncio.run(main())
