"""The packages check against a real yum repository made with rpmbuild and createrepo_c."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder import proc
from builder.cli import main
from builder.deploy.repo import RepoUnreachable, read_packages
from tests.deploy_support import pool_data, write_pool
from tests.support.http import serve_directory

pytestmark = pytest.mark.integration

KM = "drbd-km-2.6.32.12_0.7.1.xs1.4.90.530.170661xen"
SPEC = """\
Name: %{pkgname}
Version: %{pkgver}
Release: 1
Summary: Stand-in package for repository tests
License: GPL-2.0-or-later
%description
Stand-in package for repository tests.
%files
"""


def build_rpm(top: Path, name: str, version: str, arch: str) -> Path:
    spec = top / "stand-in.spec"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(SPEC)
    proc.run(
        [
            "rpmbuild",
            "-bb",
            "--quiet",
            "--define",
            f"_topdir {top}",
            "--define",
            f"pkgname {name}",
            "--define",
            f"pkgver {version}",
            "--target",
            arch,
            spec,
        ],
        echo=False,
    )
    return top / "RPMS" / arch / f"{name}-{version}-1.{arch}.rpm"


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository laid out like `publish` does: <repo>/el5/i386/ with DRBD 8.4.1."""
    for tool in ("rpmbuild", "createrepo_c"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    root = tmp_path_factory.mktemp("published")
    directory = root / "repo" / "el5" / "i386"
    directory.mkdir(parents=True)
    top = root / "rpmbuild"
    for name, arch in (("drbd", "i386"), (KM, "i686")):
        shutil.copy(build_rpm(top, name, "8.4.1", arch), directory)
    # gzip metadata, as an EL5 consumer needs (newer createrepo_c defaults to zstd).
    proc.run(["createrepo_c", "--quiet", "--general-compress-type", "gz", directory], echo=False)
    return root / "repo"


@pytest.fixture
def served(published: Path) -> Iterator[str]:
    """The published tree over HTTP on 127.0.0.1."""
    with serve_directory(published.parent) as url:
        yield f"{url}/{published.name}"


def test_reads_packages_from_a_path_a_file_url_and_http(published: Path, served: str) -> None:
    expected = [("drbd", "8.4.1", "i386"), (KM, "8.4.1", "i686")]
    for base in (
        str(published / "el5" / "i386"),
        (published / "el5" / "i386").as_uri(),
        f"{served}/el5/i386/",
    ):
        packages = read_packages(base)
        assert [(p.name, p.version, p.arch) for p in packages] == expected, base


def test_reads_zstd_metadata(published: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(published / "el5" / "i386", copy)
    shutil.rmtree(copy / "repodata")
    proc.run(["createrepo_c", "--quiet", "--general-compress-type", "zstd", copy], echo=False)
    assert list((copy / "repodata").glob("*primary.xml.zst"))
    assert [p.name for p in read_packages(str(copy))] == ["drbd", KM]


def test_missing_repository_is_unreachable(tmp_path: Path) -> None:
    with pytest.raises(RepoUnreachable, match=r"repomd\.xml"):
        read_packages(str(tmp_path))


def test_corrupt_primary_metadata_is_unreachable(published: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(published / "el5" / "i386", copy)
    primaries = list((copy / "repodata").glob("*primary.xml.gz"))
    assert len(primaries) == 1
    primaries[0].write_bytes(b"not gzip")
    with pytest.raises(RepoUnreachable, match=r"primary\.xml\.gz: .*cannot be parsed"):
        read_packages(str(copy))


def check(tmp_path: Path, url: str, version: str) -> int:
    pool = write_pool(tmp_path, pool_data(**{"repo.url": url, "drbd.version": version}))
    return main(["deploy", "check", "--pool", str(pool), "-q"])


def test_check_passes_when_the_repo_has_the_version(
    tmp_path: Path, published: Path, served: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert check(tmp_path, published.as_uri(), "8.4.1") == 0
    assert check(tmp_path, served, "8.4") == 0
    assert "no errors, 0 warning(s)" in capsys.readouterr().out


def test_check_fails_when_the_repo_lacks_the_version(
    tmp_path: Path, published: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert check(tmp_path, published.as_uri(), "8.3.16") == 13
    out = capsys.readouterr().out
    assert "error [drbd-packages-missing]" in out
    assert f"{KM}-8.4.1-1.i686" in out  # says what the repository has instead
    # Rendering is refused too, and nothing is written.
    pool = tmp_path / "pool.yaml"
    output = tmp_path / "out"
    assert main(["deploy", "render", "--pool", str(pool), "--output", str(output), "-q"]) == 13
    assert not output.exists()


@pytest.mark.parametrize("scheme", ["file", "http"])
def test_repo_without_the_targets_directory_is_an_error(
    tmp_path: Path,
    published: Path,
    served: str,
    capsys: pytest.CaptureFixture[str],
    scheme: str,
) -> None:
    url = published.as_uri() if scheme == "file" else served
    pool = write_pool(tmp_path, pool_data(target="xcp-ng-8.2", **{"repo.url": url}))
    assert main(["deploy", "check", "--pool", str(pool), "-q"]) == 13
    out = capsys.readouterr().out
    assert "error [drbd-packages-missing]" in out
    assert "el7/x86_64" in out


def test_unreachable_http_repo_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert check(tmp_path, f"http://127.0.0.1:{port}/repo", "8.4.1") == 0
    out = capsys.readouterr().out
    assert "warning [repo-unreachable]" in out
    assert f"127.0.0.1:{port}" in out
    assert "connection refused" in out
