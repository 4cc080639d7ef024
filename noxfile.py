"""The single entry point for checks: `nox -s lint typecheck tests`."""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "venv"

PY = "3.11"


@nox.session(python=PY)
def lint(session: nox.Session) -> None:
    """ruff format --check and ruff check (incl. the ASYNC rules)."""
    session.install("ruff")
    session.run("ruff", "format", "--check", ".")
    session.run("ruff", "check", ".")


@nox.session(python=PY)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package and the tests (the files are set in pyproject.toml)."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session(python=PY)
def tests(session: nox.Session) -> None:
    """The test suite (the same command .ci/run uses)."""
    session.install("-e", ".[test,test-torch,docs]")
    session.run("pytest", *session.posargs)


@nox.session(python=PY)
def bench(session: nox.Session) -> None:
    """Benchmarks; each writes JSON with its yardstick measured in the same run (raw aiohttp;
    for scale.py, Flower).

    scale.py compares with Flower when FLOWER_PYTHON names an interpreter that has
    "flwr[simulation]==1.42.*" (a venv of its own: Flower is no dependency of the project).
    """
    session.install("-e", ".[test,test-torch,bench]")
    session.run("python", "benchmarks/messaging.py", "--json", "benchmarks/results/messaging.json")
    session.run("python", "benchmarks/results.py", "--json", "benchmarks/results/results.json")
    flower = os.environ.get("FLOWER_PYTHON")
    session.run(
        "python",
        "benchmarks/scale.py",
        "--json",
        "benchmarks/results/scale.json",
        "--plot",
        "docs/assets/scale.png",
        *(["--flower-python", flower] if flower else []),
    )
    # needs the real Hub running (tests/hub/real_hub/start_real_hub.sh start); a part that
    # cannot run is recorded as failed in the JSON, the others still run
    session.run("python", "benchmarks/hub.py", "--json", "benchmarks/results/hub.json")


@nox.session(python=PY)
def docs(session: nox.Session) -> None:
    """Build the documentation with warnings as errors, then run the docs tests."""
    session.install("-e", ".[docs,test]")
    session.run("mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"})
    session.run("pytest", "tests/docs")
