"""Task descriptions: :class:`Task`, :func:`task`, :class:`Tier`, :class:`ResultRef`.

A ``Task`` is an immutable description. Everything that can be checked without a
supervisor is checked here, so a bad spec fails at the line that wrote it (``SpecError``).
What needs a supervisor (unknown aloop or backend names, duplicate names, cycles) is
checked by the call that submits it.
"""

from __future__ import annotations

import copy
import difflib
import enum
import inspect
import itertools
import math
import reprlib
import types
from collections.abc import (
    Awaitable,
    Callable,
    Hashable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from math import copysign
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


class _OutputMark:
    """Tags the tuples that are output items: no user item can equal one by accident."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<output>"

    def __reduce__(self) -> str:
        return "_OUTPUT"  # pickles as the one module-level mark


_OUTPUT = _OutputMark()


class OutputItem(tuple[_OutputMark, str]):
    """The dependency item a task provides when it succeeds: its return value.

    A tuple ``(mark, name)`` with a private mark, so hashing and comparing it, which the
    planner does on every dependency edge, run in C (a frozen dataclass's ``__hash__``
    is Python code). Only another ``OutputItem`` of the same name equals it.
    """

    __slots__ = ()

    def __new__(cls, name: str) -> OutputItem:
        return tuple.__new__(cls, (_OUTPUT, name))

    @property
    def name(self) -> str:
        """The name of the task whose output this is."""
        return self[1]

    def __repr__(self) -> str:
        return f"OutputItem(name={self[1]!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (OutputItem, (self[1],))


class ResultRef(Generic[T]):
    """A reference to another task's return value, resolved just before dispatch.

    Passing ``spec.output`` (or a projection of it) as an argument makes the receiving
    task depend on ``spec`` succeeding; the value is substituted at dispatch. Get one from
    ``spec.output`` (never built directly): ``ref["key"]`` and ``ref.map(f)`` project it.
    """

    __slots__ = ("_item", "_name", "_steps")

    def __init__(
        self,
        name: str,
        steps: tuple[tuple[str, Any], ...] = (),
        item: OutputItem | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise SpecError(f"ResultRef needs a task name, got {safe_repr(name)}")
        self._name = str.__str__(name)
        self._steps = steps
        # the dependency item every task passed this reference (or a projection of it)
        # shares, one per referenced task (see Task.output), not one per reference
        self._item = OutputItem(self._name) if item is None else item

    @property
    def task_name(self) -> str:
        """The name of the task whose output this refers to."""
        return self._name

    @property
    def item(self) -> OutputItem:
        return self._item

    def __getitem__(self, key: Any) -> ResultRef[Any]:
        return ResultRef(self._name, (*self._steps, ("item", key)), self._item)

    def __iter__(self) -> Iterator[Any]:
        # (without it, ``__getitem__`` made a reference iterable: ref[0], ref[1], ... for
        # ever, so ``list(ref)``, ``x in ref`` or a ref passed where names are expected
        # never returned and filled the memory)
        raise TypeError(
            f"{self!r} is a reference to a value that does not exist yet: it cannot be "
            "iterated; project it with ref[key] or ref.map(f)"
        )

    def map(self, fn: Callable[[T], R]) -> ResultRef[R]:
        """A reference to ``fn(value)``, computed just before dispatch."""
        if not callable(fn):
            raise SpecError(f"ResultRef.map needs a callable, got {safe_repr(fn)}")
        return ResultRef(self._name, (*self._steps, ("map", fn)), self._item)

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


class _ReadOnlyEmpty(dict[str, Any]):
    """The one empty ``resources`` (and the one empty ``kwargs``) every task without them
    shares (a dict per task was 64 bytes of every pending task). It refuses to be filled,
    so no task can change another's; a copy or a pickle of it is an ordinary empty dict
    (so a process worker unpickles a plain ``{}``, importing nothing)."""

    __slots__ = ()

    def _read_only(self, *_: Any, **__: Any) -> Any:
        raise TypeError("a Task is immutable: its empty resources and kwargs are read-only")

    __setitem__ = __delitem__ = update = setdefault = _read_only
    pop = popitem = clear = __ior__ = _read_only

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args or kwargs:
            self._read_only()

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, ())  # a copy or a pickle is an ordinary (writable) empty dict


_NO_RESOURCES: dict[str, float] = _ReadOnlyEmpty()
_NO_KWARGS: dict[str, Any] = _ReadOnlyEmpty()
_NO_ITEMS: frozenset[Any] = frozenset()  # shared: an empty frozenset is 216 bytes each

# Task fields a @task decorator may preset, with their defaults.
_META_DEFAULTS: dict[str, Any] = {
    "name": None,
    "requires": (),
    "provides": (),
    "claims": (),
    "uses": (),
    "tier": Tier.NORMAL,
    "priority": 0.0,
    "runs_on": None,
    "weight": 1,
    "resources": None,
    "timeout": None,
    "retries": 0,
    "delay": 0.0,
}
META_KEYS = frozenset(_META_DEFAULTS)
_NO_PRESET: dict[str, Any] = {}  # (read only: never handed out)
_ITEM_KEYS = frozenset({"requires", "provides", "claims", "uses"})
_NORMAL = Tier.NORMAL  # (an enum member read through its class costs ~0.2 µs a Task)


def _bad(name: str, message: str) -> SpecError:
    return SpecError(f"task {name!r}: {message}")


class Task(Generic[T]):
    """An immutable description of one unit of work; see the design for every field.

    Every argument is checked here and a bad one raises :class:`SpecError` naming the task,
    the argument and the value. What is accepted, and how it is normalised:

    - ``fn``: any callable (not a coroutine object: pass the function and its ``args``).
    - ``args``: a tuple or list; ``kwargs``: ``None`` or a mapping with string keys.
    - ``name``: a non-empty string (default: ``fn``'s qualified name and a counter).
    - ``requires``/``provides``/``claims``/``uses``: an iterable of hashable items, stored as a
      frozenset. A single string (or bytes, or any other non-iterable hashable) is *one*
      item: ``requires="db"`` is ``{"db"}``. An item whose ``__hash__``/``__eq__`` raises is a
      ``SpecError``: each item not of a builtin type is compared with itself and with a
      stranger, and with every other item of the task that shares its hash and meets it in
      the planner (requires, provides and output items; claims and uses), so it cannot fail
      later inside ``submit``. The same resource in ``claims`` and ``uses`` is a ``SpecError``.
    - ``tier``: a :class:`Tier`, its name (any case) or its int value.
    - ``priority``: an int or float (not a bool, not NaN), stored as a float; negative values
      and ``±math.inf`` are fine (lower first), NaN would break the queue order.
    - ``weight``, ``retries``: an int >= 0 (not a bool).
    - ``resources``: ``None`` or ``{name: finite number >= 0}``, stored as floats.
    - ``timeout``: ``None`` or a number > 0; ``math.inf`` means no timeout (as in anyio) and
      is stored as ``None``.
    - ``delay``: a finite number >= 0 (an infinite delay would never run).
    - ``runs_on``: ``None`` or a non-empty string; whether it names a known target is checked
      by the supervisor at submission.

    Numbers are ints or floats (``int``/``float`` subclasses included, bools excluded); an int
    too large for a float is a ``SpecError``. So is an argument whose own methods raise while
    it is read (a list subclass's ``__len__``, a mapping's ``keys()``, a float subclass's
    ``__float__``, a ``__class__`` that raises): the message names the argument and the
    original error is its ``__cause__``. A ``str`` subclass is read as the string it holds.
    """

    __slots__ = (
        "_opts",
        "_output",
        "args",
        "dependencies",
        "fn",
        "kwargs",
        "name",
        "provides",
        "refs",
        "requires",
        "runs_on",
        "tier",
    )

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    name: str
    requires: frozenset[Hashable]
    provides: frozenset[Hashable]
    tier: Tier
    runs_on: str | None
    # priority, weight, resources, timeout, retries, delay, claims, uses, is_coroutine
    # and wants_shared: properties over one shared Options object (see Options)
    _opts: Options
    _output: ResultRef[T]  # (set on the first read of ``output``)
    refs: frozenset[str]
    dependencies: frozenset[Hashable]

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
        if type(fn) is types.FunctionType:  # the usual: no coroutine object, callable
            qual: str | None = fn.__qualname__
            preset = _preset(fn) if "__taskvisor__" in fn.__dict__ else _NO_PRESET
        else:
            try:
                coroutine_object = inspect.iscoroutine(fn)
            except Exception:  # isinstance read a __class__ that raises: no coroutine does
                coroutine_object = False
            if coroutine_object:
                cast(Any, fn).close()  # never awaited: close it so it does not warn later
                raise SpecError(
                    "got a coroutine object: pass the coroutine function and its arguments, "
                    "e.g. Task(fetch, (url,)) rather than Task(fetch(url))"
                )
            if not callable(fn):
                raise SpecError(
                    f"task function must be callable, got {type(fn).__name__} {safe_repr(fn)}"
                )
            qual = None
            preset = _preset(fn)
        if meta and not meta.keys() <= META_KEYS:  # (no new set unless one is unknown)
            raise SpecError(unknown_options("Task", meta.keys() - META_KEYS, META_KEYS))
        # only the options given (or preset by @task) are checked: every default is a
        # checked value already (building a Task is on every task's path)
        opts = {**preset, **meta} if preset else meta
        name = opts.get("name")
        if name is None:
            name = f"{qual or _qualname(fn)}-{next(_counter)}"
        elif type(name) is not str or not name:
            name = _name(name)  # (a str subclass becomes a plain str: names are dict keys)
        _set_fn(self, fn)
        _set_name(self, name)
        if type(args) is not tuple:
            args = _args(name, args)
        _set_args(self, args)
        kw = _NO_KWARGS if kwargs is None else _kwargs(name, kwargs)
        _set_kwargs(self, kw)
        try:
            found = _refs_in(args, kw) if args or kw else ()
        except Exception as exc:  # a container whose iteration (or __class__) raises
            raise _unreadable(name, args, kw, exc) from exc
        refs = frozenset([r._name for r in found]) if found else _NO_ITEMS
        if refs and name in refs:
            raise _bad(name, "takes its own output as an argument")
        if opts.keys().isdisjoint(_ITEM_KEYS):  # no items: every default is ()
            requires = provides = claims = uses = _NO_ITEMS
        else:
            odd: list[str] = []  # the fields holding an item outside _PLAIN_ITEMS
            requires = _items(name, "requires", opts.get("requires", ()), odd)
            provides = _items(name, "provides", opts.get("provides", ()), odd)
            claims = _items(name, "claims", opts.get("claims", ()), odd)
            uses = _items(name, "uses", opts.get("uses", ()), odd)
            if odd:
                _check_namespaces(name, odd, requires, provides, claims, uses, refs)
        _set_requires(self, requires)
        _set_provides(self, provides)
        if claims and uses:
            try:
                both = claims & uses
            except Exception as exc:  # an item whose __eq__ raises
                raise _bad(
                    name, f"claims and uses items cannot be compared: {safe_repr(exc)}"
                ) from exc
            if both:
                raise _bad(name, f"{', '.join(map(safe_repr, both))} in both claims and uses")
        if len(opts) == ("name" in opts) + ("runs_on" in opts):  # the usual: no other option
            _set_tier(self, _NORMAL)
            on = opts.get("runs_on")
            if on is not None and (type(on) is not str or not on or on == "aloop:"):
                on = _runs_on(name, on)  # (checked there; a plain name needs no call)
            _set_runs_on(self, on)
            is_coroutine, wants_shared = _fn_traits(fn)
            _set__opts(self, _PLAIN[is_coroutine][wants_shared])
        else:
            self._options(name, opts, claims, uses, _fn_traits(fn))
        _set_refs(self, refs)
        if refs:
            try:
                dependencies = requires | {r._item for r in found}
            except Exception as exc:  # checked above; a __hash__/__eq__ that changed its mind
                raise _bad(name, f"requires items cannot be compared: {safe_repr(exc)}") from exc
        else:
            dependencies = requires
        _set_dependencies(self, dependencies)

    def _options(
        self,
        name: str,
        opts: Mapping[str, Any],
        claims: frozenset[Hashable],
        uses: frozenset[Hashable],
        traits: tuple[bool, bool],
    ) -> None:
        """Check and set the scalar options (``tier`` ... ``delay``); defaults for the rest."""
        get = opts.get
        _set_tier(self, _tier(name, opts["tier"]) if "tier" in opts else Tier.NORMAL)
        priority = _float(name, "priority", opts["priority"]) if "priority" in opts else 0.0
        _set_runs_on(self, _runs_on(name, get("runs_on")))
        weight = _count(name, "weight", opts["weight"]) if "weight" in opts else 1
        resources = get("resources")
        if resources is not None:
            resources = resource_map(resources, prefix=f"task {name!r}: ") or _NO_RESOURCES
        timeout = get("timeout")
        if timeout is not None:
            timeout = _float(name, "timeout", timeout)
            if not timeout > 0:
                raise _bad(
                    name, f"timeout must be a number > 0 or None, got {safe_repr(opts['timeout'])}"
                )
            if math.isinf(timeout):
                timeout = None  # as in anyio: an infinite deadline is no deadline
        retries = _count(name, "retries", opts["retries"]) if "retries" in opts else 0
        delay = _float(name, "delay", opts["delay"]) if "delay" in opts else 0.0
        if not 0 <= delay < math.inf:
            raise _bad(name, f"delay must be a finite number >= 0, got {safe_repr(opts['delay'])}")
        _set__opts(
            self,
            _options_of(
                priority,
                weight,
                _NO_RESOURCES if resources is None else resources,
                timeout,
                retries,
                delay,
                claims,
                uses,
                *traits,
            ),
        )

    @property
    def is_coroutine(self) -> bool:
        return self._opts.is_coroutine

    @property
    def wants_shared(self) -> bool:
        return self._opts.wants_shared

    @property
    def priority(self) -> float:
        return self._opts.priority

    @property
    def weight(self) -> int:
        return self._opts.weight

    @property
    def resources(self) -> dict[str, float]:
        return self._opts.resources

    @property
    def timeout(self) -> float | None:
        return self._opts.timeout

    @property
    def retries(self) -> int:
        return self._opts.retries

    @property
    def delay(self) -> float:
        return self._opts.delay

    @property
    def claims(self) -> frozenset[Hashable]:
        return self._opts.claims

    @property
    def uses(self) -> frozenset[Hashable]:
        return self._opts.uses

    def kw_values(self) -> tuple[Any, ...]:
        """The keyword arguments' values, in order (where ``output`` references hide)."""
        return tuple(self.kwargs.values())

    def replace(self, **options: Any) -> Task[T]:
        """A new Task with the same function, arguments and options, except ``options``
        (``spec.replace(timeout=30)``); the name stays unless ``name=`` is given, so
        ``output`` references to it still hold. Checked like ``Task(...)``."""
        meta = {key: getattr(self, key) for key in _META_DEFAULTS}
        meta["resources"] = dict(self.resources) or None
        meta.update(options)
        return Task(self.fn, self.args, self.kwargs, **meta)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("Task is immutable; build a new one")

    @property
    def output(self) -> ResultRef[T]:
        """This task's return value, for use as another task's argument."""
        try:
            return self._output
        except AttributeError:  # the first read: one reference (and one dependency item)
            ref: ResultRef[T] = ResultRef(self.name)  # for every task it is passed to
            _set__output(self, ref)
            return ref

    def __repr__(self) -> str:
        return f"<Task {self.name!r} tier={self.tier.name}>"


# A Task's slots are filled through their descriptors' own ``__set__`` (Task refuses
# ``setattr``): 17 ``object.__setattr__(self, name, value)`` calls took ~1.1 µs of each
# ``Task()``, the descriptors ~0.7 µs (timeit, CPython 3.11), and every task builds one.
(
    _set__opts,
    _set__output,
    _set_args,
    _set_dependencies,
    _set_fn,
    _set_kwargs,
    _set_name,
    _set_provides,
    _set_refs,
    _set_requires,
    _set_runs_on,
    _set_tier,
) = (cast(Any, Task.__dict__[_slot]).__set__ for _slot in Task.__slots__)


class Options:
    """A task's options that most tasks leave at their defaults: ``priority``,
    ``weight``, ``resources``, ``timeout``, ``retries``, ``delay``, ``claims``, ``uses``,
    and two traits of its function, ``is_coroutine`` and ``wants_shared`` (read them off
    the Task: ``task.timeout``).

    Every Task that sets none of them shares one Options object per pair of traits
    (``_PLAIN``), and Tasks that set the same plain values share one too (a small cache:
    numbers and string locks, no ``resources``), so they cost a Task one slot, not ten
    (72 bytes of every pending task; issue 13, W5). A Task whose values no other shares (a
    ``resources`` dict, a priority of its own) pays for an Options of its own: ~40 bytes
    and one object more than eight slots would. The planner and the supervisor read them through
    ``task._opts`` on their per-task paths (a slot read, not a property call). Never
    changed once made.
    """

    __slots__ = (
        "claims",
        "delay",
        "is_coroutine",
        "priority",
        "resources",
        "retries",
        "timeout",
        "uses",
        "wants_shared",
        "weight",
    )

    def __init__(
        self,
        priority: float,
        weight: int,
        resources: dict[str, float],
        timeout: float | None,
        retries: int,
        delay: float,
        claims: frozenset[Hashable],
        uses: frozenset[Hashable],
        is_coroutine: bool,
        wants_shared: bool,
    ) -> None:
        self.priority = priority
        self.weight = weight
        self.resources = resources
        self.timeout = timeout
        self.retries = retries
        self.delay = delay
        self.claims = claims
        self.uses = uses
        self.is_coroutine = is_coroutine
        self.wants_shared = wants_shared


def _plain(is_coroutine: bool, wants_shared: bool) -> Options:
    return Options(
        0.0, 1, _NO_RESOURCES, None, 0, 0.0, _NO_ITEMS, _NO_ITEMS, is_coroutine, wants_shared
    )


# every option at its default, by the function's traits: _PLAIN[is_coroutine][wants_shared]
_PLAIN = ((_plain(False, False), _plain(False, True)), (_plain(True, False), _plain(True, True)))
_SHARED_OPTIONS: dict[tuple[Any, ...], Options] = {}
# distinct option sets kept for sharing; when full it starts again (as ``re``'s cache
# did): the sets in use come back, and a run of one-off values pins nothing for good
_SHARED_OPTIONS_MAX = 256


def _options_of(
    priority: float,
    weight: int,
    resources: dict[str, float],
    timeout: float | None,
    retries: int,
    delay: float,
    claims: frozenset[Hashable],
    uses: frozenset[Hashable],
    is_coroutine: bool,
    wants_shared: bool,
) -> Options:
    """The Options object for these values: a shared one when the values allow it."""
    values = (priority, weight, resources, timeout, retries, delay, claims, uses)
    if resources or ((claims or uses) and not all(type(r) is str for r in (*claims, *uses))):
        # (a resources dict is mutable, and items of other types may compare equal
        # while they differ, 1 and True: such a Task gets an Options of its own)
        return Options(*values, is_coroutine, wants_shared)
    # (-0.0 == 0.0: the signs go in the key, so a Task reads back the very value given)
    key: tuple[Any, ...] = (priority, weight, timeout, retries, delay, claims, uses)
    key += (copysign(1.0, priority), copysign(1.0, delay), is_coroutine, wants_shared)
    opts = _SHARED_OPTIONS.get(key)
    if opts is None:
        opts = Options(*values, is_coroutine, wants_shared)
        if len(_SHARED_OPTIONS) >= _SHARED_OPTIONS_MAX:
            _SHARED_OPTIONS.clear()
        _SHARED_OPTIONS[key] = opts
    return opts


def task(**meta: Any) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Attach task options to a function; returns the function itself.

    ``Task(fn)`` and ``sup.submit(fn)`` pick the options up; explicit options win.
    """
    unknown = set(meta) - META_KEYS
    if unknown:
        raise SpecError(unknown_options("@task", unknown, META_KEYS))
    if "name" in meta:
        raise SpecError("@task cannot preset a name: names are unique per task")

    def attach(fn: Callable[P, R]) -> Callable[P, R]:
        Task(fn, **meta)  # validate now, where the decorator is written
        fn.__taskvisor__ = dict(meta)  # type: ignore[attr-defined]
        return fn

    return attach


_CONTAINERS = (tuple, list, set, frozenset, dict)
_NESTED = (*_CONTAINERS, ResultRef)  # a ResultRef subclass takes the generic walk too


def _refs_in(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Sequence[ResultRef[Any]]:
    """The references to other tasks' outputs in the arguments (empty: none).

    Most arguments are plain values: only a container or a reference at the top level
    needs the full walk of :func:`iter_refs`.
    """
    found: list[ResultRef[Any]] | None = None
    for x in (*args, *kwargs.values()) if kwargs else args:
        if type(x) is ResultRef:
            if found is None:
                found = []
            found.append(x)
        elif isinstance(x, _NESTED):
            return list(iter_refs((args, tuple(kwargs.values()))))
    return () if found is None else found


def iter_refs(obj: Any) -> Iterable[ResultRef[Any]]:
    """Every ResultRef inside nested tuples, lists, sets and dict values.

    Iterative, and each container is visited once: self-referencing or deeply nested
    arguments are fine.
    """
    stack = [obj]
    seen: set[int] = set()
    while stack:
        x = stack.pop()
        if isinstance(x, ResultRef):
            yield x
        elif isinstance(x, tuple | list | set | frozenset | dict):
            if id(x) in seen:
                continue
            seen.add(id(x))  # x stays alive inside obj, so its id is not reused meanwhile
            stack.extend(x.values() if isinstance(x, dict) else x)


def substitute_call(
    args: tuple[Any, ...], kwargs: dict[str, Any], values: Mapping[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``args`` and ``kwargs`` with every ResultRef replaced by its resolved value.

    The common case, references as plain top-level arguments and no containers, is
    resolved in one pass; anything nested goes through :func:`substitute`.
    """
    for x in args:
        if type(x) is not ResultRef and isinstance(x, _NESTED):
            return substitute(args, values), substitute(kwargs, values)
    # (each projection runs once: nothing is resolved before the scan has decided; a
    # plain reference, no projection, is its value: no call per reference)
    out = []
    for x in args:
        if type(x) is ResultRef:
            value = values[x._name]
            out.append(x.resolve(value) if x._steps else value)
        else:
            out.append(x)
    return tuple(out), (substitute(kwargs, values) if kwargs else kwargs)


def substitute(obj: Any, values: Mapping[str, Any], _active: frozenset[int] = frozenset()) -> Any:
    """Replace every ResultRef in ``obj`` by its resolved value.

    Containers that hold no reference come back as they are; those that do are rebuilt
    with their own type (namedtuples through ``_make``, dict subclasses through a copy).
    A container met again inside itself is left as it is (no endless recursion).
    """
    if isinstance(obj, ResultRef):
        return obj.resolve(values[obj.task_name])
    if isinstance(obj, tuple | list | set | frozenset | dict):
        if id(obj) in _active:
            return obj
        active = _active | {id(obj)}
    if isinstance(obj, tuple | list | set | frozenset):
        items = [substitute(x, values, active) for x in obj]
        if all(a is b for a, b in zip(items, obj, strict=True)):
            return obj
        make = getattr(obj, "_make", None)
        return make(items) if make is not None else type(obj)(items)
    if isinstance(obj, dict):
        changed = {k: substitute(v, values, active) for k, v in obj.items()}
        if all(changed[k] is v for k, v in obj.items()):
            return obj
        out = copy.copy(obj)
        out.update(changed)
        return out
    return obj


_reprs = reprlib.Repr()
_reprs.maxstring = _reprs.maxother = 80
_reprs.maxlevel = 3


def safe_repr(value: Any) -> str:
    """A short repr for error messages that never raises (huge, recursive, hostile values)."""
    try:
        return _reprs.repr(value)
    except Exception:
        if issubclass(type(value), int):  # (not isinstance: it may read a hostile __class__)
            return f"<int of {int.bit_length(value)} bits>"
        return f"<{type(value).__name__} object>"


def unknown_options(what: str, unknown: Iterable[str], known: Iterable[str]) -> str:
    """``unknown Task option 'tiers' (did you mean 'tier'?)``: each unknown name with the
    closest known one, when one is close."""
    known = sorted(known)
    parts = []
    for name in sorted(unknown):
        close = difflib.get_close_matches(name, known, n=1)
        parts.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
    return f"unknown {what} option{'s' if len(parts) > 1 else ''} {', '.join(parts)}"


def _preset(fn: Any) -> dict[str, Any]:
    """The options ``@task`` attached to ``fn`` (only well-formed ones count)."""
    try:
        preset = getattr(fn, "__taskvisor__", None)
    except Exception:  # a callable with a hostile __getattr__
        return {}
    if not isinstance(preset, dict):
        return {}  # e.g. a mock that answers every attribute
    try:
        return {k: v for k, v in preset.items() if k in META_KEYS and k != "name"}
    except Exception:  # a dict subclass (or key) with hostile methods: not well-formed
        return {}


def _qualname(fn: Any) -> str:
    try:
        qual = getattr(fn, "__qualname__", None)
    except Exception:
        qual = None
    return qual if isinstance(qual, str) and qual else type(fn).__name__


def _name(value: Any) -> str:
    """A task name given as anything but a plain non-empty str: a str subclass is read as
    the string it holds (its own ``__len__``/``__eq__`` are never called)."""
    try:
        text = str.__str__(value) if isinstance(value, str) else None
    except Exception as exc:  # isinstance read a __class__ that raises
        raise SpecError(
            f"task name must be a non-empty string, got {safe_repr(value)}: {safe_repr(exc)}"
        ) from exc
    if not text:
        raise SpecError(f"task name must be a non-empty string, got {safe_repr(value)}")
    return text


def _args(task: str, args: Any) -> tuple[Any, ...]:
    """``args`` that is not a plain tuple: a list or a tuple/list subclass, copied by its own
    iteration (which may raise)."""
    try:
        if not isinstance(args, str | bytes) and isinstance(args, tuple | list):
            return tuple(args)
    except Exception as exc:
        raise SpecError(
            f"task {task!r}: args must be a tuple or list; reading {type(args).__name__} "
            f"{safe_repr(args)} raised {safe_repr(exc)}"
        ) from exc
    raise SpecError(
        f"task {task!r}: args must be a tuple or list, got {type(args).__name__} {safe_repr(args)}"
    )


def _kwargs(task: str, kwargs: Any) -> dict[str, Any]:
    """``kwargs``: a mapping with string keys, copied into a plain dict."""
    try:
        if not isinstance(kwargs, Mapping):
            raise SpecError(
                f"task {task!r}: kwargs must be a mapping, got {type(kwargs).__name__} "
                f"{safe_repr(kwargs)}"
            )
        kw = dict(kwargs)
        for k in kw:
            if type(k) is str:
                continue
            if not isinstance(k, str):
                raise SpecError(f"task {task!r}: kwargs keys must be strings, got {safe_repr(k)}")
            # the call matches a str subclass key to the parameter names with its own __eq__
            k == str.__str__(k)  # noqa: B015
    except SpecError:
        raise
    except Exception as exc:
        raise SpecError(
            f"task {task!r}: kwargs: reading {type(kwargs).__name__} {safe_repr(kwargs)} "
            f"raised {safe_repr(exc)}"
        ) from exc
    return kw if kw else _NO_KWARGS


def _unreadable(task: str, args: tuple[Any, ...], kw: dict[str, Any], exc: Exception) -> SpecError:
    """The error for arguments whose search for output references raised: in args or kwargs."""
    value: Any
    try:
        _refs_in(args, {})
        where, value = "kwargs", kw
    except Exception:
        where, value = "args", args
    return SpecError(
        f"task {task!r}: {where}: looking for output references in {safe_repr(value)} "
        f"raised {safe_repr(exc)}"
    )


def _items(task: str, field: str, value: Any, odd: list[str]) -> frozenset[Hashable]:
    """``requires``/``provides``/``claims``/``uses``: an iterable of hashable items.

    ``None`` is no item; a string, bytes or any other non-iterable value is one item
    (``requires="db"`` means ``{"db"}``). An item whose ``__hash__`` or ``__eq__`` raises is
    refused here (see :func:`check_item`), not later inside the planner. ``field`` is
    appended to ``odd`` if an item is of a type outside :data:`_PLAIN_ITEMS`: then the
    caller compares it with the other fields' items (:func:`_check_namespaces`).
    """
    if value is None or (type(value) is tuple and not value):
        return _NO_ITEMS
    if type(value) is str:  # the common single item: a str always hashes
        return frozenset((value,))
    try:
        if isinstance(value, str | bytes | OutputItem) or not isinstance(value, Iterable):
            value = (value,)
    except Exception as exc:  # isinstance read a __class__ that raises
        raise SpecError(
            f"task {task!r}: {field} must be an iterable of hashable items, "
            f"checking {safe_repr(value)} raised {safe_repr(exc)}"
        ) from exc
    try:
        items = list(value)
    except Exception as exc:
        raise SpecError(
            f"task {task!r}: {field} must be an iterable of hashable items, "
            f"iterating {safe_repr(value)} raised {safe_repr(exc)}"
        ) from exc
    where = ""
    for item in items:
        if type(item) not in _PLAIN_ITEMS:  # (those hash and compare in C, never raise)
            where = where or f"task {task!r}: {field}"
            check_item(item, where)
    if not items:
        return _NO_ITEMS
    if where:
        odd.append(field)
        _check_peers(task, ((field, items),))
    try:
        return frozenset(items)
    except Exception as exc:  # checked above; a __hash__/__eq__ that changed its mind
        raise SpecError(
            f"task {task!r}: {field} items cannot be compared: {safe_repr(exc)}"
        ) from exc


# Items of these exact types hash and compare in C and never raise; any other item is
# compared with itself and with a stranger when the task is built (check_item).
_PLAIN_ITEMS = frozenset({str, bytes, int, float, bool, type(None), OutputItem})


class _Stranger:
    """Equal to nothing but itself: what an item meets in the planner's dicts."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<stranger>"


_STRANGER = _Stranger()


def check_item(item: Any, where: str) -> None:
    """Refuse (``SpecError``) an item the planner's dicts cannot hold safely.

    The item must hash, and its ``__eq__`` (and the truth of its answer) must not raise.
    A set or a dict compares items only when their hashes are equal and they are not the
    same object, so one such item builds a frozenset happily; the planner then compares it
    with whatever other item shares its hash (another task's, a provided one) and used to
    fail in the middle of an event. ``item == item`` runs its ``__eq__`` (``==`` has no
    identity shortcut); comparing with a stranger catches an ``__eq__`` that assumes the
    other side is of its own kind. The elements of a tuple or frozenset item are checked
    the same way (a tuple compares its elements when it meets an equal-hashed tuple).
    Items of the builtin types in ``_PLAIN_ITEMS`` pass at once.

    ``where`` starts the message: ``"task 'x': requires"``, ``"provide"``. What no single
    item shows (an ``__eq__`` that raises only against some other item) is left to
    :func:`_check_peers` within a task, and to the planner across tasks.
    """
    if type(item) in _PLAIN_ITEMS:
        return
    try:
        hash(item)
    except TypeError:
        raise SpecError(
            f"{where} items must be hashable, got {type(item).__name__} {safe_repr(item)}"
        ) from None
    except Exception as exc:
        raise SpecError(
            f"{where} item {safe_repr(item)} cannot be hashed: {safe_repr(exc)}"
        ) from exc
    stack: list[Any] = [item]
    while stack:
        x = stack.pop()
        kind = type(x)
        if kind in _PLAIN_ITEMS:
            continue
        try:
            if kind is not tuple and kind is not frozenset:  # those compare their elements
                bool(x == x)
                bool(x == _STRANGER)
            if issubclass(kind, tuple):
                stack.extend(tuple.__iter__(x))  # the elements, not a subclass's own __iter__
            elif issubclass(kind, frozenset):
                stack.extend(frozenset.__iter__(x))
        except Exception as exc:
            held = "" if x is item else f" (it holds {safe_repr(x)})"
            raise SpecError(
                f"{where} item {safe_repr(item)}{held} cannot be compared: {safe_repr(exc)}"
            ) from exc


def _check_namespaces(
    task: str,
    odd: list[str],
    requires: frozenset[Hashable],
    provides: frozenset[Hashable],
    claims: frozenset[Hashable],
    uses: frozenset[Hashable],
    refs: frozenset[str],
) -> None:
    """Compare the items of different fields that the planner keeps in one dict.

    Requires, provides and output items (those of the references in the arguments and
    the task's own) share one dict, claims and uses another; items of one dict that share
    a hash are compared there, so they are compared here first, where a failure can still
    name them. Only called when a field in ``odd`` holds an item outside ``_PLAIN_ITEMS``.
    """
    if "requires" in odd or "provides" in odd:
        outputs = frozenset(OutputItem(r) for r in refs)
        own = frozenset((OutputItem(task),))
        _check_peers(
            task,
            (
                ("requires", requires),
                ("provides", provides),
                ("output reference", outputs),
                ("own output", own),
            ),
            across=True,
        )
    if "claims" in odd or "uses" in odd:
        _check_peers(task, (("claims", claims), ("uses", uses)), across=True)


def _check_peers(
    task: str, fields: Iterable[tuple[str, Iterable[Hashable]]], *, across: bool = False
) -> None:
    """Compare, both ways, every two items of ``fields`` that share a hash, as the planner's
    dicts will; refuse a pair whose comparison raises, naming both. Nothing to do unless one
    item is of a type outside :data:`_PLAIN_ITEMS`. ``across``: only items of different
    fields (those of one field were compared when it was built)."""
    fields = tuple(fields)
    if all(type(i) in _PLAIN_ITEMS for _, items in fields for i in items):
        return
    by_hash: dict[int, list[tuple[str, Hashable]]] = {}
    for field, items in fields:
        for item in items:
            try:
                h = hash(item)
            except Exception as exc:  # hashed fine a moment ago
                raise SpecError(
                    f"task {task!r}: {field} item {safe_repr(item)} cannot be hashed: "
                    f"{safe_repr(exc)}"
                ) from exc
            by_hash.setdefault(h, []).append((field, item))
    for group in by_hash.values():
        for i, (fa, a) in enumerate(group):
            for fb, b in group[i + 1 :]:
                if a is b or (across and fa == fb):
                    continue
                if type(a) in _PLAIN_ITEMS and type(b) in _PLAIN_ITEMS:
                    continue
                try:
                    bool(a == b)
                    bool(b == a)
                except Exception as exc:
                    raise SpecError(
                        f"task {task!r}: {fa} item {safe_repr(a)} and {fb} item {safe_repr(b)} "
                        f"share a hash and cannot be compared: {safe_repr(exc)}"
                    ) from exc


_TIER_NAMES = ", ".join(t.name for t in Tier)


def _tier(task: str, value: Any) -> Tier:
    try:
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
    except Exception as exc:  # its own upper(), __hash__, __eq__ or __class__ raised
        raise SpecError(
            f"task {task!r}: tier must be one of {_TIER_NAMES}, got {safe_repr(value)}: "
            f"reading it raised {safe_repr(exc)}"
        ) from exc
    raise SpecError(f"task {task!r}: tier must be one of {_TIER_NAMES}, got {safe_repr(value)}")


_EXACT = 2**53  # ints below this convert to float without overflow (the fast path)


def real_number(label: str, value: Any) -> float:
    """An int or float (not a bool, not NaN, within float range), as a float.

    Otherwise ``SpecError`` starting with ``label`` (``"task 'x': delay"``, ``"wait_warning"``)
    and showing the value. The supervisor checks its own numbers with it too.
    """
    kind = type(value)
    if kind is float:
        if value == value:  # not NaN
            return cast(float, value)
    elif kind is int and -_EXACT < value < _EXACT:
        return float(value)
    try:
        number = not isinstance(value, bool) and isinstance(value, int | float)
        out = float(value) if number else math.nan  # a subclass's own __float__ may raise
    except OverflowError:
        raise SpecError(f"{label} is too large, got {safe_repr(value)}") from None
    except Exception as exc:
        raise SpecError(
            f"{label} must be a number, got {type(value).__name__} {safe_repr(value)}: "
            f"reading it raised {safe_repr(exc)}"
        ) from exc
    if not number:
        raise SpecError(f"{label} must be a number, got {type(value).__name__} {safe_repr(value)}")
    if math.isnan(out):
        raise SpecError(f"{label} must be a number, got nan")
    return out


def whole_number(label: str, value: Any, minimum: int = 0) -> int:
    """An int >= ``minimum`` (not a bool), as a plain int; otherwise ``SpecError``."""
    if type(value) is int and value >= minimum:
        return value
    try:
        # int() gives a plain int: compare that, not through a subclass's own __lt__
        out = int(value) if isinstance(value, int) and not isinstance(value, bool) else None
    except Exception as exc:  # a subclass's own __int__, or a __class__ that raises
        raise SpecError(
            f"{label} must be an int >= {minimum}, got {type(value).__name__} "
            f"{safe_repr(value)}: reading it raised {safe_repr(exc)}"
        ) from exc
    if out is None or out < minimum:
        raise SpecError(f"{label} must be an int >= {minimum}, got {safe_repr(value)}")
    return out


def _float(task: str, field: str, value: Any) -> float:
    return real_number(f"task {task!r}: {field}", value)


def _count(task: str, field: str, value: Any) -> int:
    """``weight``/``retries``: an int >= 0 (not a bool), as a plain int."""
    return whole_number(f"task {task!r}: {field}", value)


def _runs_on(task: str, value: Any) -> str | None:
    if value is None:
        return None
    try:
        # a str subclass is read as the string it holds: its own __eq__ is never called
        text = str.__str__(value) if isinstance(value, str) else ""
    except Exception as exc:  # isinstance read a __class__ that raises
        raise SpecError(
            f"task {task!r}: runs_on must be a non-empty string or None, got "
            f"{safe_repr(value)}: {safe_repr(exc)}"
        ) from exc
    if not text or text == "aloop:":
        raise SpecError(
            f"task {task!r}: runs_on must be a non-empty string or None, got {safe_repr(value)}"
        )
    return text


def resource_map(value: Any, what: str = "amount", *, prefix: str = "") -> dict[str, float]:
    """Validate ``{name: finite number >= 0}`` (task needs, or supervisor capacities).

    ``prefix`` starts every message (``"task 'x': "`` for a task's needs).
    """
    if value is None:
        return {}
    out = {}
    try:
        if not isinstance(value, Mapping):
            raise SpecError(
                f"{prefix}resources must be a mapping of name to {what}, "
                f"got {type(value).__name__} {safe_repr(value)}"
            )
        for k, v in value.items():
            if type(k) is not str and not isinstance(k, str):
                raise SpecError(f"{prefix}resource names must be strings, got {safe_repr(k)}")
            label = f"{prefix}resources[{str.__repr__(k)}]"
            amount = real_number(label, v)
            if not 0 <= amount < math.inf:
                raise SpecError(f"{label} must be a finite number >= 0, got {safe_repr(v)}")
            out[str.__str__(k)] = amount
    except SpecError:
        raise
    except Exception as exc:  # its own items(), __iter__, __getitem__ or __class__ raised
        raise SpecError(
            f"{prefix}resources: reading {type(value).__name__} {safe_repr(value)} "
            f"raised {safe_repr(exc)}"
        ) from exc
    return out


_CO_COROUTINE = inspect.CO_COROUTINE
_CO_VARARGS = inspect.CO_VARARGS
_CO_VARKEYWORDS = inspect.CO_VARKEYWORDS
# attributes through which inspect may see another signature or a coroutine marker
_INSPECT_ATTRS = frozenset(
    {
        "__wrapped__",
        "__signature__",
        "__text_signature__",
        "_is_coroutine_marker",  # inspect.markcoroutinefunction (3.12)
        "_partialmethod",  # functools.partialmethod read off the class (3.11, 3.12)
        "__partialmethod__",  # the same, 3.13
    }
)


def _plain_dict(d: Any) -> bool:
    """A function ``__dict__`` holding nothing that changes what inspect would say."""
    try:
        return not d or (type(d) is dict and d.keys().isdisjoint(_INSPECT_ATTRS))
    except Exception:  # a dict subclass whose own __len__ raises: ask inspect
        return False


def _fn_traits(fn: Callable[..., Any]) -> tuple[bool, bool]:
    """(is a coroutine function, has a ``shared`` parameter), as ``inspect`` would say.

    A plain Python function whose ``__dict__`` holds nothing inspect looks at is read off
    its code object (sub-microsecond); ``inspect.signature`` costs ~10 µs and was the
    largest part of building a Task. Anything else goes through ``inspect``.
    """
    if type(fn) is types.FunctionType and (
        (type(d := fn.__dict__) is dict and not d) or _plain_dict(d)  # (empty: no call)
    ):
        code = fn.__code__
        known = _CODE_TRAITS.get(id(code))
        if known is not None and known[0] is code:  # (the code object itself is kept)
            return known[1]
        flags = code.co_flags
        n = (
            code.co_argcount
            + code.co_kwonlyargcount
            + bool(flags & _CO_VARARGS)
            + bool(flags & _CO_VARKEYWORDS)
        )
        traits = bool(flags & _CO_COROUTINE), "shared" in code.co_varnames[:n]
        if len(_CODE_TRAITS) >= _CODE_TRAITS_MAX:
            _CODE_TRAITS.clear()  # (starts again: code made by exec pins nothing for good)
        _CODE_TRAITS[id(code)] = (code, traits)
        return traits
    return _is_coroutine_fn(fn), _wants_shared(fn)


# what _fn_traits read off a code object, by its id (the entry keeps the code object
# alive, so its id names no other): a Task of a function seen before reads it back in
# one lookup (it was ~2.5% of W1). Bounded: when full, it starts again.
_CODE_TRAITS: dict[int, tuple[types.CodeType, tuple[bool, bool]]] = {}
_CODE_TRAITS_MAX = 1024


def _is_coroutine_fn(fn: Callable[..., Any]) -> bool:
    # inspect reads attributes of fn; a callable whose __getattr__ raises is just not async
    try:
        if inspect.iscoroutinefunction(fn):
            return True
    except Exception:
        pass
    try:
        return not inspect.isroutine(fn) and inspect.iscoroutinefunction(type(fn).__call__)
    except Exception:
        return False


def _wants_shared(fn: Callable[..., Any]) -> bool:
    try:
        return "shared" in inspect.signature(fn).parameters
    except Exception:  # no signature (builtins, hostile attributes): no shared parameter
        return False
