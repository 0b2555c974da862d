"""run_builds with several builds at once (container stage faked, as in test_pipeline)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from builder import log
from builder.builds import pipeline, recipes
from builder.builds.drbdbuild import Built, DrbdBuild, _environment
from builder.builds.plan import plan
from builder.errors import BuildError, BuildsFailed, CheckError
from builder.inputs.kernel import KernelTree
from builder.registry import load_registry
from builder.specs import NO_ADJUSTMENTS
from tests.unit.test_pipeline import Fakes, options


class Parallel(Fakes):
    """Fakes whose builds wait for each other (proof they run at the same time), and fail
    for the targets named in ``failing``."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch, together: int) -> None:
        super().__init__(tmp, monkeypatch)
        self.barrier = threading.Barrier(together, timeout=10)
        self.failing: set[str] = set()
        self.kernel_calls = 0

    def prepare_kernel(
        self, target: Any, settings: Any, inputs: Any, evr: str | None = None
    ) -> KernelTree:
        self.kernel_calls += 1
        time.sleep(0.2)  # long enough for the other builds of the target to ask meanwhile
        return super().prepare_kernel(target, settings, inputs, evr)

    def build_drbd(self, build: DrbdBuild, **kwargs: Any) -> Built:
        self.barrier.wait()
        if build.image.removeprefix("sha256:") in self.failing:
            kwargs["log_file"].write_text("log\n")
            raise BuildError(f"compiler said no to {build.image}")
        return super().build_drbd(build, **kwargs)


def parallel(tmp: Path, jobs: int) -> pipeline.BuildOptions:
    return pipeline.BuildOptions(
        settings=options(tmp).settings, kernel_inputs=options(tmp).kernel_inputs, jobs=jobs
    )


def test_builds_run_at_once_and_share_one_kernel_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes = Parallel(tmp_path, monkeypatch, together=2)
    steps = plan(load_registry(), ["1.5"], ["8.4.1", "8.3.16"], tmp_path / "artifacts")
    outcomes = pipeline.run_builds(steps, parallel(tmp_path, 2))
    assert [o.built for o in outcomes] == [True, True]
    assert fakes.kernel_calls == 1
    assert fakes.images == ["xcp-1.5"]
    for version in ("8.4.1", "8.3.16"):
        assert (tmp_path / "artifacts" / "xcp-1.5" / version / "manifest.json").is_file()


def test_one_job_runs_one_build_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fakes = Parallel(tmp_path, monkeypatch, together=1)
    steps = plan(load_registry(), ["1.5", "1.6"], ["8.4.1"], tmp_path / "artifacts")
    assert len(pipeline.run_builds(steps, parallel(tmp_path, 1))) == 2
    assert fakes.images == ["xcp-1.5", "xcp-1.6"]


def test_a_failed_build_does_not_stop_the_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(log._State, "quiet", False)  # whatever an earlier test set
    fakes = Parallel(tmp_path, monkeypatch, together=2)
    fakes.failing = {"xcp-1.5"}
    steps = plan(load_registry(), ["1.5", "1.6"], ["8.4.1"], tmp_path / "artifacts")
    heard: list[pipeline.Outcome] = []
    with pytest.raises(BuildError, match=r"compiler said no to sha256:xcp-1\.5"):
        pipeline.run_builds(steps, parallel(tmp_path, 2), heard.append)
    assert {(o.step.target.id, o.error is None) for o in heard} == {
        ("xcp-1.5", False),
        ("xcp-1.6", True),
    }
    assert (tmp_path / "artifacts" / "xcp-1.6" / "8.4.1" / "manifest.json").is_file()
    failed = tmp_path / "artifacts" / "xcp-1.5"
    assert sorted(p.name for p in failed.iterdir()) == ["8.4.1.build.log"]
    # Each build's lines carry its name; the failure is said with it.
    err = capsys.readouterr().err
    assert "[xcp-1.6 8.4.1] ✓ xcp-1.6 / DRBD 8.4.1" in err
    assert "[xcp-1.5 8.4.1] warning: xcp-1.5 / DRBD 8.4.1 failed: compiler said no" in err


def test_several_failures_name_each_build_and_share_their_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes = Parallel(tmp_path, monkeypatch, together=2)
    fakes.failing = {"xcp-1.5", "xcp-1.6"}
    steps = plan(load_registry(), ["1.5", "1.6"], ["8.4.1"], tmp_path / "artifacts")
    with pytest.raises(BuildsFailed) as caught:
        pipeline.run_builds(steps, parallel(tmp_path, 2))
    assert caught.value.exit_code == BuildError.exit_code
    assert "2 of 2 builds failed: xcp-1.5 / DRBD 8.4.1" in caught.value.message
    assert "xcp-1.6 / DRBD 8.4.1 (BuildError, exit code 9)" in caught.value.message


def test_failures_of_different_kinds_give_the_first_one_s_exit_code() -> None:
    failures = [("a", CheckError("bad vermagic")), ("b", BuildError("no"))]
    assert BuildsFailed(failures, 3).exit_code == CheckError.exit_code


def test_make_runs_as_many_jobs_as_the_container_has_cpus() -> None:
    assert recipes.parallel_jobs(1.0) == 1
    assert recipes.parallel_jobs(1.5) == 2
    assert recipes.parallel_jobs(4.0) == 4
    job = recipes.Job(
        source=recipes.Source(file_name="d.tar.gz", top_dir="d", version="8.4.1"),
        arch="x86_64",
        jobs=3,
    )
    rpmbuild = recipes.rpmbuild(job, "drbd.spec")
    assert rpmbuild[rpmbuild.index("_smp_mflags -j3") - 1] == "--define"
    assert _environment(NO_ADJUSTMENTS, 3)["MAKEFLAGS"] == "-j3"
