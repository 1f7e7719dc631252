"""taskvisor beside its baselines, measured in one process: µs per task and the ratio.

    python -m benchmarks                   # full sizes (nox -s bench): 15-25 minutes
    python -m benchmarks --quick           # smaller sizes, about a minute (CI smoke check)
    python -m benchmarks --only W1,W3      # some workloads: W1-W7, PLANNER, SOAK, SERVICE, DASK
    python -m benchmarks --json out.json   # also write every sample as JSON
    python -m benchmarks --only W3 --quick --profile   # top functions on taskvisor's side

Each workload alternates taskvisor and its baselines for several repetitions and reports
the median µs per task and the ratio taskvisor / baseline. Absolute times mean little on
their own; the ratio against a baseline measured in the same run is the number to read.
The targets of issue 4 are printed beside the ratios and never asserted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Callable

from . import (
    dask_cluster,
    instruments,
    planner,
    service,
    soak,
    w1_threads,
    w2_processes,
    w3_coroutines,
    w4_dag,
    w5_memory,
    w7_foreign,
)
from ._common import Config, Row, format_table, optional_import

WORKLOADS: dict[str, Callable[[Config], list[Row]]] = {
    "W1": w1_threads.run,
    "W2": w2_processes.run,
    "W3": w3_coroutines.run,
    "W4": w4_dag.run_w4,
    "W5": w5_memory.run,
    "W6": w4_dag.run_scaling,
    "W7": w7_foreign.run,
    "PLANNER": planner.run,
    "SOAK": soak.run,
    "SERVICE": service.run,
    "DASK": dask_cluster.run,
    "INSTRUMENTS": instruments.run,
}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--quick", action="store_true", help="smaller sizes, about a minute")
    ap.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # old name
    ap.add_argument("--reps", type=int, help="repetitions (default 3)")
    ap.add_argument("--json", metavar="PATH", help="write every row and sample to PATH")
    ap.add_argument("--only", metavar="W1,W3", help=f"some of: {','.join(WORKLOADS)}")
    ap.add_argument(
        "--profile",
        nargs="?",
        const="cprofile",
        choices=["cprofile", "pyinstrument"],
        help="after measuring, profile one taskvisor run of each workload and print the "
        "top functions by own time (default cprofile)",
    )
    args = ap.parse_args(argv)
    quick = args.quick or args.smoke
    reps = 3 if args.reps is None else args.reps
    if reps < 1:
        ap.error("--reps must be >= 1")
    chosen = list(WORKLOADS)
    if args.only:
        chosen = [w.strip().upper() for w in args.only.split(",") if w.strip()]
        unknown = [w for w in chosen if w not in WORKLOADS]
        if unknown:
            ap.error(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(WORKLOADS)}")
    cfg = Config(quick=quick, reps=reps, profile=args.profile)
    dask = optional_import("dask")
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "quick": quick,
        "reps": reps,
        "dask": None if dask is None else dask.__version__,
    }
    print(
        f"python {meta['python']} on {meta['cpu']} ({meta['cores']} cores), "
        f"{'quick' if quick else 'full'} run, {reps} repetition(s), medians",
        flush=True,
    )
    rows: list[Row] = []
    durations: dict[str, float] = {}
    t_all = time.perf_counter()
    for name in chosen:
        t0 = time.perf_counter()
        print(f"{name} ...", end=" ", flush=True)
        rows += WORKLOADS[name](cfg)
        durations[name] = time.perf_counter() - t0
        print(f"{durations[name]:.1f} s", flush=True)
    total = time.perf_counter() - t_all
    print()
    print(format_table(rows))
    print(f"\n{len(chosen)} workload(s) in {total:.0f} s")
    if args.json:
        parent = os.path.dirname(args.json)
        if parent:
            os.makedirs(parent, exist_ok=True)
        doc = {
            "meta": {**meta, "seconds": total, "durations": durations},
            "rows": [r.as_json() for r in rows],
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
