"""What a task ends as: :class:`TaskRes`, :class:`ExceptionInfo`, :class:`RunReport`."""

from __future__ import annotations

import functools
import json
import os
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Generic, NamedTuple, NoReturn, TypeVar

from ._planner import State
from ._spec import Task, safe_repr

__all__ = ["ExceptionInfo", "RunReport", "TaskRes"]

T = TypeVar("T")


class ExceptionInfo:
    """``(type, val, tb)`` of a task's exception, with ``.text`` and ``.reraise()``.

    For a task that ran in another process, ``tb`` is rebuilt by tblib (so debuggers and
    ``traceback`` see the child's frames) and ``text`` is the traceback formatted in the
    child, causes included.
    """

    __slots__ = ("_text", "tb", "type", "val")

    def __init__(
        self,
        type: type[BaseException],
        val: BaseException,
        tb: TracebackType | None,
        text: str | None = None,
    ) -> None:
        self.type = type
        self.val = val
        self.tb = tb
        self._text = text

    @classmethod
    def from_exc(cls, exc: BaseException, text: str | None = None) -> ExceptionInfo:
        return cls(type(exc), exc, exc.__traceback__, text)

    @property
    def text(self) -> str:
        """The formatted traceback (with causes)."""
        if self._text is None:
            self._text = "".join(traceback.format_exception(self.type, self.val, self.tb))
        return self._text

    def reraise(self) -> NoReturn:
        """Raise the exception again, with its traceback."""
        raise self.val.with_traceback(self.tb)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.type, self.val, self.tb))

    def __repr__(self) -> str:
        return f"ExceptionInfo({self.type.__name__}: {self.val})"

    def __reduce__(self) -> tuple[Any, ...]:
        from tblib import pickling_support

        pickling_support.install(self.val)
        return (ExceptionInfo.from_exc, (self.val, self.text))


class TaskRes(NamedTuple, Generic[T]):
    """The one result every submitted task ends with.

    A named tuple (as pexen's was): immutable, cheap to build, and ``task, shared, ret,
    excinfo = res[:4]`` reads the first four fields. Its times are stored as POSIX
    timestamps (``submitted_ts`` ...); ``submitted_at``, ``started_at`` and
    ``finished_at`` build the UTC datetimes when read (building three datetimes for
    every task cost more than a microsecond each time, and 144 bytes per kept result).
    """

    task: Task[T]
    shared: dict[str, Any]
    ret: T | None
    excinfo: ExceptionInfo | None
    name: str
    state: State
    ok: bool
    #: when it was submitted, dispatched (None if never) and ended: POSIX timestamps
    submitted_ts: float
    started_ts: float | None
    finished_ts: float
    #: seconds from submission to start (or to the end, if it never ran)
    wait_time: float
    #: seconds running, over all attempts (a process task's: measured in its worker)
    run_time: float
    #: how many times it was started (retries included; 0 if it never ran)
    attempts: int
    #: the executor target: ``thread``, ``process``, ``main``, ``aloop:NAME`` or a backend
    runs_on: str
    #: thread name or ``pid N`` that ran the last attempt
    worker: str | None

    @property
    def submitted_at(self) -> datetime:
        """When it was submitted (a UTC datetime)."""
        return datetime.fromtimestamp(self.submitted_ts, UTC)

    @property
    def started_at(self) -> datetime | None:
        """When it was dispatched (for a process task: when its worker began it), a UTC
        datetime; None if it never was."""
        ts = self.started_ts
        return None if ts is None else datetime.fromtimestamp(ts, UTC)

    @property
    def finished_at(self) -> datetime:
        """When it ended (a UTC datetime)."""
        return datetime.fromtimestamp(self.finished_ts, UTC)

    @property
    def error(self) -> BaseException | None:
        """The exception, or None for a task that succeeded."""
        return self.excinfo.val if self.excinfo is not None else None

    def __repr__(self) -> str:
        tail = f"ret={self.ret!r}" if self.ok else f"error={self.error!r}"
        return f"<TaskRes {self.name!r} {self.state.name} {tail}>"


@dataclass(frozen=True)
class RunReport:
    """The results of a batch (or of everything so far): iterable of :class:`TaskRes`.

    ``results``: in submission order for a batch (``gather``) and for ``aclose()``'s
    report, in the order they ended for ``sup.report()``; ``started`` (when the batch or
    the report began, a datetime), ``elapsed`` (seconds), ``pending`` (names of tasks not
    ended yet: an interim report's). ``report[name]`` is one task's result;
    ``str(report)`` a table.
    """

    results: tuple[TaskRes[Any], ...]
    started: datetime
    elapsed: float
    pending: tuple[str, ...] = ()

    @functools.cached_property
    def _by_name(self) -> dict[str, TaskRes[Any]]:
        # (built on the first ``report[name]``: a gather of 100,000 tasks spent 1.4% of
        # its time building it for reports nobody indexed)
        return {r.name: r for r in self.results}

    @classmethod
    def build(
        cls,
        results: Iterable[TaskRes[Any]],
        started: datetime,
        elapsed: float,
        pending: Iterable[str] = (),
    ) -> RunReport:
        return cls(tuple(results), started, elapsed, tuple(pending))

    def __iter__(self) -> Iterator[TaskRes[Any]]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, name: str) -> TaskRes[Any]:
        return self._by_name[name]

    @property
    def ok(self) -> bool:
        """Every task succeeded and none is pending."""
        return not self.pending and all(r.ok for r in self.results)

    @property
    def returns(self) -> dict[str, Any]:
        """Return values of the tasks that succeeded, by name."""
        return {r.name: r.ret for r in self.results if r.ok}

    @property
    def errors(self) -> dict[str, ExceptionInfo]:
        """Exceptions of the tasks that did not succeed, by name."""
        return {r.name: r.excinfo for r in self.results if r.excinfo is not None}

    @property
    def by_state(self) -> dict[State, list[TaskRes[Any]]]:
        """The results grouped by their final state."""
        out: dict[State, list[TaskRes[Any]]] = {}
        for r in self.results:
            out.setdefault(r.state, []).append(r)
        return out

    def timeline_html(self, title: str | None = None) -> str:
        """A self-contained HTML page (inline CSS, SVG and script; opens offline) drawing
        the run: one lane per worker, one bar per task from its first start to its end,
        coloured by state, the tier as a stripe; hover a bar for its name, state, tier,
        wait and run time and attempts. A task that never ran is a thin mark in a
        "not run" lane. For one bar per attempt, record the run with a
        :class:`~taskvisor.TimelineRecorder`."""
        from ._timeline import report_spans, timeline_html

        origin = min([self.started, *(r.submitted_at for r in self.results)])
        return timeline_html(
            report_spans(self.results, origin),
            origin,
            title=title,
            elapsed=self.elapsed + (self.started - origin).total_seconds(),
        )

    def write_timeline(self, path: str | os.PathLike[str], title: str | None = None) -> None:
        """Write :meth:`timeline_html` to ``path`` (UTF-8)."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.timeline_html(title))

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data: ``json.dumps(report.to_dict())`` always works.

        ``ok``, ``started`` (ISO 8601), ``elapsed`` (seconds), ``by_state`` (counts by state
        name), ``pending`` (names) and ``tasks``: one dict per result, in the report's order,
        with ``name``, ``state``, ``ok``, ``ret`` (the return value if it is JSON data, else
        ``None``), ``ret_repr`` (its short ``repr``), ``error`` (``"Type: message"`` or
        ``None``), ``traceback`` (``excinfo.text`` or ``None``), ``submitted_at``,
        ``started_at``, ``finished_at`` (ISO 8601 or ``None``), ``wait_time``, ``run_time``,
        ``attempts``, ``runs_on`` and ``worker``. (The ``taskvisor run --json`` output.)
        """
        return {
            "ok": self.ok,
            "started": self.started.isoformat(),
            "elapsed": self.elapsed,
            "by_state": {state.name: len(rs) for state, rs in self.by_state.items()},
            "pending": list(self.pending),
            "tasks": [_res_dict(r) for r in self.results],
        }

    def __str__(self) -> str:
        rows = [("task", "state", "on", "wait ms", "run ms", "result")]
        for r in self.results:
            what = repr(r.ret) if r.ok else f"{type(r.error).__name__}: {r.error}"
            if len(what) > 60:
                what = what[:57] + "..."
            rows.append(
                (
                    r.name,
                    r.state.name,
                    r.runs_on,
                    f"{r.wait_time * 1e3:.1f}",
                    f"{r.run_time * 1e3:.1f}",
                    what,
                )
            )
        for name in self.pending:
            rows.append((name, "PENDING", "", "", "", ""))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        counts = ", ".join(f"{len(v)} {k.name}" for k, v in self.by_state.items())
        lines.append(
            f"{len(self.results)} task(s) in {self.elapsed:.3f} s: {counts or 'none'}"
            + (f", {len(self.pending)} pending" if self.pending else "")
        )
        return "\n".join(lines)


def _res_dict(r: TaskRes[Any]) -> dict[str, Any]:
    """One result as JSON-ready data (see :meth:`RunReport.to_dict`)."""
    ret: Any = None
    if r.ok:
        try:  # JSON data as itself; anything else only as its repr
            json.dumps(r.ret, allow_nan=False)
        except Exception:  # (not JSON data, or a value whose own methods raise)
            pass
        else:
            ret = r.ret
    err = r.error
    return {
        "name": r.name,
        "state": r.state.name,
        "ok": r.ok,
        "ret": ret,
        "ret_repr": safe_repr(r.ret) if r.ok else None,
        "error": None if err is None else f"{type(err).__name__}: {err}",
        "traceback": None if r.excinfo is None else r.excinfo.text,
        "submitted_at": r.submitted_at.isoformat(),
        "started_at": None if r.started_at is None else r.started_at.isoformat(),
        "finished_at": r.finished_at.isoformat(),
        "wait_time": r.wait_time,
        "run_time": r.run_time,
        "attempts": r.attempts,
        "runs_on": r.runs_on,
        "worker": r.worker,
    }
