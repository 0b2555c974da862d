"""Build DRBD RPMs in a container and check them.

The DRBD source family decides the in-container recipe (see :class:`Recipe`).  For 8.3 and
8.4.0-8.4.4 it is the one DRBD documents: ``./configure --with-km``, ``make tgz drbd.spec
drbd-km.spec``, then ``rpmbuild -bb`` on each spec with ``kernelversion`` and ``kdir`` always
given (their defaults call ``uname -r``, which in a container is the build host's kernel).

The container runs as a non-root user with the network off and ``SOURCE_DATE_EPOCH`` set; the
source tarball and the kernel tree are mounted read-only; RPMs are copied flat into a writable
staging directory, then moved into the caller's output directory and checked.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import docker

from builder import checks, container, log
from builder.errors import BuildError, ConfigError, InputError
from builder.specs import DrbdFamily, Target

CONTAINERS_DIR = Path(__file__).resolve().parent.parent / "containers"
BUILD_USER = "builder"
BUILD_HOST = "xcp-drbd-builder"
INPUT_DIR = "/build/input"
OUTPUT_DIR = "/build/out"
# The container's own /tmp: nothing else runs in it, and it is discarded with it.
WORK_DIR = "/tmp/build"  # noqa: S108
TOP_DIR = f"{WORK_DIR}/rpmbuild"
# Where a kernel tree outside usr/src and usr/lib is mounted.
KERNEL_FALLBACK_DIR = "/build/kernel"
LOG_TAIL_LINES = 40
I386_ARCHES = frozenset({"i386", "i486", "i586", "i686", "athlon"})


@dataclass(frozen=True, kw_only=True)
class BuildInputs:
    """Everything one recipe needs to write its commands."""

    version: str
    tarball_name: str
    source_dir: str  # top directory inside the tarball
    kernel_release: str
    kdir: str  # kernel build dir as seen inside the container
    arch: str


class Recipe:
    """Recipe of the 8.3 and early 8.4 sources: userland and module from one tarball."""

    userland_package = "drbd-utils"
    module_prefix = "drbd-km"
    specs = ("drbd.spec", "drbd-km.spec")

    def commands(self, inputs: BuildInputs) -> list[list[str]]:
        rpmbuild = [
            "rpmbuild",
            "-bb",
            "--target",
            inputs.arch,
            "--define",
            f"_topdir {TOP_DIR}",
            "--define",
            f"kernelversion {inputs.kernel_release}",
            "--define",
            f"kdir {inputs.kdir}",
            "--define",
            f"_buildhost {BUILD_HOST}",
            "--define",
            "use_source_date_epoch_as_buildtime 1",
            "--define",
            "clamp_mtime_to_source_date_epoch 1",
        ]
        tgz = f"drbd-{inputs.version}.tar.gz"
        return [
            ["mkdir", "-p", *(f"{TOP_DIR}/{d}" for d in ("SOURCES", "BUILD", "RPMS", "SRPMS"))],
            ["tar", "-xzf", f"{INPUT_DIR}/{inputs.tarball_name}", "-C", WORK_DIR],
            ["cd", f"{WORK_DIR}/{inputs.source_dir}"],
            ["./configure", "--with-km"],
            # FORCE=1: without it `tgz` first rebuilds the release's man pages, which needs
            # xsltproc and DocBook stylesheets fetched over the network, which is off here.
            ["make", "tgz", *self.specs, "FORCE=1"],
            ["cp", tgz, f"{TOP_DIR}/SOURCES/{tgz}"],
            *([*rpmbuild, spec] for spec in self.specs),
            ["find", f"{TOP_DIR}/RPMS", "-name", "*.rpm", "-exec", "cp", "{}", OUTPUT_DIR, ";"],
        ]

    def expected_packages(self, kernel_release: str) -> frozenset[str]:
        return frozenset(
            {
                "drbd",
                self.userland_package,
                "drbd-xen",
                "drbd-udev",
                checks.km_package_name(kernel_release, self.module_prefix),
            }
        )


RECIPES: dict[DrbdFamily, Recipe] = {DrbdFamily.V83: Recipe(), DrbdFamily.V84_EARLY: Recipe()}


def recipe_for(family: DrbdFamily) -> Recipe:
    try:
        return RECIPES[family]
    except KeyError:
        raise ConfigError(f"DRBD source family {family} has no build recipe yet.") from None


def personality(arch: str) -> list[str]:
    """32-bit targets build under ``linux32`` so that ``uname -m`` and rpm see i686."""
    return ["linux32"] if arch in I386_ARCHES else []


def shell_script(commands: Sequence[Sequence[str]]) -> str:
    """A POSIX sh script that echoes each command, runs it, and stops at the first failure."""
    lines = [
        "set -e",
        "umask 022",
        'if [ "$(id -u)" = 0 ]; then echo "error: refusing to build as root" >&2; exit 1; fi',
        f"mkdir -p {WORK_DIR}",
    ]
    for command in commands:
        text = shlex.join(command)
        lines.append(f"echo {shlex.quote('$ ' + text)}")
        lines.append(text)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Inputs


def tarball_top_dir(tarball: Path) -> str:
    """The single top-level directory of a source tarball (``drbd-8.4.1``)."""
    try:
        with tarfile.open(tarball) as archive:
            tops = {PurePosixPath(m.name).parts[0] for m in archive if m.name not in (".", "./")}
    except (OSError, tarfile.TarError) as exc:
        raise InputError(f"Cannot read source tarball {tarball}: {exc}") from exc
    tops.discard(".")
    if len(tops) != 1:
        raise InputError(
            f"Source tarball {tarball} must hold one top-level directory, not "
            f"{', '.join(sorted(tops)) or 'nothing'}."
        )
    top = tops.pop()
    if top in ("..", "/") or top.startswith("/"):
        raise InputError(f"Source tarball {tarball} has an unsafe top-level entry {top!r}.")
    return top


def tarball_epoch(tarball: Path) -> int:
    """SOURCE_DATE_EPOCH for a source: its newest member's mtime, so a rebuild is identical."""
    try:
        with tarfile.open(tarball) as archive:
            return max((int(m.mtime) for m in archive), default=0)
    except (OSError, tarfile.TarError) as exc:
        raise InputError(f"Cannot read source tarball {tarball}: {exc}") from exc


def kernel_mounts(
    kernel_root: Path, kernel_build_dir: Path
) -> tuple[list[container.BindMount], str]:
    """Read-only mounts that show the kernel tree at its own absolute paths, and kdir.

    kernel-devel trees live under ``usr/src`` (Red Hat's ``usr/src/kernels/<release>``,
    Debian's ``usr/src/linux-headers-*``) and Debian's keeps its scripts in
    ``usr/lib/linux-kbuild-*``, reached by relative symlinks *and* by absolute ``include``
    lines in the Makefile.  Mounting each of those directories at the same absolute path makes
    both kinds of reference resolve, without hiding anything else in the image.
    """
    root = kernel_root.resolve()
    build = kernel_build_dir.resolve()
    if not build.is_dir():
        raise InputError(f"Kernel build directory {kernel_build_dir} does not exist.")
    try:
        relative = build.relative_to(root)
    except ValueError:
        raise InputError(
            f"Kernel build directory {kernel_build_dir} is not inside the kernel tree root "
            f"{kernel_root}."
        ) from None
    parts = relative.parts
    if len(parts) >= 3 and parts[0] == "usr" and parts[1] == "src":
        mounts = [
            container.BindMount(child, f"/usr/src/{child.name}")
            for child in sorted((root / "usr" / "src").iterdir())
            if child.is_dir() and not child.is_symlink()
        ]
        lib = root / "usr" / "lib"
        if lib.is_dir():
            mounts += [
                container.BindMount(child, f"/usr/lib/{child.name}")
                for child in sorted(lib.iterdir())
                if child.name.startswith("linux-kbuild") and child.is_dir()
            ]
        return mounts, "/" + relative.as_posix()
    mount = container.BindMount(root, KERNEL_FALLBACK_DIR)
    return [mount], f"{KERNEL_FALLBACK_DIR}/{relative.as_posix()}".rstrip("/.")


# ---------------------------------------------------------------------------------------------
# Images


def build_context_for(target: Target, containers_dir: Path = CONTAINERS_DIR) -> Path:
    context = target.build_context or containers_dir / target.container_family
    if not (context / "Dockerfile").is_file():
        raise ConfigError(
            f"Target {target.id}: build context {context} has no Dockerfile.",
            hint="Set container.family to a directory under containers/, or container.context "
            "to a directory holding a Dockerfile.",
        )
    return context


def ensure_image(
    target: Target,
    *,
    client: docker.DockerClient | None = None,
    containers_dir: Path = CONTAINERS_DIR,
    log_file: Path | None = None,
) -> str:
    """Build (or reuse) the build image for ``target``; return its image id (``sha256:…``).

    The context is ``containers/<container.family>/`` unless the target names its own
    ``container.context``; ``container.image`` is passed as the ``BASE_IMAGE`` build argument.
    """
    context = build_context_for(target, containers_dir)
    args = {"BASE_IMAGE": target.base_image} if target.base_image else {}
    name = target.container_family if target.build_context is None else context.name
    return container.build_image(
        client or container.connect(),
        context=context,
        name=name,
        build_args=args,
        log_file=log_file,
    )


# ---------------------------------------------------------------------------------------------
# The build


@dataclass(frozen=True, kw_only=True)
class BuildResult:
    rpms: tuple[Path, ...]  # in output_dir, sorted
    commands: tuple[str, ...]  # the in-container commands, as shell lines
    shell: str  # what ran them: "/bin/sh -c", under "linux32" for 32-bit targets
    image: str
    source_date_epoch: int
    kdir: str
    log_file: Path
    seconds: float


def build_drbd(
    *,
    image: str,
    source_tarball: Path,
    kernel_root: Path,
    kernel_build_dir: Path,
    kernel_release: str,
    family: DrbdFamily,
    version: str,
    arch: str,
    output_dir: Path,
    log_file: Path,
    timeout: float | None = None,
    source_date_epoch: int | None = None,
    kernel_requires: str = "kernel",
    client: docker.DockerClient | None = None,
) -> BuildResult:
    """Build DRBD ``version`` for ``kernel_release`` in ``image`` and check the RPMs.

    ``kernel_root`` is the directory the kernel-devel package was extracted into and
    ``kernel_build_dir`` the build tree inside it (``kdir``).  The RPMs end up directly in
    ``output_dir``, which must exist (the caller's ``*.partial`` directory).  The whole build
    log goes to ``log_file``.  Raises :class:`BuildError` (with the log's last lines) when the
    build fails or times out and :class:`CheckError` when the RPMs are not right for dom0.
    """
    started = time.monotonic()
    recipe = recipe_for(family)
    source_tarball = source_tarball.resolve()
    if not source_tarball.is_file():
        raise InputError(f"Source tarball {source_tarball} does not exist.")
    if not output_dir.is_dir():
        raise InputError(f"Output directory {output_dir} does not exist.")
    mounts, kdir = kernel_mounts(kernel_root, kernel_build_dir)
    inputs = BuildInputs(
        version=version,
        tarball_name=source_tarball.name,
        source_dir=tarball_top_dir(source_tarball),
        kernel_release=kernel_release,
        kdir=kdir,
        arch=arch,
    )
    commands = recipe.commands(inputs)
    epoch = tarball_epoch(source_tarball) if source_date_epoch is None else source_date_epoch
    shell = [*personality(arch), "/bin/sh", "-c"]
    # The build user's uid is the image's, not ours, so the directory it writes to is open to
    # everyone; its parent is ours alone, so no other local user can reach into it.
    private = output_dir / ".from-container"
    shutil.rmtree(private, ignore_errors=True)
    private.mkdir(mode=0o700)
    staging = private / "out"
    staging.mkdir()
    os.chmod(staging, 0o777)  # noqa: S103
    spec = container.RunSpec(
        image=image,
        command=[*shell, shell_script(commands)],
        user=BUILD_USER,
        mounts=[
            container.BindMount(source_tarball, f"{INPUT_DIR}/{source_tarball.name}"),
            *mounts,
            container.BindMount(staging.resolve(), OUTPUT_DIR, read_only=False),
        ],
        environment={
            "SOURCE_DATE_EPOCH": str(epoch),
            # DRBD's drbd-km.spec makes the module require this package (default "kernel").
            "DRBD_KMOD_REQUIRES": kernel_requires,
            "HOME": WORK_DIR,
            "LC_ALL": "C",
            "TZ": "UTC",
        },
    )
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.write_text(
        f"# DRBD {version} for kernel {kernel_release} ({arch}) in image {image}\n"
        f"# kdir={kdir} SOURCE_DATE_EPOCH={epoch}\n",
        encoding="utf-8",
    )
    try:
        client = client or container.connect()
        container.reap_leftovers(client)
        with log.step(f"Build DRBD {version} for {kernel_release} ({arch})"):
            result = container.run_logged(
                client, spec, log_file=log_file, timeout=timeout, on_line=_Ticker()
            )
            if result.timed_out:
                raise _build_error(f"timed out after {timeout:.0f} s", version, log_file)
            if result.exit_code != 0:
                raise _build_error(f"exit status {result.exit_code}", version, log_file)
        rpms = []
        for built in sorted(staging.glob("*.rpm")):
            # What the container left is not trusted: a symlink or hard link there would make
            # this (often root) process copy a file of the host into the artifacts.
            info = built.lstat()
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                raise _build_error(
                    f"{built.name} in the output is not a plain file", version, log_file
                )
            # A copy, not a rename: the files then belong to the user running the tool, not to
            # whichever uid the image's build user has on this host.
            destination = output_dir / built.name
            shutil.copy2(built, destination, follow_symlinks=False)
            rpms.append(destination)
        if not rpms:
            raise _build_error("no RPMs were produced", version, log_file)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    expect = checks.Expectation(
        kernel_release=kernel_release,
        arch=arch,
        version=version,
        packages=recipe.expected_packages(kernel_release),
        module_package=checks.km_package_name(kernel_release, recipe.module_prefix),
        userland_package=recipe.userland_package,
    )
    with log.step(f"Check {len(rpms)} RPMs against kernel {kernel_release} and arch {arch}"):
        checks.check_packages(rpms, expect)
    return BuildResult(
        rpms=tuple(rpms),
        commands=tuple(shlex.join(c) for c in commands),
        shell=shlex.join(shell),
        image=image,
        source_date_epoch=epoch,
        kdir=kdir,
        log_file=log_file,
        seconds=time.monotonic() - started,
    )


# Lines that name the cause of a failed build, which rpmbuild's closing summary of warnings
# can push out of the log's last lines.
ERROR_LINE = re.compile(
    r"(\berror:|\*\*\*|undefined reference|multiple definition|No such file or directory)"
)
ERROR_LINES = 12


def _build_error(reason: str, version: str, log_file: Path) -> BuildError:
    try:
        text = log_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    lines = text.rstrip("\n").splitlines()
    tail = lines[-LOG_TAIL_LINES:]
    earlier = [line for line in lines[: -LOG_TAIL_LINES or None] if ERROR_LINE.search(line)]
    causes = ""
    if earlier:
        shown = "\n".join("    " + line for line in earlier[:ERROR_LINES])
        causes = f"Errors earlier in the build log:\n{shown}\n"
    shown_tail = "\n".join("    " + line for line in tail)
    return BuildError(
        f"Building DRBD {version} failed ({reason}). {causes}"
        f"Last lines of the build log:\n{shown_tail}\n"
        f"The whole log is {log_file}",
        hint=f"Set {container.KEEP_ENV}=1 to keep the build container for inspection.",
    )


class _Ticker:
    """Shows the build's latest output line now and then, so a long build is seen to move."""

    INTERVAL = 15.0

    def __init__(self) -> None:
        self._last = time.monotonic()

    def __call__(self, line: str) -> None:
        now = time.monotonic()
        if line.strip() and now - self._last >= self.INTERVAL:
            self._last = now
            log.info(f"… {line.strip()[:120]}")
