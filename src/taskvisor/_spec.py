"""Task descriptions: :class:`Task`, :func:`task`, :class:`Tier`, :class:`ResultRef`.

A ``Task`` is an immutable description. Everything that can be checked without a
supervisor is checked here, so a bad spec fails at the line that wrote it (``SpecError``).
What needs a supervisor (unknown aloop or backend names, duplicate names, cycles) is
checked by the call that submits it.
"""

from __future__ import annotations

import copy
import enum
import inspect
import itertools
import math
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar, cast, overload

from ._errors import SpecError

__all__ = [
    "CRITICAL",
    "HIGH",
    "LOW",
    "NORMAL",
    "OutputItem",
    "ResultRef",
    "Task",
    "Tier",
    "task",
]

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")


class Tier(enum.IntEnum):
    """Admission tier; higher tiers are admitted first and may use the pool reserves."""

    LOW = 0
    NORMAL = 1
    HIGH = 2
    CRITICAL = 3


LOW, NORMAL, HIGH, CRITICAL = Tier.LOW, Tier.NORMAL, Tier.HIGH, Tier.CRITICAL

BUILTIN_TARGETS = ("thread", "process", "main", "aloop")


@dataclass(frozen=True, slots=True)
class OutputItem:
    """The dependency item a task provides when it succeeds: its return value."""

    name: str


class ResultRef(Generic[T]):
    """A reference to another task's return value, resolved just before dispatch.

    Passing ``spec.output`` (or a projection of it) as an argument makes the receiving
    task depend on ``spec`` succeeding; the value is substituted at dispatch.
    """

    __slots__ = ("_name", "_steps")

    def __init__(self, name: str, steps: tuple[tuple[str, Any], ...] = ()) -> None:
        self._name = name
        self._steps = steps

    @property
    def task_name(self) -> str:
        """The name of the task whose output this refers to."""
        return self._name

    @property
    def item(self) -> OutputItem:
        return OutputItem(self._name)

    def __getitem__(self, key: Any) -> ResultRef[Any]:
        return ResultRef(self._name, (*self._steps, ("item", key)))

    def map(self, fn: Callable[[T], R]) -> ResultRef[R]:
        """A reference to ``fn(value)``, computed just before dispatch."""
        if not callable(fn):
            raise SpecError(f"ResultRef.map needs a callable, got {fn!r}")
        return ResultRef(self._name, (*self._steps, ("map", fn)))

    def resolve(self, value: Any) -> T:
        """Apply the projections to the referenced task's return value."""
        for kind, arg in self._steps:
            value = value[arg] if kind == "item" else arg(value)
        return cast(T, value)

    def __repr__(self) -> str:
        tail = "".join(f"[{a!r}]" if k == "item" else f".map({a!r})" for k, a in self._steps)
        return f"<output of {self._name!r}{tail}>"


class _Unset(enum.Enum):
    UNSET = "UNSET"


UNSET = _Unset.UNSET
_counter = itertools.count(1)

# Task fields a @task decorator may preset, with their defaults.
_META_DEFAULTS: dict[str, Any] = {
    "name": None,
    "requires": (),
    "provides": (),
    "claims": (),
    "uses": (),
    "tier": Tier.NORMAL,
    "priority": 0,
    "runs_on": None,
    "weight": 1,
    "resources": None,
    "timeout": None,
    "retries": 0,
    "delay": 0.0,
}
META_KEYS = frozenset(_META_DEFAULTS)


class Task(Generic[T]):
    """An immutable description of one unit of work; see the design for every field."""

    __slots__ = (
        "args",
        "claims",
        "delay",
        "fn",
        "is_coroutine",
        "kwargs",
        "name",
        "priority",
        "provides",
        "refs",
        "requires",
        "resources",
        "retries",
        "runs_on",
        "tier",
        "timeout",
        "uses",
        "wants_shared",
        "weight",
    )

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    name: str
    requires: frozenset[Hashable]
    provides: frozenset[Hashable]
    claims: frozenset[Hashable]
    uses: frozenset[Hashable]
    tier: Tier
    priority: float
    runs_on: str | None
    weight: int
    resources: dict[str, float]
    timeout: float | None
    retries: int
    delay: float
    is_coroutine: bool
    wants_shared: bool
    refs: frozenset[str]

    @overload
    def __init__(
        self: Task[R],
        fn: Callable[..., Awaitable[R]],
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **meta: Any,
    ) -> None: ...

    @overload
    def __init__(
        self: Task[R],
        fn: Callable[..., R],
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **meta: Any,
    ) -> None: ...

    def __init__(
        self,
        fn: Callable[..., Any],
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **meta: Any,
    ) -> None:
        if inspect.iscoroutine(fn):
            fn.close()  # never awaited: close it so it does not warn later
            raise SpecError(
                "got a coroutine object: pass the coroutine function and its arguments, "
                "e.g. Task(fetch, (url,)) rather than Task(fetch(url))"
            )
        if not callable(fn):
            raise SpecError(f"task function must be callable, got {type(fn).__name__} {fn!r}")
        unknown = set(meta) - META_KEYS
        if unknown:
            raise SpecError(f"unknown Task option(s): {', '.join(sorted(unknown))}")
        preset: dict[str, Any] = getattr(fn, "__taskvisor__", {})
        opts = {**_META_DEFAULTS, **preset, **meta}
        s = object.__setattr__
        s(self, "fn", fn)
        if isinstance(args, str | bytes) or not isinstance(args, tuple | list):
            raise SpecError(f"args must be a tuple or list, got {type(args).__name__}")
        s(self, "args", tuple(args))
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise SpecError(f"kwargs must be a mapping, got {type(kwargs).__name__}")
        kw = dict(kwargs or {})
        if not all(isinstance(k, str) for k in kw):
            raise SpecError("kwargs keys must be strings")
        s(self, "kwargs", kw)
        name = opts["name"]
        if name is None:
            qual = getattr(fn, "__qualname__", None) or type(fn).__name__
            name = f"{qual}-{next(_counter)}"
        elif not isinstance(name, str) or not name:
            raise SpecError(f"name must be a non-empty string, got {name!r}")
        s(self, "name", name)
        for field in ("requires", "provides", "claims", "uses"):
            s(self, field, _items(field, opts[field]))
        both = self.claims & self.uses
        if both:
            raise SpecError(f"task {name!r}: {', '.join(map(repr, both))} in both claims and uses")
        s(self, "tier", _tier(opts["tier"]))
        s(self, "priority", _number("priority", opts["priority"], minimum=None))
        s(self, "runs_on", _runs_on(opts["runs_on"]))
        weight = opts["weight"]
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise SpecError(f"weight must be an int >= 0, got {weight!r}")
        s(self, "weight", weight)
        s(self, "resources", resource_map(opts["resources"]))
        timeout = opts["timeout"]
        if timeout is not None:
            timeout = _number("timeout", timeout, minimum=0.0)
            if timeout == 0:
                raise SpecError("timeout must be > 0 (or None)")
        s(self, "timeout", timeout)
        retries = opts["retries"]
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise SpecError(f"retries must be an int >= 0, got {retries!r}")
        s(self, "retries", retries)
        s(self, "delay", _number("delay", opts["delay"], minimum=0.0))
        s(self, "is_coroutine", _is_coroutine_fn(fn))
        s(self, "wants_shared", _wants_shared(fn))
        refs = frozenset(r.task_name for r in iter_refs((self.args, self.kw_values())))
        if name in refs:
            raise SpecError(f"task {name!r} takes its own output as an argument")
        s(self, "refs", refs)

    def kw_values(self) -> tuple[Any, ...]:
        return tuple(self.kwargs.values())

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("Task is immutable; build a new one")

    @property
    def output(self) -> ResultRef[T]:
        """This task's return value, for use as another task's argument."""
        return ResultRef(self.name)

    @property
    def dependencies(self) -> frozenset[Hashable]:
        """The items the task waits for, ``requires`` plus the outputs it references."""
        return self.requires | {OutputItem(r) for r in self.refs}

    def __repr__(self) -> str:
        return f"<Task {self.name!r} tier={self.tier.name}>"


def task(**meta: Any) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Attach task options to a function; returns the function itself.

    ``Task(fn)`` and ``sup.submit(fn)`` pick the options up; explicit options win.
    """
    unknown = set(meta) - META_KEYS
    if unknown:
        raise SpecError(f"unknown task option(s): {', '.join(sorted(unknown))}")
    if "name" in meta:
        raise SpecError("@task cannot preset a name: names are unique per task")

    def attach(fn: Callable[P, R]) -> Callable[P, R]:
        Task(fn, **meta)  # validate now, where the decorator is written
        fn.__taskvisor__ = dict(meta)  # type: ignore[attr-defined]
        return fn

    return attach


def iter_refs(obj: Any) -> Iterable[ResultRef[Any]]:
    """Every ResultRef inside nested tuples, lists, sets and dict values."""
    if isinstance(obj, ResultRef):
        yield obj
    elif isinstance(obj, tuple | list | set | frozenset):
        for x in obj:
            yield from iter_refs(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from iter_refs(x)


def substitute(obj: Any, values: Mapping[str, Any]) -> Any:
    """Replace every ResultRef in ``obj`` by its resolved value.

    Containers that hold no reference come back as they are; those that do are rebuilt
    with their own type (namedtuples through ``_make``, dict subclasses through a copy).
    """
    if isinstance(obj, ResultRef):
        return obj.resolve(values[obj.task_name])
    if isinstance(obj, tuple | list | set | frozenset):
        items = [substitute(x, values) for x in obj]
        if all(a is b for a, b in zip(items, obj, strict=True)):
            return obj
        make = getattr(obj, "_make", None)
        return make(items) if make is not None else type(obj)(items)
    if isinstance(obj, dict):
        changed = {k: substitute(v, values) for k, v in obj.items()}
        if all(changed[k] is v for k, v in obj.items()):
            return obj
        out = copy.copy(obj)
        out.update(changed)
        return out
    return obj


def _items(field: str, value: Any) -> frozenset[Hashable]:
    if value is None:
        return frozenset()
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        value = (value,)
    out = []
    for item in value:
        try:
            hash(item)
        except TypeError:
            raise SpecError(f"{field} items must be hashable, got {item!r}") from None
        out.append(item)
    return frozenset(out)


def _tier(value: Any) -> Tier:
    if isinstance(value, Tier):
        return value
    if isinstance(value, str):
        try:
            return Tier[value.upper()]
        except KeyError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            return Tier(value)
        except ValueError:
            pass
    names = ", ".join(t.name for t in Tier)
    raise SpecError(f"tier must be one of {names}, got {value!r}")


def _number(field: str, value: Any, *, minimum: float | None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise SpecError(f"{field} must be a number, got {value!r}")
    if minimum is not None and (value < minimum or math.isinf(value)):
        raise SpecError(f"{field} must be a finite number >= {minimum:g}, got {value!r}")
    return value


def _runs_on(value: Any) -> str | None:
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not value
        or (value.startswith("aloop:") and value == "aloop:")
    ):
        raise SpecError(f"runs_on must be a non-empty string or None, got {value!r}")
    return value


def resource_map(value: Any, what: str = "amount") -> dict[str, float]:
    """Validate ``{name: number >= 0}`` (task needs, or supervisor capacities)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"resources must be a mapping of name to {what}, got {value!r}")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str):
            raise SpecError(f"resource names must be strings, got {k!r}")
        out[k] = _number(f"resources[{k!r}]", v, minimum=0.0)
    return out


def _is_coroutine_fn(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or (
        not inspect.isroutine(fn) and inspect.iscoroutinefunction(type(fn).__call__)
    )


def _wants_shared(fn: Callable[..., Any]) -> bool:
    try:
        return "shared" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
