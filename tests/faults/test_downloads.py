"""Downloads from a misbehaving server on 127.0.0.1, through ``python -m builder kernel``.

The target's kernel-devel is inside an ISO served over HTTP.  Drops and stalls are resumed,
503s retried, a resume answered from the wrong offset started over: each ends with exactly the
served bytes in the cache (exit 0).  What cannot be mended ends with its own exit code: 3 when
the server never delivers, 4 when the bytes differ from a pinned or locked hash, 5 when a first
download nothing vouched for holds a damaged package; a damaged download is never kept, and
nothing cached or locked before is lost.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tests.faults.conftest import INNER, KEPT_LOCK, KEPT_SHA, RELEASE, Lab, write_lab_spec
from tests.faults.faultserver import Fault, FaultServer, serving
from tests.faults.harness import Result, builder
from tests.support.kernelrpm import make_iso

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def iso(tmp_path_factory: pytest.TempPathFactory, good_rpm: Path) -> Path:
    """A binpkg-shaped ISO: 2 MiB of other packages, then the kernel-devel RPM."""
    return make_iso(tmp_path_factory.mktemp("iso"), {INNER: good_rpm}, padding=2 << 20)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rpm_offset(iso: Path, rpm: Path) -> int:
    return iso.read_bytes().index(rpm.read_bytes()[:4096])


def padding_offset(iso: Path, rpm: Path) -> int:
    """An offset inside the ISO's filler, far from the kernel-devel RPM."""
    return rpm_offset(iso, rpm) // 2 if rpm_offset(iso, rpm) > (2 << 20) else iso.stat().st_size - 1


class Served:
    """The lab target pointed at the fault server's copy of the ISO."""

    def __init__(self, lab: Lab, server: FaultServer, iso: Path, *, pin: str | None = None):
        self.lab = lab
        self.server = server
        self.url = f"{server.url}/binpkg.iso"
        self.data = iso.read_bytes()
        write_lab_spec(lab.specs, iso=self.url, sha256=pin)

    def run(self, *options: str, timeout: float = 180) -> Result:
        return builder(
            "kernel", "--xcp", "lab", "--specs", self.lab.specs, "--cache", self.lab.cache,
            *options, timeout=timeout,
        )  # fmt: skip

    def cached(self) -> list[Path]:
        downloads = self.lab.cache / "downloads"
        return sorted(downloads.rglob("binpkg.iso*")) if downloads.is_dir() else []

    def assert_cached_right(self, result: Result) -> None:
        """Exit 0, and the cache holds exactly the served bytes, locked by their hash."""
        assert result.returncode == 0, result
        assert f"kernel release: {RELEASE}" in result.stdout
        (iso_copy,) = self.cached()
        assert iso_copy.name == "binpkg.iso"
        assert sha256(iso_copy.read_bytes()) == sha256(self.data)
        assert self.lab.lock()[self.url] == sha256(self.data)
        assert self.lab.leftovers() == []

    def assert_nothing_kept(self) -> None:
        """No damaged copy, no tree, no trusted hash; what was cached before is still there."""
        assert [p for p in self.cached() if p.suffix != ".part"] == []
        assert self.lab.trees() == []
        assert self.url not in self.lab.lock()
        assert {k: v for k, v in self.lab.lock().items() if k in KEPT_LOCK} == KEPT_LOCK
        kept = self.lab.cache / "kernels" / KEPT_SHA
        assert (kept / "tree.json").is_file()
        assert (kept / "tree" / "usr" / "src" / "Makefile").read_text() == "all:\n"


@pytest.fixture
def www(tmp_path: Path, iso: Path) -> Path:
    directory = tmp_path / "www"
    directory.mkdir()
    shutil.copy(iso, directory / "binpkg.iso")
    return directory


def test_a_dropped_connection_is_resumed_where_it_stopped(lab: Lab, www: Path, iso: Path) -> None:
    with serving(www) as server:
        served = Served(lab, server, iso)
        server.queue.append(Fault(drop_after=len(served.data) // 3))
        result = served.run()
    served.assert_cached_right(result)
    assert server.ranges[0] is None
    resumed_at = int((server.ranges[1] or "bytes=0-")[6:-1])
    assert 0 < resumed_at <= len(served.data) // 3  # what arrived before the drop was kept
    assert "resuming" in result.stderr


def test_a_resume_answered_from_the_wrong_offset_starts_over(
    lab: Lab, www: Path, iso: Path
) -> None:
    with serving(www) as server:
        served = Served(lab, server, iso)
        server.queue.extend([Fault(drop_after=len(served.data) // 3), Fault(range_start=0)])
        result = served.run()
    served.assert_cached_right(result)
    assert [r is None for r in server.ranges] == [True, False, True]
    assert "starting again" in result.stderr


def test_503s_are_retried(lab: Lab, www: Path, iso: Path) -> None:
    with serving(www) as server:
        served = Served(lab, server, iso)
        server.queue.extend([Fault(status=503), Fault(status=503)])
        result = served.run()
    served.assert_cached_right(result)
    assert [r.status for r in server.requests] == [503, 503, 200]
    assert "HTTP 503" in result.stderr and "retrying" in result.stderr


def test_a_server_that_keeps_refusing_is_a_download_error(lab: Lab, www: Path, iso: Path) -> None:
    kept = lab.kept()
    with serving(www) as server:
        served = Served(lab, server, iso)
        server.standing = Fault(status=503)
        result = served.run("--retries", "1")
    assert result.returncode == 3, result
    assert f"Downloading the ISO for lab from {served.url} failed after 2 attempts: HTTP 503" in (
        result.stderr
    )
    assert len(server.requests) == 2
    served.assert_nothing_kept()
    assert lab.kept() == kept


def test_a_slow_server_within_the_timeout_delivers_the_right_bytes(
    lab: Lab, www: Path, iso: Path
) -> None:
    with serving(www) as server:
        served = Served(lab, server, iso)
        server.queue.append(Fault(trickle=0.03))  # about 3 s for the whole ISO
        result = served.run("--download-timeout", "2")
    served.assert_cached_right(result)
    assert len(server.requests) == 1


def test_a_stalled_transfer_times_out_and_resumes(lab: Lab, www: Path, iso: Path) -> None:
    with serving(www) as server:
        served = Served(lab, server, iso)
        cut = len(served.data) // 2
        server.queue.append(Fault(stall_after=cut, stall_for=8))
        result = served.run("--download-timeout", "1")
    served.assert_cached_right(result)
    assert server.ranges[0] is None
    assert server.ranges[1] is not None and server.ranges[1].startswith("bytes=")
    assert "retrying" in result.stderr


def test_a_server_that_always_stalls_gives_up_and_keeps_the_part_to_resume(
    lab: Lab, www: Path, iso: Path
) -> None:
    with serving(www) as server:
        served = Served(lab, server, iso)
        server.standing = Fault(stall_after=1 << 20, stall_for=8)
        result = served.run("--download-timeout", "1", "--retries", "1")
        assert result.returncode == 3, result
        assert f"from {served.url} failed after 2 attempts" in result.stderr
        assert "the partial file is kept and the next run resumes it" in result.stderr
        served.assert_nothing_kept()
        (part,) = served.cached()
        assert part.name == "binpkg.iso.part"
        have = part.stat().st_size
        assert 0 < have < len(served.data)
        assert part.read_bytes() == served.data[:have]
        # The server recovers: the next run resumes the partial file and ends right.
        server.standing = Fault()
        requests = len(server.requests)
        again = served.run("--download-timeout", "1")
    served.assert_cached_right(again)
    assert server.requests[requests].range == f"bytes={have}-"


def test_a_damaged_first_download_is_deleted_and_fetched_again(
    lab: Lab, www: Path, iso: Path, good_rpm: Path
) -> None:
    """Nothing vouched for the ISO yet (no pin, no lock): a damaged copy must not stay cached,
    and the message must blame the download, not the package inside it."""
    flip = rpm_offset(iso, good_rpm) + good_rpm.stat().st_size // 2
    with serving(www) as server:
        served = Served(lab, server, iso)
        server.standing = Fault(flip=(flip,))
        first = served.run()
        assert first.returncode == 5, first
        assert f"inside the ISO downloaded from {served.url} is damaged" in first.stderr
        assert "The download was deleted; the next run downloads it again" in first.stderr
        served.assert_nothing_kept()
        assert served.cached() == []
        server.standing = Fault()  # the server's copy is mended
        second = served.run()
    served.assert_cached_right(second)
    assert len(server.requests) == 2  # downloaded again, not served from the cache


@pytest.mark.parametrize("vouched_by", ["lock", "pin"])
def test_bytes_that_differ_from_the_vouched_hash_are_refused_and_deleted(
    lab: Lab, www: Path, iso: Path, good_rpm: Path, vouched_by: str
) -> None:
    good = sha256(iso.read_bytes())
    flip = padding_offset(iso, good_rpm)
    with serving(www) as server:
        served = Served(lab, server, iso, pin=good if vouched_by == "pin" else None)
        if vouched_by == "lock":
            lab.lock_file.write_text(
                "{\n" + "".join(f'  "{k}": "{v}",\n' for k, v in KEPT_LOCK.items())
                + f'  "{served.url}": "{good}"\n}}\n'
            )  # fmt: skip
        lock_before = lab.lock()
        server.standing = Fault(flip=(flip,))
        result = served.run()
    bad = bytearray(served.data)
    bad[flip] ^= 0xFF
    assert result.returncode == 4, result
    assert f"has sha256 {sha256(bytes(bad))}, but {good} was expected" in result.stderr
    assert "The file was deleted" in result.stderr
    assert served.cached() == []
    assert lab.trees() == []
    assert lab.lock() == lock_before
