"""The README is the front door and docs/ the manual: nothing of the manual the README used
to be was lost in the move, and the reference keeps up with the code."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from builder import cli

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _moved() -> ModuleType:
    spec = importlib.util.spec_from_file_location("moved", DOCS / "moved.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


moved = _moved()


def test_every_fact_of_the_readme_before_the_move_stands_in_the_readme_or_the_docs() -> None:
    earlier = moved.earlier_readme()
    assert len(list(moved.units(earlier))) > 400  # the whole manual, not an empty read
    assert moved.missing(earlier, moved.corpus()) == []


def test_the_check_notices_a_sentence_that_was_lost() -> None:
    earlier = moved.earlier_readme()
    sentence = (
        "The Docker SDK's own `from_env` reads no context, so `docker context use` alone would "
        "not have moved it."
    )
    today = moved.corpus()
    assert sentence in today
    assert moved.missing(earlier, today.replace(sentence, "")) == [sentence]


def test_each_rewording_names_words_the_earlier_readme_had() -> None:
    earlier = moved.normalise(moved.earlier_readme())
    for old, _new in moved.reworded():
        assert old in earlier, old


def test_the_readme_is_a_front_door_whose_links_lead_somewhere() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    assert "docs/index.md" in targets
    for target in targets:
        assert (ROOT / target).is_file(), target


def test_every_command_has_a_reference_page_with_its_help() -> None:
    for name in cli.COMMANDS:
        page = (DOCS / "reference" / f"{name}.md").read_text()
        assert f"../_generated/{name}.txt" in page, name
        assert f"\n{name}\n" in (DOCS / "reference" / "index.md").read_text(), name


def _keys(value: Any, prefix: str = "") -> set[str]:
    """Dotted paths of a YAML value's leaves (values that are not mappings), lists as ``[]``."""
    if isinstance(value, dict):
        found: set[str] = set()
        for key, inner in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            found |= _keys(inner, path) if isinstance(inner, dict | list) else {path}
        return found
    if isinstance(value, list) and any(isinstance(item, dict) for item in value):
        return set().union(*(_keys(item, f"{prefix}[]") for item in value))
    return {prefix} if prefix else set()


def test_every_key_of_the_example_pool_file_is_in_the_reference(tmp_path: Path) -> None:
    pool = tmp_path / "pool.yaml"
    subprocess.run(
        [sys.executable, "-m", "builder", "deploy", "init", "--output", str(pool)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    # The commented keys too: uncomment "# key: value" lines.
    text = re.sub(r"^(\s*)# ([a-z_]+:)", r"\1\2", pool.read_text(), flags=re.M)
    page = (DOCS / "reference" / "pool-file.md").read_text()
    for key in _keys(yaml.safe_load(text)):
        assert f"`{key}`" in page, key


def test_every_key_of_the_shipped_spec_files_is_in_the_reference() -> None:
    page = (DOCS / "reference" / "spec-files.md").read_text()
    targets = yaml.safe_load((ROOT / "specs" / "targets.yaml").read_text())["targets"]
    for target in targets.values():
        for key in _keys(target):
            if key.startswith("checked."):  # keyed by DRBD version
                continue
            assert f"`{key}`" in page, key
    drbd = yaml.safe_load((ROOT / "specs" / "drbd.yaml").read_text())
    for section in ("drbd", "drbd-utils"):
        for entry in drbd[section].values():
            for key in _keys(entry):
                assert f"`{key}`" in page, key
