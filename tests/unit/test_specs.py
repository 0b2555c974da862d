from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import ConfigError
from builder.specs import Consumer, DrbdFamily, SourceKind, load_registry


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
    assert lab.lock_file == tmp_path / "specs" / "checksums.lock"
    assert "xcp-1.5" in registry.targets


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
        "drbd:\n  9.9.9:\n    family: '8.3'\n    url: https://x/d.tgz\n    sha256: abc\n",
    )
    with pytest.raises(ConfigError, match=r"drbd\.9\.9\.9\.sha256"):
        load_registry([tmp_path / "a"])
    good = "drbd:\n  9.9.9:\n    family: '8.3'\n    url: https://x/d.tgz\n"
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
