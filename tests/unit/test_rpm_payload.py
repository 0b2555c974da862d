from __future__ import annotations

import gzip
import re
import stat
from pathlib import Path

import pytest

from builder.errors import InputError
from builder.rpm.header import RpmInfo
from builder.rpm.payload import ExtractLimits, extract_payload
from builder.rpm.version import vercmp


def cpio(entries: list[tuple[str, int, bytes, int, int]]) -> bytes:
    """newc archive from (name, mode, data, inode, nlink) entries, with the trailer."""
    out = bytearray()

    def pad() -> None:
        out.extend(b"\0" * ((-len(out)) % 4))

    for name, mode, data, inode, nlink in [*entries, ("TRAILER!!!", 0, b"", 0, 1)]:
        encoded = name.encode() + b"\0"
        fields = [inode, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        out.extend(b"070701" + b"".join(b"%08x" % f for f in fields))
        out.extend(encoded)
        pad()
        out.extend(data)
        pad()
    return bytes(out)


REG = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755
LNK = stat.S_IFLNK | 0o777


def fake_rpm(
    tmp_path: Path, entries: list[tuple[str, int, bytes, int, int]]
) -> tuple[Path, RpmInfo]:
    path = tmp_path / "payload.rpm"
    path.write_bytes(gzip.compress(cpio(entries)))
    info = RpmInfo(
        name="x",
        version="1",
        release="1",
        arch="noarch",
        compressor="gzip",
        payload_offset=0,
        header_offset=0,
        sigmd5=None,
        payload_digest=None,
    )
    return path, info


def test_extracts_files_dirs_in_tree_symlinks_and_hardlinks(tmp_path: Path) -> None:
    path, info = fake_rpm(
        tmp_path,
        [
            ("./usr/src/k", DIR, b"", 1, 2),
            ("./usr/src/k/Makefile", REG, b"all:\n", 2, 1),
            ("./usr/src/k/scripts", LNK, b"../../lib/kbuild/scripts", 3, 1),
            ("./lib/modules/1/build", LNK, b"/usr/src/k", 4, 1),
            ("./usr/src/k/a", REG, b"", 5, 2),
            ("./usr/src/k/b", REG, b"shared", 5, 2),
        ],
    )
    root = tmp_path / "root"
    root.mkdir()
    assert extract_payload(path, info, root) == 5
    assert (root / "usr/src/k/Makefile").read_text() == "all:\n"
    assert (root / "usr/src/k/scripts").readlink() == Path("../../lib/kbuild/scripts")
    # An absolute in-package symlink is rebased onto the extraction root.
    assert (root / "lib/modules/1/build").resolve() == (root / "usr/src/k").resolve()
    assert (root / "usr/src/k/a").read_text() == "shared"
    assert (root / "usr/src/k/a").stat().st_ino == (root / "usr/src/k/b").stat().st_ino


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([("/etc/passwd", REG, b"x", 1, 1)], "absolute path"),
        ([("./usr/../../etc/passwd", REG, b"x", 1, 1)], "climbs out"),
        ([("./usr/evil", LNK, b"../../outside", 1, 1)], "outside the package's tree"),
        ([("./a/b/evil", LNK, b"../../../../etc", 1, 1)], "outside the package's tree"),
    ],
)
def test_escaping_payloads_are_refused_and_nothing_escapes(
    tmp_path: Path, entries: list[tuple[str, int, bytes, int, int]], message: str
) -> None:
    path, info = fake_rpm(tmp_path, entries)
    root = tmp_path / "deep" / "root"
    root.mkdir(parents=True)
    with pytest.raises(InputError, match=message):
        extract_payload(path, info, root)
    assert not (tmp_path / "etc").exists()
    assert not (tmp_path / "deep" / "outside").exists()


def test_a_chain_of_symlinks_that_leaves_the_tree_is_refused(tmp_path: Path) -> None:
    # Each link looks in-tree on its own; followed for real, the second climbs above the root.
    path, info = fake_rpm(
        tmp_path,
        [
            ("./deep/a/b/s", LNK, b"../../..", 1, 1),
            ("./deep/a/b/t", LNK, b"s/../..", 2, 1),
        ],
    )
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(InputError, match="resolves to"):
        extract_payload(path, info, root)


def test_writing_through_an_in_tree_symlink_stays_in_the_tree(tmp_path: Path) -> None:
    path, info = fake_rpm(
        tmp_path,
        [
            ("./real", DIR, b"", 1, 2),
            ("./alias", LNK, b"real", 2, 1),
            ("./alias/f", REG, b"x", 3, 1),
        ],
    )
    root = tmp_path / "root"
    root.mkdir()
    extract_payload(path, info, root)
    assert (root / "real" / "f").read_text() == "x"


def test_absolute_symlink_cannot_climb_above_the_root(tmp_path: Path) -> None:
    path, info = fake_rpm(tmp_path, [("./usr/up", LNK, b"/../../../etc", 1, 1)])
    root = tmp_path / "root"
    root.mkdir()
    extract_payload(path, info, root)
    assert (root / "usr/up").resolve() == (root / "etc").resolve()


def test_truncated_payload_is_reported_as_corrupt(tmp_path: Path) -> None:
    path, info = fake_rpm(tmp_path, [("./f", REG, b"x" * 5000, 1, 1)])
    path.write_bytes(path.read_bytes()[:-40])
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(InputError, match="not a valid RPM"):
        extract_payload(path, info, root)


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        ("1.0", "1.0", 0),
        ("1.10", "1.9", 1),
        ("7.0.10", "7.0.9", 1),
        ("2.6.32.43", "2.6.32.12", 1),
        ("1.0~rc1", "1.0", -1),
        ("1.0a", "1.0", 1),
        ("1.0", "1.0.1", -1),
        ("a", "1", -1),
    ],
)
def test_vercmp_follows_rpm(left: str, right: str, expected: int) -> None:
    assert vercmp(left, right) == expected
    assert vercmp(right, left) == -expected


def test_damaged_compressed_payload_is_reported_as_corrupt(tmp_path: Path) -> None:
    path, info = fake_rpm(
        tmp_path, [(f"./f{i}", REG, bytes(range(256)) * 64, i, 1) for i in range(20)]
    )
    data = bytearray(path.read_bytes())
    for offset in range(40, 200):
        data[offset] ^= 0x5A
    path.write_bytes(bytes(data))
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(InputError, match="not a valid RPM"):
        extract_payload(path, info, root)


SMALL = ExtractLimits(max_file=1 << 20, max_total=3 << 20)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (
            [("./big", REG, b"\0" * (2 << 20), 1, 1)],
            "'./big' would unpack to 2,097,152 bytes, over the limit of 1 MiB (--max-file)",
        ),
        (
            [(f"./f{n}", REG, b"\0" * (1 << 20), n + 1, 1) for n in range(4)],
            "the tree would unpack to more than 4,194,304 bytes, over the limit of 3 MiB",
        ),
        ([("./link", LNK, b"a" * 5000, 1, 1)], "a target of 5000 bytes"),
        ([("./dir", DIR, b"\0" * 4096, 1, 2)], "'./dir' is no file but carries 4096 bytes"),
    ],
    ids=["one-file", "whole-tree", "symlink-target", "directory-data"],
)
def test_bombs_are_refused_before_they_are_read(
    tmp_path: Path, entries: list[tuple[str, int, bytes, int, int]], message: str
) -> None:
    path, info = fake_rpm(tmp_path, entries)
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(InputError, match=re.escape(message)):
        extract_payload(path, info, root, SMALL)
    # Nothing of the over-size entry was written.
    assert sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) <= SMALL.max_total


def test_a_payload_within_the_limits_unpacks(tmp_path: Path) -> None:
    path, info = fake_rpm(tmp_path, [("./ok", REG, b"\0" * (1 << 20), 1, 1)])
    root = tmp_path / "root"
    root.mkdir()
    assert extract_payload(path, info, root, SMALL) == 1
    assert (root / "ok").stat().st_size == 1 << 20


def test_entries_that_replace_queued_files_wait_for_them(tmp_path: Path) -> None:
    """A name written twice (a file, then a symlink, then a file again) ends as the last
    entry says, although small files are written by other threads."""
    path, info = fake_rpm(
        tmp_path,
        [
            ("./d", DIR, b"", 1, 2),
            ("./d/x", REG, b"first", 2, 1),
            ("./d/target", REG, b"target", 3, 1),
            ("./d/x", LNK, b"target", 4, 1),
            ("./d/y", LNK, b"target", 5, 1),
            ("./d/y", REG, b"last", 6, 1),
        ],
    )
    root = tmp_path / "root"
    root.mkdir()
    extract_payload(path, info, root)
    assert (root / "d" / "x").is_symlink()
    assert (root / "d" / "x").read_bytes() == b"target"
    assert not (root / "d" / "y").is_symlink()
    assert (root / "d" / "y").read_bytes() == b"last"
    assert (root / "d" / "target").read_bytes() == b"target"


def test_large_files_stream_and_small_ones_keep_modes_and_mtimes(tmp_path: Path) -> None:
    big = bytes(range(256)) * (5 << 12)  # 5 MiB: over what is handed to the writer threads
    entries = [(f"./f{n}", REG | 0o111, f"file {n}".encode(), n + 1, 1) for n in range(300)]
    path, info = fake_rpm(tmp_path, [("./big", REG, big, 1000, 1), *entries])
    root = tmp_path / "root"
    root.mkdir()
    assert extract_payload(path, info, root) == 301
    assert (root / "big").read_bytes() == big
    for n in (0, 299):
        file = root / f"f{n}"
        assert file.read_bytes() == f"file {n}".encode()
        assert stat.S_IMODE(file.stat().st_mode) == 0o755
        assert file.stat().st_mtime == 0  # the payload's mtime, not the time of writing


def test_a_refused_entry_after_queued_files_stops_the_writers(tmp_path: Path) -> None:
    import threading

    entries = [(f"./f{n}", REG, b"x" * 100, n + 1, 1) for n in range(500)]
    path, info = fake_rpm(tmp_path, [*entries, ("../escape", REG, b"x", 999, 1)])
    root = tmp_path / "root"
    root.mkdir()
    before = threading.active_count()
    with pytest.raises(InputError, match="climbs out"):
        extract_payload(path, info, root)
    assert threading.active_count() == before
    assert not (tmp_path / "escape").exists()
