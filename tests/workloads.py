"""Importable task functions: process workers (spawn) must be able to import them."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import taskvisor as tv


def add(*xs: int) -> int:
    return sum(xs)


def identity(x: Any) -> Any:
    return x


def where() -> str:
    return threading.current_thread().name


def pid() -> int:
    return os.getpid()


def fail_deep(msg: str) -> None:
    _inner_failure(msg)


def _inner_failure(msg: str) -> None:
    raise ValueError(msg)


def parent_shared(shared: dict[str, Any]) -> None:
    shared["p"] = 2345


def child_shared(shared: dict[str, Any]) -> dict[str, Any]:
    shared["c"] = 1234
    return dict(shared)


def die(code: int) -> None:
    os._exit(code)


@tv.controlled_failure
def soft_fail_in_process(key: str) -> None:
    """Decorated at module level: the process worker must unpickle it by name."""
    raise KeyError(key)


@tv.controlled_failure(deps_ok=False)
async def soft_fail_async(key: str) -> None:
    raise KeyError(key)


def timed() -> tuple[float, int]:
    """Its own duration (a little work), and the worker's pid."""
    t0 = time.perf_counter()
    sum(range(1000))
    return time.perf_counter() - t0, os.getpid()


def fails_once() -> Callable[[], str]:
    """A new function whose first call raises ConnectionError and the next return "ok"
    (a task with ``retries=1``: a retry that succeeds). Runs in this process only."""
    tries: list[int] = []

    def flaky() -> str:
        tries.append(1)
        if len(tries) == 1:
            raise ConnectionError("first attempt fails")
        return "ok"

    return flaky


def die_once(marker: str) -> str:
    path = Path(marker)
    with path.open("a") as f:
        f.write("run\n")
    if path.read_text().count("run") == 1:
        os._exit(3)  # the first attempt kills its worker
    return "second attempt"


def hang(fifo: str) -> None:
    """Say which process runs it (through ``fifo``), then never return by itself."""
    with Path(fifo).open("w") as f:
        f.write(f"{os.getpid()}\n")
    threading.Event().wait()


def unpicklable() -> Any:
    """A value no pickler takes (a lock)."""
    return threading.Lock()


def hang_with_a_grandchild(fifo: str, life: str) -> None:
    """``hang``, having started a process of its own that alone holds the writing end of
    the FIFO ``life`` (its reader sees the end when that process dies); the pid written
    to ``fifo`` is that process's."""
    import subprocess

    end = os.open(life, os.O_WRONLY)  # (the test holds the reading end open already)
    sleeper = subprocess.Popen(["sleep", "3600"], pass_fds=(end,))
    os.close(end)
    with Path(fifo).open("w") as f:
        f.write(f"{sleeper.pid}\n")
    threading.Event().wait()
