"""Bad input fails at the call that wrote it, with a message naming the argument and value.

One test per kind of bad input. ``Task(...)`` checks everything it can alone; what needs a
supervisor (unknown ``runs_on`` targets, duplicate names, cycles, a closed supervisor) is
raised by the call that submits. Nothing here may surface later as a task failure.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, ItemsView, KeysView, Mapping
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

    def __repr__(self) -> str:
        return "EqBoom()"


class StrangerEqBoom:
    """Equal to its own kind; its ``__eq__`` assumes the other side is one too (a common
    bug): comparing it with anything else raises AttributeError."""

    def __init__(self, h: int = 7) -> None:
        self.h = h

    def __hash__(self) -> int:
        return self.h

    def __eq__(self, other: object) -> bool:
        return bool(self.h == other.h)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"StrangerEqBoom({self.h})"


class PeerEqBoom:
    """Compares fine with itself and with strangers, but raises against another of its kind:
    only comparing the items that share a hash finds it."""

    def __init__(self, h: int = 7) -> None:
        self.h = h

    def __hash__(self) -> int:
        return self.h

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PeerEqBoom) and other is not self:
            raise RuntimeError("peer boom")
        return NotImplemented

    def __repr__(self) -> str:
        return "PeerEqBoom()"


class TupleEqBoom:
    """Raises when compared with a tuple (an output item is one), given its hash."""

    def __init__(self, h: int) -> None:
        self.h = h

    def __hash__(self) -> int:
        return self.h

    def __eq__(self, other: object) -> bool:
        if isinstance(other, tuple):
            raise RuntimeError("tuple boom")
        return NotImplemented

    def __repr__(self) -> str:
        return "TupleEqBoom()"


class ClassBoom:
    """Callable, but reading its ``__class__`` (what isinstance falls back on) raises."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        raise RuntimeError("class boom")

    def __call__(self) -> None:
        return None

    def __repr__(self) -> str:
        return "ClassBoom()"


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


@pytest.mark.parametrize("field", ["requires", "provides", "claims", "uses"])
@pytest.mark.parametrize(
    "value",
    [
        pytest.param(EqBoom(), id="bare"),
        pytest.param([EqBoom()], id="in_a_list"),
        pytest.param([("a", EqBoom())], id="inside_a_tuple_item"),
    ],
)
def test_task_a_lone_item_whose_eq_raises(field: str, value: Any) -> None:
    # one such item builds a frozenset (identity spares it every comparison), but the
    # planner compares it with any item of the same hash: another task's, or a provided one
    with raises(tv.SpecError, "task 'h'", field, "EqBoom()", "eq boom"):
        Task(noop, name="h", **{field: value})


@pytest.mark.parametrize("field", ["requires", "provides", "claims", "uses"])
def test_task_an_item_whose_eq_fails_against_other_objects(field: str) -> None:
    with raises(tv.SpecError, "task 'h'", field, "StrangerEqBoom(7)", "AttributeError"):
        Task(noop, name="h", **{field: StrangerEqBoom()})
    assert Task(noop, **{field: 7}) is not None  # a plain item of the same hash is fine


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("requires", "requires"),
        ("requires", "provides"),
        ("provides", "requires"),
        ("claims", "claims"),
        ("claims", "uses"),
    ],
)
def test_task_colliding_items_that_cannot_be_compared(one: str, other: str) -> None:
    # the planner keeps requires and provides in one dict, claims and uses in another
    a, b = PeerEqBoom(), PeerEqBoom()
    meta: dict[str, Any] = {one: [a], other: [b]} if one != other else {one: [a, b]}
    with raises(tv.SpecError, "task 'p'", one, other, "PeerEqBoom()", "peer boom"):
        Task(noop, name="p", **meta)
    # the same item twice is compared by identity only: fine
    assert Task(noop, requires=[a, a], provides=a).requires == {a}
    # different namespaces never meet
    assert Task(noop, requires=a, claims=b).claims == {b}


def test_task_an_item_colliding_with_an_output_item() -> None:
    from taskvisor._spec import OutputItem

    ref: tv.ResultRef[Any] = tv.ResultRef("up")
    with raises(tv.SpecError, "task 't'", "requires", "TupleEqBoom()", "'up'", "tuple boom"):
        Task(noop, (ref,), name="t", requires=TupleEqBoom(hash(OutputItem("up"))))
    # its own output item lives in the same namespace as its requires and provides
    with raises(tv.SpecError, "task 'me'", "provides", "TupleEqBoom()", "'me'", "tuple boom"):
        Task(noop, name="me", provides=TupleEqBoom(hash(OutputItem("me"))))


def test_task_an_item_whose_class_raises() -> None:
    with raises(tv.SpecError, "task 'c'", "requires", "ClassBoom()", "class boom"):
        Task(noop, name="c", requires=ClassBoom())
    assert Task(noop, requires=[ClassBoom()]).requires  # a hashable item inside a list


async def test_an_item_colliding_with_a_provided_one_fails_at_task() -> None:
    # it used to pass Task(), then fail half-way through the planner at submit and leave
    # the supervisor unable to close (KeyError)
    async with tv.Supervisor(aloops=()) as sup:
        sup.provide(7)
        held = sup.submit(noop, claims=7, name="held")
        with raises(tv.SpecError, "requires", "EqBoom()", "eq boom"):
            Task(noop, requires=[EqBoom()])
        with raises(tv.SpecError, "claims", "EqBoom()", "eq boom"):
            sup.submit(noop, claims=EqBoom())
        assert (await sup.submit(noop, requires=7)).ok
        assert (await held).ok


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


# ---------------------------------------------------------------- Task(...): dunders that raise


class Boom(Exception):
    pass


class LenBoomList(list[Any]):
    def __len__(self) -> int:
        raise Boom("len boom")


class IterBoomList(list[Any]):
    def __iter__(self) -> Any:
        raise Boom("iter boom")


class ValuesBoomDict(dict[str, Any]):
    def values(self) -> Any:
        raise Boom("values boom")


class BrokenMapping(Mapping[str, Any]):
    """A mapping whose ``broken`` method raises."""

    def __init__(self, broken: str) -> None:
        self.broken = broken

    def _check(self, what: str) -> None:
        if what == self.broken:
            raise Boom(f"{what} boom")

    def keys(self) -> Any:
        self._check("keys")
        return KeysView(self)

    def items(self) -> Any:
        self._check("items")
        return ItemsView(self)

    def __getitem__(self, key: str) -> Any:
        self._check("getitem")
        if key != "a":
            raise KeyError(key)
        return 1

    def __iter__(self) -> Any:
        self._check("iter")
        return iter(["a"])

    def __len__(self) -> int:
        self._check("len")
        return 1

    def __repr__(self) -> str:
        return f"BrokenMapping({self.broken!r})"


class FloatBoomFloat(float):
    def __float__(self) -> float:
        raise Boom("float boom")


class FloatBoomInt(int):
    def __float__(self) -> float:
        raise Boom("float boom")


class IntBoomInt(int):
    def __index__(self) -> int:
        raise Boom("index boom")

    def __int__(self) -> int:
        raise Boom("int boom")


class CompareBoomInt(int):
    def __lt__(self, other: object) -> bool:
        raise Boom("lt boom")

    def __le__(self, other: object) -> bool:
        raise Boom("le boom")

    def __gt__(self, other: object) -> bool:
        raise Boom("gt boom")

    def __ge__(self, other: object) -> bool:
        raise Boom("ge boom")


class HashBoomInt(int):
    def __hash__(self) -> int:
        raise Boom("hash boom")

    def __eq__(self, other: object) -> bool:
        raise Boom("eq boom")


class StrBoom(str):
    """A str subclass whose own methods raise: taskvisor reads the string itself."""

    def __len__(self) -> int:
        raise Boom("len boom")

    def __eq__(self, other: object) -> bool:
        raise Boom("eq boom")

    def __hash__(self) -> int:
        return str.__hash__(self)

    def upper(self) -> str:
        raise Boom("upper boom")


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        pytest.param(LenBoomList([1]), "len boom", id="len_raises"),
        pytest.param(IterBoomList([1]), "iter boom", id="iter_raises"),
        pytest.param(ClassBoom(), "class boom", id="class_raises"),
        pytest.param((IterBoomList([1]),), "iter boom", id="nested_iter_raises"),
        pytest.param([ValuesBoomDict(a=1)], "values boom", id="nested_values_raises"),
        pytest.param((ClassBoom(),), "class boom", id="nested_class_raises"),
    ],
)
def test_task_args_whose_dunders_raise(args: Any, shown: str) -> None:
    with raises(tv.SpecError, "task 'a'", "args", shown) as info:
        Task(noop, args, name="a")
    assert isinstance(info.value.__cause__, (Boom, RuntimeError))


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        pytest.param(BrokenMapping("keys"), "keys boom", id="keys_raises"),
        pytest.param(BrokenMapping("iter"), "iter boom", id="iter_raises"),
        pytest.param(BrokenMapping("getitem"), "getitem boom", id="getitem_raises"),
        pytest.param(ClassBoom(), "class boom", id="class_raises"),
        pytest.param({"a": IterBoomList([1])}, "iter boom", id="nested_iter_raises"),
        pytest.param({StrBoom("a"): 1}, "eq boom", id="key_eq_raises"),
    ],
)
def test_task_kwargs_whose_dunders_raise(kwargs: Any, shown: str) -> None:
    with raises(tv.SpecError, "task 'k'", "kwargs", shown) as info:
        Task(noop, (), kwargs, name="k")
    assert isinstance(info.value.__cause__, (Boom, RuntimeError))


def test_task_kwargs_from_a_working_mapping_and_dict_subclasses() -> None:
    class Plain(BrokenMapping):
        pass

    assert Task(noop, (), Plain("none")).kwargs == {"a": 1}
    assert Task(noop, (), ValuesBoomDict(a=1)).kwargs == {"a": 1}  # copied as a dict


@pytest.mark.parametrize("field", ["timeout", "priority", "delay"])
@pytest.mark.parametrize(
    ("value", "shown"),
    [
        pytest.param(FloatBoomFloat(1.0), "float boom", id="float_subclass_float_raises"),
        pytest.param(FloatBoomInt(1), "float boom", id="int_subclass_float_raises"),
        pytest.param(ClassBoom(), "class boom", id="class_raises"),
    ],
)
def test_task_real_numbers_whose_dunders_raise(field: str, value: Any, shown: str) -> None:
    with raises(tv.SpecError, "task 'n'", field, shown) as info:
        Task(noop, name="n", **{field: value})
    assert isinstance(info.value.__cause__, (Boom, RuntimeError))


@pytest.mark.parametrize("field", ["timeout", "priority", "delay"])
def test_task_real_numbers_read_without_comparing_the_object(field: str) -> None:
    # an int subclass whose comparisons (or __index__) raise is still the number it holds
    class IndexBoom(int):
        def __index__(self) -> int:
            raise Boom("index boom")

    assert getattr(Task(noop, **{field: CompareBoomInt(2)}), field) == 2.0
    assert getattr(Task(noop, **{field: IndexBoom(2)}), field) == 2.0


@pytest.mark.parametrize("field", ["weight", "retries"])
def test_task_whole_numbers_whose_dunders_raise(field: str) -> None:
    with raises(tv.SpecError, "task 'w'", field, "int boom"):
        Task(noop, name="w", **{field: IntBoomInt(1)})
    with raises(tv.SpecError, "task 'w'", field, "class boom"):
        Task(noop, name="w", **{field: ClassBoom()})
    # comparisons are made on the int it holds, not through its own __lt__
    assert getattr(Task(noop, **{field: CompareBoomInt(2)}), field) == 2
    with raises(tv.SpecError, "task 'w'", f"{field} must be an int >= 0", "-1"):
        Task(noop, name="w", **{field: CompareBoomInt(-1)})


@pytest.mark.parametrize(
    ("resources", "shown"),
    [
        pytest.param(BrokenMapping("items"), "items boom", id="items_raises"),
        pytest.param(BrokenMapping("getitem"), "getitem boom", id="getitem_raises"),
        pytest.param(BrokenMapping("iter"), "iter boom", id="iter_raises"),
        pytest.param(ClassBoom(), "class boom", id="class_raises"),
        pytest.param({"cpu": FloatBoomFloat(1.0)}, "float boom", id="need_float_raises"),
        pytest.param({ClassBoom(): 1}, "class boom", id="name_class_raises"),
    ],
)
def test_task_resources_whose_dunders_raise(resources: Any, shown: str) -> None:
    with raises(tv.SpecError, "task 'r'", "resources", shown) as info:
        Task(noop, name="r", resources=resources)
    assert isinstance(info.value.__cause__, (Boom, RuntimeError))


@pytest.mark.parametrize(
    ("tier", "shown"),
    [
        pytest.param(StrBoom("high"), "upper boom", id="str_upper_raises"),
        pytest.param(HashBoomInt(1), "boom", id="int_hash_raises"),
        pytest.param(ClassBoom(), "class boom", id="class_raises"),
    ],
)
def test_task_tier_whose_dunders_raise(tier: Any, shown: str) -> None:
    with raises(tv.SpecError, "task 't'", "tier", shown):
        Task(noop, name="t", tier=tier)


def test_task_name_and_runs_on_whose_dunders_raise() -> None:
    # a str subclass is read as the string it holds (and stored as a plain str)
    t = Task(noop, name=StrBoom("n"), runs_on=StrBoom("thread"))
    assert type(t.name) is str and t.name == "n"
    assert type(t.runs_on) is str and t.runs_on == "thread"
    with raises(tv.SpecError, "task name", "non-empty string", "ClassBoom()", "class boom"):
        Task(noop, name=ClassBoom())
    with raises(tv.SpecError, "task 'x'", "runs_on", "ClassBoom()", "class boom"):
        Task(noop, name="x", runs_on=ClassBoom())
    with raises(tv.SpecError, "task 'x'", "runs_on", "aloop:"):
        Task(noop, name="x", runs_on=StrBoom("aloop:"))


def test_task_function_whose_class_raises_is_just_a_callable() -> None:
    t = Task(ClassBoom())
    assert t.name.startswith("ClassBoom-") and not t.is_coroutine


# ---------------------------------------------------------------- @task and ResultRef


def test_task_decorator_validates_where_it_is_written() -> None:
    with raises(tv.SpecError, "weight must be an int >= 0", "-3"):
        task(weight=-3)(noop)
    with raises(tv.SpecError, "unknown @task option", "colour"):
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
    with raises(TypeError, "unknown Supervisor option", "'colour'"):
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
        with raises(tv.SpecError, "unknown task option", "colour", "kwargs"):
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
    """Its name is taken while a handle to the first run is alive (or, with
    ``result_buffer=None``, for the supervisor's life); after that it runs again."""
    spec = Task(noop, name="once")
    async with tv.Supervisor(aloops=()) as sup:
        first = sup.submit(spec)
        assert (await first).ok
        with raises(tv.DuplicateTaskError, "'once'"):
            sup.submit(spec)
        del first
        assert (await sup.submit(spec)).ok  # a second run, under the same name
    async with tv.Supervisor(aloops=(), result_buffer=None) as sup:
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


# ---------------------------------------------------------------- items of two tasks


class Peer:
    """Fine with itself and with strangers; raises against another Peer of the same hash:
    no single task shows it, only the planner's tables when a second task meets the first."""

    def __hash__(self) -> int:
        return 7

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Peer) and other is not self:
            raise RuntimeError("peer boom")
        return NotImplemented

    def __repr__(self) -> str:
        return "Peer()"


@pytest.mark.parametrize("case", ["batch", "two_submits", "provide", "locks"])
async def test_items_of_two_tasks_that_cannot_be_compared(case: str) -> None:
    """The submit raises SpecError before anything changed; the supervisor closes cleanly
    (it used to fail half-way through the planner, and aclose raised KeyError)."""
    a = Task(noop, name="a", provides=Peer())
    b = Task(noop, name="b", requires=Peer())
    async with tv.Supervisor(aloops=()) as sup:
        with raises(tv.SpecError, "peer boom"):
            if case == "batch":
                sup.run([a, b])
            elif case == "two_submits":
                sup.submit(a)
                sup.submit(b)
            elif case == "provide":
                sup.provide(Peer())
                sup.submit(b)
            else:
                sup.submit(Task(noop, name="c", claims=Peer()))
                sup.submit(Task(noop, name="d", uses=Peer()))
        assert (await sup.submit(noop, name="after")).ok


async def test_an_item_whose_repr_raises_still_gets_its_dependency_error() -> None:
    async with tv.Supervisor(aloops=()) as sup:
        report = await sup.gather([Task(noop, name="r", requires=ReprBoom())])
    res = report["r"]
    assert res.state is tv.State.SKIPPED and isinstance(res.error, tv.DependencyError)
    assert "repr failed" in str(res.error)


def test_a_result_reference_is_not_iterable() -> None:
    """``ref[key]`` projects a reference; before ``__iter__`` refused, that made a reference
    iterable by the old protocol (ref[0], ref[1], ... for ever): ``Task(f,
    requires=a.output)`` or ``Supervisor(aloops=a.output)`` never returned and filled the
    memory (the fuzz found it: the test worker was killed at 24 GB)."""
    a = tv.Task(noop, name="a")
    with raises(TypeError, "<output of 'a'>", "cannot be iterated", "ref[key]"):
        iter(a.output)
    with raises(TypeError, "<output of 'a'['k']>", "cannot be iterated"):
        list(a.output["k"])
    with pytest.raises(TypeError):
        _ = "x" in a.output
    with raises(tv.SpecError, "requires must be an iterable", "<output of 'a'>"):
        tv.Task(noop, requires=a.output)
    with raises(tv.SpecError, "claims must be an iterable"):
        tv.Task(noop, claims=a.output.map(str))
    with raises(tv.SpecError, "aloops must be an iterable of names", "<output of 'a'>"):
        tv.Supervisor(aloops=a.output)
