"""The planner: every readiness decision taskvisor makes, as a pure state machine.

Why a pure core
---------------
The older libraries taskvisor replaces mixed readiness logic with threads and loops; their
hangs came from state changed in one place and forgotten in another. Here one synchronous
object owns all of it. Events go in (``submit``, ``finish``, ``provide``, ``cancel``,
``tick`` with ``now``); instructions come out (``Dispatch``, ``Settle``, ``Cancel``,
``Warn``, ``WakeAt``). It imports no asyncio, threading, psutil or clock: time arrives in
the events. The supervisor runs the instructions; tests feed events directly.

A task's life
-------------
``NEW → WAITING → DELAYED → LOCKED → QUEUED → RUNNING → DONE | FAILED | CANCELLED``, where
each middle stage is skipped when there is nothing to wait for, and any stage before
RUNNING may end in ``SKIPPED`` or ``CANCELLED``. ``_MOVES`` is the table of legal moves; an
illegal one raises ``PlannerBug`` naming the task and the move.

- WAITING: ``missing`` counts unsatisfied dependency items. Each item keeps its waiters;
  when it is satisfied each waiter's count drops by one (no rescans).
- DELAYED: a heap of due times; ``tick(now)`` releases what is due.
- LOCKED: each lock resource has holders, a *granted* set and a FIFO of waiters. Waiters
  move from the FIFO to *granted* in order, only while compatible with holders and with
  what is already granted (so a waiting claimant stops later users: no writer
  starvation). A task whose every resource is granted is admissible; it takes them all at
  admission, never some (no deadlock: tasks join all their FIFOs at once, so every FIFO
  orders them the same way and the oldest waiter is at the head of all of its queues).
- QUEUED: one heap per tier keyed by ``(priority, seq)``. Admission looks at the head of
  each tier from CRITICAL down and admits the first head that fits; within a tier the head
  blocks those behind it (heavy tasks are not starved by light ones).

Failure: a provider that ends without success removes itself from its items' pending
providers; an item with no pending provider left and at least one failed one is dead and
its waiters are SKIPPED (DependencyError), which cascades through their own provides. A
FAILED task keeps its locks (unless ``locks_ok``): they are *stuck*, and every waiter that
conflicts with a stuck holder is SKIPPED (LockError).

Every event costs O(log n) in the number of tasks plus the work it causes (the waiters it
releases or skips); nothing rescans the pending set.
"""

from __future__ import annotations

import enum
import graphlib
import heapq
import itertools
import operator
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from ._errors import (
    CapacityError,
    CycleError,
    DependencyError,
    DuplicateTaskError,
    LockError,
    NotRunError,
    ResourceError,
    SpecError,
    TaskCancelled,
)
from ._spec import _PLAIN_ITEMS, Options, OutputItem, Tier, safe_repr

__all__ = [
    "Alarm",
    "Cancel",
    "Dispatch",
    "Forget",
    "Instruction",
    "Planner",
    "PlannerBug",
    "Settle",
    "Spec",
    "State",
    "WakeAt",
    "Warn",
]


class State(enum.Enum):
    """Where a task is in its life. The last four are terminal."""

    NEW = "new"
    WAITING = "waiting"
    DELAYED = "delayed"
    LOCKED = "locked"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    # identity hash: Enum's default hashes the name in Python, on every dict lookup
    __hash__ = object.__hash__

    @property
    def terminal(self) -> bool:
        """DONE, FAILED, SKIPPED or CANCELLED: the task has its TaskRes."""
        return self in _TERMINAL


# The members as module constants, read on every task's way through the planner: on
# Python 3.11 reading a member off its class (``State.DONE``) costs ~75 ns against ~7 for
# a global, because ``EnumType`` defines ``__getattr__`` (3.12 dropped it), and a task
# reads about twenty of them (issue 13: ~1.4 µs per task across the runtime).
_NEW: Final = State.NEW
_WAITING: Final = State.WAITING
_DELAYED: Final = State.DELAYED
_LOCKED: Final = State.LOCKED
_QUEUED: Final = State.QUEUED
_RUNNING: Final = State.RUNNING
_DONE: Final = State.DONE
_FAILED: Final = State.FAILED
_SKIPPED: Final = State.SKIPPED
_CANCELLED: Final = State.CANCELLED
_CRITICAL: Final = Tier.CRITICAL
_HIGH: Final = Tier.HIGH
_NORMAL: Final = Tier.NORMAL
_LOW: Final = Tier.LOW

_TERMINAL = frozenset({_DONE, _FAILED, _SKIPPED, _CANCELLED})
_NOT_RUN = (_SKIPPED, _CANCELLED)
_RAN = frozenset({_QUEUED, _RUNNING, _DONE, _FAILED})
_LIVE_STATES = (_NEW, _WAITING, _DELAYED, _LOCKED, _QUEUED, _RUNNING)
_MOVES: dict[State, frozenset[State]] = {
    _NEW: frozenset({_WAITING, _DELAYED, _LOCKED, _QUEUED, *_NOT_RUN}),
    _WAITING: frozenset({_DELAYED, _LOCKED, _QUEUED, *_NOT_RUN}),
    _DELAYED: frozenset({_LOCKED, _QUEUED, *_NOT_RUN}),
    _LOCKED: frozenset({_QUEUED, *_NOT_RUN}),
    _QUEUED: frozenset({_RUNNING, *_NOT_RUN}),
    _RUNNING: frozenset({_DONE, _FAILED, _CANCELLED}),
}


class PlannerBug(AssertionError):
    """An internal invariant broke. Always a taskvisor bug; please report it."""


class Spec(Protocol):
    """What the planner reads of a task (``taskvisor.Task`` satisfies it)."""

    @property
    def name(self) -> str: ...
    @property
    def dependencies(self) -> frozenset[Hashable]: ...
    @property
    def provides(self) -> frozenset[Hashable]: ...
    @property
    def claims(self) -> frozenset[Hashable]: ...
    @property
    def uses(self) -> frozenset[Hashable]: ...
    @property
    def tier(self) -> Tier: ...
    @property
    def priority(self) -> float: ...
    @property
    def weight(self) -> int: ...
    @property
    def resources(self) -> Mapping[str, float]: ...
    @property
    def runs_on(self) -> str | None: ...
    @property
    def delay(self) -> float: ...
    @property
    def _opts(self) -> Options: ...  # (the rarely set options, read on per-task paths)


# ---------------------------------------------------------------- instructions

# Plain slotted dataclasses, not frozen ones: a frozen dataclass's __init__ sets each
# field through object.__setattr__ (0.51 µs for a Dispatch against 0.15 here), and the
# planner makes one per task. Nothing writes to an instruction once made.


# The instructions about one task carry its record too (``task``, and a Dispatch its
# parents' records in ``parent_tasks``): the caller acts on the task the planner meant
# without a lookup by name, even when the planner has forgotten it (or a parent) in the
# same call and a later submit reuses the name. Records are left out of comparisons and
# reprs: an instruction compares by what it says.


@dataclass(slots=True)
class Dispatch:
    """Run the task now. ``parents`` finished before it, in finish order (for ``shared``)."""

    name: str
    parents: tuple[str, ...]
    task: Any = field(default=None, compare=False, repr=False)
    parent_tasks: tuple[Any, ...] = field(default=(), compare=False, repr=False)


@dataclass(slots=True)
class Settle:
    """The task ended without running (SKIPPED or CANCELLED); ``error`` says why."""

    name: str
    state: State
    error: NotRunError
    task: Any = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class Cancel:
    """Stop the running task; report ``finish(name, CANCELLED)`` when it has stopped."""

    name: str
    reason: str
    task: Any = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class Warn:
    """Tell the user something went wrong without an exception."""

    message: str


@dataclass(slots=True)
class WakeAt:
    """Call ``tick(now)`` at (or after) this time."""

    when: float


@dataclass(slots=True)
class Alarm:
    """A task has waited in the admission queue ``waited`` seconds (``wait_warning`` /
    ``wait_critical``); issued once per task and level."""

    name: str
    level: str  # "warning" or "critical"
    waited: float


@dataclass(slots=True)
class Forget:
    """The planner forgot these ended tasks (``keep_ended``); their names may be reused."""

    names: tuple[str, ...]


Instruction = Dispatch | Settle | Cancel | Warn | WakeAt | Alarm | Forget


# ---------------------------------------------------------------- internal records


_NO_PARENTS: list[_T] = []  # shared and never appended to (fewer objects per task)


def _with(members: list[_T], t: _T) -> list[_T]:
    """``members`` with ``t`` appended: a list of its own from the first member on (the
    shared ``_NO_PARENTS`` is never appended to)."""
    if members:
        members.append(t)
        return members
    return [t]


class _T:
    """The planner's record of one task."""

    __slots__ = (
        "consumers",
        "finish_seq",
        "lock_missing",
        "missing",
        "name",
        "out_item",
        "parents",
        "pinned",
        "seq",
        "spec",
        "state",
        "when",
    )

    def __init__(self, spec: Spec, seq: int) -> None:
        self.spec = spec
        self.name = spec.name
        self.seq = seq
        self.state = _NEW
        self.missing = 0
        self.lock_missing = 0
        self.parents: list[_T] = _NO_PARENTS  # a list of its own from the first parent on
        self.finish_seq = -1
        self.consumers = 0  # tasks not yet dispatched that list it among their parents
        self.out_item = False  # an OutputItem(name) entry exists: someone refers to its output
        # until it is queued: when it is due (its submission plus its delay); from then
        # on: when it was queued (alarms). One slot for both: no task needs them at once
        # (a slot less is 16 bytes less of every pending task: objects come in 16s)
        self.when = 0.0
        self.pinned = False  # a handle to it is alive: never forgotten, its name stays taken

    @property
    def locks(self) -> Iterable[tuple[Hashable, bool]]:
        opts = self.spec._opts
        for r in opts.claims:
            yield r, True
        for r in opts.uses:
            yield r, False

    def __repr__(self) -> str:
        return f"<_T {self.name!r} {self.state.name}>"


_BY_FINISH = operator.attrgetter("finish_seq")


def _in_finish_order(parents: list[_T]) -> tuple[_T, ...]:
    """A task's parents, each once, in the order they ended (one or two without a sort:
    the usual; W4's tasks have two)."""
    if len(parents) == 1:
        return (parents[0],)
    if len(parents) == 2:
        a, b = parents
        if a is b:
            return (a,)
        return (a, b) if a.finish_seq < b.finish_seq else (b, a)
    return tuple(sorted(set(parents), key=_BY_FINISH))


class _Item:
    __slots__ = ("failed", "provider", "providers", "satisfied", "waiters")

    def __init__(self) -> None:
        # no collection of its own until it needs one (most items have one provider and
        # one or two waiters): fewer objects per item for the cyclic GC to walk (issue
        # 13). Providers go through add_provider/drop_provider, the lists through _with.
        self.satisfied = False
        self.provider: _T | None = None  # who satisfied it (None: sup.provide)
        # submitted providers that have not ended: None, the one (the usual: an output
        # item's task), or a set of them
        self.providers: _T | set[_T] | None = None
        self.failed: list[_T] = _NO_PARENTS  # providers that ended without providing it
        self.waiters: list[_T] = _NO_PARENTS

    def add_provider(self, t: _T) -> None:
        had = self.providers
        if had is None:
            self.providers = t
        elif isinstance(had, set):
            had.add(t)
        elif had is not t:
            self.providers = {had, t}

    def drop_provider(self, t: _T) -> None:
        had = self.providers
        if had is t:
            self.providers = None
        elif isinstance(had, set):
            had.discard(t)
            if not had:
                self.providers = None

    def pending(self) -> Iterable[_T]:
        """The providers that have not ended."""
        had = self.providers
        if had is None:
            return ()
        return had if isinstance(had, set) else (had,)

    @property
    def dead(self) -> bool:
        return not self.satisfied and self.providers is None and bool(self.failed)


class _TierQueue:
    """One tier's QUEUED tasks in ``(priority, submission sequence)`` order.

    A heap, and beside it a FIFO for the common case, priority 0 queued in submission
    order: a task there needs no heap entry (a 64-byte tuple per waiting task) and no
    O(log n) sift to leave (issue 13). The head is the smaller of the two heads. Entries
    of tasks settled while queued are dropped lazily, when they reach a head.
    """

    __slots__ = ("fifo", "heap")

    def __init__(self) -> None:
        self.fifo: deque[_T] = deque()  # priority 0, increasing sequence
        self.heap: list[tuple[float, int, _T]] = []

    def push(self, t: _T) -> None:
        fifo = self.fifo
        priority = t.spec._opts.priority
        if priority == 0.0 and (not fifo or fifo[-1].seq < t.seq):
            fifo.append(t)
        else:
            heapq.heappush(self.heap, (priority, t.seq, t))

    def head(self) -> _T | None:
        """The first task still QUEUED, or None."""
        fifo, heap = self.fifo, self.heap
        while fifo and fifo[0].state is not _QUEUED:
            fifo.popleft()  # cancelled while queued
        while heap and heap[0][2].state is not _QUEUED:
            heapq.heappop(heap)
        if not heap:
            return fifo[0] if fifo else None
        priority, seq, t = heap[0]
        if fifo and (priority > 0.0 or (priority == 0.0 and fifo[0].seq < seq)):
            return fifo[0]
        return t

    def pop(self, t: _T) -> None:
        """Take ``t``, the head just returned."""
        if self.fifo and self.fifo[0] is t:
            self.fifo.popleft()
        else:
            heapq.heappop(self.heap)

    def entries(self) -> list[tuple[float, int, _T]]:
        """Every entry, settled tasks' included (for ``validate_state``)."""
        return [(t.spec.priority, t.seq, t) for t in self.fifo] + self.heap


class _Lock:
    __slots__ = ("excl", "fifo", "granted", "granted_excl", "shared", "stuck")

    def __init__(self) -> None:
        self.excl: _T | None = None  # exclusive holder
        self.shared: set[_T] = set()  # shared holders
        self.granted: set[_T] = set()  # waiters cleared to take it at admission
        self.granted_excl = False  # the granted waiter is a claimant
        self.fifo: deque[tuple[_T, bool]] = deque()  # (waiter, exclusive)
        self.stuck: list[_T] = []  # failed holders that never release (several if shared)

    def compatible(self, exclusive: bool) -> bool:
        """May a new waiter of this mode be granted now, ahead of nobody?"""
        if exclusive:
            return self.excl is None and not self.shared and not self.granted
        return self.excl is None and not self.granted_excl

    def conflicts_stuck(self, exclusive: bool) -> bool:
        """Can a waiter of this mode never be granted, because a failed task holds it?"""
        if not self.stuck:
            return False
        return exclusive or self.excl is not None  # a stuck claimant blocks users too


@dataclass(slots=True)
class Stats:
    """Counts the supervisor's ``statistics()`` reads."""

    by_state: dict[State, int] = field(default_factory=lambda: dict.fromkeys(State, 0))
    queued_by_tier: dict[Tier, int] = field(default_factory=lambda: dict.fromkeys(Tier, 0))


# ---------------------------------------------------------------- the planner


class Planner:
    """Readiness, locks, admission and failure propagation; see the module docstring."""

    def __init__(
        self,
        *,
        pool_size: int = 0,
        reserve_normal: int = 0,
        reserve_high: int = 0,
        resources: Mapping[str, float] | None = None,
        fail_fast: bool = False,
        wait_warning: float | None = None,
        wait_critical: float | None = None,
        keep_ended: int | None = None,
        admit_rule: Callable[[Spec, tuple[Spec, ...]], object] | None = None,
        forgets: bool = True,
    ) -> None:
        for label, v in (
            ("pool_size", pool_size),
            ("reserve_normal", reserve_normal),
            ("reserve_high", reserve_high),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{label} must be an int >= 0, got {v!r}")
        self.pool_size = pool_size
        low = pool_size
        normal = low + reserve_normal
        high = normal + reserve_high
        self._limit = {_LOW: low, _NORMAL: normal, _HIGH: high}
        self.capacity = dict(resources or {})
        # runs_on names whose executor owns its tasks' resources (a Dask cluster's worker
        # resources): their needs are not counted against ``capacity``; each maps to the
        # function that tells what no worker can ever provide
        self.elsewhere: dict[str, Callable[[Any], Mapping[str, float]]] = {}
        self.fail_fast = fail_fast
        self._lock_skips = 0  # tasks skipped by a LockError so far
        self._alarm_after = tuple(
            (level, float(v))
            for level, v in (("warning", wait_warning), ("critical", wait_critical))
            if v is not None
        )
        # (when, seq, level, name): by name, not the record, so that a task admitted long
        # before its alarm time is not kept alive (its value with it) until then
        self._alarms: list[tuple[float, int, str, str]] = []
        self._just_queued: list[_T] = []
        self.keep_ended = keep_ended
        self._ended: deque[_T] = deque()
        # ended tasks whose slot stays busy until release() (an abandoned attempt still
        # runs), each with whether the locks it gives back wait for that too (rare: a
        # dict here, not two slots in every record)
        self._holds: dict[_T, bool] = {}
        # the failure a skipped task's skip started from, for messages (one entry per
        # task skipped for a dependency, ~57 bytes, where a slot cost every task 8), and
        # the ended tasks past the keep_ended window that something still needed
        # (forgotten once nothing does; providers, never forgotten, are not kept here)
        self._roots: dict[_T, str] = {}
        self._retired: set[_T] = set()
        # ``Forget`` instructions: a caller that looks its records up in ``tasks`` (the
        # supervisor) has nothing to do when a task is forgotten, and asks for none
        self._forgets = forgets
        self._forgotten: list[str] = []
        # output items are created only when a task refers to one; these refer to a task
        # not submitted yet
        self._awaited_outputs: set[str] = set()
        self._forgotten_by_state: dict[State, int] = dict.fromkeys(State, 0)
        self.busy = 0  # slots used by running non-critical tasks
        self.used: dict[str, float] = dict.fromkeys(self.capacity, 0.0)
        self.paused = False
        # taylorism's pluggable scheduler: rule(task, running specs) -> may it start now?
        self._rule = admit_rule
        self._running_specs: dict[str, Spec] = {}  # (kept only with a rule)
        self._rule_held: list[_T] = []  # refused by the rule; offered again when one ends
        # QUEUED by submit(admit=False): out of the tier queues until admit()
        self._held: list[_T] = []
        self._holding = False
        self.gate_closed = False  # live system gate: holds non-critical admissions
        self._tasks: dict[str, _T] = {}
        self._items: dict[Hashable, _Item] = {}
        self._locks: dict[Hashable, _Lock] = {}
        self._queues: dict[Tier, _TierQueue] = {t: _TierQueue() for t in Tier}
        self._delayed: list[tuple[float, int, _T]] = []
        self._seq = itertools.count()
        self._finish_seq = itertools.count()
        self._out: list[Instruction] = []
        self._failed_once = False
        self._now = 0.0  # the latest time any event carried
        self.stats = Stats()
        self._by_state = self.stats.by_state

    # ------------------------------------------------------------ queries

    def state(self, name: str) -> State:
        return self._tasks[name].state

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    @property
    def tasks(self) -> Mapping[str, _T]:
        """The records of the tasks the planner keeps, by name (read-only: a view of the
        planner's own map, so a caller that keeps no map of its own sees a forgotten
        task gone at once)."""
        return self._tasks

    def live(self) -> list[str]:
        """Names of tasks not yet in a terminal state, in submission order (O(n))."""
        live = [t for t in self._tasks.values() if not t.state.terminal]
        return [t.name for t in sorted(live, key=lambda t: t.seq)]

    @property
    def live_count(self) -> int:
        """How many tasks have not ended (O(1))."""
        by = self.stats.by_state
        return sum(by[s] for s in _LIVE_STATES)

    @property
    def known(self) -> int:
        """How many tasks the planner still keeps (ended ones not yet forgotten included)."""
        return len(self._tasks)

    def tier_limit(self, tier: Tier) -> int | None:
        """Slots a tier may fill, or None for unlimited."""
        if tier is _CRITICAL or self.pool_size == 0:
            return None
        return self._limit[tier]

    # ------------------------------------------------------------ events

    def submit(
        self,
        specs: Sequence[Spec],
        *,
        sealed: bool = False,
        admit: bool = True,
        pinned: bool = False,
        now: float = 0.0,
        records: Sequence[_T] | None = None,
    ) -> list[Instruction]:
        """Add a batch. Graph errors raise before anything changes.

        ``records``: the caller's records of the specs (instances of a subclass of the
        planner's record, built with ``_T.__init__``, one per spec in order): the planner
        keeps them instead of records of its own (the supervisor's ``Record`` is one).
        A batch's records are numbered (``seq``) one after another, in order: a
        ``gather`` finds a task's place in its batch by its number.

        ``sealed``: every dependency must be satisfied or provided by a known task now;
        what nobody can provide is settled at once with ``DependencyError``.
        ``admit=False``: enter the tasks, but those ready for a slot wait outside the tier
        queues until :meth:`admit` (no other event admits them): the supervisor admits
        everything one turn of its loop submitted together, so tier order holds among
        back-to-back submits.
        ``pinned``: a handle to each task is alive, until :meth:`unpin`.

        With ``keep_ended`` set, the name of an ended task nothing needs any more (see
        :meth:`_forgettable`) may be reused: the old task is forgotten (silently: no
        ``Forget``, the caller replaces its own record of that name).
        """
        self._clock(now)
        try:
            reused = self._check_batch(specs)
            self._check_lookups(specs)
        except SpecError:
            raise
        except Exception as exc:  # a user's item whose __eq__ raises against another's
            raise SpecError(
                f"the batch's items cannot be compared with each other: {safe_repr(exc)}"
            ) from exc
        for old in reused:
            self._forget(old, tell=False)
        if records is None:
            new = [_T(s, next(self._seq)) for s in specs]
        else:
            new = list(records)
            seq = self._seq
            for t in new:
                t.seq = next(seq)
        if pinned:
            for t in new:
                t.pinned = True
        self.stats.by_state[_NEW] += len(new)
        awaited = self._awaited_outputs
        for t in new:
            self._tasks[t.name] = t
            for item in t.spec.provides:
                self._item(item).add_provider(t)
            if awaited and t.name in awaited:  # someone referred to its output before
                awaited.discard(t.name)
                self._items[OutputItem(t.name)].add_provider(t)
                t.out_item = True
        if admit:
            for t in new:
                self._enter(t, sealed)
            self._admit()
        else:
            self._holding = True  # what gets QUEUED now waits in _held for admit()
            try:
                for t in new:
                    self._enter(t, sealed)
            finally:
                self._holding = False
        return self._flush()

    def admit(self, *, now: float = 0.0) -> list[Instruction]:
        """Admit what fits, the tasks held by ``submit(admit=False)`` included: those
        join their tier queues only now, so no other event admits some of them early."""
        self._clock(now)
        held, self._held = self._held, []
        queues = self._queues
        for t in held:
            if t.state is _QUEUED:
                queues[t.spec.tier].push(t)
        self._admit()
        return self._flush()

    def finish(
        self,
        name: str,
        state: State,
        *,
        deps_ok: bool = False,
        locks_ok: bool = False,
        keep_slot: bool = False,
        now: float = 0.0,
        admit: bool = True,
        record: _T | None = None,
    ) -> list[Instruction]:
        """A running task ended: ``DONE``, ``FAILED`` or ``CANCELLED``.

        ``deps_ok``/``locks_ok`` (controlled failure) say a FAILED task still satisfies its
        provides / releases its locks. CANCELLED releases locks and provides nothing.
        ``keep_slot``: its slots and resources stay in use until :meth:`release` (a thread
        that was abandoned on timeout or cancel still runs).
        ``admit=False``: the caller finishes a burst of tasks and then calls
        :meth:`admit_queued` once (what fits is admitted then, in tier order, with every
        slot the burst freed; any other event admits it earlier).
        ``record``: the task's record, when the caller holds it (no lookup by name: the
        supervisor's records are the planner's, see ``submit(records=)``).
        """
        if now > self._now:  # (self._clock, inline: this runs once per task)
            self._now = now
        t = self._tasks[name] if record is None else record
        if state is not _DONE and state is not _FAILED and state is not _CANCELLED:
            raise PlannerBug(f"finish({name!r}) with non-final state {state}")
        if t.state is _RUNNING:  # (_move, inline: every task comes here)
            by_state = self._by_state
            by_state[_RUNNING] -= 1
            by_state[state] += 1
            t.state = state
        else:
            self._move(t, state)  # (raises: an illegal move)
        t.finish_seq = next(self._finish_seq)
        spec = t.spec
        opts = spec._opts
        if keep_slot:
            self._holds[t] = state is not _FAILED or locks_ok
        elif self._rule is None and not opts.resources:  # (_free, inline: the usual)
            if spec.tier is not _CRITICAL:
                self.busy -= opts.weight
        else:
            self._free(t)
        ok = state is _DONE
        has_locks = bool(opts.claims or opts.uses)
        stuck = []
        if has_locks:
            release = ok or state is _CANCELLED or locks_ok
            # an abandoned attempt still runs: the locks it would give back stay held till then
            held_on = keep_slot and release
            for r, _excl in t.locks:
                lock = self._locks[r]
                if held_on:
                    continue
                if release:
                    if lock.excl is t:
                        lock.excl = None
                    else:
                        lock.shared.discard(t)
                else:
                    lock.stuck.append(t)
                    stuck.append(r)
        provided = ok or (state is _FAILED and deps_ok)
        skipped_before = (0, 0) if ok else (self._lock_skips, self._by_state[_SKIPPED])
        if spec.provides:
            if provided:
                for item in spec.provides:
                    self._satisfy(item, t)
            else:
                for item in spec.provides:
                    self._lose(item, t, root=t.name)
        if t.out_item:
            if ok:
                self._satisfy(OutputItem(name), t)
            else:
                self._lose(OutputItem(name), t, root=t.name)
        if has_locks:
            for r, _excl in t.locks:
                lock = self._locks[r]
                if t in lock.stuck:
                    self._skip_stuck_waiters(r, lock)
                self._advance(r, lock)
        if state is _FAILED:  # (a DONE task skips nothing)
            self._warn_skipped(name, skipped_before, stuck)
            if self.fail_fast and not self._failed_once:
                self._failed_once = True
                self._cancel_all(f"fail_fast: {name!r} failed")
        self._retire(t)
        if admit:
            self._admit()
        return self._flush()

    def _warn_skipped(self, name: str, before: tuple[int, int], stuck: list[Hashable]) -> None:
        """Task ``name`` failed: warn of what it skipped (counted from ``before``, the
        lock skips and SKIPPED count when it ended) and of the locks it left stuck."""
        by_lock = self._lock_skips - before[0]
        skipped = self._by_state[_SKIPPED] - before[1]
        if not (skipped or stuck):
            return
        msg = f"task {name!r} failed"
        causes = [f"{skipped - by_lock} dependent task(s)"] if skipped > by_lock else []
        if by_lock:
            causes.append(f"{by_lock} task(s) waiting for a lock it held")
        if causes:
            msg += f": {' and '.join(causes)} skipped"
        if stuck:
            held = ", ".join(safe_repr(r) for r in sorted(stuck, key=safe_repr))
            msg += f"; lock(s) {held} stay held"
        self._out.append(Warn(msg))

    def admit_queued(self, *, now: float = 0.0) -> list[Instruction]:
        """Admit what fits from the tier queues (after ``finish(admit=False)``); unlike
        :meth:`admit`, what ``submit(admit=False)`` holds keeps waiting."""
        self._clock(now)
        self._admit()
        return self._flush()

    def release(self, name: str, *, now: float = 0.0) -> list[Instruction]:
        """An ended task that kept its slot (``finish(keep_slot=True)``) really stopped."""
        self._clock(now)
        t = self._tasks[name]
        if t not in self._holds:
            raise PlannerBug(f"release({name!r}): it holds no slot")
        locks_later = self._holds.pop(t)
        self._free(t)
        if locks_later:
            for r, _excl in t.locks:
                lock = self._locks[r]
                if lock.excl is t:
                    lock.excl = None
                else:
                    lock.shared.discard(t)
                self._advance(r, lock)
        self._forget_if_free(t)
        self._admit()
        return self._flush()

    def provide(self, item: Hashable, *, now: float = 0.0) -> list[Instruction]:
        """Satisfy ``item`` from outside (``sup.provide``)."""
        self._clock(now)
        if type(item) not in _PLAIN_ITEMS:
            try:
                self._items.get(item)
            except Exception as exc:
                raise SpecError(
                    f"provide: item {safe_repr(item)} cannot be compared with an item of a "
                    f"task: {safe_repr(exc)}"
                ) from exc
        self._satisfy(item, None)
        self._admit()
        return self._flush()

    def cancel(
        self, name: str, reason: str = "cancelled", *, now: float = 0.0
    ) -> list[Instruction]:
        """Cancel a task: settled at once if not running, else a ``Cancel`` instruction."""
        self._clock(now)
        t = self._tasks[name]
        self._cancel(t, reason)
        self._admit()
        return self._flush()

    def cancel_many(
        self, names: Iterable[str], reason: str, *, now: float = 0.0
    ) -> list[Instruction]:
        """Cancel several tasks in one event (``gather`` cancelled)."""
        self._clock(now)
        for name in names:
            self._cancel(self._tasks[name], reason)
        self._admit()
        return self._flush()

    def cancel_all(self, reason: str, *, now: float = 0.0) -> list[Instruction]:
        """Cancel every task that has not ended (``aclose(cancel=True)``)."""
        self._clock(now)
        self._cancel_all(reason)
        self._admit()
        return self._flush()

    def tick(self, now: float) -> list[Instruction]:
        """Time passed: release delayed tasks that are due, raise due wait alarms."""
        self._clock(now)
        while self._delayed and self._delayed[0][0] <= now:
            _, _, t = heapq.heappop(self._delayed)
            if t.state is _DELAYED:
                self._to_locks(t)
        alarms = self._alarms
        while alarms and alarms[0][0] <= now:
            _, seq, level, name = heapq.heappop(alarms)
            waiting = self._tasks.get(name)
            # (it waited that long, even if admitted right now; not a reused name's task)
            if waiting is not None and waiting.seq == seq and waiting.state is _QUEUED:
                self._out.append(Alarm(name, level, now - waiting.when))
        heads = [h[0][0] for h in (self._delayed, alarms) if h]
        if heads:
            self._out.append(WakeAt(min(heads)))
        self._admit()
        return self._flush()

    def set_paused(self, paused: bool) -> list[Instruction]:
        self.paused = paused
        self._admit()
        return self._flush()

    def set_gate(self, closed: bool) -> list[Instruction]:
        """Live system gate (cpu/memory above limit): hold non-critical admissions."""
        self.gate_closed = closed
        self._admit()
        return self._flush()

    def settle_waiting(self, *, now: float = 0.0) -> list[Instruction]:
        """Closing: every task still waiting for a dependency ends with DependencyError."""
        self._clock(now)
        for t in list(self._tasks.values()):
            if t.state is _WAITING:
                missing = [i for i in t.spec.dependencies if not self._item(i).satisfied]
                self._end(t, _SKIPPED, DependencyError(t.name, missing=_sorted(missing)))
        self._admit()
        return self._flush()

    # ------------------------------------------------------------ submission

    def _check_batch(self, specs: Sequence[Spec]) -> list[_T]:
        """Raise for a bad batch; return the ended tasks whose names it reuses."""
        names: set[str] = set()
        reused: list[_T] = []
        tasks = self._tasks
        for s in specs:
            if s.name in names:
                raise DuplicateTaskError(s.name)
            if s.name in tasks:
                old = tasks[s.name]
                if not self._forgettable(old):
                    raise DuplicateTaskError(s.name)
                reused.append(old)
            names.add(s.name)
        self._check_cycles(specs)
        return reused

    def _check_lookups(self, specs: Sequence[Spec]) -> None:
        """Look up, before anything changes, every item of a type that could compare
        badly with an item of another task (``Task()`` checked each task on its own): an
        ``__eq__`` that raises is a ``SpecError`` here, never an event broken half-way."""
        items, locks = self._items, self._locks
        for s in specs:
            if not (s.dependencies or s.provides or s.claims or s.uses):
                continue  # (the usual: no item at all)
            for table, field_, group in (
                (items, "requires/provides", (s.dependencies, s.provides)),
                (locks, "claims/uses", (s.claims, s.uses)),
            ):
                for its in group:
                    for i in its:
                        if type(i) in _PLAIN_ITEMS:
                            continue
                        try:
                            table.get(i)
                        except Exception as exc:
                            raise SpecError(
                                f"task {s.name!r}: {field_} item {safe_repr(i)} cannot be "
                                f"compared with an item of another task: {safe_repr(exc)}"
                            ) from exc

    def _check_cycles(self, specs: Sequence[Spec]) -> None:
        """Raise CycleError if the batch closes a cycle (never an assert: works under -O).

        A cycle through an older task needs an older task waiting on something the batch
        provides; only then is the search widened beyond the batch.
        """
        # a task without dependencies cannot be on a cycle: start from the others only
        todo = [s.name for s in specs if s.dependencies]
        if not todo:
            return
        by_name = {s.name: s for s in specs}
        batch_providers: dict[Hashable, list[str]] = {}
        for s in specs:
            for item in s.provides:
                batch_providers.setdefault(item, []).append(s.name)
        widen = any(
            any(w.state is _WAITING for w in self._items[i].waiters)
            for i in batch_providers
            if i in self._items
        ) or any(s.name in self._awaited_outputs for s in specs)
        if not widen and _in_dependency_order(specs, by_name, batch_providers):
            return  # every edge points back to an earlier task of the batch: no cycle
        graph: dict[str, set[str]] = {}
        while todo:
            n = todo.pop()
            if n in graph:
                continue
            deps: set[str] = set()
            spec = by_name[n] if n in by_name else self._tasks[n].spec
            for item in spec.dependencies:
                rec = self._items.get(item)
                if rec is not None and rec.satisfied:
                    continue
                if type(item) is OutputItem:
                    if item.name in by_name:
                        deps.add(item.name)
                    elif widen:
                        p = self._tasks.get(item.name)
                        if p is not None and not p.state.terminal:
                            deps.add(item.name)
                    continue
                deps.update(batch_providers.get(item, ()))
                if widen and rec is not None:
                    deps.update(p.name for p in rec.pending())
            graph[n] = deps
            todo.extend(d for d in deps if d not in graph)
        try:
            graphlib.TopologicalSorter(graph).prepare()
        except graphlib.CycleError as exc:
            cycle = list(reversed(exc.args[1]))
            raise CycleError(cycle) from None

    def _clock(self, now: float) -> None:
        if now > self._now:
            self._now = now

    def _enter(self, t: _T, sealed: bool) -> None:
        spec = t.spec
        opts = spec._opts
        if t.state is not _NEW:  # skipped already by a cascade within the batch
            return
        # the delay counts from submission (no new float when there is none)
        t.when = self._now + opts.delay if opts.delay else self._now
        if self.pool_size or opts.resources:  # (else nothing can be too big: no call)
            err = self._never_fits(t)
            if err is not None:
                self._end(t, _SKIPPED, err)
                return
        if not spec.dependencies:
            # the usual: ready now; no delay and no lock go straight to the queue
            if t.when <= self._now and not opts.claims and not opts.uses:
                self._queue(t)  # (_ready -> _to_locks -> _queue, two calls less)
            else:
                self._ready(t)
            return
        unmet: list[Hashable] = []
        for item in spec.dependencies:
            rec = self._dep_item(item)
            if rec.satisfied:
                if rec.provider is not None:
                    t.parents = _with(t.parents, rec.provider)
                    rec.provider.consumers += 1
            else:
                unmet.append(item)
        if unmet:
            dead = [i for i in unmet if self._items[i].dead]
            orphan = [
                i for i in unmet if self._items[i].providers is None and not self._items[i].failed
            ]
            if dead or (sealed and orphan):
                # in the order they failed: item order follows hashes, which vary by run
                parents = sorted(
                    {p for i in dead for p in self._items[i].failed}, key=lambda p: p.finish_seq
                )
                root = self._roots.get(parents[0], parents[0].name) if parents else None
                if root is not None:
                    self._roots[t] = root
                failed = _unique(p.name for p in parents)
                self._end(t, _SKIPPED, _dep_error(t, orphan if sealed else [], failed, root))
                return
            t.missing = len(unmet)
            for i in unmet:
                item_rec = self._items[i]
                item_rec.waiters = _with(item_rec.waiters, t)
            self._move(t, _WAITING)
            return
        self._ready(t)

    def _never_fits(self, t: _T) -> NotRunError | None:
        spec = t.spec
        opts = spec._opts
        if self.pool_size:
            limit = self.tier_limit(spec.tier)
            if limit is not None and opts.weight > limit:
                return CapacityError(t.name, opts.weight, limit)
        if not opts.resources:
            return None
        if spec.runs_on in self.elsewhere:
            short = dict(self.elsewhere[spec.runs_on](spec))
        else:
            short = {
                k: v - self.capacity.get(k, 0.0)
                for k, v in opts.resources.items()
                if v > self.capacity.get(k, 0.0)
            }
        if short:
            return ResourceError(t.name, short)
        return None

    # ------------------------------------------------------------ readiness

    def _ready(self, t: _T) -> None:
        """Dependencies met: delay, then locks, then the admission queue."""
        due = t.when
        if due > self._now:
            # the delay counts from submission and holds no slot while it runs out
            self._move(t, _DELAYED)
            first = not self._delayed or due < self._delayed[0][0]
            heapq.heappush(self._delayed, (due, t.seq, t))
            if first:
                self._out.append(WakeAt(due))
            return
        self._to_locks(t)

    def _to_locks(self, t: _T) -> None:
        opts = t.spec._opts
        if not opts.claims and not opts.uses:
            self._queue(t)
            return
        for r, excl in t.locks:
            lock = self._locks.get(r)
            if lock is not None and lock.conflicts_stuck(excl):
                self._lock_skips += 1
                self._end(t, _SKIPPED, LockError(t.name, r, lock.stuck[0].name))
                return
        self._move(t, _LOCKED)
        t.lock_missing = len(opts.claims) + len(opts.uses)
        for r, excl in t.locks:
            lock = self._locks.get(r)
            if lock is None:
                lock = self._locks[r] = _Lock()
            if not lock.fifo and lock.compatible(excl):
                self._grant(lock, t, excl)
            else:
                lock.fifo.append((t, excl))
        if t.lock_missing == 0:
            self._queue(t)

    def _grant(self, lock: _Lock, t: _T, excl: bool) -> None:
        lock.granted.add(t)
        lock.granted_excl = excl
        t.lock_missing -= 1

    def _advance(self, r: Hashable, lock: _Lock) -> None:
        """Grant the FIFO's head waiters while they are compatible."""
        fifo = lock.fifo
        while fifo:
            t, excl = fifo[0]
            if t.state is not _LOCKED:
                fifo.popleft()  # settled while waiting: drop lazily
                continue
            if not lock.compatible(excl):
                return
            fifo.popleft()
            self._grant(lock, t, excl)
            if t.lock_missing == 0:
                self._queue(t)

    def _queue(self, t: _T) -> None:
        self._move(t, _QUEUED)
        if self._holding:
            self._held.append(t)
        else:
            self._queues[t.spec.tier].push(t)
        self.stats.queued_by_tier[t.spec.tier] += 1
        if self._alarm_after:
            t.when = self._now  # (from now on: when it was queued)
            self._just_queued.append(t)

    def _arm_alarms(self) -> None:
        """Alarm deadlines for the tasks still queued after admission (not the others).

        An alarm already due is raised now: a task held by ``submit(admit=False)`` is
        armed at the first admission after it, which may come after its alarm time (it
        was a ``WakeAt`` for the present, and the alarm one wake-up late)."""
        alarms, now = self._alarms, self._now
        for t in self._just_queued:
            if t.state is not _QUEUED:
                continue
            for level, after in self._alarm_after:
                when = t.when + after
                if when <= now:
                    self._out.append(Alarm(t.name, level, now - t.when))
                    continue
                if not alarms or when < alarms[0][0]:
                    self._out.append(WakeAt(when))
                heapq.heappush(alarms, (when, t.seq, level, t.name))
        self._just_queued.clear()

    # ------------------------------------------------------------ admission

    def _admit(self) -> None:
        self._admit_heads()
        if self._just_queued:
            self._arm_alarms()

    def _admit_heads(self) -> None:
        if self.paused:
            return
        queues = self._queues
        # the tiers in order, those with nothing queued left out: admitting never queues
        # a task (it only starts them), so a queue found empty stays empty till the end,
        # and a burst is not three head() calls per task on empty tiers
        active = [
            q
            for q in (
                queues[_CRITICAL],
                queues[_HIGH],
                queues[_NORMAL],
                queues[_LOW],
            )
            if q.fifo or q.heap
        ]
        while active:
            for q in active:
                t = q.head()
                if t is None:
                    active.remove(q)  # (only settled entries were left)
                    break
                if self._fits(t):
                    q.pop(t)
                    if self._rule is not None and not self._rule_allows(t):
                        self._rule_held.append(t)  # the next in its tier may go
                    else:
                        self._start(t)
                    break
            else:
                return

    def _rule_allows(self, t: _T) -> bool:
        """Ask the admission rule. A rule that raises, or that refuses while nothing runs
        (nothing would end to ask it again: a hang), is overruled with a warning."""
        assert self._rule is not None
        running = tuple(self._running_specs.values())
        try:
            ok = bool(self._rule(t.spec, running))
        except Exception as exc:
            self._out.append(Warn(f"the admit rule raised {exc!r} for {t.name!r}; admitted"))
            return True
        if not ok and not running:
            self._out.append(
                Warn(
                    f"the admit rule held back {t.name!r} while nothing runs (nothing would "
                    "ask it again); admitted"
                )
            )
            return True
        return ok

    def _reoffer(self) -> None:
        """Something ended: what the admission rule refused is asked again."""
        held, self._rule_held = self._rule_held, []
        for t in held:
            if t.state is _QUEUED:
                self._queues[t.spec.tier].push(t)

    def _fits(self, t: _T) -> bool:
        spec = t.spec
        opts = spec._opts
        if spec.tier is not _CRITICAL:
            if self.gate_closed:
                return False
            limit = self.tier_limit(spec.tier)
            if limit is not None and self.busy + opts.weight > limit:
                return False
        if not opts.resources or spec.runs_on in self.elsewhere:
            return True
        used, cap = self.used, self.capacity
        return all(used.get(k, 0.0) + v <= cap.get(k, 0.0) for k, v in opts.resources.items() if v)

    def _start(self, t: _T) -> None:
        spec = t.spec
        if self._rule is not None:
            self._running_specs[t.name] = spec
        self.stats.queued_by_tier[spec.tier] -= 1
        if t.state is _QUEUED:  # (_move, inline: every task comes here)
            by_state = self._by_state
            by_state[_QUEUED] -= 1
            by_state[_RUNNING] += 1
            t.state = _RUNNING
        else:
            self._move(t, _RUNNING)  # (raises: an illegal move)
        opts = spec._opts
        if spec.tier is not _CRITICAL:
            self.busy += opts.weight
        if opts.resources and spec.runs_on not in self.elsewhere:
            for k, v in opts.resources.items():
                self.used[k] = self.used.get(k, 0.0) + v
        if opts.claims or opts.uses:
            for r, excl in t.locks:
                lock = self._locks[r]
                lock.granted.discard(t)
                if not lock.granted:
                    lock.granted_excl = False
                if excl:
                    lock.excl = t
                else:
                    lock.shared.add(t)
        ps = t.parents
        if ps:
            parents = _in_finish_order(ps)
            self._drop_parents(t)
            self._out.append(Dispatch(t.name, tuple([p.name for p in parents]), t, parents))
        else:
            self._out.append(Dispatch(t.name, (), t))

    def _free(self, t: _T) -> None:
        spec = t.spec
        if self._rule is not None:
            self._running_specs.pop(t.name, None)
            if self._rule_held:
                self._reoffer()
        opts = spec._opts
        if spec.tier is not _CRITICAL:
            self.busy -= opts.weight
        if opts.resources and spec.runs_on not in self.elsewhere:
            for k, v in opts.resources.items():
                self.used[k] = self.used.get(k, 0.0) - v

    # ------------------------------------------------------------ forgetting ended tasks

    def _drop_parents(self, t: _T) -> None:
        parents, t.parents = t.parents, _NO_PARENTS
        for p in parents:
            p.consumers -= 1
            if p.consumers == 0 and p in self._retired and self._forgettable(p):
                self._forget(p)

    def _retire(self, t: _T) -> None:
        """``t`` ended: past the ``keep_ended`` window, the oldest ended task is forgotten
        once no pending task still needs its result and its slot is free."""
        if self.keep_ended is None:
            return
        ended, keep = self._ended, self.keep_ended
        ended.append(t)
        while len(ended) > keep:
            old = ended.popleft()
            if not (old.pinned or old.consumers) and self._forgettable(old):
                self._forget(old)
            elif not old.spec.provides and self._tasks.get(old.name) is old:
                # (still known, and something needs it: forgotten when nothing does)
                self._retired.add(old)

    def unpin(self, names: Iterable[str], *, now: float = 0.0) -> list[Instruction]:
        """The handles to these tasks are gone: past the window, they may be forgotten."""
        self._clock(now)
        tasks = self._tasks
        for name in names:
            t = tasks.get(name)
            if t is not None and t.pinned:
                t.pinned = False
                self._forget_if_free(t)
        return self._flush()

    def _forgettable(self, t: _T) -> bool:
        """Ended, and nothing needs it: no handle, no consumer waiting for its result, no
        slot held. (A task that provided items stays: a later task requiring them names it
        as parent.) Without ``keep_ended``, nothing is ever forgotten."""
        return (
            self.keep_ended is not None
            and t.state in _TERMINAL
            and not (t.pinned or t.consumers or t.spec.provides or t in self._holds)
            and self._tasks.get(t.name) is t
        )

    def _forget_if_free(self, t: _T) -> None:
        if t in self._retired and self._forgettable(t):
            self._forget(t)

    def _forget(self, t: _T, tell: bool = True) -> None:
        """Drop ``t``; ``tell``: with a ``Forget`` (unless the caller asked for none)."""
        del self._tasks[t.name]
        if self._retired:
            self._retired.discard(t)
        if self._roots:
            self._roots.pop(t, None)
        self._forgotten_by_state[t.state] += 1
        if t.out_item:
            self._items.pop(OutputItem(t.name), None)
        if tell and self._forgets:
            self._forgotten.append(t.name)

    # ------------------------------------------------------------ dependencies and failure

    def _provides(self, t: _T) -> Iterable[Hashable]:
        yield from t.spec.provides
        if t.out_item:
            yield OutputItem(t.name)

    def _dep_item(self, item: Hashable) -> _Item:
        """The entry of a dependency; an output item is made on first reference, from the
        state of the task it names."""
        rec = self._items.get(item)
        if rec is None:
            rec = self._items[item] = _Item()
            if type(item) is OutputItem:
                p = self._tasks.get(item.name)
                if p is None:
                    self._awaited_outputs.add(item.name)
                    return rec
                p.out_item = True
                if p.state is _DONE:
                    rec.satisfied = True
                    rec.provider = p
                elif p.state.terminal:
                    rec.failed = _with(rec.failed, p)
                else:
                    rec.add_provider(p)
        return rec

    def _item(self, item: Hashable) -> _Item:
        rec = self._items.get(item)
        if rec is None:
            rec = self._items[item] = _Item()
        return rec

    def _satisfy(self, item: Hashable, provider: _T | None) -> None:
        rec = self._item(item)
        if provider is not None:
            rec.drop_provider(provider)
        if rec.satisfied:
            return
        rec.satisfied = True
        rec.provider = provider
        waiters, rec.waiters = rec.waiters, _NO_PARENTS
        for w in waiters:
            if w.state is not _WAITING:
                continue
            if provider is not None:
                w.parents = _with(w.parents, provider)
                provider.consumers += 1
            w.missing -= 1
            if w.missing == 0:
                self._ready(w)

    def _lose(self, item: Hashable, provider: _T, root: str) -> None:
        """``provider`` ended without providing ``item``; skip its waiters if it is dead."""
        rec = self._item(item)
        rec.drop_provider(provider)
        if rec.satisfied:
            return
        rec.failed = _with(rec.failed, provider)
        if not rec.dead:
            return
        waiters, rec.waiters = rec.waiters, _NO_PARENTS
        failed = _unique(p.name for p in rec.failed)
        for w in waiters:
            if w.state is _WAITING:
                self._roots[w] = root
                self._end(w, _SKIPPED, _dep_error(w, [], failed, root))

    def _skip_stuck_waiters(self, r: Hashable, lock: _Lock) -> None:
        holder = lock.stuck[-1]  # the failure that just made these waiters hopeless
        live = [(w, excl) for w, excl in lock.fifo if w.state is _LOCKED]
        hopeless = [w for w, excl in live if lock.conflicts_stuck(excl)]
        # settle them after the FIFO is rebuilt: settling advances the FIFOs they were in
        gone = set(hopeless)
        lock.fifo = deque((w, excl) for w, excl in live if w not in gone)
        for w in hopeless:
            self._lock_skips += 1  # (the failure's warning counts skips by cause)
            self._end(w, _SKIPPED, LockError(w.name, r, holder.name))

    def _end(self, t: _T, state: State, error: NotRunError) -> None:
        """Settle a task that is not running (SKIPPED/CANCELLED) and cascade."""
        was = t.state
        self._move(t, state)
        t.finish_seq = next(self._finish_seq)
        if was is _QUEUED:
            self.stats.queued_by_tier[t.spec.tier] -= 1
        if was in (_LOCKED, _QUEUED) and (t.spec._opts.claims or t.spec._opts.uses):
            # granted or still in the FIFO, it may have held back later waiters: let them on
            # (a FIFO drops settled entries lazily, so advancing is all it takes)
            for r, _excl in t.locks:
                lock = self._locks[r]
                if t in lock.granted:
                    lock.granted.discard(t)
                    if not lock.granted:
                        lock.granted_excl = False
                self._advance(r, lock)
        self._out.append(Settle(t.name, state, error, t))
        self._drop_parents(t)
        root = self._roots.get(t, t.name) if self._roots else t.name
        for item in self._provides(t):
            self._lose(item, t, root)
        self._retire(t)

    def _cancel(self, t: _T, reason: str) -> None:
        if t.state.terminal:
            return
        if t.state is _RUNNING:
            self._out.append(Cancel(t.name, reason, t))
        else:
            self._end(t, _CANCELLED, TaskCancelled(t.name, reason))

    def _cancel_all(self, reason: str) -> None:
        for t in sorted(self._tasks.values(), key=lambda t: t.seq):
            self._cancel(t, reason)

    # ------------------------------------------------------------ bookkeeping

    def _move(self, t: _T, to: State) -> None:
        was = t.state
        if to not in _MOVES.get(was, ()):
            raise PlannerBug(f"illegal move of task {t.name!r}: {was.name} -> {to.name}")
        stats = self._by_state
        stats[was] -= 1
        stats[to] += 1
        t.state = to

    def _flush(self) -> list[Instruction]:
        out, self._out = self._out, []
        if self._forgotten:
            out.append(Forget(tuple(self._forgotten)))
            self._forgotten = []
        return out

    def validate_state(self) -> None:
        """Check every internal invariant; raises PlannerBug. Cheap enough for tests."""
        _check(not _NO_PARENTS, "the shared empty list was filled")
        for kept, what in (
            (self._holds, "holds"),
            (self._roots, "roots"),
            (self._retired, "retired"),
        ):
            for t in kept:  # (no record forgotten or replaced lingers in these)
                _check(self._tasks.get(t.name) is t, f"{t.name} in {what} but not known")
                _check(t.state.terminal, f"{t.name} in {what} but {t.state.name}")
        counts = dict(self._forgotten_by_state)
        consumers: dict[str, int] = {}
        busy = 0
        used = dict.fromkeys(self.capacity, 0.0)
        for t in self._tasks.values():
            counts[t.state] += 1
            for p in t.parents:
                consumers[p.name] = consumers.get(p.name, 0) + 1
            if t.parents:
                _check(not t.state.terminal and t.state is not _RUNNING, f"{t.name} parents")
            if t.state is _RUNNING or t in self._holds:
                _check(t.state is _RUNNING or t.state.terminal, f"{t.name} holds a slot")
                if t.spec.tier is not _CRITICAL:
                    busy += t.spec.weight
                if t.spec.runs_on not in self.elsewhere:
                    for k, v in t.spec.resources.items():
                        used[k] = used.get(k, 0.0) + v
            if t.state is _WAITING:
                unmet = sum(
                    not (i in self._items and self._items[i].satisfied) for i in t.spec.dependencies
                )
                _check(unmet == t.missing, f"{t.name}: missing {t.missing} != {unmet}")
                _check(unmet > 0, f"{t.name}: WAITING with no unmet dependency")
            if t.state in _RAN:
                for i in t.spec.dependencies:
                    # (once dispatched, a parent's output item may be forgotten, its name
                    # reused: only tasks not dispatched yet are checked strictly)
                    rec = self._items.get(i)
                    _check(
                        (rec is not None and rec.satisfied) or t.state is not _QUEUED,
                        f"{t.name}: {t.state.name} before {i!r}",
                    )
        for t in self._tasks.values():
            _check(t.consumers == consumers.get(t.name, 0), f"{t.name}: consumers {t.consumers}")
        stats = dict(self.stats.by_state)
        _check(counts == stats, f"state counts {counts} != stats {stats}")
        _check(busy == self.busy, f"busy {self.busy} != {busy}")
        for k in used.keys() | self.used.keys():
            _check(
                abs(used.get(k, 0.0) - self.used.get(k, 0.0)) < 1e-9,
                f"resource {k}: {self.used.get(k)} != {used.get(k)}",
            )
        for r, lock in self._locks.items():
            if lock.excl is not None:
                _check(not lock.shared, f"lock {r!r}: exclusive and shared holders")
                _check(
                    lock.excl.state is _RUNNING
                    or lock.excl in lock.stuck
                    or lock.excl in self._holds,
                    f"lock {r!r}: holder {lock.excl.name} is {lock.excl.state.name}",
                )
            for h in lock.shared:
                _check(
                    h.state is _RUNNING or h in lock.stuck or h in self._holds,
                    f"lock {r!r}: shared holder {h}",
                )
            for g in lock.granted:
                _check(g.state in (_LOCKED, _QUEUED), f"lock {r!r}: granted {g}")
            if lock.granted_excl:
                _check(len(lock.granted) == 1, f"lock {r!r}: two granted claimants")
                _check(lock.excl is None and not lock.shared, f"lock {r!r}: granted over holder")
        for tier, q in self._queues.items():
            entries = q.entries()
            _check(
                all(
                    a.seq < b.seq and a.spec.priority == 0.0 for a, b in itertools.pairwise(q.fifo)
                ),
                f"tier {tier.name}: FIFO out of order",
            )
            n = sum(1 for *_, t in entries if t.state is _QUEUED)
            n += sum(
                1
                for t in (*self._held, *self._rule_held)
                if t.state is _QUEUED and t.spec.tier is tier
            )
            _check(n == self.stats.queued_by_tier[tier], f"tier {tier.name}: {n} queued")
        if not self.paused:  # admission is maximal: no head fits now (held ones wait)
            for tier, q in self._queues.items():
                heads = [t for *_, t in sorted(q.entries()) if t.state is _QUEUED][:1]
                for t in heads:
                    _check(not self._fits(t), f"tier {tier.name}: head {t.name} fits but waits")


def _in_dependency_order(
    specs: Sequence[Spec], by_name: Mapping[str, Spec], providers: Mapping[Hashable, list[str]]
) -> bool:
    """Does every task of the batch come after every batch task it may wait for?

    Then the batch's order is a topological order and it holds no cycle: one pass over
    the edges instead of ``graphlib`` (most batches are written parents first). A task
    that provides what it requires, or any edge to a later task, answers False and the
    full check decides.
    """
    seen: set[str] = set()
    for s in specs:
        for item in s.dependencies:
            if type(item) is OutputItem:
                if item.name in by_name and item.name not in seen:
                    return False
            else:
                for p in providers.get(item, ()):
                    if p not in seen:
                        return False
        seen.add(s.name)
    return True


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise PlannerBug(msg)


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _sorted(items: Iterable[Hashable]) -> list[Hashable]:
    return sorted(items, key=safe_repr)


def _dep_error(
    t: _T, missing: Iterable[Hashable], failed: Sequence[str], root: str | None = None
) -> DependencyError:
    return DependencyError(
        t.name,
        missing=_sorted(missing),
        failed=failed,
        root=root if root is not None and root not in failed else None,
    )
