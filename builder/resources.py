"""The data files the tool ships, named once: the built-in registry and the build contexts.

Every module that reads them takes their place from here, so moving them (into the package,
for installs that are not editable) changes this file alone.
"""

from __future__ import annotations

from pathlib import Path

_TOP = Path(__file__).resolve().parent.parent

SPECS_DIR = _TOP / "specs"  # targets.yaml, drbd.yaml and the checksum pins and locks
CONTAINERS_DIR = _TOP / "containers"  # containers/<family>/: one build context each
