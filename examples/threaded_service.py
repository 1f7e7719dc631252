"""A threaded service with one background supervisor: what a worker daemon (or a Flask
app's process) copies.

- one ``BackgroundSupervisor`` for the life of the process (pools started once);
- an interval worker refreshing a cache every 2 s under the "cache" lock;
- a queue worker handling jobs that the program's own threads put on a ``queue.Queue``,
  two at a time; one job fails, and the worker goes on;
- 8 request threads putting jobs on the queue and calling ``sup.call`` for an answer they
  need now;
- SIGTERM/SIGINT (Ctrl-C) stop it gracefully: no new work, ``grace`` seconds for what
  runs, then cancel, then exit.

Run it: ``python examples/threaded_service.py`` (``--for 3`` stops it after 3 seconds;
without it, stop it with Ctrl-C or ``kill -TERM``).
"""

from __future__ import annotations

import argparse
import queue
import threading
import time

import taskvisor as tv

CACHE: dict[str, float] = {}


def refresh_cache() -> None:
    CACHE["refreshed"] = time.time()


def handle_job(job: int) -> int:
    if job == 3:
        raise ValueError(f"job {job} is malformed")
    time.sleep(0.05)  # some I/O
    return job * job


def price(item: str) -> float:
    return len(item) * 1.5


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--for", dest="seconds", type=float, default=None)
    args = parser.parse_args()
    jobs: queue.Queue[int] = queue.Queue()
    with tv.BackgroundSupervisor(threads=8, aloops=(), grace=5.0, handle_signals=True) as sup:
        cache = sup.every(2.0, refresh_cache, claims="cache", name="refresh-cache")
        worker = sup.consume(jobs, handle_job, concurrency=2, name="jobs", timeout=10)

        def request_thread(n: int) -> None:  # e.g. a web server's request threads
            for i in range(5):
                jobs.put(n * 5 + i)
            answer = sup.call(price, f"item-{n}")
            print(f"request {n}: price {answer}\n", end="")  # one write: threads share stdout

        threads = [threading.Thread(target=request_thread, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if args.seconds is None:
            print("serving; Ctrl-C or SIGTERM stops it gracefully")
            threading.Event().wait()  # until a signal
        jobs.join()  # every job handled (the worker calls task_done() after each run)
        time.sleep(args.seconds)
    report = sup.report()
    done = sum(1 for r in report if r.name.startswith("jobs#") and r.ok)
    failed = [r.name for r in report if r.name.startswith("jobs#") and not r.ok]
    print(f"cache refreshed {cache.runs} times; jobs done {done}, failed {failed}")
    print(f"last job result: {worker.last}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: the supervisor has closed gracefully already
        print("stopped")
