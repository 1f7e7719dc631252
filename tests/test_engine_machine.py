"""A hypothesis state machine over the real engine: one ``tv.Supervisor`` per example.

Each example starts its own supervisor (no aloops; the thread pool and ``"main"``) on a
fresh event loop (asyncio or uvloop), drives it with random steps and closes it:

- submit thread tasks and ``runs_on="main"`` coroutines, each blocked on a gate the
  machine opens later, some with ``requires``/``provides`` between them, ``retries``,
  attempts that raise, an ``output`` reference to an earlier task (sometimes through a
  projection that raises at dispatch), submitted from the loop or from another thread;
- submit plain ``runs_on="main"`` functions that, while the engine carries out their
  dispatch, cancel a sibling or submit a follow-up;
- cancel from the test (on the loop or from another thread), ``provide`` an item, open one
  gate, or open several at once (a burst: several pool threads finish together);
- ``fail_fast`` supervisors sometimes; close by draining, by ``aclose(cancel=True)``
  with gates still shut (abandoned threads return after the close), or both at once.

After every step the machine waits until the engine is quiet (every dispatched task is
blocked on its gate or has ended and been delivered; every attempt that returned has had
its report taken in). The wait is on events the tasks, the engine and the done callbacks
set, never on time, so an example replays the same way except for the burst step, whose
completions race one another.

Checked on every call of ``Engine._carry_out`` (the instance's, wrapped): it is never
entered while it already runs on the same stack (or on another thread), ``_draining`` is
set and the engine lock is held. Checked after every step: nothing logged at CRITICAL
(an internal error), the queue is empty and not draining, a task cancelled while it could
not finish by itself ended CANCELLED, a released task ended as its retries say. Checked
at teardown: every task ended exactly once (one TaskRes per handle, the same one its
done callback got, on the loop's thread, exactly once), in a final state, none left
running, every slot given back, every attempt that ran reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st
import pytest
import uvloop
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import taskvisor as tv
from taskvisor import State

ITEMS = ("x", "y", "z")
MAX_TASKS = 14
SETTLE_LIMIT = 10.0  # seconds; only a hang (a bug) ever gets near it
LIVE = frozenset({State.NEW, State.WAITING, State.DELAYED, State.LOCKED, State.QUEUED})
CANCELLED = frozenset({State.CANCELLED})
NOT_RUN = frozenset({State.CANCELLED, State.SKIPPED})

# what the examples exercised, over a whole run (checked at the end of the test)
COVERAGE: Counter[str] = Counter()


class Boom(Exception):
    """What a failing attempt or projection raises."""


def same(value: Any) -> Any:
    return value


def explode(value: Any) -> Any:
    raise Boom(f"projection of {value!r}")


@dataclass(eq=False)
class Entry:
    """One submitted task, as the machine knows it."""

    name: str
    kind: str  # "thread" | "coro" (a gated coroutine on main) | "main" (a plain function)
    fails: int  # its first `fails` attempts raise
    retries: int
    poke: Callable[[], None]
    gate: threading.Event = field(default_factory=threading.Event)
    agate: asyncio.Event | None = None  # the coroutine's gate (set together with gate)
    action: Callable[[Entry], None] | None = None  # what a "main" function does
    handle: tv.TaskHandle[Any] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    entered: int = 0  # attempts that called the function
    exited: int = 0  # attempts that left it (returned or raised)
    reported: int = 0  # reports of attempts that ran, taken in by the engine (thread)
    results: list[tv.TaskRes[Any]] = field(default_factory=list)  # done callbacks
    callback_threads: list[int] = field(default_factory=list)
    threads: set[threading.Thread] = field(default_factory=set)  # that ran its attempts
    task: asyncio.Task[Any] | None = None  # a coroutine's asyncio Task (its attempt now)
    expect: frozenset[State] | None = None  # how it must end (checked once it has)

    @property
    def blocked(self) -> bool:
        """In its function, waiting at a gate that is shut (and not being cancelled)."""
        if self.task is not None and self.task.cancelling():
            return False  # (its finally runs at the loop's next turn)
        return self.entered - self.exited == 1 and not self.gate.is_set()

    def open(self) -> None:
        self.gate.set()
        if self.agate is not None:
            self.agate.set()

    def enter(self) -> int:
        with self.lock:
            self.entered += 1
            attempt = self.entered
            if self.kind == "thread":
                self.threads.add(threading.current_thread())
        self.poke()
        return attempt

    def leave(self) -> None:
        with self.lock:
            self.exited += 1
        self.poke()

    def answer(self, attempt: int, inputs: tuple[Any, ...]) -> dict[str, Any]:
        if attempt <= self.fails:
            raise Boom(f"{self.name}: attempt {attempt}")
        return {"name": self.name, "inputs": inputs}


def thread_work(e: Entry, *inputs: Any) -> dict[str, Any]:
    attempt = e.enter()
    try:
        e.gate.wait()
        return e.answer(attempt, inputs)
    finally:
        e.leave()


async def coro_work(e: Entry, *inputs: Any) -> dict[str, Any]:
    e.task = asyncio.current_task()
    attempt = e.enter()
    try:
        assert e.agate is not None
        await e.agate.wait()
        return e.answer(attempt, inputs)
    finally:
        e.leave()


def main_work(e: Entry, *inputs: Any) -> dict[str, Any]:
    attempt = e.enter()
    try:
        if attempt == 1 and e.action is not None:
            e.action(e)  # (inside the engine: while it carries out this dispatch)
        return e.answer(attempt, inputs)
    finally:
        e.leave()


@dataclass(frozen=True)
class Plan:
    """How to build one task."""

    requires: frozenset[str]
    provides: str | None
    ref: int | None  # an earlier task (index modulo their number) whose output it takes
    projection: str  # "plain" | "same" | "raises"
    retries: int
    fails: int


PLANS = st.builds(
    Plan,
    requires=st.sampled_from([(), (), (), ("x",), ("y",), ("x", "y")]).map(frozenset),
    provides=st.sampled_from([None, None, *ITEMS]),
    ref=st.none() | st.integers(0, 99),
    projection=st.sampled_from(["plain", "plain", "same", "raises"]),
    retries=st.integers(0, 2),
    fails=st.sampled_from([0, 0, 0, 1, 3]),
).filter(lambda p: p.provides not in p.requires)
INDEX = st.integers(0, 99)


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sup: tv.Supervisor | None = None
        self.entries: list[Entry] = []
        self.by_name: dict[str, Entry] = {}
        self.violations: list[str] = []
        self.critical: list[logging.LogRecord] = []
        self.changed: asyncio.Event | None = None
        self.loop_thread = threading.get_ident()
        self.all_open = False  # tasks made from now on start with their gate open
        self.ending = ""
        self.fail_fast = False
        self.failed = False  # (under fail_fast: has a task failed yet?)
        self.names = 0
        self._handler: logging.Handler | None = None
        self._warnings: warnings.catch_warnings[None] | None = None
        self._level = logging.NOTSET

    # ------------------------------------------------------------ set-up and wrappers

    @initialize(
        fail_fast=st.booleans(),
        pool_size=st.integers(1, 3),
        loop_kind=st.sampled_from(["asyncio", "uvloop"]),
        ending=st.sampled_from(["drain", "cancel", "race"]),
    )
    def start(self, fail_fast: bool, pool_size: int, loop_kind: str, ending: str) -> None:
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore", tv.TaskvisorWarning)  # abandoned threads: expected
        log = logging.getLogger("taskvisor")
        self._level = log.level
        log.setLevel(logging.CRITICAL)  # the per-task log lines cost time; bugs still show
        self._handler = _Collect(self.critical)
        log.addHandler(self._handler)
        self.loop = uvloop.new_event_loop() if loop_kind == "uvloop" else asyncio.new_event_loop()
        self.changed = asyncio.Event()
        self.ending = ending
        self.fail_fast = fail_fast
        # one thread per slot, and one spare: every dispatched thread task gets a thread
        # (an abandoned attempt keeps its slot until it returns)
        sup = tv.Supervisor(
            pool_size=pool_size, threads=pool_size + 1, aloops=(), fail_fast=fail_fast
        )
        self.run(sup.start())
        self.sup = sup
        self._wrap(sup)
        self.run(self.settle())  # (binds the Event to this loop)

    def _wrap(self, sup: tv.Supervisor) -> None:
        """Watch the engine through its instance attributes (they outlive module moves)."""
        depth = threading.local()
        active = [0]  # _carry_out frames running now, on any thread
        violations = self.violations
        carry_out, execute, on_done = sup._carry_out, sup._execute, sup._on_done
        deliver = sup._deliver

        def watched_carry_out() -> None:
            mine = getattr(depth, "n", 0)
            where = threading.current_thread().name
            if mine:
                violations.append(f"_carry_out re-entered on {where} (depth {mine})")
            if active[0]:
                violations.append(f"_carry_out entered on {where} while another runs it")
            if not sup._draining:
                violations.append(f"_carry_out ran on {where} without _draining set")
            if sup._engine.depth < 1:
                violations.append(f"_carry_out ran on {where} without the engine lock")
            COVERAGE["carry_out on " + _kind_of(where, self.loop_thread)] += 1
            depth.n = mine + 1
            active[0] += 1
            try:
                carry_out()
            finally:
                active[0] -= 1
                depth.n = mine

        def watched_execute(instrs: Any) -> None:
            if getattr(depth, "n", 0):
                COVERAGE["instructions made while carrying out (queued behind)"] += 1
            execute(instrs)

        def watched_on_done(job: Any, result: Any) -> None:
            here = threading.get_ident() == self.loop_thread
            if not here:
                COVERAGE["completion taken in by its pool thread"] += 1
            try:
                on_done(job, result)
            finally:
                e = self.by_name.get(job.name)
                if e is not None and job.returned:  # (the last report of an attempt that ran)
                    e.reported += 1
                self.poke()

        def watched_deliver(
            rec: Any, state: State, ret: Any, shared: Any, excinfo: Any, worker: Any, now: float
        ) -> None:
            if state is State.FAILED and self.fail_fast and not self.failed:
                self._expect_fail_fast(rec.spec.name)
            deliver(rec, state, ret, shared, excinfo, worker, now)

        sup._deliver = watched_deliver  # type: ignore[method-assign]
        sup._carry_out = watched_carry_out  # type: ignore[method-assign]
        sup._execute = watched_execute  # type: ignore[method-assign]
        sup._on_done = watched_on_done  # type: ignore[method-assign]

    # ------------------------------------------------------------ plumbing

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        assert self.loop is not None
        return self.loop.run_until_complete(coro)

    def step(self, act: Callable[[], object]) -> None:
        """Do ``act`` on the loop's thread while the loop runs, then wait until it settles."""

        async def go() -> None:
            act()
            await self.settle()

        self.run(go())

    def poke(self) -> None:
        """Something changed (from any thread): the settling step looks again."""
        loop, changed = self.loop, self.changed
        assert loop is not None and changed is not None
        if threading.get_ident() == self.loop_thread:
            changed.set()
        else:
            with contextlib.suppress(RuntimeError):  # (closed: a failed example's cleanup)
                loop.call_soon_threadsafe(changed.set)

    def in_thread(self, fn: Callable[[], Any]) -> Any:
        """Call ``fn`` from a thread of the user's, and wait for it."""
        out: list[tuple[bool, Any]] = []

        def call() -> None:
            try:
                out.append((True, fn()))
            except BaseException as exc:
                out.append((False, exc))

        t = threading.Thread(target=call, name="machine-user-thread")
        t.start()
        t.join(SETTLE_LIMIT)  # (it never waits for the loop: the loop may block here)
        assert out, f"a call from a user's thread never returned: {self.describe()}"
        ok, value = out[0]
        if not ok:
            raise value
        return value

    def settled(self) -> bool:
        for e in self.entries:
            if e.kind == "thread" and e.reported != e.exited:
                return False  # an attempt returned; its report is on its way
            if e.entered != e.exited and not e.blocked:
                return False  # on its way out (an abandoned attempt's too, after its end)
            if e.results:
                continue
            assert e.handle is not None
            state = e.handle.state
            if state.terminal:
                return False  # ended; its done callback is on its way
            if state is State.RUNNING and (e.kind == "main" or not e.blocked):
                return False  # on its way to its gate, or to its end
        return True

    async def settle(self) -> None:
        """Wait until the engine is quiet: see the module docstring."""
        sup, changed = self.sup, self.changed
        assert sup is not None and changed is not None
        await asyncio.sleep(0)  # the end of this turn: single submits are admitted
        loop = asyncio.get_running_loop()
        give_up = loop.time() + SETTLE_LIMIT
        while True:
            changed.clear()
            late = loop.time() > give_up
            if (sup._deferred or sup._admit_soon) and not late:
                await asyncio.sleep(0)  # (the loop takes these in at its next turn)
                continue
            if self.settled():
                return
            try:
                await asyncio.wait_for(changed.wait(), max(0.0, give_up - loop.time()))
            except TimeoutError:
                raise AssertionError(f"the engine never settled: {self.describe()}") from None

    def describe(self) -> str:
        return "; ".join(
            f"{e.name} ({e.kind}) in {e.entered} out {e.exited} reported {e.reported} "
            f"gate {'open' if e.gate.is_set() else 'shut'} "
            f"{e.results[0].state.name if e.results else e.handle and e.handle.state.name}"
            for e in self.entries
        )

    def _done(self, e: Entry, res: tv.TaskRes[Any]) -> None:
        e.results.append(res)
        e.callback_threads.append(threading.get_ident())
        self.poke()

    # ------------------------------------------------------------ building tasks

    def _new(self, kind: str, plan: Plan, action: Callable[[Entry], None] | None = None) -> Entry:
        self.names += 1
        e = Entry(f"{kind}{self.names}", kind, plan.fails, plan.retries, self.poke)
        e.action = action
        if kind == "coro":
            e.agate = asyncio.Event()
        if self.all_open or kind == "main":
            e.open()
        return e

    def _task(self, e: Entry, plan: Plan) -> tv.Task[Any]:
        inputs: tuple[Any, ...] = ()
        if plan.ref is not None and self.entries:
            parent = self.entries[plan.ref % len(self.entries)]
            assert parent.handle is not None
            out = parent.handle.output
            if plan.projection == "same":
                out = out.map(same)
            elif plan.projection == "raises":
                out = out.map(explode)
            inputs = (out,)
        fn: Any = {"thread": thread_work, "coro": coro_work, "main": main_work}[e.kind]
        return tv.Task(
            fn,
            (e, *inputs),
            name=e.name,
            runs_on="thread" if e.kind == "thread" else "main",
            requires=plan.requires,
            provides=() if plan.provides is None else (plan.provides,),
            retries=plan.retries,
        )

    def _submit(self, e: Entry, plan: Plan, from_thread: bool) -> None:
        """Submit ``e`` (on the loop, inside the engine, or from another thread)."""
        sup = self.sup
        assert sup is not None
        task = self._task(e, plan)
        try:
            handle = self.in_thread(lambda: sup.submit(task)) if from_thread else sup.submit(task)
        except tv.CycleError:
            COVERAGE["cycle refused"] += 1
            return
        e.handle = handle
        self.entries.append(e)
        self.by_name[e.name] = e
        handle.add_done_callback(lambda res: self._done(e, res))

    # ------------------------------------------------------------ rules

    @precondition(lambda self: len(self.entries) < MAX_TASKS)
    @rule(
        kind=st.sampled_from(["thread", "thread", "coro"]),
        plan=PLANS,
        from_thread=st.booleans(),
    )
    def submit_gated(self, kind: str, plan: Plan, from_thread: bool) -> None:
        self.step(lambda: self._submit(self._new(kind, plan), plan, from_thread))

    @precondition(lambda self: len(self.entries) < MAX_TASKS)
    @rule(
        plan=PLANS,
        does=st.sampled_from(["nothing", "cancel", "submit thread", "submit main"]),
        victim_at=INDEX,
        follow=PLANS,
    )
    def submit_main(self, plan: Plan, does: str, victim_at: int, follow: Plan) -> None:
        """A plain function on main: it runs inside the engine, while the engine carries
        out its dispatch, and cancels a sibling or submits a follow-up from there. (It
        picks its victim when it runs: a task submitted after it, whose dispatch may wait
        further down the same instruction list, too.)"""
        action: Callable[[Entry], None] | None = None
        if does == "cancel":

            def action(me: Entry) -> None:
                assert self.sup is not None
                COVERAGE["cancel from inside the engine"] += 1
                victim = self.entries[victim_at % len(self.entries)]
                if victim is not me:
                    self._expect_cancel(victim, me)
                    self.sup.cancel(victim.name)

        elif does.startswith("submit"):
            kind = does.split()[1]

            def action(me: Entry) -> None:
                COVERAGE["submit from inside the engine"] += 1
                try:
                    self._submit(self._new(kind, follow), follow, from_thread=False)
                except tv.ClosedError:
                    COVERAGE["submit from inside the engine while closing"] += 1

        self.step(lambda: self._submit(self._new("main", plan, action), plan, False))

    @precondition(lambda self: len(self.entries) <= MAX_TASKS - 4)
    @rule(
        parent=st.sampled_from(["thread", "coro"]),
        children=st.lists(
            st.sampled_from(["thread", "coro", "raises", "cancels the next", "main"]),
            min_size=2,
            max_size=3,
        ),
    )
    def submit_family(self, parent: str, children: list[str]) -> None:
        """A gated parent and children that take its output: opening the parent's gate
        makes one instruction list of the children's dispatches (as slots allow), in
        which one child's dispatch may make an event about a sibling whose dispatch
        waits further down (a projection that raises under fail_fast, a main function
        that cancels the sibling submitted after it)."""
        plain = Plan(frozenset(), None, None, "plain", 0, 0)

        def submit_them() -> None:
            self._submit(self._new(parent, plain), plain, False)
            at = len(self.entries) - 1
            for child in children:
                plan = Plan(frozenset(), None, at, "raises" if child == "raises" else "plain", 0, 0)
                if child == "cancels the next":
                    e = self._new("main", plan, self._cancel_next)
                else:
                    e = self._new("thread" if child == "raises" else child, plan)
                self._submit(e, plan, False)

        COVERAGE["family"] += 1
        self.step(submit_them)

    def _cancel_next(self, me: Entry) -> None:
        """A main function's action: cancel the task submitted right after it."""
        assert self.sup is not None
        at = self.entries.index(me) + 1
        if at < len(self.entries):
            COVERAGE["cancel from inside the engine"] += 1
            victim = self.entries[at]
            self._expect_cancel(victim, me)
            self.sup.cancel(victim.name)

    def _expect_fail_fast(self, failed: str) -> None:
        """The first failure under ``fail_fast`` (engine held): every other task that has
        not ended and cannot end by itself (its gate is shut) ends CANCELLED, or SKIPPED
        if it needed the failed task, or FAILED by its own projection at a dispatch that
        was ahead of the cancel in the list. (A cancel carried out before its task's
        dispatch is lost: the task would run, and stay blocked at its gate.)"""
        self.failed = True
        COVERAGE["fail_fast: first failure"] += 1
        for e in self.entries:
            assert e.handle is not None
            shut = e.kind != "main" and not e.gate.is_set()
            if e.name != failed and shut and not e.handle.done() and e.expect is None:
                e.expect = NOT_RUN

    def _expect_cancel(self, victim: Entry, by: Entry | None) -> None:
        """A task that cannot end by itself (its gate is shut) ends CANCELLED if it has not
        ended when the cancel comes (or FAILED by its projection at a dispatch ahead of the
        cancel). A plain main function, or a task with its gate open, may finish first: a
        report that says OK wins over a cancel that came too late. A task the planner has
        already ended (SKIPPED: a task it needs failed at a dispatch ahead of the cancel in
        the list) keeps that end, though its TaskRes is still queued behind."""
        assert victim.handle is not None and self.sup is not None
        shut = victim.kind != "main" and not victim.gate.is_set()
        if victim is not by and shut and not victim.handle.done():
            decided = self.sup.task_state(victim.name)
            victim.expect = frozenset({decided}) if decided.terminal else CANCELLED

    @precondition(lambda self: bool(self.entries))
    @rule(victim_at=INDEX, how=st.sampled_from(["handle", "name", "thread"]))
    def cancel(self, victim_at: int, how: str) -> None:
        sup = self.sup
        assert sup is not None
        victim = self.entries[victim_at % len(self.entries)]
        handle = victim.handle
        assert handle is not None
        self._expect_cancel(victim, None)
        if how == "handle":
            self.step(handle.cancel)
        elif how == "name":
            self.step(lambda: sup.cancel(victim.name))
        else:
            self.step(lambda: self.in_thread(lambda: sup.cancel(victim.name)))

    def _shut(self) -> list[Entry]:
        return [e for e in self.entries if e.kind != "main" and not e.gate.is_set()]

    @precondition(lambda self: bool(self._shut()))
    @rule(which=INDEX)
    def release(self, which: int) -> None:
        shut = self._shut()
        e = shut[which % len(shut)]
        running = e.blocked and not e.results
        self.step(e.open)
        if running and e.expect is None:
            assert e.results, f"{e.name} was released and did not end: {self.describe()}"
            res = e.results[0]
            tries = min(e.fails, e.retries) + 1
            want = State.DONE if e.fails <= e.retries else State.FAILED
            assert (res.state, res.attempts) == (want, tries), (e.name, res, e.fails, e.retries)
            COVERAGE["released: ended as its retries say"] += 1

    @precondition(lambda self: len([e for e in self._shut() if e.kind == "thread"]) >= 2)
    @rule(which=st.lists(INDEX, min_size=2, max_size=3))
    def release_burst(self, which: list[int]) -> None:
        """Several pool threads finish at once (these completions race one another)."""
        shut = [e for e in self._shut() if e.kind == "thread"]
        COVERAGE["burst"] += 1

        def open_them() -> None:
            for i in which:
                shut[i % len(shut)].open()

        self.step(open_them)

    @rule(item=st.sampled_from(ITEMS), from_thread=st.booleans())
    def provide(self, item: str, from_thread: bool) -> None:
        sup = self.sup
        assert sup is not None
        if from_thread:
            self.step(lambda: self.in_thread(lambda: sup.provide(item)))
        else:
            self.step(lambda: sup.provide(item))

    # ------------------------------------------------------------ invariants

    @invariant()
    def the_queue_is_never_re_entered(self) -> None:
        assert not self.violations, self.violations

    @invariant()
    def no_internal_error(self) -> None:
        assert not self.critical, [r.getMessage() for r in self.critical]

    @invariant()
    def quiet_between_steps(self) -> None:
        sup = self.sup
        if sup is not None:
            assert not sup._draining, f"draining between steps: {self.describe()}"
            assert not sup._todo, f"left in the queue: {list(sup._todo)}; {self.describe()}"

    @invariant()
    def ended_as_expected(self) -> None:
        for e in self.entries:
            assert len(e.results) <= 1, f"{e.name}: {len(e.results)} done callbacks"
            if e.expect is not None:
                assert e.results, f"{e.name} was cancelled and has not ended"
                res = e.results[0]
                # (its dispatch was in the list ahead of the cancel, and its projection
                # raised there: the task ended FAILED before the cancel was carried out)
                at_dispatch = res.state is State.FAILED and isinstance(res.error, Boom)
                assert res.state in e.expect or (at_dispatch and not e.entered), (
                    e.name,
                    res,
                    e.expect,
                )

    # ------------------------------------------------------------ the end

    def teardown(self) -> None:
        try:
            if self.sup is not None:
                self.run(self._close())
        finally:
            self.all_open = True
            for e in self.entries:
                e.gate.set()  # (a failed example: no thread may stay blocked)
            sup, loop = self.sup, self.loop
            open_loop = loop is not None and not loop.is_closed()
            if sup is not None and open_loop and sup.state is not tv.SupervisorState.CLOSED:
                self.run(sup.aclose(cancel=True))
            if self.loop is not None and not self.loop.is_closed():
                self.loop.close()
            log = logging.getLogger("taskvisor")
            if self._handler is not None:
                log.removeHandler(self._handler)
            log.setLevel(self._level)
            if self._warnings is not None:
                self._warnings.__exit__(None, None, None)

    def _open_all(self) -> None:
        self.all_open = True
        for e in self.entries:
            e.open()

    async def _close(self) -> None:
        sup = self.sup
        assert sup is not None
        COVERAGE["ending: " + self.ending] += 1
        if self.ending == "drain":
            self._open_all()
            await self.settle()
            closing = sup.aclose()
        elif self.ending == "cancel":
            closing = sup.aclose(cancel=True)
        else:
            self._open_all()
            closing = sup.aclose(cancel=True)
        try:
            await asyncio.wait_for(closing, SETTLE_LIMIT)
        except TimeoutError:
            raise AssertionError(f"aclose never returned: {self.describe()}") from None
        self._open_all()
        # threads still running an abandoned attempt return now; join them, then the
        # engine takes in their last reports on the loop (after the close)
        for t in {t for e in self.entries for t in e.threads}:
            t.join(SETTLE_LIMIT)
            assert not t.is_alive(), f"{t.name} never returned"
        await self.settle()
        assert sup.state is tv.SupervisorState.CLOSED
        for e in self.entries:
            assert e.handle is not None
            res = await e.handle
            assert e.results == [res] and e.results[0] is res, (e.name, e.results)
            assert e.callback_threads == [self.loop_thread], e.name
            assert e.handle.result() is res and e.handle.done()
            assert res.state.terminal and res.name == e.name, res
            assert e.entered == e.exited, e.name
            if e.kind == "thread":
                # an attempt that was begun ran (withdrawn ones are not counted)
                assert res.attempts == e.entered, (e.name, res, e.entered)
            if res.state is State.DONE:
                assert isinstance(res.ret, dict) and res.ret["name"] == e.name, res
            elif isinstance(res.error, Boom) and not e.entered:
                COVERAGE["failed at dispatch (its projection raised)"] += 1
            elif res.state is State.CANCELLED and e.kind == "thread" and e.entered:
                COVERAGE["thread abandoned"] += 1
            COVERAGE[f"{e.kind} ended {res.state.name}"] += 1
        stats = sup.statistics()
        assert not any(stats.tasks.get(s) for s in (*LIVE, State.RUNNING)), stats.tasks
        assert all(n == 0 for n in stats.running.values()), stats.running  # slots back
        assert not self.violations, self.violations
        assert not self.critical, [r.getMessage() for r in self.critical]


def _kind_of(thread_name: str, loop_thread: int) -> str:
    if threading.get_ident() == loop_thread:
        return "the loop's thread"
    if thread_name.startswith("taskvisor-thread-"):
        return "a pool thread"
    return "a user's thread"


class _Collect(logging.Handler):
    """Keeps what taskvisor logs at CRITICAL: an internal error (a bug)."""

    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.CRITICAL)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


MACHINE_SETTINGS = settings(
    max_examples=300,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.timeout(600)  # (a failure's shrinking may take minutes; a pass takes ~20 s)
def test_engine_machine() -> None:
    COVERAGE.clear()
    run_state_machine_as_test(EngineMachine, settings=MACHINE_SETTINGS)
    # the run reached what the invariant is about (else it would pass for nothing)
    for what in (
        "instructions made while carrying out (queued behind)",
        "carry_out on a pool thread",
        "carry_out on a user's thread",
        "completion taken in by its pool thread",
        "cancel from inside the engine",
        "submit from inside the engine",
        "burst",
    ):
        assert COVERAGE[what] > 0, (what, COVERAGE)
