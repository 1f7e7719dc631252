"""Every Python example of README.md and docs/*.rst, run as a user would paste it.

Each ``.. code-block:: python`` of a page under ``docs/`` (new pages are found by
themselves) and each fenced ``python`` block of README.md is one test, its id the file and
the line of the block (``docs/guide.rst:116``). An example runs verbatim; what the prose
around it takes for granted (a function of the user's, a cluster to talk to) comes from
a marker right before the block, invisible in the rendered page: an RST comment in the
docs, an HTML comment in README.md::

    .. example: KIND
       OPTION: value
       OPTION:
          a block, indented

    <!-- example: KIND
       OPTION: value
    -->

KIND says how the example runs:

``exec`` (the default, without a marker)
    in this process, in a fresh namespace whose ``__name__`` is ``"__main__"`` (so an
    ``if __name__ == "__main__":`` block runs), in a temporary working directory.
``async``
    in this process, with top-level ``await`` / ``async with`` / ``async for``, inside
    ``asyncio.run``.
``continues``
    (beside ``exec`` or ``async``) goes on in the namespace of the page's previous
    example, which runs first (so each test still runs on its own).
``script``
    written to a file (``example.py``) in a temporary directory and run there with
    ``python FILE`` in a subprocess: for process tasks, signals, logging set-up, anything
    that must not touch the test process. Its stderr must stay empty. ``script async``
    runs a fragment with top-level ``await``: its imports, functions and classes stay at
    module level (process workers import them), its other statements go into an
    ``async def`` run by ``asyncio.run`` under a ``__main__`` guard.
``pytest`` / ``pytest-auto``
    the example is a test file: it runs with pytest in a subprocess, under pytest-asyncio
    in strict / auto mode, and every test in it must pass without a warning.
``skip REASON``
    not run, for an example that really cannot run here; the reason is required and
    ``MAX_SKIPS`` keeps skips few. Prefer an option that makes it runnable (``replace:``
    a remote address with a local one).

OPTIONS (each at most once):

``setup:``
    hidden code run first, in the same namespace (for ``script``: written above the
    example in the file, so keep it to definitions a spawned worker may import).
``teardown:``
    hidden code run after the example, in its namespace (in-process: also when it
    failed; ``script async``: at the end of the ``async def``), e.g. checks.
``sup: ARGS``
    run the example inside ``async with tv.Supervisor(ARGS) as sup:`` (the guide's
    convention for its fragments), teardown included; implies ``async``.
``replace:``
    lines ``OLD => NEW``: each OLD must occur in the example and is replaced by NEW before
    it runs (``"tcp://scheduler:8786" => address`` with ``address`` made by ``setup:``).
``expect:``
    lines, each a substring the example's standard output must contain.
``lines: N``
    the standard output has exactly N lines (a ``print`` that ran twice is caught).
``file: NAME``
    the file name for ``script`` and ``pytest`` examples (``jobs.py``).
``command: ARGV``
    for ``script``: how to run it instead of ``python FILE`` (``{python}``, ``{bin}``
    (the interpreter's directory) and ``{file}`` are filled in), e.g. under ``mpiexec``.

``console``
    (on a ``console`` / ``bash`` block) each ``$ taskvisor ...`` or ``$ python ...`` line
    runs in a temporary directory holding the file of the page's last ``script`` example
    (its ``file:``), and must exit 0. Takes only ``replace:`` and ``expect:``.

Shell blocks without a marker are not run, nor literal blocks (``::``), nor other
languages. The
service examples pulled in with ``literalinclude`` are files under ``examples/``, run by
``tests/test_examples.py``.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import inspect
import linecache
import os
import re
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
WAIT = 120.0  # a bound on a subprocess that must end long before (never a synchronisation)
MAX_SKIPS = 0  # raise it only with a reason no option can remove
PYTHON = frozenset({"python", "py", "python3"})
KINDS = frozenset(
    {"exec", "async", "continues", "script", "pytest", "pytest-auto", "console", "skip"}
)
SHELL = frozenset({"console", "bash", "sh", "shell"})
OPTIONS = frozenset({"setup", "teardown", "sup", "replace", "expect", "lines", "file", "command"})


class MarkerError(Exception):
    """A marker that cannot be right: an unknown kind or option, a marker without a block."""


@dataclass(frozen=True)
class Example:
    path: str  # relative to the repository, with forward slashes
    line: int  # the 1-based line of the directive or fence
    first: int  # the 1-based line of the example's first line of code
    code: str
    kind: str  # exec, script, pytest, pytest-auto, console or skip
    asynchronous: bool = False  # top-level await (marked async)
    continues: bool = False
    reason: str = ""
    options: dict[str, str] = field(default_factory=dict)
    previous: Example | None = None  # the page's previous example (for ``continues``)

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"

    def chain(self) -> list[Example]:
        """The examples to run, in order: the ones this continues, then itself."""
        out = [self]
        while out[0].continues:
            before = out[0].previous
            if before is None or before.kind != "exec":
                raise MarkerError(f"{out[0].id}: 'continues' needs an in-process example")
            out.insert(0, before)
        return out


# -- reading the pages -------------------------------------------------------------------


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


@dataclass(frozen=True)
class Marker:
    kind: str = "exec"
    asynchronous: bool = False
    continues: bool = False
    reason: str = ""
    options: dict[str, str] = field(default_factory=dict)


def _parse_marker(where: str, head: str, body: str) -> Marker:
    """A marker's first line (its kind) and its body (its options)."""
    words = head.split()
    kind, asynchronous, continues, reason = "exec", False, False, ""
    for i, word in enumerate(words):
        if word not in KINDS:
            raise MarkerError(f"{where}: unknown example kind {word!r} (known: {sorted(KINDS)})")
        if word in ("continues", "async"):
            continues = continues or word == "continues"
            asynchronous = asynchronous or word == "async"
            continue
        if kind != "exec":
            raise MarkerError(f"{where}: two kinds, {kind!r} and {word!r}")
        kind = word
        if word == "skip":
            reason = " ".join(words[i + 1 :])
            if not reason:
                raise MarkerError(f"{where}: a skip must say why")
            break
    options: dict[str, str] = {}
    key: str | None = None
    lines: list[str] = []

    def close() -> None:
        if key is not None:
            options[key] = textwrap.dedent("\n".join(lines)).strip("\n")

    for line in textwrap.dedent(body).splitlines():
        if line.strip() and not line[0].isspace():
            close()
            key, sep, value = line.partition(":")
            key = key.strip()
            if not sep or key not in OPTIONS:
                raise MarkerError(f"{where}: unknown option {line!r} (known: {sorted(OPTIONS)})")
            if key in options:
                raise MarkerError(f"{where}: option {key!r} given twice")
            lines = [value.strip()] if value.strip() else []
        elif key is None:
            if line.strip():
                raise MarkerError(f"{where}: {line!r} is not an option")
        else:
            lines.append(line)
    close()
    asynchronous = asynchronous or "sup" in options
    if continues and kind != "exec":
        raise MarkerError(f"{where}: only in-process examples can continue")
    if kind == "console" and options.keys() - {"replace", "expect"}:
        raise MarkerError(f"{where}: a console example takes only 'replace' and 'expect'")
    if asynchronous and kind not in ("exec", "script"):
        raise MarkerError(f"{where}: only in-process and script examples can be async")
    if kind == "exec" and ({"file", "command"} & options.keys()):
        raise MarkerError(f"{where}: 'file' and 'command' are for script and pytest examples")
    return Marker(kind, asynchronous, continues, reason, options)


def _rst_examples(text: str, rel: str) -> Iterator[Example]:
    lines = text.splitlines()
    marker: tuple[str, int, str, str] | None = None  # (where, indent, head, body)
    i = 0
    while i < len(lines):
        line = lines[i]
        mark = re.match(r"(\s*)\.\. example:(?!:)(.*)$", line)
        block = re.match(r"(\s*)\.\. (?:code-block|code|sourcecode)::\s*(\S*)\s*$", line)
        if mark:
            if marker is not None:
                raise MarkerError(f"{marker[0]}: a marker without a code block after it")
            indent = len(mark.group(1))
            j = i + 1
            while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > indent):
                j += 1
            marker = (f"{rel}:{i + 1}", indent, mark.group(2), "\n".join(lines[i + 1 : j]))
            i = j
            continue
        if block:
            indent = len(block.group(1))
            j = i + 1
            while j < len(lines) and lines[j].strip().startswith(":"):  # directive options
                j += 1
            start = j
            while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > indent):
                j += 1
            body = lines[start:j]
            while body and not body[0].strip():
                body.pop(0)
                start += 1
            code = textwrap.dedent("\n".join(body)).strip("\n") + "\n"
            m = None
            if marker is not None:
                if marker[1] != indent:
                    raise MarkerError(f"{marker[0]}: not indented as its block")
                m = _parse_marker(marker[0], marker[2], marker[3])
            ex = _block_example(
                rel, i + 1, start + 1, code, block.group(2), marker and marker[0], m
            )
            if ex is not None:
                yield ex
            marker = None
            i = j
            continue
        if line.strip() and marker is not None:
            raise MarkerError(f"{marker[0]}: a marker must come right before its code block")
        i += 1
    if marker is not None:
        raise MarkerError(f"{marker[0]}: a marker without a code block after it")


def _block_example(
    rel: str,
    line: int,
    first: int,
    code: str,
    lang: str,
    where: str | None,
    m: Marker | None,
) -> Example | None:
    """The example a code block in ``lang`` makes (``m``: its parsed ``marker``), or None
    for a block that is not run; a marker (``where`` it is) on a block it cannot apply to
    is an error."""
    if lang in PYTHON and (m is None or m.kind != "console"):
        return Example(rel, line, first, code, **(m or Marker()).__dict__)
    if lang in SHELL and m is not None and m.kind == "console":
        return Example(rel, line, first, code, **m.__dict__)
    if where is not None:
        raise MarkerError(f"{where}: a marker before a {lang!r} block")
    return None


def _markdown_examples(text: str, rel: str) -> Iterator[Example]:
    lines = text.splitlines()
    marker: tuple[str, str, str] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        mark = re.match(r"<!--\s*example:(.*)$", line)
        fence = re.match(r"```\s*(\S*)\s*$", line)
        if mark:
            j = i
            while "-->" not in lines[j]:
                j += 1
            head = mark.group(1).split("-->")[0]
            body = "\n".join([*lines[i + 1 : j], lines[j].split("-->")[0]]) if j > i else ""
            marker = (f"{rel}:{i + 1}", head, body)
            i = j + 1
            continue
        if fence:
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            code = "\n".join(lines[i + 1 : j]) + "\n"
            m = None if marker is None else _parse_marker(*marker)
            ex = _block_example(rel, i + 1, i + 2, code, fence.group(1), marker and marker[0], m)
            if ex is not None:
                yield ex
            marker = None
            i = j + 1
            continue
        if line.strip() and marker is not None:
            raise MarkerError(f"{marker[0]}: a marker must come right before its code block")
        i += 1


def pages() -> list[Path]:
    """README.md and every reStructuredText page of the docs (not the built ones)."""
    docs = [
        p
        for p in sorted((ROOT / "docs").rglob("*.rst"))
        if not any(part.startswith(("_", ".")) for part in p.relative_to(ROOT).parts)
    ]
    return [ROOT / "README.md", *docs]


def collect() -> list[Example]:
    out: list[Example] = []
    for path in pages():
        rel = path.relative_to(ROOT).as_posix()
        read = _markdown_examples if path.suffix == ".md" else _rst_examples
        previous: Example | None = None
        for ex in read(path.read_text(), rel):
            previous = dataclasses.replace(ex, previous=previous)
            out.append(previous)
    return out


EXAMPLES = collect()


# -- running them ------------------------------------------------------------------------


def _source(ex: Example) -> str:
    code = ex.code
    for line in ex.options.get("replace", "").splitlines():
        old, sep, new = line.partition(" => ")
        if not sep:
            raise MarkerError(f"{ex.id}: a replace line is 'OLD => NEW', not {line!r}")
        assert old in code, f"{ex.id}: {old!r} (to replace) is not in the example"
        code = code.replace(old, new)
    return code


def _compile(ex: Example, code: str, what: str, *, top_await: bool) -> Any:
    """Compiled under a name that says what it is (``<example docs/guide.rst:116>``), the
    source kept in linecache so a traceback shows the failing line."""
    name = f"<{what} {ex.id}>" if what == "example" else f"<{what} of {ex.id}>"
    linecache.cache[name] = (len(code), None, code.splitlines(keepends=True), name)
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT if top_await else 0
    return compile(code, name, "exec", flags=flags, dont_inherit=True)


async def _aexec(ex: Example, code: str, what: str, ns: dict[str, Any]) -> None:
    ret = eval(_compile(ex, code, what, top_await=True), ns)
    if inspect.iscoroutine(ret):
        await ret


async def _run_example(ex: Example, ns: dict[str, Any]) -> None:
    try:
        await _aexec(ex, _source(ex), "example", ns)
    finally:
        await _aexec(ex, ex.options.get("teardown", ""), "teardown", ns)


async def _run_async(ex: Example, ns: dict[str, Any]) -> None:
    await _aexec(ex, ex.options.get("setup", ""), "setup", ns)
    if "sup" in ex.options:
        import taskvisor as tv

        async with eval(f"tv.Supervisor({ex.options['sup']})", {**ns, "tv": tv}) as sup:
            ns["sup"] = sup
            await _run_example(ex, ns)
    else:
        await _run_example(ex, ns)


def _run_in_process(ex: Example, ns: dict[str, Any]) -> None:
    if ex.asynchronous:
        asyncio.run(_run_async(ex, ns))
        return
    exec(_compile(ex, ex.options.get("setup", ""), "setup", top_await=False), ns)
    try:
        try:
            code = _compile(ex, _source(ex), "example", top_await=False)
        except SyntaxError as exc:
            if "outside" in str(exc.msg):  # 'await' / 'async with' outside function
                raise MarkerError(f"{ex.id}: top-level await: mark it 'async'") from exc
            raise
        exec(code, ns)
    finally:
        exec(_compile(ex, ex.options.get("teardown", ""), "teardown", top_await=False), ns)


def _script(ex: Example) -> str:
    """The file a script example runs as: its setup, itself, its teardown."""
    code = _source(ex)
    if ex.asynchronous:
        keep = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        tree = ast.parse(code)
        defs = [ast.unparse(n) for n in tree.body if isinstance(n, keep)]
        rest = ast.unparse(ast.Module([n for n in tree.body if not isinstance(n, keep)], []))
        rest = "\n".join([rest, ex.options.get("teardown", ""), "pass"])
        body = ["async def _example():"]
        if "sup" in ex.options:
            body.append(f"    async with _tv.Supervisor({ex.options['sup']}) as sup:")
        body.append(textwrap.indent(rest, " " * (4 * len(body))))
        main = ["if __name__ == '__main__':", "    _asyncio.run(_example())"]
        code = "\n".join(
            ["import asyncio as _asyncio", "import taskvisor as _tv", *defs, *body, *main]
        )
        return "\n".join([ex.options.get("setup", ""), code]) + "\n"
    parts = [ex.options.get("setup", ""), code, ex.options.get("teardown", "")]
    return "\n".join(p for p in parts if p) + "\n"


def _subprocess(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    # Dask's own INFO/WARNING lines ("event loop was unresponsive" on a busy machine) are
    # not the example's: its stderr must stay empty of taskvisor's and Python's warnings
    env["DASK_LOGGING__DISTRIBUTED"] = "error"
    # nor is the dashboard's port taken by another example's cluster running at the same
    # time (the suite runs on xdist): Dask then warns and takes another port
    env["PYTHONWARNINGS"] = "ignore:Port 8787 is already in use:UserWarning"
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=WAIT, cwd=cwd, env=env, check=False
    )


def _run_script(ex: Example, tmp_path: Path) -> str:
    name = ex.options.get("file", "example.py")
    (tmp_path / name).write_text(_script(ex))
    if "command" in ex.options:
        fill = {"python": sys.executable, "bin": str(Path(sys.executable).parent), "file": name}
        argv = [word.format(**fill) for word in shlex.split(ex.options["command"])]
    else:
        argv = [sys.executable, name]
    out = _subprocess(argv, tmp_path)
    assert out.returncode == 0, f"{ex.id} exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    assert out.stderr == "", f"{ex.id} wrote to stderr:\n{out.stderr}"
    return out.stdout


def _run_pytest(ex: Example, tmp_path: Path) -> str:
    name = ex.options.get("file", "test_example.py")
    (tmp_path / name).write_text(_script(ex))
    mode = "auto" if ex.kind == "pytest-auto" else "strict"
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    argv += ["-o", f"asyncio_mode={mode}", "-o", "asyncio_default_fixture_loop_scope=function"]
    argv += ["-o", "filterwarnings=error"]
    out = _subprocess([*argv, name], tmp_path)
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    assert out.returncode == 0, f"{ex.id} under pytest ({mode}):\n{out.stdout}\n{out.stderr}"
    assert re.search(r"\d+ passed", summary), summary
    assert not re.search(r"warning|skipped|xfail|error", summary), out.stdout
    return out.stdout


def _run_console(ex: Example, tmp_path: Path) -> str:
    """Each ``$ taskvisor ...`` / ``$ python ...`` line, in a directory holding the file of
    the page's last script example before it (``jobs.py``), as the page has you write it."""
    before = ex.previous
    while before is not None and before.kind != "script":
        before = before.previous
    if before is not None:
        (tmp_path / before.options.get("file", "example.py")).write_text(_script(before))
    outs = []
    for line in _source(ex).splitlines():
        if not line.startswith("$ "):
            continue
        argv = shlex.split(line[2:], comments=True)
        if argv[0] == "taskvisor":
            argv[:1] = [sys.executable, "-m", "taskvisor"]
        elif argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        else:
            raise MarkerError(f"{ex.id}: a console example runs taskvisor or python: {line!r}")
        out = _subprocess(argv, tmp_path)
        assert out.returncode == 0, f"{ex.id}: {line!r} exited {out.returncode}:\n{out.stderr}"
        outs.append(out.stdout)
    assert outs, f"{ex.id}: a console example without a '$ ' line"
    return "".join(outs)


def _check_output(ex: Example, stdout: str) -> None:
    for want in ex.options.get("expect", "").splitlines():
        assert want in stdout, f"{ex.id}: {want!r} not in its output:\n{stdout}"
    if "lines" in ex.options:
        got = stdout.splitlines()
        assert len(got) == int(ex.options["lines"]), f"{ex.id}: {len(got)} lines:\n{stdout}"


def _param(ex: Example) -> Any:
    marks = [pytest.mark.slow] if ex.kind not in ("exec", "skip") else []
    return pytest.param(ex, id=ex.id, marks=marks)


@pytest.mark.parametrize("ex", [_param(ex) for ex in EXAMPLES])
def test_example(
    ex: Example,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if ex.kind == "skip":
        pytest.skip(f"{ex.id}: {ex.reason}")
    if ex.kind == "script":
        stdout = _run_script(ex, tmp_path)
    elif ex.kind in ("pytest", "pytest-auto"):
        stdout = _run_pytest(ex, tmp_path)
    elif ex.kind == "console":
        stdout = _run_console(ex, tmp_path)
    else:
        monkeypatch.chdir(tmp_path)  # an example may write files where it runs
        ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
        for part in ex.chain():
            _run_in_process(part, ns)
        stdout = capsys.readouterr().out
    _check_output(ex, stdout)


def test_every_page_is_read_and_skips_stay_few() -> None:
    """README.md and every docs page are read; the skipped examples, with their reasons,
    are at most ``MAX_SKIPS``."""
    assert any(ex.path == "README.md" for ex in EXAMPLES)
    assert {ex.path for ex in EXAMPLES} >= {"docs/index.rst", "docs/guide.rst"}
    skips = {ex.id: ex.reason for ex in EXAMPLES if ex.kind == "skip"}
    assert len(skips) <= MAX_SKIPS, skips


def test_markers_are_checked() -> None:
    """A typo in a marker fails loudly instead of running the example some other way."""
    with pytest.raises(MarkerError, match="unknown example kind"):
        _parse_marker("x", "scirpt", "")
    with pytest.raises(MarkerError, match="must say why"):
        _parse_marker("x", "skip", "")
    with pytest.raises(MarkerError, match="unknown option"):
        _parse_marker("x", "script", "expcet: 1")
    with pytest.raises(MarkerError, match="only 'replace' and 'expect'"):
        _parse_marker("x", "console", "setup: import os")
    assert _parse_marker("x", "async continues", "setup:\n   a = 1\n   b = 2\nlines: 3") == (
        Marker("exec", True, True, "", {"setup": "a = 1\nb = 2", "lines": "3"})
    )
    rst = ".. example: script\n   file: a.py\n\n.. code-block:: python\n\n   print(1)\n"
    (ex,) = _rst_examples(rst, "docs/x.rst")
    assert (ex.kind, ex.options, ex.code, ex.line, ex.first) == (
        "script",
        {"file": "a.py"},
        "print(1)\n",
        4,
        6,
    )
    with pytest.raises(MarkerError, match="before a 'console' block"):
        list(_rst_examples(".. example: script\n\n.. code-block:: console\n\n   $ ls\n", "x"))
