"""Argument helpers shared by the commands that fetch inputs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from builder.fetch import FetchSettings


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


def fetch_settings(args: argparse.Namespace) -> FetchSettings:
    from builder.fetch import FetchSettings

    cache: Path = args.cache
    return FetchSettings(cache_dir=cache, mirror=args.mirror)
