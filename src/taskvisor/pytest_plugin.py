"""taskvisor's pytest plugin: supervisor fixtures, a mock clock, a marker, a leak check.

Installed with taskvisor (entry point ``pytest11``), so nothing needs enabling::

    async def test_pipeline(tv_supervisor):
        res = await tv_supervisor.submit(fetch, "a")
        assert res.ok

    @pytest.mark.taskvisor(threads=2, pool_size=4)        # options of tv_supervisor
    async def test_retry_delay(tv_supervisor, tv_clock):  # time is a MockClock's
        res = await tv_supervisor.submit(flaky, retries=3, delay=60)
        assert res.attempts == 4 and tv_clock.now() == 180

Fixtures:

``tv_supervisor``
    A :class:`~taskvisor.Supervisor` opened on the test's own event loop, with the options
    of the closest ``@pytest.mark.taskvisor(**options)`` marker.
``tv_supervisor_factory``
    ``await tv_supervisor_factory(**options)`` opens another supervisor on the test's loop;
    every one it opened is closed at teardown.
``tv_clock``
    A :class:`~taskvisor.testing.MockClock` (autojump on). Requested by a test, it becomes
    the clock of ``tv_supervisor`` and of every supervisor the factory opens (unless their
    options name another ``clock``).

Teardown never hangs: after a test that failed (in its setup or its body), work still
pending is cancelled at once. After a test that passed, what it left running gets
``teardown_wait`` seconds on the supervisor's clock (10 by default; on a MockClock that
takes no real time), then it is cancelled too.

The leak check (off by default; ``@pytest.mark.taskvisor(leak_check=True)``, the ini
option ``taskvisor_leak_check = true`` or ``--taskvisor-leak-check``) fails a test that
left, when its body ended, a task of the fixtures' supervisors unfinished (it is cancelled
at once, without the wait), or, after its teardown, a supervisor open, a ``taskvisor-*``
thread alive or a child process running.

Event loops: the fixtures run on the loop the test runs on, under pytest-asyncio (strict
or auto mode, any ``loop_scope``, the loop factories it is given, uvloop among them) and
under anyio's plugin with the asyncio backend. taskvisor needs an asyncio loop: a test
on trio (anyio's ``trio`` backend, or pytest-trio) fails at setup with a message saying so.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, Literal

import pytest

if TYPE_CHECKING:
    from taskvisor import Supervisor
    from taskvisor.testing import MockClock

__all__ = [
    "SupervisorFactory",
    "tv_clock",
    "tv_supervisor",
    "tv_supervisor_factory",
]

#: seconds (on the supervisor's clock) a passing test's leftover work gets at teardown
TEARDOWN_WAIT = 10.0
#: seconds the leak check gives a thread or a child process to end after teardown
LEAK_JOIN = 10.0

_PLUGIN_KEYS = ("leak_check", "teardown_wait")
_SCOPES: tuple[Literal["function", "class", "module", "package", "session"], ...] = (
    "function",
    "class",
    "module",
    "package",
    "session",
)
_reports = pytest.StashKey[dict[str, pytest.TestReport]]()
_before = pytest.StashKey[tuple[set[threading.Thread], set[int]]]()

#: ``await factory(**options)`` opens a supervisor on the test's loop
SupervisorFactory = Callable[..., Awaitable["Supervisor"]]


# ---------------------------------------------------------------------- pytest hooks


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("taskvisor")
    group.addoption(
        "--taskvisor-leak-check",
        action="store_true",
        default=None,
        help="fail tests that leave taskvisor tasks, supervisors, threads or processes behind",
    )
    parser.addini(
        "taskvisor_leak_check",
        type="bool",
        default=False,
        help="taskvisor's leak check for every test (see --taskvisor-leak-check)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "taskvisor(**options): Supervisor options for the tv_supervisor fixture, "
        "plus leak_check=bool and teardown_wait=seconds",
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report: teardown cancels pending work after a failure."""
    report = yield
    item.stash.setdefault(_reports, {})[report.when] = report
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if _leak_check(item):
        item.stash[_before] = (set(threading.enumerate()), _children())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """After every fixture is torn down: with the leak check on, nothing may be left."""
    yield
    before = item.stash.get(_before, None)
    if before is not None:
        _check_leaks(*before)


# ---------------------------------------------------------------------- fixtures


@pytest.fixture
def tv_clock() -> MockClock:
    """A :class:`~taskvisor.testing.MockClock`, the clock of the supervisors the taskvisor
    fixtures open in this test."""
    from taskvisor.testing import MockClock

    return MockClock()


@pytest.fixture
def tv_supervisor(request: pytest.FixtureRequest) -> Supervisor:
    """A running :class:`~taskvisor.Supervisor` on the test's event loop (options from
    ``@pytest.mark.taskvisor(**options)``); closed at teardown without ever hanging."""
    sup: Supervisor = request.getfixturevalue(_variant(request, "supervisor"))
    return sup


@pytest.fixture
def tv_supervisor_factory(request: pytest.FixtureRequest) -> SupervisorFactory:
    """``await tv_supervisor_factory(**options)`` opens another supervisor on the test's
    loop; each is closed at teardown like ``tv_supervisor``."""
    factory: SupervisorFactory = request.getfixturevalue(_variant(request, "factory"))
    return factory


class _Harness:
    """The supervisors one fixture opened, and how to close them when the test ends."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.request = request
        self.opened: list[Supervisor] = []
        marker = request.node.get_closest_marker("taskvisor")
        self.marked: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
        if marker is not None and marker.args:
            raise pytest.UsageError(
                f"{request.node.nodeid}: @pytest.mark.taskvisor takes keyword options only "
                f"(Supervisor options, leak_check, teardown_wait), got {marker.args!r}"
            )
        wait = self.marked.pop("teardown_wait", TEARDOWN_WAIT)
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not wait >= 0:
            raise pytest.UsageError(
                f"{request.node.nodeid}: @pytest.mark.taskvisor(teardown_wait=...) must be a "
                f"number of seconds >= 0, got {wait!r}"
            )
        self.teardown_wait = float(wait)
        self.leak_check = _leak_check(request.node)
        self.marked.pop("leak_check", None)
        self.clock = request.getfixturevalue("tv_clock") if _wants_clock(request) else None

    async def open(self, **options: Any) -> Supervisor:
        from taskvisor import Supervisor

        if self.clock is not None:
            options.setdefault("clock", self.clock)
        sup = Supervisor(**options)
        await sup.start()
        self.opened.append(sup)
        return sup

    async def close(self) -> None:
        from taskvisor.testing import MockClock

        reports = self.request.node.stash.get(_reports, {})
        failed = any(r.failed for r in reports.values()) or "call" not in reports
        left: list[str] = []
        for sup in reversed(self.opened):
            pending = sup.report().pending
            left += pending
            if not pending or failed or self.leak_check:  # (a leak fails the test anyway)
                await sup.aclose(cancel=bool(pending))
                continue
            clock = sup.clock
            if isinstance(clock, MockClock):
                clock.autojump = True  # the wait must end even on a hand-moved clock
            await sup.aclose(wait=self.teardown_wait)
        if left and self.leak_check and not failed:
            pytest.fail(
                f"taskvisor leak check: the test ended with {len(left)} task(s) not finished: "
                f"{', '.join(sorted(left)[:20])} (await them, or cancel them in the test)",
                pytrace=False,
            )


async def _supervisor(request: pytest.FixtureRequest) -> AsyncIterator[Supervisor]:
    harness = _Harness(request)
    sup = await harness.open(**harness.marked)
    try:
        yield sup
    finally:
        await harness.close()


async def _factory(request: pytest.FixtureRequest) -> AsyncIterator[SupervisorFactory]:
    harness = _Harness(request)
    try:
        yield harness.open
    finally:
        await harness.close()


_IMPLS = {"supervisor": _supervisor, "factory": _factory}


def _variant(request: pytest.FixtureRequest, kind: str) -> str:
    """The fixture that opens ``kind`` on the loop this test runs on."""
    node = request.node
    marker = node.get_closest_marker("asyncio")
    by_asyncio = marker is not None and request.config.pluginmanager.has_plugin("asyncio")
    if "anyio_backend" in request.fixturenames:
        if by_asyncio:
            pytest.fail(
                "this test uses anyio's plugin, but pytest-asyncio (auto mode) runs it on its "
                "own loop while anyio runs async fixtures on another; with anyio set "
                "asyncio_mode = strict",
                pytrace=False,
            )
        backend = request.getfixturevalue("anyio_backend")
        name = backend if isinstance(backend, str) else backend[0]
        if name != "asyncio":
            _needs_asyncio(f"anyio's {name!r} backend")
        return f"_tv_{kind}_anyio"
    if marker is not None and by_asyncio:
        scope = marker.kwargs.get("loop_scope") or marker.kwargs.get("scope")
        scope = scope or request.config.getini("asyncio_default_test_loop_scope") or "function"
        return f"_tv_{kind}_asyncio_{scope}"
    if node.get_closest_marker("trio") is not None:
        _needs_asyncio("pytest-trio")
    pytest.fail(
        f"{request.fixturename} needs an async test on an asyncio event loop: mark it "
        "@pytest.mark.asyncio (pytest-asyncio; or asyncio_mode = auto) or @pytest.mark.anyio "
        "(anyio's plugin, asyncio backend). A synchronous test can use "
        "taskvisor.BackgroundSupervisor instead.",
        pytrace=False,
    )


def _needs_asyncio(what: str) -> None:
    pytest.fail(
        f"taskvisor needs an asyncio event loop, and this test runs on {what}: "
        "run it on asyncio (anyio: parametrize anyio_backend with 'asyncio'; "
        "pytest-asyncio: @pytest.mark.asyncio)",
        pytrace=False,
    )


def _wants_clock(request: pytest.FixtureRequest) -> bool:
    return "tv_clock" in request.fixturenames


def _leak_check(item: pytest.Item) -> bool:
    marker = item.get_closest_marker("taskvisor")
    if marker is not None and "leak_check" in marker.kwargs:
        return bool(marker.kwargs["leak_check"])
    option = item.config.getoption("taskvisor_leak_check")
    if option is not None:
        return bool(option)
    return bool(item.config.getini("taskvisor_leak_check"))


def _children() -> set[int]:
    import psutil

    out = set()
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "resource_tracker" not in " ".join(child.cmdline()):  # multiprocessing's own
                out.add(child.pid)
    return out


def _check_leaks(threads: set[threading.Thread], children: set[int]) -> None:
    import psutil

    from taskvisor import _supervisor

    problems = []
    open_sups = list(_supervisor._LIVE)
    if open_sups:
        problems.append(f"{len(open_sups)} supervisor(s) still open")
    left = [
        t for t in threading.enumerate() if t not in threads and t.name.startswith("taskvisor-")
    ]
    for t in left:
        t.join(timeout=LEAK_JOIN)  # a closer thread may still be returning
    alive = sorted(t.name for t in left if t.is_alive())
    if alive:
        problems.append(f"threads still running: {', '.join(alive)}")
    procs = []
    for pid in _children() - children:
        try:
            psutil.Process(pid).wait(timeout=LEAK_JOIN)
        except psutil.TimeoutExpired:
            procs.append(pid)
        except psutil.Error:
            pass
    if procs:
        problems.append(f"child processes still running: {procs}")
    if problems:
        pytest.fail("taskvisor leak check: " + "; ".join(problems), pytrace=False)


def _define_variants() -> None:
    """One hidden fixture per (kind, loop): pytest-asyncio runs an async fixture on the loop
    of its ``loop_scope``, anyio's plugin on its runner's loop when the test uses
    ``anyio_backend``. ``tv_supervisor`` picks the one that matches the test."""
    scope = globals()
    for kind, impl in _IMPLS.items():
        # anyio's plugin wraps only async generator functions: give it one
        async def anyio_gen(
            request: pytest.FixtureRequest, anyio_backend: Any, _impl: Any = impl
        ) -> AsyncIterator[Any]:
            async with contextlib.aclosing(_impl(request)) as gen:
                async for value in gen:
                    yield value

        name = f"_tv_{kind}_anyio"
        anyio_gen.__name__ = name
        scope[name] = pytest.fixture(name=name)(anyio_gen)
        try:
            import pytest_asyncio
        except ImportError:  # pragma: no cover - pytest-asyncio is optional
            continue
        for loop_scope in _SCOPES:

            async def asyncio_gen(
                request: pytest.FixtureRequest, _impl: Any = impl
            ) -> AsyncIterator[Any]:
                async with contextlib.aclosing(_impl(request)) as gen:
                    async for value in gen:
                        yield value

            name = f"_tv_{kind}_asyncio_{loop_scope}"
            asyncio_gen.__name__ = name
            scope[name] = pytest_asyncio.fixture(name=name, loop_scope=loop_scope)(asyncio_gen)


_define_variants()
