"""``python -m taskvisor``: the same program as the ``taskvisor`` command (:mod:`taskvisor.cli`)."""

from __future__ import annotations

import sys

from taskvisor.cli import main

if __name__ == "__main__":  # (a spawned process worker imports this module too)
    sys.exit(main())
