"""The command line, run as a user runs it: ``python -m taskvisor ...`` on task files
written to a temporary directory (stdout is a pipe there: the plain output)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.text import Text

import taskvisor as tv
from taskvisor import cli

WAIT = 120.0  # a bound on a run that ends long before (never a synchronisation)

COMMON = """\
import asyncio
import os
import taskvisor as tv

def square(x):
    return x * x

def boom():
    raise ValueError("boom")

async def forever():
    await asyncio.sleep(3600)
"""


def write(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text(COMMON + textwrap.dedent(body))
    return path


def taskvisor(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskvisor", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=cwd,
    )


def error_line(out: subprocess.CompletedProcess[str]) -> str:
    """The one-line message of a usage error (the last line on stderr)."""
    assert out.returncode == 2, out
    assert out.stdout == "", out
    return out.stderr.strip().splitlines()[-1]


def read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def states(data: dict[str, Any]) -> dict[str, str]:
    return {t["name"]: t["state"] for t in data["tasks"]}


# -- exit codes and output ----------------------------------------------------------------


def test_all_done_exits_0_with_a_plain_line_per_task(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "ok_tasks.py",
        """
        tasks = [tv.Task(square, (3,), name="a"), tv.Task(square, (4,), name="b")]
        """,
    )
    out = taskvisor("run", path)
    assert out.returncode == 0, out
    lines = out.stdout.splitlines()
    assert sorted(line.split()[:2] for line in lines[:2]) == [["DONE", "a"], ["DONE", "b"]]
    assert "\x1b[" not in out.stdout  # not a terminal: no colours, no live display
    assert lines[-1].startswith("2 task(s) in ") and lines[-1].endswith(": 2 DONE")
    assert out.stderr == ""


def test_a_failure_exits_1_and_the_json_matches_the_run(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "mixed.py",
        """
        class Odd:
            pass

        def odd():
            return Odd()

        tasks = [
            tv.Task(square, (3,), name="sq"),
            tv.Task(odd, name="odd"),
            tv.Task(boom, name="boom", provides="b"),
            tv.Task(square, (2,), name="after", requires="b"),
        ]
        """,
    )
    out = taskvisor("run", path, "--json", tmp_path / "report.json")
    assert out.returncode == 1, out
    data = read_json(tmp_path / "report.json")
    assert states(data) == {"sq": "DONE", "odd": "DONE", "boom": "FAILED", "after": "SKIPPED"}
    assert data["ok"] is False
    assert data["by_state"] == {"DONE": 2, "FAILED": 1, "SKIPPED": 1}
    assert data["pending"] == []
    by_name = {t["name"]: t for t in data["tasks"]}
    assert by_name["sq"]["ret"] == 9 and by_name["sq"]["ret_repr"] == "9"
    assert by_name["odd"]["ret"] is None and "Odd object" in by_name["odd"]["ret_repr"]
    assert by_name["boom"]["error"] == "ValueError: boom"
    assert 'raise ValueError("boom")' in by_name["boom"]["traceback"]
    assert by_name["after"]["error"].startswith("DependencyError: ")
    assert by_name["after"]["attempts"] == 0 and by_name["after"]["started_at"] is None
    assert by_name["sq"]["attempts"] == 1 and by_name["sq"]["runs_on"] == "thread"
    # the plain lines say the same; the failure's last frame goes to stderr
    lines = {line.split()[1]: line for line in out.stdout.splitlines()[:4]}
    assert lines["boom"].startswith("FAILED ") and lines["boom"].endswith("ValueError: boom")
    assert lines["after"].startswith("SKIPPED ")
    assert 'raise ValueError("boom")' in out.stderr
    assert "Traceback (most recent call last)" not in out.stderr  # short unless -v
    assert "taskvisor: warning: task 'boom' failed: 1 dependent task(s) skipped" in out.stderr
    verbose = taskvisor("run", path, "-v")
    assert verbose.returncode == 1
    assert "Traceback (most recent call last)" in verbose.stderr


def test_quiet_prints_only_the_summary_line(tmp_path: Path) -> None:
    path = write(tmp_path, "quiet_tasks.py", "tasks = [tv.Task(square, (3,), name='a')]\n")
    out = taskvisor("run", path, "--quiet")
    assert out.returncode == 0, out
    assert len(out.stdout.splitlines()) == 1 and out.stdout.endswith(": 1 DONE\n")


@pytest.mark.slow
def test_a_process_task_from_the_file_runs_in_a_worker(tmp_path: Path) -> None:
    """The file is imported as module ``proc_tasks`` (not ``__main__``): a spawned worker
    imports it by that name, and its ``__main__`` guard does not run."""
    path = write(
        tmp_path,
        "proc_tasks.py",
        """
        def where():
            return [__name__, os.getpid()]

        tasks = [tv.Task(where, name="p", runs_on="process")]

        if __name__ == "__main__":
            raise SystemExit("the __main__ guard ran")
        """,
    )
    out = taskvisor("run", path, "--processes", "1", "--json", tmp_path / "r.json")
    assert out.returncode == 0, out
    (task,) = read_json(tmp_path / "r.json")["tasks"]
    name, pid = task["ret"]
    assert name == "proc_tasks"
    assert task["runs_on"] == "process" and task["worker"] == f"pid {pid}"


def test_a_function_returning_the_tasks_and_a_module_name(tmp_path: Path) -> None:
    write(
        tmp_path,
        "made_tasks.py",
        """
        def make():
            return (tv.Task(square, (n,), name=f"sq{n}") for n in range(3))

        plain = [lambda: 7]
        """,
    )
    out = taskvisor("run", "made_tasks:make", "--json", "r.json", cwd=tmp_path)
    assert out.returncode == 0, out
    data = read_json(tmp_path / "r.json")
    assert {t["name"]: t["ret"] for t in data["tasks"]} == {"sq0": 0, "sq1": 1, "sq2": 4}
    out = taskvisor("run", tmp_path / "made_tasks.py:plain", "--json", tmp_path / "p.json")
    assert out.returncode == 0, out
    assert [t["ret"] for t in read_json(tmp_path / "p.json")["tasks"]] == [7]


def test_async_main_takes_the_supervisor(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "main_tasks.py",
        """
        async def main(sup):
            first = await sup.submit(square, 5, name="first")
            report = await sup.gather([tv.Task(square, (first.ret,), name="second")])
            assert report.ok
            sup.submit(boom, name="late")
        """,
    )
    out = taskvisor("run", path, "--json", tmp_path / "r.json")
    assert out.returncode == 1, out  # "late" failed after main returned
    data = read_json(tmp_path / "r.json")
    assert states(data) == {"first": "DONE", "second": "DONE", "late": "FAILED"}
    assert {t["name"]: t["ret"] for t in data["tasks"] if t["ok"]} == {
        "first": 25,
        "second": 625,
    }


def test_main_raising_exits_1_with_its_traceback(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "main_raises.py",
        """
        async def main(sup):
            await sup.submit(square, 2, name="fine")
            raise RuntimeError("main gave up")
        """,
    )
    out = taskvisor("run", path, "--json", tmp_path / "r.json")
    assert out.returncode == 1, out
    assert out.stderr.strip().splitlines()[-1] == (
        f"taskvisor run: {path}:main raised RuntimeError: main gave up"
    )
    assert states(read_json(tmp_path / "r.json")) == {"fine": "DONE"}


def test_fail_fast_cancels_the_rest(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "fast.py",
        """
        wait = tv.Task(forever, name="forever")
        tasks = [
            wait,
            tv.Task(square, (wait.output,), name="needs_forever"),
            tv.Task(boom, name="boom"),
        ]
        """,
    )
    out = taskvisor("run", path, "--fail-fast", "--json", tmp_path / "r.json")
    assert out.returncode == 1, out
    assert states(read_json(tmp_path / "r.json")) == {
        "forever": "CANCELLED",
        "needs_forever": "CANCELLED",
        "boom": "FAILED",
    }


@pytest.mark.parametrize("name", ["tasks", "main"])
def test_timeout_ends_a_task_that_waits_forever(tmp_path: Path, name: str) -> None:
    path = write(
        tmp_path,
        f"slow_{name}.py",
        """
        tasks = [tv.Task(forever, name="forever"), tv.Task(forever, name="own", timeout=0.05)]

        async def main(sup):
            await sup.submit(forever, name="forever")
        """,
    )
    out = taskvisor("run", f"{path}:{name}", "--timeout", "0.2", "--json", tmp_path / "r.json")
    assert out.returncode == 1, out
    by_name = {t["name"]: t for t in read_json(tmp_path / "r.json")["tasks"]}
    assert by_name["forever"]["state"] == "FAILED"
    assert by_name["forever"]["error"].startswith(
        "TaskTimeout: task 'forever' timed out after 0.2 s"
    )
    if name == "tasks":  # a task's own timeout is kept
        assert by_name["own"]["error"].startswith("TaskTimeout: task 'own' timed out after 0.05 s")


def test_timeline_is_written(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "line_tasks.py",
        "tasks = [tv.Task(square, (3,), name='a'), tv.Task(square, ('x',), name='b<i>')]\n",
    )
    out = taskvisor("run", path, "--timeline", tmp_path / "t.html")
    assert out.returncode == 1, out  # b fails: 'x' * 'x'
    html = (tmp_path / "t.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html")
    assert "b&lt;i&gt;" in html and "b<i>" not in html


# -- bad usage: exit 2 and one line saying what is wrong ----------------------------------


def test_bad_usage_exits_2_naming_what_is_wrong(tmp_path: Path) -> None:
    write(
        tmp_path,
        "odd_tasks.py",
        """
        number = 3
        mixed = [square, 42]

        def needs_args(x):
            return [square]

        def bad_spec():
            return [tv.Task(square, tier="nope")]

        a = tv.Task(square, (1,), name="a", requires="y", provides="x")
        b = tv.Task(square, (1,), name="b", requires="x", provides="y")
        cycle = [a, b]
        twice = [tv.Task(square, (1,), name="same"), tv.Task(square, (2,), name="same")]
        nowhere = [tv.Task(square, (1,), runs_on="nowhere")]
        """,
    )
    f = tmp_path / "odd_tasks.py"
    cases: dict[str, tuple[str | Path, ...]] = {
        "no such file: ": ("run", tmp_path / "missing.py"),
        "no such file or module: nomodule_xyz": ("run", "nomodule_xyz:tasks"),
        "has neither `tasks` nor `main`; name what to run": ("run", f),
        "has no attribute 'nope'": ("run", f"{f}:nope"),
        "odd_tasks.py:number is int 3: expected a list of tasks": ("run", f"{f}:number"),
        "odd_tasks.py:mixed[1] is int 42: expected a taskvisor.Task or a callable": (
            "run",
            f"{f}:mixed",
        ),
        "odd_tasks.py:needs_args takes arguments": ("run", f"{f}:needs_args"),
        "odd_tasks.py:bad_spec(): task 'square-": ("run", f"{f}:bad_spec"),
        "cycle": ("run", f"{f}:cycle"),
        "'same'": ("run", f"{f}:twice"),
        "'nowhere'": ("run", f"{f}:nowhere"),
        "--json": ("run", f"{f}:cycle", "--json", tmp_path / "no" / "dir" / "r.json"),
    }
    for expected, args in cases.items():
        line = error_line(taskvisor(*args))
        assert line.startswith("taskvisor run: error: "), (expected, line)
        assert expected in line, (expected, line)


def test_a_file_that_fails_to_import_or_shadows_a_module(tmp_path: Path) -> None:
    broken = tmp_path / "broken_tasks.py"
    broken.write_text("raise ImportError('no numpy here')\n")
    out = taskvisor("run", broken)
    assert "Traceback" in out.stderr
    assert error_line(out).endswith("failed: ImportError: no numpy here")
    clash = tmp_path / "json.py"  # (the CLI imports json itself)
    clash.write_text("tasks = []\n")
    assert "rename the file" in error_line(taskvisor("run", clash))


@pytest.mark.parametrize(
    "args",
    [("--threads", "0"), ("--timeout", "-1"), ("--timeout", "soon"), ("--bogus",)],
)
def test_bad_options_exit_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    path = write(tmp_path, "opt_tasks.py", "tasks = []\n")
    out = taskvisor("run", path, *args)
    assert out.returncode == 2, out
    line = out.stderr.splitlines()[-1]  # (argparse's own message: it names the option)
    assert line.startswith("taskvisor") and "error: " in line and args[0] in line, line


def test_an_empty_list_is_a_success(tmp_path: Path) -> None:
    path = write(tmp_path, "empty_tasks.py", "tasks = []\n")
    out = taskvisor("run", path)
    assert out.returncode == 0, out
    assert out.stdout.strip().endswith(": none")


# -- graph -------------------------------------------------------------------------------


GRAPH_TASKS = """
tasks = [
    tv.Task(square, (1,), name="load", provides={"raw"}, tier=tv.HIGH),
    tv.Task(square, (2,), name="clean", requires={"raw"}, claims={"db"}),
    tv.Task(square, (3,), name="report & <sum>", requires={"raw"}, uses={"db"}),
]

async def main(sup):
    pass
"""


def test_graph_in_every_format(tmp_path: Path) -> None:
    """``taskvisor graph`` as a user runs it: the real drawing, each format."""
    path = write(tmp_path, "graph_tasks.py", GRAPH_TASKS)
    svg = tmp_path / "g.svg"
    out = taskvisor("graph", path, "-o", svg)
    assert out.returncode == 0, out
    text = svg.read_text()
    assert text.lstrip().startswith(("<svg", "<?xml")) and text.rstrip().endswith("</svg>")
    assert "report &amp; &lt;sum&gt;" in text and "clean" in text
    mmd = tmp_path / "g.mmd"
    assert taskvisor("graph", path, "-o", mmd).returncode == 0
    mermaid = mmd.read_text()
    assert mermaid.startswith("flowchart") and "load" in mermaid and "db" in mermaid
    dot = taskvisor("graph", path, "--format", "dot")  # to stdout
    assert dot.returncode == 0, dot
    assert dot.stdout.startswith("digraph") and '"clean' in dot.stdout.replace("label=", "")
    assert taskvisor("graph", path).stdout == mermaid  # mermaid on stdout by default


def test_graph_bad_usage(tmp_path: Path) -> None:
    path = write(tmp_path, "graph_tasks.py", GRAPH_TASKS)
    out = taskvisor("graph", f"{path}:main")
    assert out.returncode == 2 and "needs a list of tasks" in error_line(out)
    out = taskvisor("graph", path, "-o", tmp_path / "g.png")
    assert out.returncode == 2 and "--format mermaid|dot|svg" in error_line(out)
    cyclic = write(
        tmp_path,
        "cycle_tasks.py",
        """
        tasks = [tv.Task(square, (1,), name="a", requires={"y"}, provides={"x"}),
                 tv.Task(square, (2,), name="b", requires={"x"}, provides={"y"})]
        """,
    )
    out = taskvisor("graph", cyclic)
    assert out.returncode == 2 and "cycle" in error_line(out).lower()


# -- the live progress display ------------------------------------------------------------


async def test_live_progress_shows_the_counts_by_state_tier_and_executor() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)

    def ok() -> int:
        return 1

    def fail() -> None:
        raise ValueError("no")

    async def coro() -> int:
        return 2

    view = cli.LiveProgress(console)
    with view:
        async with tv.Supervisor(instruments=[view.instrument]) as sup:
            report = await sup.gather(
                [
                    tv.Task(ok, name="a", tier=tv.HIGH),
                    tv.Task(ok, name="b"),
                    tv.Task(coro, name="c"),
                    tv.Task(fail, name="f", provides="x"),
                    tv.Task(ok, name="s", requires="x"),
                ]
            )
    assert not report.ok
    tally = view.instrument
    assert tally.totals() == {
        "pending": 0,
        "running": 0,
        "done": 3,
        "failed": 1,
        "skipped": 1,
        "cancelled": 0,
    }
    assert tally.snapshot()[(tv.NORMAL, "thread")]["done"] == 1
    # the last frame stays on the terminal: the same counts, as text
    frame = Text.from_ansi(buf.getvalue()).plain.split("pending 0")[-1].splitlines()
    totals = "running 0  done 3  failed 1  skipped 1  cancelled 0"
    assert frame[0].split() == totals.split()
    rows = [line.split() for line in frame[1:] if line.strip()]
    assert rows[0][:2] == ["HIGH", "thread"] and rows[0][-3:] == ["1/1", "done", "1"]
    assert [rows[1][i] for i in (0, 1, 3, 4, 5)] == ["NORMAL", "aloop:default", "1/1", "done", "1"]
    assert rows[2][:2] == ["NORMAL", "thread"]
    assert rows[2][3:] == ["3/3", "done", "1", "failed", "1", "skipped", "1"]


# -- the helpers the CLI is built on ------------------------------------------------------


def test_task_replace_changes_only_what_it_is_told() -> None:
    def fn(x: int, y: int = 0) -> int:
        return x + y

    spec = tv.Task(fn, (1,), {"y": 2}, name="t", requires="r", tier=tv.HIGH, resources={"gpu": 1})
    copy = spec.replace(timeout=5)
    assert copy is not spec and copy.timeout == 5.0 and spec.timeout is None
    assert (copy.name, copy.fn, copy.args, copy.kwargs) == ("t", fn, (1,), {"y": 2})
    assert (copy.requires, copy.tier, copy.resources) == (spec.requires, tv.HIGH, {"gpu": 1.0})
    assert spec.replace(name="u").name == "u"
    with pytest.raises(tv.SpecError, match="timeout"):
        spec.replace(timeout=-1)
    with pytest.raises(tv.SpecError, match="did you mean 'timeout'"):
        spec.replace(timeot=1)


def test_report_to_dict_is_json_data() -> None:
    def fail() -> None:
        raise KeyError("k")

    report = tv.run(
        [tv.Task(os.getpid, name="pid"), tv.Task(object, name="obj"), tv.Task(fail, name="f")]
    )
    data = json.loads(json.dumps(report.to_dict()))
    assert data["by_state"] == {"DONE": 2, "FAILED": 1}
    assert data["elapsed"] == report.elapsed and data["started"] == report.started.isoformat()
    by_name = {t["name"]: t for t in data["tasks"]}
    assert by_name["pid"]["ret"] == os.getpid()
    assert by_name["obj"]["ret"] is None and by_name["obj"]["ret_repr"].startswith("<object")
    assert by_name["f"]["error"] == "KeyError: 'k'" and by_name["f"]["ret_repr"] is None
    assert by_name["f"]["finished_at"] == report["f"].finished_at.isoformat()
