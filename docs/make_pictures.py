"""Regenerate the screenshots on the Pictures page (docs/_static/*.png).

Run from the repository root with the test environment (it needs pillow and a headless
Chromium, see the README's test section)::

    .nox/tests/bin/python docs/make_pictures.py

It runs a small pipeline for real (the timeline shows real timings, so each run differs a
little), draws the graph of a ten-task pipeline with the built-in layout, opens both in
Chromium and keeps the screenshots, cropped to what was drawn.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from PIL import Image, ImageChops

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.browser import open_page  # noqa: E402

import taskvisor as tv  # noqa: E402

STATIC = ROOT / "docs" / "_static"


def pipeline() -> list[tv.Task[Any]]:
    """Ten tasks: items and outputs, an external input, two locks, every tier."""

    def step(*_: Any) -> None: ...

    fetch = tv.Task(step, name="fetch orders", provides={"orders"}, tier=tv.HIGH, claims={"api"})
    rates = tv.Task(step, name="fetch rates", provides={"rates"}, claims={"api"})
    load = tv.Task(step, (fetch.output,), name="load", requires={"db-ready"}, claims={"db"})
    convert = tv.Task(step, (load.output,), name="convert", requires={"rates"}, runs_on="process")
    dedupe = tv.Task(step, (convert.output,), name="dedupe", runs_on="process")
    totals = tv.Task(step, (dedupe.output,), name="totals", uses={"db"}, tier=tv.LOW)
    fraud = tv.Task(step, (dedupe.output,), name="fraud check", tier=tv.CRITICAL, uses={"db"})
    invoice = tv.Task(step, (totals.output, fraud.output), name="invoices", provides={"pdf"})
    mail = tv.Task(step, name="mail", requires={"pdf"}, runs_on="aloop", tier=tv.HIGH)
    archive = tv.Task(step, name="archive", requires={"pdf"}, tier=tv.LOW, claims={"db"})
    return [fetch, rates, load, convert, dedupe, totals, fraud, invoice, mail, archive]


def realistic_run(recorder: tv.TimelineRecorder) -> tv.RunReport:
    """Threads and an aloop, two tiers, a retry, a failure and its skipped dependent."""
    tries: list[int] = []

    def download(n: int) -> int:
        time.sleep(0.04 + 0.01 * n)
        return n

    def flaky_upload() -> str:
        tries.append(1)
        time.sleep(0.03)
        if len(tries) == 1:
            raise ConnectionError("server hung up")
        return "uploaded"

    def parse(*parts: int) -> int:
        time.sleep(0.05)
        return sum(parts)

    def validate(total: int) -> None:
        time.sleep(0.02)
        raise ValueError(f"total {total} does not match the ledger")

    async def notify(text: str) -> str:
        await asyncio.sleep(0.06)
        return text

    downloads = [
        tv.Task(download, (n,), name=f"download {n}", tier=tv.HIGH if n < 2 else tv.NORMAL)
        for n in range(4)
    ]
    merged = tv.Task(parse, tuple(d.output for d in downloads), name="parse")
    check = tv.Task(validate, (merged.output,), name="validate", tier=tv.HIGH)
    publish = tv.Task(notify, (check.output,), name="publish")
    upload = tv.Task(flaky_upload, name="upload", retries=1)
    ping = tv.Task(notify, ("started",), name="notify start", tier=tv.HIGH)
    ping2 = tv.Task(notify, (merged.output.map(str),), name="notify parsed")
    tasks = [*downloads, merged, check, publish, upload, ping, ping2]
    with warnings.catch_warnings():  # (the skipped dependent's warning: expected here)
        warnings.simplefilter("ignore", tv.TaskvisorWarning)
        # pool_size=3: tasks wait in taskvisor's queue (by tier), not inside the pool, so
        # each bar starts when its worker really takes it
        return tv.run(tasks, threads=3, pool_size=3, instruments=[recorder])


def crop(png: Path) -> None:
    """Cut the empty white margin the window left below and right of the picture."""
    image = Image.open(png).convert("RGB")
    bg = Image.new("RGB", image.size, (255, 255, 255))
    box = ImageChops.difference(image, bg).getbbox()
    if box is not None:
        w, h = image.size
        image.crop((0, 0, min(box[2] + 16, w), min(box[3] + 16, h))).save(png)


def main() -> None:
    STATIC.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "timeline.html"
        recorder = tv.TimelineRecorder()  # (one bar per attempt: the retry shows)
        realistic_run(recorder)
        page.write_text(recorder.timeline_html(title="nightly import"), encoding="utf-8")
        open_page(page, STATIC / "timeline.png", 1240, 700)
        crop(STATIC / "timeline.png")
        svg = Path(tmp) / "graph.svg"
        svg.write_text(tv.graph(pipeline()).to_svg(engine="builtin"), encoding="utf-8")
        open_page(svg, STATIC / "graph.png", 1000, 900)
        crop(STATIC / "graph.png")
    for name in ("timeline.png", "graph.png"):
        print(STATIC / name, Image.open(STATIC / name).size)


if __name__ == "__main__":
    main()
