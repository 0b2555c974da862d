"""A hostile mirror of a yum kernel source on 127.0.0.1, through the real command line.

XCP-ng's mirrors are plain HTTP; the vendor signs ``repomd.xml`` and every package with one
key. Each case serves what something on the path could serve instead and checks that the
tool says which key signed and which was expected, extracts nothing, trusts nothing and
leaves the state it had; the honest mirror, signed by the key the target names, passes.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import rpmfactory
from tests.faults.harness import Result, builder
from tests.support.http import ServerState, serve
from tests.support.kernelrpm import build_kernel_devel_rpm, installed_headers
from tests.support.vendorrepo import (
    Vendor,
    key_yaml,
    make_vendor,
    signed_repository,
    yum_target_spec,
)

pytestmark = pytest.mark.integration

RELEASE = installed_headers().release  # uname -r of the stand-in kernel-devel


@dataclass(frozen=True)
class Keys:
    vendor: Vendor  # the key the target names
    other: Vendor  # anybody else's
    devel: Path  # the vendor's kernel-devel (laid out as XCP-ng's), unsigned
    other_devel: Path  # kernel-devel of an older version-release, unsigned


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    work = tmp_path_factory.mktemp("vendor-keys")
    vendor, other = make_vendor(work / "vendor"), make_vendor(work / "other", "Someone Else")
    devel = build_kernel_devel_rpm(work / "devel", name="kernel-devel", layout="vendor")
    older = rpmfactory.build_rpms(
        work / "older", ["kernel-devel"], version="1.0", release="1", arch="x86_64"
    )[0]
    yield Keys(vendor, other, devel, older)
    vendor.stop()
    other.stop()


@dataclass
class Mirror:
    root: Path  # what is served
    state: ServerState
    url: str
    specs: Path
    cache: Path

    def run(self) -> Result:
        return builder(
            "kernel", "--xcp", "ng", "--specs", self.specs, "--cache", self.cache,
            env={"XDG_STATE_HOME": str(self.cache.parent / "state")},
        )  # fmt: skip

    def fetched(self, name: str) -> bool:
        return any(path.endswith("/" + name) for path, _ in self.state.requests)

    def nothing_trusted(self) -> None:
        assert not list(self.cache.glob("kernels/*/tree.json")), "a tree was extracted"
        assert not (self.specs / "checksums.lock").exists(), "a lock was written"


@pytest.fixture
def mirror(tmp_path: Path, keys: Keys) -> Iterator[Mirror]:
    root = tmp_path / "www"
    with serve(root) as (url, state):
        specs = yum_target_spec(
            tmp_path / "specs", repos=[f"{url}/repo/"], release=RELEASE,
            trust=key_yaml(keys.vendor, "        "),
        )  # fmt: skip
        yield Mirror(root / "repo", state, url, specs, tmp_path / "cache")


def test_the_honest_mirror_signed_by_the_named_key_passes(mirror: Mirror, keys: Keys) -> None:
    signed_repository(mirror.root, [keys.devel], keys.vendor)
    result = mirror.run()
    assert result.returncode == 0, result
    assert mirror.fetched(keys.devel.name)
    assert list(mirror.cache.glob("kernels/*/tree.json"))


def test_a_repository_signed_by_another_key_is_refused_before_its_metadata_is_read(
    mirror: Mirror, keys: Keys
) -> None:
    signed_repository(mirror.root, [keys.devel], keys.other)
    result = mirror.run()
    assert result.returncode == 12, result
    assert f"not signed by the vendor key {keys.vendor.fingerprint}" in result.stderr
    assert f"signed by {keys.other.fingerprint[-16:]}" in result.stderr
    assert not mirror.fetched("primary.xml.gz") and not mirror.fetched(keys.devel.name)
    mirror.nothing_trusted()
    dry = builder(
        "build", "--xcp", "ng", "--dry-run", "--specs", mirror.specs, "--cache", mirror.cache,
        "--artifacts", mirror.cache.parent / "artifacts",
    )  # fmt: skip
    assert dry.returncode == 12, dry
    assert not mirror.fetched(keys.devel.name)


def test_a_repository_without_repomd_asc_is_refused(mirror: Mirror, keys: Keys) -> None:
    signed_repository(mirror.root, [keys.devel], keys.vendor)
    (mirror.root / "repodata" / "repomd.xml.asc").unlink()
    result = mirror.run()
    assert result.returncode == 12, result
    assert "repodata/repomd.xml has no signature the vendor key could vouch for" in result.stderr
    assert not mirror.fetched(keys.devel.name)
    mirror.nothing_trusted()


def test_a_swapped_primary_under_a_valid_signature_is_refused(
    mirror: Mirror, keys: Keys, tmp_path: Path
) -> None:
    signed_repository(mirror.root, [keys.devel], keys.vendor)
    other = signed_repository(tmp_path / "other", [keys.other_devel], keys.vendor)
    for primary in (mirror.root / "repodata").glob("*-primary.xml*"):
        # the other repository's primary under this one's name
        replacement = next((other / "repodata").glob("*-primary.xml*"))
        shutil.copy(replacement, primary)
    result = mirror.run()
    assert result.returncode == 4, result  # its sha256 is not the one repomd.xml signs
    assert "primary metadata" in result.stderr
    assert not mirror.fetched(keys.other_devel.name) and not mirror.fetched(keys.devel.name)
    mirror.nothing_trusted()


@pytest.mark.parametrize("signer", ["other", "none"])
def test_a_kernel_devel_not_signed_by_the_vendor_is_deleted_unextracted(
    mirror: Mirror, keys: Keys, signer: str
) -> None:
    """The metadata is the vendor's; the package is re-signed by another key, or unsigned."""
    signed_repository(mirror.root, [keys.devel], None)
    if signer == "other":
        keys.other.sign_rpms(mirror.root / keys.devel.name)
    subprocess.run(["createrepo_c", "--quiet", str(mirror.root)], check=True)
    keys.vendor.sign_metadata(mirror.root)
    result = mirror.run()
    assert result.returncode == 12, result
    expected = f"expected {keys.vendor.fingerprint}, key ID {keys.vendor.fingerprint[-8:].lower()}"
    assert expected in result.stderr
    if signer == "other":
        assert f"signed by key ID {keys.other.fingerprint[-8:].lower()}" in result.stderr
    else:
        assert "it is not signed" in result.stderr
    assert "the download was deleted and nothing was extracted" in result.stderr
    assert not list(mirror.cache.rglob(keys.devel.name))
    mirror.nothing_trusted()


def test_a_key_file_that_is_not_the_pinned_key_is_a_configuration_error(
    mirror: Mirror, keys: Keys
) -> None:
    signed_repository(mirror.root, [keys.devel], keys.vendor)
    text = (mirror.specs / "ng.yaml").read_text()
    swapped = text.replace(str(keys.vendor.public_key), str(keys.other.public_key))
    (mirror.specs / "ng.yaml").write_text(swapped)
    result = mirror.run()
    assert result.returncode == 2, result
    assert f"holds {keys.other.fingerprint}, not only the pinned key" in result.stderr
    assert not mirror.state.requests  # nothing asked of the mirror
    mirror.nothing_trusted()


def test_the_built_in_xcp_ng_targets_refuse_a_key_file_that_is_not_the_pin(
    tmp_path: Path, keys: Keys
) -> None:
    """A copy of the built-in registry whose RPM-GPG-KEY-xcpng was replaced: refused before
    any repository (the vendor's own, on the internet) is asked."""
    specs = tmp_path / "builtin"
    shutil.copytree(REGISTRY, specs)
    shutil.copy(keys.other.public_key, specs / "keys" / "RPM-GPG-KEY-xcpng")
    for target in ("8.2", "8.3"):
        result = builder(
            "build", "--xcp", target, "--specs", specs, "--cache", tmp_path / "cache",
            "--artifacts", tmp_path / "artifacts",
            env={"XDG_STATE_HOME": str(tmp_path / "state")},
        )  # fmt: skip
        assert result.returncode == 2, result
        assert "34AC2EB68248FED6D076838ACD75783A3FD3AC9E" in result.stderr
        assert keys.other.fingerprint in result.stderr


REGISTRY = Path(__file__).resolve().parents[2] / "specs"


def serve_revision(mirror: Mirror, rpms: list[Path], vendor: Vendor, revision: int) -> None:
    """The repository with ``rpms`` as the vendor publishes it at ``revision``."""
    shutil.rmtree(mirror.root, ignore_errors=True)
    mirror.root.mkdir(parents=True)
    for rpm in rpms:
        shutil.copy2(rpm, mirror.root)
        vendor.sign_rpms(mirror.root / rpm.name)
    subprocess.run(
        ["createrepo_c", "--quiet", "--revision", str(revision), str(mirror.root)], check=True
    )
    vendor.sign_metadata(mirror.root)


def test_an_older_correctly_signed_repomd_replayed_is_refused(mirror: Mirror, keys: Keys) -> None:
    serve_revision(mirror, [keys.devel], keys.vendor, 20)
    assert mirror.run().returncode == 0
    state = mirror.cache.parent / "state" / "xcp-drbd-builder" / "repositories.json"
    kept = state.read_bytes()
    serve_revision(mirror, [keys.devel], keys.vendor, 19)  # yesterday's, still validly signed
    mirror.state.requests.clear()
    result = mirror.run()
    assert result.returncode == 12, result
    assert "signed but older than the one seen on" in result.stderr
    assert "revision 19" in result.stderr and "against revision 20" in result.stderr
    assert not mirror.fetched("primary.xml.gz") and not mirror.fetched(keys.devel.name)
    assert state.read_bytes() == kept  # the previous good state intact


def test_a_kernel_devel_seen_before_with_other_bytes_is_refused(
    mirror: Mirror, keys: Keys, tmp_path: Path
) -> None:
    serve_revision(mirror, [keys.devel], keys.vendor, 20)
    assert mirror.run().returncode == 0
    # The same name-version-release, rebuilt: other bytes, signed and listed by the vendor key.
    rebuilt = tmp_path / "rebuilt" / keys.devel.name
    rebuilt.parent.mkdir()
    shutil.copy2(keys.devel, rebuilt)
    keys.vendor.sign_rpms(rebuilt)  # rpm 4.18 signs in place: a new signature, new bytes
    subprocess.run(["rpmsign", "--delsign", str(rebuilt)], check=True, capture_output=True)
    keys.vendor.sign_rpms(rebuilt)
    assert rebuilt.read_bytes() != (mirror.root / keys.devel.name).read_bytes()
    serve_revision(mirror, [rebuilt], keys.vendor, 21)
    mirror.state.requests.clear()
    result = mirror.run()
    assert result.returncode == 12, result
    assert f"{keys.devel.name.removesuffix('.rpm')} was verified on" in result.stderr
    assert "never rebuilds a release under the same name" in result.stderr
    assert not mirror.fetched(keys.devel.name)


def test_a_signed_package_of_another_name_under_the_kernel_devel_s_name_is_refused(
    mirror: Mirror, keys: Keys, tmp_path: Path
) -> None:
    """The vendor signed it, but the signed metadata names other bytes for that file."""
    signed_repository(mirror.root, [keys.devel], keys.vendor)
    other = rpmfactory.build_rpms(tmp_path / "xapi", ["xapi-core"], arch="x86_64")[0]
    keys.vendor.sign_rpms(other)
    shutil.copy(other, mirror.root / keys.devel.name)
    result = mirror.run()
    assert result.returncode == 4, result
    assert "sha256" in result.stderr
    mirror.nothing_trusted()


def test_build_dry_run_of_xcp_ng_8_3_against_a_copy_signed_by_another_key(
    mirror: Mirror, keys: Keys, tmp_path: Path
) -> None:
    """The built-in 8.3 target, its repositories pointed at a local copy: only XCP-ng's key
    can sign for it, so the copy is refused before any kernel-devel is downloaded."""
    signed_repository(mirror.root, [keys.devel], keys.other)
    specs = tmp_path / "builtin"
    shutil.copytree(REGISTRY, specs)
    targets = specs / "targets.yaml"
    text = targets.read_text()
    for repo in ("base", "updates"):
        text = text.replace(
            f"https://updates.xcp-ng.org/8/8.3/{repo}/x86_64/", f"{mirror.url}/repo/"
        )
    targets.write_text(text)
    result = builder(
        "build", "--xcp", "8.3", "--dry-run", "--specs", specs, "--cache", mirror.cache,
        "--artifacts", tmp_path / "artifacts", env={"XDG_STATE_HOME": str(tmp_path / "state")},
    )  # fmt: skip
    assert result.returncode == 12, result
    assert "not signed by the vendor key 34AC2EB68248FED6D076838ACD75783A3FD3AC9E" in result.stderr
    assert not mirror.fetched(keys.devel.name)
