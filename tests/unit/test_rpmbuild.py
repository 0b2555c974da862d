from __future__ import annotations

import re
import shlex
from dataclasses import replace
from pathlib import Path

import pytest

from builder.builds import recipes, rpmbuild
from builder.errors import ConfigError, InputError
from builder.registry import load_registry
from builder.specs import Adjustments, DrbdFamily

REPO = Path(__file__).resolve().parents[2]
RELEASE = "2.6.32.12-0.7.1.xs1.4.90.530.170661xen"
KDIR = "/usr/src/kernels/2.6.32.12-0.7.1.xs1.4.90.530.170661-xen-i686"


def job(arch: str = "i686", patches: tuple[str, ...] = (), **adjust: object) -> recipes.Job:
    return recipes.Job(
        source=recipes.Source(
            file_name="drbd-8.4.1.tar.gz", top_dir="drbd-8.4.1", version="8.4.1", patches=patches
        ),
        arch=arch,
        adjustments=Adjustments(**adjust),  # type: ignore[arg-type]
        kernel_release=RELEASE,
        kdir=KDIR,
    )


def rpmbuilds(commands: list[list[str]]) -> list[list[str]]:
    return [c for c in commands if c[0] == "rpmbuild"]


def defines(command: list[str]) -> list[str]:
    return [command[i + 1] for i, word in enumerate(command) if word == "--define"]


@pytest.mark.parametrize("family", [DrbdFamily.V83, DrbdFamily.V84_EARLY])
def test_bundled_recipe_follows_drbds_own_rpm_recipe(family: DrbdFamily) -> None:
    recipe = recipes.recipe_for(family)
    module = recipe.module_commands(job())
    userland = recipe.userland.commands(replace(job(), kernel_release=None, kdir=None))
    lines = [shlex.join(c) for c in [*module, *userland]]
    # The distribution is named, never guessed from the build root (a Debian stand-in would
    # otherwise leave Conflicts: empty).
    assert "./configure --with-distro=redhat --with-km" in lines
    assert "./configure --with-distro=redhat --without-km" in lines
    # FORCE=1 keeps the release's man pages: rebuilding them needs the network, which is off.
    assert "make tgz drbd-km.spec FORCE=1" in lines
    assert "make tgz drbd.spec FORCE=1" in lines
    assert [c[-1] for c in rpmbuilds(module)] == ["drbd-km.spec"]
    assert [c[-1] for c in rpmbuilds(userland)] == ["drbd.spec"]
    command = rpmbuilds(module)[0]
    assert command[1] == "-bb"
    assert command[command.index("--target") + 1] == "i686"
    assert f"kernelversion {RELEASE}" in defines(command)
    assert f"kdir {KDIR}" in defines(command)
    assert f"_buildhost {recipes.BUILD_HOST}" in defines(command)
    # The userland does not depend on the kernel: it is built once and shared.
    assert not any(d.startswith(("kernelversion", "kdir")) for d in defines(rpmbuilds(userland)[0]))
    assert not any("--nodeps" in line for line in lines)
    assert not any("uname" in line for line in lines)


def test_module_only_recipe_builds_the_tarballs_own_km_spec() -> None:
    recipe = recipes.recipe_for(DrbdFamily.V84)
    source = recipes.Source(
        file_name="drbd-8.4.11-1.tar.gz", top_dir="drbd-8.4.11-1", version="8.4.11"
    )
    commands = recipe.module_commands(replace(job(), source=source))
    lines = [shlex.join(c) for c in commands]
    assert not any("configure" in line for line in lines)
    # The spec's Source: is the tarball itself, under its own name.
    name = "drbd-8.4.11-1.tar.gz"
    assert f"cp {recipes.INPUT_DIR}/{name} {recipes.TOP_DIR}/SOURCES/{name}" in lines
    assert [c[-1] for c in rpmbuilds(commands)] == ["drbd-km.spec"]
    assert f"kernelversion {RELEASE}" in defines(rpmbuilds(commands)[0])
    assert recipe.userland_from_utils
    assert recipe.userland is recipes.DRBD_UTILS


def test_drbd_utils_recipe_writes_its_spec_with_configure_and_renames_the_source() -> None:
    source = recipes.Source(
        file_name="drbd-utils_9.22.0.orig.tar.gz", top_dir="drbd-utils-9.22.0", version="9.22.0"
    )
    commands = recipes.DRBD_UTILS.commands(recipes.Job(source=source, arch="x86_64"))
    lines = [shlex.join(c) for c in commands]
    assert "./configure --with-distro=redhat --enable-spec" in lines
    # drbd.spec's Source: is drbd-utils-<version>.tar.gz, whatever the download was called.
    assert any(line.endswith("SOURCES/drbd-utils-9.22.0.tar.gz") for line in lines)
    command = rpmbuilds(commands)[0]
    assert command[-1] == "drbd.spec"
    assert command[command.index("--with") + 1] == "prebuiltman"


def test_patches_are_applied_in_order_and_the_source_is_packed_again() -> None:
    patched = job(patches=("01-fcommon.patch", "02-sysmacros.patch"))
    recipe = recipes.recipe_for(DrbdFamily.V84)
    commands = recipe.module_commands(patched)
    lines = [shlex.join(c) for c in commands]
    first = lines.index(f"patch -p1 --batch --forward -i {recipes.PATCH_DIR}/01-fcommon.patch")
    second = lines.index(f"patch -p1 --batch --forward -i {recipes.PATCH_DIR}/02-sysmacros.patch")
    repack = next(n for n, line in enumerate(lines) if line.startswith("tar --owner=0"))
    assert first < second < repack < lines.index(shlex.join(rpmbuilds(commands)[0]))


def test_adjustments_reach_configure_and_rpmbuild() -> None:
    adjusted = job(configure=("--without-xen",), rpmbuild=("--without", "udev"))
    recipe = recipes.recipe_for(DrbdFamily.V84_EARLY)
    userland = recipe.userland.commands(adjusted)
    assert "./configure --with-distro=redhat --without-km --without-xen" in [
        shlex.join(c) for c in userland
    ]
    assert rpmbuilds(userland)[0][-3:] == ["--without", "udev", "drbd.spec"]


def test_expected_packages_include_the_kernel_specific_module() -> None:
    recipe = recipes.recipe_for(DrbdFamily.V84_EARLY)
    assert recipes.expected_packages(recipe, RELEASE) == {
        "drbd",
        "drbd-utils",
        "drbd-xen",
        "drbd-udev",
        "drbd-km-2.6.32.12_0.7.1.xs1.4.90.530.170661xen",
    }
    module_only = recipes.recipe_for(DrbdFamily.V84)
    assert recipes.expected_packages(module_only, "4.19.0+1") == {
        "drbd",
        "drbd-utils",
        "drbd-km-4.19.0+1",
    }


def test_every_family_has_a_recipe_with_its_config_syntax() -> None:
    assert set(recipes.RECIPES) == set(DrbdFamily)
    syntax = {f: recipes.RECIPES[f].syntax for f in DrbdFamily}
    assert syntax == {
        DrbdFamily.V83: recipes.Syntax.V83,
        DrbdFamily.V84_EARLY: recipes.Syntax.V84,
        DrbdFamily.V84: recipes.Syntax.V84,
        DrbdFamily.V9: recipes.Syntax.V9,
    }
    assert recipes.RECIPES[DrbdFamily.V9].module_package("4.19.0+1") == "kmod-drbd"


@pytest.mark.parametrize(
    ("family", "files", "missing"),
    [
        (DrbdFamily.V84_EARLY, {"drbd-km.spec", "drbd/Kbuild"}, "configure"),
        (DrbdFamily.V84, {"configure", "drbd.spec.in", "drbd-km.spec.in"}, "drbd-km.spec"),
    ],
)
def test_a_tarball_of_another_family_is_refused_with_what_it_lacks(
    family: DrbdFamily, files: set[str], missing: str
) -> None:
    recipe = recipes.recipe_for(family)
    with pytest.raises(ConfigError, match=f"no {missing}") as caught:
        recipes.check_tarball("DRBD x", "x.tar.gz", family.value, recipe.files, frozenset(files))
    assert caught.value.exit_code == 2
    assert caught.value.hint


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
    message = str(rpmbuild._build_error("exit status 1", "DRBD 8.4.1", log_file))
    assert message.startswith("Building DRBD 8.4.1 failed (exit status 1) at `make tools`.")
    assert cause in message
    assert summary[-1].strip() in message  # the tail is still there
    assert f"The whole log is {log_file}" in message


def test_a_patch_that_does_not_apply_is_named_in_the_error(tmp_path: Path) -> None:
    log_file = tmp_path / "build.log"
    command = f"patch -p1 --batch --forward -i {recipes.PATCH_DIR}/02-sysmacros.patch"
    log_file.write_text(
        f"$ cd /tmp/build/drbd-8.4.1\n$ {command}\npatching file user/drbdadm.c\n"
        "Hunk #1 FAILED at 12.\n1 out of 1 hunk FAILED -- saving rejects\n"
    )
    message = str(rpmbuild._build_error("exit status 1", "DRBD 8.4.1 userland", log_file))
    assert "the patch 02-sysmacros.patch does not apply to this source" in message
    assert "Hunk #1 FAILED at 12." in message


def kmod_job(patches: tuple[str, ...] = ()) -> recipes.Job:
    return recipes.Job(
        source=recipes.Source(
            file_name="drbd-9.2.19.tar.gz", top_dir="drbd-9.2.19", version="9.2.19", patches=patches
        ),
        arch="x86_64",
        kernel_release="4.19.0+1",
        kdir="/usr/src/kernels/4.19.0+1",
        kernel_requires="kernel = 4.19.19-7.0.15.1.xcpng8.2",
        userland_requires="drbd-utils >= 9.27.0",
    )


def test_drbd9_compat_steps_never_ask_the_online_service() -> None:
    recipe = recipes.recipe_for(DrbdFamily.V9)
    assert isinstance(recipe, recipes.KmodRecipe)
    compat = [shlex.join(c) for c in recipe.compat_commands(kmod_job())]
    assert "make -C drbd compat.h KDIR=/usr/src/kernels/4.19.0+1 SPAAS=false" in compat
    assert f"cp -L drbd/compat.h {recipes.OUTPUT_DIR}/compat.h" in compat
    spatch = [shlex.join(c) for c in recipe.spatch_commands(kmod_job(), "0" * 32)]
    assert (
        "make -C drbd -f Makefile.spatch drbd-kernel-compat/cocci_cache/"
        + "0" * 32
        + "/compat.patch SPAAS=false KERNELRELEASE=4.19.0+1"
    ) in spatch


def test_drbd9_module_build_feeds_the_compat_entry_and_pins_kernel_and_userland() -> None:
    recipe = recipes.recipe_for(DrbdFamily.V9)
    assert isinstance(recipe, recipes.KmodRecipe)
    fed = recipe.module_commands(kmod_job(), "f" * 32)
    lines = [shlex.join(c) for c in fed]
    entry = f"{recipes.COCCI_CACHE}/{'f' * 32}"
    assert f"cp -R {recipes.COMPAT_DIR}/. {entry}" in lines
    # The tarball rpmbuild unpacks must hold the entry: packed again after it went in.
    assert next(n for n, line in enumerate(lines) if line.startswith("tar --owner=0")) > (
        lines.index(f"cp -R {recipes.COMPAT_DIR}/. {entry}")
    )
    build = rpmbuilds(fed)[0]
    assert build[-1] == "drbd-kernel.spec"
    assert "kernel_version 4.19.0+1" in defines(build)
    assert "xdb_kernel_requires kernel = 4.19.19-7.0.15.1.xcpng8.2" in defines(build)
    assert "xdb_userland_requires drbd-utils >= 9.27.0" in defines(build)
    assert f"cp {recipes.MACRO_DIR}/kmp.macros {recipes.WORK_DIR}/.rpmmacros" in lines
    # A tarball whose own cache has the patch is built as it is.
    plain = [shlex.join(c) for c in recipe.module_commands(kmod_job())]
    assert not any(line.startswith("tar --owner=0") for line in plain)
    assert recipes.KMP_MACROS.is_file()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("Requires: drbd-utils >= 9.27.0\n", "drbd-utils >= 9.27.0"),
        ("Requires: drbd-utils >= 8.9.2, /sbin/depmod\n", "drbd-utils >= 8.9.2"),
        ("Requires: drbd-utils = %{version}\n", None),
        ("Summary: no requirement\n", None),
    ],
)
def test_the_module_s_userland_range_is_read_from_its_spec(spec: str, expected: str | None) -> None:
    assert recipes.userland_requirement(spec) == expected
