"""W7: submits from foreign threads, each waiting with ``result()``.

8 threads of the user's own (not the supervisor's loop, not its pool) share ``n`` no-op
thread tasks: each submits its share with ``sup.submit(...)`` and then waits for every
handle with ``handle.result()``. The baseline is the same 8 threads doing
``ThreadPoolExecutor.submit`` and ``Future.result`` on a pool of the same size. The
supervisor is a ``BackgroundSupervisor`` (its own loop in a background thread), as a
threaded service runs it; its pool and the baseline's are warmed up first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import taskvisor as tv

from ._common import THREADS, Config, Contender, Row, Target, profiled, timed_rows
from ._fns import noop

__all__ = ["run"]

USERS = 8
WORKLOAD = f"no-op thread tasks submitted from {USERS} foreign threads, result() each"


def _in_users(n: int, share: Callable[[int], None]) -> float:
    """Run ``share(k)`` in each of USERS threads (k tasks each); the seconds it took."""
    k = n // USERS
    threads = [threading.Thread(target=share, args=(k,)) for _ in range(USERS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def run(cfg: Config) -> list[Row]:
    n = cfg.size(10_000, 2_000)
    sup = tv.BackgroundSupervisor(threads=THREADS, aloops=())
    sup.start()
    pool = ThreadPoolExecutor(THREADS)

    def ours_share(k: int) -> None:
        handles = [sup.submit(noop, runs_on="thread") for _ in range(k)]
        for h in handles:
            assert h.result().ok

    def executor_share(k: int) -> None:
        futures = [pool.submit(noop) for _ in range(k)]
        for f in futures:
            f.result()

    def ours(n: int) -> float:
        return _in_users(n, ours_share)

    def executor(n: int) -> float:
        return _in_users(n, executor_share)

    try:
        for warm in (ours, executor):
            warm(4 * THREADS * USERS)
        base = "ThreadPoolExecutor.submit + result"
        contenders = [
            Contender(
                f"taskvisor submit + result, threads={THREADS}",
                ours,
                taskvisor=True,
                baseline=base,
                target=Target("<=", 1.5),
            ),
            Contender(base, executor),
        ]
        # 9 alternating runs at least (each ~0.15 s): the baseline is bimodal, eight
        # threads on one pool either keep up or convoy (8-9 or 16-20 µs per task), and
        # a median of 3 landed in either mode (the W7 ratio read 1.57x in one full run,
        # 0.98x in the next, 1.69-1.75x with 9)
        rows = timed_rows("W7", WORKLOAD, n, contenders, max(cfg.reps, 9))
        with profiled(cfg.profile, f"W7 taskvisor, {n} foreign submits"):
            ours(n)
    finally:
        sup.close()
        pool.shutdown()
    return rows
