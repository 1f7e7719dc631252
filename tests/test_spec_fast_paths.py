"""The fast paths of ``Task(...)`` agree with the slow, general ones they stand in for.

Building a Task reads a plain function's traits off its code object, shares one empty
``resources`` mapping and empty item sets, finds top-level output references without the
generic walk, skips the comparison checks for items of builtin types, and substitutes
references at dispatch in one pass. Each test compares a fast path with what ``inspect``
or the generic helper says, over the shapes that matter.
"""

from __future__ import annotations

import functools
import inspect
import pickle
import types
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import pytest

import taskvisor as tv
from taskvisor._spec import (
    _PLAIN_ITEMS,
    OutputItem,
    _fn_traits,
    check_item,
    iter_refs,
    substitute,
    substitute_call,
)


def positional(a: int, shared: dict[str, Any]) -> None:
    pass


def keyword_only(a: int, *rest: int, shared: dict[str, Any]) -> None:
    pass


def star_shared(*shared: int) -> None:
    pass


def starstar_shared(**shared: int) -> None:
    pass


def local_named_shared(a: int) -> int:
    shared = a + 1  # a local, not a parameter: no shared dict for it
    return shared


async def coro_shared(shared: dict[str, Any]) -> None:
    pass


async def coro_plain() -> None:
    pass


async def agen() -> Any:
    yield 1


def gen() -> Any:
    yield 1


@functools.wraps(coro_shared)
def wrapper_of_coro(*args: Any, **kwargs: Any) -> Any:
    return coro_shared(*args, **kwargs)


def with_signature(*args: Any) -> None:
    pass


with_signature.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [inspect.Parameter("shared", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
)


class Callable_:
    def __call__(self, shared: dict[str, Any]) -> None:
        pass


class AsyncCallable:
    async def __call__(self) -> None:
        pass


class Methods:
    def method(self, shared: dict[str, Any]) -> None:
        pass

    async def amethod(self) -> None:
        pass


class WithPartialMethod:
    def both(self, x: int, shared: dict[str, Any]) -> None:
        pass

    async def abo(self, x: int) -> None:
        pass

    pm = functools.partialmethod(both, 1)
    apm = functools.partialmethod(abo, 1)


def with_text_signature(*args: Any) -> None:
    pass


with_text_signature.__text_signature__ = "(shared)"  # type: ignore[attr-defined]


class OddDict(dict[str, Any]):
    def keys(self) -> Any:
        return set()


def with_odd_dict(*args: Any) -> Any:
    return coro_shared(*args)


with_odd_dict.__dict__ = OddDict(__wrapped__=coro_shared)


CALLABLES: list[Callable[..., Any]] = [
    positional,
    keyword_only,
    star_shared,
    starstar_shared,
    local_named_shared,
    coro_shared,
    coro_plain,
    agen,
    gen,
    wrapper_of_coro,
    with_signature,
    lambda shared: None,
    lambda: None,
    Callable_(),
    AsyncCallable(),
    Methods().method,
    Methods().amethod,
    functools.partial(positional, 1),
    functools.partial(coro_plain),
    WithPartialMethod.pm,
    WithPartialMethod.apm,
    WithPartialMethod().pm,
    with_text_signature,
    with_odd_dict,
    print,
    len,
]


def _slow_traits(fn: Callable[..., Any]) -> tuple[bool, bool]:
    is_coro = inspect.iscoroutinefunction(fn) or (
        not inspect.isroutine(fn) and inspect.iscoroutinefunction(type(fn).__call__)
    )
    try:
        shared = "shared" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        shared = False
    return is_coro, shared


@pytest.mark.parametrize("fn", CALLABLES, ids=lambda f: getattr(f, "__name__", type(f).__name__))
def test_traits_read_off_the_code_agree_with_inspect(fn: Callable[..., Any]) -> None:
    assert _fn_traits(fn) == _slow_traits(fn)
    spec = tv.Task(fn)
    assert (spec.is_coroutine, spec.wants_shared) == _slow_traits(fn)


def test_a_decorated_function_is_read_through_inspect() -> None:
    # functools.wraps copies __wrapped__: inspect follows it to the wrapped signature
    assert _fn_traits(wrapper_of_coro) == (False, True)
    assert _fn_traits(with_signature) == (False, True)


def test_traits_are_read_once_per_code_object_and_still_follow_inspect() -> None:
    """``_fn_traits`` keeps what it read off a code object; a function that later gets
    an attribute inspect looks at (``__signature__``) is asked through inspect again,
    and a full cache starts again (nothing stays pinned for good)."""
    from taskvisor import _spec

    def plain(a: int) -> None:
        pass

    assert _fn_traits(plain) == (False, False)
    assert _spec._CODE_TRAITS[id(plain.__code__)] == (plain.__code__, (False, False))
    assert _fn_traits(plain) == (False, False)  # (read back)
    plain.__signature__ = inspect.signature(positional)  # type: ignore[attr-defined]
    assert _fn_traits(plain) == (False, True)  # inspect, not the cache
    saved = dict(_spec._CODE_TRAITS)
    try:
        _spec._CODE_TRAITS.update({-i: (plain.__code__, (True, True)) for i in range(1, 1025)})

        async def fresh(shared: dict[str, Any]) -> None:
            pass

        assert id(fresh.__code__) not in _spec._CODE_TRAITS
        assert _fn_traits(fresh) == (True, True)
        # full: it started again (the fillers are gone, the new one is kept)
        assert list(_spec._CODE_TRAITS) == [id(fresh.__code__)]
    finally:
        _spec._CODE_TRAITS.clear()
        _spec._CODE_TRAITS.update(saved)


@pytest.mark.parametrize(
    ("field", "given", "stored"),
    [("resources", {"gpu": 1}, {"gpu": 1.0}), ("kwargs", {"x": 1}, {"x": 1})],
)
def test_empty_mappings_are_shared_read_only_and_pickle(
    field: str, given: dict[str, Any], stored: dict[str, Any]
) -> None:
    """A task without resources or kwargs shares one read-only empty dict (64 bytes less
    per pending task); a pickle of it (what a process worker gets) is a plain ``{}``."""
    a, b = tv.Task(positional), tv.Task(positional, **{field: {}})
    empty = getattr(a, field)
    assert empty == {} and empty is getattr(b, field)
    with pytest.raises(TypeError, match="read-only"):
        empty["k"] = 1
    with pytest.raises(TypeError, match="read-only"):
        empty.update(k=1)
    with pytest.raises(TypeError, match="read-only"):
        empty.setdefault("k", 1)
    assert empty == {} and getattr(tv.Task(positional), field) == {}
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        assert type(pickle.loads(pickle.dumps(empty, proto))) is dict
    own = getattr(tv.Task(positional, **{field: given}), field)
    assert own == stored and own is not empty


def test_empty_item_sets_are_shared_and_single_strings_are_one_item() -> None:
    a, b = tv.Task(positional), tv.Task(positional, requires=[], provides=None)
    assert a.requires is b.requires is b.provides is a.claims is a.uses
    assert a.requires == frozenset() and a.dependencies is a.requires
    assert tv.Task(positional, requires="db").requires == frozenset({"db"})
    assert tv.Task(positional, claims=("db", "db")).claims == frozenset({"db"})


class Pair(NamedTuple):
    left: Any
    right: Any


def test_references_found_at_the_top_level_and_nested() -> None:
    p, q = tv.Task(positional, name="p"), tv.Task(positional, name="q")
    cases: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((p.output, 1, q.output["k"]), {}),
        ((1, "x"), {"k": p.output.map(str)}),
        (([p.output], {"a": q.output}), {}),
        ((Pair(p.output, 2),), {"n": (q.output,)}),
        ((), {}),
    ]
    for args, kwargs in cases:
        spec = tv.Task(positional, args, kwargs)
        assert spec.refs == {r.task_name for r in iter_refs((args, tuple(kwargs.values())))}
        assert spec.dependencies == spec.requires | {tv.ResultRef(r).item for r in spec.refs}


def test_the_tasks_passed_one_output_share_its_reference_and_dependency_item() -> None:
    """``task.output`` is made once per task, with the dependency item every task it is
    passed to (or a projection of it) shares: W4's layered DAG built 8 objects per task,
    two references and two items among them; now one of each per referenced task."""
    p = tv.Task(positional, name="p")
    assert p.output is p.output
    children = [
        tv.Task(positional, (p.output,)),
        tv.Task(positional, (), {"k": p.output["k"]}),
        tv.Task(positional, ([p.output.map(str)],)),  # (the nested walk)
    ]
    (item,) = children[0].dependencies
    assert item == tv.ResultRef("p").item and item is p.output.item
    for child in children:
        assert child.refs == {"p"}
        assert [i for i in child.dependencies if i is item] == [item]
    assert len(children[0].dependencies | children[1].dependencies) == 1


def a_list() -> list[int]:
    return [7, 8]


def test_one_pass_substitution_agrees_with_the_generic_walk() -> None:
    p, q = tv.Task(positional, name="p"), tv.Task(a_list, name="q")
    values = {"p": {"k": 5}, "q": [7, 8]}
    cases: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((p.output, 1, q.output[1]), {}),
        ((p.output["k"],), {"k": q.output.map(len)}),
        ((Pair(p.output, [q.output]),), {}),
        ((1, 2), {}),
        ((), {"only": p.output}),
    ]
    for args, kwargs in cases:
        fast = substitute_call(args, kwargs, values)
        assert fast == (substitute(args, values), substitute(kwargs, values))
        assert type(fast[0]) is tuple
    plain = (1, 2)
    assert substitute_call(plain, {}, values)[0] == plain


def test_output_items_equal_only_each_other_and_pickle() -> None:
    from taskvisor._spec import OutputItem

    a = OutputItem("x")
    others: list[object] = [OutputItem("y"), ("x",), "x"]
    assert all(a != o for o in others)
    assert a == OutputItem("x") and hash(a) == hash(OutputItem("x")) and a.name == "x"
    assert len({a, ("x",), "x", OutputItem("x")}) == 3
    assert repr(a) == "OutputItem(name='x')"
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(a, proto))
        assert back == a and type(back) is OutputItem


def test_a_projection_runs_once_when_a_container_follows() -> None:
    calls: list[int] = []

    def count(v: list[int]) -> int:
        calls.append(1)
        return len(v)

    q = tv.Task(a_list, name="q")
    args, kwargs = substitute_call((q.output.map(count), {"k": 1}), {}, {"q": [7, 8]})
    assert args == (2, {"k": 1}) and kwargs == {} and len(calls) == 1


def test_a_single_output_item_is_one_item() -> None:
    a = tv.Task(a_list, name="a")
    spec = tv.Task(positional, requires=a.output.item)
    assert spec.requires == {a.output.item}


def test_copies_and_pickles_of_the_empty_resources_are_plain_dicts() -> None:
    import copy

    shared = tv.Task(positional).resources
    for other in (copy.copy(shared), copy.deepcopy(shared), pickle.loads(pickle.dumps(shared))):
        assert type(other) is dict and other == {}
        other["gpu"] = 1.0  # an ordinary dict
    with pytest.raises(TypeError, match="read-only"):
        shared.__init__(gpu=1)  # type: ignore[misc]
    assert tv.Task(positional).resources == {}


def test_plain_item_types_hash_and_compare_in_c() -> None:
    # Task() compares an item with itself and with a stranger (and with whatever shares its
    # hash) unless its exact type is one of these: that is safe only while none of them can
    # run Python code in __hash__ or __eq__
    for kind in _PLAIN_ITEMS:
        assert kind.__module__ == "builtins" or kind is OutputItem
        methods = cast(Any, kind)
        assert isinstance(methods.__eq__, types.WrapperDescriptorType), kind  # a C slot
        assert isinstance(methods.__hash__, types.WrapperDescriptorType), kind
    assert "__eq__" not in vars(OutputItem) and "__hash__" not in vars(OutputItem)  # tuple's


class Counted:
    """An item that counts how often it is compared."""

    calls = 0

    def __hash__(self) -> int:
        return 1

    def __eq__(self, other: object) -> bool:
        Counted.calls += 1
        return other is self


def test_only_items_outside_the_plain_types_are_compared() -> None:
    Counted.calls = 0
    spec = tv.Task(positional, requires=["a", 1, 2.5, b"x", None, False], provides="b")
    assert Counted.calls == 0 and spec.requires == {"a", 1, 2.5, b"x", None, False}
    item = Counted()
    spec = tv.Task(positional, requires=[item, 1], provides=[True], claims=[item])
    assert Counted.calls > 0  # with itself, a stranger and 1, True (which share its hash)
    assert spec.requires == {item, 1} and spec.claims == {item}
    # no options: no items to build, the shared empty sets
    bare = tv.Task(positional)
    assert bare.requires is bare.provides is bare.claims is bare.uses == frozenset()


def test_check_item_is_what_task_runs_on_each_item() -> None:
    # Supervisor.provide() can run the same check on the item it is given
    class EqBoom:
        def __hash__(self) -> int:
            return 1

        def __eq__(self, other: object) -> bool:
            raise RuntimeError("eq boom")

    for plain in ("a", 1, 2.5, b"x", None, True, OutputItem("t"), ("a", 1)):
        check_item(plain, "provide")
    with pytest.raises(tv.SpecError, match=r"provide item .*EqBoom.* cannot be compared"):
        check_item(EqBoom(), "provide")
    with pytest.raises(tv.SpecError, match=r"provide item \('a', .*it holds .*EqBoom"):
        check_item(("a", EqBoom()), "provide")
    with pytest.raises(tv.SpecError, match=r"provide items must be hashable, got list"):
        check_item(["x"], "provide")


def test_each_slot_setter_sets_its_own_slot() -> None:
    # Task() fills its slots through module-level setters unpacked from Task.__slots__ in
    # order: each must be the descriptor of the slot its name says
    from taskvisor import _spec

    for name in _spec.Task.__slots__:
        setter = getattr(_spec, f"_set_{name}")
        assert setter.__self__ is _spec.Task.__dict__[name], name


def test_rarely_set_options_live_in_one_shared_object() -> None:
    """priority ... uses are read off the Task as ever, but held by an Options object
    that Tasks setting none of them (or the same plain values) share: one slot per
    Task, not eight (issue 13, W5)."""
    from taskvisor import _spec

    noop = local_named_shared
    _spec._SHARED_OPTIONS.clear()  # (what other tests left there does not matter here)
    plain, other = tv.Task(noop), tv.Task(noop, name="x", runs_on="thread")
    assert plain._opts is other._opts is _spec._PLAIN[False][False]
    assert (plain.priority, plain.weight, plain.timeout, plain.retries, plain.delay) == (
        0.0,
        1,
        None,
        0,
        0.0,
    )
    assert plain.resources == {} and plain.claims == plain.uses == frozenset()
    a = tv.Task(noop, timeout=5, retries=2, claims="db", tier="high")
    b = tv.Task(noop, timeout=5.0, retries=2, claims=["db"])
    assert a._opts is b._opts and a.tier is not b.tier  # (the tier is the Task's own)
    assert (a.timeout, a.retries, a.claims) == (5.0, 2, frozenset({"db"}))
    # a Task whose options change is checked and built anew, sharing nothing it should not
    c = a.replace(timeout=7)
    assert c.timeout == 7.0 and a.timeout == 5.0 and c.claims == a.claims
    # resources are a dict: never shared, so one Task's cannot become another's
    r1, r2 = tv.Task(noop, resources={"gpu": 1}), tv.Task(noop, resources={"gpu": 1})
    assert r1._opts is not r2._opts and r1.resources is not r2.resources
    # items that compare equal but differ (1 and True) are not folded into one object
    one, true = tv.Task(noop, claims=[1]), tv.Task(noop, claims=[True])
    assert [type(x) for x in one.claims] == [int] and [type(x) for x in true.claims] == [bool]
    with pytest.raises(AttributeError):
        a.timeout = 1  # type: ignore[misc]
    # -0.0 == 0.0, yet each Task reads back the value it was given
    neg, pos = tv.Task(noop, priority=-0.0, delay=-0.0), tv.Task(noop, priority=0.0, delay=0.0)
    assert str(neg.priority) == str(neg.delay) == "-0.0"
    assert str(pos.priority) == str(pos.delay) == "0.0"
    # a full cache starts again: the sets in use are shared again, nothing is pinned
    for i in range(_spec._SHARED_OPTIONS_MAX + 10):
        tv.Task(noop, priority=float(i) + 0.5)
    assert len(_spec._SHARED_OPTIONS) <= _spec._SHARED_OPTIONS_MAX
    assert tv.Task(noop, timeout=5)._opts is tv.Task(noop, timeout=5)._opts
