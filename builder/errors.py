"""One error hierarchy for the whole tool.

Every fatal condition is a subclass of :class:`BuilderError` with its own exit code, so scripts
and CI can tell a bad checksum from an unreachable Docker engine without parsing text.  Messages
say what failed, why, and what to do next; the command line prints them without a traceback
unless ``--debug`` is given.
"""

from __future__ import annotations

import errno


class BuilderError(Exception):
    """Base class: a failure the user can act on."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n{self.hint}"
        return self.message


class ConfigError(BuilderError):
    """A spec file, pool file or command-line value is invalid or names something unknown."""

    exit_code = 2


class StateError(ConfigError):
    """A lock file cannot be written: the state directory (or a user's spec directory) is
    read-only or not a directory. A configuration problem: choose another place."""


class FetchError(BuilderError):
    """A download failed (network error, HTTP error, missing local file)."""

    exit_code = 3


class ChecksumError(BuilderError):
    """A file's sha256 differs from the pinned or locked one."""

    exit_code = 4


class InputError(BuilderError):
    """An input is malformed: truncated ISO, corrupt RPM, missing package, unsafe payload."""

    exit_code = 5


class KernelMismatchError(BuilderError):
    """A kernel tree or module does not match the target's kernel release."""

    exit_code = 6


class CommandError(BuilderError):
    """An external program is missing or exited with an error."""

    exit_code = 7


class DockerError(BuilderError):
    """The Docker engine is unreachable or refused an operation."""

    exit_code = 8


class BuildError(BuilderError):
    """An RPM build inside the container failed."""

    exit_code = 9


class CheckError(BuilderError):
    """A post-build check on the produced RPMs failed."""

    exit_code = 10


class PublishError(BuilderError):
    """Publishing the yum repository failed or was refused."""

    exit_code = 11


class SigningError(BuilderError):
    """Signing or signature verification failed."""

    exit_code = 12


class DeployError(BuilderError):
    """A pool description is unsafe or the deployment files cannot be rendered."""

    exit_code = 13


class LockedError(BuilderError):
    """Another process holds a lock this one needs."""

    exit_code = 14


class VerifyError(BuilderError):
    """A published repository failed verification: a changed package, metadata or signature."""

    exit_code = 15


class NoSpaceError(BuilderError):
    """The disk holding the cache, the artifacts or the repository is full."""

    exit_code = 16


def no_space(exc: BaseException) -> bool:
    """Whether ``exc`` is the operating system saying a disk (or a quota) is full."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class Interrupted(BuilderError):
    """The user pressed Ctrl-C or the process received SIGTERM."""

    exit_code = 130


class BuildsFailed(BuilderError):
    """Several builds of one run failed (the others ran to their end).

    The exit code is the one their errors share, else the first failed build's: each build's
    own message was printed when it failed, and this one names every failed build.
    """

    def __init__(self, failures: list[tuple[str, BuilderError]], total: int) -> None:
        names = "; ".join(
            f"{what} ({type(error).__name__}, exit code {error.exit_code})"
            for what, error in failures
        )
        super().__init__(
            f"{len(failures)} of {total} builds failed: {names}.",
            hint="Each failure's reason and build log are printed above; the builds not named "
            "here finished and their artifacts are complete.",
        )
        codes = {error.exit_code for _, error in failures}
        self.exit_code = codes.pop() if len(codes) == 1 else failures[0][1].exit_code
        self.failures = failures
