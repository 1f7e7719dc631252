"""Child-side functions for the process fault scenarios (spawn workers import them)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any


def add(*xs: int) -> int:
    return sum(xs)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def exit_now(code: int) -> None:
    os._exit(code)


def crash_once(marker: str) -> str:
    """Kill the worker on the first attempt, succeed on the next (the marker remembers)."""
    path = Path(marker)
    if not path.exists():
        path.write_text("crashed once")
        os.kill(os.getpid(), signal.SIGKILL)
    return "second attempt"


def announce_then_hang(fifo: str) -> None:
    """Tell the test this job started (by writing to its FIFO), then block until killed."""
    with open(fifo, "w") as f:
        f.write("started")
    threading.Event().wait()


def unpicklable_result() -> Any:
    return threading.Lock()


class Unpicklable(Exception):
    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.lock = threading.Lock()


def raise_unpicklable() -> None:
    raise Unpicklable("cannot travel")


def _refuse(message: str) -> BaseException:
    raise RuntimeError(f"refusing to rebuild {message!r}")


class WontLoad(Exception):
    """Pickles, but unpickling it raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse, (str(self),))


def raise_wont_load() -> None:
    raise WontLoad("x/y")


def bad_shared(shared: dict[str, Any]) -> str:
    shared["lock"] = threading.Lock()
    return "wrote a lock"


def fail(msg: str) -> None:
    raise ValueError(msg)


def pid() -> int:
    return os.getpid()
