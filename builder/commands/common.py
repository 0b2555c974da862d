"""Argument helpers shared by the commands that fetch inputs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

Number = TypeVar("Number", int, float)

if TYPE_CHECKING:
    from builder.inputs.fetch import FetchSettings


def add_input_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("inputs (for air-gapped use)")
    group.add_argument(
        "--iso", metavar="PATH", type=Path, help="the target's ISO (binpkg.iso) as a local file"
    )
    group.add_argument(
        "--kernel-rpm", metavar="PATH", type=Path, help="the kernel-devel RPM as a local file"
    )
    group.add_argument(
        "--mirror",
        metavar="DIR",
        type=Path,
        help="a directory holding inputs by file name; used before any download",
    )
    group.add_argument(
        "--download-timeout",
        metavar="SECONDS",
        type=positive_seconds,
        default=60.0,
        help="give up a connection that sends nothing for this long, then retry (default: 60)",
    )
    group.add_argument(
        "--retries",
        metavar="N",
        type=non_negative_int,
        default=4,
        help="retries of a failed download, 1, 2, 4 … s apart (default: 4)",
    )
    group.add_argument(
        "--max-file",
        metavar="MIB",
        type=positive_mib,
        default=256,
        help="refuse a kernel-devel RPM holding a larger file (default: 256 MiB)",
    )
    group.add_argument(
        "--max-unpacked",
        metavar="MIB",
        type=positive_mib,
        default=2048,
        help="refuse a kernel-devel RPM that unpacks to more (default: 2048 MiB; real ones "
        "unpack to about 100 MiB)",
    )


def add_state_option(parser: argparse.ArgumentParser) -> None:
    """--state, for the commands that record the sha256 of a first download."""
    parser.add_argument(
        "--state",
        metavar="DIR",
        type=Path,
        default=None,
        help="where the sha256 of the built-in targets' and versions' inputs is recorded on "
        "first use (DIR/checksums.lock; default: $XDG_STATE_HOME/xcp-drbd-builder, else "
        "~/.local/state/xcp-drbd-builder); a --specs DIR keeps its own beside its spec files",
    )


def positive(kind: Callable[[str], Number], unit: str = "") -> Callable[[str], Number]:
    """An argparse type: a number of ``kind`` (int or float) above 0, in ``unit``."""
    what = "a whole number" if kind is int else "a number"
    of_unit = f" of {unit}" if unit else ""

    def parse(text: str) -> Number:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}{of_unit}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(
                f"{text} must be more than 0{' ' + unit if unit else ''}"
            )
        return value

    return parse


positive_mib = positive(int, "MiB")
positive_int = positive(int)
positive_number = positive(float)
positive_seconds = positive(float, "seconds")


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number of 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must not be negative")
    return value


def fetch_settings(args: argparse.Namespace) -> FetchSettings:
    from builder.inputs.fetch import FetchSettings
    from builder.rpm.payload import MIB, ExtractLimits

    cache: Path = args.cache
    if not hasattr(args, "max_file"):
        # A command without the input options (matrix): it reads repository metadata only,
        # which records nothing.
        from builder.cli import default_state_dir

        return FetchSettings(cache_dir=cache, state_dir=default_state_dir())
    limits = ExtractLimits(max_file=args.max_file * MIB, max_total=args.max_unpacked * MIB)
    return FetchSettings(
        cache_dir=cache,
        state_dir=args.state,
        mirror=args.mirror,
        retries=args.retries,
        timeout=args.download_timeout,
        extract_limits=limits,
    )
