"""Every check runs through nox: ``nox`` runs them all (tests, lint, typecheck, docs)."""

from __future__ import annotations

import os
import shutil

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests", "bench_smoke", "lint", "typecheck", "docs"]

#: system packages the picture tests use: a real headless browser, and graphviz's dot
SYSTEM_PACKAGES = {"chromium": "chromium", "graphviz": "dot"}
nox.options.reuse_existing_virtualenvs = True


def _system_packages(session: nox.Session) -> None:
    """Install the Debian packages the picture tests open (as root, with apt-get); else
    say why not: those tests then skip, or fail when the CI variable is set."""
    missing = [pkg for pkg, cmd in SYSTEM_PACKAGES.items() if shutil.which(cmd) is None]
    if not missing:
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        session.warn(f"not installing {missing}: needs root and apt-get (picture tests skip)")
        return
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-qq", external=True, env=env)
    session.run("apt-get", "install", "-y", "-qq", *missing, external=True, env=env)


@nox.session
def tests(session: nox.Session) -> None:
    """pytest on asyncio and uvloop (every async test is parametrised over both), one
    worker per core (pytest-xdist; ``-- -n 0`` runs in this process, for ``--pdb``);
    ``nox -s tests -- -k NAME`` runs only the selected tests."""
    _system_packages(session)
    session.install("-e", ".[test]")
    # worksteal: a few slow tests (state machines, Dask, pytester) do not hold a core idle;
    # exit code 5 = no test collected: a selection that matched nothing is not a failure
    xdist = ["-n", "auto", "--dist", "worksteal"]
    session.run("pytest", *xdist, *session.posargs, success_codes=[0, 5])


@nox.session
def bench_smoke(session: nox.Session) -> None:
    """Every benchmark runs once, small (about a minute); never an assertion on speed."""
    session.install("-e", ".[bench]")
    session.run("python", "-m", "benchmarks", "--quick", *session.posargs)


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
