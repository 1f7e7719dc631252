"""The service examples, run as a user runs them: real processes, a real uvicorn on
127.0.0.1, real HTTP requests, a real SIGTERM."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WAIT = 60.0  # a bound on a wait that must end long before (never a synchronisation)

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


def test_web_service_on_a_real_uvicorn() -> None:
    with subprocess.Popen(
        [sys.executable, str(EXAMPLES / "web_service.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as server:
        assert server.stdout is not None
        try:
            port = None
            for line in server.stdout:  # uvicorn says where it listens once it is up
                m = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
                if m:
                    port = int(m.group(1))
                    break
            assert port, "uvicorn did not start"
            base = f"http://127.0.0.1:{port}"
            assert _get(f"{base}/report?n=3", "POST") == {"sources": 3, "rows": 60}
            assert _get(f"{base}/price?item=book") == {"item": "book", "price": 5.0}
            assert _get(f"{base}/stats")["state"] == "running"
            server.send_signal(signal.SIGTERM)  # uvicorn's graceful shutdown: the lifespan
            rest = server.stdout.read()  # closes the supervisor
            # (uvicorn hands SIGTERM back to the default handler once shut down)
            assert server.wait(WAIT) in (0, -signal.SIGTERM)
        finally:
            if server.poll() is None:
                server.kill()
    assert "Application shutdown complete" in rest


async def test_web_service_under_its_lifespan_in_process() -> None:
    """The ASGI app itself on httpx's ASGI transport, inside its own lifespan: the
    supervisor opens with the app, serves 32 concurrent requests, and has closed when
    the lifespan has."""
    import httpx

    sys.path.insert(0, str(EXAMPLES))
    try:
        import web_service
    finally:
        sys.path.remove(str(EXAMPLES))
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
    import psutil

    with subprocess.Popen(
        [sys.executable, str(EXAMPLES / "web_service.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as server:
        assert server.stdout is not None
        try:
            port = None
            for line in server.stdout:
                m = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
                if m:
                    port = int(m.group(1))
                    break
            assert port, "uvicorn did not start"
            base = f"http://127.0.0.1:{port}"
            with ThreadPoolExecutor(8) as pool:
                answers = [
                    pool.submit(_get, f"{base}/report?n=5&delay=1.0", "POST") for _ in range(8)
                ]
                # every request has reached its handler: 8 x 5 fetches are running
                while _running(base) < 40:  # (a condition, not a timer; pytest-timeout bounds it)
                    pass
                server.send_signal(signal.SIGTERM)
                results = [a.result(timeout=WAIT) for a in answers]
            assert results == [{"sources": 5, "rows": 150}] * 8  # every one answered
            rest = server.stdout.read()
            assert server.wait(WAIT) in (0, -signal.SIGTERM)
        finally:
            if server.poll() is None:
                server.kill()
    assert "Application shutdown complete" in rest
    assert not [p for p in psutil.process_iter(["ppid"]) if p.info["ppid"] == server.pid]
