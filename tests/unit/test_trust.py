"""Where trust lives: pins and shipped locks vouch read-only, first uses are recorded in the
state directory (built-in entries) or beside a user's spec file, and a recorded hash never
replaces a pin or a shipped one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from builder import cli, resources
from builder.errors import ChecksumError, ConfigError, StateError
from builder.inputs.checksums import ChecksumLock, lock_for
from builder.inputs.fetch import FetchSettings, Input, fetch
from builder.registry import load_registry

KEY = "http://downloads.example/binpkg.iso"


def lock_file(path: Path, entries: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries))
    return path


def local_input(tmp_path: Path, lock: ChecksumLock, pinned: str | None = None) -> Input:
    iso = tmp_path / "binpkg.iso"
    iso.write_bytes(b"the user's iso")
    return Input(what="ISO", url=KEY, file_name=iso.name, key=KEY, pinned=pinned, lock=lock,
                 local=iso)  # fmt: skip


def settings(tmp_path: Path) -> FetchSettings:
    return FetchSettings(cache_dir=tmp_path / "cache", state_dir=tmp_path / "state")


def test_builtin_entries_record_in_the_state_dir_and_read_the_shipped_lock(
    tmp_path: Path,
) -> None:
    registry = load_registry()
    for entry in (registry.target("1.5"), registry.drbd_version("8.4.1")):
        lock = lock_for(entry.spec_file, tmp_path / "state")
        assert lock.path == tmp_path / "state" / resources.LOCK_FILE_NAME
        assert lock.shipped == (resources.SPECS_DIR / resources.LOCK_FILE_NAME,)


def test_a_first_use_is_recorded_in_the_state_dir_only(tmp_path: Path) -> None:
    shipped = tmp_path / "package" / "checksums.lock"  # absent, as in this checkout
    lock = ChecksumLock(tmp_path / "state" / "checksums.lock", shipped=(shipped,))
    item = local_input(tmp_path, lock)
    fetched = fetch(item, settings(tmp_path))
    fetched.trust()
    assert json.loads(lock.path.read_text()) == {KEY: fetched.sha256}
    assert not shipped.parent.exists()


def test_a_shipped_lock_vouches_and_a_recorded_hash_does_not_replace_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = hashlib.sha256(b"the user's iso").hexdigest()
    shipped = lock_file(tmp_path / "package" / "checksums.lock", {KEY: good})
    state = lock_file(tmp_path / "state" / "checksums.lock", {KEY: "0" * 64})
    before = shipped.read_bytes(), state.read_bytes()
    lock = ChecksumLock(state, shipped=(shipped,))
    vouched = lock.vouched(KEY)
    assert vouched is not None and vouched.sha256 == good
    assert str(shipped) in vouched.source
    fetched = fetch(local_input(tmp_path, lock), settings(tmp_path))
    fetched.trust()
    assert fetched.untrusted is None  # vouched for: nothing to record
    assert (shipped.read_bytes(), state.read_bytes()) == before
    err = capsys.readouterr().err
    assert "is ignored" in err and str(state) in err and "Delete its entry" in err


def test_a_file_the_shipped_lock_does_not_vouch_for_is_refused(tmp_path: Path) -> None:
    shipped = lock_file(tmp_path / "package" / "checksums.lock", {KEY: "1" * 64})
    # The state directory agreeing with the user's file changes nothing.
    mine = hashlib.sha256(b"the user's iso").hexdigest()
    state = lock_file(tmp_path / "state" / "checksums.lock", {KEY: mine})
    lock = ChecksumLock(state, shipped=(shipped,))
    with pytest.raises(ChecksumError, match="shipped with the tool") as caught:
        fetch(local_input(tmp_path, lock), settings(tmp_path))
    assert "--specs DIR" in str(caught.value)


def test_a_pin_wins_over_a_recorded_hash(tmp_path: Path) -> None:
    state = lock_file(tmp_path / "state" / "checksums.lock", {KEY: "0" * 64})
    lock = ChecksumLock(state)
    pin = hashlib.sha256(b"the user's iso").hexdigest()
    fetched = fetch(local_input(tmp_path, lock, pinned=pin), settings(tmp_path))
    assert fetched.sha256 == pin
    vouched = lock.vouched(KEY, pin)
    assert vouched is not None and vouched.source == "pinned in the spec file"


def test_an_unwritable_state_dir_is_a_configuration_error(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    lock = lock_for(load_registry().target("1.5").spec_file, blocker)
    assert lock.get(KEY) is None  # nothing can be recorded there: nothing is
    with pytest.raises(StateError, match="Cannot record") as caught:
        lock.record(KEY, "2" * 64)
    assert isinstance(caught.value, ConfigError) and caught.value.exit_code == 2
    assert "--state DIR" in str(caught.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/srv/state", Path("/srv/state/xcp-drbd-builder")),
        ("", Path("/home/u/.local/state/xcp-drbd-builder")),
        ("relative/state", Path("/home/u/.local/state/xcp-drbd-builder")),  # XDG: ignored
    ],
)
def test_the_default_state_dir_follows_xdg(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: Path
) -> None:
    monkeypatch.setenv("HOME", "/home/u")
    monkeypatch.setenv("XDG_STATE_HOME", value)
    assert cli.default_state_dir() == expected


def test_state_is_an_option_of_the_commands_that_record_trust() -> None:
    parser = cli.build_parser()
    for words in (["kernel", "--xcp", "1.5"], ["build", "--xcp", "1.5"]):
        assert parser.parse_args([*words, "--state", "/s"]).state == Path("/s")
    with pytest.raises(SystemExit):
        parser.parse_args(["matrix", "--xcp", "1.5", "--state", "/s"])
