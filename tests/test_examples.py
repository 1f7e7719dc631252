"""The service examples, run as a user runs them: real processes, a real uvicorn on
127.0.0.1, real HTTP requests, a real SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
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
    assert out.count("price 9.0") == 3
    assert "jobs done 14, failed ['jobs#" in out  # one malformed job; the worker went on


def _get(url: str, method: str = "GET") -> dict[str, object]:
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=WAIT) as resp:
        data: dict[str, object] = json.loads(resp.read())
        return data


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
