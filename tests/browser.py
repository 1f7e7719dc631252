"""A real headless Chromium for the picture tests (and docs/make_pictures.py).

Chromium and graphviz are system packages: ``.ci/run`` installs them with apt before it
runs nox. A test that needs one and does not find it fails under CI (the ``CI``
environment variable is set) and is skipped elsewhere, saying how to get it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

TIMEOUT = 60.0  # seconds per browser run: a hung browser fails its test, never the suite

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)


def need(program: str, package: str) -> str:
    """The path of ``program``; else fail under CI, skip elsewhere."""
    path = shutil.which(program) or (
        f"/usr/bin/{program}" if os.access(f"/usr/bin/{program}", os.X_OK) else None
    )
    if path is None:
        why = (
            f"{program} is not installed: .ci/run installs it (apt-get install {package}) "
            "before it runs nox"
        )
        if os.environ.get("CI"):
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    return path


@dataclass
class Page:
    dom: str  # the DOM after the page's scripts ran (--dump-dom)
    png: Path  # the screenshot
    seconds: float  # wall time of the two browser runs


def _chromium(binary: str, args: list[str], profile: str) -> subprocess.CompletedProcess[bytes]:
    """One browser run in its own session, so whatever helper processes it leaves are
    ended with it (by its process group id)."""
    proc = subprocess.Popen(
        [binary, *FLAGS, f"--user-data-dir={profile}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"chromium did not finish in {TIMEOUT:g} s: {args}") from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # helpers it left behind, if any
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def open_page(path: Path, png: Path, width: int, height: int) -> Page:
    """Load ``path`` (file://) in headless Chromium: its DOM after scripts, and a
    ``width`` x ``height`` screenshot into ``png``."""
    binary = need("chromium", "chromium")
    url = path.resolve().as_uri()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tv-chromium-") as profile:
        size = f"--window-size={width},{height}"  # (the same layout in both runs)
        dom = _chromium(binary, ["--dump-dom", size, url], profile)
        assert dom.returncode == 0, dom.stderr.decode(errors="replace")[-2000:]
        shot = _chromium(binary, [f"--screenshot={png}", size, url], profile)
        assert shot.returncode == 0, shot.stderr.decode(errors="replace")[-2000:]
    assert png.exists() and png.stat().st_size > 0, "chromium wrote no screenshot"
    return Page(dom.stdout.decode(), png, time.perf_counter() - t0)
