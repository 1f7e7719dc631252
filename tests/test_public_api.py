"""The public surface: exported once, documented, errors carry context and pickle."""

from __future__ import annotations

import enum
import importlib.metadata
import inspect
import pickle
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import taskvisor as tv

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_public_name_is_exported_once_and_importable() -> None:
    assert len(tv.__all__) == len(set(tv.__all__))
    for name in tv.__all__:
        assert hasattr(tv, name), name
    # taskvisor.testing is a public submodule: an attribute once anything imported it
    # (pytest rewrites the asserts of a package that registers a plugin: '@py_builtins')
    public = {n for n in vars(tv) if not n.startswith(("_", "@"))} - {
        "annotations",
        "importlib",
        "logging",
        "testing",
        "abc",  # public submodule (taskvisor.abc), an attribute once imported
        "dask",  # public submodule (taskvisor.dask, needs distributed), the same
        "prometheus",  # public submodule (taskvisor.prometheus, needs prometheus-client)
        "otel",  # public submodule (taskvisor.otel, needs opentelemetry-api)
        "mpi",  # public submodule (taskvisor.mpi, its MPIExecutor() needs mpi4py)
        "pytest_plugin",  # the pytest plugin, loaded by pytest through its entry point
        "cli",  # the command line (taskvisor.cli), the same
        "TYPE_CHECKING",
        "Any",
    }
    assert public == set(tv.__all__)
    assert set(dir(tv)) >= set(tv.__all__)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        tv.Nope  # noqa: B018


def test_every_lazy_name_lives_where_the_package_says() -> None:
    import importlib

    assert set(tv._HOME) == set(tv.__all__)
    for name, home in tv._HOME.items():
        assert name in importlib.import_module(f"taskvisor.{home}").__all__, (name, home)


def test_importing_the_package_or_the_worker_loads_no_runtime() -> None:
    """Public names are imported on first use: a process worker (which imports
    taskvisor._worker, and so the package) never loads asyncio, psutil or uvloop."""
    code = (
        "import sys, taskvisor, taskvisor._worker\n"
        "heavy = {'asyncio', 'psutil', 'uvloop', 'taskvisor._supervisor', 'concurrent.futures'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
        "taskvisor.Supervisor\n"
        "print('taskvisor._supervisor' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.split("\n")[:2] == ["[]", "True"], out


def test_every_public_name_is_documented() -> None:
    api = (DOCS / "api.rst").read_text()
    missing = [n for n in tv.__all__ if n not in api]
    assert not missing, f"not in docs/api.rst: {missing}"
    for name in tv.__all__:
        obj = getattr(tv, name)
        if isinstance(obj, type) or callable(obj):
            assert obj.__doc__, f"{name} has no docstring"


def test_tiers_are_ordered_int_enums_with_aliases() -> None:
    assert tv.Tier.LOW < tv.Tier.NORMAL < tv.Tier.HIGH < tv.Tier.CRITICAL
    assert tuple(tv.Tier) == (tv.LOW, tv.NORMAL, tv.HIGH, tv.CRITICAL)


def test_error_hierarchy() -> None:
    assert issubclass(tv.CycleError, tv.SpecError)
    assert issubclass(tv.DuplicateTaskError, tv.SpecError)
    assert issubclass(tv.SpecError, tv.TaskvisorError)
    for cls in (
        tv.DependencyError,
        tv.LockError,
        tv.CapacityError,
        tv.ResourceError,
        tv.TaskCancelled,
    ):
        assert issubclass(cls, tv.NotRunError)
    for base_cls in (
        tv.TaskFailError,
        tv.NotRunError,
        tv.TaskTimeout,
        tv.WorkerCrashed,
        tv.RemoteError,
        tv.ClosedError,
    ):
        assert issubclass(base_cls, tv.TaskvisorError)
    assert issubclass(tv.TaskvisorWarning, UserWarning)


@pytest.mark.parametrize(
    "err",
    [
        tv.CycleError(["a", "b", "a"]),
        tv.DuplicateTaskError("x"),
        tv.TaskFailError("soft", deps_ok=False, locks_ok=True),
        tv.DependencyError("t", missing=["m"], failed=["p"], root="r"),
        tv.LockError("t", "db", "holder"),
        tv.CapacityError("t", 5, 3),
        tv.ResourceError("t", {"gpu": 1.5}),
        tv.TaskCancelled("t", "because"),
        tv.TaskTimeout("t", 2.5, abandoned=True),
        tv.WorkerCrashed("t", -9, 1234),
        tv.RemoteError("Weird", "msg", "Traceback ..."),
        tv.ClosedError("closed", "submit"),
    ],
)
def test_errors_keep_context_across_pickle(err: tv.TaskvisorError) -> None:
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert str(back) == str(err)
    assert vars(back) == vars(err)


def test_exception_info_round_trips_with_its_traceback() -> None:
    def inner() -> None:
        raise ValueError("deep")

    try:
        inner()
    except ValueError as exc:
        info = tv.ExceptionInfo.from_exc(exc)
    back = pickle.loads(pickle.dumps(info))
    assert back.type is ValueError and str(back.val) == "deep"
    assert "inner" in back.text
    with pytest.raises(ValueError, match="deep"):
        back.reraise()
    typ, _val, tb = back
    assert typ is ValueError and tb is not None


def test_the_supervisor_checks_every_argument_of_its_signature() -> None:
    import inspect

    from taskvisor._config import OPTIONS

    params = list(inspect.signature(tv.Supervisor.__init__).parameters.values())[1:]
    assert tuple(p.name for p in params[:-1]) == OPTIONS  # (each is read by _config.Config)
    assert params[-1].kind is inspect.Parameter.VAR_KEYWORD  # (misspelt options: an error)


def test_a_misspelt_option_gets_a_did_you_mean() -> None:
    with pytest.raises(
        TypeError, match=r"unknown Supervisor option 'thread' \(did you mean 'threads'\?\)"
    ):
        tv.Supervisor(thread=4)  # type: ignore[arg-type]
    with pytest.raises(tv.SpecError, match=r"option 'tiers' \(did you mean 'tier'\?\)"):
        tv.Task(print, tiers="high")
    with pytest.raises(tv.SpecError, match=r"options 'retry' \(did you mean 'retries'\?\), 'zzz'$"):
        tv.task(retry=3, zzz=1)
    with pytest.raises(tv.SpecError, match=r"'runson' \(did you mean 'runs_on'\?\); pass the"):
        tv.Supervisor().submit(print, runson="thread")


def _parameters(obj: Any) -> list[str]:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [
        name
        for name, p in sig.parameters.items()
        if name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def test_every_public_name_and_option_is_documented_for_help() -> None:
    """help() shows it: every public class and function has a docstring naming each of
    its parameters (a class's in its own or its __init__'s docstring), and every public
    method has one. Classes never built directly say so and need not list theirs."""
    import taskvisor.abc
    import taskvisor.mpi
    import taskvisor.otel
    import taskvisor.prometheus
    import taskvisor.testing

    problems = []
    mods = (tv, taskvisor.testing, taskvisor.abc, taskvisor.prometheus, taskvisor.otel)
    for mod in (*mods, taskvisor.mpi):
        for name in mod.__all__:
            obj = getattr(mod, name)
            where = f"{mod.__name__}.{name}"
            if not callable(obj) or isinstance(obj, enum.Enum):
                continue
            doc = inspect.getdoc(obj) or ""
            if not doc.strip():
                problems.append(f"{where}: no docstring")
                continue
            if inspect.isclass(obj):
                if issubclass(obj, BaseException | enum.Enum | tuple):
                    continue  # (errors, enums and named tuples: their fields are listed)
                for attr, member in vars(obj).items():
                    public = not attr.startswith("_") and callable(member)
                    if public and not (inspect.getdoc(member) or "").strip():
                        problems.append(f"{where}.{attr}: no docstring")
                if "never built directly" in doc:
                    continue
                doc += inspect.getdoc(obj.__init__) or ""
            problems += [
                f"{where}({p}): not in its docstring" for p in _parameters(obj) if p not in doc
            ]
    assert not problems, "\n".join(problems)


def test_the_project_urls_point_at_the_docs() -> None:
    # the package's metadata (what PyPI shows) names the docs, the changelog among them,
    # as Read the Docs builds them from .readthedocs.yaml
    entries = importlib.metadata.metadata("taskvisor").get_all("Project-URL") or []
    urls = dict(u.split(", ", 1) for u in entries)
    docs = urls["Documentation"]
    assert docs.startswith("https://") and docs.endswith("/")
    for label, url in urls.items():
        assert url.startswith(docs), label
        page = url[len(docs) :].removeprefix("en/latest/").removesuffix(".html")
        assert not page or (DOCS / f"{page}.rst").is_file(), f"{label}: no docs/{page}.rst"
    rtd = (DOCS.parent / ".readthedocs.yaml").read_text(encoding="utf-8")
    assert "configuration: docs/conf.py" in rtd and "- docs" in rtd


def test_the_engine_builds_task_results_in_field_order() -> None:
    # the engine builds each TaskRes positionally (tuple.__new__, for speed): its fields
    # must stay in the order it writes them
    assert tv.TaskRes._fields == (
        "task",
        "shared",
        "ret",
        "excinfo",
        "name",
        "state",
        "ok",
        "submitted_ts",
        "started_ts",
        "finished_ts",
        "wait_time",
        "run_time",
        "attempts",
        "runs_on",
        "worker",
    )
    res = tv.run([tv.Task(abs, (-2,), name="two")])["two"]
    assert (res.ret, res.name, res.state, res.ok, res.attempts) == (
        2,
        "two",
        tv.State.DONE,
        True,
        1,
    )
    assert res.submitted_at <= res.started_at <= res.finished_at  # type: ignore[operator]
    # the datetimes are built when read, from the timestamps the tuple holds
    assert res.started_ts is not None
    for ts, at in [
        (res.submitted_ts, res.submitted_at),
        (res.started_ts, res.started_at),
        (res.finished_ts, res.finished_at),
    ]:
        assert at == datetime.fromtimestamp(ts, UTC) and at.tzinfo is UTC
    assert res.runs_on == "thread" and res.worker is not None and res.excinfo is None


def test_the_error_classes_type_hints_resolve_at_runtime() -> None:
    """``taskvisor._errors`` imports no ``typing`` (a process worker imports it, and typing
    is ~3 ms of its start), yet tools that evaluate annotations (``get_type_hints``) still
    resolve every hint of its classes and functions."""
    import inspect
    import typing

    from taskvisor import _errors

    checked = 0
    for _name, obj in vars(_errors).items():
        if getattr(obj, "__module__", None) != _errors.__name__:
            continue
        targets = [obj]
        if inspect.isclass(obj):
            targets += [f for f in vars(obj).values() if inspect.isfunction(f)]
        for target in targets:
            typing.get_type_hints(target)
            checked += 1
    assert checked > 10
