"""Command-line entry point: ``python -m builder COMMAND``."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import traceback
from collections.abc import Collection, Sequence
from pathlib import Path
from types import FrameType

from builder import __version__, log
from builder.errors import BuilderError, Interrupted

# Each command's module is imported only when that command runs (or its --help is asked for):
# start-up then pays for what the command uses, not for every stage of the tool.
# name: (module under builder.commands, one-line help for the top-level --help)
COMMANDS: dict[str, tuple[str, str]] = {
    "targets": ("targets", "list dom0 targets and DRBD versions"),
    "kernel": ("kernel", "fetch, verify and extract a dom0 kernel build tree"),
    "build": ("build", "build DRBD RPMs for dom0 targets"),
    "matrix": ("build", "print the build matrix as JSON (one entry per CI job)"),
    "publish": ("publish", "sign built RPMs and publish them as yum repositories"),
    "verify": ("verify", "audit a published repository: keys, signatures, checksums, index"),
    "keygen": ("keygen", "make an RSA signing key for local testing"),
    "cache": ("cache", "list or remove the build inputs kept on the Docker engine"),
    "deploy": ("deploy", "render and check a two-host dual-primary DRBD storage repository"),
}

DESCRIPTION = """\
Build DRBD userland and kernel-module RPMs for Xen dom0 kernels (XCP, XenServer, XCP-ng)
in a container that matches dom0, and publish them as a signed yum repository.
"""

EPILOG = """\
examples:
  python -m builder targets
  python -m builder kernel --xcp 1.5 --iso ./binpkg.iso
  python -m builder build --xcp 1.5 --drbd 8.4.1 --dry-run

Exit codes: 0 success, 1 other error, 2 bad configuration or arguments, 3 download failed,
4 checksum mismatch, 5 malformed input, 6 kernel mismatch, 7 external command failed,
8 Docker unavailable, 9 build failed, 10 post-build check failed, 11 publish failed,
12 signing failed, 13 unsafe deployment, 14 locked by another process, 15 published
repository failed verification, 16 disk full, 130 interrupted.
"""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xcp-drbd-builder"


def default_state_dir() -> Path:
    """Where recorded trust lives unless --state says: $XDG_STATE_HOME/xcp-drbd-builder, else
    ~/.local/state/xcp-drbd-builder (the XDG spec ignores a relative XDG_STATE_HOME)."""
    base = os.environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(base):
        base = str(Path.home() / ".local" / "state")
    return Path(base) / "xcp-drbd-builder"


def common_parser() -> argparse.ArgumentParser:
    """Options every subcommand accepts (placed after the subcommand name)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("common options")
    group.add_argument(
        "--specs",
        metavar="DIR",
        action="append",
        type=Path,
        default=[],
        help="extra directory of target/DRBD spec files (*.yaml); repeatable; later wins",
    )
    group.add_argument(
        "--cache",
        metavar="DIR",
        type=Path,
        default=None,
        help="download and extraction cache (default: $XDG_CACHE_HOME/xcp-drbd-builder)",
    )
    group.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    group.add_argument("-q", "--quiet", action="store_true", help="only print errors and results")
    return common


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The command-line parser, with the full options of ``commands`` (default: all).

    Other commands are listed by name and help line only, without importing their modules.
    """
    parser = argparse.ArgumentParser(
        prog="python -m builder",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = common_parser()
    names = COMMANDS.keys() if commands is None else commands
    wanted = {COMMANDS[name][0] for name in names if name in COMMANDS}
    for name, (module, help_text) in COMMANDS.items():
        if name in sub.choices:
            continue  # registered with another command of its module (build and matrix)
        if module in wanted:
            importlib.import_module(f"builder.commands.{module}").register(sub, common)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def command_of(argv: Sequence[str]) -> str | None:
    """The command named in ``argv``: its first word that is no option (the top-level
    options, --help and --version, take no value)."""
    return next((word for word in argv if not word.startswith("-")), None)


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(
        f"Stopped by signal {signal.Signals(signum).name}; partial work was cleaned up."
    )


def _unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    """Ctrl-C or SIGTERM inside a finalizer: keep it for the next command, print nothing."""
    from builder import proc

    if isinstance(unraisable.exc_value, KeyboardInterrupt | Interrupted):
        proc.pending_interrupt.append(unraisable.exc_value)
        return
    sys.__unraisablehook__(unraisable)


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    command = command_of(words)
    parser = build_parser([command] if command is not None else [])
    args = parser.parse_args(words)
    if getattr(args, "cache", None) is None and hasattr(args, "cache"):
        args.cache = default_cache_dir()
    if getattr(args, "state", None) is None and hasattr(args, "state"):
        args.state = default_state_dir()
    log.set_quiet(bool(getattr(args, "quiet", False)))
    # SIGTERM becomes an exception so that every `finally` (containers, *.partial) runs.
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    sys.unraisablehook = _unraisable
    try:
        result: int = args.func(args)
        return result
    except BuilderError as exc:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print("error: interrupted; partial work was cleaned up.", file=sys.stderr)
        return Interrupted.exit_code
    except BrokenPipeError:
        # The reader went away (`matrix | head`): what it wanted was printed.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        if getattr(args, "debug", False):
            traceback.print_exc()
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if getattr(args, "debug", False):
            raise
        print(
            f"error: unexpected {type(exc).__name__}: {exc}\n"
            "This is a bug; run again with --debug for the traceback and report it.",
            file=sys.stderr,
        )
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
