from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from builder.inputs import kernel
from builder.inputs.fetch import Fetched, FetchSettings
from builder.inputs.kernel import find_build_dirs, read_release
from builder.rpm.header import RpmInfo

UTS = {"include/generated/utsrelease.h": '#define UTS_RELEASE "6.1.0-1-amd64"'}


def make_tree(root: Path, rel: str, files: dict[str, str]) -> Path:
    base = root / rel
    for name, text in files.items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_text(text)
    return base


def test_uts_release_wins_over_kernel_release_file(tmp_path: Path) -> None:
    # Debian writes the upstream version in kernel.release; vermagic uses UTS_RELEASE.
    tree = make_tree(
        tmp_path,
        "t",
        {
            "include/config/kernel.release": "6.1.192\n",
            "include/generated/utsrelease.h": '#define UTS_RELEASE "6.1.0-56-amd64"\n',
        },
    )
    assert read_release(tree) == "6.1.0-56-amd64"


def test_old_kernels_use_linux_utsrelease_h(tmp_path: Path) -> None:
    release = "2.6.32.12-0.7.1.xs1.4.90.530.170661xen"
    header = f'#define UTS_RELEASE "{release}"'
    tree = make_tree(tmp_path, "t", {"include/linux/utsrelease.h": header})
    assert read_release(tree) == release
    assert read_release(tmp_path / "empty") is None


def test_find_build_dirs_in_a_red_hat_layout(tmp_path: Path) -> None:
    release = "2.6.32.43-0.4.1.xs1.6.10.734.170748xen"
    make_tree(
        tmp_path,
        f"usr/src/kernels/{release}-i686",
        {
            "Makefile": "",
            ".config": "",
            "include/linux/utsrelease.h": f'#define UTS_RELEASE "{release}"',
        },
    )
    make_tree(tmp_path, "usr/share/doc/kernel", {"Makefile": ""})
    found = find_build_dirs(tmp_path)
    assert found == {tmp_path / f"usr/src/kernels/{release}-i686": release}


def test_concurrent_first_extractions_take_turns_and_extract_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def fake_extract(path: Path, info: RpmInfo, root: Path, limits: object) -> int:
        calls.append(1)
        time.sleep(0.3)
        make_tree(root, "usr/src/k", {"Makefile": "", ".config": "", **UTS})
        return 3

    monkeypatch.setattr(kernel, "extract_payload", fake_extract)
    rpm = Fetched(path=tmp_path / "k.rpm", sha256="a" * 64, origin="k.rpm")
    info = RpmInfo(
        name="k", version="1", release="1", arch="x86_64", compressor="gzip",
        payload_offset=0, header_offset=0, sigmd5=None, payload_digest=None,
    )  # fmt: skip
    settings = FetchSettings(cache_dir=tmp_path / "cache", state_dir=tmp_path / "state")
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: kernel._extract_tree(rpm, info, settings), range(2)))
    assert len(calls) == 1
    assert results[0] == results[1]
    assert json.loads(results[0]["builds"]) == {"usr/src/k": "6.1.0-1-amd64"}


def test_a_killed_extraction_s_partial_tree_is_removed_by_the_next_one(tmp_path: Path) -> None:
    base = tmp_path / "kernels" / ("a" * 64)
    with subprocess.Popen([sys.executable, "-c", "pass"]) as gone:
        gone.wait()
    dead = base.with_name(f"{base.name}.partial-{gone.pid}")
    alive = base.with_name(f"{base.name}.partial-{os.getpid()}")
    for partial in (dead, alive):
        (partial / "tree").mkdir(parents=True)
    kernel._remove_dead_partials(base)
    assert not dead.exists()
    assert alive.exists()
