"""The library's one logger, ``taskvisor``, with the ``NullHandler`` a library adds so that
a program that configures no logging prints nothing of ours (the logging HOWTO,
"Configuring Logging for a Library").

It is a module of its own, imported by the modules that log, and not set up in the
package's ``__init__``: a process worker imports the package but never logs, and
``logging`` is ~5 ms of its start (benchmarks/README.md, "Worker start").
"""

from __future__ import annotations

import logging

__all__ = ["logger"]

logger = logging.getLogger("taskvisor")
logger.addHandler(logging.NullHandler())


def heard(level: int) -> bool:
    """Whether a record of ``level`` from our logger would reach a handler that emits it.

    ``logger.warning(...)`` builds its record (the caller's frame, the time, the thread
    and process names: ~8 µs) before it finds that only our ``NullHandler`` takes it, as
    in a program that configures no logging. A supervisor closing with a backlog warns
    once per cancelled task: 56% of an ``aclose(cancel=True)`` of 100,000 queued tasks
    went there. This walks the handlers the record would visit, as
    ``Logger.callHandlers`` does, without building it (~1 µs; it is not cached, so a
    handler added at any time is heard at once).
    """
    if not logger.isEnabledFor(level):
        return False
    c: logging.Logger | None = logger
    while c is not None:
        for h in c.handlers:
            if level >= h.level and type(h) is not logging.NullHandler:
                return True
        if not c.propagate:
            return False
        c = c.parent
    return False
