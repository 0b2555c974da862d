"""Hostile kernel-devel RPMs, each with valid digests, through ``python -m builder kernel``.

Only the tool's own extraction checks stand between these packages and the disk: each must
be refused with exit code 5 and a message naming what is wrong, before its oversized entry is
read (peak memory stays under 100 MB and the run takes seconds), leaving nothing in the cache
(no partial extraction, no trusted hash) and nothing anywhere else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faults import rpmcraft
from tests.faults.conftest import KEPT_LOCK, RELEASE, RPM_NAME, Lab
from tests.faults.harness import MIB, builder, changes, only_under, snapshot
from tests.faults.rpmcraft import DIR, LNK, REG, Entry, Zeros

GIB = 1 << 30
TOP = "./usr/src/kernels/lab"
MEMORY_LIMIT = 100 * MIB
# Peak memory of every bomb, printed at the end of the run (pytest -s or -rA shows it).
PEAKS: dict[str, int] = {}


@dataclass(frozen=True)
class Case:
    id: str
    entries: list[Entry]
    message: str  # what the error must say
    options: tuple[str, ...] = ()


def tree(*extra: Entry) -> list[Entry]:
    """A real-looking kernel tree followed by the hostile entries."""
    return [*rpmcraft.kernel_tree(RELEASE, TOP), *extra]


CANARY = "fault-canary"  # a name no honest extraction writes anywhere

CASES = [
    Case(
        "zero-bomb-3gib",
        tree(Entry(f"{TOP}/vmlinux", REG, Zeros(3 * GIB), inode=20)),
        f"'{TOP}/vmlinux' would unpack to 3,221,225,472 bytes, over the limit of 256 MiB "
        "(--max-file)",
    ),
    Case(
        "symlink-target-1gib",
        tree(Entry(f"{TOP}/build", LNK, Zeros(GIB), inode=20)),
        f"the symlink '{TOP}/build' has a target of 1073741824 bytes",
    ),
    Case(
        "directory-with-1gib-of-data",
        tree(Entry(f"{TOP}/include/linux", DIR, Zeros(GIB), inode=20, nlink=2)),
        f"'{TOP}/include/linux' is no file but carries 1073741824 bytes",
    ),
    Case(
        "entry-name-of-8k",
        tree(Entry("./" + "a/" * 4000 + CANARY, REG, b"x", inode=20)),
        "an entry name of 8015 bytes",
    ),
    Case(
        "absolute-path",
        tree(Entry(f"/tmp/{CANARY}", REG, b"x", inode=20)),
        f"the entry '/tmp/{CANARY}' has an absolute path",
    ),
    Case(
        "dot-dot",
        tree(Entry(f"./usr/../../../../../{CANARY}", REG, b"x", inode=20)),
        "climbs out with '..'",
    ),
    Case(
        "symlink-escape",
        tree(Entry(f"{TOP}/escape", LNK, b"../../../../../../..", inode=20)),
        f"the symlink '{TOP[2:]}/escape' points to '../../../../../../..', outside the "
        "package's tree",
    ),
    Case(
        "symlink-chain-escape",
        tree(
            Entry(f"{TOP}/a/s", LNK, b"../../../../..", inode=20),
            Entry(f"{TOP}/a/t", LNK, b"s/../..", inode=21),
        ),
        f"the symlink '{TOP[2:]}/a/t' resolves to",
    ),
    Case(
        "write-through-escaping-symlink",
        tree(
            Entry(f"{TOP}/a/s", LNK, b"../../../../..", inode=20),
            Entry(f"{TOP}/a/t", LNK, b"s/..", inode=21),
            Entry(f"{TOP}/a/t/{CANARY}", REG, b"x", inode=22),
        ),
        f"'{TOP[2:]}/a/t/{CANARY}' would be written through a symlink outside",
    ),
    Case(
        # newc stores a hard-linked file's data with its last name; the first name is then
        # turned into a dangling symlink before the data arrives.
        "hardlink-replaced-by-dangling-symlink",
        tree(
            Entry(f"{TOP}/first", REG, b"", inode=30, nlink=2),
            Entry(f"{TOP}/first", LNK, b"nowhere", inode=31),
            Entry(f"{TOP}/second", REG, b"shared data", inode=30, nlink=2),
        ),
        f"{TOP[2:]}/first",
    ),
    Case(
        # A hard-link group whose name climbs out: the link must not be made either.
        "hardlink-with-dot-dot",
        tree(
            Entry(f"{TOP}/inside", REG, b"", inode=40, nlink=2),
            Entry(f"{TOP}/../../../../../{CANARY}", REG, b"data", inode=40, nlink=2),
        ),
        "climbs out with '..'",
    ),
    Case(
        "file-over-max-file",
        tree(Entry(f"{TOP}/big.o", REG, bytes(3 * MIB), inode=20)),
        f"'{TOP}/big.o' would unpack to 3,145,728 bytes, over the limit of 2 MiB (--max-file)",
        ("--max-file", "2"),
    ),
    Case(
        "tree-over-max-unpacked",
        tree(*(Entry(f"{TOP}/part{n}.o", REG, bytes(2 * MIB), inode=20 + n) for n in range(4))),
        "the tree would unpack to more than 6,291,510 bytes, over the limit of 5 MiB "
        "(--max-unpacked)",
        ("--max-unpacked", "5"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_hostile_rpm_is_refused_and_leaves_nothing(lab: Lab, case: Case) -> None:
    rpm = rpmcraft.write_rpm(lab.root / "input" / RPM_NAME, case.entries)
    outside_before = snapshot(lab.root)
    kept_before = lab.kept()
    started = time.monotonic()
    result = builder(
        "kernel", "--xcp", "lab", "--specs", lab.specs, "--cache", lab.cache,
        "--kernel-rpm", rpm, *case.options,
        timeout=120, measure=True,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    PEAKS[case.id] = result.max_rss
    print(f"{case.id}: {rpm.stat().st_size:,} bytes, exit {result.returncode}, "
          f"{elapsed:.1f} s, peak {result.max_rss / MIB:.1f} MiB")  # fmt: skip

    assert result.returncode == 5, result
    assert case.message in result.stderr, result
    assert "Traceback" not in result.stderr
    assert result.max_rss < MEMORY_LIMIT, f"peak memory {result.max_rss / MIB:.0f} MiB"
    # Nothing of the package stays: no tree, no partial extraction, no trusted hash.
    assert lab.leftovers() == []
    assert lab.trees() == []
    assert lab.lock() == KEPT_LOCK
    assert lab.kept() == kept_before
    # Nothing was written anywhere but the cache's hash and lock bookkeeping.
    moved = changes(outside_before, snapshot(lab.root))
    assert only_under(moved["added"], "cache/hashes", "cache/locks") == [], moved
    assert moved["removed"] == [] and moved["changed"] == [], moved
    assert not list(Path("/tmp").glob(f"{CANARY}*"))
    assert not list(lab.root.parent.glob(f"{CANARY}*"))


def test_an_honest_rpm_of_the_same_shape_is_taken(lab: Lab, good_rpm: Path) -> None:
    """The control: the tree the hostile packages start from unpacks and is trusted."""
    result = builder(
        "kernel", "--xcp", "lab", "--specs", lab.specs, "--cache", lab.cache,
        "--kernel-rpm", good_rpm, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result
    assert f"kernel release: {RELEASE}" in result.stdout
    assert lab.leftovers() == []
    assert len(lab.trees()) == 1
    assert lab.lock().get(f"file:{RPM_NAME}") == lab.trees()[0]
