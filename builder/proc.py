"""The one way this tool runs another program.

It checks that the program exists before running it, echoes the command line, captures the
output, and on failure raises :class:`CommandError` carrying the command and the last lines of
what it printed, instead of a bare ``CalledProcessError`` traceback.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

from builder import log
from builder.errors import CommandError

TAIL_LINES = 30
STOP_SECONDS = 5  # how long a program started beside others gets to end when asked


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


def _prepare(
    cmd: Sequence[str | os.PathLike[str]], env: Mapping[str, str] | None, echo: bool
) -> tuple[list[str], str, dict[str, str] | None]:
    """The argument list with the program's full path, the echoed line, the environment."""
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
    return [program, *args[1:]], line, full_env


def _checked(
    result: subprocess.CompletedProcess[str],
    line: str,
    *,
    check: bool,
    hint: str | None,
    error: type[CommandError],
) -> subprocess.CompletedProcess[str]:
    raise_pending_interrupt()
    if check and result.returncode != 0:
        output = tail((result.stdout or "") + (result.stderr or ""))
        raise error(
            f"Command failed with exit status {result.returncode}: {line}\n{output}".rstrip(),
            hint=hint,
        )
    return result


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
    args, line, full_env = _prepare(cmd, env, echo)
    try:
        result = subprocess.run(
            args,
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
    return _checked(result, line, check=check, hint=hint, error=error)


class Started:
    """A program running beside this one (see :func:`started`)."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        outputs: tuple[IO[bytes], IO[bytes]],
        line: str,
        *,
        check: bool,
        hint: str | None,
        error: type[CommandError],
    ) -> None:
        self._process = process
        self._outputs = outputs
        self._line = line
        self._check = check
        self._hint = hint
        self._error = error

    def wait(self) -> subprocess.CompletedProcess[str]:
        """What :func:`run` would have given: the completed process, or ``error``."""
        returncode = self._process.wait()
        stdout, stderr = (self._read(handle) for handle in self._outputs)
        result = subprocess.CompletedProcess(self._process.args, returncode, stdout, stderr)
        return _checked(result, self._line, check=self._check, hint=self._hint, error=self._error)

    @staticmethod
    def _read(handle: IO[bytes]) -> str:
        handle.seek(0)
        return handle.read().decode(errors="replace")


@contextlib.contextmanager
def started(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    echo: bool = True,
    check: bool = True,
    hint: str | None = None,
    error: type[CommandError] = CommandError,
) -> Iterator[Started]:
    """Start ``cmd`` and do other work while it runs; :meth:`Started.wait` then checks it as
    :func:`run` does.

    Leaving the block ends the program if it still runs (the work beside it failed) and waits
    for it.  Its output goes to unnamed temporary files, so it never stalls on a pipe that
    nobody reads yet.
    """
    args, line, full_env = _prepare(cmd, env, echo)
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            args, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
        )
        try:
            yield Started(process, (stdout, stderr), line, check=check, hint=hint, error=error)
        finally:
            if process.poll() is None:
                # Asked first; a program that neither ends nor cleans up in time (createrepo_c
                # can hang or crash on SIGTERM while its workers run) is killed.
                process.terminate()
                try:
                    process.wait(timeout=STOP_SECONDS)
                except subprocess.TimeoutExpired:
                    process.kill()
            process.wait()
