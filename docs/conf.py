"""Sphinx configuration of the documentation site (``nox -s docs``; ``.ci/run`` builds it
strictly: every warning, such as a broken link or a page in no table of contents, fails)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sphinx.application import Sphinx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GENERATED = HERE / "_generated"

project = "xcp-drbd-builder"
author = "xcp-drbd-builder maintainers"
extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "README.md"]
myst_heading_anchors = 3
myst_enable_extensions = ["deflist"]
html_theme = "alabaster"
html_title = "xcp-drbd-builder"
html_theme_options = {"nosidebar": False, "page_width": "1100px"}
nitpicky = True

# Each command's reference page includes the command's own --help, made here from the
# installed code so that the reference cannot drift from the parser.
HELP = {
    "targets": ["targets"],
    "kernel": ["kernel"],
    "build": ["build"],
    "matrix": ["matrix"],
    "publish": ["publish"],
    "verify": ["verify"],
    "keygen": ["keygen"],
    "cache": ["cache"],
    "deploy": ["deploy"],
    "deploy-init": ["deploy", "init"],
    "deploy-check": ["deploy", "check"],
    "deploy-render": ["deploy", "render"],
}


def _run(args: list[str]) -> str:
    env = dict(os.environ, COLUMNS="96", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "builder", *args],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def generate(app: Sphinx) -> None:
    GENERATED.mkdir(exist_ok=True)
    for name, args in HELP.items():
        (GENERATED / f"{name}.txt").write_text(_run([*args, "--help"]))
    pool = GENERATED / "pool.yaml"
    pool.unlink(missing_ok=True)
    _run(["deploy", "init", "--output", str(pool)])


def setup(app: Sphinx) -> None:
    app.connect("builder-inited", generate)
