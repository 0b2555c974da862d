"""The package store: index marks, interrupted runs, and the digest check with its cache."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from builder.errors import PublishError
from builder.files import sha256_file
from builder.publish import metadata, store
from builder.specs import Consumer


def put(root: store.Store, path: str, data: bytes) -> store.Entry:
    target = root.root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return store.Entry(path, path, "0" * 64, sha256_file(target), len(data), "")


def test_an_interrupted_run_is_cut_off_and_its_files_removed(tmp_path: Path) -> None:
    packages = store.Store(tmp_path)
    first = [put(packages, "el7/x86_64/a.rpm", b"a")]
    live = packages.append_entries(store.EMPTY, first)
    stray = put(packages, "el7/x86_64/b.rpm", b"b")
    packages.append_entries(live, [stray])  # the run died before its version went live
    (packages.root / "el7" / "x86_64" / f"{store.INCOMING_PREFIX}99-c.rpm").write_bytes(b"c")

    assert packages.read(live, repair=True) == first
    assert packages.index.stat().st_size == live.length
    assert sorted(packages.remove_strays(first)) == [
        f"el7/x86_64/{store.INCOMING_PREFIX}99-c.rpm",
        "el7/x86_64/b.rpm",
    ]
    assert sorted(p.name for p in (packages.root / "el7" / "x86_64").iterdir()) == ["a.rpm"]


def test_an_index_that_does_not_match_the_live_version_is_refused(tmp_path: Path) -> None:
    packages = store.Store(tmp_path)
    live = packages.append_entries(store.EMPTY, [put(packages, "el7/x86_64/a.rpm", b"a")])
    data = packages.index.read_bytes()
    packages.index.write_bytes(data.replace(b"a.rpm", b"x.rpm"))
    with pytest.raises(PublishError, match="does not match what the live version recorded"):
        packages.read(live)
    packages.index.write_bytes(data[:-3])
    with pytest.raises(PublishError, match="does not match"):
        packages.read(live)


def test_the_settled_record_holds_only_for_the_index_it_was_written_for(tmp_path: Path) -> None:
    packages = store.Store(tmp_path)
    live = packages.append_entries(store.EMPTY, [put(packages, "el7/x86_64/a.rpm", b"a")])
    assert packages.settled(live) == frozenset()  # nothing recorded yet
    packages.settle(live, ["k1 el7/x86_64", "k2 el7/x86_64", "k1 el7/x86_64"])
    assert packages.settled(live) == {"k1 el7/x86_64", "k2 el7/x86_64"}
    later = packages.append_entries(live, [put(packages, "el7/x86_64/b.rpm", b"b")])
    assert packages.settled(later) == frozenset()  # the index moved on: every build looked up
    assert packages.settled(store.EMPTY) == frozenset()
    for garbage in (b"", b"{", b"[]", b'{"index": null}'):
        packages.settled_file.write_bytes(garbage)
        assert packages.settled(live) == frozenset()
    packages.settled_file.write_bytes(json.dumps({"index": live.to_json(), "builds": [1]}).encode())
    assert packages.settled(live) == frozenset()


def test_unchanged_packages_are_not_read_again(tmp_path: Path) -> None:
    packages = store.Store(tmp_path)
    entries = [put(packages, f"el5/i386/p{i}.rpm", bytes([i]) * 100) for i in range(3)]
    assert packages.check_unchanged(entries) == 3  # no cache yet: every package is read
    assert packages.check_unchanged(entries) == 0
    os.chmod(packages.root / entries[1].path, 0o600)  # ctime moves: read again, still good
    assert packages.check_unchanged(entries) == 1
    packages.verified.unlink()
    assert packages.check_unchanged(entries) == 3


def test_a_package_changed_in_place_is_refused_even_with_its_old_mtime(tmp_path: Path) -> None:
    packages = store.Store(tmp_path)
    entries = [put(packages, "el5/i386/p.rpm", b"x" * 100)]
    packages.check_unchanged(entries)
    path = packages.root / entries[0].path
    before = path.stat()
    path.write_bytes(b"y" * 100)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(PublishError, match="changed after it was signed"):
        packages.check_unchanged(entries)


def test_a_package_turned_into_a_link_or_gone_is_named(tmp_path: Path) -> None:
    packages = store.Store(tmp_path)
    entries = [put(packages, "el5/i386/p.rpm", b"x")]
    path = packages.root / entries[0].path
    path.unlink()
    with pytest.raises(PublishError, match=r"p\.rpm is missing"):
        packages.check_unchanged(entries)
    path.symlink_to("nowhere.rpm")
    with pytest.raises(PublishError, match="it is a symbolic link"):
        packages.check_unchanged(entries)


def test_the_fingerprint_cache_stays_proportional_to_the_store(tmp_path: Path) -> None:
    packages = store.Store(tmp_path)
    entries = [put(packages, f"el7/x86_64/p{i}.rpm", b"p") for i in range(4)]
    for _ in range(40):
        os.chmod(packages.root / entries[0].path, 0o644 if _ % 2 else 0o600)
        packages.check_unchanged(entries)
    lines = packages.verified.read_text().splitlines()
    assert len(lines) <= 2 * len(entries) + 64


def fake_createrepo(directory: Path, name: str, *, delay: float, sha1: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    program = directory / "createrepo_c"
    refuse = "" if sha1 else 'case "$*" in *"-s sha "*) exit 1;; esac\n'
    program.write_text(
        f"#!/bin/sh\necho {name} >> {directory.parent / 'calls'}\n{refuse}/bin/sleep {delay}\n"
    )
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return program


def test_the_fastest_capable_createrepo_is_chosen_once_and_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = fake_createrepo(tmp_path / "shim", "shim", delay=0.3, sha1=True)
    fast = fake_createrepo(tmp_path / "native", "native", delay=0, sha1=True)
    no_sha1 = fake_createrepo(tmp_path / "wheel", "wheel", delay=0.15, sha1=False)
    monkeypatch.setenv("PATH", os.pathsep.join(str(p.parent) for p in (slow, no_sha1, fast)))
    monkeypatch.setattr(metadata, "FALLBACK_BIN", ())
    memo = tmp_path / "choice.json"
    assert metadata.find_createrepo(Consumer.EL5, memo=memo) == str(fast)
    calls = (tmp_path / "calls").read_text().split()
    assert sorted(calls) == ["native", "shim", "wheel"]
    assert metadata.find_createrepo(Consumer.EL5, memo=memo) == str(fast)
    assert (tmp_path / "calls").read_text().split() == calls  # remembered: no probe
    assert metadata.find_createrepo(Consumer.EL7, memo=memo) == str(fast)  # wheel is slower here
    fast.write_text(fast.read_text() + "\n")  # a candidate changed: probe again
    metadata.find_createrepo(Consumer.EL5, memo=memo)
    assert len((tmp_path / "calls").read_text().split()) > len(calls) + 3


def test_a_killed_publishers_incoming_folder_goes_and_what_it_writes_later_cannot_land(
    tmp_path: Path,
) -> None:
    """A publisher killed outright leaves rpmsign and gpg running; they write temporary files
    beside the package they sign. Those live in the publisher's own incoming folder, which the
    next publish removes, so a late write fails instead of leaving a file in a family folder."""
    packages = store.Store(tmp_path)
    live = [put(packages, "el7/x86_64/a.rpm", b"a")]
    killed = packages.incoming(4242)
    (killed / "0").mkdir(parents=True)
    (killed / "0" / "b.rpm").write_bytes(b"b")
    (killed / "0" / "b.rpm.sig").write_bytes(b"signature being written")
    mine = packages.incoming(os.getpid())
    mine.mkdir()

    assert packages.strays(live) == [
        f"{store.INCOMING_PREFIX}4242/0/b.rpm",
        f"{store.INCOMING_PREFIX}4242/0/b.rpm.sig",
    ]
    assert packages.remove_incoming(but=os.getpid()) == [f"{store.INCOMING_PREFIX}4242"]
    assert not killed.exists()
    assert mine.is_dir()
    with pytest.raises(FileNotFoundError):
        (killed / "0" / "b.rpm.sig").write_bytes(b"the killed run's signer, later")
    assert packages.strays(live) == []
