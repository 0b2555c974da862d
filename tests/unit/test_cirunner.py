"""The CI runner of the pipeline tests: GitHub's expressions, and a loud failure for anything
in a definition it does not simulate (so a changed definition cannot skip a step unnoticed)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.support import cirunner, ghexpr

CONTEXTS: dict[str, Any] = {
    "env": {"EMPTY": "", "NAME": "Value"},
    "matrix": {"target": "xcp-1.5"},
    "steps": {"plan": {"outputs": {"matrix": '{"include": [{"a": 1}]}'}}},
}
FUNCTIONS: dict[str, ghexpr.Function] = {"fromJSON": cirunner._from_json}


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("env.EMPTY != ''", False),
        ("env.MISSING != ''", False),  # null == '' in GitHub's loose comparison
        ("env.NAME == 'value'", True),  # strings compare without case
        ("env.NAME != '' && 'yes' || 'no'", "yes"),
        ("env.EMPTY && 'yes' || 'no'", "no"),
        ("!env.EMPTY", True),
        ("matrix['target']", "xcp-1.5"),
        ("fromJSON(steps.plan.outputs.matrix).include[0].a", 1),
        ("'it''s'", "it's"),
    ],
)
def test_expressions_evaluate_as_github_documents(expression: str, value: Any) -> None:
    assert ghexpr.evaluate(expression, CONTEXTS, FUNCTIONS) == value


def test_interpolation_gives_a_whole_expression_its_value_and_text_its_text() -> None:
    whole = ghexpr.interpolate("${{ fromJSON(steps.plan.outputs.matrix) }}", CONTEXTS, FUNCTIONS)
    assert whole == {"include": [{"a": 1}]}
    text = ghexpr.interpolate("key-${{ matrix.target }}-${{ env.MISSING }}", CONTEXTS, FUNCTIONS)
    assert text == "key-xcp-1.5-"


@pytest.mark.parametrize(
    "expression",
    ["contains(env.NAME, 'V')", "unknown.value", "steps.*.outputs", "env.NAME ="],
)
def test_what_is_not_simulated_raises(expression: str) -> None:
    with pytest.raises(ghexpr.ExpressionError):
        ghexpr.evaluate(expression, CONTEXTS, FUNCTIONS)


def test_step_outputs_are_read_in_both_forms(tmp_path: Path) -> None:
    output = tmp_path / "output"
    output.write_text("matrix={}\nnotes<<EOF\nline one\nline two\nEOF\n")
    assert cirunner._read_outputs(output) == {"matrix": "{}", "notes": "line one\nline two"}


def test_a_cache_restores_its_key_then_the_newest_prefix_match(tmp_path: Path) -> None:
    store = cirunner.CacheStore(tmp_path / "caches")
    workspace = tmp_path / "workspace"
    (workspace / "public").mkdir(parents=True)
    (workspace / "public" / "file").write_text("1")
    assert store.save("repo-1", "v", workspace, ["public"]).startswith("Cache saved")
    assert store.save("repo-2", "v", workspace, ["public"]).startswith("Cache saved")
    assert store.save("repo-2", "v", workspace, ["public"]).startswith("Failed to save")
    assert store.save("none", "v", workspace, ["missing"]).startswith("Path Validation Error")
    found = store.find("repo-3", ["repo-"], "v")
    assert found is not None and found.key == "repo-2"
    assert store.find("repo-1", [], "other paths") is None


class NoContainers:
    """Stands for the engine: a definition error is raised before any container runs."""

    class containers:
        @staticmethod
        def list(**_: Any) -> list[Any]:
            return []


def machine(tmp_path: Path, workflow: str, name: str) -> cirunner.Machine:
    repository = tmp_path / "repository"
    (repository / Path(name).parent).mkdir(parents=True, exist_ok=True)
    (repository / name).write_text(textwrap.dedent(workflow))
    return cirunner.Machine(root=tmp_path / "root", repository=repository, client=NoContainers)  # type: ignore[arg-type]


def github(tmp_path: Path, workflow: str) -> None:
    runner = cirunner.GitHubWorkflow(
        machine(tmp_path, workflow, ".github/workflows/w.yml"),
        ".github/workflows/w.yml",
        workspace=tmp_path / "root" / "work",
        caches=cirunner.CacheStore(tmp_path / "caches"),
        event="push",
        run_id=1,
        secrets={},
        variables={},
    )
    runner.run()


@pytest.mark.parametrize(
    ("workflow", "message"),
    [
        ("on: push\njobs: {}\ndefaults: {run: {shell: sh}}\n", "defaults not simulated"),
        ("on: schedule\njobs: {}\n", "does not run on push"),
        (
            "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - uses: actions/cache@v3\n",
            "actions/cache@v3 is not simulated",
        ),
        (
            "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n"
            "      - uses: actions/checkout@v4\n        with: {fetch-depth: 0}\n",
            "fetch-depth not simulated",
        ),
        (
            "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n"
            "      - run: true\n        working-directory: sub\n",
            "working-directory not simulated",
        ),
        (
            "on: push\njobs:\n  a:\n    runs-on: x\n    strategy:\n"
            "      matrix: {target: [a, b]}\n    steps: [{run: 'true'}]\n",
            "only an include-only matrix",
        ),
    ],
)
def test_github_definitions_using_more_than_is_simulated_fail(
    tmp_path: Path, workflow: str, message: str
) -> None:
    with pytest.raises(cirunner.DefinitionError, match=message):
        github(tmp_path, workflow)


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        ("default: {image: x}\njob: {script: [echo]}\n", "default not simulated"),
        ("job: {image: 'alpine:3', script: [echo]}\n", "image 'alpine:3' is not simulated"),
        ("job: {image: 'docker:27', script: [echo], rules: []}\n", "rules not simulated"),
        ("variables: {A: $B}\njob: {image: 'docker:27', script: [echo]}\n", "variable ref"),
        (
            "stages: [a]\njob: {stage: a, image: 'docker:27', needs: [later], script: [echo]}\n"
            "later: {stage: a, image: 'docker:27', script: [echo]}\n",
            "needs later, which has not run before it",
        ),
    ],
)
def test_gitlab_definitions_using_more_than_is_simulated_fail(
    tmp_path: Path, pipeline: str, message: str
) -> None:
    runner = cirunner.GitLabPipeline(
        machine(tmp_path, pipeline, ".gitlab-ci.yml"),
        workspace=tmp_path / "root" / "builds" / "g" / "p",
        caches=tmp_path / "caches",
        pipeline_id=1,
        source="push",
        variables={},
    )
    with pytest.raises(cirunner.DefinitionError, match=message):
        runner.run()
