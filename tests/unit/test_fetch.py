from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from builder.errors import ChecksumError, FetchError, InputError
from builder.inputs.checksums import ChecksumLock
from builder.inputs.fetch import FetchSettings, Input, cache_path, fetch
from tests.support.http import serve


@pytest.fixture
def payload(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(3 * 1024 * 1024 + 123)
    root = tmp_path / "www"
    root.mkdir()
    (root / "file.bin").write_bytes(data)
    return root, data


def settings(tmp_path: Path, **kwargs: object) -> FetchSettings:
    state = tmp_path / "state"
    return FetchSettings(cache_dir=tmp_path / "cache", state_dir=state, backoff=0.01, **kwargs)  # type: ignore[arg-type]


def item(url: str, lock: ChecksumLock | None = None, pinned: str | None = None) -> Input:
    return Input(what="test file", url=url, file_name="file.bin", key=url, pinned=pinned, lock=lock)


def test_download_records_hash_in_lock_and_reuses_cache(
    tmp_path: Path, payload: tuple[Path, bytes]
) -> None:
    root, data = payload
    lock = ChecksumLock(tmp_path / "checksums.lock")
    with serve(root) as (base, state):
        url = f"{base}/file.bin"
        first = fetch(item(url, lock), settings(tmp_path))
        assert lock.get(url) is None  # nothing is trusted before the caller says so
        first.trust()
        second = fetch(item(url, lock), settings(tmp_path))
    assert first.path.read_bytes() == data
    assert first.sha256 == hashlib.sha256(data).hexdigest() == lock.get(url)
    assert second.path == first.path
    assert len(state.requests) == 1  # the second call did not touch the network
    assert not list(first.path.parent.glob("*.part"))


def test_interrupted_download_resumes_with_range(
    tmp_path: Path, payload: tuple[Path, bytes]
) -> None:
    root, data = payload
    with serve(root) as (base, state):
        state.cut_after = 1024 * 1024 + 7
        got = fetch(item(f"{base}/file.bin"), settings(tmp_path))
    assert got.path.read_bytes() == data
    assert state.requests[0][1] is None
    resumed_at = int((state.requests[1][1] or "bytes=0-")[6:-1])
    assert 0 < resumed_at <= 1024 * 1024 + 7  # what arrived before the cut was kept


def test_a_resume_answered_from_the_wrong_offset_starts_again(
    tmp_path: Path, payload: tuple[Path, bytes]
) -> None:
    root, data = payload
    with serve(root) as (base, state):
        state.cut_after = 1024 * 1024 + 7
        state.wrong_range = True  # the resume gets "206, bytes 0-…": appending it would corrupt
        got = fetch(item(f"{base}/file.bin"), settings(tmp_path))
    assert got.path.read_bytes() == data
    assert [r[1] is None for r in state.requests] == [True, False, True]


def test_server_errors_are_retried_but_404_is_not(
    tmp_path: Path, payload: tuple[Path, bytes]
) -> None:
    root, data = payload
    with serve(root) as (base, state):
        state.fail_first = 2
        assert fetch(item(f"{base}/file.bin"), settings(tmp_path)).path.read_bytes() == data
        assert len(state.requests) == 3
        with pytest.raises(FetchError, match="HTTP 404") as caught:
            fetch(item(f"{base}/missing.bin"), settings(tmp_path))
        assert len(state.requests) == 4
    assert caught.value.exit_code == 3


def test_retries_give_up_with_a_clear_error(tmp_path: Path, payload: tuple[Path, bytes]) -> None:
    root, _ = payload
    with serve(root) as (base, state):
        state.fail_first = 10
        with pytest.raises(FetchError, match="failed after 3 attempts"):
            fetch(item(f"{base}/file.bin"), settings(tmp_path, retries=2))


def test_mismatch_names_both_hashes_and_deletes_the_download(
    tmp_path: Path, payload: tuple[Path, bytes]
) -> None:
    root, data = payload
    wrong = "0" * 64
    with serve(root) as (base, _), pytest.raises(ChecksumError) as caught:
        fetch(item(f"{base}/file.bin", pinned=wrong), settings(tmp_path))
    message = str(caught.value)
    assert wrong in message
    assert hashlib.sha256(data).hexdigest() in message
    dest = cache_path(settings(tmp_path), f"{base}/file.bin", "file.bin")
    assert not dest.exists()
    assert not dest.with_name("file.bin.part").exists()


def test_locked_hash_is_enforced_on_later_downloads(
    tmp_path: Path, payload: tuple[Path, bytes]
) -> None:
    root, _ = payload
    lock = ChecksumLock(tmp_path / "checksums.lock")
    local = root / "file.bin"
    fetch(item(str(local), lock), settings(tmp_path)).trust()
    local.write_bytes(b"changed upstream")
    with pytest.raises(ChecksumError, match="recorded in"):
        fetch(item(str(local), lock), settings(tmp_path))
    assert local.exists()  # a user's own file is never deleted


def test_failed_structural_check_deletes_the_download(
    tmp_path: Path, payload: tuple[Path, bytes]
) -> None:
    root, _ = payload
    lock = ChecksumLock(tmp_path / "checksums.lock")

    def reject(path: Path) -> None:
        raise InputError("not what we wanted")

    with serve(root) as (base, _), pytest.raises(InputError):
        fetch(item(f"{base}/file.bin", lock), settings(tmp_path), verify=reject)
    assert lock.get(f"{base}/file.bin") is None
    assert not list((tmp_path / "cache").rglob("file.bin*"))


def test_mirror_is_used_before_the_network(tmp_path: Path, payload: tuple[Path, bytes]) -> None:
    root, data = payload
    got = fetch(item("http://127.0.0.1:9/nowhere/file.bin"), settings(tmp_path, mirror=root))
    assert got.path == root / "file.bin"
    assert got.path.read_bytes() == data


def test_no_url_explains_how_to_get_the_file(tmp_path: Path) -> None:
    missing = Input(what="ISO", url=None, file_name="x.iso", key="file:x.iso", note="Log in.")
    with pytest.raises(FetchError, match="No download URL") as caught:
        fetch(missing, settings(tmp_path))
    assert "Log in." in str(caught.value)


def test_a_refused_local_file_is_checked_again_on_the_next_run(
    tmp_path: Path, payload: tuple[Path, bytes]
) -> None:
    root, _ = payload
    lock = ChecksumLock(tmp_path / "checksums.lock")
    calls: list[Path] = []

    def reject(path: Path) -> None:
        calls.append(path)
        raise InputError("corrupt")

    local = root / "file.bin"
    for _ in range(2):
        with pytest.raises(InputError):
            fetch(item(str(local), lock), settings(tmp_path), verify=reject)
    assert len(calls) == 2  # the hash cache does not stand in for the check
    assert lock.get(str(local)) is None


def test_a_lock_entry_is_never_silently_replaced(tmp_path: Path) -> None:
    lock = ChecksumLock(tmp_path / "checksums.lock")
    lock.record("https://x/a.iso", "a" * 64)
    lock.record("https://x/a.iso", "a" * 64)  # the same value again is fine
    with pytest.raises(ChecksumError, match="another run recorded"):
        lock.record("https://x/a.iso", "b" * 64)
    assert lock.get("https://x/a.iso") == "a" * 64
