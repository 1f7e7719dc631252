"""Pictures: ``tv.graph(tasks)`` (Mermaid, DOT, SVG) and ``RunReport.timeline_html()``.

The browser tests open the pictures in a real headless Chromium (see tests/browser.py)
and check both the DOM after the page's scripts ran and the screenshot's pixels.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import taskvisor as tv
from taskvisor._graph import TIER_STYLE
from taskvisor._timeline import STATE_COLOURS

from .browser import need, open_page
from .workloads import fails_once

SVG = "{http://www.w3.org/2000/svg}"
ODD = 'say "hi" <b> & co'  # a name that breaks every format unless escaped


def work(*_: Any, **__: Any) -> int:
    return 1


def pipeline() -> list[tv.Task[Any]]:
    """About ten tasks: items, output references, an external input, locks, all tiers."""
    fetch = tv.Task(work, name="fetch", provides={"raw"}, tier=tv.HIGH, claims={"net"})
    schema = tv.Task(work, name="schema", provides={"schema"}, tier=tv.LOW)
    parse = tv.Task(
        work, (fetch.output,), name="parse", requires={"raw", "schema"}, runs_on="process"
    )
    clean = tv.Task(work, (parse.output,), name=ODD, uses={"db"})
    stats = tv.Task(work, (clean.output,), name="stats", uses={"db"}, tier=tv.LOW)
    index = tv.Task(work, (clean.output,), name="index", claims={"db"}, tier=tv.HIGH)
    config = tv.Task(work, name="train", requires={"config", "raw"}, runs_on="process")
    report = tv.Task(
        work, (stats.output, index.output), name="report", provides={"report"}, tier=tv.CRITICAL
    )
    publish = tv.Task(work, name="publish", requires={"report"}, claims={"net"})
    return [fetch, schema, parse, clean, stats, index, config, report, publish]


# -- the graph ------------------------------------------------------------------------------


def test_edges_come_from_items_and_output_references() -> None:
    g = tv.graph(pipeline())
    deps = g.dependencies()
    assert ("fetch", "parse") in deps  # both the "raw" item and the output reference
    assert ("schema", "parse") in deps
    assert ("parse", ODD) in deps
    assert (ODD, "stats") in deps and (ODD, "index") in deps
    assert ("stats", "report") in deps and ("index", "report") in deps
    assert ("report", "publish") in deps
    assert ("fetch", "train") in deps
    # one arrow per pair, labelled with everything it carries
    [edge] = [e for e in g.edges if e.src == "t0" and e.dst == "t2"]
    assert edge.label == "raw, output"
    # nobody provides "config": an external input, not an error
    assert ("config", "train") in deps
    assert g.node("config", "input").kind == "input"
    assert len([n for n in g.nodes if n.kind == "task"]) == 9


def test_plain_callables_and_missing_producers() -> None:
    a = tv.Task(work, name="a")
    elsewhere = tv.Task(work, name="elsewhere")
    b = tv.Task(work, (elsewhere.output,), name="b")
    g = tv.graph([a, b, work])  # a plain callable is wrapped as submit would
    names = [n.name for n in g.nodes if n.kind == "task"]
    assert names[:2] == ["a", "b"] and names[2].startswith("work-")
    assert ("output of elsewhere", "b") in g.dependencies()
    with pytest.raises(tv.SpecError, match="expected a Task or a callable"):
        tv.graph([a, 42])  # type: ignore[list-item]


def test_cycles_and_duplicates_are_the_errors_submit_raises() -> None:
    a = tv.Task(work, name="a", requires={"y"}, provides={"x"})
    b = tv.Task(work, name="b", requires={"x"}, provides={"y"})
    c = tv.Task(work, name="c", requires={"y"})
    with pytest.raises(tv.CycleError, match="dependency cycle: ") as info:
        tv.graph([a, b, c])
    assert set(info.value.cycle) == {"a", "b"} and info.value.cycle[0] == info.value.cycle[-1]
    with pytest.raises(tv.DuplicateTaskError, match="'a'"):
        tv.graph([a, tv.Task(work, name="a")])


def test_locks_tiers_and_targets_in_all_three_formats() -> None:
    g = tv.graph(pipeline())
    mermaid, dot, svg = g.to_mermaid(), g.to_dot(), g.to_svg(engine="builtin")
    for text in (mermaid, dot, svg):
        assert "claims net" in text and "uses db" in text and "claims db" in text
        for tier in tv.Tier:
            assert f"{tier.name} · " in text
        assert "process" in text and "thread" in text
    # Mermaid and DOT draw each lock resource as a node with dashed lines to its tasks
    locks = {n.name: n.id for n in g.nodes if n.kind == "lock"}
    assert set(locks) == {"net", "db"}
    assert f'{locks["net"]} -.-|"claims"| t0' in mermaid
    assert re.search(rf'{locks["db"]} -> t4 \[label="uses", style=dashed', dot)
    for tier, (fill, stroke, _) in TIER_STYLE.items():
        assert f"classDef tier_{tier.name} fill:{fill},stroke:{stroke}" in mermaid
        assert f'fillcolor="{fill}", color="{stroke}"' in dot
        assert f'fill="{fill}" stroke="{stroke}"' in svg
    assert "class t7 tier_CRITICAL" in mermaid
    root = ET.fromstring(svg)
    tiers = {g.get("data-name"): g.get("class") for g in root.iter(f"{SVG}g")}
    assert tiers["report"] == "tv-node tv-task tv-tier-CRITICAL"
    assert tiers["config"] == "tv-node tv-input"


def test_names_are_escaped_in_every_format() -> None:
    g = tv.graph(pipeline())
    mermaid = g.to_mermaid()
    line = next(x for x in mermaid.splitlines() if x.startswith("    t3("))
    assert (
        line
        == '    t3("say #quot;hi#quot; #lt;b#gt; #amp; co<br>NORMAL · thread<br>locks: uses db")'
    )
    assert ODD not in mermaid
    dot = g.to_dot()
    assert r'label="say \"hi\" <b> &amp; co\nNORMAL · thread\nlocks: uses db"' in dot
    svg = g.to_svg(engine="builtin")
    root = ET.fromstring(svg)  # well-formed: the name did not break the XML
    assert ODD in {e.get("data-name") for e in root.iter(f"{SVG}g")}
    assert ODD in [t.text for t in root.iter(f"{SVG}text")]


def test_mermaid_is_well_formed() -> None:
    mermaid = tv.graph(pipeline()).to_mermaid()
    lines = mermaid.splitlines()
    assert lines[0] == "flowchart TD"
    declared = set()
    for line in lines[1:]:
        assert line.startswith("    "), line
        body = line.strip()
        node = re.fullmatch(r'([til]\d+)(\("[^"]*"\)|\[/"[^"]*"/\]|\{\{"[^"]*"\}\})', body)
        edge = re.fullmatch(r'([til]\d+) (-->|-\.-)(\|"[^"|]*"\|)? ([til]\d+)', body)
        if node:
            declared.add(node.group(1))
        elif edge:
            assert {edge.group(1), edge.group(4)} <= declared, line
        else:
            assert re.fullmatch(r"(classDef|class) [\w,]+ \S.*", body), line


def test_dot_output_is_accepted_by_graphviz(tmp_path: Path) -> None:
    dot_bin = need("dot", "graphviz")
    g = tv.graph(pipeline())
    out = subprocess.run(
        [dot_bin, "-Tsvg"], input=g.to_dot().encode(), capture_output=True, timeout=60
    )
    assert out.returncode == 0 and not out.stderr, out.stderr
    root = ET.fromstring(out.stdout)
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert ODD in texts and "report" in texts and "net" in texts
    assert g.to_svg() == out.stdout.decode()  # "auto" takes dot when it is there
    assert g.to_svg(engine="dot") == out.stdout.decode()


def test_the_builtin_layout_is_deterministic_and_readable_at_a_hundred_nodes() -> None:
    tasks: list[tv.Task[Any]] = []
    for i in range(100):  # ten layers of ten, each task needing two of the layer above
        layer, k = divmod(i, 10)
        needs = [tasks[(layer - 1) * 10 + (k + j) % 10].output for j in (0, 3)] if layer else []
        tasks.append(tv.Task(work, tuple(needs), name=f"step {layer}.{k}", tier=k % 4))
    tasks.append(tv.Task(work, name="late", requires={"from outside"}))
    g = tv.graph(tasks)
    svg = g.to_svg(engine="builtin")
    assert svg == tv.graph(tasks).to_svg(engine="builtin")  # the same bytes every time
    root = ET.fromstring(svg)
    boxes = []
    for node in root.iter(f"{SVG}g"):
        if "tv-node" in (node.get("class") or ""):
            r = node.find(f"{SVG}rect")
            assert r is not None
            x, y, w, h = (float(r.get(k, "0")) for k in ("x", "y", "width", "height"))
            boxes.append((node.get("data-name"), x, y, w, h))
    assert len(boxes) == 102  # 101 tasks and one external input
    for i, (na, xa, ya, wa, ha) in enumerate(boxes):  # no two nodes overlap
        for nb, xb, yb, wb, hb in boxes[i + 1 :]:
            apart = xa + wa <= xb or xb + wb <= xa or ya + ha <= yb or yb + hb <= ya
            assert apart, (na, nb)
    top = {n: y for n, _, y, _, _ in boxes}
    edges = [e for e in root.iter(f"{SVG}g") if e.get("class") == "tv-edge"]
    assert len(edges) == 181
    for e in edges:  # every arrow points down, from provider to consumer
        assert top[e.get("data-from")] < top[e.get("data-to")]
    assert top["from outside"] == top["late"] - 58 - 44  # one layer above its consumer


def test_repr_svg_for_notebooks() -> None:
    g = tv.graph([tv.Task(work, name="only")])
    assert g._repr_svg_().lstrip().startswith(("<svg", "<?xml"))


# -- the timeline ---------------------------------------------------------------------------


class Bars(HTMLParser):
    """The bars (and the text) of a timeline page."""

    def __init__(self) -> None:
        super().__init__()
        self.bars: list[dict[str, str | None]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        d = dict(attrs)
        if tag == "g" and "tv-bar" in (d.get("class") or ""):
            self.bars.append(d)
        self._in_script = tag == "script"

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data)

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False


def failing_run(recorder: tv.TimelineRecorder | None = None) -> tv.RunReport:
    """A failure, a retry, a skipped dependent, two tiers, threads and an aloop."""
    flaky = fails_once()

    def broken() -> None:
        raise ValueError("bad input <i>&</i>")

    async def fetch() -> int:
        await asyncio.sleep(0)
        return 1

    get = tv.Task(fetch, name="fetch <script>alert(1)</script>", tier=tv.HIGH)
    retry = tv.Task(flaky, name="flaky", retries=1)
    fail = tv.Task(broken, name="broken", tier=tv.HIGH)
    skip = tv.Task(work, (fail.output,), name="needs broken")
    after = tv.Task(work, (get.output,), name="after fetch")
    with pytest.warns(tv.TaskvisorWarning, match="1 dependent task"):
        return tv.run(
            [get, retry, fail, skip, after], threads=2, instruments=[recorder] if recorder else []
        )


def test_the_timeline_of_a_report() -> None:
    report = failing_run()
    page = report.timeline_html(title="nightly <build> & test")
    assert page.startswith("<!DOCTYPE html>") and "http" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )  # nothing loaded from anywhere: it opens offline
    parsed = Bars()
    parsed.feed(page)
    bars = {b["data-name"]: b for b in parsed.bars}
    assert len(parsed.bars) == 5  # one bar per task
    assert {n: b["data-state"] for n, b in bars.items()} == {
        "fetch <script>alert(1)</script>": "DONE",
        "flaky": "DONE",
        "broken": "FAILED",
        "needs broken": "SKIPPED",
        "after fetch": "DONE",
    }
    assert bars["broken"]["data-tier"] == "HIGH" and bars["flaky"]["data-tier"] == "NORMAL"
    assert "2 attempts" in (bars["flaky"]["data-tip"] or "")
    assert "ValueError: bad input <i>&</i>" in (bars["broken"]["data-tip"] or "")
    assert "<script>alert(1)" not in page  # escaped everywhere
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<title>nightly &lt;build&gt; &amp; test</title>" in page
    assert "alert" not in "".join(parsed.scripts)  # the script holds no user text
    lanes = re.findall(r'class="tv-lane" data-lane="([^"]*)"', page)
    assert lanes[-1] == "not run" and any(x.startswith("taskvisor-aloop-") for x in lanes)


def test_the_recorder_draws_one_bar_per_attempt() -> None:
    rec = tv.TimelineRecorder()
    report = failing_run(rec)
    assert {r.name for r in rec.results} == {r.name for r in report}
    spans = [s for s in rec.spans() if s.name == "flaky"]
    assert [(s.attempt, s.state.name, s.note) for s in spans] == [
        (1, "FAILED", "retried"),
        (2, "DONE", ""),
    ]
    assert spans[0].end == spans[1].start  # the retry starts where the failure ended
    parsed = Bars()
    parsed.feed(rec.timeline_html())
    assert len(parsed.bars) == 6
    assert [b["data-attempt"] for b in parsed.bars if b["data-name"] == "flaky"] in (
        ["1", "2"],
        ["2", "1"],
    )


# -- in a real browser ----------------------------------------------------------------------


def rgb(colour: str) -> tuple[int, int, int]:
    return (int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16))


def test_the_timeline_in_chromium(tmp_path: Path) -> None:
    rec = tv.TimelineRecorder()
    failing_run(rec)
    html_path = tmp_path / "run.html"
    html_path.write_text(rec.timeline_html(title="a run"), encoding="utf-8")
    page = open_page(html_path, tmp_path / "run.png", 1250, 600)
    body = re.search(r"<body([^>]*)>", page.dom)
    assert body is not None
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))
    assert attrs["data-tv-bars"] == "6"  # the script ran and counted the bars
    assert int(attrs["data-tv-lanes"]) >= 3
    chart_x, chart_y = map(int, attrs["data-tv-chart"].split(","))
    names = re.findall(r'class="tv-bar[^"]*" data-name="([^"]*)"', page.dom)
    assert sorted(names) == sorted(
        [
            "fetch &lt;script&gt;alert(1)&lt;/script&gt;",
            "flaky",
            "flaky",
            "broken",
            "needs broken",
            "after fetch",
        ]
    )
    assert "<script>alert(1)" not in page.dom
    # the screenshot: each bar's own pixel has its state's colour
    image = Image.open(page.png).convert("RGB")
    seen = set()
    for m in re.finditer(
        r'data-state="(\w+)"[^>]*><title>.*?</title><rect x="([\d.]+)" y="([\d.]+)"',
        page.dom,
        re.S,
    ):
        state, x, y = m.group(1), float(m.group(2)), float(m.group(3))
        pixel = image.getpixel((round(chart_x + x + 1.5), round(chart_y + y + 12)))
        assert pixel == rgb(STATE_COLOURS[tv.State[state]]), (state, pixel)
        seen.add(state)
    assert seen == {"DONE", "FAILED", "SKIPPED"}
    print(f"chromium: {page.seconds:.2f} s for DOM and screenshot")


@pytest.mark.parametrize("engine", ["builtin", "dot"])
def test_the_graph_in_chromium(tmp_path: Path, engine: str) -> None:
    if engine == "dot":
        need("dot", "graphviz")
    svg_path = tmp_path / "graph.svg"
    svg_path.write_text(tv.graph(pipeline()).to_svg(engine=engine), encoding="utf-8")  # type: ignore[arg-type]
    page = open_page(svg_path, tmp_path / "graph.png", 1000, 900)
    assert page.dom.count("tv-task") == 9
    assert "say &quot;hi&quot; &lt;b&gt; &amp; co" in page.dom
    image = Image.open(page.png).convert("RGB")
    colours = {c for _, c in image.getcolors(maxcolors=1 << 20) or []}
    for tier, (fill, _, _) in TIER_STYLE.items():
        assert rgb(fill) in colours, tier
    if engine == "builtin":  # each node's own pixel (left of its text) has its tier's fill
        root = ET.fromstring(svg_path.read_text())
        checked = 0
        for node in root.iter(f"{SVG}g"):
            classes = (node.get("class") or "").split()
            tier_name = next((c[8:] for c in classes if c.startswith("tv-tier-")), None)
            r = node.find(f"{SVG}rect")
            if tier_name is None or r is None:
                continue
            x, y, h = float(r.get("x", 0)), float(r.get("y", 0)), float(r.get("height", 0))
            pixel = image.getpixel((round(x + 5), round(y + h / 2)))
            want = rgb(TIER_STYLE[tv.Tier[tier_name]][0])
            assert pixel == want, (node.get("data-name"), pixel)
            checked += 1
        assert checked == 9
    print(f"chromium ({engine}): {page.seconds:.2f} s for DOM and screenshot")


def test_a_missing_browser_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os
    import shutil

    monkeypatch.setattr(shutil, "which", lambda *_: None)
    monkeypatch.setattr(os, "access", lambda *_: False)
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match=r"\.ci/run installs it"):
        need("chromium", "chromium")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match=r"apt-get install graphviz"):
        need("dot", "graphviz")
