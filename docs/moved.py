"""Checks that every fact of an earlier README still stands in the README or under docs/.

The README used to be the whole manual; its text moved into docs/. Each sentence of prose,
each table row and each line of a code block of the earlier README (read from git) must
appear, after the same normalisation, somewhere in today's README.md or docs/**/*.md.
Headings are left out: they were renamed with the pages they head.

    python3 docs/moved.py [REVISION]     # default: the README before the move
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The last revision whose README was the whole manual.
BEFORE_THE_MOVE = "6430aa9f1803d9b8d0fb674a88556aea94a0f945"

# What changed since the move, as pairs of earlier and present words.
REWORDED_FILE = Path(__file__).resolve().parent / "reworded.txt"


def reworded(path: Path = REWORDED_FILE) -> list[tuple[str, str]]:
    """The (earlier words, present words) pairs of ``path``: a ``-`` line, then a ``+`` line."""
    pairs: list[tuple[str, str]] = []
    earlier: str | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("- "):
            earlier = line[2:]
        elif line.startswith("+ ") and earlier is not None:
            pairs.append((earlier, line[2:]))
            earlier = None
        elif line.strip() and not line.startswith("#"):
            raise ValueError(f"{path}:{number}: expected '- earlier words' then '+ present words'")
    return pairs


_LINK = re.compile(r"\[([^\]]+)\]\([^)]+\)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`(\"*])")


def normalise(text: str) -> str:
    """The words of a text without what a move may change: link targets, emphasis, spacing."""
    text = _LINK.sub(r"\1", text)
    text = text.replace("**", "").replace('"', "")
    return re.sub(r"\s+", " ", text).strip()


def units(markdown: str) -> Iterator[str]:
    """The facts of a Markdown text: prose sentences, table rows, code lines."""
    paragraph: list[str] = []
    in_code = False

    def prose() -> Iterable[str]:
        text = normalise(" ".join(paragraph))
        paragraph.clear()
        return [s for s in _SENTENCE_END.split(text) if s]

    for line in markdown.splitlines():
        if line.startswith("```"):
            yield from prose()
            in_code = not in_code
            continue
        if in_code:
            if line.strip():
                yield normalise(line)
            continue
        if not line.strip() or line.startswith("#"):
            yield from prose()
            continue
        if line.startswith("|"):
            yield from prose()
            if not re.fullmatch(r"[|\s:-]+", line):
                yield normalise(line)
            continue
        item = re.match(r"\s*(?:[-*]|\d+\.)\s+", line)
        if item:
            yield from prose()
        paragraph.append(line[item.end() :] if item else line)
    yield from prose()


def corpus(root: Path = ROOT) -> str:
    pages = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    return normalise(" \n ".join(page.read_text(encoding="utf-8") for page in pages))


def missing(earlier: str, today: str) -> list[str]:
    """The facts of ``earlier`` that ``today`` does not hold, in their reworded form too."""
    lost = []
    pairs = reworded()
    for fact in units(earlier):
        changed = fact
        for old, new in pairs:
            changed = changed.replace(old, new)
        if changed not in today:
            lost.append(changed)
    return lost


def earlier_readme(revision: str = BEFORE_THE_MOVE, root: Path = ROOT) -> str:
    return subprocess.run(
        ["git", "-C", str(root), "show", f"{revision}:README.md"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def main(argv: list[str]) -> int:
    revision = argv[0] if argv else BEFORE_THE_MOVE
    lost = missing(earlier_readme(revision), corpus())
    for fact in lost:
        print(f"not found: {fact}")
    print(f"{len(lost)} of the README's facts at {revision[:12]} are not found", file=sys.stderr)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
