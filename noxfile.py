"""Developer sessions: `nox -s tests lint typecheck docs bench`."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.default_venv_backend = "venv"

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the test suite (offline, a minute or so)."""
    session.install("-e", ".[dev]")
    session.run("pytest", "-q", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """Ruff lint and format check, and the import layers contract (import-linter)."""
    session.install("ruff>=0.6", "import-linter>=2")
    # import-linter reads the package's source where Python finds it: no dependencies needed.
    session.install("--no-deps", "-e", ".")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports", "--no-cache")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """Mypy in strict mode over the package, tests and benchmarks."""
    session.install("-e", ".[dev,bench]")
    session.run("mypy")


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """Build the documentation strictly (warnings are errors)."""
    session.install("-e", ".[dev]")
    session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Run the benchmarks against the peers (minutes; not part of the test suite)."""
    session.install("-e", ".[dev,bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session(python="3.11")
def coverage(session: nox.Session) -> None:
    """The test suite under coverage (branch), with a per-file report."""
    session.install("-e", ".[dev]", "coverage[toml]>=7.5", "pytest-cov>=5")
    session.run("pytest", "-q", "--cov", "--cov-report=term-missing:skip-covered", *session.posargs)


@nox.session(python="3.11")
def mutation(session: nox.Session) -> None:
    """Mutation testing of the code that guards money and limits (not part of CI: minutes).

    `nox -s mutation` runs every module listed in pyproject's [tool.mutmut]; pass mutant
    globs to run one module quickly: `nox -s mutation -- "nanogpt_async._batch._budget*"`.
    Prints the score per module, counting the equivalent mutants listed (with a reason each)
    in tools/mutation_equivalents.txt.
    """
    session.install("-e", ".[dev]", "mutmut>=3.8")
    session.run("mutmut", "run", *session.posargs)
    session.run("python", "tools/mutation_score.py")
