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
