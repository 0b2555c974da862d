from __future__ import annotations

import dataclasses
import struct
import subprocess
from pathlib import Path

import pytest

from builder.builds import postbuild, recipes
from builder.builds.postbuild import Expectation, PackageInfo, Requirement
from builder.errors import CheckError
from builder.specs import DrbdFamily, KernelRequirement

RELEASE = "2.6.32.12-0.7.1.xs1.4.90.530.170661xen"
KM = "drbd-km-2.6.32.12_0.7.1.xs1.4.90.530.170661xen"
MODULE = f"/lib/modules/{RELEASE}/kernel/drivers/block/drbd.ko"


def make_elf(sections: dict[str, bytes], *, bits: int = 64, little: bool = True) -> bytes:
    """A minimal relocatable ELF file holding ``sections`` (what a .ko looks like to modinfo)."""
    endian = "<" if little else ">"
    names = b"\0" + b"".join(name.encode() + b"\0" for name in [*sections, ".shstrtab"])
    header_size = 64 if bits == 64 else 52
    entry_size = 64 if bits == 64 else 40
    body = b""
    placed: list[tuple[int, int, int]] = [(0, 0, 0)]  # (name offset, data offset, size)
    name_offset = 1
    for name, data in [*sections.items(), (".shstrtab", names)]:
        placed.append((name_offset, header_size + len(body), len(data)))
        body += data
        name_offset += len(name) + 1
    shoff = header_size + len(body)
    ident = b"\x7fELF" + bytes([2 if bits == 64 else 1, 1 if little else 2, 1]) + bytes(9)
    if bits == 64:
        header = ident + struct.pack(
            endian + "HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, len(placed),
            len(placed) - 1,
        )  # fmt: skip
        table = b"".join(
            struct.pack(endian + "IIQQQQIIQQ", n, 1, 0, 0, o, s, 0, 0, 1, 0) for n, o, s in placed
        )
    else:
        header = ident + struct.pack(
            endian + "HHIIIIIHHHHHH", 1, 3, 1, 0, 0, shoff, 0, 52, 0, 0, 40, len(placed),
            len(placed) - 1,
        )  # fmt: skip
        table = b"".join(
            struct.pack(endian + "IIIIIIIIII", n, 1, 0, 0, o, s, 0, 0, 1, 0) for n, o, s in placed
        )
    assert len(header) == header_size
    assert len(table) == entry_size * len(placed)
    return header + body + table


def modinfo_section(vermagic: str) -> bytes:
    return f"license=GPL\0vermagic={vermagic}\0srcversion=ABC\0".encode()


@pytest.mark.parametrize(("bits", "little"), [(64, True), (32, True), (32, False)])
def test_modinfo_reads_vermagic_from_the_modinfo_section(bits: int, little: bool) -> None:
    elf = make_elf(
        {".text": b"\x90" * 7, ".modinfo": modinfo_section(f"{RELEASE} SMP mod_unload 686 ")},
        bits=bits,
        little=little,
    )
    info = postbuild.modinfo(elf)
    assert info["vermagic"] == f"{RELEASE} SMP mod_unload 686 "
    assert info["license"] == "GPL"


def test_modinfo_rejects_files_that_are_not_modules() -> None:
    with pytest.raises(ValueError, match="not an ELF"):
        postbuild.modinfo(b"#!/bin/sh\necho not a module\n" * 4)
    with pytest.raises(ValueError, match=r"no \.modinfo section"):
        postbuild.modinfo(make_elf({".text": b"\xc3"}))


def package(name: str, **overrides: object) -> PackageInfo:
    fields: dict[str, object] = {
        "file_name": f"{name}-8.4.1-1.i686.rpm",
        "name": name,
        "version": "8.4.1",
        "release": "1",
        "arch": "i686",
    }
    fields.update(overrides)
    return PackageInfo(**fields)  # type: ignore[arg-type]


def good_build() -> list[PackageInfo]:
    return [
        package("drbd"),
        package("drbd-utils"),
        package("drbd-xen"),
        package("drbd-udev", arch="noarch"),
        package(
            KM,
            requires=(Requirement("drbd-utils", postbuild.RPMSENSE_EQUAL, "8.4.1"),),
            modules={MODULE: f"{RELEASE} SMP mod_unload modversions 686 "},
        ),
    ]


EXPECT = Expectation(
    kernel_release=RELEASE,
    arch="i686",
    version="8.4.1",
    packages=frozenset({"drbd", "drbd-utils", "drbd-xen", "drbd-udev", KM}),
    module_package=KM,
)


def replace(packages: list[PackageInfo], new: PackageInfo) -> list[PackageInfo]:
    return [new if p.name == new.name else p for p in packages]


def test_a_correct_build_has_no_problems() -> None:
    assert postbuild.problems(good_build(), EXPECT) == []


def test_km_package_name_follows_drbd_km_spec() -> None:
    assert recipes.km_package_name(RELEASE) == KM
    assert recipes.km_package_name("6.1.0-56-amd64") == "drbd-km-6.1.0_56_amd64"


def test_module_for_another_kernel_is_named_with_both_releases() -> None:
    other = replace(
        good_build(),
        package(
            KM,
            requires=(Requirement("drbd-utils", postbuild.RPMSENSE_EQUAL, "8.4.1"),),
            modules={MODULE: "6.1.0-56-amd64 SMP preempt mod_unload modversions "},
        ),
    )
    [problem] = postbuild.problems(other, EXPECT)
    assert "built for kernel 6.1.0-56-amd64" in problem
    assert RELEASE in problem


def test_a_release_that_only_starts_like_the_target_is_not_accepted() -> None:
    other = replace(
        good_build(),
        package(
            KM,
            requires=(Requirement("drbd-utils", postbuild.RPMSENSE_EQUAL, "8.4.1"),),
            modules={MODULE: f"{RELEASE}-debug SMP mod_unload 686 "},
        ),
    )
    assert len(postbuild.problems(other, EXPECT)) == 1


def test_module_package_without_module_or_vermagic_fails() -> None:
    requires = (Requirement("drbd-utils", postbuild.RPMSENSE_EQUAL, "8.4.1"),)
    empty = replace(good_build(), package(KM, requires=requires))
    assert "contains no kernel module" in postbuild.problems(empty, EXPECT)[0]
    blank = replace(good_build(), package(KM, requires=requires, modules={MODULE: ""}))
    assert "has no vermagic" in postbuild.problems(blank, EXPECT)[0]


@pytest.mark.parametrize(
    "requires",
    [
        (),
        (Requirement("drbd-utils"),),
        (
            Requirement(
                "drbd-utils", postbuild.RPMSENSE_EQUAL | postbuild.RPMSENSE_GREATER, "8.4.1"
            ),
        ),
        (Requirement("drbd-utils", postbuild.RPMSENSE_EQUAL, "8.4.0"),),
    ],
)
def test_module_package_must_require_exactly_this_userland(
    requires: tuple[Requirement, ...],
) -> None:
    modules = {MODULE: f"{RELEASE} SMP "}
    loose = replace(good_build(), package(KM, requires=requires, modules=modules))
    [problem] = postbuild.problems(loose, EXPECT)
    assert "must require drbd-utils = 8.4.1" in problem


def test_version_release_and_epoch_forms_of_the_requirement_are_accepted() -> None:
    for version in ("8.4.1-1", "0:8.4.1"):
        requires = (Requirement("drbd-utils", postbuild.RPMSENSE_EQUAL, version),)
        exact = replace(good_build(), package(KM, requires=requires, modules={MODULE: RELEASE}))
        assert postbuild.problems(exact, EXPECT) == []


def test_wrong_arch_missing_packages_and_other_versions_are_all_reported() -> None:
    packages = [p for p in good_build() if p.name != "drbd-xen"]
    packages = replace(packages, package("drbd-utils", arch="i386", version="8.4.2"))
    found = postbuild.problems(packages, EXPECT)
    assert any("missing: drbd-xen" in p for p in found)
    assert any("architecture is i386, the target needs i686" in p for p in found)
    assert any("version is 8.4.2" in p for p in found)
    assert len(found) == 3


def test_check_packages_raises_with_every_problem(tmp_path: Path) -> None:
    not_rpm = tmp_path / "drbd-8.4.1-1.i686.rpm"
    not_rpm.write_bytes(b"this is not an rpm")
    with pytest.raises(CheckError, match=r"Cannot read built package"):
        postbuild.check_packages([not_rpm], EXPECT)
    assert str(Requirement("drbd-utils", postbuild.RPMSENSE_EQUAL, "8.4.1")) == "drbd-utils = 8.4.1"


GE = postbuild.RPMSENSE_GREATER | postbuild.RPMSENSE_EQUAL
MODULE_ONLY = Expectation(
    kernel_release="4.19.0+1",
    arch="x86_64",
    version="8.4.11",
    packages=frozenset({"drbd", "drbd-utils", "drbd-km-4.19.0+1"}),
    module_package="drbd-km-4.19.0+1",
    userland_version="9.22.0",
    exact_userland=False,
    kernel_package=(KernelRequirement("kernel", "=", "4.19.19-7.0.15.1.xcpng8.2"),),
)


def module_only_build(
    utils: str = "9.22.0", requires: tuple[Requirement, ...] | None = None
) -> list[PackageInfo]:
    def pkg(name: str, version: str, **more: object) -> PackageInfo:
        return package(name, version=version, arch="x86_64", **more)

    return [
        pkg("drbd", utils),
        pkg("drbd-utils", utils),
        pkg(
            "drbd-km-4.19.0+1",
            "8.4.11",
            requires=requires
            or (
                Requirement("drbd-utils", GE, "8.9.2"),
                Requirement("kernel", postbuild.RPMSENSE_EQUAL, "4.19.19-7.0.15.1.xcpng8.2"),
            ),
            modules={"/lib/modules/4.19.0+1/updates/drbd.ko": "4.19.0+1 SMP mod_unload "},
        ),
    ]


def test_a_module_only_build_with_a_newer_drbd_utils_has_no_problems() -> None:
    assert postbuild.problems(module_only_build(), MODULE_ONLY) == []


def test_the_paired_drbd_utils_must_satisfy_the_module_s_requirement() -> None:
    too_old = postbuild.problems(module_only_build(utils="8.9.1"), MODULE_ONLY)
    # Its own version is checked against the pairing first, then the range.
    assert any("requires drbd-utils >= 8.9.2" in p and "8.9.1-1" in p for p in too_old)
    assert any("utils: in its spec entry" in p for p in too_old)


def test_a_module_without_a_versioned_userland_requirement_fails() -> None:
    unversioned = (
        Requirement("drbd-utils"),
        Requirement("kernel", postbuild.RPMSENSE_EQUAL, "4.19.19-7.0.15.1.xcpng8.2"),
    )
    found = postbuild.problems(module_only_build(requires=unversioned), MODULE_ONLY)
    assert any("must require a version of drbd-utils" in p for p in found)


@pytest.mark.parametrize(
    "kernel",
    [
        Requirement("kernel"),  # any kernel: the spec's default
        Requirement("kernel", GE, "4.19.19-7.0.15.1.xcpng8.2"),  # a range, not this one
        Requirement("kernel", postbuild.RPMSENSE_EQUAL, "4.19.19-7.0.14.1.xcpng8.2"),  # another
    ],
)
def test_the_module_must_require_exactly_the_dom0_kernel_it_was_built_for(
    kernel: Requirement,
) -> None:
    requires = (Requirement("drbd-utils", GE, "8.9.2"), kernel)
    found = postbuild.problems(module_only_build(requires=requires), MODULE_ONLY)
    assert found == [
        "drbd-km-4.19.0+1-8.4.1-1.i686.rpm: must require kernel = 4.19.19-7.0.15.1.xcpng8.2 "
        "(the dom0 kernel it was built for, so that yum never installs it beside another), "
        f"but requires {kernel}"
    ]


VENDOR_STYLE = dataclasses.replace(
    MODULE_ONLY,
    kernel_package=(
        KernelRequirement("kernel-uname-r", "=", "4.19.0+1"),
        KernelRequirement("kernel", ">=", "4.19.19-7.0.15.1.xcpng8.2"),
    ),
)


def test_a_uname_r_target_s_module_requires_the_abi_name_and_no_older_kernel() -> None:
    vendor = (
        Requirement("drbd-utils", GE, "8.9.2"),
        Requirement("kernel-uname-r", postbuild.RPMSENSE_EQUAL, "4.19.0+1"),
        Requirement("kernel", GE, "4.19.19-7.0.15.1.xcpng8.2"),
    )
    assert postbuild.problems(module_only_build(requires=vendor), VENDOR_STYLE) == []
    # The exact requirement of XCP 1.x would hold every in-place kernel update back.
    found = postbuild.problems(module_only_build(), VENDOR_STYLE)
    assert len(found) == 2
    assert "must require kernel-uname-r = 4.19.0+1 (the kernel's ABI name" in found[0]
    assert "must require kernel >= 4.19.19-7.0.15.1.xcpng8.2 (never a kernel older" in found[1]
    assert found[1].endswith("but requires kernel = 4.19.19-7.0.15.1.xcpng8.2")


@pytest.mark.parametrize(
    ("provided", "flags", "wanted", "expected"),
    [
        ("9.22.0-1", GE, "8.9.2", True),
        ("8.9.2-1", GE, "8.9.2", True),
        ("8.9.1-7", GE, "8.9.2", False),
        ("9.27.0-1", GE, "9.27.0", True),
        ("9.22.0-1", GE, "9.27.0", False),
        ("9.22.0-1", postbuild.RPMSENSE_EQUAL, "9.22.0-1", True),
        ("9.22.0-2", postbuild.RPMSENSE_EQUAL, "9.22.0-1", False),
        ("9.22.0-2", postbuild.RPMSENSE_LESS, "9.22.1", True),
    ],
)
def test_satisfies_follows_rpm_version_rules(
    provided: str, flags: int, wanted: str, expected: bool
) -> None:
    assert postbuild.satisfies(provided, Requirement("drbd-utils", flags, wanted)) is expected


def test_a_per_kernel_module_must_carry_its_kernel_devel_in_its_release() -> None:
    expect = dataclasses.replace(EXPECT, release_suffix=".k2.6.32.12_0.7.1")
    suffixed = replace(
        good_build(), dataclasses.replace(good_build()[-1], release="1.k2.6.32.12_0.7.1")
    )
    assert postbuild.problems(suffixed, expect) == []
    assert postbuild.problems(good_build(), expect) == [
        f"{KM}-8.4.1-1.i686.rpm: release 1 does not end with .k2.6.32.12_0.7.1, so the "
        "packages for two kernel-devel releases with one uname -r would have one "
        "name-version-release"
    ]


ORC_KERNEL = postbuild.KernelFacts(
    orc=True, compiler="4.8.5", compiler_record="CONFIG_GCC_VERSION=40805"
)


def _with_facts(facts: postbuild.ModuleFacts) -> list[PackageInfo]:
    packages = good_build()
    module = packages[-1]
    return [*packages[:-1], dataclasses.replace(module, module_facts={MODULE: facts})]


def test_a_module_without_orc_tables_for_an_orc_kernel_is_refused() -> None:
    expect = dataclasses.replace(EXPECT, kernel=ORC_KERNEL)
    fine = postbuild.ModuleFacts(orc=True, compilers=("4.8.5",))
    assert postbuild.problems(_with_facts(fine), expect) == []
    (problem,) = postbuild.problems(_with_facts(dataclasses.replace(fine, orc=False)), expect)
    assert f"{MODULE} has no ORC unwind tables (.orc_unwind)" in problem
    assert "libelf headers (elfutils-libelf-devel)" in problem
    # A kernel without ORC takes a module without the tables.
    plain = dataclasses.replace(EXPECT, kernel=dataclasses.replace(ORC_KERNEL, orc=False))
    assert postbuild.problems(_with_facts(dataclasses.replace(fine, orc=False)), plain) == []


def test_a_module_built_by_another_compiler_major_than_its_kernel_is_refused() -> None:
    expect = dataclasses.replace(EXPECT, kernel=ORC_KERNEL)
    (problem,) = postbuild.problems(
        _with_facts(postbuild.ModuleFacts(orc=True, compilers=("12.2.0",))), expect
    )
    assert f"{MODULE} was built by gcc 12.2.0, but the kernel by gcc 4.8.5" in problem
    assert "(CONFIG_GCC_VERSION=40805)" in problem
    # Another minor of the same major is the same compiler generation.
    same = postbuild.ModuleFacts(orc=True, compilers=("4.8.3",))
    assert postbuild.problems(_with_facts(same), expect) == []
    # A tree with no compiler record: nothing to compare with.
    unknown = dataclasses.replace(expect, kernel=dataclasses.replace(ORC_KERNEL, compiler=None))
    other = postbuild.ModuleFacts(orc=True, compilers=("12.2.0",))
    assert postbuild.problems(_with_facts(other), unknown) == []


@pytest.mark.parametrize(
    ("files", "orc", "compiler", "record"),
    [
        (
            {".config": "CONFIG_UNWINDER_ORC=y\nCONFIG_GCC_VERSION=40805\n"},
            True, "4.8.5", "CONFIG_GCC_VERSION=40805",
        ),
        (
            {
                "include/config/auto.conf": 'CONFIG_CC_VERSION_TEXT="gcc (Debian 12.2.0-14) '
                '12.2.0"\nCONFIG_GCC_VERSION=120200\n'
            },
            False, "12.2.0", "CONFIG_GCC_VERSION=120200",
        ),
        (
            {".config": 'CONFIG_CC_VERSION_TEXT="gcc (GCC) 11.2.1 20220127"\n'},
            False, "11.2.1", 'CONFIG_CC_VERSION_TEXT=gcc (GCC) 11.2.1 20220127',
        ),
        (
            {
                ".config": "CONFIG_X86_32=y\n",
                "include/generated/compile.h": '#define LINUX_COMPILER "gcc version 4.1.2 '
                '20080704 (Red Hat 4.1.2-48)"\n',
            },
            False, "4.1.2", "include/generated/compile.h",
        ),
        ({".config": "CONFIG_X86_32=y\n"}, False, None, "assumed the build image's compiler"),
    ],
)  # fmt: skip
def test_the_kernel_tree_says_how_it_was_built(
    tmp_path: Path, files: dict[str, str], orc: bool, compiler: str | None, record: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    facts = postbuild.kernel_facts(tmp_path)
    assert (facts.orc, facts.compiler) == (orc, compiler)
    assert record in facts.compiler_record


def test_a_real_module_object_names_its_compiler_and_orc_tables(tmp_path: Path) -> None:
    gcc = "gcc"  # installed by .ci/run
    source = tmp_path / "m.c"
    source.write_text("int f(void) { return 1; }\n")
    obj = tmp_path / "m.o"
    subprocess.run([gcc, "-c", "-o", str(obj), str(source)], check=True)
    version = subprocess.run(
        [gcc, "-dumpfullversion"], capture_output=True, text=True, check=True
    ).stdout.strip()
    elf = obj.read_bytes()
    assert postbuild._comment_compilers(elf) == (version,)
    assert not postbuild._has_section(elf, ".orc_unwind")
    assert postbuild._has_section(elf, ".comment")


KVER = "4.19.0+1"
KMOD = f"kmod-drbd-9.2.18_{KVER.replace('-', '_')}"


def _kmod(lines: tuple[str, ...]) -> PackageInfo:
    return package(
        "kmod-drbd",
        modules={
            f"/lib/modules/{KVER}/extra/drbd/drbd.ko": f"{KVER} SMP mod_unload ",
            f"/lib/modules/{KVER}/extra/drbd/drbd_transport_tcp.ko": f"{KVER} SMP mod_unload ",
        },
        depmod_lines=lines,
    )


@pytest.mark.parametrize(
    ("lines", "missing"),
    [
        (
            (
                "override drbd * weak-updates/drbd",
                f"override drbd {KVER} extra/drbd",
                f"override drbd_transport_tcp {KVER} extra/drbd",
            ),
            [],
        ),
        (("override drbd * extra/drbd", "override drbd_transport_tcp * extra/drbd/"), []),
        ((f"override drbd {KVER} extra/drbd",), ["drbd_transport_tcp"]),
        (("override drbd 6.1.0-1-amd64 extra/drbd", "# override drbd_transport_tcp"), [
            "drbd", "drbd_transport_tcp",
        ]),
        ((), ["drbd", "drbd_transport_tcp"]),
    ],
)  # fmt: skip
def test_a_kmod_package_must_put_its_modules_before_the_kernels_own(
    lines: tuple[str, ...], missing: list[str]
) -> None:
    found = postbuild._override_problems(_kmod(lines), KVER)
    assert [p.split("'override ")[1].split()[0] for p in found] == missing
    for problem in found:
        assert "XCP-ng's kernel has DRBD 8.4 in-tree" in problem


DRBD_PREUN = """\
lsmod | grep drbd > /dev/null 2>&1
if [ $? -eq 0 ]; then
    rmmod drbd
fi
"""


def test_a_preun_that_unloads_the_module_on_upgrade_is_refused() -> None:
    km = next(p for p in good_build() if p.name == KM)
    found = postbuild.problems(
        replace(good_build(), dataclasses.replace(km, preun=DRBD_PREUN)), EXPECT
    )
    assert found == [
        f"{km.file_name}: its %preun runs 'rmmod drbd' on every removal, upgrades included: on "
        "a running host the upgrade fails (the module is in use) or unloads it under DRBD"
    ]


@pytest.mark.parametrize("family", [DrbdFamily.V83, DrbdFamily.V84])
def test_drbd_km_spec_s_preun_unloads_only_on_removal(tmp_path: Path, family: DrbdFamily) -> None:
    """The recipe's sed on DRBD's own %preun, then the scriptlet run as rpm runs it: with 1
    (an upgrade: one instance left) and 0 (the package removed)."""
    spec = tmp_path / "drbd-km.spec"
    spec.write_text("%preun %{krelver}\n" + DRBD_PREUN + "\n%post %{krelver}\n")
    job = recipes.Job(source=recipes.Source(file_name="d.tar.gz", top_dir="d", version="8.4.1"),
                      arch="x86_64", kernel_release="4.19.0+1", kdir="/k")  # fmt: skip
    recipe = recipes.recipe_for(family)
    (sed,) = [c for c in recipe.module_commands(job) if c[0] == "sed"]
    subprocess.run([*sed[:-1], str(spec)], check=True)
    preun = spec.read_text().split("%preun %{krelver}\n")[1].split("\n%post")[0]
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "lsmod").write_text("#!/bin/sh\necho 'drbd 1 1'\n")
    (tools / "rmmod").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/rmmod; exit 1\n')
    for tool in tools.iterdir():
        tool.chmod(0o755)
    env = {"PATH": f"{tools}:/usr/bin:/bin"}
    for instances in ("1", "0"):
        ran = subprocess.run(["sh", "-c", preun, "preun", instances], env=env, check=False)
        assert ran.returncode == 0  # an rmmod that fails (in use) never fails the removal
    assert (tmp_path / "rmmod").read_text() == "drbd\n"  # once: on the removal only
    assert postbuild.problems(
        replace(good_build(), package(KM, requires=good_build()[-1].requires,
                                      modules=good_build()[-1].modules, preun=preun)),
        EXPECT,
    ) == []  # fmt: skip
