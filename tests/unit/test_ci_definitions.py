"""The CI definitions under ci/: valid for their services, and fed by the real build plan."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / "ci"


def check_schema(schema: str, document: Path) -> subprocess.CompletedProcess[str]:
    """The service's own schema, as check-jsonschema bundles it (no network)."""
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(document)],
        capture_output=True,
        text=True,
        check=False,
    )


def matrix(tmp_path: Path, *targets: str) -> Path:
    result = subprocess.run(
        [sys.executable, "-m", "builder", "matrix", "--xcp", *targets],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    path = tmp_path / "matrix.json"
    path.write_text(result.stdout)
    return path


def test_the_github_workflow_passes_github_schema() -> None:
    result = check_schema("vendor.github-workflows", CI / "github" / "xcp-drbd.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_gitlab_pipeline_and_its_child_pass_gitlab_schema(tmp_path: Path) -> None:
    parent = check_schema("vendor.gitlab-ci", CI / "gitlab" / "gitlab-ci.yml")
    assert parent.returncode == 0, parent.stdout + parent.stderr
    child = tmp_path / "child.yml"
    written = subprocess.run(
        [sys.executable, str(CI / "scripts" / "gitlab-child"), str(matrix(tmp_path, "1.5", "1.6"))],
        capture_output=True,
        text=True,
        check=True,
    )
    child.write_text(written.stdout)
    result = check_schema("vendor.gitlab-ci", child)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_child_pipeline_has_one_build_job_per_matrix_entry_then_publish(
    tmp_path: Path,
) -> None:
    entries = json.loads(matrix(tmp_path, "1.5", "1.6").read_text())["include"]
    written = subprocess.run(
        [sys.executable, str(CI / "scripts" / "gitlab-child"), str(tmp_path / "matrix.json")],
        capture_output=True,
        text=True,
        check=True,
    )
    child = yaml.safe_load(written.stdout)
    builds = {name: job for name, job in child.items() if name.startswith("build ")}
    assert len(builds) == len(entries)
    for entry in entries:
        job = builds[f"build {entry['target']} {entry['build']}"]
        assert job["variables"]["XDB_TARGET"] == entry["target"]
        assert job["variables"]["XDB_KERNEL"] == entry["kernel"]
        assert job["artifacts"]["paths"] == [f"artifacts/{entry['target']}/{entry['build']}"]
    assert [need["job"] for need in child["publish"]["needs"]] == list(builds)
    assert child["publish"]["resource_group"]  # one publisher at a time


def test_the_child_pipeline_refuses_names_that_are_not_plain(tmp_path: Path) -> None:
    bad = tmp_path / "matrix.json"
    bad.write_text(
        json.dumps(
            {
                "include": [
                    {"target": "x; rm -rf /", "drbd": "8.4.1", "build": "8.4.1", "kernel": "latest"}
                ]
            }
        )
    )
    result = subprocess.run(
        [sys.executable, str(CI / "scripts" / "gitlab-child"), str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "is not a plain name" in result.stderr


def test_the_github_build_matrix_comes_from_the_plan_job() -> None:
    workflow = yaml.safe_load((CI / "github" / "xcp-drbd.yml").read_text())
    jobs = workflow["jobs"]
    assert jobs["build"]["needs"] == "plan"
    assert jobs["build"]["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    assert jobs["publish"]["needs"] == "build"
    text = (CI / "github" / "xcp-drbd.yml").read_text()
    assert "secrets.XDB_SIGNING_KEY_ASC" in text
    # The key reaches only the publish script, through the environment.
    for name, job in jobs.items():
        for step in job["steps"]:
            uses_key = "XDB_SIGNING_KEY_ASC" in json.dumps(step)
            assert uses_key == (name == "publish" and step.get("name") == "Sign and publish")


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="needs Debian's shellcheck")
def test_the_ci_scripts_pass_shellcheck() -> None:
    scripts = [CI / "scripts" / "publish", CI / "scripts" / "upload"]
    result = subprocess.run(
        ["shellcheck", *map(str, scripts)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout
