"""Task functions, importable by name in worker processes (``spawn`` pickles them by
reference)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

__all__ = ["anoop", "die_if", "nap", "noop", "noop_args"]


def noop() -> None:
    return None


def noop_args(*_args: Any) -> None:
    """A no-op that takes its parents' results (W4, W6)."""
    return None


async def anoop() -> None:
    return None


def nap(seconds: float) -> int:
    """Warm-up: keeps a worker busy long enough that every worker of a pool gets one."""
    time.sleep(seconds)
    return os.getpid()


def die_if(kill: bool) -> int:
    """The soak's process task: 1% of them kill their own worker."""
    if kill:
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()
