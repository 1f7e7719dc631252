"""Every check runs through nox: ``nox`` runs them all (tests, lint, typecheck, docs)."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """pytest on asyncio and uvloop (every async test is parametrised over both)."""
    session.install("-e", ".[test]")
    # exit code 5 = no test collected: a selection that matched nothing is not a failure
    session.run("pytest", *session.posargs, success_codes=[0, 5])
    # a smoke check that every benchmark runs (about a minute); never an assertion on speed
    session.run("python", "-m", "benchmarks", "--quick")


@nox.session
def bench(session: nox.Session) -> None:
    """The full benchmarks beside their baselines (Dask's among them); a table and JSON."""
    session.install("-e", ".[bench]")
    out = "benchmarks/results/bench.json"
    session.run("python", "-m", "benchmarks", "--json", out, *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[typecheck]")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    session.install("-e", ".[docs]")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session
def pipeline(session: nox.Session) -> None:
    """The main job: the example pipeline."""
    session.install("-e", ".")
    session.run("python", "examples/pipeline.py")
