"""A run as a picture: ``RunReport.timeline_html()`` and :class:`TimelineRecorder`.

Runs in the caller's thread (the recorder's hooks on the supervisor's loop thread); pure
string building, standard library only.

The page is one self-contained HTML file — inline CSS, one inline SVG, a few lines of
inline JavaScript, no fonts, stylesheets or scripts from anywhere else — so it opens
offline and can be mailed or attached to a CI run. One lane per worker (the thread or
process that ran the task; its ``runs_on`` target when the executor does not say), one
bar per span, coloured by state, with a stripe whose shade is the tier; the hover
(an SVG ``<title>``, and a panel the script fills) gives name, state, tier, wait and run
time and attempts. Bars that overlap in one lane (tasks on a target with several
workers, like ``aloop:default``) are stacked in sub-rows, never drawn over each other.

Two sources, two levels of detail:

- ``report.timeline_html()`` draws what a :class:`RunReport` has: one bar per task, from
  its first start to its end (retries included: the hover says how many attempts, and
  the run time summed over them). A task that never ran (``SKIPPED``, or ``CANCELLED``
  while queued) is a thin mark in a "not run" lane at the time it ended.
- :class:`TimelineRecorder`, an instrument, also sees each attempt start
  (``task_started``), so its ``timeline_html()`` draws one bar per attempt: a failed
  attempt that was retried ends where the next one starts (the supervisor relaunches it
  at once). Executors name the worker only for the last attempt, so earlier attempts
  are drawn in the last attempt's lane (the hover says so).

Everything user-supplied (task names, worker names, error messages, the title) is
escaped; the script reads only the page's own DOM.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ._planner import State
from ._spec import Tier

if TYPE_CHECKING:
    from ._delivery import TaskInfo
    from ._result import TaskRes

__all__ = ["Span", "TimelineRecorder", "report_spans", "timeline_html"]

#: bar fill per final state (flat colours: the browser tests look for these pixels)
STATE_COLOURS: dict[State, str] = {
    State.DONE: "#2f9e44",
    State.FAILED: "#e03131",
    State.SKIPPED: "#adb5bd",
    State.CANCELLED: "#f08c00",
}
#: the stripe on top of each bar: darker is a higher tier
TIER_COLOURS: dict[Tier, str] = {
    Tier.LOW: "#d0bfff",
    Tier.NORMAL: "#9775fa",
    Tier.HIGH: "#6741d9",
    Tier.CRITICAL: "#2b1466",
}
NOT_RUN = "not run"


@dataclass(frozen=True)
class Span:
    """One bar: a task (or one attempt of it) in a lane, times in seconds from the
    origin."""

    name: str
    lane: str
    start: float
    end: float
    state: State  # the colour: the task's final state, or FAILED for a retried attempt
    tier: Tier
    attempt: int | None  # None: the whole task (all attempts)
    attempts: int
    wait: float
    run: float
    ran: bool
    note: str = ""

    def tooltip(self) -> str:
        which = (
            f"attempt {self.attempt} of {self.attempts}"
            if self.attempt is not None
            else f"{self.attempts} attempt{'s' if self.attempts != 1 else ''}"
        )
        lines = [
            self.name,
            f"state: {self.state.name}" + (" (retried)" if self.note == "retried" else ""),
            f"tier: {self.tier.name}",
            f"lane: {self.lane}",
            f"wait: {_duration(self.wait)}, run: {_duration(self.run)}",
            which,
        ]
        if self.note == "retried":
            lines.append("failed and was retried (its worker is not recorded: drawn in the lane")
            lines.append("of the last attempt)")
        elif self.note:
            lines.append(self.note)
        return "\n".join(lines)


def report_spans(results: Iterable[TaskRes[Any]], origin: datetime) -> list[Span]:
    """One span per task, from its first start to its end."""
    spans = []
    for r in results:
        ran = r.started_at is not None
        start = r.started_at if r.started_at is not None else r.finished_at
        error = "" if r.error is None else f"{type(r.error).__name__}: {r.error}"
        spans.append(
            Span(
                r.name,
                (r.worker or r.runs_on) if ran else NOT_RUN,
                (start - origin).total_seconds(),
                (r.finished_at - origin).total_seconds(),
                r.state,
                r.task.tier,
                None,
                r.attempts,
                r.wait_time,
                r.run_time,
                ran,
                _cut(error, 300),
            )
        )
    return spans


class TimelineRecorder:
    """An instrument that records every attempt, for a timeline with one bar per attempt.

    ::

        rec = tv.TimelineRecorder()
        report = tv.run(tasks, instruments=[rec])
        Path("run.html").write_text(rec.timeline_html())

    ``report.timeline_html()`` needs no instrument but draws one bar per task (retries
    inside it); this one splits a retried task into its attempts. Its hooks run on the
    supervisor's loop thread; read it once the run is over.
    """

    def __init__(self) -> None:
        self._starts: dict[str, list[tuple[int, float]]] = {}
        self._done: list[tuple[TaskRes[Any], list[tuple[int, float]]]] = []

    def task_started(self, info: TaskInfo) -> None:
        """Instrument hook: an attempt was dispatched (``info.time``: supervisor clock)."""
        self._starts.setdefault(info.name, []).append((info.attempt, info.time))

    def task_finished(self, res: TaskRes[Any]) -> None:
        """Instrument hook: the task ended."""
        self._done.append((res, self._starts.pop(res.name, [])))

    @property
    def results(self) -> list[TaskRes[Any]]:
        """Every task that ended while recording, in the order they ended."""
        return [r for r, _ in self._done]

    def spans(self, origin: datetime | None = None) -> list[Span]:
        """One span per attempt (seconds from ``origin``, default: the first start)."""
        if origin is None:
            origin = _origin(self.results)
        spans: list[Span] = []
        for res, starts in self._done:
            if not starts or res.started_at is None:  # never ran: one mark
                spans.extend(report_spans([res], origin))
                continue
            first = starts[0][1]
            base = (res.started_at - origin).total_seconds()
            end_all = (res.finished_at - origin).total_seconds()
            lane = res.worker or res.runs_on
            for k, (attempt, t) in enumerate(starts):
                last = k == len(starts) - 1
                start = base + (t - first)
                end = end_all if last else base + (starts[k + 1][1] - first)
                error = "" if res.error is None else f"{type(res.error).__name__}: {res.error}"
                note = _cut(error, 300) if last else "retried"
                spans.append(
                    Span(
                        res.name,
                        lane,
                        start,
                        max(end, start),
                        res.state if last else State.FAILED,
                        res.task.tier,
                        attempt,
                        res.attempts,
                        res.wait_time if k == 0 else 0.0,
                        max(end - start, 0.0),
                        True,
                        note,
                    )
                )
        return spans

    def timeline_html(self, title: str | None = None) -> str:
        """The page, one bar per attempt (see :meth:`RunReport.timeline_html`)."""
        results = self.results
        origin = _origin(results)
        return timeline_html(
            self.spans(origin), origin, title=title, subtitle="one bar per attempt"
        )


def _origin(results: Iterable[TaskRes[Any]]) -> datetime:
    times = [r.submitted_at for r in results]
    return min(times) if times else datetime.now(UTC)


# -- drawing -------------------------------------------------------------------------------

LABEL_W = 190  # the lane names
PLOT_W = 960
BAR_H = 20
ROW_GAP = 6
LANE_GAP = 10
AXIS_H = 34
MIN_BAR = 3.0  # px: a span of no duration still shows


def timeline_html(
    spans: list[Span],
    origin: datetime,
    *,
    title: str | None = None,
    subtitle: str = "one bar per task",
    elapsed: float | None = None,
) -> str:
    """The self-contained page for ``spans`` (see the module docstring)."""
    total = max([s.end for s in spans] + [elapsed or 0.0, 1e-3])
    scale = PLOT_W / total
    # lanes: in order of their first bar; "not run" last
    first: dict[str, float] = {}
    for s in sorted(spans, key=lambda s: (s.start, s.name)):
        first.setdefault(s.lane, s.start)
    lanes = sorted(first, key=lambda lane: (lane == NOT_RUN, first[lane], lane))
    # rows inside a lane: greedy packing, so no bar hides another
    placed: list[tuple[Span, str, int]] = []
    rows_in: dict[str, int] = {}
    for lane in lanes:
        row_end: list[float] = []  # px where each row is free again
        for s in sorted(
            (s for s in spans if s.lane == lane), key=lambda s: (s.start, s.end, s.name)
        ):
            x0 = s.start * scale
            x1 = max(s.end * scale, x0 + MIN_BAR)
            for i, free in enumerate(row_end):
                if free <= x0 + 0.5:  # (a bar may start where the last one ended)
                    row_end[i] = x1
                    placed.append((s, lane, i))
                    break
            else:
                row_end.append(x1)
                placed.append((s, lane, len(row_end) - 1))
        rows_in[lane] = max(len(row_end), 1)
    lane_top: dict[str, float] = {}
    y = float(AXIS_H)
    for lane in lanes:
        lane_top[lane] = y
        y += rows_in[lane] * (BAR_H + ROW_GAP) + LANE_GAP
    height = y + 10
    width = LABEL_W + PLOT_W + 30

    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="tv-timeline" width="{width}" '
        f'height="{height:.0f}" viewBox="0 0 {width} {height:.0f}" '
        'font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">'
    ]
    # lanes
    for k, lane in enumerate(lanes):
        top = lane_top[lane]
        h = rows_in[lane] * (BAR_H + ROW_GAP) + LANE_GAP - 4
        fill = "#f8f9fa" if k % 2 == 0 else "#ffffff"
        svg.append(
            f'<g class="tv-lane" data-lane="{_e(lane)}">'
            f'<rect x="0" y="{top - 4:.1f}" width="{width}" height="{h:.1f}" fill="{fill}"/>'
            f'<text x="8" y="{top + BAR_H / 2 + 4:.1f}" fill="#333">'
            f"<title>{_e(lane)}</title>{_e(_cut(lane, 26))}</text></g>"
        )
    # axis and grid
    step = _nice_step(total / 8)
    svg.append('<g class="tv-axis">')
    n_ticks = int(total / step + 1e-9)
    for i in range(n_ticks + 1):
        t = i * step
        x = LABEL_W + t * scale
        svg.append(
            f'<line x1="{x:.1f}" y1="{AXIS_H - 6}" x2="{x:.1f}" y2="{height - 10:.0f}" '
            'stroke="#dee2e6" stroke-width="1"/>'
            f'<text x="{x:.1f}" y="{AXIS_H - 12}" text-anchor="middle" fill="#555" '
            f'class="tv-tick">{_tick(t, step)}</text>'
        )
    svg.append("</g>")
    # bars
    for s, lane, row in placed:
        x0 = LABEL_W + s.start * scale
        w = max((s.end - s.start) * scale, MIN_BAR)
        top = lane_top[lane] + row * (BAR_H + ROW_GAP)
        fill = STATE_COLOURS[s.state]
        cls = f"tv-bar tv-state-{s.state.name} tv-tier-{s.tier.name}"
        if s.note == "retried":
            cls += " tv-retried"
        outline = ' stroke="#7a1d1d" stroke-width="1.5" stroke-dasharray="4 2"' * (
            s.note == "retried"
        )
        svg.append(
            f'<g class="{cls}" data-name="{_e(s.name)}" data-state="{s.state.name}" '
            f'data-tier="{s.tier.name}" data-attempt="{s.attempt or ""}" '
            f'data-tip="{_e(s.tooltip())}">'
            f"<title>{_e(s.tooltip())}</title>"
            f'<rect x="{x0:.1f}" y="{top:.1f}" width="{w:.1f}" height="{BAR_H}" rx="3" '
            f'fill="{fill}"{outline}/>'
            f'<rect x="{x0:.1f}" y="{top:.1f}" width="{w:.1f}" height="4" '
            f'fill="{TIER_COLOURS[s.tier]}"/>'
        )
        fits = int((w - 6) / 6.6)
        if fits >= 3:
            svg.append(
                f'<text x="{x0 + 4:.1f}" y="{top + BAR_H - 5:.1f}" fill="#ffffff" '
                f'font-size="11">{_e(_cut(s.name, fits))}</text>'
            )
        svg.append("</g>")
    svg.append("</svg>")

    counts: dict[str, int] = {}
    for s in spans:
        if s.attempt is None or s.note != "retried":
            counts[s.state.name] = counts.get(s.state.name, 0) + 1
    heading = title or "taskvisor run"
    summary = (
        f"started {origin.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S')} UTC · "
        f"{_duration(total)} · {len({s.name for s in spans})} task(s): "
        + ", ".join(f"{n} {k}" for k, n in counts.items())
        + f" · {subtitle}"
    )
    legend = []
    for state, colour in STATE_COLOURS.items():
        legend.append(
            f'<span class="tv-key"><i style="background:{colour}"></i>{state.name}</span>'
        )
    legend.append(
        '<span class="tv-key"><i style="background:#e03131;outline:1.5px dashed #7a1d1d">'
        "</i>attempt that was retried</span>"
    )
    for tier, colour in TIER_COLOURS.items():
        legend.append(
            f'<span class="tv-key"><i style="background:#ffffff;border-top:4px solid '
            f'{colour}"></i>{tier.name} tier</span>'
        )
    return _PAGE.format(
        title=_e(heading),
        summary=_e(summary),
        legend="".join(legend),
        svg="\n".join(svg),
    )


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 16px; color: #212529;
       background: #ffffff; }}
h1 {{ font-size: 18px; margin: 0 0 4px 0; }}
#tv-summary {{ color: #555; font-size: 13px; margin-bottom: 8px; }}
#tv-legend {{ font-size: 12px; margin: 6px 0 10px 0; }}
.tv-key {{ margin-right: 14px; white-space: nowrap; }}
.tv-key i {{ display: inline-block; width: 14px; height: 10px; margin-right: 4px;
            vertical-align: -1px; border-radius: 2px; }}
.tv-bar:hover rect:first-of-type {{ stroke: #000; stroke-width: 2; }}
#tv-info {{ font: 12px monospace; white-space: pre; min-height: 7.5em; background: #f1f3f5;
           border-radius: 4px; padding: 6px 8px; margin-top: 8px; }}
</style>
</head>
<body>
<h1>{title}</h1>
<div id="tv-summary">{summary}</div>
<div id="tv-legend">{legend}</div>
<div id="tv-chart">
{svg}
</div>
<div id="tv-info">hover over a bar for its details</div>
<script>
(function () {{
  "use strict";
  var bars = document.querySelectorAll("#tv-timeline .tv-bar");
  var info = document.getElementById("tv-info");
  bars.forEach(function (bar) {{
    bar.addEventListener("mouseenter", function () {{
      info.textContent = bar.getAttribute("data-tip");
    }});
  }});
  var lanes = document.querySelectorAll("#tv-timeline .tv-lane").length;
  document.body.setAttribute("data-tv-bars", String(bars.length));
  document.body.setAttribute("data-tv-lanes", String(lanes));
  var box = document.getElementById("tv-timeline").getBoundingClientRect();
  document.body.setAttribute("data-tv-chart", Math.round(box.left) + "," + Math.round(box.top));
}})();
</script>
</body>
</html>
"""


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: max(n - 1, 0)] + "…"


def _duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.3f} s"


def _nice_step(raw: float) -> float:
    """1, 2 or 5 times a power of ten, at least ``raw``."""
    exp = math.floor(math.log10(raw)) if raw > 0 else -3
    for m in (1, 2, 5, 10):
        step = m * 10.0**exp
        if step >= raw:
            return step
    return 10.0 ** (exp + 1)


def _tick(t: float, step: float) -> str:
    if step >= 1:
        return f"{t:g} s"
    ms = t * 1e3
    digits = max(0, -math.floor(math.log10(step * 1e3) + 1e-9)) if step < 1e-3 else 0
    return f"{ms:.{digits}f} ms"
