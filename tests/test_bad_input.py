"""Bad input fails at the call that wrote it, with a message naming the argument and value.

One test per kind of bad input. ``Task(...)`` checks everything it can alone; what needs a
supervisor (unknown ``runs_on`` targets, duplicate names, cycles, a closed supervisor) is
raised by the call that submits. Nothing here may surface later as a task failure.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from typing import Any, cast

import pytest

import taskvisor as tv
from taskvisor import SupervisorState

from .conftest import noop

# Bad input on purpose: these aliases keep the type checker out of the way.
Task: Any = tv.Task
task: Any = tv.task
Supervisor: Any = tv.Supervisor


def raises(exc: type[BaseException] | tuple[type[BaseException], ...], *fragments: str) -> Any:
    """``pytest.raises`` whose message must contain every fragment (literally)."""
    return pytest.raises(exc, match="(?s)" + "".join(f"(?=.*{re.escape(f)})" for f in fragments))


async def anoop() -> None:
    return None


class Unhashable:
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "Unhashable()"


class HashBoom:
    def __hash__(self) -> int:
        raise RuntimeError("hash boom")

    def __repr__(self) -> str:
        return "HashBoom()"


class EqBoom:
    def __hash__(self) -> int:
        return 7

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq boom")


class ReprBoom:
    def __repr__(self) -> str:
        raise RuntimeError("repr boom")


class BoolBoom:
    def __bool__(self) -> bool:
        raise RuntimeError("bool boom")

    def __repr__(self) -> str:
        return "BoolBoom()"


# ---------------------------------------------------------------- Task(...): the function


def test_task_of_a_non_callable() -> None:
    with raises(tv.SpecError, "callable", "int", "42"):
        Task(42)
    with raises(tv.SpecError, "callable", "'run me'"):
        Task("run me")


def test_task_of_a_coroutine_object_is_refused_and_closed() -> None:
    coro = anoop()
    with raises(tv.SpecError, "coroutine object", "Task(fetch, (url,))"):
        Task(coro)
    assert (
        inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
    )  # closed: no "never awaited" warning later


def test_task_args_must_be_a_tuple_or_list() -> None:
    with raises(tv.SpecError, "args", "tuple or list", "str", "'ab'"):
        Task(noop, "ab")
    with raises(tv.SpecError, "args", "int", "3"):
        Task(noop, 3)
    assert Task(noop, [1, 2]).args == (1, 2)


def test_task_kwargs_must_be_a_mapping_with_string_keys() -> None:
    with raises(tv.SpecError, "kwargs", "mapping", "list", "[1]"):
        Task(noop, (), [1])
    with raises(tv.SpecError, "kwargs keys must be strings", "(1, 2)"):
        Task(noop, (), {(1, 2): "x"})


def test_task_unknown_option() -> None:
    with raises(tv.SpecError, "unknown Task option", "colour"):
        Task(noop, colour="red")


@pytest.mark.parametrize("name", ["", 5, b"x", ("a",)])
def test_task_bad_name(name: Any) -> None:
    with raises(tv.SpecError, "name", "non-empty string", repr(name)):
        Task(noop, name=name)


# ---------------------------------------------------------------- Task(...): numbers


@pytest.mark.parametrize("weight", [-1, 1.5, True, "2", None, -(10**30)])
def test_task_bad_weight(weight: Any) -> None:
    with raises(tv.SpecError, "task 'w'", "weight must be an int >= 0", repr(weight)):
        Task(noop, name="w", weight=weight)


def test_task_weight_zero_and_int_subclasses_are_plain_ints() -> None:
    assert Task(noop, weight=0).weight == 0
    w = Task(noop, weight=tv.HIGH).weight
    assert w == 2 and type(w) is int


@pytest.mark.parametrize("retries", [-1, 1.0, True, "1"])
def test_task_bad_retries(retries: Any) -> None:
    with raises(tv.SpecError, "task 'r'", "retries must be an int >= 0", repr(retries)):
        Task(noop, name="r", retries=retries)


def test_task_negative_and_infinite_priority_are_allowed() -> None:
    assert Task(noop, priority=-5).priority == -5.0
    assert Task(noop, priority=2.5).priority == 2.5
    assert Task(noop, priority=-math.inf).priority == -math.inf
    assert type(Task(noop, priority=3).priority) is float


@pytest.mark.parametrize("priority", ["high", None, True, [1], 1j])
def test_task_non_numeric_priority(priority: Any) -> None:
    with raises(tv.SpecError, "task 'p'", "priority must be a number", repr(priority)):
        Task(noop, name="p", priority=priority)


def test_task_nan_priority_is_refused() -> None:
    # NaN compares false with everything: it would break the admission heap's order
    with raises(tv.SpecError, "task 'p'", "priority", "nan"):
        Task(noop, name="p", priority=math.nan)


def test_task_priority_too_large_for_a_float() -> None:
    with raises(tv.SpecError, "task 'p'", "priority", "too large"):
        Task(noop, name="p", priority=10**400)


HUGE = pytest.param(10**400, id="10**400")


@pytest.mark.parametrize("delay", [-1, -0.001, math.inf, math.nan, "1", True, HUGE])
def test_task_bad_delay(delay: Any) -> None:
    shown = "too large" if delay == 10**400 else repr(delay)
    with raises(tv.SpecError, "task 'd'", "delay", shown):
        Task(noop, name="d", delay=delay)


@pytest.mark.parametrize("timeout", [0, -1, -math.inf, math.nan, "1", True, HUGE])
def test_task_bad_timeout(timeout: Any) -> None:
    shown = "too large" if timeout == 10**400 else repr(timeout)
    with raises(tv.SpecError, "task 't'", "timeout", shown):
        Task(noop, name="t", timeout=timeout)


def test_task_infinite_timeout_means_none() -> None:
    assert Task(noop, timeout=math.inf).timeout is None
    assert Task(noop, timeout=2).timeout == 2.0


# ---------------------------------------------------------------- Task(...): tier, runs_on


@pytest.mark.parametrize("tier", [9, -1, "urgent", 1.0, True, None])
def test_task_bad_tier(tier: Any) -> None:
    with raises(
        tv.SpecError, "task 't'", "tier must be one of LOW, NORMAL, HIGH, CRITICAL", repr(tier)
    ):
        Task(noop, name="t", tier=tier)


def test_task_tier_by_name_and_value() -> None:
    assert Task(noop, tier="high").tier is tv.HIGH
    assert Task(noop, tier=3).tier is tv.CRITICAL
    assert Task(noop, tier=tv.LOW).tier is tv.LOW


@pytest.mark.parametrize("runs_on", [5, "", "aloop:", b"thread", ["thread"]])
def test_task_runs_on_of_the_wrong_kind(runs_on: Any) -> None:
    with raises(tv.SpecError, "task 'x'", "runs_on must be a non-empty string", repr(runs_on)):
        Task(noop, name="x", runs_on=runs_on)


# ---------------------------------------------------------------- Task(...): items and locks


@pytest.mark.parametrize("field", ["requires", "provides", "claims", "uses"])
def test_task_unhashable_items(field: str) -> None:
    with raises(tv.SpecError, "task 'u'", f"{field} items must be hashable", "['x']"):
        Task(noop, name="u", **{field: [["x"]]})
    with raises(tv.SpecError, f"{field} items must be hashable", "Unhashable()"):
        Task(noop, name="u", **{field: Unhashable()})  # a bare unhashable value


@pytest.mark.parametrize("field", ["requires", "provides", "claims", "uses"])
def test_task_items_whose_hash_or_eq_raises(field: str) -> None:
    with raises(tv.SpecError, "task 'h'", field, "HashBoom()", "hash boom"):
        Task(noop, name="h", **{field: [HashBoom()]})
    with raises(tv.SpecError, "task 'h'", field, "eq boom"):
        Task(noop, name="h", **{field: [EqBoom(), EqBoom()]})


def test_task_items_whose_iteration_raises() -> None:
    def items() -> Any:
        yield "a"
        raise RuntimeError("iter boom")

    with raises(tv.SpecError, "task 'i'", "requires", "iter boom"):
        Task(noop, name="i", requires=items())


def test_a_bare_string_is_one_item() -> None:
    # design.md: requires/provides/claims/uses hold hashable items; a string is one item,
    # never its characters (the existing suite writes claims="r" for one lock)
    t = Task(noop, requires="db", provides=b"bin", claims="lock", uses=7)
    assert t.requires == {"db"}
    assert t.provides == {b"bin"}
    assert t.claims == {"lock"}
    assert t.uses == {7}
    assert Task(noop, requires=None).requires == frozenset()


def test_the_same_resource_in_claims_and_uses() -> None:
    with raises(tv.SpecError, "task 'l'", "'db'", "both claims and uses"):
        Task(noop, name="l", claims={"db", "a"}, uses=["db", "b"])
    with raises(tv.SpecError, "both claims and uses"):
        Task(noop, claims="r", uses="r")


def test_a_task_taking_its_own_output() -> None:
    ref: tv.ResultRef[Any] = tv.ResultRef("self")
    with raises(tv.SpecError, "task 'self'", "own output"):
        Task(noop, (ref,), name="self")


def test_self_referencing_and_deeply_nested_args_build() -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    assert Task(noop, (cyclic, deep)).refs == frozenset()
    ref: tv.ResultRef[Any] = tv.ResultRef("up")
    cyclic.append({"k": ref})
    assert Task(noop, (cyclic,)).refs == {"up"}


# ---------------------------------------------------------------- Task(...): resources


def test_task_resources_must_be_a_mapping() -> None:
    with raises(tv.SpecError, "task 'r'", "resources must be a mapping", "['cpu']"):
        Task(noop, name="r", resources=["cpu"])


def test_task_resource_names_must_be_strings() -> None:
    with raises(tv.SpecError, "task 'r'", "resource names must be strings", "1"):
        Task(noop, name="r", resources={1: 2})


@pytest.mark.parametrize("need", [-1, -0.5, math.nan, math.inf, "2", None, True, HUGE])
def test_task_bad_resource_need(need: Any) -> None:
    shown = "too large" if need == 10**400 else repr(need)
    with raises(tv.SpecError, "task 'r'", "resources['cpu']", shown):
        Task(noop, name="r", resources={"cpu": need})


def test_task_resources_are_floats() -> None:
    assert Task(noop, resources={"gpu": 1, "memory_mb": 0}).resources == {
        "gpu": 1.0,
        "memory_mb": 0.0,
    }


# ---------------------------------------------------------------- @task and ResultRef


def test_task_decorator_validates_where_it_is_written() -> None:
    with raises(tv.SpecError, "weight must be an int >= 0", "-3"):
        task(weight=-3)(noop)
    with raises(tv.SpecError, "unknown task option", "colour"):
        task(colour="red")
    with raises(tv.SpecError, "cannot preset a name"):
        task(name="x")


def test_a_hostile_task_attribute_is_ignored() -> None:
    class Mock:
        def __call__(self) -> None:
            return None

        def __getattr__(self, attr: str) -> Any:
            return 5  # answers every attribute, __taskvisor__ and __qualname__ included

    class Hostile:
        def __call__(self) -> None:
            return None

        def __getattr__(self, attr: str) -> Any:
            raise RuntimeError(f"no {attr}")

    assert Task(Mock()).name.startswith("Mock-")
    assert Task(Hostile()).name.startswith("Hostile-")


@pytest.mark.parametrize("name", [5, "", None])
def test_result_ref_needs_a_task_name(name: Any) -> None:
    with raises(tv.SpecError, "ResultRef needs a task name", repr(name)):
        cast(Any, tv.ResultRef)(name)


def test_result_ref_map_needs_a_callable() -> None:
    ref: tv.ResultRef[Any] = tv.ResultRef("a")
    with raises(tv.SpecError, "ResultRef.map needs a callable", "3"):
        cast(Any, ref).map(3)


# ---------------------------------------------------------------- Supervisor(...)


def test_supervisor_unknown_keyword() -> None:
    with raises(TypeError, "unexpected keyword argument", "'colour'"):
        Supervisor(colour="red")
    with pytest.raises(TypeError):
        Supervisor(1, 2, 3, 4)


@pytest.mark.parametrize("arg", ["pool_size", "reserve_normal", "reserve_high"])
@pytest.mark.parametrize("value", [-1, 1.5, True, "2", None])
def test_supervisor_bad_slot_counts(arg: str, value: Any) -> None:
    with raises(tv.SpecError, arg, "int >= 0", repr(value)):
        Supervisor(**{arg: value})


@pytest.mark.parametrize("arg", ["threads", "processes", "result_buffer"])
@pytest.mark.parametrize("value", [0, -1, 2.0, True, "4"])
def test_supervisor_bad_pool_sizes(arg: str, value: Any) -> None:
    with raises(tv.SpecError, arg, "int >= 1", repr(value)):
        Supervisor(**{arg: value})


@pytest.mark.parametrize("aloops", [("io:1",), ("",), (1,), ("a", "a"), "x:y"])
def test_supervisor_bad_aloop_names(aloops: Any) -> None:
    with raises(tv.SpecError, "aloop"):
        Supervisor(aloops=aloops)


@pytest.mark.parametrize("aloops", [5, 1.5])
def test_supervisor_aloops_not_iterable(aloops: Any) -> None:
    # a bare "'int' object is not iterable" would name neither the argument nor the value
    with raises((TypeError, tv.SpecError), "aloops", repr(aloops)):
        Supervisor(aloops=aloops)


def test_supervisor_resources_capacities() -> None:
    with raises(tv.SpecError, "resources must be a mapping of name to capacity", "5"):
        Supervisor(resources=5)
    with raises(tv.SpecError, "resources['gpu']", "finite number >= 0", "-1"):
        Supervisor(resources={"gpu": -1})
    with raises(tv.SpecError, "resources['gpu']", "must be a number", "'x'"):
        Supervisor(resources={"gpu": "x"})


def test_supervisor_shared_must_be_a_mapping() -> None:
    with raises(tv.SpecError, "shared must be a mapping", "list"):
        Supervisor(shared=[1])


def test_supervisor_bad_start_method() -> None:
    with raises(tv.SpecError, "start_method", "'thread'"):
        Supervisor(start_method="thread")


class FakeExecutor:
    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError


@pytest.mark.parametrize("name", ["thread", "process", "main", "aloop", "aloop:x", 3])
def test_supervisor_reserved_backend_names(name: Any) -> None:
    with raises(tv.SpecError, "backend name", repr(name)):
        Supervisor(backends={name: FakeExecutor()})


def test_supervisor_empty_backend_name() -> None:
    # runs_on="" is refused by Task(), so a backend called "" could never be used
    with raises(tv.SpecError, "backend name", "''"):
        Supervisor(backends={"": FakeExecutor()})


def test_supervisor_backend_without_submit() -> None:
    with raises(tv.SpecError, "backend 'dask'", "submit"):
        Supervisor(backends={"dask": object()})


@pytest.mark.parametrize("backends", [5, ["dask"], "dask"])
def test_supervisor_backends_not_a_mapping(backends: Any) -> None:
    # not an AttributeError ("'int' object has no attribute 'items'") from inside __init__
    with raises(tv.SpecError, "backends must be a mapping", type(backends).__name__):
        Supervisor(backends=backends)


@pytest.mark.parametrize("arg", ["fail_fast", "uvloop"])
@pytest.mark.parametrize("value", ["no", "false", BoolBoom()])
def test_supervisor_flags_must_be_bools(arg: str, value: Any) -> None:
    # not bool(value): fail_fast="no" would silently mean True, and a value whose __bool__
    # raises would leak its own exception out of Supervisor(...)
    with raises(tv.SpecError, arg, "bool", repr(value)):
        Supervisor(**{arg: value})


def test_supervisor_clock_must_be_a_clock() -> None:
    # refused at once, not an AttributeError later at start or at the first submit
    with raises(tv.SpecError, "clock", "5"):
        Supervisor(clock=5)
    with raises(tv.SpecError, "clock", "now"):
        Supervisor(clock=object())


@pytest.mark.parametrize("arg", ["cpu_limit", "memory_limit"])
@pytest.mark.parametrize("value", [0, -5, 150, "150%", "abc", "%", math.nan, True, [90]])
def test_supervisor_bad_live_gate(arg: str, value: Any) -> None:
    with raises(tv.SpecError, arg, repr(value)):
        Supervisor(**{arg: value})


@pytest.mark.parametrize("arg", ["cpu_limit", "memory_limit"])
@pytest.mark.parametrize("value", [None, 90, 12.5, 100, "90%", "100%"])
def test_supervisor_live_gate_values_build(arg: str, value: Any) -> None:
    Supervisor(**{arg: value})


@pytest.mark.parametrize("arg", ["wait_warning", "wait_critical"])
@pytest.mark.parametrize("value", [0, -1, "5", math.nan, True])
def test_supervisor_bad_wait_threshold(arg: str, value: Any) -> None:
    with raises(tv.SpecError, arg, repr(value)):
        Supervisor(**{arg: value})


@pytest.mark.parametrize("arg", ["on_wait_warning", "on_wait_critical"])
def test_supervisor_wait_callback_must_be_callable(arg: str) -> None:
    with raises(tv.SpecError, arg, "callable", "5"):
        Supervisor(**{arg: 5})


def test_supervisor_wait_alarm_values_build() -> None:
    def alarm(name: str, waited: float) -> None:
        return None

    Supervisor(wait_warning=0.5, wait_critical=2, on_wait_warning=alarm, on_wait_critical=alarm)
    Supervisor(wait_warning=None, wait_critical=None)


# ---------------------------------------------------------------- submit / run / gather


async def test_unknown_runs_on_names_the_known_targets() -> None:
    async with tv.Supervisor(aloops=(), backends={"dask": FakeExecutor()}) as sup:
        with raises(tv.SpecError, "unknown runs_on 'gpu'", "thread", "process", "main", "dask"):
            sup.submit(noop, name="g", runs_on="gpu")
        with raises(tv.SpecError, "task 'x'", "no aloop named 'io'", "none"):
            sup.submit(noop, name="x", runs_on="aloop:io")
        with raises(tv.SpecError, "runs_on='aloop'", "no aloops"):
            sup.submit(anoop, runs_on="aloop")
        # refused at the call: nothing was recorded, the names are still free
        assert (await sup.submit(noop, name="g")).ok


async def test_unknown_aloop_names_the_aloops() -> None:
    async with tv.Supervisor(aloops=("io", "cpu")) as sup:
        with raises(tv.SpecError, "no aloop named 'x'", "io, cpu"):
            sup.submit(anoop, runs_on="aloop:x")


async def test_submit_of_a_non_callable() -> None:
    async with tv.Supervisor(aloops=()) as sup:
        with raises(tv.SpecError, "Task or a callable", "int", "42"):
            cast(Any, sup).submit(42)
        with raises(tv.SpecError, "unknown option", "colour", "kwargs"):
            sup.submit(noop, colour="red")
        with raises(tv.SpecError, "weight", "-1"):
            sup.submit(noop, weight=-1)
        with raises(tv.SpecError, "next to a Task"):
            cast(Any, sup).submit(Task(noop), 1)
        with raises(tv.SpecError, "Task or a callable"):
            cast(Any, sup).run([Task(noop), 3])


async def test_duplicate_name_against_an_earlier_submit() -> None:
    async with tv.Supervisor(aloops=()) as sup:
        h = sup.submit(noop, name="dup")
        with raises(tv.DuplicateTaskError, "'dup'") as info:
            sup.submit(noop, name="dup")
        assert info.value.name == "dup"
        assert (await h).ok


async def test_the_same_task_object_submitted_twice() -> None:
    spec = Task(noop, name="once")
    async with tv.Supervisor(aloops=()) as sup:
        assert (await sup.submit(spec)).ok
        with raises(tv.DuplicateTaskError, "'once'"):
            sup.submit(spec)


async def test_duplicate_names_in_one_batch_submit_nothing() -> None:
    async with tv.Supervisor(aloops=()) as sup:
        batch = [Task(noop, name="a"), Task(noop, name="b"), Task(noop, name="a")]
        with raises(tv.DuplicateTaskError, "'a'"):
            sup.run(batch)
        with raises(tv.DuplicateTaskError, "'a'"):
            await sup.gather(batch)
        # the batch was refused whole: every name is still free
        report = await sup.gather([Task(noop, name="a"), Task(noop, name="b")])
        assert report.ok


async def test_a_cycle_is_refused_at_submission() -> None:
    async with tv.Supervisor(aloops=()) as sup:
        a = Task(noop, name="a", requires="y", provides="x")
        b = Task(noop, name="b", requires="x", provides="y")
        with raises(tv.CycleError, "dependency cycle") as info:
            await sup.gather([a, b])
        assert set(info.value.cycle) == {"a", "b"}
        assert (await sup.gather([Task(noop, name="a")])).ok  # nothing was submitted


async def test_provide_an_unhashable_item() -> None:
    async with tv.Supervisor(aloops=()) as sup:
        with raises(tv.SpecError, "hashable", "['x']"):
            cast(Any, sup).provide(["x"])


def _deep_list() -> list[Any]:
    d: list[Any] = []
    for _ in range(3000):
        d = [d]
    return d


@pytest.mark.parametrize(
    ("item", "shown"),
    [
        pytest.param(HashBoom(), "hash boom", id="hash_raises"),
        pytest.param([ReprBoom()], "list", id="repr_raises"),
        pytest.param(_deep_list(), "list", id="deep_list"),
    ],
)
async def test_provide_a_hostile_item(item: Any, shown: str) -> None:
    # neither the item's own exception nor a RecursionError from its repr escapes provide()
    async with tv.Supervisor(aloops=()) as sup:
        with raises(tv.SpecError, "provide", shown):
            cast(Any, sup).provide(item)


# ---------------------------------------------------------------- a supervisor not running


def test_calls_before_start_raise_closed_error() -> None:
    sup = tv.Supervisor(aloops=())
    with raises(tv.ClosedError, "submit", "created"):
        sup.submit(noop)
    with raises(tv.ClosedError, "submit", "created"):
        sup.run([Task(noop)])
    with raises(tv.ClosedError, "provide", "created"):
        sup.provide("x")


async def test_gather_before_start_raises_closed_error() -> None:
    sup = tv.Supervisor(aloops=())
    with raises(tv.ClosedError, "submit", "created"):
        await sup.gather([Task(noop)])


async def test_calls_after_aclose_raise_closed_error() -> None:
    sup = tv.Supervisor(aloops=())
    await sup.start()
    await sup.aclose()
    assert sup.state is SupervisorState.CLOSED
    with raises(tv.ClosedError, "submit", "closed"):
        sup.submit(noop)
    with raises(tv.ClosedError, "submit", "closed"):
        sup.run([Task(noop)])
    with raises(tv.ClosedError, "submit", "closed"):
        await sup.gather([Task(noop)])
    with raises(tv.ClosedError, "provide", "closed"):
        sup.provide("x")
    with raises(tv.ClosedError, "start", "closed"):
        await sup.start()


async def test_calls_after_leaving_async_with_raise_closed_error() -> None:
    async with tv.Supervisor(aloops=()) as sup:
        pass
    with raises(tv.ClosedError, "closed"):
        sup.submit(noop)


async def test_start_twice() -> None:
    async with tv.Supervisor(aloops=()) as sup:
        with raises(tv.ClosedError, "start", "running"):
            await sup.start()
