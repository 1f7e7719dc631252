"""``mpi4py.futures.MPIPoolExecutor`` as an executor, under a real ``mpiexec -n 3`` (MPICH
from the ``mpich`` wheel): rank 0 runs the supervisor, ranks 1 and 2 run the tasks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.skipif(not MPIEXEC.exists(), reason="the mpich wheel provides mpiexec on Linux")
def test_tasks_run_on_mpi_ranks_under_mpiexec(tmp_path: Path) -> None:
    script = tmp_path / "mpi_job.py"
    script.write_text(SCRIPT)
    out = subprocess.run(
        [str(MPIEXEC), "-n", "3", sys.executable, "-m", "mpi4py.futures", str(script)],
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    first, *rest = (json.loads(line) for line in out.stdout.splitlines())
    assert first == {"rank": 0, "size": 3}  # the supervisor; the tasks ran on ranks 1, 2
    rows = {row[0]: row[1:] for row in rest}
    state, (one, a_rank), _ = rows["a"]
    assert (state, one) == ("DONE", 1) and a_rank in (1, 2)
    state, (a_value, b_rank), _ = rows["b"]
    assert state == "DONE" and a_value == [1, a_rank] and b_rank in (1, 2)  # a's value on
    assert rows["c"] == ["FAILED", None, "ValueError"]
