from __future__ import annotations

from pathlib import Path

import pytest

from builder import resources
from builder.errors import ConfigError
from builder.inputs.checksums import lock_for
from builder.registry import load_registry
from builder.specs import Consumer, DrbdFamily, SourceKind


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


TARGET = """
targets:
  lab:
    name: Lab dom0
    arch: x86_64
    kernel:
      package: kernel-devel
      release: 6.1.0-1-amd64
      source:
        iso: file:///srv/lab.iso
        path: domain0/RPMS/x86_64/kernel-devel.rpm
    container:
      family: centos7-x86_64
      context: ../ctx
    consumer: el7
"""


def test_builtin_registry_has_the_documented_targets_and_versions() -> None:
    registry = load_registry()
    xcp15 = registry.target("1.5")
    assert xcp15.id == "xcp-1.5"
    assert xcp15.kernel_release == "2.6.32.12-0.7.1.xs1.4.90.530.170661xen"
    assert xcp15.kernel_source.kind is SourceKind.ISO
    assert xcp15.kernel_source.path is not None
    assert xcp15.kernel_source.path.startswith("domain0/RPMS/i686/kernel-xen-devel-")
    assert xcp15.consumer is Consumer.EL5
    assert registry.target("xcp-1.6").kernel_source.kind is SourceKind.RPM
    assert registry.target("xcp-ng-8.2").kernel_source.kind is SourceKind.YUM
    assert registry.target("xcp-ng-8.3").consumer is Consumer.EL7
    assert registry.target("xenserver-6.2").arch == "i686"
    assert registry.drbd_version("8.3.16").family is DrbdFamily.V83
    for minor in range(5):
        assert registry.drbd_version(f"8.4.{minor}").family is DrbdFamily.V84_EARLY


def test_unknown_target_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        load_registry().target("9.9")
    assert "xcp-1.5" in str(caught.value)
    assert "xcp-ng-8.3" in str(caught.value)


def test_unknown_drbd_version_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"8\.4\.1") as caught:
        load_registry().drbd_version("8.9.9")
    assert "Unknown DRBD version" in str(caught.value)


@pytest.mark.parametrize("name", ["1.5; rm -rf /", "$(reboot)", "8.4.1`id`", "a b", "../x", ""])
def test_shell_metacharacters_are_rejected(name: str) -> None:
    registry = load_registry()
    with pytest.raises(ConfigError, match="only letters, digits"):
        registry.target(name)
    with pytest.raises(ConfigError, match="only letters, digits"):
        registry.drbd_version(name)


def test_extra_spec_dir_adds_targets_and_resolves_context(tmp_path: Path) -> None:
    write(tmp_path / "specs", "lab.yaml", TARGET)
    registry = load_registry([tmp_path / "specs"])
    lab = registry.target("lab")
    assert lab.build_context == (tmp_path / "ctx").resolve()
    lock = lock_for(lab.spec_file, tmp_path / "state")
    assert lock.path == tmp_path / "specs" / "checksums.lock"  # the user's, beside the spec
    assert lock.shipped == ()
    builtin = lock_for(registry.target("xcp-1.5").spec_file, tmp_path / "state")
    assert builtin.path == tmp_path / "state" / "checksums.lock"  # never into the package
    assert builtin.shipped == (resources.SHIPPED_LOCK,)


def test_later_spec_dir_replaces_a_builtin_target(tmp_path: Path) -> None:
    text = TARGET.replace("  lab:", "  xcp-1.5:")
    write(tmp_path, "override.yaml", text)
    assert load_registry([tmp_path]).target("xcp-1.5").name == "Lab dom0"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("      package: kernel-devel\n", ""), "targets.lab.kernel.package: is required"),
        (("consumer: el7", "consumer: el6"), "targets.lab.consumer: 'el6' is not one of"),
        (("arch: x86_64", "arch: x86 64"), "targets.lab.arch: 'x86 64' is not valid"),
        (("iso: file:///srv/lab.iso", "iso: ftp://x/lab.iso"), "source.iso: 'ftp://x/lab.iso'"),
        (
            ("    consumer: el7", "    consumer: el7\n    colour: red"),
            "targets.lab.colour: unknown key",
        ),
        (("path: domain0", "path: ../domain0"), "source.path: must not contain '..'"),
        (
            (
                "        iso: file:///srv/lab.iso\n",
                "        rpm: file:///x.rpm\n        iso: file:///y\n",
            ),
            "exactly one of the keys iso, rpm or yum",
        ),
    ],
)
def test_invalid_spec_names_file_key_and_problem(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    old, new = change
    assert old in TARGET
    spec = write(tmp_path, "bad.yaml", TARGET.replace(old, new))
    with pytest.raises(ConfigError) as caught:
        load_registry([tmp_path])
    assert str(spec) in str(caught.value)
    assert message in str(caught.value)


def test_bad_sha256_and_duplicate_definitions(tmp_path: Path) -> None:
    write(
        tmp_path / "a",
        "v.yaml",
        "drbd:\n  8.3.99:\n    family: '8.3'\n    url: https://x/d.tgz\n    sha256: abc\n",
    )
    with pytest.raises(ConfigError, match=r"drbd\.8\.3\.99\.sha256"):
        load_registry([tmp_path / "a"])
    good = "drbd:\n  8.3.99:\n    family: '8.3'\n    url: https://x/d.tgz\n"
    write(tmp_path / "b", "one.yaml", good)
    write(tmp_path / "b", "two.yaml", good)
    with pytest.raises(ConfigError, match="also defined in"):
        load_registry([tmp_path / "b"])


def test_not_yaml_and_missing_dir(tmp_path: Path) -> None:
    write(tmp_path, "broken.yaml", "targets: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_registry([tmp_path])
    with pytest.raises(ConfigError, match="does not exist"):
        load_registry([tmp_path / "nope"])


def test_builtin_registry_pairs_the_module_only_releases_with_drbd_utils() -> None:
    registry = load_registry()
    late = registry.drbd_version("8.4.11")
    assert late.family is DrbdFamily.V84
    assert late.tarball_name == "drbd-8.4.11-1.tar.gz"
    assert late.utils is not None and late.utils.version == "9.22.0"
    nine = registry.drbd_version("9.2.19")
    assert nine.family is DrbdFamily.V9
    assert nine.utils is not None and nine.utils.version == "9.34.0"
    assert registry.drbd_version("8.4.1").utils is None
    for target in ("xcp-ng-8.2", "xcp-ng-8.3"):
        assert registry.target(target).drbd_versions == ("9.2.18",)
        assert registry.target(target).checked["9.2.18"].startswith("built 2026-12-04")
    assert registry.target("1.5").drbd_versions == ("8.4.1", "8.3.16")


UTILS = """
drbd-utils:
  9.22.0:
    url: https://example.org/drbd-utils-9.22.0.tar.gz
"""


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "  8.4.11:\n    family: '8.4'\n    url: https://x/d.tgz\n",
            "drbd.8.4.11.utils: is required",
        ),
        (
            "  8.4.11:\n    family: '8.4'\n    url: https://x/d.tgz\n    utils: 9.99.0\n",
            "drbd.8.4.11.utils: drbd-utils 9.99.0 is not defined (drbd-utils versions: 9.22.0,",
        ),
        (
            "  8.4.1:\n    family: 8.4-early\n    url: https://x/d.tgz\n    utils: 9.22.0\n",
            "drbd.8.4.1.utils: is not used by family 8.4-early",
        ),
        ("  8.4.11:\n    family: 8.4-early\n    url: https://x/d.tgz\n", "belongs to family 8.4"),
        ("  9.2.19:\n    family: '8.4'\n    url: https://x/d.tgz\n", "belongs to family 9,"),
        (
            "  8.4.1:\n    family: 8.4-early\n    url: https://x/d.tgz\n"
            "    patches: [nope.patch]\n",
            "drbd.8.4.1.patches[0]: 'nope.patch' is not a file",
        ),
        (
            "  8.4.1:\n    family: 8.4-early\n    url: https://x/d.tgz\n    make: {'A B': 1}\n",
            "drbd.8.4.1.make.A B: is not a make variable name",
        ),
        (
            '  8.4.1:\n    family: 8.4-early\n    url: https://x/d.tgz\n    cflags: "-O2\\n-g"\n',
            "drbd.8.4.1.cflags",
        ),
    ],
)
def test_drbd_entries_name_their_userland_and_family_correctly(
    tmp_path: Path, entry: str, message: str
) -> None:
    write(tmp_path, "v.yaml", UTILS + "drbd:\n" + entry)
    with pytest.raises(ConfigError) as caught:
        load_registry([tmp_path])
    assert message in str(caught.value)
    assert caught.value.exit_code == 2


def test_adjustments_are_read_with_patches_beside_the_spec_file(tmp_path: Path) -> None:
    write(tmp_path, "01-fcommon.patch", "--- a/x\n+++ b/x\n")
    write(
        tmp_path,
        "v.yaml",
        UTILS
        + TARGET.replace(
            "    consumer: el7\n", "    consumer: el7\n    build:\n      cflags: -O1\n"
        )
        + """drbd:
  8.4.1:
    family: 8.4-early
    url: https://x/drbd-8.4.1.tar.gz
    patches: [01-fcommon.patch]
    configure: [--without-xen]
    rpmbuild: [--without, udev]
    make: {SPAAS: "false"}
    cflags: -O2 -g -fcommon
""",
    )
    registry = load_registry([tmp_path], builtin=False)
    adjust = registry.drbd_version("8.4.1").adjustments
    assert adjust.patches == ((tmp_path / "01-fcommon.patch").resolve(),)
    assert adjust.configure == ("--without-xen",)
    assert adjust.rpmbuild == ("--without", "udev")
    assert adjust.make == (("SPAAS", "false"),)
    combined = adjust + registry.target("lab").adjustments
    assert combined.cflags == "-O2 -g -fcommon -O1"
    assert combined.patches == adjust.patches


def test_a_target_may_only_list_defined_drbd_versions(tmp_path: Path) -> None:
    write(
        tmp_path,
        "t.yaml",
        TARGET.replace("    consumer: el7\n", "    consumer: el7\n    drbd: [7.0.0]\n"),
    )
    with pytest.raises(ConfigError, match=r"targets\.lab\.drbd\[0\]: DRBD 7\.0\.0 is not defined"):
        load_registry([tmp_path])


GOOD_DRBD = 'drbd:\n  "8.4.1":\n    family: 8.4-early\n    url: https://x/d.tgz\n'


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (TARGET.replace("  lab:\n", '  "lab\\n":\n') + GOOD_DRBD, "targets"),
        (TARGET + GOOD_DRBD.replace('"8.4.1"', '"8.4.1\\n"'), "drbd"),
        (TARGET + GOOD_DRBD + '    cflags: "-O2\\n"\n', "drbd.8.4.1.cflags"),
        (TARGET.replace("arch: x86_64", 'arch: "x86_64\\n"') + GOOD_DRBD, "targets.lab.arch"),
        (
            TARGET.replace("name: Lab dom0", 'name: "Lab\\n[evil]\\nbaseurl=x"') + GOOD_DRBD,
            "targets.lab.name",
        ),
    ],
)
def test_a_trailing_newline_is_no_safe_value(tmp_path: Path, text: str, where: str) -> None:
    """`$` matches before a final newline: every value must match as a whole."""
    write(tmp_path, "good.yaml", TARGET + GOOD_DRBD)
    load_registry([tmp_path], builtin=False)
    write(tmp_path, "good.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_registry([tmp_path], builtin=False)
    assert where in str(caught.value)


def test_a_spec_file_that_is_not_utf8_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "latin1.yaml").write_bytes("targets:\n  caf\xe9: {}\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8 text") as caught:
        load_registry([tmp_path])
    assert caught.value.exit_code == 2


def test_container_limits_come_from_the_spec_and_the_command_line_wins(tmp_path: Path) -> None:
    from builder.builds.pipeline import BuildOptions
    from builder.inputs.fetch import FetchSettings
    from builder.inputs.kernel import KernelInputs
    from builder.specs import DEFAULT_LIMITS

    text = TARGET.replace(
        "      context: ../ctx\n",
        "      context: ../ctx\n      limits: {memory_mib: 2048, pids: 512, timeout: 600}\n",
    )
    write(tmp_path, "t.yaml", text)
    target = load_registry([tmp_path], builtin=False).target("lab")
    assert (target.limits.memory_mib, target.limits.pids, target.limits.timeout) == (
        2048, 512, 600.0,
    )  # fmt: skip
    assert target.limits.cpus == DEFAULT_LIMITS.cpus
    options = BuildOptions(
        settings=FetchSettings(cache_dir=tmp_path, state_dir=tmp_path / "state"),
        kernel_inputs=KernelInputs(),
        memory_mib=1024,
        cpus=1.5,
    )
    limits = options.limits_for(target)
    assert (limits.memory_mib, limits.pids, limits.cpus, limits.timeout) == (1024, 512, 1.5, 600)
    write(tmp_path, "t.yaml", text.replace("pids: 512", "pids: 2"))
    with pytest.raises(ConfigError, match=r"container\.limits\.pids: 2 is out of range"):
        load_registry([tmp_path], builtin=False)


def test_a_key_with_a_line_break_is_named_with_the_break_escaped(tmp_path: Path) -> None:
    """Printed raw, "lab\\n" would read as the key "lab" followed by a stray line."""
    write(tmp_path, "lab.yaml", TARGET.replace("  lab:\n", '  "lab\\n":\n') + GOOD_DRBD)
    with pytest.raises(ConfigError) as caught:
        load_registry([tmp_path], builtin=False)
    assert str(caught.value).startswith(f"{tmp_path / 'lab.yaml'}: targets.lab\\n: target names")


def test_no_builtin_target_recommends_a_pair_outside_its_kernel_range() -> None:
    registry = load_registry()
    for target in registry.targets.values():
        for version in target.drbd_versions:
            assert registry.drbd_version(version).refusal(target) is None, (target.id, version)
    # The releases whose range is known say it; 8.4.11 is not for XCP-ng 8.x's 4.19.
    late = registry.drbd_version("8.4.11")
    assert late.refusal(registry.target("8.3")) is not None
    assert late.refusal(registry.target("1.5")) is None
    assert registry.drbd_version("9.2.19").refusal(registry.target("1.5")) is not None


def _ranged(kernels: str, release: str = "6.1.0-1-amd64", listed: str = "") -> str:
    target = TARGET.replace("release: 6.1.0-1-amd64", f"release: {release}")
    return (
        UTILS
        + target.replace("    consumer: el7\n", f"    consumer: el7\n{listed}")
        + "drbd:\n  8.4.11:\n    family: '8.4'\n    url: https://x/d.tgz\n    utils: 9.22.0\n"
        + "    kernels:\n"
        + "".join(f"      {line}\n" for line in kernels.splitlines())
    )


@pytest.mark.parametrize(
    ("release", "fits"),
    [
        ("4.17.19", True),
        ("4.18", False),
        ("4.18.0-80.el8.x86_64", False),
        ("4.19.0+1", False),
        ("3.10.0-1160.el7.x86_64", True),
        ("2.6.32.12-0.7.1.xs1.4.90.530.170661xen", False),
        ("2.6.32.43", True),
        ("not-a-version", True),
    ],
)
def test_a_kernel_range_compares_the_release_by_its_version_numbers(
    tmp_path: Path, release: str, fits: bool
) -> None:
    write(tmp_path, "v.yaml", _ranged('from: "2.6.32.13"\nbelow: "4.18"\nwhy: it fails'))
    registry = load_registry([tmp_path], builtin=False)
    kernels = registry.drbd_version("8.4.11").kernels
    assert kernels is not None
    assert kernels.fits(release) is fits


def test_a_target_cannot_list_a_release_outside_its_range(tmp_path: Path) -> None:
    spec = _ranged(
        'below: "4.18"\nwhy: bioset_free is gone\ninstead: DRBD 9.2',
        release="4.19.0+1",
        listed="    drbd: [8.4.11]\n",
    )
    write(tmp_path, "v.yaml", spec)
    with pytest.raises(ConfigError) as caught:
        load_registry([tmp_path], builtin=False)
    message = str(caught.value)
    assert (
        "targets.lab.drbd[0]: DRBD 8.4.11 does not build against lab's kernel 4.19.0+1" in message
    )
    assert "because bioset_free is gone" in message
    assert "Remove it from the target's drbd: list; Use DRBD 9.2." in message


@pytest.mark.parametrize(
    ("kernels", "message"),
    [
        ("why: no bounds", "kernels: needs from:, below: or both"),
        ('below: "4.x"\nwhy: w', "kernels.below: '4.x' is not valid: a kernel version"),
        ('from: "4.18"\nbelow: "4.12"\nwhy: w', "kernels.below: 4.12 is not newer than from: 4.18"),
        ('below: "4.18"', "kernels.why: is required"),
        ('below: "4.18"\nwhy: w\nabove: "5"', "kernels.above: unknown key"),
    ],
)
def test_a_kernel_range_is_checked_where_it_is_read(
    tmp_path: Path, kernels: str, message: str
) -> None:
    write(tmp_path, "v.yaml", _ranged(kernels))
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_registry([tmp_path], builtin=False)


def test_checked_evidence_belongs_to_a_listed_release(tmp_path: Path) -> None:
    listed = "    drbd: [8.4.11]\n    checked:\n      8.4.11: built against a 6.1 tree\n"
    write(tmp_path, "v.yaml", _ranged('below: "7"\nwhy: w', listed=listed))
    target = load_registry([tmp_path], builtin=False).target("lab")
    assert target.checked == {"8.4.11": "built against a 6.1 tree"}
    write(
        tmp_path,
        "v.yaml",
        _ranged('below: "7"\nwhy: w', listed=listed.replace("8.4.11:", "9.2.19:")),
    )
    with pytest.raises(ConfigError, match=r"targets\.lab\.checked\.9\.2\.19: names a DRBD version"):
        load_registry([tmp_path], builtin=False)


def test_kernel_requires_follows_each_vendor_and_refuses_what_rpm_cannot_write(
    tmp_path: Path,
) -> None:
    registry = load_registry()
    xcp, ng = registry.target("1.5"), registry.target("8.3")
    assert [str(r) for r in xcp.kernel_requirements("2.6.32-1")] == ["kernel-xen = 2.6.32-1"]
    assert [str(r) for r in ng.kernel_requirements("4.19.19-8.0.10.1")] == [
        "kernel-uname-r = 4.19.0+1",
        "kernel >= 4.19.19-8.0.10.1",
    ]
    # rpm reads "kernel-uname-r = 6.1.0-1-amd64" as version 6.1.0, release 1-amd64: refused.
    release = "release: 6.1.0-1-amd64"
    write(tmp_path, "lab.yaml", TARGET.replace(release, f"{release}\n      requires: uname-r"))
    cannot = r"kernel\.requires: uname-r cannot be written for kernel release 6\.1\.0-1-amd64"
    with pytest.raises(ConfigError, match=cannot):
        load_registry([tmp_path])
    write(tmp_path, "lab.yaml", TARGET.replace(release, f"{release}\n      requires: newest"))
    with pytest.raises(ConfigError, match=r"requires: 'newest' is not one of: exact, uname-r"):
        load_registry([tmp_path])
