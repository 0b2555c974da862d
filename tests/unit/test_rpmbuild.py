from __future__ import annotations

import io
import re
import shlex
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from builder import rpmbuild
from builder.errors import ConfigError, InputError
from builder.specs import DrbdFamily, load_registry

REPO = Path(__file__).resolve().parents[2]
RELEASE = "2.6.32.12-0.7.1.xs1.4.90.530.170661xen"
KDIR = "/usr/src/kernels/2.6.32.12-0.7.1.xs1.4.90.530.170661-xen-i686"


def inputs(arch: str = "i686") -> rpmbuild.BuildInputs:
    return rpmbuild.BuildInputs(
        version="8.4.1",
        tarball_name="drbd-8.4.1.tar.gz",
        source_dir="drbd-8.4.1",
        kernel_release=RELEASE,
        kdir=KDIR,
        arch=arch,
    )


@pytest.mark.parametrize("family", [DrbdFamily.V83, DrbdFamily.V84_EARLY])
def test_recipe_follows_drbds_own_rpm_recipe(family: DrbdFamily) -> None:
    commands = rpmbuild.recipe_for(family).commands(inputs())
    lines = [shlex.join(c) for c in commands]
    assert "./configure --with-km" in lines
    # FORCE=1 keeps the release's man pages: rebuilding them needs the network, which is off.
    assert "make tgz drbd.spec drbd-km.spec FORCE=1" in lines
    builds = [c for c in commands if c[0] == "rpmbuild"]
    assert [c[-1] for c in builds] == ["drbd.spec", "drbd-km.spec"]
    for command in builds:
        assert command[1] == "-bb"
        assert command[command.index("--target") + 1] == "i686"
        defines = [command[i + 1] for i, word in enumerate(command) if word == "--define"]
        assert f"kernelversion {RELEASE}" in defines
        assert f"kdir {KDIR}" in defines
        assert f"_buildhost {rpmbuild.BUILD_HOST}" in defines
    assert not any("--nodeps" in line for line in lines)
    assert not any("uname" in line for line in lines)


def test_expected_packages_include_the_kernel_specific_module() -> None:
    expected = rpmbuild.recipe_for(DrbdFamily.V84_EARLY).expected_packages(RELEASE)
    assert expected == {
        "drbd",
        "drbd-utils",
        "drbd-xen",
        "drbd-udev",
        "drbd-km-2.6.32.12_0.7.1.xs1.4.90.530.170661xen",
    }


def test_thirty_two_bit_targets_build_under_linux32() -> None:
    assert rpmbuild.personality("i686") == ["linux32"]
    assert rpmbuild.personality("i386") == ["linux32"]
    assert rpmbuild.personality("x86_64") == []


def test_shell_script_echoes_each_command_and_stops_on_failure() -> None:
    script = rpmbuild.shell_script([["./configure", "--with-km"], ["make", "a b"]])
    lines = script.splitlines()
    assert lines[0] == "set -e"
    assert "refusing to build as root" in script
    assert lines.index("./configure --with-km") == lines.index("echo '$ ./configure --with-km'") + 1
    assert "make 'a b'" in lines


def tree(root: Path, *dirs: str) -> None:
    for directory in dirs:
        (root / directory).mkdir(parents=True)


def test_debian_layout_is_mounted_at_its_own_absolute_paths(tmp_path: Path) -> None:
    tree(
        tmp_path,
        "usr/src/linux-headers-6.1.0-56-amd64",
        "usr/src/linux-headers-6.1.0-56-common",
        "usr/lib/linux-kbuild-6.1/scripts",
        "usr/share/doc/linux-headers-6.1.0-56-amd64",
    )
    build = tmp_path / "usr/src/linux-headers-6.1.0-56-amd64"
    (build / "scripts").symlink_to("../../lib/linux-kbuild-6.1/scripts")
    mounts, kdir = rpmbuild.kernel_mounts(tmp_path, build)
    assert kdir == "/usr/src/linux-headers-6.1.0-56-amd64"
    assert {(m.source, m.target, m.read_only) for m in mounts} == {
        (tmp_path / "usr/src/linux-headers-6.1.0-56-amd64", kdir, True),
        (
            tmp_path / "usr/src/linux-headers-6.1.0-56-common",
            "/usr/src/linux-headers-6.1.0-56-common",
            True,
        ),
        (tmp_path / "usr/lib/linux-kbuild-6.1", "/usr/lib/linux-kbuild-6.1", True),
    }


def test_red_hat_layout_mounts_usr_src_kernels(tmp_path: Path) -> None:
    tree(tmp_path, KDIR.lstrip("/"))
    mounts, kdir = rpmbuild.kernel_mounts(tmp_path, tmp_path / KDIR.lstrip("/"))
    assert kdir == KDIR
    assert [(m.source, m.target) for m in mounts] == [
        (tmp_path / "usr/src/kernels", "/usr/src/kernels")
    ]


def test_other_layouts_mount_the_whole_root_read_only(tmp_path: Path) -> None:
    tree(tmp_path, "build/linux")
    mounts, kdir = rpmbuild.kernel_mounts(tmp_path, tmp_path / "build/linux")
    assert kdir == "/build/kernel/build/linux"
    assert [(m.source, m.target, m.read_only) for m in mounts] == [
        (tmp_path, "/build/kernel", True)
    ]


def test_build_dir_outside_the_root_is_refused(tmp_path: Path) -> None:
    tree(tmp_path, "root", "elsewhere")
    with pytest.raises(InputError, match="not inside the kernel tree root"):
        rpmbuild.kernel_mounts(tmp_path / "root", tmp_path / "elsewhere")
    with pytest.raises(InputError, match="does not exist"):
        rpmbuild.kernel_mounts(tmp_path / "root", tmp_path / "root/missing")


def write_tarball(path: Path, names: list[str], mtime: int = 1_300_000_000) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for index, name in enumerate(names):
            data = b"x"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = mtime + index
            archive.addfile(info, io.BytesIO(data))
    return path


def test_tarball_top_dir_and_epoch(tmp_path: Path) -> None:
    good = write_tarball(tmp_path / "good.tar.gz", ["drbd-8.4.1/configure", "drbd-8.4.1/a/b"])
    assert rpmbuild.tarball_top_dir(good) == "drbd-8.4.1"
    assert rpmbuild.tarball_epoch(good) == 1_300_000_001
    two = write_tarball(tmp_path / "two.tar.gz", ["drbd-8.4.1/configure", "other/file"])
    with pytest.raises(InputError, match="one top-level directory"):
        rpmbuild.tarball_top_dir(two)
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"not a tarball")
    with pytest.raises(InputError, match="Cannot read source tarball"):
        rpmbuild.tarball_top_dir(broken)


def test_every_builtin_target_has_a_build_context_with_the_contract() -> None:
    provides = (REPO / "tests/integration/standin-context/buildroot-provides.spec").read_text()
    for target in load_registry().targets.values():
        context = rpmbuild.build_context_for(target)
        assert context == REPO / "containers" / target.container_family
        dockerfile = (context / "Dockerfile").read_text()
        assert re.search(r"^ARG BASE_IMAGE=", dockerfile, re.M), context
        assert dockerfile.rstrip().endswith("USER builder"), context
        assert "useradd -m -u 1000 builder" in dockerfile
        assert "--nodeps" not in dockerfile
        # one declaration file, the same in every context
        assert (context / "buildroot-provides.spec").read_text() == provides


def test_unknown_family_or_context_is_a_config_error(tmp_path: Path) -> None:
    target = load_registry().target("1.5")
    with pytest.raises(ConfigError, match="has no Dockerfile"):
        rpmbuild.build_context_for(replace(target, container_family="centos4-i386"))
    with pytest.raises(ConfigError, match=r"container\.context"):
        rpmbuild.build_context_for(replace(target, build_context=tmp_path))


def test_build_error_shows_the_cause_that_rpmbuild_s_summary_pushed_out(tmp_path: Path) -> None:
    log_file = tmp_path / "build.log"
    cause = "drbdadm.h:307: multiple definition of `setup_options'"
    summary = [f"    line {n}: extra tokens at the end of %endif" for n in range(60)]
    log_file.write_text("\n".join(["$ make tools", cause, "RPM build warnings:", *summary]))
    message = str(rpmbuild._build_error("exit status 1", "8.4.1", log_file))
    assert cause in message
    assert summary[-1].strip() in message  # the tail is still there
    assert f"The whole log is {log_file}" in message
