"""The README's first example, run verbatim as a user would paste it into a file."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
WAIT = 60.0  # a bound on a wait that must end long before (never a synchronisation)


@pytest.mark.slow
def test_the_readme_example_runs_verbatim(tmp_path: Path) -> None:
    match = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert match is not None
    script = tmp_path / "example.py"
    script.write_text(match.group(1))
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=WAIT, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2, lines  # one line per task, printed once (not again by a worker)
    assert re.fullmatch(
        r"fetch\S* DONE b'<html><title>https://example.org</title></html>'", lines[0]
    )
    assert re.fullmatch(r"parse\S* DONE \{'bytes': 47, 'tags': 2\}", lines[1]), lines[1]
    assert out.stderr == ""
