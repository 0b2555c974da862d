"""The warm `kernel` memo: the answer while nothing it came from changed, else nothing."""

from __future__ import annotations

import os
from pathlib import Path

from builder.inputs import kernel_memo

RESULT = {"target": "lab", "release": "6.1.0-1-amd64", "build_dir": "/c/tree/usr/src/x"}


def setup(tmp_path: Path) -> tuple[Path, Path, Path, list[object]]:
    cache, specs = tmp_path / "cache", tmp_path / "specs"
    specs.mkdir(parents=True)
    (specs / "lab.yaml").write_text("targets: {}\n")
    iso = tmp_path / "binpkg.iso"
    iso.write_bytes(b"iso")
    key: list[object] = ["lab", str(specs), str(cache), str(iso), None, None]
    kernel_memo.remember(cache, key, [specs], [iso], RESULT)
    return cache, specs, iso, key


def test_unchanged_inputs_give_the_remembered_result(tmp_path: Path) -> None:
    cache, specs, _, key = setup(tmp_path)
    assert kernel_memo.recall(cache, key, [specs]) == RESULT


def test_another_key_has_no_memo(tmp_path: Path) -> None:
    cache, specs, _, key = setup(tmp_path)
    assert kernel_memo.recall(cache, ["other", *key[1:]], [specs]) is None


def test_a_changed_input_or_spec_file_forgets_the_result(tmp_path: Path) -> None:
    cache, specs, iso, key = setup(tmp_path)
    stat = iso.stat()
    iso.write_bytes(b"ISO")  # same size; the mtime may even be restored: ctime still moves
    os.utime(iso, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert kernel_memo.recall(cache, key, [specs]) is None
    cache, specs, iso, key = setup(tmp_path / "again")
    (specs / "lab.yaml").write_text("targets: {lab: {}}\n")
    assert kernel_memo.recall(cache, key, [specs]) is None


def test_a_spec_file_added_or_a_lock_written_forgets_the_result(tmp_path: Path) -> None:
    cache, specs, _, key = setup(tmp_path)
    (specs / "checksums.lock").write_text("{}\n")
    assert kernel_memo.recall(cache, key, [specs]) is None


def test_a_missing_input_is_never_remembered(tmp_path: Path) -> None:
    cache, specs = tmp_path / "cache", tmp_path / "specs"
    specs.mkdir()
    key: list[object] = ["lab"]
    kernel_memo.remember(cache, key, [specs], [tmp_path / "gone"], RESULT)
    assert kernel_memo.recall(cache, key, [specs]) is None


def test_the_state_lock_is_remembered_absent_or_present(tmp_path: Path) -> None:
    cache, specs, iso = tmp_path / "cache", tmp_path / "specs", tmp_path / "binpkg.iso"
    specs.mkdir()
    iso.write_bytes(b"iso")
    state_lock = tmp_path / "state" / "checksums.lock"
    key: list[object] = ["1.5", str(tmp_path / "state")]
    kernel_memo.remember(cache, key, [specs], [iso], RESULT, locks=[state_lock])
    assert kernel_memo.recall(cache, key, [specs], locks=[state_lock]) == RESULT
    state_lock.parent.mkdir()
    state_lock.write_text("{}\n")  # recorded since: a first use, or a reset undone
    assert kernel_memo.recall(cache, key, [specs], locks=[state_lock]) is None
    kernel_memo.remember(cache, key, [specs], [iso], RESULT, locks=[state_lock])
    assert kernel_memo.recall(cache, key, [specs], locks=[state_lock]) == RESULT
    state_lock.write_text('{"x": "y"}\n')
    assert kernel_memo.recall(cache, key, [specs], locks=[state_lock]) is None
    kernel_memo.remember(cache, key, [specs], [iso], RESULT, locks=[state_lock])
    state_lock.unlink()  # trust reset by deleting the file
    assert kernel_memo.recall(cache, key, [specs], locks=[state_lock]) is None


def test_a_state_lock_inside_a_spec_dir_is_remembered_once(tmp_path: Path) -> None:
    cache, specs, _, key = setup(tmp_path)
    lock = specs / "checksums.lock"
    lock.write_text("{}\n")
    kernel_memo.remember(cache, key, [specs], [tmp_path / "binpkg.iso"], RESULT, locks=[lock])
    assert kernel_memo.recall(cache, key, [specs], locks=[lock]) == RESULT
