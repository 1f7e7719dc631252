"""Worker start-up: from a process worker's spawn to its first task's answer.

    python -m benchmarks.worker_start              # 15 runs of each, medians in ms
    python -m benchmarks.worker_start --runs 31 --importtime

A spawned worker is a fresh interpreter: it starts Python, runs multiprocessing's spawn
bootstrap, imports the module of its entry point (and with it the ``taskvisor`` package
``__init__``) and the parent's main module, and only then answers. Measured, alternating,
``--runs`` times each (one warm-up of each first: the spawn context's resource tracker
starts once per parent):

* ``bare spawn`` — the baseline: a spawn ``Process`` whose target (in this module, which
  imports only the standard library) sends one message back on a pipe;
* ``bare spawn, pool args`` — the same child handed what a pool worker gets (two pipe
  ends, a ``Lock``, a ``RawArray``): the floor for any worker of this design;
* ``ProcessPool`` — a new pool of one worker, from ``submit`` to the sink's answer;
* ``Supervisor`` — ``Supervisor(processes=1)``, from ``submit`` to the ``TaskRes``;
* ``ProcessPool, forkserver`` — the pool with ``start_method="forkserver"``: each worker
  is forked from a server started once (in the warm-up), so no interpreter start-up and
  no ``multiprocessing`` bootstrap per worker; what it still pays is its own imports.

The task is ``os.getpid`` (it unpickles without importing anything). The ratio column is
against ``bare spawn`` measured in the same run. ``--importtime`` also starts one pool
worker with ``PYTHONPROFILEIMPORTTIME`` and prints the child's most expensive imports
(cumulative µs, as ``python -X importtime`` reports them).

Run it as a module, never through ``python -m benchmarks``: a spawn child re-imports the
parent's main module, and that one imports taskvisor whole. For the same reason nothing
here imports taskvisor at module level. Whether the children find compiled bytecode
matters (``PYTHONDONTWRITEBYTECODE`` with no ``__pycache__`` makes every worker compile
taskvisor's sources): it is printed in the header.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

# (a spawn child re-imports this module: what else it needs is imported where used)

__all__ = ["main"]

WAIT = 60.0  # a failure guard


# ------------------------------------------------------------------ run in the children


def _bare_child(conn: Connection) -> None:
    conn.send(os.getpid())
    conn.close()


def _bare_child_pool_args(conn: Connection, jobs: Connection, lock: Any, ctl: Any) -> None:
    with lock:
        ctl[0] = 1
    conn.send(os.getpid())
    conn.close()


# ------------------------------------------------------------------ contenders


def bare_spawn() -> float:
    ctx = multiprocessing.get_context("spawn")
    r, w = ctx.Pipe(duplex=False)
    t0 = time.perf_counter()
    proc = ctx.Process(target=_bare_child, args=(w,))
    proc.start()
    w.close()
    if not r.poll(WAIT):
        raise RuntimeError("the bare child did not answer")
    r.recv()
    took = time.perf_counter() - t0
    proc.join()
    r.close()
    return took


def bare_spawn_pool_args() -> float:
    ctx = multiprocessing.get_context("spawn")
    r, w = ctx.Pipe(duplex=False)
    t0 = time.perf_counter()
    jobs_r, jobs_w = ctx.Pipe(duplex=False)
    lock, ctl = ctx.Lock(), ctx.RawArray("q", 2)
    proc = ctx.Process(target=_bare_child_pool_args, args=(w, jobs_r, lock, ctl))
    proc.start()
    w.close()
    jobs_r.close()
    if not r.poll(WAIT):
        raise RuntimeError("the bare child did not answer")
    r.recv()
    took = time.perf_counter() - t0
    proc.join()
    r.close()
    jobs_w.close()
    return took


def process_pool(start_method: str = "spawn") -> float:
    from taskvisor._executors import Job
    from taskvisor._procpool import ProcessPool

    done = threading.Event()
    answers: list[Any] = []

    def sink(job: Any, result: Any) -> None:
        answers.append(result)
        done.set()

    pool = ProcessPool(1, sink, start_method=start_method)
    job = Job("first", os.getpid, (), {}, None, "process")
    try:
        t0 = time.perf_counter()
        pool.submit(job)
        if not done.wait(WAIT):
            raise RuntimeError("the pool did not answer")
        took = time.perf_counter() - t0
    finally:
        pool.shutdown()
    if answers[0][0].name != "OK":
        raise RuntimeError(f"the first task failed: {answers[0]}")
    return took


def supervisor() -> float:
    import asyncio

    import taskvisor as tv

    async def first() -> float:
        async with tv.Supervisor(processes=1, aloops=()) as sup:
            t0 = time.perf_counter()
            res = await sup.submit(os.getpid, name="first", runs_on="process")
            took = time.perf_counter() - t0
        if not res.ok:
            raise RuntimeError(f"the first task failed: {res}")
        return took

    return asyncio.run(first())


CONTENDERS: dict[str, Callable[[], float]] = {
    "bare spawn": bare_spawn,
    "bare spawn, pool args": bare_spawn_pool_args,
    "ProcessPool": process_pool,
    "Supervisor": supervisor,
    "ProcessPool, forkserver": lambda: process_pool("forkserver"),
}


# ------------------------------------------------------------------ the child's imports


def child_importtime(top: int) -> list[tuple[int, int, str]]:
    """One pool worker's imports: (cumulative µs, self µs, module), most expensive first."""
    import tempfile

    from taskvisor._executors import Job  # the parent's own imports, before the switch
    from taskvisor._procpool import ProcessPool

    done = threading.Event()
    with tempfile.TemporaryFile("w+") as log:
        saved = os.dup(2)
        os.environ["PYTHONPROFILEIMPORTTIME"] = "1"  # read by the child at start-up only
        os.dup2(log.fileno(), 2)  # the child inherits this stderr
        try:
            pool = ProcessPool(1, lambda job, result: done.set())
            pool.submit(Job("first", os.getpid, (), {}, None, "process"))
            ok = done.wait(WAIT)
            pool.shutdown()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            del os.environ["PYTHONPROFILEIMPORTTIME"]
        if not ok:
            raise RuntimeError("the pool did not answer")
        log.seek(0)
        rows = []
        for line in log:
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            own, cumulative, name = line.split(":", 1)[1].split("|")
            depth = (len(name) - len(name.lstrip()) - 1) // 2
            rows.append((int(cumulative), int(own), "  " * depth + name.strip()))
    rows.sort(reverse=True)
    return rows[:top]


# ------------------------------------------------------------------ main


def bytecode_note() -> str:
    import importlib.util

    spec = importlib.util.find_spec("taskvisor")
    origin = spec.origin if spec is not None else None
    cached = bool(origin) and os.path.isdir(
        os.path.join(os.path.dirname(origin or ""), "__pycache__")
    )
    writes = not sys.dont_write_bytecode
    return f"taskvisor __pycache__ present: {cached}; children may write bytecode: {writes}"


def main(argv: list[str] | None = None) -> int:
    import argparse
    import statistics

    ap = argparse.ArgumentParser(prog="python -m benchmarks.worker_start", description=__doc__)
    ap.add_argument("--runs", type=int, default=15, help="timed runs of each (default 15)")
    ap.add_argument("--only", help="comma-separated contender names")
    ap.add_argument("--importtime", action="store_true", help="the child's top imports too")
    ap.add_argument("--top", type=int, default=25, help="how many imports to print")
    args = ap.parse_args(argv)
    names = list(CONTENDERS) if not args.only else [n.strip() for n in args.only.split(",")]
    print(f"Python {sys.version.split()[0]} on {os.cpu_count()} CPUs, {bytecode_note()}")
    for name in names:  # warm-up: the resource tracker, the parent's own imports
        CONTENDERS[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.runs):
        for name in names:
            samples[name].append(CONTENDERS[name]())
    base = statistics.median(samples["bare spawn"]) if "bare spawn" in samples else None
    print(f"spawn to first answer, median of {args.runs} (ms; min-max):")
    for name in names:
        med = statistics.median(samples[name])
        ratio = f"  x{med / base:5.2f} bare spawn" if base else ""
        lo, hi = min(samples[name]) * 1e3, max(samples[name]) * 1e3
        print(f"  {name:24} {med * 1e3:7.1f} ms  ({lo:.1f}-{hi:.1f}){ratio}")
    if args.importtime:
        print("a pool worker's imports, most expensive first (cumulative / self, ms):")
        for cumulative, own, name in child_importtime(args.top):
            print(f"  {cumulative / 1e3:7.1f} {own / 1e3:7.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
