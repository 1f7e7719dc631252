"""What every workload shares: sizes, alternating timed runs, medians, RSS, rows, the table.

A workload is a list of *contenders*: callables that run ``n`` tasks and return the
seconds they took. :func:`alternate` runs them in turn, ``reps`` times, with a
``gc.collect()`` before each run, so drift in machine load hits all of them alike; the
median of each becomes a :class:`Row`, and taskvisor's rows carry their ratio to the
baseline measured in the same run.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import importlib
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

__all__ = [
    "THREADS",
    "Config",
    "Contender",
    "Row",
    "Target",
    "alternate",
    "format_table",
    "optional_import",
    "profiled",
    "rss",
    "run_child",
    "timed_rows",
]

THREADS = 8  # thread pool size for W1 and W4, the same for taskvisor and every baseline


@dataclass(frozen=True)
class Config:
    """Sizes and repetitions for one run (``--quick`` scales everything down)."""

    quick: bool
    reps: int
    profile: str | None = None  # cprofile | pyinstrument

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full


@dataclass(frozen=True)
class Target:
    """A target from issue 4, printed beside the number; never asserted.

    ``on`` is ``"ratio"`` (taskvisor / baseline) or ``"value"`` (the row's own number).
    """

    op: str  # "<=" or ">="
    limit: float
    on: str = "ratio"
    text: str = ""

    def met(self, row: Row) -> bool | None:
        x = row.ratio if self.on == "ratio" else row.value
        if x is None:
            return None
        return x <= self.limit if self.op == "<=" else x >= self.limit

    def describe(self) -> str:
        if self.text:
            return self.text
        unit = "x" if self.on == "ratio" else ""
        return f"{self.op} {self.limit:g}{unit}"


@dataclass
class Row:
    """One line of the table (and of the JSON)."""

    group: str  # "W1" … "W6", "PLANNER", "SOAK"
    workload: str
    tasks: int
    contender: str
    value: float | None  # median (None: skipped)
    unit: str = "µs/task"
    samples: list[float] = field(default_factory=list)
    baseline: str | None = None  # the contender the ratio is taken against
    ratio: float | None = None
    target: str | None = None
    met: bool | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def set_target(self, target: Target | None) -> None:
        if target is not None:
            self.target = target.describe()
            self.met = target.met(self)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Contender:
    """One way to run a workload: ``run(n)`` returns the seconds it took for ``n`` tasks."""

    label: str
    run: Callable[[int], float]
    taskvisor: bool = False
    baseline: str | None = None  # for a taskvisor contender: the label it is compared to
    target: Target | None = None


class GCPauses:
    """Seconds the cyclic GC paused the process while it is entered (``gc.callbacks``;
    a collection holds the GIL, so two never overlap, whichever threads run them)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._began = 0.0

    def _callback(self, phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._began

    def __enter__(self) -> GCPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *_: object) -> None:
        gc.callbacks.remove(self._callback)


def alternate(
    contenders: list[Contender], n: int, reps: int, gc_us: dict[str, list[float]] | None = None
) -> dict[str, list[float]]:
    """µs per task of each contender, ``reps`` samples each, runs interleaved (and, in
    ``gc_us``, the µs per task the cyclic GC took of each sample)."""
    samples: dict[str, list[float]] = {c.label: [] for c in contenders}
    for _ in range(reps):
        for c in contenders:
            gc.collect()
            with GCPauses() as pauses:
                samples[c.label].append(c.run(n) / n * 1e6)
            if gc_us is not None:
                gc_us.setdefault(c.label, []).append(pauses.seconds / n * 1e6)
    return samples


def timed_rows(
    group: str, workload: str, n: int, contenders: list[Contender], reps: int
) -> list[Row]:
    """Alternate the contenders and turn their medians into rows (ratios included). Each
    row also carries the cyclic GC's share (``extra["gc_us"]``, in a note from 1 µs on):
    at 100,000 tasks it is a third of some workloads' time."""
    gc_us: dict[str, list[float]] = {}
    samples = alternate(contenders, n, reps, gc_us)
    medians = {label: statistics.median(s) for label, s in samples.items()}
    rows = []
    for c in contenders:
        row = Row(group, workload, n, c.label, medians[c.label], samples=samples[c.label])
        paused = statistics.median(gc_us[c.label])
        row.extra["gc_us"] = paused
        if paused >= 1.0:
            row.note = f"(cyclic GC {paused:.1f} µs/task of it)"
        if c.baseline is not None:
            base = medians.get(c.baseline)
            row.baseline = c.baseline
            row.ratio = None if base is None else medians[c.label] / base
            row.set_target(c.target)
        rows.append(row)
    return rows


def run_loop(
    coro: Coroutine[Any, Any, float], loop_factory: Callable[[], asyncio.AbstractEventLoop] | None
) -> float:
    """``asyncio.run`` on a loop of the given kind (None: the default asyncio loop)."""
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro)


def optional_import(name: str) -> Any:
    """The module, or None when it is not installed (dask and pyinstrument are optional)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def rss() -> int:
    """This process's resident set size in bytes."""
    return int(psutil.Process().memory_info().rss)


def settle_memory() -> int:
    """Collect garbage, then read RSS."""
    gc.collect()
    return rss()


def run_child(module: str, args: dict[str, Any], timeout: float = 1800.0) -> dict[str, Any]:
    """Run ``python -m module --child JSON`` in a fresh interpreter; return its JSON answer.

    Memory workloads run in a child so that what earlier workloads left in the allocator's
    free lists neither hides nor inflates the RSS they measure.
    """
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", module, "--child", json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"benchmark child {module} {args} exited with {proc.returncode}:\n{proc.stderr}"
        )
    last = proc.stdout.strip().splitlines()[-1]
    answer: dict[str, Any] = json.loads(last)
    return answer


def child_main(run: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """The child side of :func:`run_child`: read the JSON argument, print the JSON answer."""
    if len(sys.argv) != 3 or sys.argv[1] != "--child":
        raise SystemExit(f"usage: python -m {sys.argv[0]} --child JSON (run by the benchmarks)")
    answer = run(json.loads(sys.argv[2]))
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


@contextmanager
def profiled(mode: str | None, title: str, top: int = 18) -> Iterator[None]:
    """Profile the block and print the top functions by own time.

    ``mode`` is ``"cprofile"`` (exact call counts and own time per function; calls made
    cheap things look dearer) or ``"pyinstrument"`` (sampling, flat view), or None (off).
    Only the calling thread is seen: the supervisor loop's side, not worker threads.
    """
    if not mode:
        yield
        return
    print(f"\n--- profile ({mode}): {title} ---", flush=True)
    pyinstrument = optional_import("pyinstrument") if mode == "pyinstrument" else None
    if pyinstrument is not None:
        renderers = importlib.import_module("pyinstrument.renderers")
        profiler = pyinstrument.Profiler(interval=0.0005, async_mode="disabled")
        profiler.start()
        try:
            yield
        finally:
            profiler.stop()
            text = profiler.output(renderers.ConsoleRenderer(flat=True, unicode=True))
            lines = [ln for ln in text.splitlines() if ln.strip()]
            print("\n".join(lines[: top + 4]), flush=True)
        return
    if mode == "pyinstrument":
        print("(pyinstrument is not installed: cProfile instead)")
    prof = cProfile.Profile()
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        stats = pstats.Stats(prof, stream=sys.stdout)
        stats.strip_dirs().sort_stats("tottime").print_stats(top)


def fmt_value(row: Row) -> str:
    if row.value is None:
        return "skipped"
    v = row.value
    if row.unit == "events/s":
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def format_table(rows: list[Row]) -> str:
    """A plain-text table: one line per contender, ratios and targets on taskvisor's;
    the rows' notes follow it as numbered footnotes."""
    head = ("", "workload", "tasks", "contender", "median", "unit", "ratio", "vs", "target")
    body = []
    notes = []
    for r in rows:
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}x"
        target = ""
        if r.target:
            target = f"{r.target}: " + {True: "met", False: "MISSED", None: "-"}[r.met]
        contender = r.contender
        if r.note:
            notes.append(r.note)
            contender += f" [{len(notes)}]"
        body.append(
            (
                r.group,
                r.workload,
                f"{r.tasks:,}",
                contender,
                fmt_value(r),
                r.unit,
                ratio,
                r.baseline or "",
                target,
            )
        )
    widths = [max(len(str(line[i])) for line in [head, *body]) for i in range(len(head))]
    right = {2, 4, 6}

    def fmt(line: tuple[str, ...]) -> str:
        cells = [
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    out = [fmt(head), "  ".join("-" * w for w in widths)]
    last = None
    for r, line in zip(rows, body, strict=True):
        if last is not None and (r.group, r.workload) != last:
            out.append("")
        last = (r.group, r.workload)
        out.append(fmt(line))
    if notes:
        out.append("")
        out += [f"[{i}] {note}" for i, note in enumerate(notes, 1)]
    return "\n".join(out)
