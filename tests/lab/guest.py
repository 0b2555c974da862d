"""The lab's guest: Debian's real kernel and a small root made from this machine's packages.

The guest boots the ``linux-image`` package of the release whose ``linux-headers`` the tests'
stand-in kernel-devel is made from, so a module the tool builds for the stand-in loads here.
The package is fetched from Debian's archive with ``apt-get download`` and unpacked with
``dpkg -x`` (never installed on this machine).

The root is an ext4 image (``mke2fs -d``, no mounting, no root needed for it) that lives on
the guest's first disk, so what the runbook writes (``/etc/drbd.d``, ``lvm.conf``, rc links)
survives a hard reset.  A small initramfs loads the virtio modules and switches to it.  The
root holds what a dom0 runbook calls, copied with their libraries from this machine's
Debian packages (busybox-static, bash, iproute2, lvm2, kmod, drbd-utils, coreutils), the
kernel modules they need, and the few dom0 pieces Debian has no package for, written here and
named as stand-ins: an rc runner, ``chkconfig``, a recording ``xe`` and a fence-peer handler.

Both images are cached under ``$XDB_LAB_CACHE`` (default ``~/.cache/xcp-drbd-builder-lab``),
keyed by a hash of everything that went into them, so a second run boots in seconds.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from tests.lab import guestfiles
from tests.support.kernelrpm import installed_headers

# Bump when the way the images are made changes in a way the inputs below do not show.
RECIPE = "4"
ROOT_SIZE = "320M"

# Programs a dom0 runbook and the lab's scenarios call, from this machine's Debian packages.
PROGRAMS = (
    "/usr/bin/bash", "/usr/sbin/ip", "/usr/sbin/lvm", "/usr/sbin/dmsetup", "/usr/bin/kmod",
    "/usr/sbin/drbdadm", "/usr/sbin/drbdsetup", "/usr/sbin/drbdmeta",
    "/usr/lib/drbd/drbdadm-84", "/usr/lib/drbd/drbdsetup-84",
    "/usr/lib/drbd/drbdadm-83", "/usr/lib/drbd/drbdsetup-83",
    "/usr/bin/dd", "/usr/bin/date", "/usr/bin/sha256sum", "/usr/bin/stty", "/usr/sbin/blockdev",
    "/usr/bin/setsid", "/usr/bin/timeout", "/usr/bin/base64", "/usr/bin/rpm",
)  # fmt: skip
# drbd-utils' handlers and init script, copied as they are (shell scripts).
SCRIPTS = (
    "/usr/lib/drbd/notify.sh", "/usr/lib/drbd/notify-split-brain.sh",
    "/usr/lib/drbd/notify-pri-lost-after-sb.sh", "/usr/lib/drbd/outdate-peer.sh",
)  # fmt: skip
LVM_NAMES = (
    "pvs", "vgs", "lvs", "pvcreate", "vgcreate", "lvcreate", "vgchange", "vgscan", "pvscan",
    "vgremove", "lvremove", "lvchange",
)  # fmt: skip
# rpm's own configuration (Debian's rpm keeps its database in ~/.rpmdb, where dnf's
# --installroot puts it too: /root/.rpmdb in the guest).
RPM_CONFIG = "/usr/lib/rpm"
KMOD_NAMES = ("modprobe", "depmod", "modinfo", "insmod", "lsmod", "rmmod")
# What the initramfs loads to find the root disk, and what the root loads later.
BOOT_MODULES = ("virtio_pci", "virtio_blk", "ext4")
ROOT_MODULES = ("virtio_net", "drbd", "dm_mod", "crc32c_generic")


class Unavailable(Exception):
    """Something the lab needs is missing on this machine (the message says what)."""


@dataclass(frozen=True)
class GuestImage:
    kernel: Path  # vmlinuz
    initrd: Path  # the initramfs that switches to the root disk
    root: Path  # the root file system image (ext4, raw); each guest boots a copy
    release: str  # uname -r


def cache_dir() -> Path:
    base = os.environ.get("XDB_LAB_CACHE")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / ("xcp-drbd-builder-lab")


def run(argv: list[str], *, cwd: Path | None = None, timeout: float = 600) -> str:
    """Run a program for the image build; a failure says which command and what it printed."""
    program = argv[0]
    if shutil.which(program) is None and not Path(program).is_file():
        raise Unavailable(f"{program} is not installed; .ci/run installs what the lab needs")
    done = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise Unavailable(
            f"{' '.join(argv)} failed with exit code {done.returncode}:\n"
            f"{(done.stdout + done.stderr)[-3000:]}"
        )
    return done.stdout


def headers_release() -> str:
    """``uname -r`` of the installed Debian kernel headers the stand-in kernel-devel is made
    from (the same choice as the tests' kernel-devel RPM, so the module fits the guest)."""
    try:
        return installed_headers().release
    except RuntimeError as exc:
        raise Unavailable(str(exc)) from exc


def kernel_package(release: str, cache: Path) -> Path:
    """The unpacked ``linux-image-<release>`` package (downloaded once, with apt-get)."""
    unpacked = cache / f"linux-image-{release}"
    if (unpacked / "boot" / f"vmlinuz-{release}").is_file():
        return unpacked
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".kernel-") as work:
        run(["apt-get", "download", f"linux-image-{release}"], cwd=Path(work), timeout=900)
        (deb,) = Path(work).glob("*.deb")
        tree = Path(work) / "tree"
        run(["dpkg-deb", "-x", str(deb), str(tree)], timeout=600)
        # The package's index files are made when it is installed: make them here.
        run(["depmod", "-b", str(tree), release], timeout=600)
        shutil.rmtree(unpacked, ignore_errors=True)
        tree.rename(unpacked)
    return unpacked


def library_closure(programs: Iterable[str]) -> list[str]:
    """The shared libraries (and the loader) the programs need, as ldd resolves them here."""
    found: set[str] = set()
    for program in programs:
        output = run(["ldd", program]) if _is_dynamic(program) else ""
        for line in output.splitlines():
            match = re.search(r"(/\S+) \(0x", line)
            if match:
                found.add(match.group(1))
    return sorted(found)


def _is_dynamic(path: str) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"\x7fELF"


def module_closure(modules_root: Path, release: str, names: Iterable[str]) -> list[Path]:
    """The module files of ``names`` and everything they depend on (modprobe's own answer)."""
    files: list[Path] = []
    for name in names:
        output = run(["modprobe", "-d", str(modules_root), "-S", release, "--show-depends", name])
        for line in output.splitlines():
            words = line.split()
            if words[:1] == ["insmod"]:
                path = Path(words[1])
                if path not in files:
                    files.append(path)
    return files


def _copy(source: str | Path, root: Path, target: str | None = None) -> None:
    destination = root / (target or str(source)).lstrip("/")
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(Path(source).resolve(), destination)


def _inputs_digest(parts: Iterable[str | Path]) -> str:
    digest = hashlib.sha256(RECIPE.encode())
    for part in parts:
        if isinstance(part, Path):
            info = part.stat()
            digest.update(f"{part}:{info.st_size}:{info.st_mtime_ns}\n".encode())
        else:
            digest.update(part.encode() + b"\n")
    return digest.hexdigest()[:16]


def _busybox() -> Path:
    busybox = Path("/bin/busybox")
    linked = subprocess.run(["ldd", str(busybox)], capture_output=True, text=True, check=False)
    if not busybox.is_file() or "not a dynamic executable" not in linked.stdout + linked.stderr:
        raise Unavailable("busybox-static is not installed (apt-get install busybox-static)")
    return busybox


def _install_busybox(root: Path, busybox: Path) -> None:
    _copy(busybox, root, "/usr/bin/busybox")
    applets = run([str(busybox), "--list"]).split()
    for applet in applets:
        for directory in ("usr/bin", "usr/sbin"):
            if (root / directory / applet).exists():
                break
        else:
            (root / "usr/bin" / applet).symlink_to("busybox")


def _usr_merged(root: Path) -> None:
    for directory in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    for name in ("bin", "sbin", "lib", "lib64"):
        (root / name).symlink_to(f"usr/{name}")


def build_root(root: Path, kernel: Path, release: str, busybox: Path) -> None:
    """Lay out the guest's root file system in ``root``."""
    _usr_merged(root)
    for directory in (
        "etc/drbd.d", "etc/lvm/archive", "etc/lvm/backup", "etc/lvm/cache", "etc/rc.d/init.d",
        "proc", "sys", "dev", "run", "tmp", "var/lib/drbd", "var/log", "root", "mnt",
    ):  # fmt: skip
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "var/lock").symlink_to("../run/lock")
    (root / "var/run").symlink_to("../run")
    (root / "etc/init.d").symlink_to("rc.d/init.d")
    for program in PROGRAMS:
        _copy(program, root)
    for library in library_closure(PROGRAMS):
        _copy(library, root)
    for script in SCRIPTS:
        _copy(script, root)
    _copy("/etc/init.d/drbd", root, "/etc/rc.d/init.d/drbd")
    shutil.copytree(RPM_CONFIG, root / RPM_CONFIG.lstrip("/"), symlinks=True)
    # dom0's /bin/sh is bash: the runbook runs under it there, so it does here.
    (root / "usr/bin/sh").symlink_to("bash")
    for name in LVM_NAMES:
        (root / "usr/sbin" / name).symlink_to("lvm")
    for name in KMOD_NAMES:
        (root / "usr/sbin" / name).symlink_to("../bin/kmod")
    _install_busybox(root, busybox)
    # Modules: the closure of what the guest loads, with the kernel's own index files.
    modules = kernel / "lib/modules" / release
    for path in module_closure(kernel, release, (*BOOT_MODULES, *ROOT_MODULES)):
        _copy(path, root, f"/lib/modules/{release}/{path.relative_to(modules)}")
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        _copy(modules / name, root, f"/lib/modules/{release}/{name}")
    run(["depmod", "-b", str(root), release])
    guestfiles.write_root_files(root)


def build_initramfs(path: Path, kernel: Path, release: str, busybox: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="xdb-lab-initrd-") as work:
        root = Path(work)
        _usr_merged(root)
        for directory in ("proc", "sys", "dev", "newroot"):
            (root / directory).mkdir()
        _copy(busybox, root, "/usr/bin/busybox")
        for applet in ("sh", "mount", "insmod", "switch_root", "sleep", "cat", "mkdir"):
            (root / "usr/bin" / applet).symlink_to("busybox")
        modules = kernel / "lib/modules" / release
        order = []
        for module in module_closure(kernel, release, BOOT_MODULES):
            relative = module.relative_to(modules)
            _copy(module, root, f"/modules/{relative.name}")
            order.append(relative.name)
        init = root / "init"
        init.write_text(guestfiles.initramfs_init(order))
        init.chmod(0o755)
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p != root)
        listing = "\n".join(names) + "\n"
        with path.open("wb") as archive:
            subprocess.run(
                ["cpio", "--quiet", "-o", "-H", "newc", "--reproducible"],
                input=listing.encode(),
                cwd=root,
                stdout=archive,
                check=True,
            )


def make_ext4(image: Path, source: Path, size: str = ROOT_SIZE) -> None:
    """An ext4 file system image holding ``source``'s tree, made without mounting anything."""
    image.unlink(missing_ok=True)
    run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "xdb-root", "-E", "root_owner=0:0",
         "-d", str(source), str(image), size])  # fmt: skip


def guest_image() -> GuestImage:
    """The cached guest kernel, initramfs and root image, made if their inputs changed."""
    busybox = _busybox()
    for tool in ("qemu-system-x86_64", "mke2fs", "cpio", "apt-get", "dpkg-deb", "ldd"):
        if shutil.which(tool) is None:
            raise Unavailable(f"{tool} is not installed; .ci/run installs what the lab needs")
    release = headers_release()
    cache = cache_dir()
    kernel = kernel_package(release, cache)
    vmlinuz = kernel / "boot" / f"vmlinuz-{release}"
    inputs: list[str | Path] = [
        release, vmlinuz, busybox, Path("/etc/init.d/drbd"), Path(RPM_CONFIG) / "macros",
        *(Path(p) for p in (*PROGRAMS, *SCRIPTS)),
        guestfiles.digest(),
    ]  # fmt: skip
    key = _inputs_digest(inputs)
    done = cache / f"guest-{key}"
    image = GuestImage(
        kernel=vmlinuz, initrd=done / "initrd.cpio", root=done / "root.ext4", release=release
    )
    if image.root.is_file() and image.initrd.is_file():
        return image
    with tempfile.TemporaryDirectory(dir=cache, prefix=".guest-") as work:
        staging = Path(work) / "out"
        staging.mkdir()
        tree = Path(work) / "root"
        tree.mkdir()
        build_root(tree, kernel, release, busybox)
        build_initramfs(staging / "initrd.cpio", kernel, release, busybox)
        make_ext4(staging / "root.ext4", tree)
        # The tree is kept beside the images: a scenario adds packages to a copy of it.
        tree.rename(staging / "tree")
        shutil.rmtree(done, ignore_errors=True)
        staging.rename(done)
    for old in cache.glob("guest-*"):
        if old != done:
            shutil.rmtree(old, ignore_errors=True)
    return image


# What a dom0 runbook's install step calls beyond the base root: yum (Debian's dnf, a real yum
# consumer, and its Python), curl, gpg and rpm's own helpers (rpm --import runs rpmkeys), as
# this machine's packages ship them.
YUM_PACKAGES = (
    "dnf", "python3-dnf", "dnf-data", "python3-libdnf", "python3-hawkey", "python3-rpm",
    "python3-gpg", "python3-libcomps", "libdnf2-common", "python3-distutils", "python3",
    "python3-minimal", "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib",
    "curl", "gpg", "gpgconf", "gpg-agent", "rpm",
)  # fmt: skip
_NOT_NEEDED = (
    "/usr/share/doc/", "/usr/share/man/", "/usr/share/locale/", "/usr/share/info/",
    "/usr/share/lintian/", "/usr/share/bash-completion/", "/usr/lib/python3.11/test/",
)  # fmt: skip


def add_yum(root: Path) -> None:
    """Put ``YUM_PACKAGES``' files (``dpkg -L``) and the libraries they need into ``root``,
    with ``yum`` naming dnf, as on a dom0."""
    elf: list[str] = []
    for package in YUM_PACKAGES:
        for name in run(["dpkg", "-L", package]).splitlines():
            path = Path(name)
            if name.startswith(_NOT_NEEDED) or not (path.is_file() or path.is_symlink()):
                continue
            target = root / name.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink():
                if not target.is_symlink() and not target.exists():
                    target.symlink_to(os.readlink(path))
            else:
                shutil.copy2(path, target)
                if _is_dynamic(name):
                    elf.append(name)
    for library in library_closure(elf):
        if not (root / library.lstrip("/")).exists():
            _copy(library, root)
    (root / "usr/bin/yum").symlink_to("dnf")
    # Where a dom0's yum reads its repositories (its CentOS-Base.repo is there).
    (root / "etc/yum.repos.d").mkdir(parents=True, exist_ok=True)


def derived_image(image: GuestImage, directory: Path, change: Callable[[Path], None]) -> GuestImage:
    """The cached root with ``change`` applied to a copy of its tree (packages installed into
    it, as an image builder does), as a new root image in ``directory``."""
    tree = directory / "tree"
    run(["cp", "-a", str(image.root.parent / "tree"), str(tree)])
    change(tree)
    root = directory / "root.ext4"
    make_ext4(root, tree)
    return GuestImage(kernel=image.kernel, initrd=image.initrd, root=root, release=image.release)
