"""The supervisor's options, checked.

:class:`Config` reads every ``Supervisor(...)`` argument once and raises ``SpecError``
naming the argument and the value for a bad one (also under ``python -O``: no
``assert``). The supervisor keeps only what it checked. Where a later issue adds an option,
its check goes here, beside the others.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, cast

from ._errors import SpecError
from ._executors import as_executor
from ._planner import Planner
from ._spec import real_number, resource_map, safe_repr, whole_number
from .abc import Executor

__all__ = ["DEFAULT_THREADS", "HOOKS", "OPTIONS", "Config", "Sampler", "WaitCallback"]

DEFAULT_THREADS = 40  # anyio's default thread limiter
#: the instrument hooks (trio's ``Instrument`` methods, for taskvisor's events)
HOOKS = ("task_submitted", "task_started", "task_finished", "worker_crashed", "supervisor_closed")
WaitCallback = Callable[[str, float], object]
Sampler = Callable[[], tuple[float, float]]  # () -> (cpu %, memory %)


#: the arguments of ``Supervisor.__init__``, in order
OPTIONS = (
    "pool_size",
    "reserve_normal",
    "reserve_high",
    "threads",
    "processes",
    "aloops",
    "uvloop",
    "resources",
    "cpu_limit",
    "memory_limit",
    "fail_fast",
    "grace",
    "shared",
    "result_buffer",
    "wait_warning",
    "wait_critical",
    "on_wait_warning",
    "on_wait_critical",
    "executors",
    "backends",
    "instruments",
    "admit",
    "clock",
    "start_method",
    "sampler",
    "sample_interval",
)


class Config:
    """Every option of :class:`~taskvisor.Supervisor`, checked. Builds the planner (whose
    own checks, such as reserves larger than the pool, raise here too)."""

    __slots__ = (
        "admit",
        "aloops",
        "clock",
        "grace",
        "instruments",
        "limits",
        "on_alarm",
        "planner",
        "processes",
        "result_buffer",
        "sample_interval",
        "sampler",
        "shared",
        "start_method",
        "threads",
        "user_execs",
        "uvloop",
    )

    def __init__(self, options: Mapping[str, Any]) -> None:
        """``options``: every argument of ``Supervisor.__init__`` by name (its signature is
        the one place they are declared; values are read here as untrusted)."""
        (
            pool_size,
            reserve_normal,
            reserve_high,
            threads,
            processes,
            aloops,
            uvloop,
            resources,
            cpu_limit,
            memory_limit,
            fail_fast,
            grace,
            shared,
            result_buffer,
            wait_warning,
            wait_critical,
            on_wait_warning,
            on_wait_critical,
            executors,
            backends,
            instruments,
            admit,
            clock,
            start_method,
            sampler,
            sample_interval,
        ) = (options[n] for n in OPTIONS)
        pool_size = whole_number("pool_size", pool_size)
        reserve_normal = whole_number("reserve_normal", reserve_normal)
        reserve_high = whole_number("reserve_high", reserve_high)
        if result_buffer is not None:
            result_buffer = positive("result_buffer", result_buffer)
            if result_buffer > sys.maxsize:
                raise SpecError(f"result_buffer is too large, got {safe_repr(result_buffer)}")
        self.result_buffer = result_buffer
        for label, flag in (("fail_fast", fail_fast), ("uvloop", uvloop)):
            if not isinstance(flag, bool):
                raise SpecError(f"{label} must be a bool, got {safe_repr(flag)}")
        self.uvloop = uvloop
        if grace is not None:
            grace = real_number("grace", grace)
            if not 0 <= grace < math.inf:
                raise SpecError(
                    f"grace must be a number of seconds >= 0 or None, got {safe_repr(grace)}"
                )
        self.grace: float | None = grace
        if clock is not None:
            try:
                ok = all(callable(getattr(clock, m, None)) for m in ("now", "to_wall", "call_at"))
            except Exception:
                ok = False
            if not ok:
                raise SpecError(
                    f"clock must have now(), to_wall() and call_at() (a taskvisor Clock), "
                    f"got {safe_repr(clock)}"
                )
        self.clock = clock
        warn_after = seconds("wait_warning", wait_warning)
        critical_after = seconds("wait_critical", wait_critical)
        callbacks = (("on_wait_warning", on_wait_warning), ("on_wait_critical", on_wait_critical))
        for label, cb in callbacks:
            if cb is not None and not callable(cb):
                raise SpecError(
                    f"{label} must be a callable (name, waited) or None, got {safe_repr(cb)}"
                )
        self.on_alarm = {"warning": on_wait_warning, "critical": on_wait_critical}
        if admit is not None and not callable(admit):
            raise SpecError(
                f"admit must be a callable (task, running) -> bool or None, got {safe_repr(admit)}"
            )
        self.admit = admit
        try:
            self.planner = Planner(
                pool_size=pool_size,
                reserve_normal=reserve_normal,
                reserve_high=reserve_high,
                resources=resource_map(resources, "capacity"),
                fail_fast=fail_fast,
                wait_warning=warn_after,
                wait_critical=critical_after,
                keep_ended=result_buffer,
                admit_rule=cast(Any, admit),
                forgets=False,  # (the engine reads the planner's own map: Engine._recs)
            )
        except ValueError as exc:
            raise SpecError(str(exc)) from None
        self.limits = (percent("cpu_limit", cpu_limit), percent("memory_limit", memory_limit))
        if sampler is not None and not callable(sampler):
            raise SpecError(
                f"sampler must be a callable () -> (cpu %, memory %), got {safe_repr(sampler)}"
            )
        self.sampler = sampler
        interval = seconds("sample_interval", sample_interval)
        if interval is None:
            raise SpecError("sample_interval must be a number of seconds > 0, got None")
        self.sample_interval = interval
        self.threads = DEFAULT_THREADS if threads is None else positive("threads", threads)
        self.processes = (
            (os.cpu_count() or 1) if processes is None else positive("processes", processes)
        )
        if isinstance(aloops, str):
            aloops = (aloops,)
        try:
            names = tuple(aloops)
        except Exception as exc:
            raise SpecError(
                f"aloops must be an iterable of names, got {type(aloops).__name__} "
                f"{safe_repr(aloops)}"
            ) from exc
        for n in names:
            if not isinstance(n, str) or not n or ":" in n:
                raise SpecError(
                    f"aloop names must be non-empty strings without ':', got {safe_repr(n)}"
                )
        if len(set(names)) != len(names):
            raise SpecError(f"duplicate aloop names in {names!r}")
        self.aloops = names
        if shared is not None and not isinstance(shared, Mapping):
            raise SpecError(f"shared must be a mapping, got {type(shared).__name__}")
        self.shared = dict(shared or {})
        # runs_on names of the user's executors (backends= is the older name of executors=)
        self.user_execs: dict[str, Executor] = {}
        for label, given in (("executors", executors), ("backends", backends)):
            self.user_execs.update(user_executors(label, given, self.user_execs))
        self.instruments: list[object] = check_instruments(instruments)
        if start_method not in ("spawn", "forkserver", "fork"):
            raise SpecError(f"start_method must be spawn, forkserver or fork, not {start_method!r}")
        self.start_method = start_method


def user_executors(label: str, given: Any, taken: Mapping[str, Executor]) -> dict[str, Executor]:
    """``executors=`` (or its older name ``backends=``): runs_on name -> a taskvisor
    :class:`~taskvisor.abc.Executor`, or any ``concurrent.futures.Executor``-like object
    with ``submit()`` (wrapped: its payloads are pickled)."""
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise SpecError(
            f"{label} must be a mapping of name to Executor, got {type(given).__name__} "
            f"{safe_repr(given)}"
        )
    out: dict[str, Executor] = {}
    one = label[:-1]  # "executor" or "backend", as the caller called it
    for name, ex in given.items():
        if (
            not isinstance(name, str)
            or not name
            or name in ("thread", "process", "main", "aloop")
            or name.startswith("aloop:")
        ):
            raise SpecError(f"{one} name {safe_repr(name)} is empty, reserved or not a string")
        if name in taken or name in out:
            raise SpecError(f"{one} name {name!r} given twice (executors= and backends=)")
        out[name] = as_executor(name, ex, one)
    return out


def check_instruments(value: Any) -> list[object]:
    """``instruments=``: objects with any of the hook methods (trio's ``Instrument``)."""
    if value is None:
        return []
    try:
        items = list(value)
    except Exception:
        raise SpecError(
            f"instruments must be an iterable of instruments, got {safe_repr(value)}"
        ) from None
    for inst in items:
        try:
            hooks = [h for h in HOOKS if callable(getattr(inst, h, None))]
        except Exception:
            hooks = []
        if not hooks:
            raise SpecError(
                f"instrument {safe_repr(inst)} has none of the hooks {', '.join(HOOKS)}"
            )
    return items


def seconds(label: str, v: Any) -> float | None:
    if v is None:
        return None
    seconds = real_number(label, v)
    if not 0 < seconds < math.inf:
        raise SpecError(f"{label} must be a number of seconds > 0, got {safe_repr(v)}")
    return seconds


def percent(label: str, v: Any) -> float | None:
    """``90``, ``90.0`` or ``"90%"`` → 90.0 (a percentage in (0, 100])."""
    if v is None:
        return None
    raw = v
    if isinstance(v, str):
        text = v.strip()
        try:
            v = float(text[:-1] if text.endswith("%") else text)
        except ValueError:
            raise SpecError(
                f"{label} must be a percentage like '90%', got {safe_repr(raw)}"
            ) from None
    if isinstance(v, bool) or not isinstance(v, int | float) or not (0 < v <= 100):
        raise SpecError(
            f"{label} must be a percentage in (0, 100] like '90%', got {safe_repr(raw)}"
        )
    return float(v)


def positive(label: str, v: Any) -> int:
    return whole_number(label, v, 1)
