"""``taskvisor.dask.DaskExecutor`` on a real ``distributed.LocalCluster``: worker threads
for speed, and worker processes where a task kills its worker."""

from __future__ import annotations

import asyncio
import gc
import os
import pickle
import re
import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import dask
import pytest
from distributed import Client, LocalCluster, get_worker

import taskvisor as tv
from taskvisor import State
from taskvisor import dask as tvdask
from taskvisor.dask import DaskExecutor, Remote, dask_priority
from taskvisor.testing import MockClock

from . import workloads
from .workloads import die_once, hang

WAIT = 30.0  # a bound on a wait that must end long before (never a synchronisation)

CALLS: list[str] = []  # (worker threads share this process: side effects land here)
GATE = threading.Event()
STARTED: defaultdict[str, threading.Event] = defaultdict(threading.Event)  # by tag
WARM = threading.Barrier(4)  # one party per worker thread of the module's cluster


def meet() -> None:
    WARM.wait(WAIT)


def cluster_kwargs(**kw: Any) -> dict[str, Any]:
    return {"dashboard_address": ":0", "protocol": "tcp", **kw}


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[LocalCluster]:
    """Two workers of two threads, each with GPU=2. Dask's own helper threads (offload,
    callbacks: process-wide, never stopped) start here, before any test counts threads."""
    with (
        LocalCluster(
            processes=False,
            n_workers=2,
            threads_per_worker=2,
            resources={"GPU": 2},
            **cluster_kwargs(),
        ) as c,
        Client(c) as warm,
    ):
        # every worker thread at once (a pool starts its threads as work comes)
        futs = [warm.submit(meet, pure=False) for _ in range(4)]
        futs[0].add_done_callback(lambda _f: None)  # (Dask's callback thread)
        warm.gather(futs)
        yield c


@pytest.fixture
async def client(cluster: LocalCluster) -> Any:
    async with Client(cluster.scheduler_address, asynchronous=True) as c:
        yield c


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    CALLS.clear()
    GATE.clear()
    STARTED.clear()  # (a dict of events)
    yield
    GATE.set()  # (a blocked function left on a worker thread returns)


def record(tag: str) -> str:
    CALLS.append(tag)
    return tag


def add(a: int, b: int) -> int:
    return a + b


def boom(msg: str) -> None:
    raise ValueError(msg)


def blocked(tag: str) -> str:
    CALLS.append(tag)
    STARTED[tag].set()
    GATE.wait(WAIT)
    return tag


def flaky(tag: str, fails: int) -> str:
    CALLS.append(tag)
    if CALLS.count(tag) <= fails:
        raise OSError(f"{tag}: attempt {CALLS.count(tag)} fails")
    return tag


def hold_until_queued(names: list[str]) -> str:
    """Keep the worker's only thread until the worker holds a task of each name."""
    worker = get_worker()
    while not all(any(str(k).startswith(f"{n}-") for k in worker.state.tasks) for n in names):
        GATE.wait(0.01)  # (a condition on the worker's own state, polled)
    return "held"


def my_key() -> str:
    key = get_worker().get_current_task()
    assert isinstance(key, str)
    return key


def sup_for(client: Any, **kw: Any) -> tv.Supervisor:
    return tv.Supervisor(aloops=(), executors={"dask": DaskExecutor(client, **kw)})


async def test_tasks_run_on_dask_and_outputs_flow_to_other_executors(client: Any) -> None:
    async with sup_for(client) as sup:
        a = tv.Task(add, (1, 2), name="a", runs_on="dask")
        b = tv.Task(add, (a.output, 10), name="b", runs_on="dask", tier="high")
        c = tv.Task(add, (b.output, 100), name="c", runs_on="thread")
        report = await sup.gather([a, b, c])
    assert report.ok, report
    assert [report[n].ret for n in "abc"] == [3, 13, 113]
    assert report["a"].runs_on == "dask" and report["a"].worker is not None


async def test_identical_calls_are_two_tasks_and_both_run(client: Any) -> None:
    async with sup_for(client) as sup:
        report = await sup.gather(
            [tv.Task(record, ("same",), name=n, runs_on="dask") for n in ("one", "two")]
        )
    assert report.ok and CALLS == ["same", "same"]


async def test_retries_run_again_for_real(client: Any) -> None:
    async with sup_for(client) as sup:
        res = await sup.submit(flaky, "f", 2, name="f", runs_on="dask", retries=2)
    assert (res.state, res.ret, res.attempts) == (State.DONE, "f", 3)
    assert CALLS == ["f", "f", "f"]  # three real calls, never a cached answer


async def test_an_error_comes_back_with_its_traceback(client: Any) -> None:
    async with sup_for(client) as sup:
        res = await sup.submit(boom, "broken", name="b", runs_on="dask")
    assert res.state is State.FAILED and isinstance(res.error, ValueError)
    assert str(res.error) == "broken"
    assert res.excinfo is not None and "in boom" in res.excinfo.text


async def test_a_payload_that_cannot_be_pickled_fails_its_task_with_the_reason(
    client: Any,
) -> None:
    async with sup_for(client) as sup:
        res = await sup.submit(record, threading.Lock(), name="p", runs_on="dask")
        assert (await sup.submit(record, "next", runs_on="dask")).ok  # the executor goes on
    assert res.state is State.FAILED and "pickle" in str(res.error)


async def test_keys_are_named_after_the_task_and_its_attempt(client: Any) -> None:
    ex = DaskExecutor(client)
    async with tv.Supervisor(aloops=(), executors={"dask": ex}) as sup:
        res = await sup.submit(my_key, name="load", runs_on="dask")
    assert isinstance(res.ret, str) and re.fullmatch(rf"load-1-{ex.token}-\d+", res.ret)


async def test_a_resource_no_worker_has_is_a_resource_error_at_once(client: Any) -> None:
    """Dask worker resources, not the supervisor's own (it declares none)."""
    async with sup_for(client) as sup:
        fits = tv.Task(add, (1, 1), name="fits", runs_on="dask", resources={"GPU": 2})
        never = tv.Task(add, (1, 1), name="never", runs_on="dask", resources={"GPU": 3})
        other = tv.Task(add, (1, 1), name="other", runs_on="dask", resources={"TPU": 1})
        report = await sup.gather([fits, never, other])
    assert report["fits"].ok and report["fits"].ret == 2
    for name, short in (("never", {"GPU": 1.0}), ("other", {"TPU": 1.0})):
        res = report[name]
        assert res.state is State.SKIPPED and isinstance(res.error, tv.ResourceError)
        assert res.error.shortfall == short and res.attempts == 0


async def test_new_workers_true_warns_and_the_task_waits_in_dask(client: Any) -> None:
    async with sup_for(client, new_workers=True) as sup:
        with pytest.warns(tv.TaskvisorWarning, match="no current Dask worker has"):
            h = sup.submit(add, 1, 1, name="waits", runs_on="dask", resources={"GPU": 3})
        assert (await sup.submit(add, 2, 2, runs_on="dask")).ret == 4
        assert h.state is State.RUNNING  # in Dask, waiting for a worker with GPU=3
        sup.cancel(h)
        res = await h
    assert res.state is State.CANCELLED


async def test_cancel_and_timeout_cancel_the_dask_future(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    ex = DaskExecutor(client)
    async with tv.Supervisor(aloops=(), executors={"dask": ex}) as sup:
        timed = await sup.submit(blocked, "t", name="timed", runs_on="dask", timeout=0.2)
        h = sup.submit(blocked, "c", name="cancelled", runs_on="dask")
        assert await asyncio.to_thread(STARTED["c"].wait, WAIT)  # running on a worker thread
        sup.cancel(h)
        res = await h
        assert not [k for k in client.futures if ex.token in str(k)]  # no future held
        assert (await sup.submit(add, 1, 1, runs_on="dask")).ret == 2  # Dask goes on
        GATE.set()
    assert timed.state is State.FAILED and isinstance(timed.error, tv.TaskTimeout)
    assert res.state is State.CANCELLED
    # the function may run on in its thread: said once, with the way to stop it
    told = [r for r in caplog.records if "isolate=True" in r.getMessage()]
    assert len(told) == 1 and "'timed'" in told[0].getMessage(), told


async def test_ended_tasks_leave_no_future_behind(client: Any) -> None:
    ex = DaskExecutor(client)
    async with tv.Supervisor(aloops=(), executors={"dask": ex}) as sup:
        report = await sup.gather(
            [tv.Task(add, (i, i), name=f"t{i}", runs_on="dask") for i in range(20)]
        )
        assert report.ok
        assert not [k for k in client.futures if ex.token in str(k)]


def test_priorities_are_honoured_on_a_saturated_cluster() -> None:
    """One worker thread, held by a blocker until the worker holds every other task:
    the CRITICAL task submitted last starts before the LOW ones queued ahead of it."""
    with (
        dask.config.set({"distributed.scheduler.worker-saturation": "inf"}),
        LocalCluster(processes=False, n_workers=1, threads_per_worker=1, **cluster_kwargs()) as c,
        Client(c) as client,
    ):
        names = [f"low{i}" for i in range(4)] + ["critical"]
        ex = DaskExecutor(client, batch=1)  # (each task its own key, for hold_until_queued)
        with tv.BackgroundSupervisor(aloops=(), executors={"dask": ex}) as sup:
            first = sup.submit(hold_until_queued, names, name="hold", runs_on="dask", tier=3)
            lows = [sup.submit(record, n, name=n, runs_on="dask", tier="low") for n in names[:4]]
            crit = sup.submit(record, "critical", name="critical", runs_on="dask", tier=3)
            for h in [first, *lows, crit]:
                assert h.result(timeout=WAIT).ok
    assert CALLS == ["critical", "low0", "low1", "low2", "low3"]


# ---------------------------------------------------------------- batching


def key_and(x: int) -> tuple[str, int]:
    return my_key(), x


async def test_small_tasks_go_as_fewer_dask_tasks_each_with_its_own_result(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adaptive batching: one probe runs alone, then the burst goes in batches; every
    task still gets its own TaskRes and value."""
    # the burst waits for the probe's own timing, never for the PROBE_WAIT timer: on a
    # loaded machine the probe's round trip could outlast 50 ms, and the timer would
    # send the rest one by one (the test then saw 200 Dask tasks)
    monkeypatch.setattr(tvdask, "PROBE_WAIT", 3600.0)
    ex = DaskExecutor(client)
    async with tv.Supervisor(aloops=(), executors={"dask": ex}) as sup:
        report = await sup.gather(
            [tv.Task(key_and, (i,), name=f"t{i}", runs_on="dask") for i in range(200)]
        )
    rets = [cast(tuple[str, int], report[f"t{i}"].ret) for i in range(200)]
    assert report.ok and [x for _, x in rets] == list(range(200))
    keys = {k for k, _ in rets}
    assert 1 < len(keys) < 20, keys  # the probe alone, then a few batches
    assert ex._size() > 1


async def test_a_failing_task_fails_alone_in_its_batch(client: Any) -> None:
    async with sup_for(client, batch=10) as sup:
        tasks = [
            tv.Task(boom if i == 3 else key_and, (i,), name=f"t{i}", runs_on="dask")
            for i in range(10)
        ]
        report = await sup.gather(tasks)
    keys = {cast(tuple[str, int], report[f"t{i}"].ret)[0] for i in range(10) if i != 3}
    assert len(keys) == 1  # one Dask task
    assert [r.name for r in report if not r.ok] == ["t3"]
    assert isinstance(report["t3"].error, ValueError) and str(report["t3"].error) == "3"


async def test_cancelling_a_task_of_a_running_batch_ends_it_at_once(client: Any) -> None:
    async with sup_for(client, batch=2) as sup:
        a = sup.submit(blocked, "a", name="a", runs_on="dask")
        b = sup.submit(blocked, "b", name="b", runs_on="dask")  # (the same turn: one batch)
        assert await asyncio.to_thread(STARTED["a"].wait, WAIT)
        sup.cancel(b)  # its batch runs on: b ends now, its result will be dropped
        res_b = await b
        assert a.state is State.RUNNING
        GATE.set()
        res_a = await a
    assert res_b.state is State.CANCELLED and (res_a.state, res_a.ret) == (State.DONE, "a")


def test_batch_must_be_a_positive_int_or_none(cluster: LocalCluster) -> None:
    with Client(cluster) as client:
        for bad in (0, -2, 1.5, True):
            with pytest.raises(ValueError, match="batch must be"):
                DaskExecutor(client, batch=bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------- review regressions


async def test_a_reused_name_never_meets_the_key_of_an_attempt_still_running(
    client: Any,
) -> None:
    """The old attempt timed out but still runs on a worker thread; a newer task under the
    same name (its handle dropped: the name is free) gets a key of its own and runs."""
    async with sup_for(client) as sup:
        old = await sup.submit(blocked, "old", name="job", runs_on="dask", timeout=0.2)
        assert old.state is State.FAILED and isinstance(old.error, tv.TaskTimeout)
        new = await sup.submit(record, "new", name="job", runs_on="dask")
        GATE.set()
    assert (new.state, new.ret) == (State.DONE, "new") and "new" in CALLS


async def test_a_closed_client_fails_batched_tasks_with_the_reason(cluster: LocalCluster) -> None:
    """client.submit raising where no engine catches it (a batch sent from call_soon):
    each task ends FAILED with the reason; nothing hangs, closing included."""
    client = await Client(cluster.scheduler_address, asynchronous=True)
    async with sup_for(client) as sup:
        assert (await sup.submit(add, 1, 1, runs_on="dask")).ok
        await client.close()
        report = await sup.gather([tv.Task(add, (i, i), runs_on="dask") for i in range(5)])
    assert [r.state for r in report] == [State.FAILED] * 5
    assert all("closed" in str(r.error).lower() for r in report), report


async def test_a_burst_never_waits_for_a_slow_probe(client: Any) -> None:
    """The first task of a burst goes alone to measure a timing; if it takes longer than
    PROBE_WAIT, the rest go without it, even when another task's timing came in first."""
    async with sup_for(client, new_workers=False) as sup:
        gpu = sup.submit(add, 0, 0, name="gpu", runs_on="dask", resources={"GPU": 1})
        small = sup.submit(add, 1, 1, name="small", runs_on="dask")
        probe = sup.submit(blocked, "p", name="probe", runs_on="dask")  # (the probe: last in)
        assert (await gpu).ok and (await small).ret == 2  # while the probe still blocks
        GATE.set()
        assert (await probe).ok


def test_priority_mapping_orders_tiers_then_priority() -> None:
    tasks = [
        tv.Task(add, name="low", tier="low"),
        tv.Task(add, name="normal-late", priority=5),
        tv.Task(add, name="normal-early", priority=-5),
        tv.Task(add, name="high", tier="high", priority=1e30),
        tv.Task(add, name="critical", tier="critical"),
    ]
    ranked = sorted(tasks, key=dask_priority, reverse=True)  # Dask runs higher first
    assert [t.name for t in ranked] == ["critical", "high", "normal-early", "normal-late", "low"]


def test_a_synchronous_client_works_from_tv_run(cluster: LocalCluster) -> None:
    with Client(cluster) as client:
        a = tv.Task(add, (20, 1), name="a", runs_on="dask")
        b = tv.Task(add, (a.output, 21), name="b", runs_on="dask", retries=1)
        report = tv.run([a, b], aloops=(), executors={"dask": DaskExecutor(client)})
    assert report.ok and report["b"].ret == 42


def test_bad_arguments_are_named(cluster: LocalCluster) -> None:
    with pytest.raises(TypeError, match=r"distributed\.Client"):
        DaskExecutor("tcp://127.0.0.1:8786")  # type: ignore[arg-type]
    with Client(cluster) as client:
        for bad in (-1, 1.5, True):
            with pytest.raises(ValueError, match="allowed_failures"):
                DaskExecutor(client, allowed_failures=bad)  # type: ignore[arg-type]


async def test_an_asynchronous_client_of_another_loop_is_refused(cluster: LocalCluster) -> None:
    """An asynchronous client belongs to the loop it was made on: a BackgroundSupervisor
    (its own loop) refuses it with the reason."""
    async with Client(cluster.scheduler_address, asynchronous=True) as client:
        sup = tv.BackgroundSupervisor(aloops=(), executors={"dask": DaskExecutor(client)})
        with pytest.raises(RuntimeError, match="another event loop"), sup:
            pass  # (the check comes before any wait on the client: no await needed here)


# ---------------------------------------------------------------- worker processes


def side_effect(marker: str) -> str:
    with Path(marker).open("a") as f:
        f.write("ran\n")
    return marker


@pytest.mark.slow
def test_a_task_that_kills_its_worker_is_worker_crashed_and_nothing_done_reruns(
    tmp_path: Path,
) -> None:
    """Worker processes: a task that kills its worker ends FAILED with WorkerCrashed
    after one real run (Dask does not re-run it behind taskvisor's back); with
    ``retries=1`` it runs again on the restarted worker; tasks that ended DONE before the
    crash never run again."""
    with (
        LocalCluster(processes=True, n_workers=1, threads_per_worker=1, **cluster_kwargs()) as c,
        Client(c) as client,
    ):
        done = [str(tmp_path / f"done{i}") for i in range(3)]
        with tv.BackgroundSupervisor(aloops=(), executors={"dask": DaskExecutor(client)}) as sup:
            before = sup.gather([tv.Task(side_effect, (m,), runs_on="dask") for m in done])
            crashed = sup.submit(die_once, str(tmp_path / "a"), name="crash", runs_on="dask")
            res = crashed.result(timeout=WAIT)
            retried = sup.submit(
                die_once, str(tmp_path / "b"), name="retried", runs_on="dask", retries=1
            ).result(timeout=WAIT)
            after = sup.gather([tv.Task(add, (1, 1), runs_on="dask")])
    assert before.ok and after.ok
    assert res.state is State.FAILED and isinstance(res.error, tv.WorkerCrashed), res
    assert res.attempts == 1 and (tmp_path / "a").read_text().count("run") == 1
    assert (retried.state, retried.ret, retried.attempts) == (State.DONE, "second attempt", 2)
    assert (tmp_path / "b").read_text().count("run") == 2
    assert [Path(m).read_text() for m in done] == ["ran\n"] * 3  # never recomputed


def die(_marker: str) -> None:
    os._exit(3)


@pytest.mark.slow
def test_a_task_that_kills_its_batchs_worker_crashes_alone(tmp_path: Path) -> None:
    """A batch loses its worker: each of its tasks runs again alone; the one that kills
    its worker ends WorkerCrashed, the others DONE (each side effect ran once: the
    killer came first in the batch)."""
    with (
        LocalCluster(processes=True, n_workers=1, threads_per_worker=1, **cluster_kwargs()) as c,
        Client(c) as client,
    ):
        marks = [str(tmp_path / f"m{i}") for i in range(3)]
        ex = DaskExecutor(client, batch=4)
        with tv.BackgroundSupervisor(aloops=(), executors={"dask": ex}) as sup:
            report = sup.gather(
                [
                    tv.Task(die, ("x",), name="killer", runs_on="dask"),
                    *(tv.Task(side_effect, (m,), runs_on="dask") for m in marks),
                ]
            )
    killed = report["killer"]
    assert killed.state is State.FAILED and isinstance(killed.error, tv.WorkerCrashed)
    assert killed.attempts == 1
    assert [r.state for r in report if r.name != "killer"] == [State.DONE] * 3
    assert [Path(m).read_text() for m in marks] == ["ran\n"] * 3


# ---------------------------------------------------------------- keep_remote: values stay


def total(xs: list[int], mapping: dict[str, int], *, more: tuple[int, ...] = ()) -> int:
    return sum(xs) + sum(mapping.values()) + sum(more)


def fetch_in_thread(remote: Remote) -> int:
    assert isinstance(remote, Remote)
    return cast(int, remote.result(timeout=WAIT)) + 1


async def fetch_in_coroutine(remote: Remote) -> int:
    return cast(int, await remote) + 2


def pair_of(a: int, b: int) -> dict[str, int]:
    return {"a": a, "b": b}


def scheduler_tasks(cluster: LocalCluster) -> dict[Any, Any]:
    """The in-process scheduler's tasks (read from this thread: a snapshot)."""
    assert cluster.scheduler is not None
    return cast(dict[Any, Any], cluster.scheduler.tasks)


def scheduler_workers(cluster: LocalCluster) -> list[str]:
    assert cluster.scheduler is not None
    return list(cluster.scheduler.workers)


def token_keys(cluster: LocalCluster, ex: DaskExecutor) -> set[str]:
    return {str(k) for k in list(scheduler_tasks(cluster)) if ex.token in str(k)}


async def settle_releases(client: Any) -> None:
    """Drop what only a cycle holds, and wait until the scheduler has handled every
    release sent so far: the releases go out on the client's stream (loop callbacks),
    and a task submitted after them on the same stream ends only after they were
    handled."""
    gc.collect()
    await asyncio.sleep(0)  # (the releases' own callbacks on this loop run first)
    assert await client.submit(add, 0, 0, pure=False) == 0


async def test_keep_remote_passes_values_worker_to_worker(client: Any) -> None:
    ex = DaskExecutor(client, keep_remote=True)
    async with tv.Supervisor(aloops=(), executors={"dask": ex}) as sup:
        a = tv.Task(add, (1, 2), name="a", runs_on="dask")
        b = tv.Task(add, (a.output, 10), name="b", runs_on="dask")  # gets the int
        c = tv.Task(add, (b.output, 100), name="c", runs_on="dask", tier="high")
        report = await sup.gather([a, b, c])
    assert report.ok, report
    rets = [report[n].ret for n in "abc"]
    assert all(isinstance(r, Remote) for r in rets)
    assert [await cast(Remote, r) for r in rets] == [3, 13, 113]
    remote = cast(Remote, report["c"].ret)
    assert remote.key.startswith(f"c-1-{ex.token}-") and remote.task_name == "c"
    assert "int" in repr(remote) and "'c'" in repr(remote)
    assert report["c"].worker is not None


async def test_remotes_nested_in_arguments_arrive_as_values(client: Any) -> None:
    async with sup_for(client, keep_remote=True) as sup:
        a = tv.Task(add, (1, 2), name="a", runs_on="dask")
        b = tv.Task(add, (3, 4), name="b", runs_on="dask")
        c = tv.Task(
            total,
            ([a.output, b.output, 5], {"x": a.output, "y": 1}),
            {"more": (b.output,)},
            name="c",
            runs_on="dask",
        )
        report = await sup.gather([a, b, c])
        # a Remote passed by hand to a Dask task of an executor that fetches values
        plain = DaskExecutor(client)
        async with tv.Supervisor(aloops=(), executors={"dask": plain}) as other:
            by_hand = await other.submit(add, report["a"].ret, 1, runs_on="dask")
    assert report.ok, report
    assert await cast(Remote, report["c"].ret) == 3 + 7 + 5 + 3 + 1 + 7
    assert (by_hand.ret, by_hand.ok) == (4, True)


async def test_a_thread_or_coroutine_task_gets_the_remote_and_fetches_it(client: Any) -> None:
    async with tv.Supervisor(
        aloops=("io",), executors={"dask": DaskExecutor(client, keep_remote=True)}
    ) as sup:
        a = tv.Task(add, (20, 20), name="a", runs_on="dask")
        t = tv.Task(fetch_in_thread, (a.output,), name="t", runs_on="thread")
        co = tv.Task(fetch_in_coroutine, (a.output,), name="co", runs_on="aloop:io")
        main = tv.Task(fetch_in_coroutine, (a.output,), name="main", runs_on="main")
        report = await sup.gather([a, t, co, main])
        remote = cast(Remote, report["a"].ret)
        with pytest.raises(RuntimeError, match="await the Remote"):
            remote.result()  # (this is the asynchronous client's own loop)
    assert report.ok, report
    assert [report[n].ret for n in ("t", "co", "main")] == [41, 42, 42]


async def test_a_remote_given_to_a_process_task_fails_it_with_the_fix(client: Any) -> None:
    async with tv.Supervisor(
        aloops=(),
        processes=1,
        executors={"dask": DaskExecutor(client, keep_remote=True)},
    ) as sup:
        a = tv.Task(add, (1, 2), name="a", runs_on="dask")
        p = tv.Task(add, (a.output, 1), name="p", runs_on="process")
        report = await sup.gather([a, p])
    assert report["a"].ok
    res = report["p"]
    assert res.state is State.FAILED, res
    assert "cannot be pickled" in str(res.error) and "Fetch it first" in str(res.error)
    assert "run the task that needs it on Dask" in str(res.error)
    with pytest.raises(TypeError, match="stays on the Dask cluster"):
        pickle.dumps(report["a"].ret)


async def test_keep_remote_errors_keep_their_traceback(client: Any) -> None:
    async with sup_for(client, keep_remote=True) as sup:
        a = tv.Task(boom, ("broken",), name="a", runs_on="dask")
        b = tv.Task(add, (a.output, 1), name="b", runs_on="dask")
        report = await sup.gather([a, b])
        retried = await sup.submit(flaky, "f", 1, name="f", runs_on="dask", retries=1)
    res = report["a"]
    assert res.state is State.FAILED and isinstance(res.error, ValueError)
    assert str(res.error) == "broken" and res.excinfo is not None
    assert "in boom" in res.excinfo.text
    assert report["b"].state is State.SKIPPED
    assert retried.ok and retried.attempts == 2 and await cast(Remote, retried.ret) == "f"


async def test_projections_of_a_remote(client: Any) -> None:
    """``output["k"]`` is computed on the cluster; ``.map(f)`` calls f with the Remote
    in the supervisor, and the usual misuse says how to fix it."""
    async with sup_for(client, keep_remote=True) as sup:
        a = tv.Task(pair_of, (1, 2), name="a", runs_on="dask")
        item = tv.Task(add, (a.output["b"], 10), name="item", runs_on="dask")
        mapped = tv.Task(add, (a.output.map(len), 10), name="mapped", runs_on="dask")
        missing = tv.Task(add, (a.output["zz"], 10), name="missing", runs_on="dask")
        report = await sup.gather([a, item, mapped, missing])
    assert await cast(Remote, report["item"].ret) == 12
    assert report["mapped"].state is State.FAILED
    assert "stays on the Dask cluster" in str(report["mapped"].error)
    assert report["missing"].state is State.FAILED
    assert isinstance(report["missing"].error, KeyError)


async def test_cancelling_a_keep_remote_task_leaves_nothing_behind(
    client: Any, cluster: LocalCluster
) -> None:
    ex = DaskExecutor(client, keep_remote=True)
    async with tv.Supervisor(aloops=(), executors={"dask": ex}) as sup:
        timed = await sup.submit(blocked, "t", name="timed", runs_on="dask", timeout=0.2)
        h = sup.submit(blocked, "c", name="cancelled", runs_on="dask")
        assert await asyncio.to_thread(STARTED["c"].wait, WAIT)
        sup.cancel(h)
        res = await h
        GATE.set()
    assert res.state is State.CANCELLED
    assert timed.state is State.FAILED and isinstance(timed.error, tv.TaskTimeout)
    del res, timed, h, sup
    await settle_releases(client)
    assert not token_keys(cluster, ex)


async def test_remotes_are_released_once_nothing_needs_them(
    client: Any, cluster: LocalCluster
) -> None:
    """Explicitly (``release()``: the value goes, what was computed from it stays), and
    when the last reference goes (the report, the consumers' arguments and the
    supervisor's result buffer)."""
    ex = DaskExecutor(client, keep_remote=True)
    async with tv.Supervisor(aloops=(), executors={"dask": ex}) as sup:
        a = tv.Task(add, (1, 2), name="a", runs_on="dask")
        b = tv.Task(add, (a.output, 10), name="b", runs_on="dask")
        c = tv.Task(fetch_in_thread, (b.output,), name="c", runs_on="thread")
        report = await sup.gather([a, b, c])
        assert report.ok, report
        ra, rb = cast(Remote, report["a"].ret), cast(Remote, report["b"].ret)
        akey, bkey = ra.key, rb.key
        assert scheduler_tasks(cluster)[akey].state == "memory"
        ra.release()
        await settle_releases(client)
        assert ra.released and "released" in repr(ra)
        held = scheduler_tasks(cluster).get(akey)
        assert held is None or held.state != "memory"  # (its lineage may stay, not its data)
        assert await rb == 13  # what was computed from it is still there
        with pytest.raises(RuntimeError, match="released"):
            await ra
    assert not (ex._live or ex._expected or ex._heard or ex._parked)
    assert cluster.scheduler is not None
    assert ex._topic not in cluster.scheduler._broker._topics  # (the answers' topic is gone)
    assert client._event_handlers[ex._topic] is tvdask._ignore_event  # (holds nothing)
    del report, ra, rb, sup, a, b, c
    await settle_releases(client)
    assert bkey not in scheduler_tasks(cluster)
    assert not token_keys(cluster, ex)


async def test_keep_remote_sends_one_dask_task_per_task(client: Any, cluster: LocalCluster) -> None:
    """The answer comes back as an event, not as a second Dask task or a fetch."""
    ex = DaskExecutor(client, keep_remote=True)
    async with tv.Supervisor(aloops=(), executors={"dask": ex}) as sup:
        a = tv.Task(add, (1, 2), name="a", runs_on="dask")
        b = tv.Task(add, (a.output, 10), name="b", runs_on="dask")
        report = await sup.gather([a, b])
        assert report.ok, report
        keys = token_keys(cluster, ex)
        assert sorted(k.split("-")[0] for k in keys) == ["a", "b"], keys
        assert await cast(Remote, report["b"].ret) == 13


async def test_an_answer_heard_after_its_task_finished_still_ends_it(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other order: Dask reports the task done before its answer event arrives (the
    event is held back here); the finished future waits, parked, for the answer."""
    held: list[Any] = []
    parked = threading.Event()
    real_hear, real_done = DaskExecutor._hear, DaskExecutor._kept_done

    def done(self: DaskExecutor, fut: Any) -> None:
        real_done(self, fut)
        parked.set()

    monkeypatch.setattr(DaskExecutor, "_hear", lambda self, event: held.append(event))
    monkeypatch.setattr(DaskExecutor, "_kept_done", done)
    ex = DaskExecutor(client, keep_remote=True)
    async with tv.Supervisor(aloops=(), executors={"dask": ex}) as sup:
        h = sup.submit(add, 20, 22, name="a", runs_on="dask")
        assert await asyncio.to_thread(parked.wait, WAIT)
        assert list(ex._parked) and len(held) == 1
        assert sup.task_state(h) is State.RUNNING
        real_hear(ex, held[0])  # (on the client's loop, as Dask calls it)
        res = await h
        assert res.state is State.DONE and await cast(Remote, res.ret) == 42


def test_keep_remote_with_a_synchronous_client(cluster: LocalCluster) -> None:
    with Client(cluster) as client:
        a = tv.Task(add, (20, 1), name="a", runs_on="dask")
        b = tv.Task(add, (a.output, 21), name="b", runs_on="dask")
        t = tv.Task(fetch_in_thread, (b.output,), name="t", runs_on="thread")
        ex = DaskExecutor(client, keep_remote=True)
        report = tv.run([a, b, t], aloops=(), executors={"dask": ex})
        assert report.ok, report
        assert cast(Remote, report["b"].ret).result(timeout=WAIT) == 42
        assert report["t"].ret == 43


# ------------------------------------------------- the size probe (worker processes)


class Probe:
    """About ``mb`` MB that records where it is unpickled, and refuses to be unpickled
    in the process whose pid it was given (the test's: the client's)."""

    def __init__(self, forbidden: int, mb: int) -> None:
        self.forbidden = forbidden
        self.data = b"x" * (mb << 20)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpickle_probe, (self.forbidden, self.data))


UNPICKLED_HERE: list[int] = []


def _unpickle_probe(forbidden: int, data: bytes) -> Probe:
    if os.getpid() == forbidden:
        UNPICKLED_HERE.append(len(data))
        raise RuntimeError(f"the probe ({len(data)} bytes) was unpickled in the client")
    probe = Probe.__new__(Probe)
    probe.forbidden, probe.data = forbidden, data
    return probe


def make_probe(forbidden: int, mb: int) -> Probe:
    return Probe(forbidden, mb)


def probe_size(probe: Probe) -> int:
    assert os.getpid() != probe.forbidden
    return len(probe.data)


@pytest.mark.slow
def test_a_large_intermediate_never_enters_the_client_process() -> None:
    """20 MB made on one Dask worker process, measured by another Dask task: with
    ``keep_remote`` the consumer gets it and the client never unpickles it; without,
    the same probe fires (the value comes back with its answer)."""
    UNPICKLED_HERE.clear()
    me = os.getpid()
    with (
        LocalCluster(n_workers=2, processes=True, threads_per_worker=1, **cluster_kwargs()) as c,
        Client(c) as client,
    ):

        def graph() -> list[tv.Task[Any]]:
            big = tv.Task(make_probe, (me, 20), name="big", runs_on="dask")
            size = tv.Task(probe_size, (big.output,), name="size", runs_on="dask")
            return [big, size]

        kept = tv.run(
            graph(), aloops=(), executors={"dask": DaskExecutor(client, keep_remote=True)}
        )
        assert kept.ok, kept
        assert cast(Remote, kept["size"].ret).result(timeout=WAIT) == 20 << 20
        assert UNPICKLED_HERE == []
        default = tv.run(graph(), aloops=(), executors={"dask": DaskExecutor(client)})
    assert default["big"].state is State.FAILED
    assert "unpickled in the client" in str(default["big"].error)
    assert UNPICKLED_HERE == [20 << 20]


@pytest.mark.slow
def test_keep_remote_a_task_that_kills_its_worker_is_worker_crashed(tmp_path: Path) -> None:
    """The task's KilledWorker: WorkerCrashed, retries decide."""
    with (
        LocalCluster(processes=True, n_workers=1, threads_per_worker=1, **cluster_kwargs()) as c,
        Client(c) as client,
    ):
        ex = DaskExecutor(client, keep_remote=True)
        with tv.BackgroundSupervisor(aloops=(), executors={"dask": ex}) as sup:
            crashed = sup.submit(die_once, str(tmp_path / "a"), name="crash", runs_on="dask")
            res = crashed.result(timeout=WAIT)
            retried = sup.submit(
                die_once, str(tmp_path / "b"), name="retried", runs_on="dask", retries=1
            ).result(timeout=WAIT)
            value = cast(Remote, retried.ret).result(timeout=WAIT)
    assert res.state is State.FAILED and isinstance(res.error, tv.WorkerCrashed), res
    assert res.attempts == 1 and (tmp_path / "a").read_text().count("run") == 1
    assert (retried.state, retried.attempts, value) == (State.DONE, 2, "second attempt")


# ---------------------------------------------------------------- isolate: a child per task


async def started_pid(fifo: Path) -> int:
    """The pid ``hang`` wrote: it is running. (If it never comes, the reader is let go.)"""

    def read() -> int:
        with fifo.open() as f:
            return int(f.readline())

    reader = asyncio.ensure_future(asyncio.to_thread(read))
    try:
        return await asyncio.wait_for(asyncio.shield(reader), WAIT)
    finally:
        if not reader.done():  # a writer that closes at once: the reader sees the end
            os.close(os.open(fifo, os.O_RDWR))  # (never blocks, with or without a reader)
            with pytest.raises(ValueError):
                await reader


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def one_thread() -> Iterator[LocalCluster]:
    """One worker with one thread: a task left running there blocks every later one."""
    with (
        LocalCluster(processes=False, n_workers=1, threads_per_worker=1, **cluster_kwargs()) as c,
        Client(c) as warm,
    ):
        warm.submit(add, 0, 0, pure=False).result()  # (its thread starts before any test)
        yield c


@pytest.mark.parametrize("how", ["cancel", "timeout"])
async def test_isolate_cancel_and_timeout_free_the_worker(
    one_thread: LocalCluster, tmp_path: Path, how: str
) -> None:
    """isolate=True: a task cancelled or timed out while it runs has its child process
    killed, and the worker's only thread runs the next task (without isolate it would
    wait for ever: a thread cannot be stopped)."""
    fifo = tmp_path / "started"
    os.mkfifo(fifo)
    clock = MockClock(autojump=False)  # (the timeout falls due when the test says)
    async with (
        Client(one_thread.scheduler_address, asynchronous=True) as client,
        tv.Supervisor(
            aloops=(), clock=clock, executors={"dask": DaskExecutor(client, isolate=True)}
        ) as sup,
    ):
        timeout = 5.0 if how == "timeout" else None
        h = sup.submit(hang, str(fifo), name="hang", runs_on="dask", timeout=timeout)
        pid = await started_pid(fifo)
        if how == "cancel":
            sup.cancel(h)
        else:
            clock.advance(5.0)
        res = await h
        after = await sup.submit(workloads.add, 1, 2, runs_on="dask")
    if how == "cancel":
        assert res.state is State.CANCELLED, res
    else:
        assert res.state is State.FAILED and isinstance(res.error, tv.TaskTimeout), res
    assert (after.state, after.ret) == (State.DONE, 3), after
    assert gone(pid)  # (killed, and reaped by the thread that then ran ``add``)


async def test_isolate_a_task_that_kills_its_process_is_worker_crashed_alone(
    one_thread: LocalCluster, tmp_path: Path
) -> None:
    """The child dies, not the worker: WorkerCrashed naming the worker, the child's pid
    and its exit code; ``retries`` re-run it for real; the rest of its batch is DONE,
    and the same worker goes on."""
    async with (
        Client(one_thread.scheduler_address, asynchronous=True) as client,
        sup_for(client, isolate=True, batch=8) as sup,
    ):
        workers = set(scheduler_workers(one_thread))
        report = await sup.gather(
            [
                *(tv.Task(workloads.add, (i, 1), runs_on="dask") for i in range(3)),
                tv.Task(workloads.die, (3,), name="killer", runs_on="dask"),
                *(tv.Task(workloads.add, (i, 2), runs_on="dask") for i in range(3)),
                tv.Task(
                    die_once, (str(tmp_path / "a"),), name="retried", retries=1, runs_on="dask"
                ),
            ]
        )
        assert set(scheduler_workers(one_thread)) == workers  # (none lost, none new)
    killed = report["killer"]
    err = killed.error
    assert killed.state is State.FAILED and isinstance(err, tv.WorkerCrashed), killed
    assert err.exitcode == 3 and err.pid is not None and err.pid != os.getpid()
    assert err.where == f"Dask worker {next(iter(workers))}"
    assert killed.worker == f"Dask worker {next(iter(workers))}, pid {err.pid}"
    rets = [r.ret for r in report if r.name not in ("killer", "retried")]
    assert sorted(cast(list[int], rets)) == [1, 2, 2, 3, 3, 4]
    retried = report["retried"]
    assert (retried.state, retried.ret, retried.attempts) == (State.DONE, "second attempt", 2)
    assert (tmp_path / "a").read_text().count("run") == 2


async def test_isolate_keep_remote_values_stay_on_the_worker(
    one_thread: LocalCluster, tmp_path: Path
) -> None:
    """isolate and keep_remote together: the value comes back from the child to the
    worker, where Dask keeps it; a cancel stops the child and frees the thread."""
    fifo = tmp_path / "started"
    os.mkfifo(fifo)
    async with (
        Client(one_thread.scheduler_address, asynchronous=True) as client,
        sup_for(client, isolate=True, keep_remote=True) as sup,
    ):
        a = sup.submit(workloads.identity, 3, name="a", runs_on="dask")
        b = sup.submit(workloads.add, 1, a.output, name="b", runs_on="dask")
        h = sup.submit(hang, str(fifo), name="hang", runs_on="dask")
        pid = await started_pid(fifo)
        sup.cancel(h)
        res, rb = await h, await b
        assert isinstance(rb.ret, Remote) and await rb.ret == 4
        after = await sup.submit(workloads.add, 1, 1, runs_on="dask")  # (the thread is free)
    assert res.state is State.CANCELLED and after.state is State.DONE
    assert gone(pid)


async def test_isolate_cancelling_a_task_of_a_running_batch_stops_it_alone(
    one_thread: LocalCluster, tmp_path: Path
) -> None:
    """A batch of three, the first hanging: cancelling it kills its child (asked of the
    workers by the executor), the other two run, and the thread is free after."""
    fifo = tmp_path / "started"
    os.mkfifo(fifo)
    async with (
        Client(one_thread.scheduler_address, asynchronous=True) as client,
        sup_for(client, isolate=True, batch=3) as sup,
    ):
        h = sup.submit(hang, str(fifo), name="hang", runs_on="dask")
        rest = [sup.submit(workloads.add, i, 1, runs_on="dask") for i in range(2)]
        pid = await started_pid(fifo)
        sup.cancel(h)
        res = await h
        assert [(await r).ret for r in rest] == [1, 2]
        after = await sup.submit(workloads.add, 2, 2, runs_on="dask")
    assert res.state is State.CANCELLED and after.ret == 4
    assert gone(pid)


async def test_isolate_a_cancel_stops_what_the_task_started_too(
    one_thread: LocalCluster, tmp_path: Path
) -> None:
    """The child leads a process group: the cancel kills the group, so a process the task
    started neither lives on nor holds the thread (by keeping the child's pipe open). That
    process alone holds a FIFO's writing end: its reader sees the end when it dies."""
    fifo, life = tmp_path / "started", tmp_path / "life"
    os.mkfifo(fifo)
    os.mkfifo(life)
    reader = os.open(life, os.O_RDONLY | os.O_NONBLOCK)  # (open before any writer)
    try:
        async with (
            Client(one_thread.scheduler_address, asynchronous=True) as client,
            sup_for(client, isolate=True) as sup,
        ):
            h = sup.submit(workloads.hang_with_a_grandchild, str(fifo), str(life), runs_on="dask")
            await started_pid(fifo)  # (the grandchild holds the writing end now)
            sup.cancel(h)
            assert (await h).state is State.CANCELLED
            after = await sup.submit(workloads.add, 5, 5, runs_on="dask")
        assert after.ret == 10
        os.set_blocking(reader, True)
        end = asyncio.ensure_future(asyncio.to_thread(os.read, reader, 1))
        try:
            assert await asyncio.wait_for(asyncio.shield(end), WAIT) == b""  # it died
        finally:
            if not end.done():  # (a byte lets the reader go: the assert above failed)
                writer = os.open(life, os.O_WRONLY | os.O_NONBLOCK)
                os.write(writer, b"x")
                os.close(writer)
                await end
    finally:
        os.close(reader)


async def test_a_cancel_just_before_the_supervisor_closes_still_stops_the_child(
    one_thread: LocalCluster, tmp_path: Path
) -> None:
    """The supervisor closes right after cancelling a running task: the child is killed
    all the same (the worker plugin stays registered), and the worker's thread is free
    for the next supervisor."""
    fifo = tmp_path / "started"
    os.mkfifo(fifo)
    async with Client(one_thread.scheduler_address, asynchronous=True) as client:
        async with sup_for(client, isolate=True) as sup:
            h = sup.submit(hang, str(fifo), name="hang", runs_on="dask")
            pid = await started_pid(fifo)
            sup.cancel(h)
        assert (await h).state is State.CANCELLED
        async with sup_for(client, isolate=True) as sup:
            after = await sup.submit(workloads.add, 3, 4, runs_on="dask")
    assert after.ret == 7
    assert gone(pid)


async def test_isolate_a_value_that_cannot_come_back_from_the_child_fails_the_task(
    one_thread: LocalCluster,
) -> None:
    """keep_remote with isolate: a value the child cannot pickle fails its task with the
    reason (not a crash), and the child serves the next task."""
    async with (
        Client(one_thread.scheduler_address, asynchronous=True) as client,
        sup_for(client, isolate=True, keep_remote=True) as sup,
    ):
        bad = await sup.submit(workloads.unpicklable, name="bad", runs_on="dask")
        good = await sup.submit(workloads.add, 1, 2, runs_on="dask")
        assert await cast(Remote, good.ret) == 3
    assert bad.state is State.FAILED and not isinstance(bad.error, tv.WorkerCrashed), bad
    assert "child process" in str(bad.error)


def test_a_release_before_the_child_starts_never_starts_it() -> None:
    """Dask releases a key in the instant between its thread starting and taking a
    child: the thread then runs nothing (it raises, and Dask drops the error of a
    cancelled task); the key stays doomed until Dask says its thread returned. A call of a
    batch cancelled before it started is skipped, the rest of the batch runs."""
    tvdask._release_running("k-early")  # (no child runs it yet)
    with pytest.raises(tvdask._Stopped):
        tvdask.run_isolated("k-early", ["early"], [b"never unpickled"])
    assert "k-early" in tvdask._doomed  # (its thread may not have returned yet)
    tvdask._Isolation().transition("k-early", "cancelled", "error")
    assert "k-early" not in tvdask._doomed
    payload = pickle.dumps((workloads.add, (1, 2), {}, None))
    tvdask._skipped["k-batch"] = {"skip"}
    answers, _ = tvdask.run_isolated("k-batch", ["skip", "run"], [b"never unpickled", payload])
    assert answers[0][0] == "err" and "was stopped" in answers[0][3]
    assert answers[1][0] == "ok" and pickle.loads(answers[1][1])[0] == 3
    assert "k-batch" not in tvdask._skipped
    tvdask._stop_idle()


@pytest.mark.slow
def test_isolate_on_worker_processes(tmp_path: Path) -> None:
    """Worker processes are daemonic (a nanny starts them): the child still starts (it is
    not a multiprocessing child); a crash leaves the worker process alive; a cancel
    frees its thread."""
    fifo = tmp_path / "started"
    os.mkfifo(fifo)
    with (
        LocalCluster(processes=True, n_workers=1, threads_per_worker=1, **cluster_kwargs()) as c,
        Client(c) as client,
    ):
        pids = client.run(os.getpid)
        ex = DaskExecutor(client, isolate=True)
        with tv.BackgroundSupervisor(aloops=(), executors={"dask": ex}) as sup:
            crashed = sup.submit(workloads.die, 3, name="killer", runs_on="dask").result(
                timeout=WAIT
            )
            h = sup.submit(hang, str(fifo), name="hang", runs_on="dask")
            pid = asyncio.run(started_pid(fifo))
            sup.cancel(h)
            res = h.result(timeout=WAIT)
            after = sup.submit(workloads.add, 2, 2, runs_on="dask").result(timeout=WAIT)
        assert client.run(os.getpid) == pids  # the same worker process throughout
    assert isinstance(crashed.error, tv.WorkerCrashed) and crashed.error.exitcode == 3
    assert res.state is State.CANCELLED and after.ret == 4
    assert gone(pid)
