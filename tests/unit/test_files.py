"""What builder.files promises about the files a command makes."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.files import readable_by_all, write_atomic


@pytest.fixture
def umask() -> Iterator[None]:
    saved = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(saved)


def modes(root: Path) -> dict[str, str]:
    return {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize(
    ("caller", "folder", "file"),
    [(0o077, "0o755", "0o644"), (0o027, "0o755", "0o644"), (0o002, "0o775", "0o664")],
)
def test_what_is_made_is_readable_by_all_and_writable_as_the_umask_says(
    tmp_path: Path, umask: None, caller: int, folder: str, file: str
) -> None:
    os.umask(caller)
    with readable_by_all():
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "plain").write_text("x")
        write_atomic(tmp_path / "d" / "atomic", b"x")
    assert modes(tmp_path) == {"d": folder, "plain": file, "atomic": file}
    assert os.umask(caller) == caller  # the caller's umask is back afterwards


def test_the_umask_is_back_after_an_error(umask: None) -> None:
    os.umask(0o077)
    with pytest.raises(RuntimeError), readable_by_all():
        raise RuntimeError
    assert os.umask(0o022) == 0o077
