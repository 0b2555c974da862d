"""One DRBD build: the userland (shared) and the kernel module (per kernel), by the recipe.

The userland depends on the build image and its source, not on the kernel, so it is built once
per build context, userland source and adjustments, kept in ``<cache>/userland/<key>/`` and
copied into every build that shares it: targets on the same container family publish one and
the same file under one name-version-release.  The module is built for one kernel tree, with
``kernelversion``, ``kdir`` and the exact dom0 kernel requirement passed explicitly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import docker

from builder import __version__, log
from builder.builds import container
from builder.builds.postbuild import Expectation, kernel_facts
from builder.builds.recipes import (
    COCCI_CACHE,
    COMPAT_DIR,
    KMP_MACROS,
    MACRO_DIR,
    Job,
    KmodRecipe,
    Recipe,
    Requirement,
    Source,
    expected_packages,
    make_environment,
    parallel_jobs,
)
from builder.builds.rpmbuild import (
    BuildResult,
    Run,
    check_spatch,
    kernel_mounts,
    run_build,
    spatch_version,
)
from builder.errors import ConfigError, InputError
from builder.files import sha256_file, write_atomic
from builder.inputs.sourcetarball import SourceTarball, read_source_tarball
from builder.locks import file_lock
from builder.specs import DEFAULT_LIMITS, NO_ADJUSTMENTS, Adjustments, KernelRequirement, Limits

USERLAND_RECORD = "userland.json"


@dataclass(frozen=True, kw_only=True)
class SourceInput:
    """A fetched tarball with the adjustments that apply to it."""

    version: str
    tarball: Path
    sha256: str
    adjustments: Adjustments = NO_ADJUSTMENTS

    def read(self) -> SourceTarball:
        """The tarball, read (once per build: its value is handed on, never the path)."""
        return read_source_tarball(self.tarball, sha256=self.sha256)

    def adjustments_record(self) -> dict[str, Any]:
        adjust = self.adjustments
        return {
            "patches": [{"file": p.name, "sha256": sha256_file(p)} for p in adjust.patches],
            "configure": list(adjust.configure),
            "rpmbuild": list(adjust.rpmbuild),
            "make": dict(adjust.make),
            "cflags": adjust.cflags,
        }


@dataclass(frozen=True, kw_only=True)
class KernelInput:
    root: Path  # extraction root
    build_dir: Path  # kdir
    release: str  # uname -r
    # What the module package must require of dom0's kernel (Target.kernel_requirements); ()
    # keeps the spec's own default (tests of a bare tree).
    requires: tuple[KernelRequirement, ...] = ()
    # What identifies the tree's content (the kernel-devel RPM's sha256); "" if unknown.
    # DRBD 9's compat.h depends only on it, the source and the image, so it is remembered.
    identity: str = ""
    # What the module package's release gains for this kernel-devel (builder.inputs.kernels); ""
    # keeps the spec's release.
    release_suffix: str = ""


def _no_spatch_image() -> str:
    raise ConfigError("This build has no spatch helper image.")


@dataclass(frozen=True, kw_only=True)
class DrbdBuild:
    recipe: Recipe
    drbd: SourceInput
    utils: SourceInput | None  # the drbd-utils release for the module-only families
    kernel: KernelInput
    arch: str
    image: str
    context_sha256: str  # identifies the image's content (the userland cache key)
    module_adjustments: Adjustments = NO_ADJUSTMENTS  # the target's own
    # DRBD 9: the helper image with spatch, built when a compat patch must be made
    spatch_image: Callable[[], str] = _no_spatch_image
    limits: Limits = DEFAULT_LIMITS  # for every container run of the build

    @property
    def userland_source(self) -> SourceInput:
        if self.recipe.userland_from_utils:
            if self.utils is None:
                raise InputError(
                    f"DRBD {self.drbd.version} (family {self.recipe.family.value}) needs a "
                    "drbd-utils source for its userland."
                )
            return self.utils
        return self.drbd

    def expectation(self) -> Expectation:
        release = self.kernel.release
        return Expectation(
            kernel_release=release,
            arch=self.arch,
            version=self.drbd.version,
            packages=expected_packages(self.recipe, release),
            module_package=self.recipe.module_package(release),
            userland_version=self.userland_source.version,
            exact_userland=self.recipe.requirement is Requirement.EXACT,
            kernel_package=self.kernel.requires,
            release_suffix=self.kernel.release_suffix,
            kernel=kernel_facts(self.kernel.build_dir),
            overrides=isinstance(self.recipe, KmodRecipe),
        )


@dataclass(frozen=True, kw_only=True)
class ReadInputs:
    """What a build learns of its inputs before any container starts: its source tarballs,
    each read once and checked against the recipe, and how the container sees the kernel."""

    drbd: SourceTarball
    userland: SourceTarball  # the DRBD tarball itself for the bundled families
    userland_requires: str | None  # "drbd-utils >= X", as the DRBD tarball's spec file says
    kernel_mounts: tuple[container.BindMount, ...]  # the kernel tree, read-only
    kdir: str  # the kernel build directory as the container sees it


@dataclass(frozen=True, kw_only=True)
class BuiltUserland:
    rpms: tuple[Path, ...]  # in the userland cache
    key: str
    directory: Path
    reused: bool
    commands: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Built:
    rpms: tuple[Path, ...]  # module and userland, in output_dir
    module: BuildResult
    userland: BuiltUserland
    kdir: str
    compat: dict[str, str | None] | None = None  # DRBD 9: the compat patch's origin


def _environment(adjustments: Adjustments, jobs: int) -> dict[str, str]:
    # The spec's own make variables win, MAKEFLAGS included.
    environment = {**make_environment(jobs), **dict(adjustments.make)}
    if adjustments.cflags:
        environment["CFLAGS"] = adjustments.cflags
    return environment


def userland_key(build: DrbdBuild) -> str:
    source = build.userland_source
    record = {
        "tool": __version__,
        "context": build.context_sha256,
        "userland": build.recipe.userland.name,
        "source": source.sha256,
        "version": source.version,
        "arch": build.arch,
        "adjustments": source.adjustments_record(),
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _read_userland(directory: Path, key: str) -> BuiltUserland | None:
    """A finished userland build in ``directory``, if every file it records is intact."""
    try:
        record = json.loads((directory / USERLAND_RECORD).read_text(encoding="utf-8"))
        files = [(directory / item["file"], item["sha256"]) for item in record["rpms"]]
        commands = tuple(str(c) for c in record["commands"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not files or any(not p.is_file() or sha256_file(p) != sha for p, sha in files):
        return None
    return BuiltUserland(
        rpms=tuple(p for p, _ in files),
        key=key,
        directory=directory,
        reused=True,
        commands=commands,
    )


def ensure_userland(
    build: DrbdBuild,
    tarball: SourceTarball,
    *,
    cache_dir: Path,
    log_file: Path,
    timeout: float | None,
    client: docker.DockerClient | None,
) -> BuiltUserland:
    """The userland RPMs for ``build``: from the cache, or built now from ``tarball`` (its
    userland source, read) and cached."""
    key = userland_key(build)
    base = cache_dir / "userland"
    directory = base / key
    source = build.userland_source
    with file_lock(base / f"{key}.lock"):
        found = _read_userland(directory, key)
        if found is not None:
            log.info(f"{build.recipe.userland.name} {source.version} userland: reusing {directory}")
            with log_file.open("a", encoding="utf-8") as sink:
                sink.write(f"# userland reused from {directory}\n")
            return found
        partial = base / f"{key}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            job = Job(
                source=Source.of(tarball, source.version, source.adjustments.patches),
                arch=build.arch,
                adjustments=source.adjustments,
                jobs=parallel_jobs(build.limits.cpus),
            )
            commands = build.recipe.userland.commands(job)
            result = run_build(
                Run(
                    what=f"{build.recipe.userland.name} {source.version} userland",
                    image=build.image,
                    arch=build.arch,
                    commands=commands,
                    source=job.source,
                    tarball=tarball,
                    patches=source.adjustments.patches,
                    environment=_environment(source.adjustments, job.jobs),
                    limits=build.limits,
                ),
                output_dir=partial,
                log_file=log_file,
                timeout=timeout,
                client=client,
            )
            record = {
                "key": key,
                "source": {"file": source.tarball.name, "sha256": source.sha256},
                "commands": list(result.commands),
                "rpms": [{"file": p.name, "sha256": sha256_file(p)} for p in result.rpms],
            }
            write_atomic(partial / USERLAND_RECORD, (json.dumps(record, indent=2) + "\n").encode())
            shutil.rmtree(directory, ignore_errors=True)  # an unreadable leftover only
            os.replace(partial, directory)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return BuiltUserland(
        rpms=tuple(directory / p.name for p in result.rpms),
        key=key,
        directory=directory,
        reused=False,
        commands=result.commands,
    )


def build_module(
    build: DrbdBuild,
    inputs: ReadInputs,
    *,
    output_dir: Path,
    log_file: Path,
    cache_dir: Path,
    timeout: float | None,
    client: docker.DockerClient | None,
) -> tuple[BuildResult, dict[str, str | None] | None]:
    """Build the kernel module package from ``inputs.drbd`` into ``output_dir``; return the
    result and (DRBD 9) where the compat patch came from."""
    adjustments = build.drbd.adjustments + build.module_adjustments
    requires = build.kernel.requires
    job = Job(
        source=Source.of(inputs.drbd, build.drbd.version, adjustments.patches),
        arch=build.arch,
        adjustments=adjustments,
        kernel_release=build.kernel.release,
        kdir=inputs.kdir,
        kernel_requires=", ".join(map(str, requires)) or None,
        userland_requires=inputs.userland_requires,
        release_suffix=build.kernel.release_suffix or None,
        jobs=parallel_jobs(build.limits.cpus),
    )
    recipe = build.recipe
    environment = _environment(adjustments, job.jobs)
    if isinstance(recipe, KmodRecipe):
        # Never the online spatch service: the patch comes from the cache or our spatch run.
        environment["SPAAS"] = "false"
    elif job.kernel_requires is not None:
        # DRBD's drbd-km.spec makes the module require this (default: "kernel", any one).
        environment["DRBD_KMOD_REQUIRES"] = job.kernel_requires
    base = Run(
        what=f"DRBD {build.drbd.version} module for {build.kernel.release}",
        image=build.image,
        arch=build.arch,
        commands=(),
        source=job.source,
        tarball=inputs.drbd,
        patches=adjustments.patches,
        kernel_mounts=inputs.kernel_mounts,
        environment=environment,
        limits=build.limits,
    )
    extra: list[container.BindMount] = []
    compat = None
    if isinstance(recipe, KmodRecipe):
        checksum, entry, compat = ensure_compat(
            build,
            recipe,
            job,
            base,
            cache_dir=cache_dir,
            log_file=log_file,
            timeout=timeout,
            client=client,
        )
        if entry is not None:
            extra.append(container.BindMount(entry, COMPAT_DIR))
        extra.append(container.BindMount(KMP_MACROS, f"{MACRO_DIR}/{KMP_MACROS.name}"))
        commands = recipe.module_commands(job, checksum if entry is not None else None)
    else:
        commands = recipe.module_commands(job)
    result = run_build(
        replace(base, commands=commands, mounts=extra),
        output_dir=output_dir,
        log_file=log_file,
        timeout=timeout,
        client=client,
    )
    return result, compat


def ensure_compat(
    build: DrbdBuild,
    recipe: KmodRecipe,
    job: Job,
    template: Run,
    *,
    cache_dir: Path,
    log_file: Path,
    timeout: float | None,
    client: docker.DockerClient | None,
) -> tuple[str, Path | None, dict[str, str | None]]:
    """DRBD 9's compat patch for the target kernel: (md5 of compat.h, cache entry to feed,
    where it came from for the manifest).

    The entry is None when the tarball's own cocci_cache has the patch.  Otherwise it comes
    from ``<cache>/compat/`` or is made now by spatch in the helper image, with the network
    off, and kept there for the next build of the same source and kernel.
    """
    version, release = build.drbd.version, build.kernel.release
    patches = [(p.name, sha256_file(p)) for p in template.patches]
    source_key = hashlib.sha256(json.dumps([build.drbd.sha256, patches]).encode()).hexdigest()
    base = cache_dir / "compat" / source_key
    shipped_files = template.tarball.files if not patches else frozenset()

    def shipped(checksum: str) -> bool:
        return f"{COCCI_CACHE}/{checksum}/compat.patch" in shipped_files

    # compat.h depends only on the source, the kernel tree and the image: once known, the
    # compat tests (as long as the module's own build) need not run again to find it.
    memo = None
    if build.kernel.identity:
        kernel_key = f"{build.kernel.identity} {build.context_sha256}"
        memo = base / f"{hashlib.sha256(kernel_key.encode()).hexdigest()}.compat"
        remembered = memo.read_text().strip() if memo.is_file() else ""
        if re.fullmatch(r"[0-9a-f]{32}", remembered):
            if shipped(remembered):
                _note(log_file, f"compat patch {remembered}: from the tarball's cocci_cache")
                return remembered, None, _compat_record(remembered, None)
            if (base / remembered / "compat.patch").is_file():
                log.info(f"compat patch {remembered} for {release}: reusing {base / remembered}")
                _note(log_file, f"compat patch {remembered}: reused from {base / remembered}")
                return remembered, base / remembered, _compat_record(remembered, base)
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".compat-", dir=cache_dir))
    try:
        made = run_build(
            replace(
                template,
                what=f"DRBD {version} compat tests against {release}",
                commands=recipe.compat_commands(job),
                outputs="compat.h",
            ),
            output_dir=work,
            log_file=log_file,
            timeout=timeout,
            client=client,
        )
        compat_h = made.rpms[0]
        checksum = hashlib.md5(compat_h.read_bytes(), usedforsecurity=False).hexdigest()
        if memo is not None:
            write_atomic(memo, f"{checksum}\n".encode())
        if shipped(checksum):
            log.info(f"compat patch {checksum} for {release}: in the tarball's cocci_cache")
            _note(log_file, f"compat patch {checksum}: from the tarball's cocci_cache")
            return checksum, None, _compat_record(checksum, None)
        entry = _spatch_entry(
            build,
            recipe,
            job,
            replace(template, mounts=[container.BindMount(compat_h, f"{COMPAT_DIR}/compat.h")]),
            base / checksum,
            log_file=log_file,
            timeout=timeout,
            client=client,
        )
        return checksum, entry, _compat_record(checksum, base)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _compat_record(checksum: str, base: Path | None) -> dict[str, str | None]:
    """The manifest's account of the compat patch: the tarball's, or made by which spatch."""
    if base is None:
        return {"checksum": checksum, "from": "the tarball's cocci_cache", "spatch": None}
    version = None
    with contextlib.suppress(OSError):
        version = (base / f"{checksum}.spatch").read_text(encoding="utf-8").strip() or None
    return {"checksum": checksum, "from": "spatch in the helper image", "spatch": version}


def _spatch_entry(
    build: DrbdBuild,
    recipe: KmodRecipe,
    job: Job,
    template: Run,
    entry: Path,
    *,
    log_file: Path,
    timeout: float | None,
    client: docker.DockerClient | None,
) -> Path:
    """The cache entry ``entry`` (named for compat.h's md5): kept, or made by spatch now."""
    checksum = entry.name
    version, release = build.drbd.version, build.kernel.release
    with file_lock(entry.parent / f"{checksum}.lock"):
        if (entry / "compat.patch").is_file() and (entry / "compat.h").is_file():
            log.info(f"compat patch {checksum} for {release}: reusing {entry}")
            _note(log_file, f"compat patch {checksum}: reused from {entry}")
            return entry
        commands = recipe.spatch_commands(job, checksum)
        image = build.spatch_image()
        # Before spatch runs: one that cannot parse the rules fails late and obscurely.
        spatch = spatch_version(image, log_file=log_file, client=client)
        check_spatch(spatch, recipe.spatch_newer_than, what=f"DRBD {version}")
        log.info(f"spatch {spatch} in the helper image")
        partial = entry.with_name(f"{checksum}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            run_build(
                replace(
                    template,
                    what=f"DRBD {version} compat patch for {release} (spatch)",
                    image=image,
                    commands=commands,
                    kernel_mounts=(),
                    outputs="*",
                ),
                output_dir=partial,
                log_file=log_file,
                timeout=timeout,
                client=client,
            )
            if not (partial / "compat.patch").is_file():
                raise InputError(
                    f"spatch made no compat.patch for DRBD {version} and kernel {release}.",
                    hint=f"See the build log {log_file}.",
                )
            write_atomic(entry.with_name(f"{checksum}.spatch"), f"{spatch}\n".encode())
            shutil.rmtree(entry, ignore_errors=True)
            os.replace(partial, entry)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    _note(log_file, f"compat patch {checksum}: made by spatch {spatch}, kept in {entry}")
    return entry


def _note(log_file: Path, text: str) -> None:
    with contextlib.suppress(OSError), log_file.open("a", encoding="utf-8") as sink:
        sink.write(f"# {text}\n")


def read_inputs(build: DrbdBuild) -> ReadInputs:
    """The DRBD tarball and the userland's, each read once, and the kernel tree's mounts.
    Before any container starts, the recipe refuses a tarball it cannot build and a
    drbd-utils release the module cannot use, and a missing kernel tree is refused."""
    drbd = build.drbd.read()
    source = build.userland_source
    userland = drbd if source is build.drbd else source.read()
    requires = build.recipe.check_sources(
        drbd,
        userland,
        version=build.drbd.version,
        userland_version=source.version,
        utils=None if build.utils is None else build.utils.version,
    )
    mounts, kdir = kernel_mounts(build.kernel.root, build.kernel.build_dir)
    return ReadInputs(
        drbd=drbd,
        userland=userland,
        userland_requires=requires,
        kernel_mounts=tuple(mounts),
        kdir=kdir,
    )


def build_drbd(
    build: DrbdBuild,
    *,
    output_dir: Path,
    log_file: Path,
    cache_dir: Path,
    timeout: float | None = None,
    client: docker.DockerClient | None = None,
) -> Built:
    """Userland (cached) and module RPMs of ``build``, all in ``output_dir``; not yet checked."""
    inputs = read_inputs(build)
    userland = ensure_userland(
        build,
        inputs.userland,
        cache_dir=cache_dir,
        log_file=log_file,
        timeout=timeout,
        client=client,
    )
    module, compat = build_module(
        build,
        inputs,
        output_dir=output_dir,
        log_file=log_file,
        cache_dir=cache_dir,
        timeout=timeout,
        client=client,
    )
    copied = []
    for rpm in userland.rpms:
        destination = output_dir / rpm.name
        if destination.exists():
            raise InputError(
                f"The module build and the userland both made {rpm.name}.",
                hint="Check the recipe's spec files: one package must come from one build.",
            )
        shutil.copy2(rpm, destination)
        copied.append(destination)
    return Built(
        rpms=tuple(sorted([*module.rpms, *copied])),
        module=module,
        userland=userland,
        kdir=inputs.kdir,
        compat=compat,
    )


def userland_record(userland: BuiltUserland) -> dict[str, Any]:
    return {
        "key": userland.key,
        "reused": userland.reused,
        "commands": list(userland.commands),
        "rpms": [p.name for p in userland.rpms],
    }


def all_commands(built: Built) -> Sequence[str]:
    return [*built.userland.commands, *built.module.commands]
