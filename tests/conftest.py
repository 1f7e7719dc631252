"""Shared fixtures: every async test runs on asyncio and on uvloop; nothing may leak."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import psutil
import pytest

import taskvisor as tv
from taskvisor import _supervisor
from taskvisor.testing import MockClock


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "asyncio": asyncio.new_event_loop
    }
    if sys.platform != "win32":
        import uvloop

        factories["uvloop"] = uvloop.new_event_loop
    return factories


def _children() -> set[int]:
    me = psutil.Process()
    out = set()
    for child in me.children(recursive=True):
        try:
            if "resource_tracker" in " ".join(child.cmdline()):
                continue  # multiprocessing's per-interpreter singleton, not ours
        except psutil.Error:
            continue
        out.add(child.pid)
    return out


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves a thread, a child process or an open supervisor behind."""
    threads = set(threading.enumerate())
    children = _children()
    yield
    left = [t for t in threading.enumerate() if t not in threads]
    for t in left:
        t.join(timeout=10)  # a closer thread may still be returning; never a sleep
    alive = [t.name for t in left if t.is_alive()]
    procs = []
    for pid in _children() - children:
        try:
            psutil.Process(pid).wait(timeout=10)
        except psutil.TimeoutExpired:
            procs.append(pid)
        except psutil.Error:
            pass
    open_sups = list(_supervisor._LIVE)
    assert not alive, f"test left threads running: {alive}"
    assert not procs, f"test left child processes: {procs}"
    assert not open_sups, f"test left supervisors open: {open_sups}"


@pytest.fixture(params=["inline", "loop"])
def completion_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test on each path a thread task's completion can take into the engine.

    ``"inline"``: as the supervisor sets it up (on the real clock a pool thread may finish
    its own task under the engine lock, see ``Supervisor._sink``). ``"loop"``: every
    supervisor started during the test keeps ``_inline`` off, so every completion goes
    through the inbox and is taken in by ``_drain`` on the loop's thread.
    """
    path: str = request.param
    if path == "loop":
        start = tv.Supervisor.start

        async def start_on_the_loop_path(sup: tv.Supervisor) -> None:
            await start(sup)
            # (no task can have been submitted yet: start() has not returned)
            sup._inline = False

        monkeypatch.setattr(tv.Supervisor, "start", start_on_the_loop_path)
    return path


class Gates:
    """Blockable coroutine tasks: each records its start and waits until released."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self._started: dict[str, asyncio.Event] = {}
        self._release: dict[str, asyncio.Event] = {}

    def started(self, name: str) -> asyncio.Event:
        return self._started.setdefault(name, asyncio.Event())

    def release(self, *names: str) -> None:
        for n in names:
            self._release.setdefault(n, asyncio.Event()).set()

    async def task(self, name: str) -> str:
        self.order.append(name)
        self.started(name).set()
        await self._release.setdefault(name, asyncio.Event()).wait()
        return name

    async def wait_started(self, *names: str) -> None:
        for n in names:
            await self.started(n).wait()


@pytest.fixture
def gates() -> Gates:
    return Gates()


def noop(*_: Any, **__: Any) -> None:
    return None


class DeadlineClock(MockClock):
    """A hand-moved mock clock the test can wait on until a given deadline is armed."""

    def __init__(self) -> None:
        super().__init__(autojump=False)
        self._changed = asyncio.Event()

    def call_at(
        self, loop: asyncio.AbstractEventLoop, when: float, callback: Callable[[], None]
    ) -> Any:
        timer = super().call_at(loop, when, callback)
        self._changed.set()
        return timer

    async def armed(self, when: float) -> None:
        while self.next_deadline != when:
            self._changed.clear()
            await self._changed.wait()


async def end_of_turn() -> None:
    """Let the loop end its current turn: tasks given to ``submit`` are admitted together
    once the turn that submitted them is over. A yield (``sleep(0)``): no time passes, and
    the admission callback, scheduled before it, is sure to have run when it returns."""
    await asyncio.sleep(0)
