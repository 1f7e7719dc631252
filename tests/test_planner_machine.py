"""A hypothesis state machine over the pure planner.

Random batches are submitted (sealed or not, sometimes closing a cycle or reusing a name),
running tasks finish (done, failed, controlled failure, cancelled), tasks are cancelled,
items provided, admission paused or gated and the clock moved. An independent model reads
every instruction the planner returns and checks it against the design
(``/work/shared/design.md``, Semantics), and invariants run after every step:

- no task is dispatched before every item it requires has been provided (by a task that
  succeeded, failed with ``deps_ok``, or by ``provide``), nor before its delay ran out;
- an exclusive holder never overlaps another holder of its resource, failed holders keep
  their locks for ever unless ``locks_ok``, and a lock waiter is never overtaken by a
  conflicting task that came later, nor left waiting when nothing conflicts with it;
- admission keeps tier order, then priority, then FIFO, within slots and resources, and is
  maximal: after a step no tier's head would fit;
- every skip and cancellation has a valid reason, nothing waits for what can never come,
  no accepted graph has a cycle, and every task ends exactly once (checked at teardown
  after ``cancel_all`` and ``settle_waiting``); ``validate_state()`` holds throughout.
"""

from __future__ import annotations

import graphlib
import itertools
import sys
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from taskvisor._errors import (
    CapacityError,
    CycleError,
    DependencyError,
    DuplicateTaskError,
    LockError,
    ResourceError,
    TaskCancelled,
)
from taskvisor._planner import (
    Alarm,
    Cancel,
    Dispatch,
    Instruction,
    Planner,
    Settle,
    State,
    WakeAt,
    Warn,
)
from taskvisor._spec import Task, Tier


def noop() -> None:
    pass


ITEMS = ("a", "b", "c", "d", "e")
RESOURCES = ("R1", "R2")
TIERS_DOWN = (Tier.CRITICAL, Tier.HIGH, Tier.NORMAL, Tier.LOW)
PENDING = frozenset({State.WAITING, State.DELAYED, State.LOCKED, State.QUEUED})


@dataclass(frozen=True)
class Draft:
    """A task to build, without its name (names are handed out by the machine)."""

    requires: frozenset[str]
    provides: frozenset[str]
    modes: tuple[str, str]  # per resource of RESOURCES: "", "claim" or "use"
    tier: Tier
    priority: float
    weight: int
    gpu: int | None
    delay: float
    self_loop: bool  # keep an item in both requires and provides (a self-cycle)


# Each field is one draw from a short list whose first entry is the simplest: few draws per
# task keep generation and, above all, shrinking fast.
_SETS = [frozenset(c) for n in (0, 1, 2) for c in itertools.combinations(ITEMS, n)]
_MODES = [(a, b) for a in ("", "claim", "use") for b in ("", "claim", "use")]
drafts = st.builds(
    Draft,
    requires=st.sampled_from([frozenset()] * 25 + _SETS),
    provides=st.sampled_from(_SETS),
    modes=st.sampled_from(_MODES),
    tier=st.sampled_from((Tier.NORMAL, Tier.LOW, Tier.HIGH, Tier.CRITICAL)),
    priority=st.sampled_from((0.0, 0.0, 1.0, -1.0, 2.5)),
    weight=st.sampled_from((1, 0, 2)),
    gpu=st.sampled_from((None,) * 9 + (1, 1, 0, 3)),
    delay=st.sampled_from((0.0,) * 4 + (1.0, 2.0)),
    self_loop=st.sampled_from((False,) * 9 + (True,)),
)


@dataclass
class Rec:
    """The model's record of one submitted task."""

    spec: Task[None]
    seq: int
    sealed: bool
    due: float
    phase: str = "pending"  # pending -> running -> ended, or pending -> ended
    end: State | None = None
    ends: int = 0  # terminal events seen: must end at exactly 1
    order: int = -1  # finish order (for Dispatch.parents)
    provided: bool = False  # its provides were satisfied when it ended
    stuck: bool = False  # FAILED holding its locks for ever
    cancel_pending: bool = False
    joined: int | None = None  # the step it reached the lock tables (left WAITING/DELAYED)


@dataclass
class Step:
    """What the event just fed to the planner allows it to answer."""

    kind: str  # the event, for reading a failure
    batch: frozenset[str] = frozenset()
    sealed: bool = False
    cancelling: frozenset[str] = frozenset()
    settle_waiting: bool = False
    failed: bool = False  # a finish(FAILED)
    stuck: bool = False  # ... that kept locks


def conflict(a: Task[None], b: Task[None]) -> Hashable | None:
    """A resource both lock, at least one of them exclusively (None: compatible)."""
    for r in sorted((a.claims | a.uses) & (b.claims | b.uses), key=repr):
        if r in a.claims or r in b.claims:
            return r
    return None


# A passing run takes about 15-25 s on two cores. A failing one then shrinks its example,
# which Hypothesis caps at five minutes: the per-test timeout leaves room for that, so a
# failure is reported as a minimal falsifying example rather than as a timeout.
pytestmark = pytest.mark.timeout(420)


@settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    # Shrinking is the slow part of a failing run: shrink one failure at a time, and skip the
    # explain phase, whose line tracing makes every shrinking step several times slower.
    report_multiple_bugs=False,
    phases=[phase for phase in Phase if phase is not Phase.explain],
    suppress_health_check=[HealthCheck.too_slow],
)
class PlannerMachine(RuleBasedStateMachine):
    """Drives one Planner and a model of what it must have done (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.planner: Planner | None = None
        self.recs: dict[str, Rec] = {}
        self.provided: dict[str, str | None] = {}  # item -> who satisfied it first
        self.names = 0
        self.order = 0
        self.now = 0.0
        self.wakes: set[float] = set()
        self.busy = 0
        self.used: dict[str, float] = {}
        self.paused = False
        # QUEUED by submit(admit=False) and not admitted since: out of the tier queues
        # until the admit rule (the supervisor's end-of-turn admission)
        self.held: set[str] = set()
        self.gate = False
        self.failed_once = False
        self.fail_fast = False
        self.pool = 0
        self.capacity: dict[str, float] = {}
        self.limits: dict[Tier, int] = {}
        self.last_parents: dict[str, tuple[str, ...]] = {}
        self.steps = 0
        # wait alarms: level -> seconds; when each task was first seen QUEUED; the
        # (task, level) alarms issued so far
        self.alarm_after: dict[str, float] = {}
        self.queued_at: dict[str, float] = {}
        self.alarmed: set[tuple[str, str]] = set()

    # ------------------------------------------------------------ set-up

    @initialize(
        pool_size=st.integers(0, 3),
        reserve_normal=st.integers(0, 2),
        reserve_high=st.integers(0, 2),
        capacity=st.sampled_from((None, {"gpu": 2.0}, {"gpu": 2.0}, {"gpu": 1.0}, {"cpu": 4.0})),
        fail_fast=st.sampled_from((False,) * 7 + (True,)),
        wait_warning=st.sampled_from((None, None, 0.5, 1.0)),
        wait_critical=st.sampled_from((None, None, 2.0)),
    )
    def init_planner(
        self,
        pool_size: int,
        reserve_normal: int,
        reserve_high: int,
        capacity: dict[str, float] | None,
        fail_fast: bool,
        wait_warning: float | None,
        wait_critical: float | None,
    ) -> None:
        self.planner = Planner(
            pool_size=pool_size,
            reserve_normal=reserve_normal,
            reserve_high=reserve_high,
            resources=capacity,
            fail_fast=fail_fast,
            wait_warning=wait_warning,
            wait_critical=wait_critical,
        )
        for level, after in (("warning", wait_warning), ("critical", wait_critical)):
            if after is not None:
                self.alarm_after[level] = after
        self.capacity = dict(capacity or {})
        self.used = dict.fromkeys(self.capacity, 0.0)
        self.fail_fast = fail_fast
        self.pool = pool_size
        self.limits = {
            Tier.LOW: pool_size,
            Tier.NORMAL: pool_size + reserve_normal,
            Tier.HIGH: pool_size + reserve_normal + reserve_high,
        }

    @property
    def p(self) -> Planner:
        assert self.planner is not None
        return self.planner

    # ------------------------------------------------------------ model helpers

    def limit(self, tier: Tier) -> int | None:
        if tier is Tier.CRITICAL or self.pool == 0:
            return None
        return self.limits[tier]

    def fits(self, spec: Task[None], busy: int, used: dict[str, float]) -> bool:
        if spec.tier is not Tier.CRITICAL:
            if self.gate:
                return False
            limit = self.limit(spec.tier)
            if limit is not None and busy + spec.weight > limit:
                return False
        return all(
            used.get(k, 0.0) + v <= self.capacity.get(k, 0.0) for k, v in spec.resources.items()
        )

    def live(self) -> list[str]:
        return [
            n for n, r in sorted(self.recs.items(), key=lambda x: x[1].seq) if r.phase != "ended"
        ]

    def holders(self) -> list[Rec]:
        """Tasks holding their locks now: running ones and failed ones that keep them."""
        return [r for r in self.recs.values() if r.phase == "running" or r.stuck]

    def live_providers(self, item: str) -> list[Rec]:
        return [r for r in self.recs.values() if r.phase != "ended" and item in r.spec.provides]

    def lost_providers(self, item: str) -> list[Rec]:
        """Providers of ``item`` that ended without providing it."""
        return [
            r
            for r in self.recs.values()
            if r.phase == "ended" and not r.provided and item in r.spec.provides
        ]

    def dead(self, item: str) -> bool:
        return (
            item not in self.provided
            and not self.live_providers(item)
            and bool(self.lost_providers(item))
        )

    def unmet(self, spec: Task[None]) -> list[str]:
        return sorted(str(i) for i in spec.requires if i not in self.provided)

    def satisfy(self, items: Iterable[str], by: str | None) -> None:
        for item in items:
            self.provided.setdefault(item, by)

    def graph_edges(self, extra: Sequence[Task[None]] = ()) -> dict[str, set[str]]:
        """Task -> the not-ended tasks that could provide an item it still waits for."""
        specs = {n: self.recs[n].spec for n in self.live()}
        specs.update((s.name, s) for s in extra)
        edges: dict[str, set[str]] = {n: set() for n in specs}
        for n, s in specs.items():
            for i in s.requires:
                if i in self.provided:
                    continue
                edges[n].update(m for m, t in specs.items() if i in t.provides)
        return edges

    def states(self) -> dict[str, State]:
        return {n: self.p.state(n) for n in self.recs}

    # ------------------------------------------------------------ feeding instructions

    def feed(self, step: Step, out: list[Instruction]) -> None:
        """Apply the planner's answer to the model, checking each instruction."""
        first_dispatch = next((k for k, i in enumerate(out) if isinstance(i, Dispatch)), len(out))
        dispatched = [i.name for i in out[first_dispatch:] if isinstance(i, Dispatch)]
        # only dispatches close a step, and the alarms armed for what they left queued
        tail = [i for i in out[first_dispatch:] if not isinstance(i, Dispatch)]
        assert all(isinstance(i, (Alarm, WakeAt)) for i in tail), f"{tail} after a dispatch"
        for ins in [*out[:first_dispatch], *tail]:
            if isinstance(ins, Settle):
                self.on_settle(step, ins)
            elif isinstance(ins, Cancel):
                rec = self.recs[ins.name]
                assert rec.phase == "running", f"Cancel of {ins.name} in phase {rec.phase}"
                assert ins.name in step.cancelling, f"unasked Cancel {ins}"
                rec.cancel_pending = True
            elif isinstance(ins, WakeAt):
                assert ins.when > self.now, f"{ins} is not in the future (now={self.now})"
                self.wakes.add(ins.when)
            elif isinstance(ins, Alarm):
                self.on_alarm(ins)
            else:
                assert isinstance(ins, Warn)
                assert step.failed, f"Warn outside a failure: {ins}"
        self.check_warn(step, out[:first_dispatch])
        self.check_admission(dispatched)
        for name in dispatched:
            self.on_dispatch(name)

    def on_alarm(self, ins: Alarm) -> None:
        """A wait alarm: once per task and level, for a task still waiting for admission
        since it was queued, at least the level's seconds ago, telling exactly how long."""
        key = (ins.name, ins.level)
        assert ins.level in self.alarm_after, f"{ins}: no such alarm level configured"
        assert key not in self.alarmed, f"{ins}: issued twice"
        assert self.recs[ins.name].phase == "pending", f"{ins} for a task no longer waiting"
        assert ins.name in self.queued_at, f"{ins} for a task never seen QUEUED"
        waited = self.now - self.queued_at[ins.name]
        assert ins.waited == waited, f"{ins}: it has waited {waited}"
        assert waited >= self.alarm_after[ins.level], f"{ins} before its time"
        self.alarmed.add(key)

    def on_settle(self, step: Step, ins: Settle) -> None:
        rec = self.recs[ins.name]
        spec = rec.spec
        err = ins.error
        assert err.task == ins.name
        assert rec.phase == "pending", f"Settle of {ins.name} in phase {rec.phase}: {ins}"
        if ins.state is State.CANCELLED:
            assert isinstance(err, TaskCancelled), ins
            assert ins.name in step.cancelling, f"unasked cancellation {ins}"
        else:
            assert ins.state is State.SKIPPED, ins
            if isinstance(err, DependencyError):
                self.check_dependency_error(step, rec, err)
            elif isinstance(err, LockError):
                holder = self.recs[err.holder]
                assert err.resource in spec.claims | spec.uses, err
                assert holder.stuck and err.resource in holder.spec.claims | holder.spec.uses, err
                assert err.resource in spec.claims or err.resource in holder.spec.claims, err
            elif isinstance(err, CapacityError):
                limit = self.limit(spec.tier)
                assert ins.name in step.batch, f"CapacityError not at submission: {ins}"
                assert limit is not None and spec.weight > limit, err
                assert (err.weight, err.limit, err.shortfall) == (
                    spec.weight,
                    limit,
                    spec.weight - limit,
                )
            elif isinstance(err, ResourceError):
                assert ins.name in step.batch, f"ResourceError not at submission: {ins}"
                short = {
                    k: v - self.capacity.get(k, 0.0)
                    for k, v in spec.resources.items()
                    if v > self.capacity.get(k, 0.0)
                }
                assert short and err.shortfall == short, (err.shortfall, short)
            else:
                raise AssertionError(f"unexpected error in {ins}")
        rec.phase = "ended"
        rec.end = ins.state
        rec.ends += 1
        rec.order = self.order
        self.order += 1

    def check_dependency_error(self, step: Step, rec: Rec, err: DependencyError) -> None:
        unmet = self.unmet(rec.spec)
        assert unmet, f"{err.task} skipped though every requirement is met: {err}"
        if step.settle_waiting and err.missing:
            assert sorted(map(str, err.missing)) == unmet, err
            return
        dead = [i for i in unmet if self.dead(i)]
        lost = {r.spec.name for i in dead for r in self.lost_providers(i)}
        assert set(err.failed) <= lost, f"{err}: failed {err.failed} not in {lost}"
        if err.missing:
            assert step.sealed and err.task in step.batch, f"{err}: missing outside a sealed batch"
            for i in err.missing:
                assert i in unmet and not self.live_providers(str(i)), err
                assert not self.lost_providers(str(i)), err
        else:
            assert dead and err.failed, f"{err.task} skipped, but no requirement is dead: {err}"

    def check_warn(self, step: Step, out: Sequence[Instruction]) -> None:
        warns = [k for k, i in enumerate(out) if isinstance(i, Warn)]
        assert len(warns) <= 1, out
        if not step.failed:
            assert not warns, out
            return
        cancels = [
            k
            for k, i in enumerate(out)
            if isinstance(i, Cancel) or (isinstance(i, Settle) and i.state is State.CANCELLED)
        ]
        cut = warns[0] if warns else (cancels[0] if cancels else len(out))
        skipped = sum(isinstance(i, Settle) and i.state is State.SKIPPED for i in out[:cut])
        assert bool(warns) == bool(skipped or step.stuck), (
            f"Warn expected={bool(skipped or step.stuck)}: {out}"
        )
        if warns:
            msg = out[warns[0]]
            assert isinstance(msg, Warn)
            # skips counted by cause: a lost dependency, or a lock the failed task still holds
            skips = [i for i in out[:cut] if isinstance(i, Settle) and i.state is State.SKIPPED]
            by_lock = sum(isinstance(i.error, LockError) for i in skips)
            by_dep = len(skips) - by_lock
            assert (f"{by_dep} dependent task(s)" in msg.message) == bool(by_dep), msg
            assert (f"{by_lock} task(s) waiting for a lock" in msg.message) == bool(by_lock), msg
            assert ("skipped" in msg.message) == bool(skipped), msg
            assert ("stay held" in msg.message) == step.stuck, msg

    def check_admission(self, dispatched: list[str]) -> None:
        """Tier order, priority then FIFO, reserves and resources, and admission is maximal.

        Dispatches come last in a step, from one admission pass over the tasks queued at that
        point: those still QUEUED now plus those dispatched.
        """
        early = self.held.intersection(dispatched)
        assert not early, f"held by submit(admit=False), dispatched before admit: {early}"
        if self.paused:
            assert not dispatched, f"dispatch while paused: {dispatched}"
            return
        queued = [
            n for n, s in self.states().items() if s is State.QUEUED and n not in self.held
        ] + dispatched
        heads = {
            t: sorted(
                (self.recs[n] for n in queued if self.recs[n].spec.tier is t),
                key=lambda r: (r.spec.priority, r.seq),
            )
            for t in TIERS_DOWN
        }
        busy, used = self.busy, dict(self.used)
        for name in dispatched:
            spec = self.recs[name].spec
            q = heads[spec.tier]
            assert q[0].spec is spec, f"{name} dispatched ahead of {q[0].spec.name} in its tier"
            for higher in TIERS_DOWN[: TIERS_DOWN.index(spec.tier)]:
                h = heads[higher]
                assert not (h and self.fits(h[0].spec, busy, used)), (
                    f"tier order: {name} ({spec.tier.name}) dispatched while "
                    f"{h[0].spec.name} ({higher.name}) could be admitted"
                )
            assert self.fits(spec, busy, used), f"{name} dispatched without room"
            q.pop(0)
            if spec.tier is not Tier.CRITICAL:
                busy += spec.weight
            for k, v in spec.resources.items():
                used[k] = used.get(k, 0.0) + v
        for tier, q in heads.items():
            assert not (q and self.fits(q[0].spec, busy, used)), (
                f"{q[0].spec.name} ({tier.name}) fits but was not dispatched"
            )

    def on_dispatch(self, name: str) -> None:
        rec = self.recs[name]
        spec = rec.spec
        assert rec.phase == "pending", f"dispatch of {name} in phase {rec.phase}"
        assert self.now >= rec.due, f"{name} dispatched at {self.now} before its delay ({rec.due})"
        unmet = self.unmet(spec)
        assert not unmet, f"{name} dispatched before {unmet} was provided"
        for h in self.holders():
            r = conflict(spec, h.spec)
            assert r is None, f"{name} dispatched while {h.spec.name} holds {r!r}"
        assert self.fits(spec, self.busy, self.used), f"{name} does not fit"
        parents = {self.provided[str(i)] for i in spec.requires} - {None}
        expected = tuple(sorted((str(n) for n in parents), key=lambda n: self.recs[n].order))
        ins_parents = self.last_parents.get(name)
        assert ins_parents == expected, f"{name}: parents {ins_parents} != {expected}"
        rec.phase = "running"
        if spec.tier is not Tier.CRITICAL:
            self.busy += spec.weight
        for k, v in spec.resources.items():
            self.used[k] = self.used.get(k, 0.0) + v

    def run(self, step: Step, out: list[Instruction]) -> None:
        self.last_parents = {i.name: i.parents for i in out if isinstance(i, Dispatch)}
        self.feed(step, out)
        self.steps += 1
        for n, st_ in self.states().items():
            rec = self.recs[n]
            if st_ is State.QUEUED and n not in self.queued_at:
                self.queued_at[n] = self.now
            if rec.joined is None and (
                st_ in (State.LOCKED, State.QUEUED, State.RUNNING) or rec.phase == "running"
            ):
                rec.joined = self.steps

    # ------------------------------------------------------------ rules

    def build(self, draft: Draft) -> Task[None]:
        self.names += 1
        modes = dict(zip(RESOURCES, draft.modes, strict=True))
        return Task(
            noop,
            name=f"t{self.names}",
            requires=draft.requires,
            provides=draft.provides if draft.self_loop else draft.provides - draft.requires,
            claims={r for r, m in modes.items() if m == "claim"},
            uses={r for r, m in modes.items() if m == "use"},
            tier=draft.tier,
            priority=draft.priority,
            weight=draft.weight,
            resources=None if draft.gpu is None else {"gpu": draft.gpu},
            delay=draft.delay,
        )

    @rule(
        batch=st.lists(drafts, min_size=1, max_size=4),
        sealed=st.booleans(),
        dup=st.sampled_from(("",) * 8 + ("old", "batch")),
        admit=st.sampled_from((True, True, False)),
    )
    def submit(self, batch: list[Draft], sealed: bool, dup: str, admit: bool) -> None:
        specs = [self.build(d) for d in batch]
        before = self.p.live()
        counts = dict(self.p.stats.by_state)
        if dup == "batch" or (dup == "old" and self.recs):
            name = specs[0].name if dup == "batch" else min(self.recs)
            with pytest.raises(DuplicateTaskError) as info:
                self.p.submit([*specs, Task(noop, name=name)], sealed=sealed, now=self.now)
            assert info.value.name == name
            assert self.p.live() == before and dict(self.p.stats.by_state) == counts
            assert not any(s.name in self.p for s in specs)
            return
        try:
            out = self.p.submit(specs, sealed=sealed, admit=admit, now=self.now)
        except CycleError as exc:
            assert self.p.live() == before and dict(self.p.stats.by_state) == counts
            assert not any(s.name in self.p for s in specs)
            self.check_cycle(exc.cycle, specs)
            return
        base = len(self.recs)
        for k, s in enumerate(specs):
            self.recs[s.name] = Rec(s, seq=base + k, sealed=sealed, due=self.now + s.delay)
        if not admit:  # what this submit made QUEUED waits for the admit rule
            assert not any(isinstance(i, Dispatch) for i in out), out
            self.held |= {s.name for s in specs if self.p.state(s.name) is State.QUEUED}
        step = Step("submit", batch=frozenset(s.name for s in specs), sealed=sealed)
        self.run(step, out)

    @rule()
    def admit(self) -> None:
        """The end of the supervisor loop's turn: held single submits are admitted."""
        self.held.clear()
        self.run(Step("admit"), self.p.admit(now=self.now))

    def check_cycle(self, cycle: tuple[str, ...], specs: Sequence[Task[None]]) -> None:
        assert len(cycle) >= 2 and cycle[0] == cycle[-1], cycle
        assert any(s.name in cycle for s in specs), f"{cycle} does not pass through the batch"
        edges = self.graph_edges(specs)
        for a, b in itertools.pairwise(cycle):
            assert b in edges[a], f"reported cycle {cycle}: {a} does not wait for {b}"

    @precondition(lambda self: any(r.phase == "running" for r in self.recs.values()))
    @rule(
        pick=st.integers(0, 63),
        how=st.sampled_from(
            ("done", "failed", "done", "deps_ok", "locks_ok", "both_ok", "cancelled")
        ),
    )
    def finish(self, pick: int, how: str) -> None:
        running = [n for n, r in self.recs.items() if r.phase == "running"]
        name = running[pick % len(running)]
        rec = self.recs[name]
        if rec.cancel_pending:  # a Cancel was issued: the task reports it stopped
            how = "cancelled"
        state = {"done": State.DONE, "cancelled": State.CANCELLED}.get(how, State.FAILED)
        deps_ok = how in ("deps_ok", "both_ok")
        locks_ok = how in ("locks_ok", "both_ok")
        out = self.p.finish(name, state, deps_ok=deps_ok, locks_ok=locks_ok, now=self.now)
        self.end_running(rec, state, deps_ok=deps_ok, locks_ok=locks_ok)
        failed = state is State.FAILED
        triggered = failed and self.fail_fast and not self.failed_once
        self.failed_once |= triggered
        step = Step(
            "finish",
            failed=failed,
            stuck=failed and not locks_ok and bool(rec.spec.claims | rec.spec.uses),
            cancelling=frozenset(self.recs) if triggered else frozenset(),
        )
        self.run(step, out)
        if triggered:
            self.check_all_cancelled()

    def end_running(self, rec: Rec, state: State, *, deps_ok: bool, locks_ok: bool) -> None:
        spec = rec.spec
        rec.phase = "ended"
        rec.end = state
        rec.ends += 1
        rec.order = self.order
        self.order += 1
        if spec.tier is not Tier.CRITICAL:
            self.busy -= spec.weight
        for k, v in spec.resources.items():
            self.used[k] = self.used.get(k, 0.0) - v
        rec.provided = state is State.DONE or (state is State.FAILED and deps_ok)
        rec.stuck = state is State.FAILED and not locks_ok and bool(spec.claims | spec.uses)
        if rec.provided:
            self.satisfy(sorted(map(str, spec.provides)), spec.name)

    def check_all_cancelled(self) -> None:
        for n, r in self.recs.items():
            assert r.phase == "ended" or (r.phase == "running" and r.cancel_pending), (
                f"{n} survived a cancel-all"
            )

    @precondition(lambda self: bool(self.recs))
    @rule(pick=st.integers(0, 63), ended=st.booleans())
    def cancel(self, pick: int, ended: bool) -> None:
        """Cancel a live task, or (``ended``) any task: cancelling an ended one does nothing."""
        names = list(self.recs) if ended or not self.live() else self.live()
        name = names[pick % len(names)]
        out = self.p.cancel(name, "test", now=self.now)
        self.run(Step("cancel", cancelling=frozenset({name})), out)
        rec = self.recs[name]
        assert rec.phase == "ended" or rec.cancel_pending

    @rule(item=st.sampled_from(ITEMS))
    def provide(self, item: str) -> None:
        out = self.p.provide(item, now=self.now)
        self.satisfy([item], None)
        self.run(Step("provide"), out)

    @rule(what=st.sampled_from(("resume", "open gate", "pause", "resume", "close gate")))
    def admission(self, what: str) -> None:
        """Pause/resume (``sup.pause``) or close/open the live system gate."""
        if what in ("pause", "resume"):
            self.paused = what == "pause"
            out = self.p.set_paused(self.paused)
        else:
            self.gate = what == "close gate"
            out = self.p.set_gate(self.gate)
        self.run(Step(what), out)

    @rule(dt=st.sampled_from((0.5, 1.0, 2.0)), to_wake=st.booleans())
    def tick(self, dt: float, to_wake: bool) -> None:
        if to_wake and self.wakes:
            self.now = max(self.now, min(self.wakes))
        else:
            self.now += dt
        self.wakes = {w for w in self.wakes if w > self.now}
        self.run(Step("tick"), self.p.tick(self.now))
        for n, at in self.queued_at.items():  # every alarm due by now was issued
            if self.p.state(n) is State.QUEUED:
                for level, after in self.alarm_after.items():
                    assert at + after > self.now or (n, level) in self.alarmed, (
                        f"{n} QUEUED since {at}, now {self.now}: no {level} alarm"
                    )

    # ------------------------------------------------------------ invariants

    @invariant()
    def planner_is_consistent(self) -> None:
        self.p.validate_state()

    @invariant()
    def states_agree(self) -> None:
        assert self.p.live() == self.live()
        for n, s in self.states().items():
            rec = self.recs[n]
            assert rec.ends == (rec.phase == "ended"), f"{n}: {rec.ends} terminal events"
            if rec.phase == "ended":
                assert s is rec.end, f"{n}: planner {s}, model {rec.end}"
            elif rec.phase == "running":
                assert s is State.RUNNING, f"{n}: planner {s}, model running"
            else:
                assert s in PENDING, f"{n}: planner {s}, model pending"
        running = [r.spec for r in self.recs.values() if r.phase == "running"]
        assert self.busy == sum(s.weight for s in running if s.tier is not Tier.CRITICAL)
        high = self.limit(Tier.HIGH)
        assert high is None or self.busy <= high, f"busy {self.busy} over {high}"
        for k, v in self.used.items():
            assert v <= self.capacity.get(k, 0.0), f"resource {k}: {v} used of {self.capacity}"

    @invariant()
    def waiting_has_a_reason(self) -> None:
        """WAITING: an item is missing and may still come; later stages: none is missing."""
        for n, s in self.states().items():
            rec = self.recs[n]
            if s is State.WAITING:
                unmet = self.unmet(rec.spec)
                assert unmet, f"{n} WAITING with every requirement met"
                for i in unmet:
                    assert not self.dead(i), f"{n} still WAITING for dead item {i!r}"
                    if rec.sealed:
                        assert self.live_providers(i), f"sealed {n} waits for orphan {i!r}"
            elif s in PENDING:
                assert not self.unmet(rec.spec), f"{n} {s.name} before {self.unmet(rec.spec)}"
            if s is State.DELAYED:
                assert rec.due > self.now, f"{n} DELAYED past its due time"
                assert any(w <= rec.due for w in self.wakes), f"{n} DELAYED with no WakeAt"
            elif s in (State.LOCKED, State.QUEUED):
                assert rec.due <= self.now, f"{n} {s.name} before its delay ran out"

    @invariant()
    def locks_are_exclusive(self) -> None:
        holders = self.holders()
        for k, a in enumerate(holders):
            for b in holders[k + 1 :]:
                r = conflict(a.spec, b.spec)
                assert r is None, f"{a.spec.name} and {b.spec.name} both hold {r!r}"
        states = self.states()
        queued = [self.recs[n] for n, s in states.items() if s is State.QUEUED]
        for k, q in enumerate(queued):
            for other in [*holders, *queued[k + 1 :]]:
                r = conflict(q.spec, other.spec)
                assert r is None, f"queued {q.spec.name} conflicts with {other.spec.name} on {r!r}"
        live = [self.recs[n] for n, s in states.items() if s in (State.LOCKED, State.QUEUED)]
        for rec in live:
            for h in holders:
                if h.stuck:
                    r = conflict(rec.spec, h.spec)
                    assert r is None, (
                        f"{rec.spec.name} waits on {r!r}, held for ever by {h.spec.name}"
                    )
        for rec in live:
            if states[rec.spec.name] is not State.LOCKED:
                continue
            # a lock waiter waits behind someone: a holder, or a waiter that conflicts
            others = [*holders, *(o for o in live if o is not rec)]
            assert any(conflict(rec.spec, o.spec) is not None for o in others), (
                f"{rec.spec.name} is LOCKED but no task holds or waits for a lock it conflicts with"
            )

    @invariant()
    def locks_are_fifo(self) -> None:
        """A lock waiter is never overtaken on a resource by a conflicting task that came later.

        (Tasks join every lock queue at once when their dependencies and delay are done; the
        order within one step is not observable, so only tasks from later steps are compared.)
        """
        states = self.states()
        waiting = [self.recs[n] for n, s in states.items() if s is State.LOCKED]
        ahead = [self.recs[n] for n, s in states.items() if s in (State.QUEUED, State.RUNNING)]
        for w in waiting:
            assert w.joined is not None
            for a in ahead:
                if a.joined is not None and a.joined > w.joined:
                    r = conflict(w.spec, a.spec)
                    assert r is None, (
                        f"{a.spec.name} took {r!r} ahead of {w.spec.name}, who waited for it first"
                    )

    @invariant()
    def nothing_hangs(self) -> None:
        """With admission open and nothing running, every live task waits for an item or time."""
        if self.paused or self.gate or any(r.phase == "running" for r in self.recs.values()):
            return
        states = self.states()
        if any(states[n] is State.QUEUED for n in self.held):
            return  # the admit at the end of the turn is on its way (others queue behind)
        for n, s in states.items():
            assert s.terminal or s in (State.WAITING, State.DELAYED), f"{n} hangs in {s.name}"

    @invariant()
    def no_cycle_accepted(self) -> None:
        try:
            graphlib.TopologicalSorter(self.graph_edges()).prepare()
        except graphlib.CycleError as exc:
            raise AssertionError(f"accepted a dependency cycle: {exc.args[1]}") from None

    # ------------------------------------------------------------ teardown

    def teardown(self) -> None:
        # Hypothesis calls teardown from a ``finally``: after a failed check the model is
        # half-updated, and a second error here would only hide the first one.
        if self.planner is None or sys.exc_info()[1] is not None:
            return
        self.paused = False
        self.run(Step("pause"), self.p.set_paused(False))
        out = self.p.cancel_all("teardown", now=self.now)
        self.run(Step("cancel_all", cancelling=frozenset(self.recs)), out)
        self.check_all_cancelled()
        for n in sorted(n for n, r in self.recs.items() if r.phase == "running"):
            out = self.p.finish(n, State.CANCELLED, now=self.now)
            self.end_running(self.recs[n], State.CANCELLED, deps_ok=False, locks_ok=False)
            self.run(Step("finish"), out)
        self.run(Step("settle_waiting", settle_waiting=True), self.p.settle_waiting(now=self.now))
        assert self.p.live() == []
        for n, r in self.recs.items():
            assert r.ends == 1 and r.end is not None and self.p.state(n) is r.end, (n, r)
        self.p.validate_state()


TestPlannerMachine = PlannerMachine.TestCase
