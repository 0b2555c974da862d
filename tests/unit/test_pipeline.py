"""run_builds with the container stage faked: grouping, artifacts layout, no-op and failure."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from builder.builds import pipeline, postbuild
from builder.builds.drbdbuild import Built, BuiltUserland, DrbdBuild
from builder.builds.plan import plan
from builder.builds.recipes import recipe_for
from builder.builds.rpmbuild import BuildImage, BuildResult
from builder.errors import BuildError, CheckError, ConfigError, InputError, LockedError
from builder.inputs.checksums import PINNED, Vouched
from builder.inputs.fetch import Fetched, FetchSettings
from builder.inputs.kernel import KernelInputs, KernelTree
from builder.registry import load_registry
from builder.specs import Tarball


class Fakes:
    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp = tmp
        self.kernels: list[str] = []
        self.images: list[str] = []
        self.builds: list[tuple[str, str]] = []
        self.checked: list[DrbdBuild] = []
        self.fail = False
        self.problem: str | None = None
        source = tmp / "drbd.tar.gz"
        source.write_bytes(b"source")
        self.source = Fetched(path=source, sha256="s" * 64, origin=str(source))
        monkeypatch.setattr(pipeline, "prepare_kernel", self.prepare_kernel)
        # One build context per target: targets on one context share its image.
        monkeypatch.setattr(
            pipeline,
            "build_image_of",
            lambda t: BuildImage(
                context=tmp,
                name=t.container_family if t.build_context is None else tmp.name,
                build_args={},
                context_sha256=t.id.ljust(64, "c"),
            ),
        )
        monkeypatch.setattr(
            pipeline, "fetch_sources", lambda step, recipe, o: pipeline.Sources(self.source, None)
        )
        monkeypatch.setattr(pipeline, "ensure_image", self.ensure_image)
        monkeypatch.setattr(pipeline, "build_drbd", self.build_drbd)
        monkeypatch.setattr(postbuild, "check_packages", self.check_packages)

    def prepare_kernel(
        self, target: Any, settings: Any, inputs: Any, evr: str | None = None
    ) -> KernelTree:
        self.kernels.append(target.id)
        return KernelTree(
            release=target.kernel_release, root=self.tmp, build_dir=self.tmp, rpm=self.tmp,
            rpm_nvra="k", rpm_sha256=(evr or "r").ljust(64, "r"), rpm_version_release=evr or "1-1",
            source="iso",
            source_sha256="i" * 64,
        )  # fmt: skip

    def ensure_image(self, target: Any, image: BuildImage | None = None) -> str:
        self.images.append(target.id)
        return f"sha256:{target.id}"

    def build_drbd(self, build: DrbdBuild, **kwargs: Any) -> Built:
        version = build.drbd.version
        self.builds.append((build.kernel.release, version))
        kwargs["log_file"].write_text("log\n")
        if self.fail:
            raise BuildError("compiler said no")
        rpm = kwargs["output_dir"] / f"drbd-{version}.rpm"
        rpm.write_bytes(version.encode())
        fields: dict[str, Any] = {
            "rpms": (rpm,), "commands": ("rpmbuild -bb drbd-km.spec",), "shell": "/bin/sh -c",
            "image": build.image, "source_date_epoch": 1, "log_file": kwargs["log_file"],
            "seconds": 0.1,
        }  # fmt: skip
        userland = BuiltUserland(
            rpms=(), key="u" * 64, directory=self.tmp, reused=False, commands=("rpmbuild",)
        )
        return Built(rpms=(rpm,), module=BuildResult(**fields), userland=userland, kdir="/k")

    def check_packages(self, paths: Any, expect: Any) -> list[Any]:
        if self.problem is not None:
            raise CheckError(self.problem)
        return []


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fakes:
    return Fakes(tmp_path, monkeypatch)


def options(tmp: Path) -> pipeline.BuildOptions:
    return pipeline.BuildOptions(
        settings=FetchSettings(cache_dir=tmp / "cache", state_dir=tmp / "state"),
        kernel_inputs=KernelInputs(),
    )


def test_builds_of_one_target_share_its_kernel_tree_and_image(fakes: Fakes, tmp_path: Path) -> None:
    steps = plan(load_registry(), ["1.5", "1.6"], ["8.4.1", "8.3.16"], tmp_path / "artifacts")
    outcomes = pipeline.run_builds(steps, options(tmp_path))
    assert fakes.kernels == ["xcp-1.5", "xcp-1.6"]
    assert fakes.images == ["xcp-1.5", "xcp-1.6"]
    assert len(fakes.builds) == 4
    assert all(o.built for o in outcomes)
    manifest = json.loads((tmp_path / "artifacts/xcp-1.6/8.3.16/manifest.json").read_text())
    assert manifest["image"] == "sha256:xcp-1.6"
    assert manifest["consumer"] == "el5"
    assert manifest["basearch"] == "i386"
    assert manifest["outputs"][0]["file"] == "drbd-8.3.16.rpm"
    assert (tmp_path / "artifacts/xcp-1.6/8.3.16/build.log").read_text() == "log\n"


def test_unchanged_inputs_do_no_work_and_changed_ones_rebuild(fakes: Fakes, tmp_path: Path) -> None:
    steps = plan(load_registry(), ["1.5"], ["8.4.1"], tmp_path / "artifacts")
    pipeline.run_builds(steps, options(tmp_path))
    again = pipeline.run_builds(steps, options(tmp_path))
    assert [o.built for o in again] == [False]
    assert len(fakes.builds) == 1
    assert fakes.images == ["xcp-1.5"]  # nothing to build: no image needed either
    fakes.source = Fetched(path=fakes.source.path, sha256="t" * 64, origin="changed")
    third = pipeline.run_builds(steps, options(tmp_path))
    assert [o.built for o in third] == [True]


def test_a_failed_build_leaves_only_its_log(fakes: Fakes, tmp_path: Path) -> None:
    fakes.fail = True
    steps = plan(load_registry(), ["1.5"], ["8.4.1"], tmp_path / "artifacts")
    with pytest.raises(BuildError):
        pipeline.run_builds(steps, options(tmp_path))
    target_dir = tmp_path / "artifacts" / "xcp-1.5"
    assert sorted(p.name for p in target_dir.iterdir()) == ["8.4.1.build.log"]


def test_a_failed_rebuild_keeps_the_previous_complete_artifacts(
    fakes: Fakes, tmp_path: Path
) -> None:
    steps = plan(load_registry(), ["1.5"], ["8.4.1"], tmp_path / "artifacts")
    pipeline.run_builds(steps, options(tmp_path))
    fakes.source = Fetched(path=fakes.source.path, sha256="t" * 64, origin="changed")
    fakes.fail = True
    with pytest.raises(BuildError):
        pipeline.run_builds(steps, options(tmp_path))
    previous = tmp_path / "artifacts" / "xcp-1.5" / "8.4.1"
    assert (previous / "manifest.json").is_file()
    assert (previous / "drbd-8.4.1.rpm").read_bytes() == b"8.4.1"


def test_one_source_file_cannot_serve_several_versions(tmp_path: Path) -> None:
    steps = plan(load_registry(), ["1.5"], ["8.4.1", "8.4.2"], tmp_path)
    opts = pipeline.BuildOptions(
        settings=FetchSettings(cache_dir=tmp_path, state_dir=tmp_path / "state"),
        kernel_inputs=KernelInputs(),
        source=tmp_path / "drbd.tar.gz",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="single --drbd"):
        pipeline.run_builds(steps, opts)


def test_a_run_killed_between_the_two_renames_is_recovered(fakes: Fakes, tmp_path: Path) -> None:
    steps = plan(load_registry(), ["1.5"], ["8.4.1"], tmp_path / "artifacts")
    pipeline.run_builds(steps, options(tmp_path))
    final = tmp_path / "artifacts" / "xcp-1.5" / "8.4.1"
    final.rename(final.with_name("8.4.1.old-4242"))  # as if killed right after moving it aside
    again = pipeline.run_builds(steps, options(tmp_path))
    assert [o.built for o in again] == [False]  # the complete previous build was put back
    assert sorted(p.name for p in final.parent.iterdir()) == ["8.4.1"]


@pytest.mark.parametrize(
    "outputs", [[], ["drbd.rpm"], [{"file": "../../etc/passwd", "sha256": "x"}], None]
)
def test_a_malformed_manifest_means_rebuild(fakes: Fakes, tmp_path: Path, outputs: Any) -> None:
    steps = plan(load_registry(), ["1.5"], ["8.4.1"], tmp_path / "artifacts")
    pipeline.run_builds(steps, options(tmp_path))
    manifest_path = tmp_path / "artifacts" / "xcp-1.5" / "8.4.1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["outputs"] = outputs
    manifest_path.write_text(json.dumps(manifest))
    assert [o.built for o in pipeline.run_builds(steps, options(tmp_path))] == [True]


def test_the_module_must_require_the_exact_dom0_kernel_package(
    fakes: Fakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []

    def record(paths: Any, expect: Any) -> list[Any]:
        seen.append(expect)
        return []

    monkeypatch.setattr(postbuild, "check_packages", record)
    steps = plan(load_registry(), ["1.5"], ["8.4.1"], tmp_path / "artifacts")
    pipeline.run_builds(steps, options(tmp_path))
    # kernel-xen on XCP 1.x, at the version-release of the kernel-devel the tree came from.
    assert [str(r) for r in seen[0].kernel_package] == ["kernel-xen = 1-1"]
    manifest = json.loads((tmp_path / "artifacts/xcp-1.5/8.4.1/manifest.json").read_text())
    assert manifest["inputs"]["kernel_requires"] == ["kernel-xen = 1-1"]
    assert manifest["kernel_evr"] == "1-1"


def test_a_failed_check_leaves_no_complete_looking_artifacts(fakes: Fakes, tmp_path: Path) -> None:
    fakes.problem = "drbd-km-x.rpm: built for kernel 6.1"
    steps = plan(load_registry(), ["1.5"], ["8.4.1"], tmp_path / "artifacts")
    with pytest.raises(CheckError):
        pipeline.run_builds(steps, options(tmp_path))
    assert sorted(p.name for p in (tmp_path / "artifacts/xcp-1.5").iterdir()) == ["8.4.1.build.log"]


def test_one_drbd_utils_file_cannot_serve_several_drbd_utils_versions(tmp_path: Path) -> None:
    registry = load_registry()
    steps = plan(registry, ["1.5"], ["8.4.11"], tmp_path) + plan(registry, ["8.2"], [], tmp_path)
    opts = pipeline.BuildOptions(
        settings=FetchSettings(cache_dir=tmp_path, state_dir=tmp_path / "state"),
        kernel_inputs=KernelInputs(),
        utils_source=tmp_path / "drbd-utils.tar.gz",
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"the builds need 9\.22\.0, 9\.34\.0"):
        pipeline.run_builds(steps, opts)
    bundled = plan(load_registry(), ["1.5"], ["8.4.1"], tmp_path)
    with pytest.raises(ConfigError, match="none"):
        pipeline.run_builds(bundled, opts)


def test_a_local_drbd_utils_file_replaces_the_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetched: list[tuple[str, Path | None]] = []

    def fake_fetch(entry: Any, what: str, local: Path | None, options: Any) -> Fetched:
        fetched.append((what, local))
        return Fetched(path=tmp_path / f"{what}.tar.gz", sha256="0" * 64, origin="test")

    monkeypatch.setattr(pipeline, "fetch_tarball", fake_fetch)
    (step,) = plan(load_registry(), ["1.5"], ["8.4.11"], tmp_path)
    opts = pipeline.BuildOptions(
        settings=FetchSettings(cache_dir=tmp_path, state_dir=tmp_path / "state"),
        kernel_inputs=KernelInputs(),
        utils_source=tmp_path / "mine.tar.gz",
    )  # fmt: skip
    sources = pipeline.fetch_sources(step, recipe_for(step.drbd.family), opts)
    assert fetched == [("DRBD", None), ("drbd-utils", tmp_path / "mine.tar.gz")]
    assert sources.utils is not None


def test_a_second_build_of_the_same_target_and_version_waits_then_says_who_holds_it(
    fakes: Fakes, tmp_path: Path
) -> None:
    steps = plan(load_registry(), ["1.5"], ["8.4.1"], tmp_path / "artifacts")
    lock = tmp_path / "artifacts" / ".locks" / "xcp-1.5" / "8.4.1.lock"
    lock.parent.mkdir(parents=True)
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "locked"
            opts = replace(options(tmp_path), lock_timeout=0.3)
            with pytest.raises(LockedError) as caught:
                pipeline.run_builds(steps, opts)
            assert f"Another build (pid {holder.pid}) of xcp-1.5/8.4.1" in str(caught.value)
            assert caught.value.exit_code == 14
            assert fakes.builds == []
            assert not (tmp_path / "artifacts" / "xcp-1.5").exists()
        finally:
            holder.kill()
    # Released: the next build goes ahead.
    assert [o.built for o in pipeline.run_builds(steps, options(tmp_path))] == [True]


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.pwrite(fd, f"{os.getpid()}\\n".encode(), 0)
print("locked", flush=True)
time.sleep(60)
"""


def test_the_manifest_is_as_readable_as_the_rpms_beside_it(fakes: Fakes, tmp_path: Path) -> None:
    steps = plan(load_registry(), ["1.5"], ["8.4.1"], tmp_path / "artifacts")
    old = os.umask(0o022)
    try:
        pipeline.run_builds(steps, options(tmp_path))
    finally:
        os.umask(old)
    out = tmp_path / "artifacts" / "xcp-1.5" / "8.4.1"
    assert stat.S_IMODE((out / "manifest.json").stat().st_mode) == 0o644


def _tarball(directory: Path, top: str) -> Path:
    source = directory / top
    source.mkdir(parents=True)
    (source / "configure").write_text("#!/bin/sh\n")
    archive = directory / f"{top}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname=top)
    return archive


@pytest.mark.parametrize(
    ("what", "top", "accepted"),
    [
        ("drbd-utils", "drbd-utils-9.22.0", True),
        ("drbd-utils", "drbd-utils-9.34.0", False),
        ("DRBD", "drbd-8.4.11-1", True),
        ("DRBD", "drbd-8.4.1", False),
        ("DRBD", "drbd-8.4.110", False),
    ],
)
def test_a_local_tarball_must_be_the_release_its_entry_names(
    tmp_path: Path, what: str, top: str, accepted: bool
) -> None:
    registry = load_registry()
    drbd = registry.drbd_version("8.4.11")
    assert drbd.utils is not None
    entry: Tarball = drbd.utils if what == "drbd-utils" else drbd
    # the release check alone: the shipped pin (drbd-utils 9.22.0) would refuse this file first
    entry = dataclasses.replace(entry, sha256=None)
    local = _tarball(tmp_path / "mine", top)
    opts = pipeline.BuildOptions(
        settings=FetchSettings(cache_dir=tmp_path / "cache", state_dir=tmp_path / "state"),
        kernel_inputs=KernelInputs(),
    )
    if accepted:
        assert pipeline.fetch_tarball(entry, what, local, opts).path.is_file()
        return
    with pytest.raises(InputError) as caught:
        pipeline.fetch_tarball(entry, what, local, opts)
    assert f"{local.name} holds {top}/, but the build needs {what} {entry.version}" in str(
        caught.value
    )
    assert caught.value.exit_code == 5
    assert not (tmp_path / "state" / "checksums.lock").exists()  # nothing recorded as trusted


def test_the_manifest_records_how_each_input_was_trusted(
    fakes: Fakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pinned = Vouched("s" * 64, PINNED, "pin")
    fakes.source = dataclasses.replace(fakes.source, vouched=pinned)
    plain = fakes.prepare_kernel

    def signed(*args: Any, **kwargs: Any) -> KernelTree:
        tree = plain(*args, **kwargs)
        return dataclasses.replace(tree, source_trust="lock", rpm_trust="first-use")

    monkeypatch.setattr(pipeline, "prepare_kernel", signed)
    steps = plan(load_registry(), ["1.5"], ["8.4.1"], tmp_path / "artifacts")
    pipeline.run_builds(steps, options(tmp_path))
    manifest = json.loads((tmp_path / "artifacts/xcp-1.5/8.4.1/manifest.json").read_text())
    assert manifest["trust"] == {
        "kernel_source": "lock", "kernel_rpm": "first-use", "drbd_source": "pin",
    }  # fmt: skip
    assert "trust" not in manifest["inputs"]  # a second run's lock must not rebuild
    locked = Vouched("s" * 64, "recorded in L")
    recorded = Fetched(path=tmp_path, sha256="s" * 64, origin="x", vouched=locked)
    assert recorded.trusted_as == "lock"
    assert dataclasses.replace(recorded, untrusted=recorded_input()).trusted_as == "first-use"


def recorded_input() -> Any:
    from builder.inputs.fetch import Input

    return Input(what="t", url=None, file_name="t", key="t")


def test_verify_marks_what_rests_on_less_than_a_signature_or_a_pin(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from builder.commands.verify import print_trust

    print_trust({
        "el7/kmod-drbd-9.2.18.rpm": {
            "kernel_source": "vendor-signature 34AC", "kernel_rpm": "vendor-signature 34AC",
            "drbd_source": "first-use", "utils_source": "pin",
        },
        "el5/drbd-km-8.4.1.rpm": {},
    })  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "  el5/drbd-km-8.4.1.rpm: not recorded (built before trust was recorded)"
    assert out[2] == (
        "  el7/kmod-drbd-9.2.18.rpm: kernel source vendor-signature 34AC; kernel-devel "
        "vendor-signature 34AC; DRBD first-use (!); drbd-utils pin"
    )
