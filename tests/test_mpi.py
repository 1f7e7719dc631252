"""MPI ranks as executors, under a real ``mpiexec -n 3`` (MPICH from the ``mpich`` wheel):
rank 0 runs the supervisor, ranks 1 and 2 run the tasks — through a bare
``mpi4py.futures.MPIPoolExecutor`` (the generic ``concurrent.futures`` path) and through
:class:`taskvisor.mpi.MPIExecutor`, whose ranks run each task in a child process so that a
task that kills its process fails alone. Each ``mpiexec`` start costs about a second: one
job per test, checking several things. The rank side (:func:`run_isolated`) is also
tested here in-process, without MPI."""

from __future__ import annotations

import concurrent.futures
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import taskvisor as tv
from taskvisor import mpi
from taskvisor._worker import decode
from taskvisor.mpi import MPIExecutor, run_isolated, stop_child

pytestmark = pytest.mark.slow

MPIEXEC = Path(sys.executable).parent / "mpiexec"
WAIT = 120.0  # a bound on a wait that must end long before (never a synchronisation)

SCRIPT = """
import json

from mpi4py import MPI
from mpi4py.futures import MPIPoolExecutor

import taskvisor as tv


def where(x):
    return x, MPI.COMM_WORLD.Get_rank()


def boom():
    raise ValueError("broken on a rank")


if __name__ == "__main__":
    with MPIPoolExecutor() as ex:
        a = tv.Task(where, (1,), name="a", runs_on="mpi")
        b = tv.Task(where, (a.output,), name="b", runs_on="mpi", retries=1)
        c = tv.Task(boom, name="c", runs_on="mpi")
        report = tv.run([a, b, c], aloops=(), executors={"mpi": ex})
    print(json.dumps({"rank": MPI.COMM_WORLD.Get_rank(), "size": MPI.COMM_WORLD.Get_size()}))
    for res in report:
        print(json.dumps([res.name, res.state.name, res.ret, type(res.error).__name__]))
"""


needs_mpiexec = pytest.mark.skipif(
    not MPIEXEC.exists(), reason="the mpich wheel provides mpiexec on Linux"
)


def mpiexec(tmp_path: Path, script: str) -> list[Any]:
    """Run ``script`` under ``mpiexec -n 3 python -m mpi4py.futures``; each line it
    printed, as JSON. The job must end with exit code 0."""
    path = tmp_path / "mpi_job.py"
    path.write_text(script)
    out = subprocess.run(
        [str(MPIEXEC), "-n", "3", sys.executable, "-m", "mpi4py.futures", str(path)],
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


@needs_mpiexec
def test_tasks_run_on_mpi_ranks_under_mpiexec(tmp_path: Path) -> None:
    first, *rest = mpiexec(tmp_path, SCRIPT)
    assert first == {"rank": 0, "size": 3}  # the supervisor; the tasks ran on ranks 1, 2
    rows = {row[0]: row[1:] for row in rest}
    state, (one, a_rank), _ = rows["a"]
    assert (state, one) == ("DONE", 1) and a_rank in (1, 2)
    state, (a_value, b_rank), _ = rows["b"]
    assert state == "DONE" and a_value == [1, a_rank] and b_rank in (1, 2)  # a's value on
    assert rows["c"] == ["FAILED", None, "ValueError"]


ISOLATED = """
import json
import os
import sys
from pathlib import Path

from mpi4py import MPI
from mpi4py.futures import MPIPoolExecutor

import taskvisor as tv
from taskvisor.mpi import MPIExecutor


def where(x):
    # in an isolated child MPI is a singleton (the main script imported mpi4py there too)
    world = MPI.COMM_WORLD
    return x, world.Get_rank(), world.Get_size(), os.environ.get("PMI_RANK"), os.getpid()


def die():
    os._exit(3)


def crash_once(marker):
    if not Path(marker).exists():
        Path(marker).write_text("crashed")
        os._exit(4)
    return "again"


def boom():
    raise ValueError("broken in a child")


if __name__ == "__main__":
    rank_pids = {}
    with MPIPoolExecutor() as pool:
        executors = {"mpi": MPIExecutor(pool), "rank": MPIExecutor(pool, isolate=False)}
        tasks = [tv.Task(where, (n,), name=f"w{n}", runs_on="mpi") for n in range(4)]
        tasks += [tv.Task(where, (n,), name=f"r{n}", runs_on="rank") for n in range(2)]
        tasks += [
            tv.Task(die, name="die", runs_on="mpi"),
            tv.Task(crash_once, (sys.argv[1] + "/marker",), name="once", runs_on="mpi",
                    retries=1),
            tv.Task(boom, name="boom", runs_on="mpi"),
        ]
        report = tv.run(tasks, aloops=(), executors=executors)
    for res in report:
        err = res.error
        print(json.dumps({
            "name": res.name, "state": res.state.name, "ret": res.ret, "worker": res.worker,
            "attempts": res.attempts, "error": type(err).__name__, "message": str(err),
            "exitcode": getattr(err, "exitcode", None), "where": getattr(err, "where", None),
            "text": res.excinfo.text if res.excinfo else None,
        }))
"""


@needs_mpiexec
def test_a_task_that_kills_its_process_fails_alone_on_an_isolating_rank(
    tmp_path: Path,
) -> None:
    rows = {
        row["name"]: row
        for row in mpiexec(tmp_path, ISOLATED.replace("sys.argv[1]", repr(str(tmp_path))))
    }
    assert set(rows) == {"w0", "w1", "w2", "w3", "r0", "r1", "die", "once", "boom"}
    for n in range(4):  # in a child of a rank: not in the job (a singleton, no PMI_RANK)
        row = rows[f"w{n}"]
        assert row["state"] == "DONE", row
        x, rank, size, pmi_rank, pid = row["ret"]
        assert (x, rank, size, pmi_rank) == (n, 0, 1, None)
        assert row["worker"].startswith(("MPI rank 1, pid", "MPI rank 2, pid")), row
        assert row["worker"].endswith(f"pid {pid}")
    for n in range(2):  # isolate=False: on the rank itself, in the job
        row = rows[f"r{n}"]
        x, rank, size, pmi_rank, _ = row["ret"]
        assert (row["state"], x, size) == ("DONE", n, 3) and rank in (1, 2), row
        assert pmi_rank == str(rank)
    die = rows["die"]  # the crash failed its task only: the run and the job went on
    assert (die["state"], die["error"], die["exitcode"]) == ("FAILED", "WorkerCrashed", 3)
    assert die["where"] in ("MPI rank 1", "MPI rank 2"), die
    assert "exited with code 3 while running 'die'" in die["message"]
    once = rows["once"]  # retried after its crash, on a new child
    assert (once["state"], once["ret"], once["attempts"]) == ("DONE", "again", 2), once
    assert (tmp_path / "marker").read_text() == "crashed"
    boom = rows["boom"]  # an error keeps the child's traceback
    assert (boom["state"], boom["error"], boom["message"]) == (
        "FAILED",
        "ValueError",
        "broken in a child",
    )
    assert 'raise ValueError("broken in a child")' in boom["text"], boom


# ---------------------------------------------------- the rank's side, without MPI


@pytest.fixture
def child() -> Iterator[None]:
    """run_isolated's child, stopped after the test (the leak check would see it)."""
    yield
    stop_child()


def answer(fn: Any, *args: Any) -> Any:
    return decode(run_isolated("t", pickle.dumps((fn, args, {}, None))))


def test_run_isolated_answers_and_replaces_a_child_that_died(child: None) -> None:
    ok, pid, _, _, worker = answer(os.getpid)
    assert ok and pid != os.getpid() and worker == f"process {os.getpid()}, pid {pid}"
    ok, _, _, info, _ = answer(os._exit, 7)  # the child dies with the task
    assert not ok and info is not None
    err = info.val
    assert isinstance(err, tv.WorkerCrashed)
    assert (err.task, err.exitcode, err.pid, err.where) == ("t", 7, pid, f"process {os.getpid()}")
    ok, again, _, _, _ = answer(os.getpid)  # a new child
    assert ok and again not in (pid, os.getpid())
    os.kill(again, 9)  # killed while idle: replaced, and the task runs on the new child
    assert mpi._child is not None
    mpi._child.proc.join()  # (dead for sure: else the task may reach it as it dies)
    ok, third, _, _, _ = answer(os.getpid)
    assert ok and third not in (pid, again)


def test_mpi_executor_on_any_pool_crash_retry_and_error(child: None, tmp_path: Path) -> None:
    """MPIExecutor's logic with a thread as the 'rank' (run_isolated works anywhere)."""
    marker = tmp_path / "marker"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        tasks: list[tv.Task[Any]] = [
            tv.Task(os._exit, (5,), name="die", runs_on="mpi"),
            tv.Task(_crash_once, (str(marker),), name="once", runs_on="mpi", retries=1),
            tv.Task(int, ("x",), name="bad", runs_on="mpi"),
            tv.Task(pow, (2, 10), name="ok", runs_on="mpi"),
        ]
        report = tv.run(tasks, aloops=(), executors={"mpi": MPIExecutor(pool)})
    assert isinstance(report["die"].error, tv.WorkerCrashed)
    assert report["die"].error.exitcode == 5
    assert (report["once"].ret, report["once"].attempts) == ("again", 2)
    assert isinstance(report["bad"].error, ValueError)
    assert report["ok"].ret == 1024


def _crash_once(marker: str) -> str:
    if not Path(marker).exists():
        Path(marker).write_text("crashed")
        os._exit(4)
    return "again"


def test_importing_taskvisor_mpi_does_not_import_mpi4py() -> None:
    code = "import sys, taskvisor, taskvisor.mpi; print('mpi4py' in sys.modules)"
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    assert out.stdout == "False\n", out


def test_mpi_executor_refuses_what_is_not_a_pool() -> None:
    with pytest.raises(TypeError, match=r"concurrent\.futures executor"):
        MPIExecutor(object())  # type: ignore[arg-type]
