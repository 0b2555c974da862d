"""Small disks that fill up: a tmpfs of a given size, mounted for one test and always unmounted.

Mounting needs root; without it the disk-full cases skip (and fail under CI, which runs as
root).  What "a clear message about space" means is written down once, here.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

# The exit codes the command line documents (cli.EPILOG, README).
DOCUMENTED = {*range(17), 130}
NO_SPACE = 16
# Codes that blame something other than the disk: success, "other error" (a bare OSError),
# "malformed input" (the package is fine, the disk is full) and "signing failed".
BLAMES_ANOTHER = {0, 1, 5, 12}
ABOUT_SPACE = re.compile(r"no space left on device|disk is full|free (some )?(disk )?space", re.I)


@contextlib.contextmanager
def small_disk(mount_point: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``mount -o size=``) at ``mount_point`` for the block."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the disk-full cases mount a tmpfs and need root (CI runs as root)")
        pytest.skip("mounting a tmpfs needs root")
    mount_point.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mount_point)],
        check=True,
        capture_output=True,
    )
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill ``disk`` with one file until ``leave`` bytes are free; return the file."""
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with filler.open("wb") as out, contextlib.suppress(OSError):
        block = b"\0" * (64 << 10)
        while free - out.tell() > leave + len(block):
            out.write(block)
        out.write(b"\0" * max(0, free - out.tell() - leave))
    return filler


def assert_says_disk_is_full(returncode: int, stderr: str, disk: Path) -> None:
    """A documented exit code that does not blame the input or the signing, and a message
    that says the disk is full and names where."""
    assert returncode in DOCUMENTED, f"exit {returncode}: not a documented code\n{stderr}"
    assert returncode not in BLAMES_ANOTHER, f"exit {returncode} blames another cause\n{stderr}"
    assert returncode == NO_SPACE, f"exit {returncode}, not {NO_SPACE} (disk full)\n{stderr}"
    assert "Traceback" not in stderr
    message = stderr.split("error: ", 1)[-1]
    assert ABOUT_SPACE.search(message), f"the message does not say the disk is full:\n{stderr}"
    assert str(disk) in message, f"the message does not name {disk}:\n{stderr}"
