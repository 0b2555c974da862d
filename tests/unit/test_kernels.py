"""Per-kernel builds of yum-sourced targets: selection, naming, the plan, the matrix, the
release suffix in the recipes, publish's scan rule and the up-to-date skip (no network, no
Docker: the repositories' listing is faked)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from builder.artifacts.manifest import scan as scan_artifacts
from builder.builds import pipeline, recipes
from builder.builds.plan import plan
from builder.builds.recipes import Job, Source
from builder.cli import main
from builder.errors import ConfigError, InputError
from builder.inputs import kernels
from builder.inputs.fetch import FetchSettings
from builder.inputs.kernel import KernelInputs
from builder.inputs.yumsource import RepoPackage
from builder.registry import load_registry
from builder.specs import DrbdFamily
from tests.unit.test_pipeline import Fakes

# newest first, as builder.inputs.kernels.packages lists them
HELD = ["4.19.19-7.0.23.1.xcpng8.2", "4.19.19-7.0.15.1.xcpng8.2", "4.19.19-7.0.9.1.xcpng8.2"]


@pytest.fixture
def repository(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the yum kernel source of xcp-ng-8.2 and 8.3 holds; a test may add to it."""
    held = list(HELD)
    monkeypatch.setattr(kernels, "available", lambda target, settings: list(held))
    return held


def settings(tmp: Path) -> FetchSettings:
    return FetchSettings(cache_dir=tmp / "cache", state_dir=tmp / "state")


@pytest.mark.parametrize(
    ("choice", "selected"),
    [
        ("latest", HELD[:1]),
        ("all", HELD),
        ("*-7.0.1*", HELD[1:2]),
        ("4.19.19-7.0.9.1.xcpng8.2", HELD[2:]),
        ("*-8.0.*", []),
    ],
)
def test_selection_takes_the_newest_every_match_or_a_glob(choice: str, selected: list[str]) -> None:
    assert kernels.select(HELD, choice) == selected


def test_build_names_and_release_suffixes_are_plain_and_kept_apart() -> None:
    assert kernels.build_name("8.4.11", None) == "8.4.11"
    assert kernels.build_name("8.4.11", HELD[0]) == "8.4.11+k4.19.19-7.0.23.1.xcpng8.2"
    with pytest.raises(InputError, match="plain directory name"):
        kernels.build_name("8.4.11", "4.19/../x")
    # rpm takes no "-" in a release; "~" and "^" would change its order
    assert kernels.release_suffix("4.19.19-7.0.23.1.xcpng8.2") == ".k4.19.19_7.0.23.1.xcpng8.2"
    assert kernels.release_suffix("1.0~rc1-2^x") == ".k1.0_rc1_2_x"
    assert len({kernels.release_suffix(evr) for evr in HELD}) == len(HELD)


def test_resolve_builds_oldest_first_and_refuses_choices_for_one_kernel_targets(
    repository: list[str], tmp_path: Path
) -> None:
    registry = load_registry()
    ng, iso = registry.target("8.2"), registry.target("1.5")
    assert kernels.resolve([ng, iso], None, settings(tmp_path)) == {"xcp-ng-8.2": (HELD[0],)}
    assert kernels.resolve([ng, iso], "all", settings(tmp_path)) == {
        "xcp-ng-8.2": tuple(reversed(HELD))
    }
    with pytest.raises(ConfigError, match="takes its one kernel-devel from an ISO") as caught:
        kernels.resolve([ng, iso], "*-7.0.*", settings(tmp_path))
    assert caught.value.exit_code == 2
    with pytest.raises(InputError, match=r"matches --kernel 9\.9"):
        kernels.resolve([ng], "9.9", settings(tmp_path))


def test_the_spec_sets_the_default_selection(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    text = (Path(__file__).parents[2] / "specs" / "targets.yaml").read_text()
    text = text.replace("evr: 4.19.19-7.0.*", "evr: 4.19.19-7.0.*\n        kernels: all")
    (specs / "targets.yaml").write_text(text)
    registry = load_registry([specs], builtin=True)
    assert registry.target("8.2").kernel_source.kernels == "all"
    assert registry.target("8.3").kernel_source.kernels == "latest"
    bad = text.replace("kernels: all", "kernels: 'a b'")
    (specs / "targets.yaml").write_text(bad)
    with pytest.raises(ConfigError, match="kernels"):
        load_registry([specs])


def test_plan_has_one_step_per_kernel_in_its_own_directory(tmp_path: Path) -> None:
    chosen = {"xcp-ng-8.2": tuple(reversed(HELD))}
    steps = plan(load_registry(), ["8.2", "1.5"], [], tmp_path, chosen)
    assert [(s.target.id, s.kernel, s.build_name) for s in steps] == [
        ("xcp-ng-8.2", HELD[2], f"9.2.18+k{HELD[2]}"),
        ("xcp-ng-8.2", HELD[1], f"9.2.18+k{HELD[1]}"),
        ("xcp-ng-8.2", HELD[0], f"9.2.18+k{HELD[0]}"),
        ("xcp-1.5", None, "8.4.1"),
        ("xcp-1.5", None, "8.3.16"),
    ]
    assert steps[0].output_dir == tmp_path / "xcp-ng-8.2" / f"9.2.18+k{HELD[2]}"
    assert f"kernel-devel-{HELD[2]} in https://updates.xcp-ng.org" in steps[0].describe()[1]


def test_matrix_has_one_entry_per_kernel_naming_it(
    repository: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = ["matrix", "--cache", str(tmp_path), "--xcp", "8.2", "1.5"]
    assert main([*args, "--kernel", "all"]) == 0
    entries = json.loads(capsys.readouterr().out)["include"]
    assert [(e["target"], e["drbd"], e["kernel"]) for e in entries] == [
        ("xcp-ng-8.2", "9.2.18", HELD[2]),
        ("xcp-ng-8.2", "9.2.18", HELD[1]),
        ("xcp-ng-8.2", "9.2.18", HELD[0]),
        ("xcp-1.5", "8.4.1", "latest"),
        ("xcp-1.5", "8.3.16", "latest"),
    ]
    assert entries[0]["output"].endswith(f"/xcp-ng-8.2/9.2.18+k{HELD[2]}")
    assert main(args) == 0  # the spec's default: latest
    assert [e["kernel"] for e in json.loads(capsys.readouterr().out)["include"]] == [
        HELD[0],
        "latest",
        "latest",
    ]
    # A pair outside the release's kernel range is refused before the repository is read.
    assert main([*args, "--drbd", "9.2.19"]) == 2
    assert "DRBD 9.2.19 does not build against xcp-1.5's kernel" in capsys.readouterr().err
    # a job of that matrix: the one exact kernel
    assert main([*args[:4], "8.2", "--drbd", "9.2.19", "--kernel", HELD[1]]) == 0
    assert [e["kernel"] for e in json.loads(capsys.readouterr().out)["include"]] == [HELD[1]]


def test_a_glob_for_an_iso_target_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["matrix", "--cache", str(tmp_path), "--xcp", "1.5", "--kernel", "2.6*"])
    assert code == 2
    assert "takes its one kernel-devel from an ISO" in capsys.readouterr().err


def job(suffix: str | None) -> Job:
    source = Source(file_name="drbd-8.4.11-1.tar.gz", top_dir="drbd-8.4.11-1", version="8.4.11")
    return Job(source=source, arch="x86_64", kernel_release="4.19.0+1", kdir="/k",
               release_suffix=suffix)  # fmt: skip


def test_module_packages_get_the_release_suffix_in_every_family() -> None:
    suffix = kernels.release_suffix(HELD[0])
    for family in (DrbdFamily.V84, DrbdFamily.V83):
        recipe = recipes.recipe_for(family)
        commands = recipe.module_commands(job(suffix))
        sed = next(c for c in commands if c[0] == "sed" and "/a Release" in c[-2])
        assert sed[-2].endswith(f"/a Release: %{{release}}{suffix}")
        assert "%{krelver}" in sed[-2]
        # the build stops when the spec had no module subpackage to put it under
        assert ["grep", "-qxF", f"Release: %{{release}}{suffix}"] == commands[
            commands.index(sed) + 1
        ][:3]
        assert commands.index(sed) < next(i for i, c in enumerate(commands) if c[0] == "rpmbuild")
        assert not any("Release:" in " ".join(c) for c in recipe.module_commands(job(None)))
    kmod = recipes.recipe_for(DrbdFamily.V9).module_commands(job(suffix))
    rpmbuild = next(c for c in kmod if c[0] == "rpmbuild")
    assert f"xdb_release_suffix {suffix}" in rpmbuild
    assert "%{?xdb_release_suffix}" in recipes.KMP_MACROS.read_text()


def test_a_new_kernel_is_one_new_build_and_publish_scans_every_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes = Fakes(tmp_path, monkeypatch)
    artifacts = tmp_path / "artifacts"
    registry = load_registry()
    opts = pipeline.BuildOptions(settings=settings(tmp_path), kernel_inputs=KernelInputs())

    def run(evrs: list[str]) -> list[bool]:
        steps = plan(registry, ["8.2"], ["8.4.1"], artifacts, {"xcp-ng-8.2": tuple(evrs)})
        return [o.built for o in pipeline.run_builds(steps, opts)]

    old = list(reversed(HELD))
    assert run(old) == [True, True, True]
    assert run([*old, "4.19.19-7.0.24.1.xcpng8.2"]) == [False, False, False, True]
    assert len(fakes.builds) == 4
    assert fakes.images == ["xcp-ng-8.2"] * 2  # once per run that builds something
    manifest: dict[str, Any] = json.loads(
        (artifacts / "xcp-ng-8.2" / f"8.4.1+k{HELD[0]}" / "manifest.json").read_text()
    )
    assert manifest["build_name"] == f"8.4.1+k{HELD[0]}"
    assert manifest["kernel_evr"] == HELD[0]
    assert manifest["drbd_version"] == "8.4.1"
    assert manifest["inputs"]["module_release_suffix"] == kernels.release_suffix(HELD[0])
    builds = scan_artifacts(artifacts, lambda: registry)
    assert len(builds) == 4
    assert {b.drbd_version for b in builds} == {"8.4.1"}


def test_a_local_kernel_rpm_of_another_release_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes = Fakes(tmp_path, monkeypatch)
    # the tree of another release than asked for (a --kernel-rpm of another kernel)
    monkeypatch.setattr(
        pipeline, "prepare_kernel", lambda t, s, i, evr: fakes.prepare_kernel(t, s, i, "1-1")
    )
    steps = plan(load_registry(), ["8.2"], ["8.4.1"], tmp_path / "a", {"xcp-ng-8.2": HELD[:1]})
    opts = pipeline.BuildOptions(settings=settings(tmp_path), kernel_inputs=KernelInputs())
    with pytest.raises(InputError, match=f"this build of xcp-ng-8.2 is for {HELD[0]}"):
        pipeline.run_builds(steps, opts)


def _kernel(evr: str, *provides: str) -> RepoPackage:
    version, release = evr.split("-", 1)
    return RepoPackage(
        name="kernel", arch="x86_64", version=version, release=release, url="", checksum_type="",
        checksum="", provides=("kernel = " + evr, *provides),
    )  # fmt: skip


def test_a_uname_r_target_needs_a_vendor_kernel_that_provides_it() -> None:
    ng = load_registry().target("8.2")
    held = _kernel(HELD[0], "kernel-uname-r = 4.19.0+1")
    kernels.check_kernel_provides(ng, HELD[0], [held])  # as XCP-ng's kernel.spec provides
    with pytest.raises(ConfigError, match=r"provides kernel-uname-r = 4\.19\.0\+2: no dom0"):
        kernels.check_kernel_provides(ng, HELD[0], [_kernel(HELD[0], "kernel-uname-r = 4.19.0+2")])
    with pytest.raises(ConfigError, match=r"provides no kernel-uname-r"):
        kernels.check_kernel_provides(ng, HELD[0], [_kernel(HELD[0])])
    with pytest.raises(ConfigError, match=rf"hold no kernel-{HELD[1]}\.x86_64 to provide it"):
        kernels.check_kernel_provides(ng, HELD[1], [held])
    # An exact target requires the package itself, which every package of that name provides.
    kernels.check_kernel_provides(load_registry().target("1.5"), "1-1", [])
