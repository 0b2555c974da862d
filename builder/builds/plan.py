"""The pure planner: which builds to run, grouped so that one target's builds share its work.

``plan()`` turns the selected targets and DRBD versions into frozen :class:`BuildStep` values,
deterministically and without touching the network, Docker or the disk.  ``build --dry-run``
prints it and ``matrix`` emits it as JSON for an external CI engine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from builder import resources
from builder.builds.recipes import recipe_for
from builder.errors import ConfigError
from builder.inputs.kernels import build_name
from builder.specs import DrbdVersion, Registry, SourceKind, Target

CONTAINERS_DIR = resources.CONTAINERS_DIR


@dataclass(frozen=True, kw_only=True)
class BuildStep:
    target: Target
    drbd: DrbdVersion
    output_dir: (
        Path  # artifacts/<target>/<version>, or <version>+k<kernel> (builder.inputs.kernels)
    )
    # The kernel-devel version-release this build is for, when the target is built per kernel
    # (a yum kernel source); None: the target's one kernel.
    kernel: str | None = None

    @property
    def build_name(self) -> str:
        return self.output_dir.name

    @property
    def build_context(self) -> Path:
        return self.target.build_context or CONTAINERS_DIR / self.target.container_family

    def describe(self) -> list[str]:
        target, source = self.target, self.target.kernel_source
        if source.kind is SourceKind.ISO:
            kernel_from = f"{source.path} inside {source.url or source.file_name}"
        elif source.kind is SourceKind.RPM:
            kernel_from = source.url or source.file_name
        else:
            which = (
                f"{target.kernel_package}-{self.kernel}"
                if self.kernel
                else f"newest {target.kernel_package} {source.evr or ''}"
            )
            kernel_from = f"{which} in " + ", ".join(source.repos)
        image = f"build context {self.build_context}"
        if target.base_image:
            image += f" on base image {target.base_image}"
        recipe = recipe_for(self.drbd.family)
        module = recipe.module_package(target.kernel_release)
        utils = self.drbd.utils
        if utils is not None:
            userland = f"drbd-utils {utils.version} from {utils.url} (shared per build context)"
            pairing = f"a drbd-utils range that {utils.version} satisfies"
        else:
            userland = "from the same tarball (shared per build context)"
            pairing = f"drbd-utils = {self.drbd.version}"
        patches = [p.name for p in (self.drbd.adjustments + target.adjustments).patches]
        lines = [
            f"{target.id} / DRBD {self.drbd.version}"
            + (f" / kernel {self.kernel}" if self.kernel else "")
            + f" ({self.drbd.family.value} recipe)",
            f"  kernel:  {target.kernel_package} from {kernel_from}",
            f"           build tree must report release {target.kernel_release}",
            f"  source:  {self.drbd.url}",
            f"  userland: {userland}",
            f"  image:   {image}",
            f"  build:   {target.arch} RPMs with kernelversion={target.kernel_release} and kdir "
            "set explicitly, network off",
            f"  checks:  vermagic starts with {target.kernel_release}; {module} requires "
            f"{pairing} and "
            + ", ".join(map(str, target.kernel_requirements("<kernel-devel version-release>")))
            + f"; arch "
            f"{target.arch}/{target.basearch}/noarch",
            f"  output:  {self.output_dir}",
        ]
        if patches:
            lines.insert(4, f"  patches: {', '.join(patches)}")
        if recipe.module_spec == "drbd-kernel.spec":
            lines.insert(
                -1,
                "  compat:  DRBD's compat patch for the kernel from the tarball's cocci_cache, "
                "the cache, or spatch in the helper image (network off, never the online "
                "service)",
            )
        return lines

    def to_json(self) -> dict[str, str]:
        return {
            "target": self.target.id,
            "drbd": self.drbd.version,
            "utils": self.drbd.utils.version if self.drbd.utils else "",
            "family": self.drbd.family.value,
            "kernel_release": self.target.kernel_release,
            # what `build --kernel` takes for this one job
            "kernel": self.kernel or "latest",
            # artifacts/<target>/<build>/: where the job's build lands, relative to --artifacts
            "build": self.build_name,
            "output": str(self.output_dir),
        }


def refuse_unbuildable(registry: Registry, targets: Sequence[str], versions: Sequence[str]) -> None:
    """Raise for the first (target, DRBD version) pair whose kernel range excludes the
    target's kernel: before any download, extraction or container."""
    for target in registry.targets_named(targets):
        for version in versions or target.drbd_versions:
            refusal = registry.drbd_version(version).refusal(target)
            if refusal is not None:
                raise refusal


def plan(
    registry: Registry,
    targets: Sequence[str],
    versions: Sequence[str],
    artifacts: Path,
    kernels: Mapping[str, Sequence[str]] | None = None,
) -> list[BuildStep]:
    """One step per (target, version, kernel), targets in the order given, duplicates dropped.

    ``all`` stands for every target of the registry.  Without ``versions``, each target gets
    the DRBD versions its spec lists as fitting it.  ``kernels`` names the kernel-devel
    version-releases of each target built per kernel (``builder.inputs.kernels.resolve``); a target
    it does not name gets one step per version.
    """
    kernels = kernels or {}
    refuse_unbuildable(registry, targets, versions)
    resolved_targets = registry.targets_named(targets)
    steps: list[BuildStep] = []
    for target in resolved_targets:
        wanted = versions or target.drbd_versions
        if not wanted:
            raise ConfigError(
                f"Target {target.id} lists no DRBD versions; name them with --drbd.",
                hint="`targets` shows the DRBD versions and which dom0 kernels they fit.",
            )
        resolved_versions: list[DrbdVersion] = []
        for version in wanted:
            entry = registry.drbd_version(version)
            if entry not in resolved_versions:
                resolved_versions.append(entry)
        evrs: Sequence[str | None] = kernels.get(target.id) or [None]
        steps += [
            BuildStep(
                target=target,
                drbd=v,
                output_dir=artifacts / target.id / build_name(v.version, evr),
                kernel=evr,
            )
            for v in resolved_versions
            for evr in evrs
        ]
    return steps
