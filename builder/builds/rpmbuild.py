"""Run one recipe's commands in a build container and collect the RPMs it made.

The recipes (``builder.builds.recipes``) say what to run; this module runs it: the container runs as
a non-root user with the network off and ``SOURCE_DATE_EPOCH`` set; the source tarball, its
patches and the kernel tree are mounted read-only; RPMs are copied flat into a writable
staging directory, then into the caller's output directory.  The post-build checks are the
pipeline's next stage (``builder.builds.postbuild``).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import docker

from builder import log, resources
from builder.builds import container, engine, engine_inputs, images
from builder.builds.recipes import OUTPUT_DIR, PATCH_DIR, WORK_DIR, Command, Source
from builder.errors import BuildError, ConfigError, InputError
from builder.inputs.sourcetarball import SourceTarball
from builder.specs import DEFAULT_LIMITS, Limits, Target, at_least, version_numbers

CONTAINERS_DIR = resources.CONTAINERS_DIR
BUILD_USER = "builder"
# Where a kernel tree outside usr/src and usr/lib is mounted.
KERNEL_FALLBACK_DIR = "/build/kernel"
LOG_TAIL_LINES = 40
I386_ARCHES = frozenset({"i386", "i486", "i586", "i686", "athlon"})


def personality(arch: str) -> list[str]:
    """32-bit targets build under ``linux32`` so that ``uname -m`` and rpm see i686."""
    return ["linux32"] if arch in I386_ARCHES else []


def shell_script(commands: Sequence[Sequence[str]]) -> str:
    """A POSIX sh script that echoes each command, runs it, and stops at the first failure.

    Each command is echoed as ``$ <command>``, so the last such line of a failed build's log
    is the command that failed.
    """
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
        if target.build_context is None and not containers_dir.is_dir():
            raise ConfigError(
                f"Target {target.id}: the build contexts {containers_dir} are missing.",
                hint=resources.MISSING_HINT,
            )
        raise ConfigError(
            f"Target {target.id}: build context {context} has no Dockerfile.",
            hint=f"Set container.family to a directory under {containers_dir}, or "
            "container.context to a directory holding a Dockerfile.",
        )
    return context


@dataclass(frozen=True, kw_only=True)
class BuildImage:
    """A target's build image, resolved once: the context ``containers/<container.family>/``
    (or the target's own ``container.context``), the image's name, the ``BASE_IMAGE`` build
    argument (``container.image``) and the content hash its tag and the manifest carry."""

    context: Path
    name: str
    build_args: Mapping[str, str]
    context_sha256: str


def build_image_of(target: Target, containers_dir: Path = CONTAINERS_DIR) -> BuildImage:
    context = build_context_for(target, containers_dir)
    args = {"BASE_IMAGE": target.base_image} if target.base_image else {}
    return BuildImage(
        context=context,
        name=target.container_family if target.build_context is None else context.name,
        build_args=args,
        context_sha256=images.context_hash(context, args),
    )


def ensure_image(
    target: Target,
    *,
    client: docker.DockerClient | None = None,
    containers_dir: Path = CONTAINERS_DIR,
    log_file: Path | None = None,
    image: BuildImage | None = None,
) -> str:
    """Build (or reuse) the build image for ``target``; return its image id (``sha256:…``).

    ``image`` is the target's :func:`build_image_of`, when the caller resolved it already.
    """
    spec = image or build_image_of(target, containers_dir)
    return images.build_image(
        client or engine.connect(),
        context=spec.context,
        name=spec.name,
        build_args=spec.build_args,
        log_file=log_file,
        content_sha256=spec.context_sha256,
    )


def ensure_spatch_image(
    target: Target,
    *,
    client: docker.DockerClient | None = None,
    containers_dir: Path = CONTAINERS_DIR,
) -> str:
    """The helper image with coccinelle's spatch (DRBD 9's compat patches); built on demand."""
    context = target.spatch_context or containers_dir / "spatch"
    if not (context / "Dockerfile").is_file():
        raise ConfigError(
            f"Target {target.id}: spatch helper context {context} has no Dockerfile.",
            hint="Set container.spatch.context to a directory holding a Dockerfile.",
        )
    args = {"BASE_IMAGE": target.spatch_image} if target.spatch_image else {}
    return images.build_image(
        client or engine.connect(), context=context, name="spatch", build_args=args
    )


SPATCH_VERSION = re.compile(r"spatch version (\d+(?:\.\d+)*)")


def spatch_version(
    image: str,
    *,
    log_file: Path,
    client: docker.DockerClient | None = None,
    timeout: float = 120,
) -> str:
    """What ``spatch --version`` says in the helper image (also appended to ``log_file``)."""
    client = client or engine.connect()
    scratch = log_file.with_name(f".{log_file.name}.spatch-{os.getpid()}")
    try:
        result = container.run_logged(
            client,
            container.RunSpec(image=image, command=["spatch", "--version"], user=BUILD_USER),
            log_file=scratch,
            timeout=timeout,
        )
        text = scratch.read_text(encoding="utf-8", errors="replace")
    finally:
        scratch.unlink(missing_ok=True)
    with log_file.open("a", encoding="utf-8") as sink:
        sink.write(f"# spatch --version in the helper image {image}:\n{text}")
    match = SPATCH_VERSION.search(text)
    if result.exit_code != 0 or match is None:
        first = text.strip().splitlines()[0] if text.strip() else "no output"
        raise BuildError(
            f"The spatch helper image {image} has no working spatch "
            f"(`spatch --version` exited {result.exit_code}: {first}).",
            hint="Its Dockerfile must install coccinelle (containers/spatch/).",
        )
    return match.group(1)


def check_spatch(version: str, newer_than: tuple[int, ...], *, what: str) -> None:
    """Refuse a spatch that ``what`` (a DRBD release) cannot use, naming the version needed."""
    if not at_least(newer_than, version_numbers(version)):
        return  # newer than the bound
    needed = ".".join(map(str, newer_than))
    raise ConfigError(
        f"The spatch helper image has coccinelle {version}; {what}'s compat rules need a "
        f"coccinelle newer than {needed}.",
        hint="Use the default helper (containers/spatch/ on Debian 13, coccinelle 1.3.0), or "
        f"set container.spatch.image or .context in the target's spec to an image with "
        f"coccinelle newer than {needed}.",
    )


# ---------------------------------------------------------------------------------------------
# The build


@dataclass(frozen=True, kw_only=True)
class Run:
    """One container run of a recipe."""

    what: str  # for messages: "DRBD 8.4.11 module for 4.19.0+1"
    image: str
    arch: str
    commands: Sequence[Command]
    source: Source  # how the commands see the tarball and the patches
    tarball: SourceTarball  # mounted at source.path
    patches: Sequence[Path] = ()  # mounted under PATCH_DIR by the names in source.patches
    kernel_mounts: Sequence[container.BindMount] = ()
    mounts: Sequence[container.BindMount] = ()  # further read-only inputs
    environment: Mapping[str, str] = field(default_factory=dict)
    outputs: str = "*.rpm"  # what the run must leave in OUTPUT_DIR (a glob)
    limits: Limits = DEFAULT_LIMITS
    source_date_epoch: int | None = None  # default: the tarball's epoch (newest mtime)


@dataclass(frozen=True, kw_only=True)
class BuildResult:
    rpms: tuple[Path, ...]  # what the run made (RPMs, or the run's declared outputs), sorted
    commands: tuple[str, ...]  # the in-container commands, as shell lines
    shell: str  # what ran them: "/bin/sh -c", under "linux32" for 32-bit targets
    image: str
    source_date_epoch: int
    log_file: Path
    seconds: float


def run_build(
    run: Run,
    *,
    output_dir: Path,
    log_file: Path,
    timeout: float | None = None,
    client: docker.DockerClient | None = None,
) -> BuildResult:
    """Run ``run`` in a new container and copy the RPMs it made into ``output_dir``.

    ``output_dir`` must exist (the caller's ``*.partial`` directory).  The whole build log is
    appended to ``log_file``.  Raises :class:`BuildError` (with the failed command and the
    log's last lines) when the build fails, hits a limit or makes no RPM.  ``timeout``
    replaces the run's own time limit.
    """
    limits = run.limits
    if timeout is None:
        timeout = limits.timeout
    started = time.monotonic()
    tarball = run.tarball.path.resolve()
    if not tarball.is_file():
        raise InputError(f"Source tarball {tarball} does not exist.")
    if not output_dir.is_dir():
        raise InputError(f"Output directory {output_dir} does not exist.")
    epoch = run.tarball.epoch if run.source_date_epoch is None else run.source_date_epoch
    shell = [*personality(run.arch), "/bin/sh", "-c"]
    # The build user's uid is the image's, not ours, so the directory it writes to is open to
    # everyone; its parent is ours alone, so no other local user can reach into it.
    private = output_dir / ".from-container"
    shutil.rmtree(private, ignore_errors=True)
    private.mkdir(mode=0o700)
    staging = private / "out"
    staging.mkdir()
    os.chmod(staging, 0o777)  # noqa: S103
    patch_mounts = [
        container.BindMount(patch.resolve(), f"{PATCH_DIR}/{name}")
        for patch, name in zip(run.patches, run.source.patches, strict=True)
    ]
    spec = container.RunSpec(
        limits=limits,
        image=run.image,
        command=[*shell, shell_script(run.commands)],
        user=BUILD_USER,
        mounts=[
            container.BindMount(tarball, run.source.path),
            *patch_mounts,
            *run.kernel_mounts,
            *run.mounts,
            container.BindMount(staging.resolve(), OUTPUT_DIR, read_only=False),
        ],
        environment={
            **run.environment,
            "SOURCE_DATE_EPOCH": str(epoch),
            "HOME": WORK_DIR,
            "LC_ALL": "C",
            "TZ": "UTC",
        },
    )
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a", encoding="utf-8") as header:
        header.write(f"# {run.what} ({run.arch}) in image {run.image}\n")
        header.write(f"# SOURCE_DATE_EPOCH={epoch}\n")
        for key, value in sorted(run.environment.items()):
            header.write(f"# {key}={value}\n")
    try:
        client = client or engine.connect()
        container.reap_leftovers(client)
        spec = _for_engine(spec, client, log_file)
        with log.step(f"Build {run.what} ({run.arch})"):
            result = _run_container(client, spec, log_file=log_file, timeout=timeout)
            if result.timed_out:
                raise _build_error(
                    f"timed out after {timeout:.0f} s",
                    run.what,
                    log_file,
                    limit="--timeout, or container.limits.timeout in the target's spec",
                )
            if result.out_of_memory:
                raise _build_error(
                    f"killed at its memory limit of {limits.memory_mib} MiB",
                    run.what,
                    log_file,
                    limit="--memory, or container.limits.memory_mib in the target's spec",
                )
            if result.exit_code != 0:
                raise _build_error(f"exit status {result.exit_code}", run.what, log_file)
        rpms = []
        for built in sorted(staging.glob(run.outputs)):
            # What the container left is not trusted: a symlink or hard link there would make
            # this (often root) process copy a file of the host into the artifacts.
            info = built.lstat()
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                raise _build_error(
                    f"{built.name} in the output is not a plain file", run.what, log_file
                )
            # A copy, not a rename: the files then belong to the user running the tool, not to
            # whichever uid the image's build user has on this host.
            destination = output_dir / built.name
            shutil.copy2(built, destination, follow_symlinks=False)
            rpms.append(destination)
        if not rpms:
            raise _build_error(f"it left no {run.outputs} in {OUTPUT_DIR}", run.what, log_file)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return BuildResult(
        rpms=tuple(rpms),
        commands=tuple(shlex.join(c) for c in run.commands),
        shell=shlex.join(shell),
        image=run.image,
        source_date_epoch=epoch,
        log_file=log_file,
        seconds=time.monotonic() - started,
    )


def _for_engine(
    spec: container.RunSpec, client: docker.DockerClient, log_file: Path
) -> container.RunSpec:
    """``spec`` as the engine can run it: an engine elsewhere gets the same inputs at the same
    paths as a tar stream, and sends the staging directory's content back the same way."""
    if not engine.uploads_inputs(client):
        return spec
    with log_file.open("a", encoding="utf-8") as header:
        header.write("# inputs uploaded into the container, outputs sent back as a tar stream\n")
    return replace(spec, upload=True)


def _run_container(
    client: docker.DockerClient, spec: container.RunSpec, *, log_file: Path, timeout: float
) -> container.RunResult:
    ticker = _Ticker()

    def run_spec(ready: container.RunSpec) -> container.RunResult:
        return container.run_logged(
            client, ready, log_file=log_file, timeout=timeout, on_line=ticker
        )

    # An engine elsewhere keeps the large inputs it was sent once (engine_inputs).
    return engine_inputs.run(client, spec, run_spec) if spec.upload else run_spec(spec)


# Lines that name the cause of a failed build, which rpmbuild's closing summary of warnings
# can push out of the log's last lines.
ERROR_LINE = re.compile(
    r"(\berror:|\*\*\*|undefined reference|multiple definition|No such file or directory"
    r"|FAILED|can't find file to patch|Only garbage|malformed patch)"
)
ERROR_LINES = 12
COMMAND_LINE = "$ "


def failed_command(lines: Sequence[str]) -> str | None:
    """The command a failed build was running: the last one the script echoed."""
    for line in reversed(lines):
        if line.startswith(COMMAND_LINE):
            return line[len(COMMAND_LINE) :]
    return None


def _build_error(reason: str, what: str, log_file: Path, *, limit: str = "") -> BuildError:
    try:
        text = log_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    lines = text.rstrip("\n").splitlines()
    command = failed_command(lines)
    tail = lines[-LOG_TAIL_LINES:]
    earlier = [line for line in lines[: -LOG_TAIL_LINES or None] if ERROR_LINE.search(line)]
    causes = ""
    if earlier:
        shown = "\n".join("    " + line for line in earlier[:ERROR_LINES])
        causes = f"Errors earlier in the build log:\n{shown}\n"
    shown_tail = "\n".join("    " + line for line in tail)
    at = ""
    if command is not None and reason.startswith("exit status"):
        at = f" at `{command}`"
        if command.startswith("patch "):
            patch = command.rsplit("/", 1)[-1]
            at += f": the patch {patch} does not apply to this source"
    if any("Resource temporarily unavailable" in line for line in lines):
        causes += (
            "(Forks failed: the build may have hit the container's process limit, --pids or "
            "container.limits.pids.)\n"
        )
    if limit:
        at += f". That limit is set with {limit}"
    return BuildError(
        f"Building {what} failed ({reason}){at}. {causes}"
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
