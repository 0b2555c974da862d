"""Run planned builds: inputs → image → container build → checks → artifacts + manifest.

Builds of one target share its kernel tree and image; builds on one build context share a
userland (``builder.builds.drbdbuild``).  Each build writes into
``<target>/<version>.partial`` and is renamed to ``<target>/<version>`` only when its RPMs passed
the checks and its ``manifest.json`` is written, so a directory without ``.partial`` in its
name is always complete.  A build whose recorded inputs (kernel source, kernel RPM, DRBD
and drbd-utils sources, patches and other adjustments, build context, recipe, tool version)
are unchanged and whose outputs still hash the
same is skipped without starting Docker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Generic, TypeVar

from builder import __version__, log
from builder.artifacts import manifest
from builder.builds import container, postbuild
from builder.builds.drbdbuild import (
    Built,
    DrbdBuild,
    KernelInput,
    SourceInput,
    build_drbd,
    userland_record,
)
from builder.builds.plan import BuildStep
from builder.builds.recipes import Recipe, recipe_for
from builder.builds.rpmbuild import (
    BuildImage,
    build_image_of,
    ensure_image,
    ensure_spatch_image,
)
from builder.errors import (
    BuilderError,
    BuildsFailed,
    ConfigError,
    InputError,
    NoSpaceError,
    no_space,
)
from builder.files import sha256_file
from builder.inputs.checksums import lock_for
from builder.inputs.fetch import Fetched, FetchSettings, Input, fetch
from builder.inputs.kernel import KernelInputs, KernelTree, prepare_kernel
from builder.inputs.kernels import per_kernel, release_suffix
from builder.inputs.sourcetarball import read_source_tarball
from builder.locks import timed_lock
from builder.specs import Limits, Tarball, Target

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    settings: FetchSettings
    kernel_inputs: KernelInputs
    source: Path | None = None  # a local DRBD tarball (only with a single version)
    utils_source: Path | None = None  # a local drbd-utils tarball (one drbd-utils version)
    timeout: float | None = None  # replaces the target's container.limits.timeout
    lock_timeout: float = 3600.0  # waiting for another build of the same target and version
    jobs: int = 1  # builds at once (the command line's default: one per CPU)
    # command-line limits, each replacing the target's container.limits value when given
    memory_mib: int | None = None
    pids: int | None = None
    cpus: float | None = None

    def limits_for(self, target: Target) -> Limits:
        spec = target.limits
        return Limits(
            memory_mib=spec.memory_mib if self.memory_mib is None else self.memory_mib,
            pids=spec.pids if self.pids is None else self.pids,
            cpus=spec.cpus if self.cpus is None else self.cpus,
            timeout=spec.timeout if self.timeout is None else self.timeout,
        )


@dataclass(frozen=True)
class Outcome:
    step: BuildStep
    built: bool  # False: up to date, nothing was done, or failed
    error: BuilderError | None = None  # why the build failed


class _KeyedLocks:
    """One lock per key, for work that builds running at once must not do side by side."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[Hashable, threading.Lock] = {}

    def __call__(self, key: Hashable) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(key, threading.Lock())


# Two builds may need one file (a drbd-utils release, a kernel ISO): one fetches it, the
# other then finds it verified in the cache.
_FETCHING = _KeyedLocks()


def fetch_tarball(entry: Tarball, what: str, local: Path | None, options: BuildOptions) -> Fetched:
    with _FETCHING(("tarball", entry.url)):
        return _fetch_tarball(entry, what, local, options)


def _fetch_tarball(entry: Tarball, what: str, local: Path | None, options: BuildOptions) -> Fetched:
    project = "drbd-utils" if what == "drbd-utils" else "drbd"

    def verify(path: Path) -> None:
        # The release its spec entry names, not another one (a --source or --utils-source
        # of another version would otherwise fail deep inside rpmbuild, or build the wrong one).
        top = read_source_tarball(path).top_dir
        expected = f"{project}-{entry.version}"
        if top != expected and not top.startswith(f"{expected}-"):
            raise InputError(
                f"{path.name} holds {top}/, but the build needs {what} {entry.version} "
                f"({expected}/).",
                hint=f"Pass the {what} {entry.version} tarball, or build the version this one "
                "is (define it in a spec file if it is not there).",
            )

    return fetch(
        Input(
            what=f"{what} {entry.version} source",
            url=entry.url,
            file_name=entry.tarball_name,
            key=entry.url,
            pinned=entry.sha256,
            lock=lock_for(entry.spec_file, options.settings.state_dir),
            local=local,
        ),
        options.settings,
        verify=verify,
    )


@dataclass(frozen=True)
class Sources:
    drbd: Fetched
    utils: Fetched | None

    def trust(self) -> None:
        self.drbd.trust()
        if self.utils is not None:
            self.utils.trust()

    def trust_record(self, tree: KernelTree) -> dict[str, str]:
        """How each input of a build was trusted: vendor-signature, pin, lock, first-use."""
        record = {
            "kernel_source": tree.source_trust or "unknown",
            "kernel_rpm": tree.rpm_trust or "unknown",
            "drbd_source": self.drbd.trusted_as,
        }
        if self.utils is not None:
            record["utils_source"] = self.utils.trusted_as
        return record


def fetch_sources(step: BuildStep, recipe: Recipe, options: BuildOptions) -> Sources:
    drbd = fetch_tarball(step.drbd, "DRBD", options.source, options)
    utils = None
    if recipe.userland_from_utils and step.drbd.utils is not None:
        utils = fetch_tarball(step.drbd.utils, "drbd-utils", options.utils_source, options)
    return Sources(drbd, utils)


def drbd_build(
    step: BuildStep,
    *,
    recipe: Recipe,
    tree: KernelTree,
    sources: Sources,
    image: str,
    context_sha: str,
    spatch_image: Callable[[], str],
    limits: Limits,
) -> DrbdBuild:
    """What one step builds, as plain values (the image may be a placeholder until built)."""
    drbd = step.drbd
    utils = None
    if sources.utils is not None and drbd.utils is not None:
        utils = SourceInput(
            version=drbd.utils.version,
            tarball=sources.utils.path,
            sha256=sources.utils.sha256,
            adjustments=drbd.utils.adjustments,
        )
    return DrbdBuild(
        recipe=recipe,
        drbd=SourceInput(
            version=drbd.version,
            tarball=sources.drbd.path,
            sha256=sources.drbd.sha256,
            adjustments=drbd.adjustments,
        ),
        utils=utils,
        kernel=KernelInput(
            root=tree.root,
            build_dir=tree.build_dir,
            release=tree.release,
            requires=step.target.kernel_requirements(tree.rpm_version_release),
            identity=tree.rpm_sha256,
            release_suffix=release_suffix(tree.rpm_version_release)
            if per_kernel(step.target)
            else "",
        ),
        arch=step.target.arch,
        image=image,
        context_sha256=context_sha,
        module_adjustments=step.target.adjustments,
        spatch_image=spatch_image,
        limits=limits,
    )


def _inputs(
    step: BuildStep, build: DrbdBuild, tree: KernelTree, context: Path, context_sha: str
) -> dict[str, Any]:
    utils = build.utils
    inputs: dict[str, Any] = {
        "tool": f"xcp-drbd-builder {__version__}",
        "kernel_source": {"origin": tree.source.split("!/")[0], "sha256": tree.source_sha256},
        "kernel_rpm": {"nvra": tree.rpm_nvra, "sha256": tree.rpm_sha256},
        "drbd_source": {
            "file": build.drbd.tarball.name,
            "sha256": build.drbd.sha256,
            "adjustments": build.drbd.adjustments_record(),
        },
        "utils_source": None
        if utils is None
        else {
            "version": utils.version,
            "file": utils.tarball.name,
            "sha256": utils.sha256,
            "adjustments": utils.adjustments_record(),
        },
        "target_adjustments": SourceInput(
            version="", tarball=Path(), sha256="", adjustments=step.target.adjustments
        ).adjustments_record(),
        "build_context": {"path": str(context), "sha256": context_sha},
        "kernel_release": step.target.kernel_release,
        "family": step.drbd.family.value,
        "arch": step.target.arch,
        "kernel_evr": tree.rpm_version_release,
        "kernel_requires": [str(r) for r in build.kernel.requires],
    }
    if build.kernel.release_suffix:
        # Only where there is one: the inputs of single-kernel targets stay as they were.
        inputs["module_release_suffix"] = build.kernel.release_suffix
    return inputs


def _up_to_date(step: BuildStep, inputs: dict[str, Any], settings: FetchSettings) -> bool:
    try:
        _, recorded = manifest.load(step.output_dir / manifest.MANIFEST)
    except InputError:
        return False
    if recorded.get("inputs") != inputs:
        return False
    outputs = recorded.get("outputs")
    if not isinstance(outputs, list) or not outputs:
        return False
    hashes = settings.hashes
    for output in outputs:
        name = output.get("file") if isinstance(output, dict) else None
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            return False
        path = step.output_dir / name
        if not path.is_file() or hashes.sha256(path) != output.get("sha256"):
            return False
    return True


def _manifest(
    step: BuildStep,
    inputs: dict[str, Any],
    built: Built,
    compilers: dict[str, Any],
    trust: dict[str, str],
) -> dict[str, Any]:
    target = step.target
    result = built.module
    return {
        "target": target.id,
        "drbd_version": step.drbd.version,
        # the artifacts directory's name: publish takes only a directory its manifest names
        "build_name": step.build_name,
        "kernel_evr": inputs["kernel_evr"],
        "kernel_release": target.kernel_release,
        "consumer": target.consumer.value,
        "arch": target.arch,
        "basearch": target.basearch,
        "inputs": inputs,
        "image": result.image,
        "kdir": built.kdir,
        "source_date_epoch": result.source_date_epoch,
        "shell": result.shell,
        "commands": list(result.commands),
        "userland": userland_record(built.userland),
        **({"compat": built.compat} if built.compat is not None else {}),
        "compilers": compilers,
        # How each input was trusted on the run that built it (not an input: a second run
        # finds in a lock what the first trusted on first use)
        "trust": trust,
        "build_seconds": round(result.seconds, 1),
        "outputs": [
            {"file": path.name, "sha256": sha256_file(path), "size": path.stat().st_size}
            for path in built.rpms
        ],
    }


def _compilers(
    expect: postbuild.Expectation, packages: Sequence[postbuild.PackageInfo]
) -> dict[str, Any]:
    """The compiler the kernel tree records and the ones the modules' .comment names."""
    kernel = expect.kernel
    used = sorted({c for p in packages for f in p.module_facts.values() for c in f.compilers})
    return {
        "kernel": kernel.compiler if kernel else None,
        "kernel_record": kernel.compiler_record if kernel else None,
        "modules": used,
    }


def _build_one(
    step: BuildStep,
    *,
    build: DrbdBuild,
    sources: Sources,
    trust: dict[str, str],
    inputs: dict[str, Any],
    options: BuildOptions,
) -> None:
    final = step.output_dir
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = manifest.partial_of(final)
    log_file = final.with_name(f"{final.name}.{manifest.BUILD_LOG}")
    shutil.rmtree(partial, ignore_errors=True)
    log_file.unlink(missing_ok=True)
    partial.mkdir()
    try:
        built = build_drbd(
            build,
            output_dir=partial,
            log_file=log_file,
            cache_dir=options.settings.cache_dir,
            timeout=options.timeout,
        )
        expect = build.expectation()
        if expect.kernel is not None and expect.kernel.compiler is None:
            log.warn(
                f"kernel tree of {expect.kernel_release} records no compiler "
                f"({expect.kernel.compiler_record}); the module's compiler is not compared"
            )
        with log.step(
            f"Check {len(built.rpms)} RPMs against kernel {expect.kernel_release} and arch "
            f"{expect.arch}"
        ):
            packages = postbuild.check_packages(built.rpms, expect)
        os.replace(log_file, partial / manifest.BUILD_LOG)
        manifest.write(partial, _manifest(step, inputs, built, _compilers(expect, packages), trust))
        manifest.put_in_place(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    sources.trust()


def build_lock(step: BuildStep, timeout: float) -> contextlib.AbstractContextManager[None]:
    """One build at a time of one target, version and kernel into one artifacts directory: they
    share ``<build>.partial`` and ``<build>.build.log``.  The lock lives in
    ``ARTIFACTS/.locks/``, which publish does not read."""
    name = f"{step.target.id}/{step.build_name}"
    artifacts = step.output_dir.parent.parent
    return timed_lock(
        artifacts / ".locks" / step.target.id / f"{step.build_name}.lock",
        timeout=timeout,
        what=f"Another build (pid {{pid}}) of {name} is writing {step.output_dir.parent}",
        waiting=f"waiting for another build (pid {{pid}}) of {name}",
        hint="Wait for it to finish (it may leave nothing to do), or pass a longer --lock-timeout.",
    )


class _Once(Generic[T]):
    """Each key's value made once, by whichever thread asks first; the others wait for it
    (and get its error, if making it failed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: dict[Hashable, Future[T]] = {}

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        with self._lock:
            future = self._made.get(key)
            first = future is None
            if future is None:
                future = self._made[key] = Future()
        if first:
            try:
                future.set_result(make())
            except BaseException as exc:
                future.set_exception(exc)
        return future.result()


@dataclass
class _Shared:
    """What the builds of one run share: kernel trees, build contexts, images, sources."""

    trees: _Once[KernelTree] = field(default_factory=_Once)
    build_images: _Once[BuildImage] = field(default_factory=_Once)
    images: _Once[str] = field(default_factory=_Once)
    spatch_images: _Once[str] = field(default_factory=_Once)
    sources: _Once[Sources] = field(default_factory=_Once)


def _validate(steps: Sequence[BuildStep], options: BuildOptions) -> None:
    if options.source is not None and len({s.drbd.version for s in steps}) > 1:
        raise ConfigError("--source gives one tarball; use it with a single --drbd version.")
    if options.utils_source is not None:
        utils = {s.drbd.utils.version for s in steps if s.drbd.utils is not None}
        if len(utils) != 1:
            raise ConfigError(
                "--utils-source gives one drbd-utils tarball; the builds need "
                + (", ".join(sorted(utils)) if utils else "none (no module-only DRBD version)")
                + ".",
                hint="Build the DRBD versions that pair with one drbd-utils release at a time.",
            )


def _run_step(step: BuildStep, shared: _Shared, options: BuildOptions) -> Outcome:
    """One build: its target's kernel tree and image (shared, made once), then the build."""
    target = step.target

    def tree_of_target() -> KernelTree:
        # Targets on one kernel source take turns: the second finds it fetched and extracted.
        # So do the kernels of one yum source: they read the same repository metadata.
        with _FETCHING(("kernel", repr(target.kernel_source))):
            tree = prepare_kernel(target, options.settings, options.kernel_inputs, step.kernel)
        if step.kernel is not None and tree.rpm_version_release != step.kernel:
            raise InputError(
                f"{tree.rpm.name} is {target.kernel_package} {tree.rpm_version_release}, but "
                f"this build of {target.id} is for {step.kernel}.",
                hint="Pass the kernel-devel RPM of that release with --kernel-rpm, or that "
                "RPM's version-release to --kernel.",
            )
        return tree

    tree = shared.trees.get((target.id, step.kernel), tree_of_target)
    build_image = shared.build_images.get(target.id, lambda: build_image_of(target))
    context, context_sha = build_image.context, build_image.context_sha256
    # What the image's tag is made of: one image per key.
    image_key = (str(context), context_sha, build_image.name)
    recipe = recipe_for(step.drbd.family)
    sources = shared.sources.get(
        (step.drbd.version, step.drbd.url, recipe.userland_from_utils),
        lambda: fetch_sources(step, recipe, options),
    )
    planned = drbd_build(
        step,
        recipe=recipe,
        tree=tree,
        sources=sources,
        image="",
        context_sha=context_sha,
        spatch_image=lambda: shared.spatch_images.get(
            target.id, partial(ensure_spatch_image, target)
        ),
        limits=options.limits_for(target),
    )
    inputs = _inputs(step, planned, tree, context, context_sha)
    with build_lock(step, options.lock_timeout):
        manifest.recover(step.output_dir)
        if _up_to_date(step, inputs, options.settings):
            log.info(f"{step_name(step)}: up to date in {step.output_dir}; nothing to do")
            return Outcome(step, built=False)

        def make_image() -> str:
            with log.step(f"build image for {target.id} ({context})"):
                return ensure_image(target, image=build_image)

        image = shared.images.get(image_key, make_image)
        with log.step(step_name(step)):
            _build_one(
                step,
                build=replace(planned, image=image),
                sources=sources,
                trust=sources.trust_record(tree),
                inputs=inputs,
                options=options,
            )
    return Outcome(step, built=True)


def step_name(step: BuildStep) -> str:
    kernel = f" / kernel {step.kernel}" if step.kernel else ""
    return f"{step.target.id} / DRBD {step.drbd.version}{kernel}"


def _attempt(
    step: BuildStep,
    shared: _Shared,
    options: BuildOptions,
    report: Callable[[Outcome], None],
    *,
    prefix: bool,
) -> Outcome:
    """Run one step; its failure is its outcome (the other steps go on)."""
    with (
        log.prefixed(f"{step.target.id} {step.build_name}") if prefix else contextlib.nullcontext()
    ):
        try:
            try:
                outcome = _run_step(step, shared, options)
            except OSError as exc:
                if not no_space(exc):
                    raise
                raise NoSpaceError(
                    f"No space left on device for {step_name(step)}: writing "
                    f"{exc.filename or step.output_dir} failed.",
                    hint="Free some disk space (artifacts, cache) and run the build again; "
                    "nothing of the unfinished build is kept.",
                ) from None
        except BuilderError as exc:
            if prefix:
                # Said now, with the build's name on every line: the summary comes at the end.
                for line in f"{step_name(step)} failed: {exc}".splitlines():
                    log.warn(line)
            outcome = Outcome(step, built=False, error=exc)
    report(outcome)
    return outcome


def run_builds(
    steps: Sequence[BuildStep],
    options: BuildOptions,
    report: Callable[[Outcome], None] = lambda outcome: None,
) -> list[Outcome]:
    """Run every step, ``options.jobs`` at a time; ``report`` hears of each as it ends.

    A failed step does not stop the others.  When steps failed, the one error is raised (a
    single failure), or :class:`BuildsFailed` naming each of them.  An interrupt stops the
    running containers (their builds then clean up as failed builds do) and starts no more.
    """
    _validate(steps, options)
    shared = _Shared()
    jobs = max(1, min(options.jobs, len(steps)))
    if jobs == 1:
        outcomes = [_attempt(step, shared, options, report, prefix=False) for step in steps]
    else:
        outcomes = _run_parallel(steps, shared, options, report, jobs)
    failures = [(step_name(o.step), o.error) for o in outcomes if o.error is not None]
    if len(failures) == 1:
        raise failures[0][1]
    if failures:
        raise BuildsFailed(failures, len(outcomes))
    return outcomes


def _run_parallel(
    steps: Sequence[BuildStep],
    shared: _Shared,
    options: BuildOptions,
    report: Callable[[Outcome], None],
    jobs: int,
) -> list[Outcome]:
    lock = threading.Lock()

    def reported(outcome: Outcome) -> None:
        with lock:
            report(outcome)

    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="build") as pool:
        futures = [
            pool.submit(_attempt, step, shared, options, reported, prefix=True) for step in steps
        ]
        try:
            while wait(futures, timeout=0.5).not_done:
                pass
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM): nothing new starts, the running containers are
            # removed, and each build's thread cleans up its own partial output.
            for future in futures:
                future.cancel()
            while wait(futures, timeout=0.5).not_done:
                container.stop_all()
            container.stop_all()
            raise
        return [future.result() for future in futures]
