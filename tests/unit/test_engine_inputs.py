"""The key of an input kept on an engine: computed here in Python, checked there by the build
image's own find and sha256sum.  Both sides must agree on every tree a build can get, and the
check must catch any change: run here with this machine's GNU tools, which the images share."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from builder.builds import engine_inputs
from builder.errors import ConfigError


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Digests are remembered under the user's cache directory: here, the test's own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def make_tree(root: Path) -> Path:
    """A kernel tree's shapes: nested directories, an empty one, plain and executable files,
    a link that climbs out of the tree (Debian's scripts -> ../../lib/linux-kbuild-*), a
    link inside it, and two names for one file."""
    (root / "include" / "generated").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "Makefile").write_text("obj-m += drbd.o\n")
    (root / "include" / "generated" / "autoconf.h").write_text("#define CONFIG_X 1\n")
    tool = root / "include" / "fixdep"
    tool.write_bytes(b"\x7fELF" + bytes(range(256)) * 4096)
    tool.chmod(0o755)
    (root / "Makefile").chmod(0o644)
    (root / "scripts").symlink_to("../../lib/linux-kbuild-6.1/scripts")
    (root / "include" / "config.h").symlink_to("generated/autoconf.h")
    os.link(root / "Makefile", root / "Kbuild")
    for directory in (root, root / "include", root / "include" / "generated", root / "empty"):
        directory.chmod(0o755)
    return root


def check(*pairs: tuple[Path, str], build: str = "echo built") -> subprocess.CompletedProcess[str]:
    arguments = [str(part) for pair in pairs for part in pair]
    return subprocess.run(
        ["/bin/sh", "-c", engine_inputs.CHECK, "sh", *arguments, "--", *build.split()],
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_check_in_the_container_computes_the_key_computed_here(tmp_path: Path) -> None:
    tree = engine_inputs.describe(make_tree(tmp_path / "tree"))
    assert tree is not None
    assert tree.entries == 9
    assert tree.size == len("obj-m += drbd.o\n") * 2 + len("#define CONFIG_X 1\n") + 4 + 256 * 4096
    done = check((tree.source, tree.digest))
    assert (done.returncode, done.stdout, done.stderr) == (0, "built\n", "")
    # With every input as named, the build's own status is the run's.
    assert check((tree.source, tree.digest), build="false").returncode == 1


@pytest.mark.parametrize(
    "change",
    ["content", "extra file", "missing file", "link target", "mode", "file becomes a link"],
)
def test_any_change_to_the_content_fails_the_check_with_its_own_status(
    tmp_path: Path, change: str
) -> None:
    good = engine_inputs.describe(make_tree(tmp_path / "good"))
    root = make_tree(tmp_path / "bad")
    tree = engine_inputs.describe(root)
    assert good is not None
    assert tree is not None
    assert tree.digest == good.digest  # the key is the content's, not the path's
    if change == "content":
        (root / "include" / "generated" / "autoconf.h").write_text("#define CONFIG_X 2\n")
    elif change == "extra file":
        (root / "empty" / "planted.h").write_text("")
    elif change == "missing file":
        (root / "include" / "fixdep").unlink()
    elif change == "link target":
        (root / "scripts").unlink()
        (root / "scripts").symlink_to("/tmp")
    elif change == "mode":
        (root / "Makefile").chmod(0o755)
    else:
        (root / "include" / "generated" / "autoconf.h").unlink()
        (root / "include" / "generated" / "autoconf.h").symlink_to("/etc/passwd")
    done = check((good.source, good.digest), (root, tree.digest))
    # The build ran beside the checks, but its status is the check's: nothing it made counts.
    assert done.stdout == "built\n"
    assert done.returncode == engine_inputs.MISMATCH_STATUS + 1
    assert f"{root} does not hold the input its volume is named for" in done.stderr


def test_a_tree_the_check_cannot_see_alike_is_sent_with_every_build(tmp_path: Path) -> None:
    spaced = make_tree(tmp_path / "spaced")
    (spaced / "a name").write_text("")
    assert engine_inputs.describe(spaced) is None
    escaped = make_tree(tmp_path / "escaped")
    (escaped / "back\\slash").write_text("")
    assert engine_inputs.describe(escaped) is None
    special = make_tree(tmp_path / "fifo")
    os.mkfifo(special / "pipe")
    assert engine_inputs.describe(special) is None


@pytest.mark.parametrize(
    ("text", "size"),
    [("", 10 << 30), ("512M", 512 << 20), ("2g", 2 << 30), ("4GiB", 4 << 30), ("1000", 1000)],
)
def test_the_cache_limit_reads_sizes(text: str, size: int) -> None:
    assert engine_inputs.cache_limit({engine_inputs.CACHE_MAX_ENV: text}) == size


def test_a_cache_limit_that_is_no_size_is_refused() -> None:
    with pytest.raises(ConfigError, match="XDB_ENGINE_CACHE_MAX='lots' is not a size"):
        engine_inputs.cache_limit({engine_inputs.CACHE_MAX_ENV: "lots"})


class FakeVolume:
    def __init__(self, engine: FakeEngine, name: str, size: int, created: str) -> None:
        self.engine = engine
        self.name = name
        self.attrs = {
            "Name": name,
            "CreatedAt": created,
            "Labels": {
                engine_inputs.LABEL_DIGEST: name[-64:],
                engine_inputs.LABEL_BYTES: str(size),
                engine_inputs.LABEL_WHAT: f"/usr/src/{name[-4:]}",
            },
        }

    def remove(self, force: bool = False) -> None:
        if self.name in self.engine.mounted:
            raise docker.errors.APIError("volume is in use", response=None)
        del self.engine.volumes_by_name[self.name]


class FakeUser:
    def __init__(self, volume: str) -> None:
        self.attrs = {"Mounts": [{"Type": "volume", "Name": volume}]}


class FakeEngine:
    """What evict and prune ask of an engine: its labelled volumes and who mounts them."""

    def __init__(self) -> None:
        self.volumes_by_name: dict[str, FakeVolume] = {}
        self.mounted: set[str] = set()
        self.volumes = self
        self.containers = self

    def add(self, tail: str, mib: int, created: str) -> str:
        name = engine_inputs.VOLUME_PREFIX + tail.rjust(64, "0")
        self.volumes_by_name[name] = FakeVolume(self, name, mib << 20, created)
        return name

    def list(self, **_: object) -> list[object]:
        if _.get("sparse"):
            return [FakeUser(name) for name in self.mounted]
        return list(self.volumes_by_name.values())

    def get(self, name: str) -> FakeVolume:
        return self.volumes_by_name[name]


def test_the_oldest_inputs_no_build_uses_go_once_over_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = FakeEngine()
    oldest = engine.add("a001", 300, "2026-12-01T10:00:00Z")
    in_use = engine.add("b002", 300, "2026-12-02T10:00:00Z")
    older = engine.add("c003", 300, "2026-12-03T10:00:00Z")
    this_build = engine.add("d004", 300, "2026-12-04T10:00:00Z")
    newest = engine.add("e005", 300, "2026-12-05T10:00:00Z")
    engine.mounted.add(in_use)
    monkeypatch.setenv(engine_inputs.CACHE_MAX_ENV, "900M")
    client: Any = engine
    removed = engine_inputs.evict(client, keep={this_build})
    assert [volume.name for volume in removed] == [oldest, older]
    assert sorted(engine.volumes_by_name) == [in_use, this_build, newest]

    # Under the limit nothing goes; prune takes all that no container uses.
    assert engine_inputs.evict(client, keep=set()) == []
    pruned, left = engine_inputs.prune(client)
    assert sorted(v.name for v in pruned) == [this_build, newest]
    assert [v.name for v in left] == [in_use]


def test_a_digest_is_remembered_until_the_tree_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_inputs._Described, "trees", {})
    root = make_tree(tmp_path / "tree")
    first = engine_inputs.describe(root)
    assert first is not None
    (memo,) = (tmp_path / "cache" / "xcp-drbd-builder" / "engine-inputs").iterdir()
    # A later process finds it on disk: a planted digest shows it is what was read.
    monkeypatch.setattr(engine_inputs._Described, "trees", {})
    record = json.loads(memo.read_text())
    memo.write_text(json.dumps({**record, "digest": "f" * 64}))
    remembered = engine_inputs.describe(root)
    assert remembered is not None
    assert remembered.digest == "f" * 64
    # Any change to the tree is a new signature: computed again, and right.
    (root / "include" / "generated" / "autoconf.h").write_text("#define CONFIG_X 2\n")
    changed = engine_inputs.describe(root)
    assert changed is not None
    assert changed.digest not in (first.digest, "f" * 64)
    assert check((root, changed.digest)).returncode == 0


def test_a_lock_one_thread_holds_stays_held_whatever_another_thread_does() -> None:
    """Two builds of one process wait on each other's upload: the one that waits must not
    release the other's claim (it would then remove the lock, the half-filled volume and the
    upload under way as if they were left behind by a failed run)."""
    name = engine_inputs.LOCK_PREFIX + "0" * 32
    assert engine_inputs._Held.claim(name)
    try:
        outcome: list[bool] = []

        def other_thread() -> None:
            outcome.append(engine_inputs._Held.claim(name))
            engine_inputs._Held.release(name)  # what a failed attempt does

        waiter = threading.Thread(target=other_thread)
        waiter.start()
        waiter.join()
        assert outcome == [False]
        assert engine_inputs._Held.held(name)
    finally:
        engine_inputs._Held.release(name)
    assert not engine_inputs._Held.held(name)
