"""Run planned builds: inputs → image → container build → checks → artifacts + manifest.

Builds of one target share its kernel tree and image.  Each build writes into
``<target>/<version>.partial`` and is renamed to ``<target>/<version>`` only when its RPMs passed
the checks and its ``manifest.json`` is written, so a directory without ``.partial`` in its
name is always complete.  A build whose recorded inputs (kernel source, kernel RPM, DRBD
source, build context, recipe, tool version) are unchanged and whose outputs still hash the
same is skipped without starting Docker.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder import __version__, log
from builder.checksums import ChecksumLock, sha256_file, write_atomic
from builder.container import context_hash
from builder.errors import ConfigError
from builder.fetch import Fetched, FetchSettings, Input, fetch
from builder.kernel import KernelInputs, KernelTree, prepare_kernel
from builder.plan import BuildStep
from builder.rpmbuild import (
    BuildResult,
    build_context_for,
    build_drbd,
    ensure_image,
    tarball_top_dir,
)
from builder.specs import DrbdVersion, Target

MANIFEST = "manifest.json"
BUILD_LOG = "build.log"


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    settings: FetchSettings
    kernel_inputs: KernelInputs
    source: Path | None = None  # a local DRBD tarball (only with a single version)
    timeout: float | None = None


@dataclass(frozen=True)
class Outcome:
    step: BuildStep
    built: bool  # False: up to date, nothing was done


def fetch_source(version: DrbdVersion, options: BuildOptions) -> Fetched:
    return fetch(
        Input(
            what=f"DRBD {version.version} source",
            url=version.url,
            file_name=version.tarball_name,
            key=version.url,
            pinned=version.sha256,
            lock=ChecksumLock(version.lock_file),
            local=options.source,
        ),
        options.settings,
        verify=tarball_top_dir,
    )


def _context_sha256(target: Target) -> tuple[Path, str]:
    context = build_context_for(target)
    args = {"BASE_IMAGE": target.base_image} if target.base_image else {}
    return context, context_hash(context, args)


def _inputs(
    step: BuildStep, tree: KernelTree, source: Fetched, context: Path, context_sha: str
) -> dict[str, Any]:
    return {
        "tool": f"xcp-drbd-builder {__version__}",
        "kernel_source": {"origin": tree.source.split("!/")[0], "sha256": tree.source_sha256},
        "kernel_rpm": {"nvra": tree.rpm_nvra, "sha256": tree.rpm_sha256},
        "drbd_source": {"file": source.path.name, "sha256": source.sha256},
        "build_context": {"path": str(context), "sha256": context_sha},
        "kernel_release": step.target.kernel_release,
        "family": step.drbd.family.value,
        "arch": step.target.arch,
        "kernel_runtime": step.target.kernel_runtime,
    }


def _up_to_date(step: BuildStep, inputs: dict[str, Any], settings: FetchSettings) -> bool:
    try:
        manifest = json.loads((step.output_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or manifest.get("inputs") != inputs:
        return False
    outputs = manifest.get("outputs")
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
    result: BuildResult,
) -> dict[str, Any]:
    target = step.target
    return {
        "target": target.id,
        "drbd_version": step.drbd.version,
        "kernel_release": target.kernel_release,
        "consumer": target.consumer.value,
        "arch": target.arch,
        "basearch": target.basearch,
        "inputs": inputs,
        "image": result.image,
        "kdir": result.kdir,
        "source_date_epoch": result.source_date_epoch,
        "shell": result.shell,
        "commands": list(result.commands),
        "build_seconds": round(result.seconds, 1),
        "outputs": [
            {"file": path.name, "sha256": sha256_file(path), "size": path.stat().st_size}
            for path in result.rpms
        ],
    }


def _recover(final: Path) -> None:
    """Undo what a run killed between the two renames of :func:`_replace_dir` left behind."""
    for old in sorted(final.parent.glob(f"{final.name}.old-*")):
        if not final.exists() and (old / MANIFEST).is_file():
            os.replace(old, final)
        else:
            shutil.rmtree(old, ignore_errors=True)


def _replace_dir(partial: Path, final: Path) -> None:
    """Put ``partial`` in place of ``final``; a stale ``final`` is moved aside first."""
    old = final.with_name(f"{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(partial, final)
    shutil.rmtree(old, ignore_errors=True)


def _build_one(
    step: BuildStep,
    *,
    tree: KernelTree,
    image: str,
    source: Fetched,
    inputs: dict[str, Any],
    options: BuildOptions,
) -> None:
    final = step.output_dir
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f"{final.name}.partial")
    log_file = final.with_name(f"{final.name}.{BUILD_LOG}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        result = build_drbd(
            image=image,
            source_tarball=source.path,
            kernel_root=tree.root,
            kernel_build_dir=tree.build_dir,
            kernel_release=tree.release,
            family=step.drbd.family,
            version=step.drbd.version,
            arch=step.target.arch,
            output_dir=partial,
            log_file=log_file,
            timeout=options.timeout,
            kernel_requires=step.target.kernel_runtime,
        )
        os.replace(log_file, partial / BUILD_LOG)
        manifest = _manifest(step, inputs, result)
        write_atomic(partial / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
        _replace_dir(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    source.trust()


def run_builds(steps: Sequence[BuildStep], options: BuildOptions) -> list[Outcome]:
    if options.source is not None and len({s.drbd.version for s in steps}) > 1:
        raise ConfigError("--source gives one tarball; use it with a single --drbd version.")
    outcomes: list[Outcome] = []
    by_target: dict[str, list[BuildStep]] = {}
    for step in steps:
        by_target.setdefault(step.target.id, []).append(step)
    for target_steps in by_target.values():
        target = target_steps[0].target
        tree = prepare_kernel(target, options.settings, options.kernel_inputs)
        context, context_sha = _context_sha256(target)
        image: str | None = None
        for step in target_steps:
            source = fetch_source(step.drbd, options)
            inputs = _inputs(step, tree, source, context, context_sha)
            _recover(step.output_dir)
            if _up_to_date(step, inputs, options.settings):
                log.info(
                    f"{target.id} / DRBD {step.drbd.version}: up to date in {step.output_dir}; "
                    "nothing to do"
                )
                outcomes.append(Outcome(step, built=False))
                continue
            if image is None:
                with log.step(f"build image for {target.id} ({context})"):
                    image = ensure_image(target)
            with log.step(f"{target.id} / DRBD {step.drbd.version}"):
                _build_one(
                    step, tree=tree, image=image, source=source, inputs=inputs, options=options
                )
            outcomes.append(Outcome(step, built=True))
    return outcomes
