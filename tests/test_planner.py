"""Example tests of the pure planner: feed events, compare the instructions that come out.

Each test ends with ``validate_state()``, the planner's own check of its invariants.
"""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import taskvisor._planner
from taskvisor._errors import (
    CapacityError,
    CycleError,
    DependencyError,
    DuplicateTaskError,
    LockError,
    NotRunError,
    ResourceError,
    TaskCancelled,
)
from taskvisor._planner import (
    _T,
    Alarm,
    Cancel,
    Dispatch,
    Forget,
    Instruction,
    Planner,
    Settle,
    State,
    WakeAt,
    Warn,
)
from taskvisor._spec import CRITICAL, HIGH, LOW, Task

DONE, FAILED, CANCELLED, SKIPPED = State.DONE, State.FAILED, State.CANCELLED, State.SKIPPED


def noop() -> None:
    pass


def T(name: str, **meta: Any) -> Task[None]:
    return Task(noop, name=name, **meta)


def D(name: str, *parents: str) -> Dispatch:
    return Dispatch(name, parents)


def shape(out: Sequence[Instruction]) -> list[tuple[object, ...]]:
    """Instructions as comparable tuples (errors by type: they compare by identity)."""
    rows: list[tuple[object, ...]] = []
    for i in out:
        if isinstance(i, Settle):
            rows.append(("settle", i.name, i.state, type(i.error)))
        elif isinstance(i, Dispatch):
            rows.append(("dispatch", i.name, i.parents))
        elif isinstance(i, Cancel):
            rows.append(("cancel", i.name))
        elif isinstance(i, Warn):
            rows.append(("warn",))
        elif isinstance(i, WakeAt):
            rows.append(("wake", i.when))
        else:
            rows.append((type(i).__name__.lower(),))
    return rows


def only(out: Sequence[Instruction], kind: type[Instruction], name: str = "") -> Any:
    found = [i for i in out if isinstance(i, kind) and getattr(i, "name", name) == name]
    assert len(found) == 1, out
    return found[0]


def error(out: Sequence[Instruction], name: str) -> NotRunError:
    settle: Settle = only(out, Settle, name)
    assert settle.error.task == name
    return settle.error


def run_serially(p: Planner, out: list[Instruction]) -> list[Dispatch]:
    """With one slot: finish each dispatched task as DONE; each finish must start one more."""
    order: list[Dispatch] = []
    while out:
        assert len(out) == 1 and isinstance(out[0], Dispatch), out
        order.append(out[0])
        out = p.finish(out[0].name, DONE)
    return order


# ---------------------------------------------------------------- admission


def test_reserves_atasker_scenario() -> None:
    """Pool 1 + reserves 1 and 1: LOW fills the pool, NORMAL/HIGH the reserves, CRITICAL is free."""
    p = Planner(pool_size=1, reserve_normal=1, reserve_high=1)
    assert p.submit([T("L1", tier=LOW)]) == [D("L1")]
    batch = [
        T("L2", tier=LOW),
        T("N1"),
        T("N2"),
        T("H1", tier=HIGH),
        T("H2", tier=HIGH),
        T("C1", tier=CRITICAL),
    ]
    assert p.submit(batch) == [D("C1"), D("H1"), D("H2")]
    assert p.finish("C1", DONE) == []  # CRITICAL never held a slot
    assert p.finish("H1", DONE) == []  # L1 + H2 still fill pool + reserve_normal
    assert p.finish("H2", DONE) == [D("N1")]
    assert p.finish("L1", DONE) == [D("N2")]
    assert p.finish("N1", DONE) == []  # LOW may start only below pool_size
    assert p.finish("N2", DONE) == [D("L2")]
    assert p.finish("L2", DONE) == []
    assert p.live() == []
    p.validate_state()


def test_tasks_submitted_without_admission_wait_for_admit_not_for_other_events() -> None:
    """submit(admit=False) holds its ready tasks out of the tier queues: a finish in
    between admits none of them, admit() admits them all together, in tier order."""
    p = Planner(pool_size=1)
    assert p.submit([T("busy")]) == [D("busy")]
    assert p.submit([T("lo", tier=LOW)], admit=False) == []
    assert p.state("lo") is State.QUEUED
    p.validate_state()
    assert p.finish("busy", DONE) == []  # the slot is free, but lo waits for admit()
    p.validate_state()
    assert p.submit([T("hi", tier=HIGH)], admit=False) == []
    assert p.admit() == [D("hi")]
    assert p.finish("hi", DONE) == [D("lo")]
    p.validate_state()


def test_a_held_task_cancelled_before_admit() -> None:
    p = Planner(pool_size=1)
    assert p.submit([T("x")], admit=False) == []
    assert shape(p.cancel("x")) == [("settle", "x", CANCELLED, TaskCancelled)]
    assert p.admit() == []
    assert p.live() == []
    p.validate_state()


def one_heavy_at_a_time(task: Any, running: tuple[Any, ...]) -> bool:
    return not (task.name.startswith("heavy") and any(r.name.startswith("heavy") for r in running))


def test_an_admit_rule_holds_back_a_task_and_is_asked_again_when_one_ends() -> None:
    p = Planner(admit_rule=one_heavy_at_a_time)
    assert p.submit([T("heavy1")]) == [D("heavy1")]
    # heavy2 is refused; light, behind it in the same tier, is not held up by it
    assert p.submit([T("heavy2"), T("light")]) == [D("light")]
    assert p.state("heavy2") is State.QUEUED
    p.validate_state()
    assert p.finish("light", DONE) == []  # asked again: heavy1 still runs
    assert p.finish("heavy1", DONE) == [D("heavy2")]
    assert p.finish("heavy2", DONE) == []
    p.validate_state()


def test_an_admit_rule_that_raises_or_refuses_with_nothing_running_is_overruled() -> None:
    def broken(task: Any, running: tuple[Any, ...]) -> bool:
        raise ZeroDivisionError("rule bug")

    p = Planner(admit_rule=broken)
    out = p.submit([T("a")])
    assert shape(out) == [("warn",), ("dispatch", "a", ())]
    assert "raised" in only(out, Warn).message

    p = Planner(admit_rule=lambda task, running: False)
    out = p.submit([T("b")])
    assert shape(out) == [("warn",), ("dispatch", "b", ())]
    assert "nothing runs" in only(out, Warn).message
    p.validate_state()


def test_nine_task_graph_runs_in_forced_order() -> None:
    """Edges, tiers and priorities leave exactly one choice at every step with one slot.

    t4 (HIGH) beats t2 at the start; t2 beats t5 by FIFO; t5 beats t6 by FIFO while t3
    (LOW) waits for both; t1 needs t3; t7 needs t1 and t5; t9 (priority 0) beats t8
    (priority 5), both after t7.
    """
    edges: dict[str, dict[str, Any]] = {
        "t1": {"requires": {"i3"}},
        "t2": {},
        "t3": {"requires": {"i2"}, "tier": LOW},
        "t4": {"tier": HIGH},
        "t5": {"requires": {"i4"}},
        "t6": {"requires": {"i2", "i4"}},
        "t7": {"requires": {"i1", "i5"}},
        "t8": {"requires": {"i7"}, "priority": 5},
        "t9": {"requires": {"i7", "i6"}, "priority": 0},
    }
    specs = [T(n, provides={"i" + n[1:]}, **meta) for n, meta in edges.items()]
    p = Planner(pool_size=1)
    order = run_serially(p, p.submit(specs, sealed=True))
    names = [d.name for d in order]
    assert names == [f"t{k}" for k in (4, 2, 5, 6, 3, 1, 7, 9, 8)]
    position = {n: k for k, n in enumerate(names)}
    for spec in specs:
        for item in spec.requires:
            provider = f"t{str(item)[1:]}"
            assert position[provider] < position[spec.name], (spec.name, provider)
    parents = {d.name: d.parents for d in order}
    assert parents["t6"] == ("t4", "t2")  # finish order, not declaration order
    assert parents["t7"] == ("t5", "t1")
    assert parents["t9"] == ("t6", "t7")
    p.validate_state()


def test_priority_then_fifo_within_a_tier() -> None:
    p = Planner(pool_size=1)
    assert p.submit([T("blocker")]) == [D("blocker")]
    batch = [
        T("a", priority=1),
        T("b", priority=0),
        T("c", priority=1),
        T("d", priority=0),
        T("e", priority=9, tier=HIGH),  # a higher tier goes first whatever its priority
    ]
    assert p.submit(batch) == []
    out = p.finish("blocker", DONE)
    assert [d.name for d in run_serially(p, out)] == ["e", "b", "d", "a", "c"]
    p.validate_state()


def test_priority_order_holds_when_tasks_are_ready_out_of_submission_order() -> None:
    # priority-0 tasks queued in submission order wait in a FIFO, the rest in a heap:
    # a task ready late for its sequence (w waits for "go"), negative and positive
    # priorities must still come out in (priority, submission) order
    p = Planner(pool_size=1)
    assert p.submit([T("blocker")]) == [D("blocker")]
    batch = [
        T("w", requires="go"),  # seq before x and y, but queued after them
        T("x"),
        T("neg", priority=-1),
        T("y"),
        T("pos", priority=2),
    ]
    out = p.submit(batch)
    out += p.provide("go")
    out += p.finish("blocker", DONE)
    assert [d.name for d in run_serially(p, out)] == ["neg", "w", "x", "y", "pos"]
    p.validate_state()


def test_weight_takes_slots_and_capacity_error_at_once() -> None:
    p = Planner(pool_size=2, reserve_normal=1)  # LOW: 2 slots, NORMAL: 3, HIGH: 3
    out = p.submit([T("big", tier=LOW, weight=3), T("huge", tier=HIGH, weight=5)])
    assert shape(out) == [
        ("settle", "big", SKIPPED, CapacityError),
        ("settle", "huge", SKIPPED, CapacityError),
    ]
    big = error(out, "big")
    assert isinstance(big, CapacityError)
    assert (big.weight, big.limit, big.shortfall) == (3, 2, 1)
    huge = error(out, "huge")
    assert isinstance(huge, CapacityError)
    assert (huge.weight, huge.limit, huge.shortfall) == (5, 3, 2)

    assert p.submit([T("heavy", weight=3)]) == [D("heavy")]  # NORMAL reaches 3 slots
    assert p.submit([T("n1"), T("light", tier=LOW, weight=0)]) == []
    assert p.submit([T("crit", tier=CRITICAL, weight=50)]) == [D("crit")]
    assert p.finish("heavy", DONE) == [D("n1"), D("light")]
    assert p.submit([T("two", tier=LOW, weight=2)]) == []  # n1 holds 1 of LOW's 2 slots
    assert p.finish("n1", DONE) == [D("two")]
    p.validate_state()


def test_no_pool_means_no_slot_limit() -> None:
    p = Planner()
    assert p.submit([T("w", tier=LOW, weight=100), T("v", tier=LOW)]) == [D("w"), D("v")]
    p.validate_state()


def test_resource_error_at_once_and_resource_admission() -> None:
    p = Planner(resources={"gpu": 2})
    out = p.submit([T("x", resources={"gpu": 3}), T("y", resources={"tpu": 1, "gpu": 1})])
    assert shape(out) == [
        ("settle", "x", SKIPPED, ResourceError),
        ("settle", "y", SKIPPED, ResourceError),
    ]
    x = error(out, "x")
    assert isinstance(x, ResourceError) and x.shortfall == {"gpu": 1}
    y = error(out, "y")
    assert isinstance(y, ResourceError) and y.shortfall == {"tpu": 1}

    gpu = {"gpu": 1}
    out = p.submit([T("g1", resources=gpu), T("g2", resources=gpu), T("g3", resources=gpu)])
    assert out == [D("g1"), D("g2")]
    assert p.finish("g2", DONE) == [D("g3")]
    p.validate_state()


def test_zero_need_of_an_undeclared_resource_runs() -> None:
    """Declaring ``{"tpu": 0}`` without a tpu capacity needs nothing: it runs."""
    p = Planner(resources={"gpu": 1})
    assert p.submit([T("z", resources={"tpu": 0})]) == [D("z")]
    assert p.finish("z", DONE) == []
    p.validate_state()


def test_pause_holds_admission_and_resume_releases_it() -> None:
    p = Planner()
    assert p.set_paused(True) == []
    assert p.submit([T("a"), T("b", tier=CRITICAL)]) == []
    assert p.state("a") is State.QUEUED and p.state("b") is State.QUEUED
    p.validate_state()
    assert p.set_paused(False) == [D("b"), D("a")]
    p.validate_state()


def test_live_gate_holds_all_but_critical() -> None:
    p = Planner()
    assert p.set_gate(True) == []
    assert p.submit([T("a"), T("c", tier=CRITICAL)]) == [D("c")]
    assert p.set_gate(False) == [D("a")]
    p.validate_state()


# ---------------------------------------------------------------- locks


def test_claims_fifo_without_writer_starvation() -> None:
    p = Planner()
    assert p.submit([T("U1", uses={"R"})]) == [D("U1")]
    assert p.submit([T("C", claims={"R"})]) == []
    assert p.submit([T("U2", uses={"R"})]) == []  # compatible with U1, but behind C
    assert p.state("C") is State.LOCKED and p.state("U2") is State.LOCKED
    assert p.finish("U1", DONE) == [D("C")]
    assert p.finish("C", DONE) == [D("U2")]
    p.validate_state()


def test_users_share_a_resource() -> None:
    p = Planner()
    assert p.submit([T("U1", uses={"R"}), T("U2", uses={"R"}), T("C", claims={"R"})]) == [
        D("U1"),
        D("U2"),
    ]
    assert p.finish("U1", DONE) == []
    assert p.finish("U2", DONE) == [D("C")]
    p.validate_state()


def test_locks_are_taken_all_or_nothing() -> None:
    """X needs R1 and R2; R1 is free but R2 is held: X takes neither, and stays first for both."""
    p = Planner()
    assert p.submit([T("H", claims={"R2"})]) == [D("H")]
    assert p.submit([T("X", claims={"R1", "R2"})]) == []
    assert p.submit([T("Y", claims={"R1"}), T("Z", uses={"R2"})]) == []
    assert p.state("X") is State.LOCKED
    assert p.finish("H", DONE) == [D("X")]
    assert p.finish("X", DONE) == [D("Y"), D("Z")]
    p.validate_state()


def test_crossed_claims_do_not_deadlock() -> None:
    p = Planner()
    assert p.submit([T("H1", claims={"R1"}), T("H2", claims={"R2"})]) == [D("H1"), D("H2")]
    assert p.submit([T("P", claims={"R1", "R2"}), T("Q", claims={"R2", "R1"})]) == []
    assert p.finish("H1", DONE) == []
    assert p.finish("H2", DONE) == [D("P")]
    assert p.finish("P", DONE) == [D("Q")]
    p.validate_state()


def test_cancelled_claimant_does_not_block_compatible_waiters() -> None:
    """A waiting claimant stops later users; once it is cancelled, they share with the holder.

    U1 uses R (running); C claims R (waits for U1); U2 uses R (waits behind C). Cancelling C
    leaves U2 compatible with everything that holds or waits for R, so U2 starts at once.
    """
    p = Planner()
    assert p.submit([T("U1", uses={"R"})]) == [D("U1")]
    assert p.submit([T("C", claims={"R"}), T("U2", uses={"R"})]) == []
    out = p.cancel("C")
    assert shape(out) == [("settle", "C", CANCELLED, TaskCancelled), ("dispatch", "U2", ())]
    p.validate_state()


def test_skipped_claimant_does_not_block_compatible_waiters() -> None:
    """Same, when the claimant ends SKIPPED because another of its locks stays held."""
    p = Planner()
    assert p.submit([T("U1", uses={"R"}), T("K", claims={"S"})]) == [D("U1"), D("K")]
    assert p.submit([T("C", claims={"R", "S"}), T("U2", uses={"R"})]) == []
    out = p.finish("K", FAILED)  # S stays held: C can never run
    assert shape(out) == [
        ("settle", "C", SKIPPED, LockError),
        ("warn",),
        ("dispatch", "U2", ()),
    ]
    p.validate_state()


def test_failed_holder_keeps_its_lock_and_waiters_are_skipped() -> None:
    p = Planner()
    assert p.submit([T("h", claims={"R"})]) == [D("h")]
    assert p.submit([T("w", uses={"R"}), T("other")]) == [D("other")]
    out = p.finish("h", FAILED)
    assert shape(out) == [("settle", "w", SKIPPED, LockError), ("warn",)]
    err = error(out, "w")
    assert isinstance(err, LockError) and (err.resource, err.holder) == ("R", "h")
    warn: Warn = only(out, Warn)
    assert "'h'" in warn.message and "'R'" in warn.message and "stay held" in warn.message
    late = p.submit([T("late", claims={"R"})])  # settled at once, never a wait for ever
    assert shape(late) == [("settle", "late", SKIPPED, LockError)]
    p.validate_state()


def test_failed_users_keep_shared_locks() -> None:
    """Failed users keep R shared: later users still run, claimants are skipped."""
    p = Planner()
    assert p.submit([T("u1", uses={"R"}), T("u2", uses={"R"})]) == [D("u1"), D("u2")]
    assert shape(p.finish("u1", FAILED)) == [("warn",)]
    assert shape(p.finish("u2", FAILED)) == [("warn",)]
    p.validate_state()  # two failed holders of one resource are both legitimately stuck
    assert p.submit([T("u3", uses={"R"})]) == [D("u3")]
    out = p.submit([T("c", claims={"R"})])
    err = error(out, "c")
    assert isinstance(err, LockError) and err.resource == "R" and err.holder in ("u1", "u2")
    p.validate_state()


# ---------------------------------------------------------------- dependencies and failure


def test_failed_provider_skips_dependents_transitively() -> None:
    p = Planner()
    batch = [
        T("p", provides={"x"}),
        T("c", requires={"x"}, provides={"y"}),
        T("g", requires={"y"}),
    ]
    assert p.submit(batch, sealed=True) == [D("p")]
    out = p.finish("p", FAILED)
    assert shape(out) == [
        ("settle", "c", SKIPPED, DependencyError),
        ("settle", "g", SKIPPED, DependencyError),
        ("warn",),
    ]
    c = error(out, "c")
    assert isinstance(c, DependencyError)
    assert (c.failed, c.missing, c.root) == (("p",), (), None)
    g = error(out, "g")
    assert isinstance(g, DependencyError)
    assert (g.failed, g.root) == (("c",), "p")
    assert "2 dependent task(s) skipped" in only(out, Warn).message
    # a task submitted later that needs the dead item is skipped at once
    late = error(p.submit([T("late", requires={"x"})]), "late")
    assert isinstance(late, DependencyError) and late.failed == ("p",)
    p.validate_state()


def test_controlled_failure_deps_ok_lets_the_child_run() -> None:
    p = Planner()
    assert p.submit([T("p", provides={"x"}), T("c", requires={"x"})]) == [D("p")]
    assert p.finish("p", FAILED, deps_ok=True) == [D("c", "p")]
    p.validate_state()


def test_controlled_failure_locks_ok_releases_locks() -> None:
    p = Planner()
    assert p.submit([T("h", claims={"R"}, provides={"x"})]) == [D("h")]
    assert p.submit([T("w", claims={"R"}), T("c", requires={"x"})]) == []
    out = p.finish("h", FAILED, locks_ok=True)  # locks released, provides not
    assert shape(out) == [
        ("settle", "c", SKIPPED, DependencyError),
        ("warn",),
        ("dispatch", "w", ()),
    ]
    assert "stay held" not in only(out, Warn).message
    p.validate_state()


def test_cycle_raises_and_submits_nothing() -> None:
    p = Planner()
    batch = [T("a", requires={"x"}, provides={"y"}), T("b", requires={"y"}, provides={"x"})]
    with pytest.raises(CycleError) as info:
        p.submit(batch)
    cycle = info.value.cycle
    assert cycle[0] == cycle[-1] and set(cycle) == {"a", "b"}
    by_name = {s.name: s for s in batch}
    for waiter, provider in itertools.pairwise(cycle):
        assert by_name[waiter].requires & by_name[provider].provides
    assert p.live() == [] and "a" not in p and "b" not in p
    assert p.submit([T("a")]) == [D("a")]  # the names were not taken
    p.validate_state()


def test_cycle_through_an_older_task() -> None:
    p = Planner()
    assert p.submit([T("a", requires={"x"}, provides={"y"})]) == []
    with pytest.raises(CycleError) as info:
        p.submit([T("b", requires={"y"}, provides={"x"})])
    assert set(info.value.cycle) == {"a", "b"}
    assert p.live() == ["a"] and "b" not in p and p.state("a") is State.WAITING
    p.validate_state()


def test_self_cycle() -> None:
    p = Planner()
    with pytest.raises(CycleError) as info:
        p.submit([T("a", requires={"x"}, provides={"x"})])
    assert info.value.cycle == ("a", "a")
    assert p.live() == []
    p.validate_state()


def test_cycle_found_whatever_the_batch_order() -> None:
    # a batch written parents-first takes the one-pass order check; any other order, and
    # a cycle hidden behind an acyclic prefix, go through the full search
    chain = [Task(noop, name="c0")]
    for i in range(1, 4):
        chain.append(Task(noop, (chain[-1].output,), name=f"c{i}"))
    p = Planner()
    assert p.submit(list(reversed(chain))) == [D("c0")]
    p.validate_state()
    p = Planner()
    batch = [
        T("ok0", provides={"a"}),
        T("ok1", requires={"a"}),
        T("x", requires={"q"}, provides={"p"}),
        T("y", requires={"p"}, provides={"q"}),
    ]
    with pytest.raises(CycleError) as info:
        p.submit(batch)
    assert set(info.value.cycle) == {"x", "y"}
    assert p.live() == []
    p = Planner()
    assert p.submit(batch[:2]) == [D("ok0")]
    p.validate_state()


def test_failed_parents_are_named_in_the_order_they_failed() -> None:
    # the dependency items of a task iterate in hash order; the error must not
    parents = [Task(noop, name=f"f{i}") for i in range(6)]
    p = Planner()
    p.submit(parents)
    order = ["f3", "f0", "f5", "f1", "f4", "f2"]
    for name in order:
        p.finish(name, FAILED)
    child = Task(noop, tuple(t.output for t in parents), name="child")
    err = error(p.submit([child]), "child")
    assert isinstance(err, DependencyError)
    assert list(err.failed) == order
    p.validate_state()


def test_sealed_batch_settles_what_nobody_provides_at_once() -> None:
    p = Planner()
    out = p.submit([T("c", requires={"nope"}), T("ok")], sealed=True)
    assert shape(out) == [("settle", "c", SKIPPED, DependencyError), ("dispatch", "ok", ())]
    err = error(out, "c")
    assert isinstance(err, DependencyError)
    assert (err.missing, err.failed) == (("nope",), ())
    assert "'nope'" in str(err)
    p.validate_state()


def test_unsealed_submit_waits_for_a_later_provider() -> None:
    p = Planner()
    assert p.submit([T("c", requires={"x"})]) == []
    assert p.state("c") is State.WAITING
    assert p.submit([T("p", provides={"x"})]) == [D("p")]
    assert p.finish("p", DONE) == [D("c", "p")]
    p.validate_state()


def test_settle_waiting_settles_with_dependency_error() -> None:
    p = Planner()
    assert p.submit([T("c", requires={"x", "y"})]) == []
    out = p.settle_waiting()
    assert shape(out) == [("settle", "c", SKIPPED, DependencyError)]
    err = error(out, "c")
    assert isinstance(err, DependencyError) and err.missing == ("x", "y")
    assert p.live() == []
    p.validate_state()


def test_provide_unblocks() -> None:
    p = Planner()
    assert p.submit([T("c", requires={"db"})]) == []
    assert p.provide("db") == [D("c")]  # provided from outside: no parent
    assert p.submit([T("d", requires={"db"})], sealed=True) == [D("d")]
    p.validate_state()


def test_duplicate_names_raise_and_change_nothing() -> None:
    p = Planner()
    with pytest.raises(DuplicateTaskError) as info:
        p.submit([T("a"), T("a")])
    assert info.value.name == "a" and p.live() == [] and "a" not in p
    assert p.submit([T("a")]) == [D("a")]
    with pytest.raises(DuplicateTaskError):
        p.submit([T("b"), T("a")])
    assert "b" not in p and p.live() == ["a"]
    p.validate_state()


def test_parents_come_in_finish_order() -> None:
    p = Planner()
    batch = [T(f"p{k}", provides={f"i{k}"}) for k in (1, 2, 3)]
    batch.append(T("child", requires={"i1", "i2", "i3"}))
    assert p.submit(batch) == [D("p1"), D("p2"), D("p3")]
    assert p.finish("p3", DONE) == []
    assert p.finish("p1", DONE) == []
    assert p.finish("p2", DONE) == [D("child", "p3", "p1", "p2")]
    p.validate_state()


# ---------------------------------------------------------------- time


def test_delay_wakes_at_its_due_time() -> None:
    p = Planner(pool_size=1)
    out = p.submit([T("d", delay=5), T("n")], now=0.0)
    assert out == [WakeAt(5.0), D("n")]  # the delay holds no slot
    assert p.state("d") is State.DELAYED
    assert p.finish("n", DONE, now=1.0) == []
    assert p.tick(4.0) == [WakeAt(5.0)]
    assert p.tick(5.0) == [D("d")]
    p.validate_state()


def test_delay_counts_from_submission() -> None:
    p = Planner()
    assert p.submit([T("p", provides={"x"}), T("c", requires={"x"}, delay=2)], now=0.0) == [D("p")]
    assert p.finish("p", DONE, now=3.0) == [D("c", "p")]  # due at 2, ready at 3: runs now
    p.validate_state()


def test_wait_alarms_fire_once_per_task_and_level() -> None:
    p = Planner(pool_size=1, wait_warning=2, wait_critical=5)
    out = p.submit([T("a"), T("b"), T("c", tier=CRITICAL)], now=0.0)
    assert out == [D("c"), D("a"), WakeAt(2.0)]  # b queues behind a; c needs no slot
    assert p.tick(2.5) == [Alarm("b", "warning", 2.5), WakeAt(5.0)]
    assert p.tick(2.6) == [WakeAt(5.0)]  # once per task and level
    assert p.finish("a", DONE, now=3.0) == [D("b")]
    assert p.tick(5.0) == []  # b was admitted before its critical alarm was due
    p.validate_state()


def test_alarm_counts_from_entering_the_queue_not_from_submission() -> None:
    p = Planner(pool_size=1, wait_warning=2)
    assert p.submit([T("a", provides={"x"}), T("b", requires={"x"})], now=0.0) == [D("a")]
    assert p.finish("a", DONE, now=10.0) == [D("b", "a")]
    assert p.submit([T("c")], now=10.0) == [WakeAt(12.0)]
    assert p.tick(12.0) == [Alarm("c", "warning", 2.0)]
    p.validate_state()


def test_keep_slot_holds_admission_until_release() -> None:
    """An abandoned thread still runs: its slot stays busy after the task ended."""
    p = Planner(pool_size=1, resources={"gpu": 1})
    assert p.submit([T("a", resources={"gpu": 1}), T("b")]) == [D("a")]
    assert p.finish("a", FAILED, keep_slot=True) == []
    assert p.state("a") is FAILED and p.busy == 1 and p.used["gpu"] == 1
    p.validate_state()
    assert p.release("a") == [D("b")]
    assert p.busy == 1 and p.used["gpu"] == 0
    p.validate_state()


def test_keep_ended_forgets_old_tasks_once_nothing_needs_them() -> None:
    p = Planner(pool_size=1, keep_ended=1)
    a = T("a")
    out = p.submit([a, T("b", args=(a.output,)), T("c")])
    assert out == [D("a")]
    assert p.finish("a", DONE) == [D("b", "a")]
    assert "a" in p  # the window still holds it
    out = p.finish("b", DONE)  # a leaves the window; b consumed it already
    assert out == [Forget(("a",)), D("c")] or out == [D("c"), Forget(("a",))]
    assert "a" not in p and "b" in p
    assert p.submit([T("a")]) == []  # a forgotten name may be reused
    p.validate_state()


def test_a_forgotten_task_waits_for_its_consumers() -> None:
    p = Planner(pool_size=1, keep_ended=0)
    a = T("a")
    assert p.submit([a, T("blocker")]) == [D("a")]
    assert p.submit([T("b", args=(a.output,))]) == []
    assert p.finish("a", DONE) == [D("blocker")]
    assert "a" in p  # ended and past the window, but b has not been dispatched yet
    out = p.finish("blocker", DONE)
    assert out == [D("b", "a"), Forget(("blocker", "a"))]
    assert "a" not in p
    p.validate_state()


def test_instructions_carry_the_records_of_tasks_the_planner_forgot_meanwhile() -> None:
    """``Dispatch(b)`` carries b's record and its parents' (a's, forgotten in that same
    call), ``Settle`` and ``Cancel`` their task's; records are not compared. With
    ``forgets=False`` (the supervisor, which reads ``tasks``) no ``Forget`` is emitted."""
    p = Planner(pool_size=1, keep_ended=0, forgets=False)
    a = T("a")
    assert p.submit([a, T("blocker")]) == [D("a")]
    assert p.submit([T("b", args=(a.output,)), T("never", requires={"x"}), T("c")]) == []
    rec_a, rec_b = p.tasks["a"], p.tasks["b"]
    p.finish("a", DONE)
    (dispatch,) = p.finish("blocker", DONE)
    assert dispatch == D("b", "a") and "a" not in p and "a" not in p.tasks
    assert isinstance(dispatch, Dispatch)
    assert dispatch.task is rec_b and dispatch.parent_tasks == (rec_a,)
    rec_never = p.tasks["never"]
    (settle,) = p.cancel("never", "stop")
    assert isinstance(settle, Settle) and settle.task is rec_never
    assert "never" not in p  # forgotten in the call that settled it: the record travels
    (cancel,) = p.cancel("b", "stop")
    assert cancel == Cancel("b", "stop") and isinstance(cancel, Cancel)
    assert cancel.task is rec_b
    p.validate_state()


def test_tasks_that_provide_items_are_kept() -> None:
    p = Planner(keep_ended=0)
    assert p.submit([T("a", provides={"x"})]) == [D("a")]
    assert p.finish("a", DONE) == []
    assert "a" in p
    assert p.submit([T("b", requires={"x"})]) == [D("b", "a")]
    p.validate_state()


def test_a_pinned_task_stays_past_the_window_until_unpinned() -> None:
    p = Planner(keep_ended=0)
    assert p.submit([T("a")], pinned=True) == [D("a")]
    assert p.finish("a", DONE) == []
    assert "a" in p  # past the window, but a handle holds it: its name stays taken
    with pytest.raises(DuplicateTaskError):
        p.submit([T("a")])
    assert p.unpin(["a", "unknown"]) == [Forget(("a",))]
    assert "a" not in p and p.unpin(["a"]) == []
    p.validate_state()


def test_the_name_of_an_ended_task_nothing_needs_may_be_reused_at_once() -> None:
    p = Planner(pool_size=1, keep_ended=10)
    a = T("a")
    assert p.submit([a, T("blocker")]) == [D("a")]
    assert p.submit([T("b", args=(a.output,))]) == []
    assert p.finish("a", DONE) == [D("blocker")]
    with pytest.raises(DuplicateTaskError):
        p.submit([T("a")])  # b (queued) has not read a's result yet
    assert p.finish("blocker", DONE) == [D("b", "a")]
    assert p.submit([T("a")]) == []  # reused: the old a is dropped silently (no Forget)
    assert p.state("a") is State.QUEUED and p.stats.by_state[DONE] == 2
    p.validate_state()


def test_resources_another_executor_owns_are_not_counted_here() -> None:
    """``elsewhere``: a runs_on name whose executor owns its tasks' resources (a Dask
    cluster): the planner's capacity does not count them; the executor's shortfall is the
    ResourceError."""
    p = Planner(pool_size=1, resources={"GPU": 1})
    p.elsewhere["dask"] = lambda spec: (
        {"GPU": spec.resources["GPU"] - 4} if spec.resources["GPU"] > 4 else {}
    )
    out = p.submit(
        [
            T("far", runs_on="dask", resources={"GPU": 4}, weight=0),
            T("near", resources={"GPU": 1}),
            T("never", runs_on="dask", resources={"GPU": 6}),
        ]
    )
    assert sorted(shape(out), key=str) == sorted(
        [
            ("dispatch", "far", ()),
            ("dispatch", "near", ()),
            ("settle", "never", SKIPPED, ResourceError),
        ],
        key=str,
    )
    assert p.used == {"GPU": 1.0}  # only the local task's
    assert p.finish("far", DONE) == [] and p.finish("near", DONE) == []
    assert p.used == {"GPU": 0.0}
    p.validate_state()


@pytest.mark.parametrize("why", ["pinned", "provides", "holds", "keep_everything"])
def test_what_keeps_an_ended_tasks_name_taken(why: str) -> None:
    p = Planner(keep_ended=None if why == "keep_everything" else 10)
    meta = {"provides": {"x"}} if why == "provides" else {}
    assert p.submit([T("a", **meta)], pinned=why == "pinned") == [D("a")]
    assert p.finish("a", FAILED, keep_slot=why == "holds") == []
    with pytest.raises(DuplicateTaskError):
        p.submit([T("a")])
    p.validate_state()


# ---------------------------------------------------------------- cancellation


def test_cancel_queued_task_settles_it_and_skips_dependents() -> None:
    p = Planner(pool_size=1)
    assert p.submit([T("b")]) == [D("b")]
    assert p.submit([T("q", provides={"x"}), T("c", requires={"x"})]) == []
    out = p.cancel("q", "not needed")
    assert shape(out) == [
        ("settle", "q", CANCELLED, TaskCancelled),
        ("settle", "c", SKIPPED, DependencyError),
    ]
    assert "not needed" in str(error(out, "q"))
    c = error(out, "c")
    assert isinstance(c, DependencyError) and c.failed == ("q",)
    assert p.cancel("q") == []  # cancelling an ended task does nothing
    p.validate_state()


def test_cancel_running_task_asks_to_stop_it() -> None:
    p = Planner()
    assert p.submit([T("r", claims={"R"}, provides={"x"})]) == [D("r")]
    assert p.submit([T("w", claims={"R"}), T("c", requires={"x"})]) == []
    assert p.cancel("r", "stop") == [Cancel("r", "stop")]
    assert p.state("r") is State.RUNNING
    out = p.finish("r", CANCELLED)  # locks released, nothing provided, no Warn
    assert shape(out) == [("settle", "c", SKIPPED, DependencyError), ("dispatch", "w", ())]
    p.validate_state()


def test_fail_fast_cancels_the_rest_on_the_first_failure() -> None:
    p = Planner(pool_size=2, fail_fast=True)
    batch = [T("a", provides={"x"}), T("b"), T("c"), T("d", requires={"x"})]
    assert p.submit(batch) == [D("a"), D("b")]
    out = p.finish("a", FAILED)
    assert shape(out) == [
        ("settle", "d", SKIPPED, DependencyError),
        ("warn",),
        ("cancel", "b"),
        ("settle", "c", CANCELLED, TaskCancelled),
    ]
    assert p.finish("b", CANCELLED) == []
    assert p.live() == []
    p.validate_state()


def test_cancel_all_then_settle_waiting_ends_everything_once() -> None:
    p = Planner(pool_size=1)
    batch = [T("run"), T("queued"), T("waiting", requires={"never"})]
    assert p.submit(batch) == [D("run")]
    out = p.cancel_all("closing")
    assert shape(out) == [
        ("cancel", "run"),
        ("settle", "queued", CANCELLED, TaskCancelled),
        ("settle", "waiting", CANCELLED, TaskCancelled),
    ]
    assert p.finish("run", CANCELLED) == []
    assert p.settle_waiting() == []
    assert p.live() == []
    p.validate_state()


# ---------------------------------------------------------------- purity

_BANNED_RUNTIME = ("asyncio", "threading", "psutil", "uvloop", "concurrent.futures", "selectors")


def test_planner_imports_no_runtime_in_a_fresh_interpreter() -> None:
    """Import the planner without the package ``__init__`` (which pulls in asyncio)."""
    pkg_dir = Path(taskvisor._planner.__file__).resolve().parent
    banned = [*_BANNED_RUNTIME, "datetime"]
    code = "\n".join(
        [
            "import sys, types",
            'pkg = types.ModuleType("taskvisor")',
            f"pkg.__path__ = [{str(pkg_dir)!r}]",
            'sys.modules["taskvisor"] = pkg',
            "import taskvisor._planner",
            f"print(','.join(m for m in {banned!r} if m in sys.modules))",
        ]
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"the planner loaded {done.stdout.strip()}"


@pytest.mark.parametrize("module", ["_planner.py", "_spec.py", "_errors.py"])
def test_pure_modules_import_no_runtime_or_clock(module: str) -> None:
    path = Path(taskvisor._planner.__file__).resolve().parent / module
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module)
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
    banned = ("asyncio", "threading", "psutil", "uvloop", "time", "datetime")
    bad = sorted(m for m in imported if m in banned or m.split(".")[0] in banned)
    assert not bad, f"{module} imports {bad}"


def test_an_abandoned_cancelled_task_keeps_its_locks_until_release() -> None:
    """A cancelled thread that still runs must not share its claimed resource."""
    p = Planner()
    assert p.submit([T("a", claims={"db"}), T("b", claims={"db"})]) == [D("a")]
    assert shape(p.cancel("a")) == [("cancel", "a")]
    assert p.finish("a", CANCELLED, keep_slot=True) == []
    assert p.state("b") is State.LOCKED
    p.validate_state()
    assert p.release("a") == [D("b")]
    p.validate_state()


def test_a_batchs_records_are_numbered_one_after_another() -> None:
    """``gather`` puts each result where its record's number says (``Countdown``)."""
    p = Planner()
    p.submit([T("x")])
    p.finish("x", DONE)
    records = [_T(T(f"b{i}"), 0) for i in range(5)]
    p.submit([r.spec for r in records], records=records)
    first = records[0].seq
    assert [r.seq for r in records] == list(range(first, first + 5))
