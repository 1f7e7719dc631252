"""The service examples, run as a user runs them: real processes, a real uvicorn on
127.0.0.1, real HTTP requests, a real SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WAIT = 60.0  # a bound on a wait that must end long before (never a synchronisation)
# the web example's grace, read from its source (so the two never drift apart)
_grace = re.search(r"^GRACE = ([\d.]+)", (EXAMPLES / "web_service.py").read_text(), re.M)
assert _grace is not None
GRACE = float(_grace.group(1))

pytestmark = pytest.mark.slow


def test_threaded_service_runs_and_stops() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "threaded_service.py"), "--for", "0.2"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=True,
    ).stdout
    assert sorted(line.split(":")[0] for line in out.splitlines() if "price" in line) == [
        f"request {n}" for n in range(8)
    ]  # 8 threads, each answered by sup.call
    assert "jobs done 39, failed ['jobs#" in out  # one malformed job; the worker went on


def _get(url: str, method: str = "GET") -> dict[str, object]:
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=WAIT) as resp:
        data: dict[str, object] = json.loads(resp.read())
        return data


def _running(base: str) -> int:
    tasks = _get(f"{base}/stats")["tasks"]
    assert isinstance(tasks, dict)
    return int(tasks.get("RUNNING", 0))


@contextlib.contextmanager
def _uvicorn() -> Iterator[tuple[subprocess.Popen[str], str]]:
    """The web example on a real uvicorn, port chosen by the OS: (the process, its URL).
    The test stops it (SIGTERM); it is killed if the test failed first."""
    with subprocess.Popen(
        [sys.executable, str(EXAMPLES / "web_service.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as server:
        try:
            assert server.stdout is not None
            for line in server.stdout:  # uvicorn says where it listens once it is up
                m = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
                if m:
                    break
            else:
                raise AssertionError("uvicorn did not start")
            yield server, f"http://127.0.0.1:{m.group(1)}"
        finally:
            if server.poll() is None:
                server.kill()


def _stop(server: subprocess.Popen[str]) -> str:
    """SIGTERM: uvicorn's graceful shutdown ends the lifespan, which closes the supervisor;
    then uvicorn hands the signal back to the default handler. Returns the rest of the log."""
    assert server.stdout is not None
    server.send_signal(signal.SIGTERM)
    rest = server.stdout.read()
    assert server.wait(WAIT) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in rest
    return rest


def test_web_service_on_a_real_uvicorn() -> None:
    with _uvicorn() as (server, base):
        assert _get(f"{base}/report?n=3", "POST") == {"sources": 3, "rows": 60}
        assert _get(f"{base}/price?item=book") == {"item": "book", "price": 5.0}
        assert _get(f"{base}/stats")["state"] == "running"
        _stop(server)


async def test_web_service_under_its_lifespan_in_process() -> None:
    """The ASGI app itself on httpx's ASGI transport, inside its own lifespan: the
    supervisor opens with the app, serves 32 concurrent requests, and has closed when
    the lifespan has."""
    import httpx

    spec = importlib.util.spec_from_file_location("web_service", EXAMPLES / "web_service.py")
    assert spec is not None and spec.loader is not None
    web_service = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(web_service)
    app = web_service.app
    async with web_service.lifespan(app):
        sup = app.state.sup
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            r = await client.post("/report?n=4")
            assert r.json() == {"sources": 4, "rows": 100}
            answers = await asyncio.gather(
                *(client.get(f"/price?item={'x' * i}") for i in range(1, 33))
            )
            assert [a.json()["price"] for a in answers] == [
                round(i * 1.25, 2) for i in range(1, 33)
            ]
            assert (await client.get("/stats")).json()["state"] == "running"
    assert sup.state.value == "closed"
    assert all(r.ok for r in sup.report())  # every task it ran has its TaskRes


def test_sigterm_mid_load_answers_every_request_that_reached_a_handler() -> None:
    """8 requests in their handlers (40 one-second fetches running), then SIGTERM: every
    request answers, every task ended with its TaskRes, the process exits within the
    example's ``grace`` + 2 s, and no child is left."""
    import psutil

    with _uvicorn() as (server, base):
        with ThreadPoolExecutor(8) as pool:
            answers = [pool.submit(_get, f"{base}/report?n=5&delay=1.0", "POST") for _ in range(8)]
            # every request has reached its handler: 8 x 5 fetches are running
            while _running(base) < 40:  # (a condition, not a timer; pytest-timeout bounds it)
                pass
            signalled = time.monotonic()
            server.send_signal(signal.SIGTERM)
            results = [a.result(timeout=WAIT) for a in answers]
        assert results == [{"sources": 5, "rows": 150}] * 8  # every one answered
        rest = _stop(server)  # (a second SIGTERM changes nothing: it is already stopping)
        # the bound on shutdown (an upper bound with headroom, not a synchronisation:
        # the work left takes about one second)
        assert time.monotonic() - signalled <= GRACE + 2.0
    assert "supervisor closed: {'DONE': 48}" in rest  # 8 x (5 fetches + 1 summary)
    assert not [p for p in psutil.process_iter(["ppid"]) if p.info["ppid"] == server.pid]
