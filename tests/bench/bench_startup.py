"""Benchmark: start-up of the command line against a bare interpreter.

The same interpreter, with its bytecode cache, runs ``python -c pass`` (B) and
``python -m builder ARGS`` (A), interleaved ABBA.  Each command's output is checked: ``--help``
must list what the full parser (every command module imported) lists, and ``targets`` and
``build --dry-run`` must print what they print in-process with the full parser.
Goals (exit status 1 if missed, on the median ratio): ``--help`` <= 2x, ``targets`` and
``build --dry-run`` <= 3x.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from builder import cli  # noqa: E402
from tests.bench.abba import Goals, abba  # noqa: E402

ROUNDS = 21
CASES = (
    (["--help"], 2.0),
    (["targets"], 3.0),
    (["build", "--xcp", "1.5", "1.6", "--drbd", "8.4.1", "--dry-run"], 3.0),
)


def in_process(argv: list[str]) -> str:
    """What the command prints with every command module imported (the full parser)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        if argv == ["--help"]:
            cli.build_parser().parse_args(argv)
        else:
            cli.main(argv)
    return out.getvalue()


def run(cmd: list[str], env: dict[str, str]) -> None:
    subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, check=True)


def main() -> int:
    # With bytecode, as an installed tool runs (some shells turn it off).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    goals = Goals()
    bare = [sys.executable, "-c", "pass"]
    for argv, limit in CASES:
        command = [sys.executable, "-m", "builder", *argv]
        shown = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, check=False
        )
        goals.check(shown.returncode == 0, f"{' '.join(argv)} exited {shown.returncode}")
        goals.check(
            shown.stdout == in_process(argv),
            f"{' '.join(argv)}: output differs from the full parser's",
        )

        row = abba(
            f"python -m builder {' '.join(argv)}",
            ("python -m builder " + argv[0], partial(run, command, env)),
            ("python -c pass", partial(run, bare, env)),
            rounds=ROUNDS,
        )
        print("\n".join(row.lines()))
        goals.at_most(row, limit)
    return goals.exit_status()


if __name__ == "__main__":
    sys.exit(main())
