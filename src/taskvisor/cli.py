"""The command line: ``taskvisor run`` and ``taskvisor graph`` (also ``python -m taskvisor``).

What to run
    ``FILE.py[:NAME]`` or ``module.path:NAME``. ``NAME`` is a list (any iterable) of tasks,
    ``Task`` specs or plain callables; a function taking no arguments that returns them; or
    an async function taking the supervisor (``async def main(sup)``), which submits the
    work itself. Without ``NAME``: the module's ``tasks``, else its ``main``.

Why a file is imported under its own name, never as ``__main__``
    Process workers are spawned: a task's function travels by pickle as a reference
    (module name + qualified name) and the worker imports that module. So the file is
    imported as a real module named after it (``jobs.py`` → module ``jobs``) with its
    directory first on ``sys.path`` (as ``python jobs.py`` would put it), and a spawned
    worker, which inherits ``sys.path``, imports the same file by the same name. Its
    ``if __name__ == "__main__":`` block does not run, in the CLI nor in the workers. A
    module of the same name already imported from elsewhere is refused, not shadowed.

Output
    On a terminal with rich installed (``taskvisor[cli]``): a live table of the tasks by
    state, tier and executor, fed by an instrument (:class:`Tally`), then a summary table.
    Otherwise: one line per finished task and ``str(report)``. Tracebacks of failed tasks
    go to stderr (their last frame; all of it with ``-v``).

Exit codes: 0 every task succeeded, 1 any did not, 2 bad usage (a file or name that does
not load, a name of the wrong type, a bad option, a spec or graph error in the tasks).

Threads: everything here runs on the main thread, except the instruments' hooks (called
on the supervisor's loop thread) and rich's refresh thread, which reads :class:`Tally`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import os
import sys
import threading
import traceback
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TextIO

from ._delivery import Record, TaskInfo
from ._errors import SpecError, TaskvisorWarning
from ._planner import State
from ._result import RunReport, TaskRes
from ._spec import Task, Tier, safe_repr
from ._supervisor import Supervisor

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

__all__ = ["LiveProgress", "Tally", "main"]

#: the states the progress display counts, in the order it shows them
STATES = ("pending", "running", "done", "failed", "skipped", "cancelled")
_ENDED = frozenset(STATES[2:])
_FORMATS = {".svg": "svg", ".mmd": "mermaid", ".mermaid": "mermaid", ".dot": "dot", ".gv": "dot"}


class UsageError(Exception):
    """Bad usage: its message goes to stderr and the exit code is 2."""


# -- what to run --------------------------------------------------------------------------


@dataclass(frozen=True)
class Work:
    """What ``FILE[:NAME]`` named: a list of tasks, or ``async def main(sup)``."""

    what: str  # "jobs.py:tasks", for messages
    tasks: list[Task[Any]] | None = None
    main: Callable[[Supervisor], Awaitable[object]] | None = None


def load(target: str) -> Work:
    """Import ``FILE.py[:NAME]`` or ``module:NAME`` and read what ``NAME`` holds."""
    source, name = target, None
    if not os.path.exists(target) and ":" in target:
        source, name = target.rsplit(":", 1)
        if not name.isidentifier():
            raise UsageError(f"{target!r}: {name!r} after the colon is not a Python name")
    if source.endswith(".py") or os.sep in source or os.path.exists(source):
        module = _load_file(Path(source))
    else:
        module = _load_module(source)
    if name is None:
        for candidate in ("tasks", "main"):
            if hasattr(module, candidate):
                name = candidate
                break
        else:
            raise UsageError(
                f"{source} has neither `tasks` nor `main`; name what to run: {source}:NAME"
            )
    what = f"{source}:{name}"
    try:
        obj = getattr(module, name)
    except AttributeError:
        raise UsageError(f"{source} has no attribute {name!r}") from None
    return _work(obj, what)


def _load_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    if path.suffix != ".py":
        raise UsageError(f"{path}: not a Python file (.py)")
    path = path.resolve()
    name = path.stem
    if "." in name:
        raise UsageError(f"{path}: rename the file: process workers import it as a module")
    known = sys.modules.get(name)
    if known is not None and not _is_file(known, path):
        raise UsageError(
            f"cannot import {path} as module {name!r}: a module of that name is already "
            f"loaded from {getattr(known, '__file__', None) or 'the interpreter'}; rename the file"
        )
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # a spawned worker inherits sys.path: it finds it too
    module = _import(name, str(path))
    if not _is_file(module, path):
        raise UsageError(
            f"cannot import {path} as module {name!r}: that name is module "
            f"{module.__file__}, earlier on sys.path; rename the file"
        )
    return module


def _load_module(name: str) -> ModuleType:
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: modules beside you import
    return _import(name, f"module {name!r}")


def _import(name: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(f"{exc.name}.")):
            raise UsageError(f"no such file or module: {name}") from None
        _print_exc(exc)
        raise UsageError(f"importing {what} failed: {_line(exc)}") from None
    except Exception as exc:
        _print_exc(exc)
        raise UsageError(f"importing {what} failed: {_line(exc)}") from None


def _is_file(module: ModuleType, path: Path) -> bool:
    file = getattr(module, "__file__", None)
    return file is not None and Path(file).resolve() == path


def _work(obj: Any, what: str) -> Work:
    """Sort out what NAME holds; build the tasks if it is a function returning them."""
    expected = "a list of tasks, a function returning them, or async def main(sup)"
    if inspect.iscoroutinefunction(obj):
        if not _accepts(obj, 1):
            raise UsageError(f"{what} is an async function: it must take the supervisor")
        return Work(what, main=obj)
    items: Any = obj
    if isinstance(obj, Task):
        items = [obj]
    elif callable(obj):
        if not _accepts(obj, 0):
            raise UsageError(f"{what} takes arguments: expected {expected}")
        try:
            items = obj()
        except SpecError as exc:
            raise UsageError(f"{what}(): {exc}") from None
        except Exception as exc:
            _print_exc(exc)
            raise UsageError(f"{what}() failed: {_line(exc)}") from None
        what = f"{what}()"
        if inspect.iscoroutine(items):
            items.close()
            raise UsageError(f"{what} returned a coroutine: expected {expected}")
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Iterable):
        raise UsageError(
            f"{what} is {type(items).__name__} {safe_repr(items)}: expected {expected}"
        )
    tasks: list[Task[Any]] = []
    for i, item in enumerate(items):
        if isinstance(item, Task):
            tasks.append(item)
        elif callable(item):
            try:
                tasks.append(Task(item))
            except SpecError as exc:
                raise UsageError(f"{what}[{i}]: {exc}") from None
        else:
            raise UsageError(
                f"{what}[{i}] is {type(item).__name__} {safe_repr(item)}: "
                "expected a taskvisor.Task or a callable"
            )
    return Work(what, tasks=tasks)


def _accepts(fn: Callable[..., Any], n: int) -> bool:
    try:
        inspect.signature(fn).bind(*range(n))
    except TypeError:
        return False
    except ValueError:  # no signature (some builtins): let the call say
        return True
    return True


# -- running ------------------------------------------------------------------------------


class _Supervisor(Supervisor):
    """The CLI's supervisor: ``--timeout`` for every task submitted without a timeout,
    whichever call submits it (``gather`` here, anything ``main(sup)`` calls)."""

    def __init__(self, default_timeout: float | None, **options: Any) -> None:
        super().__init__(**options)
        self._default_timeout = default_timeout

    def _submit(
        self, specs: list[Task[Any]], *, sealed: bool, admit: bool = True, pinned: bool = False
    ) -> list[Record]:
        t = self._default_timeout
        if t is not None:
            specs = [s if s.timeout is not None else s.replace(timeout=t) for s in specs]
        return super()._submit(specs, sealed=sealed, admit=admit, pinned=pinned)


async def _execute(
    work: Work, default_timeout: float | None, options: dict[str, Any]
) -> tuple[RunReport, Exception | None]:
    """Run the work; ``main(sup)``'s own exception, if any, comes back beside the report."""
    sup = _Supervisor(default_timeout, **options)
    if work.tasks is not None:
        async with sup:
            return await sup.gather(work.tasks), None
    assert work.main is not None
    error: Exception | None = None
    try:
        async with sup:
            await work.main(sup)
    except SpecError:
        raise
    except Exception as exc:  # main(sup) raised: its work was cancelled, the report stands
        error = exc
    return sup.report(), error


def _run(args: argparse.Namespace) -> int:
    for option, value in (("--json", args.json), ("--timeline", args.timeline)):
        _check_writable(option, value)
    work = load(args.target)
    options: dict[str, Any] = {"fail_fast": args.fail_fast}
    for key in ("threads", "processes", "pool_size"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    out = _Output(args)
    options["instruments"] = out.instruments
    try:
        with out:
            report, error = asyncio.run(_execute(work, args.timeout, options))
    except SpecError as exc:
        raise UsageError(str(exc)) from None
    out.summary(report)
    if error is not None:
        _print_exc(error, full=True)
        print(f"taskvisor run: {work.what} raised {_line(error)}", file=sys.stderr)
    if args.json is not None:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n", "utf-8")
    if args.timeline is not None:
        report.write_timeline(args.timeline)
    return 0 if report.ok and error is None else 1


def _check_writable(option: str, value: str | None) -> None:
    if value is not None and not Path(value).resolve().parent.is_dir():
        raise UsageError(f"{option} {value}: no such directory {Path(value).parent}")


# -- output -------------------------------------------------------------------------------


class Tally:
    """An instrument counting tasks by state, tier and executor, for a progress display.

    Its hooks may be called from any thread; each is a few dict updates under a lock.
    ``snapshot()`` and ``render()`` may be called from any other (rich's refresh thread).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[str, tuple[tuple[Tier, str], str]] = {}  # not ended: (group, state)
        self._groups: dict[tuple[Tier, str], Counter[str]] = {}

    def _move(self, name: str, group: tuple[Tier, str], state: str) -> None:
        with self._lock:
            old = self._live.pop(name, None)
            if old is not None:
                group = old[0]  # (counted where it was submitted)
                self._groups[group][old[1]] -= 1
            self._groups.setdefault(group, Counter())[state] += 1
            if state not in _ENDED:
                self._live[name] = (group, state)

    def task_submitted(self, info: TaskInfo) -> None:
        self._move(info.name, (info.task.tier, info.runs_on), "pending")

    def task_started(self, info: TaskInfo) -> None:
        self._move(info.name, (info.task.tier, info.runs_on), "running")

    def task_finished(self, res: TaskRes[Any]) -> None:
        self._move(res.name, (res.task.tier, res.runs_on), res.state.name.lower())

    def snapshot(self) -> dict[tuple[Tier, str], dict[str, int]]:
        """Counts by state for each (tier, executor), highest tier first."""
        with self._lock:
            groups = {g: dict(c) for g, c in self._groups.items()}
        order = sorted(groups, key=lambda g: (-g[0], g[1]))
        return {g: {s: groups[g].get(s, 0) for s in STATES} for g in order}

    def totals(self) -> dict[str, int]:
        """Counts by state over every group."""
        out = dict.fromkeys(STATES, 0)
        for counts in self.snapshot().values():
            for s, n in counts.items():
                out[s] += n
        return out

    def render(self) -> RenderableType:
        """A rich table: a line of totals, then one row per tier and executor."""
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        groups = self.snapshot()
        totals = dict.fromkeys(STATES, 0)
        for counts in groups.values():
            for s, n in counts.items():
                totals[s] += n
        table = Table(box=None, show_header=False, pad_edge=False)
        for _ in range(4):
            table.add_column()
        table.title = _counts_text(totals)
        table.title_justify = "left"
        for (tier, on), counts in groups.items():
            total, ended = sum(counts.values()), sum(counts[s] for s in _ENDED)
            table.add_row(
                Text(f"{tier.name} {on}", style="bold"),
                ProgressBar(total=total or 1, completed=ended, width=30),
                f"{ended}/{total}",
                _counts_text(counts, skip_zero=True),
            )
        return table


def _counts_text(counts: Mapping[str, int], skip_zero: bool = False) -> Any:
    from rich.text import Text

    text = Text()
    for s in STATES:
        if skip_zero and not counts[s]:
            continue
        if text:
            text.append("  ")
        text.append(f"{s} {counts[s]}", style=_STYLE[s.upper()] if counts[s] else "dim")
    return text


_STYLE = {
    "PENDING": "dim",
    "RUNNING": "cyan",
    "DONE": "green",
    "FAILED": "bold red",
    "SKIPPED": "yellow",
    "CANCELLED": "magenta",
}


class LiveProgress:
    """A rich ``Live`` display of a :class:`Tally` (its ``instrument``) while in the block;
    the final counts stay on screen when it ends."""

    def __init__(self, console: Console) -> None:
        from rich.live import Live

        self.instrument = Tally()
        self._live = Live(
            console=console,
            get_renderable=self.instrument.render,
            refresh_per_second=8,
            redirect_stderr=False,
        )

    def __enter__(self) -> LiveProgress:
        self._live.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._live.stop()


class _Lines:
    """An instrument printing one line per finished task (no terminal, or no rich)."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()

    def task_finished(self, res: TaskRes[Any]) -> None:
        line = f"{res.state.name:<9} {res.name} {res.run_time:.3f}s"
        if not res.ok:
            line += f"  {_line(res.error)}"
        with self._lock:
            print(line, file=self._out, flush=True)


class _Output:
    """Chooses the display (live, lines, or nothing) and prints the summary."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.quiet: bool = args.quiet
        self.verbose: bool = args.verbose
        self.console: Console | None = None
        if not self.quiet and sys.stdout.isatty():
            try:
                from rich.console import Console
            except ImportError:
                pass
            else:
                self.console = Console()
        self._live: LiveProgress | None = None
        self.instruments: list[object] = []
        if self.console is not None and not args.no_progress:
            self._live = LiveProgress(self.console)
            self.instruments.append(self._live.instrument)
        elif not self.quiet:
            self.instruments.append(_Lines(sys.stdout))

    def __enter__(self) -> _Output:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(self, *_: object) -> None:
        if self._live is not None:
            self._live.__exit__()

    def summary(self, report: RunReport) -> None:
        for res in report:
            if res.state is State.FAILED and res.excinfo is not None:
                text = res.excinfo.text if self.verbose else _last_frame(res.excinfo.text)
                print(f"--- {res.name} FAILED ---\n{text.rstrip()}", file=sys.stderr)
        if self.quiet:
            print(str(report).splitlines()[-1])
        elif self.console is not None:
            self.console.print(_summary_table(report))
        else:
            print(report)


def _summary_table(report: RunReport) -> RenderableType:
    from rich.table import Table

    table = Table(title="taskvisor run", title_justify="left")
    for column in ("task", "state", "on", "wait ms", "run ms", "result"):
        table.add_column(column, justify="right" if "ms" in column else "left")
    rows = list(report)
    if len(rows) > 50:  # a long run: what went wrong, then a count of the rest
        bad = [r for r in rows if not r.ok]
        rows = bad[:50]
    for r in rows:
        what = safe_repr(r.ret) if r.ok else _line(r.error)
        table.add_row(
            r.name,
            f"[{_STYLE[r.state.name]}]{r.state.name}[/]",
            r.runs_on,
            f"{r.wait_time * 1e3:.1f}",
            f"{r.run_time * 1e3:.1f}",
            what if len(what) <= 60 else what[:57] + "...",
            end_section=False,
        )
    table.caption = str(report).splitlines()[-1]
    if len(rows) < len(report):
        table.caption += f" ({len(report) - len(rows)} rows not shown)"
    table.caption_justify = "left"
    return table


def _line(exc: BaseException | None) -> str:
    """``Type: message`` on one line."""
    if exc is None:
        return ""
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__


def _last_frame(text: str) -> str:
    """A traceback's last frame and its exception (the short form of ``-v``'s)."""
    lines = text.rstrip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith('  File "'):
            return "\n".join(lines[i:])
    return "\n".join(lines[-1:])


def _print_exc(exc: BaseException, full: bool = True) -> None:
    text = "".join(traceback.format_exception(exc))
    print(text if full else _last_frame(text), file=sys.stderr, end="")


def _one_line(show: Callable[..., None]) -> Callable[..., None]:
    """``warnings.showwarning`` showing a TaskvisorWarning as one line (where in taskvisor
    it was raised tells a user nothing), and every other warning as ``show`` does."""

    def show_warning(
        message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any
    ) -> None:
        if issubclass(category, TaskvisorWarning):
            print(f"taskvisor: warning: {message}", file=sys.stderr)
        else:
            show(message, category, *args, **kwargs)

    return show_warning


# -- graph --------------------------------------------------------------------------------


def _graph(args: argparse.Namespace) -> int:
    fmt = args.format
    if fmt is None and args.output is not None:
        fmt = _FORMATS.get(Path(args.output).suffix.lower())
        if fmt is None:
            raise UsageError(
                f"-o {args.output}: cannot tell the format from the suffix "
                f"({', '.join(_FORMATS)}); say --format mermaid|dot|svg"
            )
    fmt = fmt or "mermaid"
    _check_writable("-o", args.output)
    work = load(args.target)
    if work.tasks is None:
        raise UsageError(
            f"{work.what} is an async function (main(sup)); "
            "taskvisor graph needs a list of tasks, or a function returning them"
        )
    from ._graph import graph

    try:
        drawing = graph(work.tasks)
    except SpecError as exc:
        raise UsageError(str(exc)) from None
    text: str = {"mermaid": drawing.to_mermaid, "dot": drawing.to_dot, "svg": drawing.to_svg}[fmt]()
    if not text.endswith("\n"):
        text += "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, "utf-8")
    return 0


# -- the parser ---------------------------------------------------------------------------


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    """The ``taskvisor`` argument parser."""
    top = argparse.ArgumentParser(
        prog="taskvisor", description="Run or draw a graph of taskvisor tasks."
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    target_help = (
        "FILE.py[:NAME] or module.path:NAME; NAME is a list of tasks, a function returning "
        "them, or async def main(sup) (default: the module's `tasks`, else `main`)"
    )
    run = sub.add_parser("run", help="run the tasks and report", description="Run the tasks.")
    run.add_argument("target", metavar="TARGET", help=target_help)
    run.add_argument("--threads", type=_count(1), metavar="N", help="thread pool size")
    run.add_argument("--processes", type=_count(1), metavar="N", help="process pool size")
    run.add_argument(
        "--pool-size", type=_count(0), metavar="N", help="admission slots (0 = unlimited)"
    )
    run.add_argument("--fail-fast", action="store_true", help="cancel the rest at a failure")
    run.add_argument(
        "--timeout", type=_seconds, metavar="SECONDS", help="for each task that sets none"
    )
    run.add_argument("--json", metavar="PATH", help="write the report as JSON")
    run.add_argument("--timeline", metavar="PATH", help="write an HTML timeline")
    run.add_argument("-q", "--quiet", action="store_true", help="print only the last line")
    run.add_argument("--no-progress", action="store_true", help="no live progress display")
    run.add_argument("-v", "--verbose", action="store_true", help="full tracebacks")
    draw = sub.add_parser(
        "graph", help="draw the dependency graph", description="Draw the dependency graph."
    )
    draw.add_argument("target", metavar="TARGET", help=target_help)
    draw.add_argument("-o", "--output", metavar="PATH", help=".svg, .mmd or .dot (default: stdout)")
    draw.add_argument("--format", choices=("mermaid", "dot", "svg"), help="default: from -o")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """The ``taskvisor`` program; returns its exit code (0, 1, or 2 for bad usage)."""
    args = parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line(warnings.showwarning)
            return _run(args) if args.command == "run" else _graph(args)
    except UsageError as exc:
        print(f"taskvisor {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"taskvisor {args.command}: interrupted", file=sys.stderr)
        return 130
