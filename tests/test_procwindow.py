"""The process pool's window policy (``_procwindow``), on plain fake workers.

No processes, no threads, no clock: the policy is pure, so every decision is checked
directly from the worker state it is given and the ``now`` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from taskvisor import _procwindow
from taskvisor._procwindow import (
    PREFETCH,
    PREFETCH_BYTES,
    PREFETCH_TIME,
    STEAL_AFTER,
    answered,
    has_room,
    next_steal,
    pick,
    steal_due,
    stealable,
)


@dataclass(eq=False)
class FakeJob:
    watch: bool = False


@dataclass(eq=False)
class FakeSlot:
    job: FakeJob


@dataclass(eq=False)
class Fake:
    """A worker as the policy sees it (the manager's ``_Worker`` has the same fields)."""

    name: str
    window: list[FakeSlot] = field(default_factory=list)
    window_bytes: int = 0
    ready: bool = True
    fast: bool = True
    mean: float = 0.0
    busy_since: float = 0.0
    alive: bool = True

    def usable(self) -> bool:
        return self.alive

    def __repr__(self) -> str:
        return f"<{self.name}>"


def worker(
    name: str = "w",
    jobs: int = 0,
    *,
    watch_last: bool = False,
    window_bytes: int = 0,
    ready: bool = True,
    fast: bool = True,
    mean: float = 0.0,
    busy_since: float = 0.0,
    alive: bool = True,
) -> Fake:
    window = [FakeSlot(FakeJob()) for _ in range(jobs)]
    if watch_last:
        window[-1].job.watch = True
    return Fake(name, window, window_bytes, ready, fast, mean, busy_since, alive)


class Spawner:
    """The manager's side of ``pick``: records every call, hands out ``fresh``."""

    def __init__(self, fresh: Fake | None = None) -> None:
        self.fresh = fresh
        self.calls: list[int] = []

    def __call__(self, live: int) -> Fake | None:
        self.calls.append(live)
        return self.fresh


# ------------------------------------------------------------------ the window's size


def test_the_constants_are_the_documented_ones() -> None:
    assert (PREFETCH, PREFETCH_TIME, PREFETCH_BYTES, STEAL_AFTER) == (32, 0.002, 1 << 20, 0.010)


@pytest.mark.parametrize(
    "w",
    [
        worker(fast=False),
        worker(mean=10.0),
        worker(window_bytes=PREFETCH_BYTES),
        worker(ready=False, fast=False),
    ],
    ids=["slow", "long-mean", "bytes-full", "booting-slow"],
)
def test_an_empty_window_always_has_room(w: Fake) -> None:
    assert has_room(w, 10 * PREFETCH_BYTES)


def test_no_job_goes_behind_a_watched_one() -> None:
    assert has_room(worker(jobs=1), 0)
    assert not has_room(worker(jobs=1, watch_last=True), 0)
    assert not has_room(worker(jobs=3, watch_last=True), 0)


def test_a_slow_worker_gets_one_job_at_a_time() -> None:
    assert not has_room(worker(jobs=1, fast=False), 0)


def test_payload_bytes_beyond_the_first_job_are_capped() -> None:
    half = PREFETCH_BYTES // 2
    assert has_room(worker(jobs=1, window_bytes=half), PREFETCH_BYTES - half)  # exactly full
    assert not has_room(worker(jobs=1, window_bytes=half), PREFETCH_BYTES - half + 1)
    assert not has_room(worker(jobs=1, window_bytes=10), PREFETCH_BYTES)


@pytest.mark.parametrize(
    ("mean", "limit"),
    [
        (0.0, PREFETCH),  # no history: the count cap
        (PREFETCH_TIME / PREFETCH, PREFETCH),  # exactly PREFETCH_TIME of work at the cap
        (0.0001, 21),  # 1 + int(0.002 / 0.0001): about 2 ms of work
        (0.001, 3),
        (0.0025, 1),  # one job takes longer than PREFETCH_TIME: nothing behind it
        (5.0, 1),
    ],
)
def test_the_window_holds_about_prefetch_time_of_work(mean: float, limit: int) -> None:
    assert has_room(worker(jobs=limit - 1, mean=mean), 0)
    assert not has_room(worker(jobs=limit, mean=mean), 0)


# ------------------------------------------------------------------ which worker


def test_pick_takes_an_idle_started_worker_first() -> None:
    spawn = Spawner()
    busy, idle, other_idle = worker("busy", 1), worker("idle"), worker("idle2")
    booting = worker("booting", ready=False)
    assert pick([booting, busy, idle, other_idle], 100, spawn) is idle
    assert spawn.calls == []


def test_pick_takes_the_least_loaded_started_worker_with_room() -> None:
    spawn = Spawner(worker("fresh"))
    a, b, c = worker("a", 3), worker("b", 2), worker("c", 2)
    assert pick([a, b, c], 0, spawn) is b  # among equals, the first
    full = worker("full", 1, watch_last=True)
    assert pick([a, full], 0, spawn) is a  # the less loaded one has no room
    assert spawn.calls == []


def test_pick_prefers_a_started_worker_with_room_to_an_idle_starting_one() -> None:
    spawn = Spawner(worker("fresh"))
    loaded, booting = worker("loaded", 5), worker("booting", ready=False)
    assert pick([booting, loaded], 0, spawn) is loaded
    assert spawn.calls == []


def test_pick_takes_an_idle_starting_worker_before_starting_another() -> None:
    spawn = Spawner(worker("fresh"))
    slow = worker("slow", 1, fast=False)
    booting = worker("booting", ready=False)
    assert pick([slow, booting], 0, spawn) is booting
    assert spawn.calls == []


def test_pick_asks_for_a_new_worker_rather_than_queue_behind_a_starting_one() -> None:
    fresh = worker("fresh", ready=False)
    spawn = Spawner(fresh)
    booting = worker("booting", 1, ready=False)
    slow = worker("slow", 1, fast=False)
    dead = worker("dead", alive=False)
    assert pick([booting, slow, dead], 0, spawn) is fresh
    assert spawn.calls == [2]  # the live ones: not the dead one


def test_pick_queues_behind_the_least_loaded_starting_worker_without_a_new_one() -> None:
    spawn = Spawner(None)
    b3, b1, b1too = (worker(n, k, ready=False) for n, k in (("b3", 3), ("b1", 1), ("b1'", 1)))
    assert pick([b3, b1, b1too], 0, spawn) is b1
    assert spawn.calls == [3]


def test_pick_finds_nowhere_when_no_window_has_room_and_no_worker_can_start() -> None:
    spawn = Spawner(None)
    workers = [
        worker("slow", 1, fast=False),
        worker("watched", 1, watch_last=True),
        worker("booting-slow", 1, ready=False, fast=False),
    ]
    assert pick(workers, 0, spawn) is None
    assert spawn.calls == [3]
    assert pick([], 0, spawn) is None
    assert spawn.calls == [3, 0]


def test_pick_skips_unusable_workers() -> None:
    spawn = Spawner(None)
    gone_idle = worker("gone-idle", alive=False)
    gone_booting = worker("gone-booting", ready=False, alive=False)
    busy = worker("busy", 2)
    assert pick([gone_idle, gone_booting, busy], 0, spawn) is busy
    assert pick([gone_idle, gone_booting], 0, spawn) is None
    assert spawn.calls == [0]


def test_pick_sends_a_big_job_only_to_an_empty_window() -> None:
    spawn = Spawner(None)
    small = worker("small", 1, window_bytes=100)
    assert pick([small], PREFETCH_BYTES - 100, spawn) is small
    assert pick([small], PREFETCH_BYTES, spawn) is None
    fresh = worker("fresh", ready=False)
    assert pick([small], PREFETCH_BYTES, Spawner(fresh)) is fresh


# ------------------------------------------------------------------ pace and stealing


def test_answered_keeps_a_moving_average_and_the_pace() -> None:
    w = worker(busy_since=1.0)
    answered(w, 1.004)
    assert w.mean == pytest.approx(0.001)  # a quarter of the way to 4 ms
    assert w.fast and w.busy_since == 1.004
    answered(w, 1.004)  # read in the same batch: took nothing
    assert w.mean == pytest.approx(0.00075)
    answered(w, 1.004 + STEAL_AFTER)  # ran for STEAL_AFTER: one job at a time from now
    assert not w.fast
    assert w.mean == pytest.approx(0.00075 + (STEAL_AFTER - 0.00075) / 4)
    answered(w, 1.004 + STEAL_AFTER + 0.001)  # short again: prefetch again
    assert w.fast


def test_stealable_needs_jobs_waiting_a_fast_worker_and_a_usable_one() -> None:
    ok = worker("ok", 2)
    booting = worker("booting", 2, ready=False)
    one = worker("one", 1)
    slow = worker("slow", 2, fast=False)
    dead = worker("dead", 2, alive=False)
    assert stealable([ok, one, slow, dead, booting]) == [ok, booting]


def test_steal_is_due_after_steal_after_and_switches_to_one_job_at_a_time() -> None:
    early = worker("early", 3, busy_since=1.0)
    late = worker("late", 2, busy_since=1.005)
    alone = worker("alone", 1, busy_since=0.0)  # nothing waits behind its job
    dead = worker("dead", 2, busy_since=0.0, alive=False)
    slow = worker("slow", 2, busy_since=0.0, fast=False)  # (cannot happen: no room)
    workers = [early, late, alone, dead, slow]
    assert steal_due(workers, 1.0 + STEAL_AFTER - 1e-6) == []
    assert early.fast and late.fast
    assert steal_due(workers, 1.0 + STEAL_AFTER) == [early]
    assert not early.fast and late.fast and alone.fast and dead.fast
    assert steal_due(workers, 1.0 + STEAL_AFTER) == []  # taken already
    assert steal_due(workers, 2.0) == [late]


def test_steal_after_is_read_at_each_call() -> None:
    """test_procpool turns stealing off by patching the module's STEAL_AFTER."""
    w = worker(jobs=2, busy_since=0.0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_procwindow, "STEAL_AFTER", 3600.0)
        assert steal_due([w], 1.0) == []
        assert next_steal([w], 1.0) == pytest.approx(3599.0)
    assert steal_due([w], 1.0) == [w]


def test_next_steal_is_the_earliest_stealable_deadline() -> None:
    a = worker("a", 2, busy_since=5.0)
    b = worker("b", 4, busy_since=4.998)
    ignored = [
        worker("one", 1, busy_since=0.0),
        worker("slow", 2, fast=False, busy_since=0.0),
        worker("dead", 2, alive=False, busy_since=0.0),
    ]
    assert next_steal([a, *ignored], 5.0) == pytest.approx(STEAL_AFTER)
    assert next_steal([a, b, *ignored], 5.0) == pytest.approx(STEAL_AFTER - 0.002)
    assert next_steal([a, b], 6.0) == 0.0  # overdue: at once
    assert next_steal(ignored, 5.0) is None
    assert next_steal([], 5.0) is None
