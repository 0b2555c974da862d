"""Developer sessions: ``nox -s lint typecheck tests integration faults lab bench``.

Sessions reuse the current interpreter's packages (``venv_backend="none"``): the RPM, ISO and
Docker tooling the tests drive is installed system-wide by ``.ci/run``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "none"


@nox.session
def lint(session: nox.Session) -> None:
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.run("mypy")
    # The CI scripts, one at a time: mypy names each script's module __main__.
    for script in ("ci/scripts/gather", "ci/scripts/gitlab-child"):
        session.run("mypy", script)


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site, strictly: a broken link or a page in no table of contents fails."""
    session.run(
        sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-b", "html", "docs",
        "build/docs", *session.posargs,
    )  # fmt: skip


@nox.session
def tests(session: nox.Session) -> None:
    """Fast unit tests: no Docker, no external tools."""
    session.run(
        "python", "-m", "pytest", "--ignore=tests/faults",
        "-m", "not integration and not docker and not lab", *session.posargs,
    )  # fmt: skip


@nox.session
def integration(session: nox.Session) -> None:
    """Tests against real rpm, xorriso, gpg, dnf, drbdadm and the Docker engine."""
    session.run(
        "python", "-m", "pytest", "--ignore=tests/faults",
        "-m", "integration or docker", *session.posargs,
    )  # fmt: skip


@nox.session
def faults(session: nox.Session) -> None:
    """The fault suite: hostile inputs, injected network faults, kills, races, full disks,
    fuzzed pool and spec files, each through the real command line (needs root for tmpfs)."""
    # The interpreter running nox: the one .ci/run installed the packages into (Debian has
    # no `python` command unless python-is-python3 is installed).
    session.run(sys.executable, "-m", "pytest", "tests/faults", *session.posargs)


@nox.session
def lab(session: nox.Session) -> None:
    """The two-VM lab (tests/lab/): QEMU guests running Debian's kernel, a real DRBD pair
    deployed by the rendered runbook, split brain, a management bounce, a hard reset."""
    session.run(sys.executable, "-m", "pytest", "tests/lab", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks named in the issues; figures are printed, goals are asserted."""
    scripts = session.posargs or sorted(str(p) for p in Path("tests/bench").glob("bench_*.py"))
    for script in scripts:
        # Measure the tool as installed, with its bytecode cache (some shells disable it).
        session.run("python", script, env={"PYTHONDONTWRITEBYTECODE": ""})
