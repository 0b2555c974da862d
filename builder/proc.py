"""The one way this tool runs another program.

It checks that the program exists before running it, echoes the command line, captures the
output, and on failure raises :class:`CommandError` carrying the command and the last lines of
what it printed, instead of a bare ``CalledProcessError`` traceback.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from builder import log
from builder.errors import CommandError

TAIL_LINES = 30


def which(program: str, *, hint: str | None = None) -> str:
    """Return the full path of ``program`` or raise a :class:`CommandError` saying how to get it."""
    found = shutil.which(program)
    if found is None:
        raise CommandError(
            f"{program!r} is not installed or not on PATH.",
            hint=hint or f"Install the package that provides {program!r} and try again.",
        )
    return found


def tail(text: str, lines: int = TAIL_LINES) -> str:
    kept = text.rstrip("\n").splitlines()[-lines:]
    return "\n".join(kept)


# An interrupt that arrived while Python ran a finalizer (a ``__del__``), where an exception
# cannot propagate; the next command run here raises it instead (see builder.cli).
pending_interrupt: list[BaseException] = []


def raise_pending_interrupt() -> None:
    if pending_interrupt:
        raise pending_interrupt.pop()


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    timeout: float | None = None,
    echo: bool = True,
    check: bool = True,
    hint: str | None = None,
    error: type[CommandError] = CommandError,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` and return its completed process with stdout and stderr as text.

    ``env`` entries are added to the current environment.  With ``check`` (the default) a
    non-zero exit raises ``error`` naming the command and showing the tail of its output.
    """
    raise_pending_interrupt()
    args = [os.fspath(part) for part in cmd]
    program = which(args[0])
    line = shlex.join(args)
    if echo:
        log.info(f"$ {line}")
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    try:
        result = subprocess.run(
            [program, *args[1:]],
            cwd=cwd,
            env=full_env,
            input=input,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise error(
            f"Command timed out after {timeout} s: {line}",
            hint=hint,
        ) from exc
    raise_pending_interrupt()
    if check and result.returncode != 0:
        output = tail((result.stdout or "") + (result.stderr or ""))
        raise error(
            f"Command failed with exit status {result.returncode}: {line}\n{output}".rstrip(),
            hint=hint,
        )
    return result
