"""`build` for the module-only DRBD families, with a real upstream userland.

The userland is drbd-utils' own release tarball as Debian's source archive holds it
(``drbd-utils_<version>.orig.tar.gz`` is LINBIT's tarball), built by the drbd-utils recipe in
the Red Hat-like stand-in; the module comes from a module-only test source shaped like DRBD
8.4.5 and later.  Debian's dnf then installs the result into an installroot, and refuses the
module package where the installed kernel is of another release.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import rpmfactory
from tests.integration import buildenv
from tests.integration.buildenv import base_system
from tests.integration.conftest import Utils

pytestmark = [pytest.mark.integration, pytest.mark.docker]

REPO = Path(__file__).resolve().parents[2]
VERSION = "8.4.11"


@dataclass(frozen=True)
class Lab(buildenv.StandinInputs):
    tmp: Path
    utils: Utils
    spatch_base: str

    def specs(
        self,
        *,
        version: str = VERSION,
        family: str = "8.4",
        utils: str | None = None,
        with_utils: bool = True,
        tarball: Path | None = None,
        patches: list[Path] | None = None,
        targets: tuple[str, ...] = ("lab",),
    ) -> Path:
        if tarball is None:
            tarball = buildenv.make_module_source(self.tmp, version)
        specs = self.tmp / "specs"
        specs.mkdir(parents=True, exist_ok=True)
        patch_lines = ""
        if patches:
            for patch in patches:
                shutil.copy2(patch, specs / patch.name)
            patch_lines = "    patches: [" + ", ".join(p.name for p in patches) + "]\n"
        utils_line = f"    utils: {utils or self.utils.version}\n" if with_utils else ""
        drbd = f"""drbd:
  {version}:
    family: "{family}"
    url: file://{tarball}
{utils_line}{patch_lines}drbd-utils:
  {self.utils.version}:
    url: file://{self.utils.tarball}
"""
        return self.write_specs(specs, drbd=drbd, targets=targets, spatch_base=self.spatch_base)


@pytest.fixture
def lab(
    tmp_path: Path,
    standin_inputs: buildenv.StandinInputs,
    debian_drbd_utils: Utils,
    spatch_base: str,
) -> Lab:
    inputs = vars(standin_inputs)
    return Lab(**inputs, tmp=tmp_path, utils=debian_drbd_utils, spatch_base=spatch_base)


def build(
    specs: Path, tmp: Path, *targets: str, version: str = VERSION
) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, "-m", "builder", "build", "--xcp", *(targets or ("lab",)),
        "--drbd", version, "--specs", str(specs), "--cache", str(tmp / "cache"),
        "--artifacts", str(tmp / "artifacts"),
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800, check=False)


def query(path: Path, fmt: str) -> str:
    return subprocess.run(
        ["rpm", "-qp", "--qf", fmt, str(path)], capture_output=True, text=True, check=True
    ).stdout


def lines_of(*args: str) -> list[str]:
    return subprocess.run(
        ["rpm", *args], capture_output=True, text=True, check=True
    ).stdout.splitlines()


def by_name(directory: Path) -> dict[str, Path]:
    return {query(p, "%{NAME}"): p for p in directory.glob("*.rpm")}


def describe_patch(tmp: Path) -> Path:
    """A patch in the form a user carries: against the release tarball's top directory."""
    patch = tmp / "describe.patch"
    patch.write_text(
        "--- a/drbd/drbd_main.c\n"
        "+++ b/drbd/drbd_main.c\n"
        "@@ -19,2 +19,2 @@\n"
        ' MODULE_LICENSE("GPL");\n'
        '-MODULE_DESCRIPTION("DRBD-shaped test module");\n'
        '+MODULE_DESCRIPTION("DRBD-shaped test module, patched for dom0");\n'
    )
    return patch


def test_module_only_drbd_pairs_with_a_real_drbd_utils_release(lab: Lab) -> None:
    specs = lab.specs(patches=[describe_patch(lab.tmp)], targets=("lab", "lab-twin"))
    result = build(specs, lab.tmp, "lab", "lab-twin")
    assert result.returncode == 0, result.stderr[-4000:]
    out = lab.tmp / "artifacts" / "lab" / VERSION
    twin = lab.tmp / "artifacts" / "lab-twin" / VERSION

    packages = by_name(out)
    krelver = lab.release.replace("-", "_")
    module = packages[f"drbd-km-{krelver}"]
    assert {"drbd", "drbd-utils", "drbd-xen", "drbd-udev"} <= set(packages)
    assert query(module, "%{VERSION}-%{RELEASE}") == f"{VERSION}-1"
    for name in ("drbd", "drbd-utils"):
        assert query(packages[name], "%{VERSION}") == lab.utils.version
    requires = lines_of("-qp", "--requires", str(module))
    assert "drbd-utils >= 8.9.2" in requires
    kernel_vr = query(lab.rpm, "%{VERSION}-%{RELEASE}")
    assert f"kernel-xen = {kernel_vr}" in requires
    # The real userland offers what the module asks for, and what older modules asked for.
    provides = lines_of("-qp", "--provides", str(packages["drbd-utils"]))
    assert "drbd-utils = 8.4.1" in provides
    assert f"/lib/modules/{lab.release}/updates/drbd.ko" in lines_of("-qpl", str(module))
    utils_files = lines_of("-qpl", str(packages["drbd-utils"]))
    assert "/usr/sbin/drbdadm" in utils_files
    assert "/lib/drbd/drbdadm-84" in utils_files

    # The patch beside the spec file went into the module.
    unpacked = lab.tmp / "unpacked"
    unpacked.mkdir()
    payload = subprocess.run(["rpm2cpio", str(module)], capture_output=True, check=True).stdout
    subprocess.run(["cpio", "-idm", "--quiet"], input=payload, cwd=unpacked, check=True)
    ko = unpacked / f"lib/modules/{lab.release}/updates/drbd.ko"
    description = subprocess.run(
        ["modinfo", "-F", "description", str(ko)], capture_output=True, text=True, check=True
    ).stdout
    assert "patched for dom0" in description

    manifest = json.loads((out / "manifest.json").read_text())
    orig_sha = hashlib.sha256(lab.utils.tarball.read_bytes()).hexdigest()
    assert manifest["inputs"]["utils_source"]["sha256"] == orig_sha
    assert manifest["inputs"]["drbd_source"]["adjustments"]["patches"][0]["file"] == (
        "describe.patch"
    )
    assert "./configure --with-distro=redhat --enable-spec" in manifest["userland"]["commands"]

    # One userland for both targets of the build context: built once (by whichever of the two
    # builds, running at once, came first), the same files.
    twin_manifest = json.loads((twin / "manifest.json").read_text())
    reused = [manifest["userland"]["reused"], twin_manifest["userland"]["reused"]]
    assert sorted(reused) == [False, True]
    assert twin_manifest["userland"]["key"] == manifest["userland"]["key"]
    twin_packages = by_name(twin)
    for name in ("drbd", "drbd-utils", "drbd-xen"):
        assert twin_packages[name].read_bytes() == packages[name].read_bytes()
    assert "userland: reusing" in result.stderr


def dnf(root: Path, work: Path, repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "dnf", "-y", f"--installroot={root}", f"--setopt=cachedir={work / 'cache'}",
            "--setopt=reposdir=/nonexistent", "--releasever=7", "--nogpgcheck",
            "--setopt=install_weak_deps=False", f"--repofrompath=lab,{repo.as_uri()}",
            "--repo=lab", *args,
        ],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_dnf_installs_the_build_only_beside_the_kernel_it_was_built_for(lab: Lab) -> None:
    specs = lab.specs()
    result = build(specs, lab.tmp)
    assert result.returncode == 0, result.stderr[-4000:]
    out = lab.tmp / "artifacts" / "lab" / VERSION
    built = sorted(out.glob("*.rpm"))
    kernel_vr = query(lab.rpm, "%{VERSION}-%{RELEASE}")
    version, release = kernel_vr.split("-", 1)
    work = lab.tmp / "dnf"
    repo = work / "repo"
    repo.mkdir(parents=True)
    for rpm in built:
        shutil.copy2(rpm, repo)
    shutil.copy2(base_system(work, built), repo)
    subprocess.run(["createrepo_c", "--quiet", str(repo)], check=True)
    kernels = {
        "same": rpmfactory.build_rpms(work, ["kernel-xen"], version=version, release=release)[0],
        "other": rpmfactory.build_rpms(work, ["kernel-xen"], version=version, release="999")[0],
    }
    module = f"drbd-km-{lab.release.replace('-', '_')}"

    same = work / "root-same"
    assert dnf(same, work, repo, "install", str(kernels["same"]), "dom0-base").returncode == 0
    installed = dnf(same, work, repo, "install", "drbd-utils", module)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    names = subprocess.run(
        ["rpm", f"--root={same}", "-qa", "--qf", "%{NAME}-%{VERSION}\n"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert f"{module}-{VERSION}" in names
    assert f"drbd-utils-{lab.utils.version}" in names

    other = work / "root-other"
    assert dnf(other, work, repo, "install", str(kernels["other"]), "dom0-base").returncode == 0
    refused = dnf(other, work, repo, "install", module)
    assert refused.returncode != 0
    assert re.search(rf"kernel-xen = {re.escape(kernel_vr)}", refused.stdout + refused.stderr)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown-utils", "drbd-utils 9.99.0 is not defined"),
        ("configure-missing", "has no configure"),
        ("spec-missing", "has no drbd-km.spec"),
    ],
)
def test_bad_family_and_utils_input_is_refused_before_anything_is_built(
    lab: Lab, case: str, message: str
) -> None:
    version, family, tarball, utils = VERSION, "8.4", None, None
    if case == "unknown-utils":
        utils = "9.99.0"
    elif case == "configure-missing":
        # A module-only tarball declared as an all-in-one 8.4.0-8.4.4 release.
        version, family = "8.4.4", "8.4-early"
        tarball = buildenv.make_module_source(lab.tmp, "8.4.4")
    else:
        tarball = buildenv.make_drbd_source(lab.tmp, VERSION)
    specs = lab.specs(
        version=version,
        family=family,
        tarball=tarball,
        utils=utils,
        with_utils=family == "8.4",
    )
    result = build(specs, lab.tmp, version=version)
    assert result.returncode == 2, result.stderr[-3000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (lab.tmp / "artifacts" / "lab" / version).exists()


def test_a_patch_that_does_not_apply_stops_the_build_and_says_which(lab: Lab) -> None:
    broken = lab.tmp / "broken.patch"
    broken.write_text(
        "--- a/drbd/drbd_main.c\n+++ b/drbd/drbd_main.c\n@@ -1,1 +1,1 @@\n"
        "-no such line in this file\n+replacement\n"
    )
    result = build(lab.specs(patches=[broken]), lab.tmp)
    assert result.returncode == 9, result.stderr[-3000:]
    assert "the patch 01-broken.patch does not apply to this source" in result.stderr
    assert "FAILED" in result.stderr
    assert not (lab.tmp / "artifacts" / "lab" / VERSION).exists()
    assert (lab.tmp / "artifacts" / "lab" / f"{VERSION}.build.log").is_file()


def strings_of(path: Path) -> str:
    return path.read_bytes().decode("latin-1")


def unpack_rpm(rpm: Path, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    payload = subprocess.run(["rpm2cpio", str(rpm)], capture_output=True, check=True).stdout
    subprocess.run(["cpio", "-idm", "--quiet"], input=payload, cwd=into, check=True)
    return into


# depmod's search orders: kmod's default (none given), XCP-ng 8.2's (search.conf), XCP-ng
# 8.3's (00-xcpng-override.conf), Debian's, and one that puts the kernel's own first. Where
# an order lists neither extra/ nor kernel/ (8.3's), both rank as built-in and directory
# order decides; only an override line makes the choice certain.
SEARCH_ORDERS = (
    None,
    "search override updates extra built-in weak-updates",
    "search override",
    "search updates built-in",
    "search built-in extra",
)


def chosen_by_modprobe(root: Path, release: str, order: str | None) -> str:
    """The drbd.ko ``modprobe drbd`` would load from ``root`` under a depmod search order, with
    the depmod.d files the root's packages ship."""
    config = root / "etc" / "depmod.d"
    config.mkdir(parents=True, exist_ok=True)
    search = config / "00-search.conf"
    search.unlink(missing_ok=True)
    if order is not None:
        search.write_text(order + "\n")
    subprocess.run(
        ["depmod", "-b", str(root), "-C", str(config), release], capture_output=True, check=True
    )
    shown = subprocess.run(
        ["modprobe", "-d", str(root), "-S", release, "-C", str(config), "--show-depends", "drbd"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    (line,) = [w for w in shown.split() if w.endswith("/drbd.ko")]
    return line.removeprefix(str(root))


def test_drbd9_compat_patch_made_offline_by_spatch_then_taken_from_the_tarball(lab: Lab) -> None:
    version = "9.2.19"
    tarball = buildenv.make_kmod_source(lab.tmp, version)
    specs = lab.specs(version=version, family="9", tarball=tarball)
    miss = build(specs, lab.tmp, version=version)
    assert miss.returncode == 0, miss.stderr[-4000:]
    out = lab.tmp / "artifacts" / "lab" / version
    packages = by_name(out)
    krelver = lab.release.replace("-", "_")
    kmod = packages["kmod-drbd"]
    assert query(kmod, "%{VERSION}-%{RELEASE}") == f"{version}_{krelver}-1"
    requires = lines_of("-qp", "--requires", str(kmod))
    kernel_vr = query(lab.rpm, "%{VERSION}-%{RELEASE}")
    assert f"kernel-xen = {kernel_vr}" in requires
    assert "drbd-utils >= 9.20.0" in requires
    ko = f"lib/modules/{lab.release}/extra/drbd/drbd.ko"
    unpacked = unpack_rpm(kmod, lab.tmp / "miss")
    # compat.h found blk_alloc_disk() in the 6.1 tree, and spatch applied the matching rule.
    assert "test module loaded (compat: blk_alloc_disk)" in strings_of(unpacked / ko)
    log_text = (out / "build.log").read_text()
    assert "SPATCH" in log_text
    assert "made by spatch" in log_text
    entries = list((lab.tmp / "cache" / "compat").glob("*/*/compat.patch"))
    assert len(entries) == 1
    entry = entries[0].parent
    assert sorted(p.name for p in entry.iterdir()) == [
        "applied_cocci_files.txt",
        "compat.h",
        "compat.patch",
        "kernelrelease.txt",
    ]
    assert (entry / "kernelrelease.txt").read_text().split() == [lab.release]
    # The manifest says which spatch made the patch (Debian 13's coccinelle, newer than 1.2).
    compat = json.loads((out / "manifest.json").read_text())["compat"]
    assert compat["checksum"] == entry.name
    assert compat["from"] == "spatch in the helper image"
    assert tuple(int(n) for n in compat["spatch"].split(".")[:2]) > (1, 2)
    # Ours wins over the kernel's own drbd.ko whatever depmod's search order (XCP-ng 8.x's
    # kernel has DRBD 8.4 in-tree): the package's depmod.d override lines decide.
    assert (
        f"override drbd {lab.release} extra/drbd"
        in (unpacked / "etc/depmod.d/drbd.conf").read_text()
    )
    in_tree = unpacked / f"lib/modules/{lab.release}/kernel/drivers/block/drbd/drbd.ko"
    in_tree.parent.mkdir(parents=True)
    shutil.copy2(unpacked / ko, in_tree)
    for order in SEARCH_ORDERS:
        assert (
            chosen_by_modprobe(unpacked, lab.release, order)
            == f"/lib/modules/{lab.release}/extra/drbd/drbd.ko"
        ), order
    # Without them, an order that ranks the kernel's own first loads that one.
    (unpacked / "etc/depmod.d/drbd.conf").unlink()
    assert chosen_by_modprobe(unpacked, lab.release, SEARCH_ORDERS[-1]).endswith(
        "/kernel/drivers/block/drbd/drbd.ko"
    )
    # The kernel (Debian's, ORC, gcc 12) and the module agree on the compiler; both recorded.
    compilers = json.loads((out / "manifest.json").read_text())["compilers"]
    assert compilers["kernel_record"].startswith("CONFIG_GCC_VERSION=")
    assert [c.split(".")[0] for c in compilers["modules"]] == [compilers["kernel"].split(".")[0]]
    assert "ORC" not in miss.stderr

    # The same source, kernel and image again: compat.h is known, no compat tests, no spatch.
    shutil.rmtree(lab.tmp / "artifacts")
    again = build(specs, lab.tmp, version=version)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "compat tests against" not in again.stderr
    assert f"compat patch {entry.name}: reused from {entry}" in (out / "build.log").read_text()
    assert "SPATCH" not in (out / "build.log").read_text()

    # A release tarball that ships the entry (as LINBIT's do for common kernels): no spatch.
    shipped = lab.tmp / "shipped"
    shipped.mkdir()
    tarball = buildenv.make_kmod_source(shipped, version, cache={entry.name: entry})
    specs = lab.specs(version=version, family="9", tarball=tarball)
    for used in ("cache", "artifacts"):
        shutil.rmtree(lab.tmp / used)
    hit = build(specs, lab.tmp, version=version)
    assert hit.returncode == 0, hit.stderr[-4000:]
    log_text = (out / "build.log").read_text()
    assert "from the tarball's cocci_cache" in log_text
    assert "SPATCH" not in log_text
    compat = json.loads((out / "manifest.json").read_text())["compat"]
    assert compat == {"checksum": entry.name, "from": "the tarball's cocci_cache", "spatch": None}
    assert list((lab.tmp / "cache" / "compat").glob("*/*/compat.patch")) == []
    from_tarball = unpack_rpm(by_name(out)["kmod-drbd"], lab.tmp / "hit")
    assert "test module loaded (compat: blk_alloc_disk)" in strings_of(from_tarball / ko)


def test_drbd9_paired_with_too_old_a_drbd_utils_is_refused_before_building(lab: Lab) -> None:
    version = "9.2.19"
    tarball = buildenv.make_kmod_source(lab.tmp, version)
    spec = tarball.parent / "spec-src"
    spec.mkdir()
    specs = lab.specs(version=version, family="9", tarball=tarball)
    text = (
        (specs / "lab.yaml")
        .read_text()
        .replace(f"drbd-utils:\n  {lab.utils.version}:", "drbd-utils:\n  9.1.0:")
    )
    (specs / "lab.yaml").write_text(text.replace(f"utils: {lab.utils.version}", "utils: 9.1.0"))
    # The entry's tarball: the real one under the old release's name (the tarball must be the
    # release its entry names; only the pairing is wrong here).
    old = lab.tmp / "drbd-utils-9.1.0.tar.gz"
    with tarfile.open(lab.utils.tarball) as real, tarfile.open(old, "w:gz") as renamed:
        for member in real.getmembers():
            source = real.extractfile(member) if member.isfile() else None
            top = f"drbd-utils-{lab.utils.version}"
            member.name = member.name.replace(top, "drbd-utils-9.1.0", 1)
            if member.islnk():
                member.linkname = member.linkname.replace(top, "drbd-utils-9.1.0", 1)
            renamed.addfile(member, source)
    (specs / "lab.yaml").write_text(
        (specs / "lab.yaml").read_text().replace(f"file://{lab.utils.tarball}", f"file://{old}")
    )
    result = build(specs, lab.tmp, version=version)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "requires drbd-utils >= 9.20.0, but its spec entry pairs it with drbd-utils 9.1.0" in (
        result.stderr
    )
    assert not (lab.tmp / "artifacts" / "lab" / version).exists()


def test_drbd9_with_a_spatch_too_old_for_its_rules_is_refused_before_spatch_runs(
    lab: Lab,
) -> None:
    version = "9.2.19"
    tarball = buildenv.make_kmod_source(lab.tmp, version)
    # The Debian 12 root as the helper's base: its coccinelle is 1.1.1.
    too_old = dataclasses.replace(lab, spatch_base=lab.base_image)
    specs = too_old.specs(version=version, family="9", tarball=tarball)
    result = build(specs, lab.tmp, version=version)
    assert result.returncode == 2, result.stderr[-3000:]
    assert (
        "The spatch helper image has coccinelle 1.1.1; DRBD 9.2.19's compat rules need a "
        "coccinelle newer than 1.2." in result.stderr
    )
    assert "container.spatch.image" in result.stderr
    assert not (lab.tmp / "artifacts" / "lab" / version).exists()
    # Nothing made, nothing kept: spatch never ran.
    compat = lab.tmp / "cache" / "compat"
    assert list(compat.glob("*/*/compat.patch")) == list(compat.glob("*/*.spatch")) == []
