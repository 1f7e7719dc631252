"""The pytest plugin, run for real: pytester starts pytest in a subprocess on small test files.

Each run is bounded by ``RUN_LIMIT`` (pytester kills a run that exceeds it): a teardown
that hangs fails here instead of hanging the suite. No assertion is on time.
"""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ("pytester",)

#: seconds a pytester run may take before it counts as hung (they take 1-3 s)
RUN_LIMIT = 120

INI = """
[pytest]
asyncio_mode = {mode}
asyncio_default_fixture_loop_scope = function
filterwarnings = error
"""

# the same tests under both pytest-asyncio modes: strict needs the marks, auto ignores them
CORE = """
import asyncio
import pytest
import taskvisor as tv


@pytest.mark.asyncio
async def test_passes(tv_supervisor):
    assert tv_supervisor._loop is asyncio.get_running_loop()
    res = await tv_supervisor.submit(sum, [1, 2, 3])
    assert res.ok and res.ret == 6


@pytest.mark.asyncio
@pytest.mark.taskvisor(threads=3, aloops=("io", "cpu"))
async def test_marker_options(tv_supervisor):
    assert tv_supervisor.threads == 3
    assert tv_supervisor.statistics().aloops == ("io", "cpu")


@pytest.mark.asyncio
async def test_mock_clock(tv_supervisor, tv_clock):
    assert tv_supervisor.clock is tv_clock
    calls = []

    def flaky():
        calls.append(tv_clock.now())
        if len(calls) < 3:
            raise ConnectionError("down")
        return "up"

    res = await tv_supervisor.submit(flaky, retries=3, delay=60, runs_on="main")
    assert res.ret == "up" and res.attempts == 3
    assert calls == [60.0, 60.0, 60.0]  # an hour of mock time would take no longer


@pytest.mark.asyncio
async def test_factory(tv_supervisor_factory, tv_clock):
    a = await tv_supervisor_factory(threads=1)
    b = await tv_supervisor_factory(aloops=())
    assert a is not b and a.clock is tv_clock and b.clock is tv_clock
    assert (await a.submit(len, "abc")).ret == 3
    assert (await b.submit(len, "ab")).ret == 2
    pytest.supervisors = (a, b)


def test_factory_closed():
    assert [s.state.value for s in pytest.supervisors] == ["closed", "closed"]


@pytest.mark.asyncio
async def test_fails_with_an_hour_of_work_pending(tv_supervisor):
    tv_supervisor.submit(asyncio.sleep, 3600, name="hour-main", runs_on="main")
    tv_supervisor.submit(asyncio.sleep, 3600, name="hour-aloop")
    tv_supervisor.submit(tv.Task(asyncio.sleep, (3600,), name="hour-waiting", requires={"x"}))
    pytest.sup = tv_supervisor
    assert False, "the test fails with work pending"


def test_pending_work_was_cancelled():
    report = pytest.sup.report()
    assert pytest.sup.state.value == "closed"
    assert {r.name: r.state.name for r in report} == {
        "hour-main": "CANCELLED", "hour-aloop": "CANCELLED", "hour-waiting": "CANCELLED",
    }


@pytest.mark.asyncio
async def test_passing_test_leftover_gets_teardown_wait(tv_supervisor, tv_clock):
    tv_supervisor.submit(asyncio.sleep, 3600, name="left", runs_on="main")
    pytest.sup = tv_supervisor


def test_leftover_cancelled_after_the_wait():
    (res,) = pytest.sup.report()
    assert res.state.name == "CANCELLED" and "10 s" in str(res.excinfo.val)
"""

CORE_OUTCOMES = {"passed": 8, "failed": 1}


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_pytest_asyncio_modes(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makeini(INI.format(mode=mode))
    pytester.makepyfile(test_core=CORE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=RUN_LIMIT)
    result.assert_outcomes(**CORE_OUTCOMES)
    result.stdout.fnmatch_lines(["*test_fails_with_an_hour_of_work_pending*"])


def test_auto_mode_needs_no_marks(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI.format(mode="auto"))
    pytester.makepyfile(
        test_plain="""
        import asyncio

        async def test_plain(tv_supervisor):
            assert tv_supervisor._loop is asyncio.get_running_loop()
            assert (await tv_supervisor.submit(max, 1, 2)).ret == 2
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=RUN_LIMIT)
    result.assert_outcomes(passed=1)


def test_loop_scopes_and_uvloop(pytester: pytest.Pytester) -> None:
    """The fixture runs on the test's loop whatever its scope, and on the factories the
    project gives pytest-asyncio (uvloop here)."""
    pytester.makeini(INI.format(mode="strict"))
    pytester.makeconftest(
        """
        import asyncio
        import uvloop

        def pytest_asyncio_loop_factories(config, item):
            return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
        """
    )
    pytester.makepyfile(
        test_scopes="""
        import asyncio
        import pytest
        import uvloop

        LOOPS = []

        @pytest.mark.asyncio(loop_scope="module")
        async def test_module_loop_a(tv_supervisor):
            assert tv_supervisor._loop is asyncio.get_running_loop()
            LOOPS.append(asyncio.get_running_loop())
            assert (await tv_supervisor.submit(abs, -2)).ret == 2

        @pytest.mark.asyncio(loop_scope="module")
        async def test_module_loop_b(tv_supervisor):
            assert tv_supervisor._loop is asyncio.get_running_loop()
            LOOPS.append(asyncio.get_running_loop())

        @pytest.mark.asyncio
        async def test_kinds_of_loop(tv_supervisor, request):
            loop = asyncio.get_running_loop()
            assert tv_supervisor._loop is loop
            want = uvloop.Loop if "uvloop" in request.node.name else asyncio.BaseEventLoop
            assert isinstance(loop, want)

        def test_shared_module_loops():
            # two loop factories: each parametrisation has its own module loop
            assert len(LOOPS) == 4 and LOOPS[0] is LOOPS[1] and LOOPS[2] is LOOPS[3]
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", timeout=RUN_LIMIT)
    result.assert_outcomes(passed=7)
    result.stdout.fnmatch_lines(["*test_kinds_of_loop?uvloop?*PASSED*"])


ANYIO_TESTS = """
import asyncio
import pytest

pytestmark = pytest.mark.anyio


@pytest.fixture(params=[
    pytest.param("asyncio", id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
])
def anyio_backend(request):
    return request.param


async def test_passes(tv_supervisor, anyio_backend):
    loop = asyncio.get_running_loop()
    assert tv_supervisor._loop is loop
    assert ("uvloop" in type(loop).__module__) == (anyio_backend != "asyncio")
    assert (await tv_supervisor.submit(sum, [4, 5])).ret == 9


async def test_mock_clock(tv_supervisor, tv_clock):
    res = await tv_supervisor.submit(asyncio.sleep, 0, timeout=5, delay=30, runs_on="main")
    assert res.ok and tv_clock.now() == 30


async def test_factory(tv_supervisor_factory):
    sup = await tv_supervisor_factory(threads=1)
    assert (await sup.submit(min, 3, 4)).ret == 3


async def test_fails_with_an_hour_of_work_pending(tv_supervisor):
    tv_supervisor.submit(asyncio.sleep, 3600, runs_on="main")
    tv_supervisor.submit(asyncio.sleep, 3600)
    assert False
"""


@pytest.mark.parametrize("asyncio_plugin", ["with-pytest-asyncio", "without"])
def test_anyio_plugin(pytester: pytest.Pytester, asyncio_plugin: str) -> None:
    pytester.makeini(INI.format(mode="strict"))
    pytester.makepyfile(test_anyio=ANYIO_TESTS)
    args = ["-p", "no:cacheprovider"]
    if asyncio_plugin == "without":
        args += ["-p", "no:asyncio", "-W", "ignore::pytest.PytestConfigWarning"]
    result = pytester.runpytest_subprocess(*args, timeout=RUN_LIMIT)
    result.assert_outcomes(passed=6, failed=2)


def test_trio_is_refused_with_the_reason(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI.format(mode="strict"))
    pytester.makepyfile(
        test_trio="""
        import pytest

        @pytest.fixture
        def anyio_backend():
            return "trio"

        @pytest.mark.anyio
        async def test_on_trio(tv_supervisor):
            raise AssertionError("never runs")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=RUN_LIMIT)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*taskvisor needs an asyncio event loop, and this test runs on anyio's 'trio' backend*"]
    )
    result.stdout.no_fnmatch_line("*no running event loop*")


def test_misuse_is_explained(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI.format(mode="strict"))
    pytester.makepyfile(
        test_misuse="""
        import pytest

        def test_sync(tv_supervisor):
            pass

        @pytest.mark.asyncio
        @pytest.mark.taskvisor(thread=2)
        async def test_misspelt(tv_supervisor):
            pass

        @pytest.mark.asyncio
        @pytest.mark.taskvisor(teardown_wait=-1)
        async def test_bad_wait(tv_supervisor):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=RUN_LIMIT)
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(
        [
            "*tv_supervisor needs an async test on an asyncio event loop*",
            "*unknown Supervisor option 'thread' (did you mean 'threads'?)*",
            "*teardown_wait=...) must be a number of seconds >= 0, got -1*",
        ],
        consecutive=False,
    )


def test_leak_check(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI.format(mode="auto") + "taskvisor_leak_check = true\n")
    pytester.makepyfile(
        test_leaks="""
        import asyncio
        import pytest
        import taskvisor as tv

        async def test_clean(tv_supervisor):
            await tv_supervisor.submit(abs, 1)

        async def test_task_left_pending(tv_supervisor):
            tv_supervisor.submit(asyncio.sleep, 3600, name="forgotten", runs_on="main")

        async def test_supervisor_left_open():
            sup = tv.Supervisor(aloops=())
            await sup.start()
            pytest.sup = sup

        async def test_close_it():
            await pytest.sup.aclose()

        @pytest.mark.taskvisor(leak_check=False)
        async def test_opted_out(tv_supervisor, tv_clock):  # (the teardown wait: mock time)
            tv_supervisor.submit(asyncio.sleep, 3600, runs_on="main")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=RUN_LIMIT)
    result.assert_outcomes(passed=5, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*test ended with 1 task(s) not finished: forgotten*",
            "*taskvisor leak check: 1 supervisor(s) still open*",
        ],
        consecutive=False,
    )


def test_leak_check_from_the_command_line(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI.format(mode="auto"))
    pytester.makepyfile(
        test_leaks=textwrap.dedent(
            """
            import asyncio

            async def test_task_left_pending(tv_supervisor, tv_clock):
                tv_supervisor.submit(asyncio.sleep, 3600, name="forgotten", runs_on="main")
            """
        )
    )
    plain = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=RUN_LIMIT)
    plain.assert_outcomes(passed=1)
    checked = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--taskvisor-leak-check", timeout=RUN_LIMIT
    )
    checked.assert_outcomes(passed=1, errors=1)


def test_anyio_under_auto_mode_is_explained(pytester: pytest.Pytester) -> None:
    """pytest-asyncio's auto mode runs anyio-marked tests on its own loop, while anyio runs
    async fixtures on another: the plugin says so instead of opening on the wrong loop."""
    pytester.makeini(INI.format(mode="auto"))
    pytester.makepyfile(
        test_both="""
        import pytest

        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        @pytest.mark.anyio
        async def test_mixed(tv_supervisor):
            raise AssertionError("never runs")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=RUN_LIMIT)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*with anyio set asyncio_mode = strict*"])
