"""A source tarball read once: what the recipes and the build learn of it, and what is refused."""

from __future__ import annotations

import gzip
import io
import tarfile
from dataclasses import replace
from pathlib import Path, PurePosixPath

import pytest

from builder.builds import drbdbuild, recipes
from builder.errors import ConfigError, InputError
from builder.inputs.sourcetarball import SPEC_LIMIT, read_source_tarball
from builder.specs import DrbdFamily

KM_SPEC = "Name: drbd-km\nRequires: drbd-utils >= 8.9.2, /sbin/depmod\n"


def write_tarball(
    path: Path,
    files: dict[str, bytes],
    *,
    mtime: int = 1_300_000_000,
    links: dict[str, str] | None = None,
) -> Path:
    """A gzip tarball of ``files`` (name -> content), the n-th at ``mtime + n``, and of
    symbolic links (name -> target)."""
    with tarfile.open(path, "w:gz") as archive:
        for index, (name, data) in enumerate(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = mtime + index
            archive.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    return path


def test_one_read_gives_members_top_dir_files_epoch_and_spec_texts(tmp_path: Path) -> None:
    path = write_tarball(
        tmp_path / "drbd-8.4.11-1.tar.gz",
        {
            "drbd-8.4.11-1/drbd-km.spec": KM_SPEC.encode(),
            "drbd-8.4.11-1/drbd/Kbuild": b"obj-m := drbd.o\n",
            "drbd-8.4.11-1/drbd/other.spec": b"Name: nested\n",
            "./drbd-8.4.11-1/configure": b"#!/bin/sh\n",
        },
    )
    tarball = read_source_tarball(path, sha256="a" * 64)
    assert tarball.path == path
    assert tarball.name == "drbd-8.4.11-1.tar.gz"
    assert tarball.sha256 == "a" * 64
    assert tarball.top_dir == "drbd-8.4.11-1"
    assert tarball.members[0] == PurePosixPath("drbd-8.4.11-1/drbd-km.spec")
    assert len(tarball.members) == 4
    assert tarball.files == {"drbd-km.spec", "drbd/Kbuild", "drbd/other.spec", "configure"}
    assert tarball.epoch == 1_300_000_003  # the newest member's mtime
    # only the spec files right below the top directory, as text
    assert dict(tarball.specs) == {"drbd-km.spec": KM_SPEC}
    assert tarball.spec_text("drbd-km.spec") == KM_SPEC
    assert tarball.spec_text("drbd-kernel.spec") == ""
    assert read_source_tarball(path).sha256 is None


def test_a_spec_file_is_read_up_to_its_limit(tmp_path: Path) -> None:
    big = b"#" * (SPEC_LIMIT + 10)
    path = write_tarball(tmp_path / "d.tar.gz", {"drbd-9.2.18/drbd-kernel.spec": big})
    assert len(read_source_tarball(path).spec_text("drbd-kernel.spec")) == SPEC_LIMIT


def test_a_tarball_with_two_top_directories_is_refused(tmp_path: Path) -> None:
    path = write_tarball(tmp_path / "two.tar.gz", {"drbd-8.4.1/configure": b"", "other/file": b""})
    with pytest.raises(InputError) as caught:
        read_source_tarball(path)
    assert str(caught.value) == (
        f"Source tarball {path} must hold one top-level directory, not drbd-8.4.1, other."
    )
    assert caught.value.exit_code == 5
    empty = write_tarball(tmp_path / "empty.tar.gz", {})
    with pytest.raises(InputError, match="one top-level directory, not nothing"):
        read_source_tarball(empty)


@pytest.mark.parametrize(
    ("name", "top"), [("/etc/passwd", "/"), ("../escape/configure", ".."), ("..", "..")]
)
def test_a_hostile_top_level_name_is_refused(tmp_path: Path, name: str, top: str) -> None:
    path = write_tarball(tmp_path / "hostile.tar.gz", {name: b"x"})
    with pytest.raises(InputError) as caught:
        read_source_tarball(path)
    assert f"has an unsafe top-level entry {top!r}" in str(caught.value)
    assert caught.value.exit_code == 5


def test_hostile_member_names_are_only_named_never_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("Requires: drbd-utils >= 99\n")
    path = write_tarball(
        tmp_path / "d.tar.gz",
        {"drbd-8.4.11-1/../../escape.spec": b"Name: escape\n"},
        links={"drbd-8.4.11-1/drbd-km.spec": str(secret)},
    )
    before = sorted(tmp_path.rglob("*"))
    tarball = read_source_tarball(path)
    assert sorted(tmp_path.rglob("*")) == before  # nothing extracted anywhere
    assert tarball.top_dir == "drbd-8.4.11-1"
    # a link is not a spec file: its target is not read, and a name that climbs out is none
    assert dict(tarball.specs) == {}


def test_a_damaged_tarball_is_refused_as_unreadable(tmp_path: Path) -> None:
    garbage = tmp_path / "broken.tar.gz"
    garbage.write_bytes(b"not a tarball")
    good = write_tarball(tmp_path / "good.tar.gz", {"drbd-8.4.1/configure": b"x" * 4096})
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(gzip.compress(gzip.decompress(good.read_bytes())[:700]))
    for path in (garbage, cut, tmp_path / "missing.tar.gz"):
        with pytest.raises(InputError) as caught:
            read_source_tarball(path)
        assert str(caught.value).startswith(f"Cannot read source tarball {path}: ")
        assert caught.value.exit_code == 5


def _build(tmp_path: Path, drbd: Path, utils: Path, utils_version: str) -> drbdbuild.DrbdBuild:
    return drbdbuild.DrbdBuild(
        recipe=recipes.recipe_for(DrbdFamily.V84),
        drbd=drbdbuild.SourceInput(version="8.4.11", tarball=drbd, sha256="d" * 64),
        utils=drbdbuild.SourceInput(version=utils_version, tarball=utils, sha256="u" * 64),
        kernel=drbdbuild.KernelInput(root=tmp_path, build_dir=tmp_path, release="4.19.0+1"),
        arch="x86_64",
        image="",
        context_sha256="c" * 64,
    )


def _module_and_utils(tmp_path: Path) -> tuple[Path, Path]:
    """A DRBD 8.4.11 module tarball and a drbd-utils 9.22.0 one, as a late-8.4 build pairs them."""
    drbd = write_tarball(
        tmp_path / "drbd-8.4.11-1.tar.gz", {"drbd-8.4.11-1/drbd-km.spec": KM_SPEC.encode()}
    )
    utils = write_tarball(
        tmp_path / "drbd-utils-9.22.0.tar.gz",
        {"drbd-utils-9.22.0/configure": b"", "drbd-utils-9.22.0/drbd.spec.in": b""},
    )
    return drbd, utils


def test_the_build_reads_each_source_once_and_checks_it_from_the_value(tmp_path: Path) -> None:
    drbd, utils = _module_and_utils(tmp_path)
    inputs = drbdbuild.read_inputs(_build(tmp_path, drbd, utils, "9.22.0"))
    assert (inputs.drbd.path, inputs.drbd.sha256) == (drbd, "d" * 64)
    assert (inputs.userland.top_dir, inputs.userland.sha256) == ("drbd-utils-9.22.0", "u" * 64)
    # what the module package must require, from the spec file the value holds
    assert inputs.userland_requires == "drbd-utils >= 8.9.2"
    source = recipes.Source.of(inputs.drbd, "8.4.11", [tmp_path / "fix.patch"])
    assert (source.file_name, source.top_dir) == ("drbd-8.4.11-1.tar.gz", "drbd-8.4.11-1")
    assert source.patches == ("01-fix.patch",)
    # the spec file's range refuses an older drbd-utils
    with pytest.raises(ConfigError, match=r"requires drbd-utils >= 8\.9\.2, but .* 8\.4\.0"):
        drbdbuild.read_inputs(_build(tmp_path, drbd, utils, "8.4.0"))
    # the family's files: the utils tarball is not a drbd-utils release
    with pytest.raises(ConfigError, match=r"drbd-8\.4\.11-1\.tar\.gz has no configure"):
        drbdbuild.read_inputs(_build(tmp_path, drbd, drbd, "9.22.0"))


def test_a_missing_kernel_tree_is_refused_before_any_container(tmp_path: Path) -> None:
    drbd, utils = _module_and_utils(tmp_path)
    build = _build(tmp_path, drbd, utils, "9.22.0")
    gone = replace(build, kernel=replace(build.kernel, build_dir=tmp_path / "gone"))
    with pytest.raises(InputError, match=r"Kernel build directory .*gone does not exist"):
        drbdbuild.build_drbd(
            gone, output_dir=tmp_path, log_file=tmp_path / "log", cache_dir=tmp_path / "cache"
        )
    assert not (tmp_path / "cache").exists()  # no userland was built first
