"""Typed reading of one YAML mapping, with errors that name the file and the full key path.

Spec files (``specs/*.yaml``) and pool files (``pool.yaml``) are both validated through
:class:`YamlReader`: every value is checked once, where it is read, and every key the file has
but nobody read is reported as a probable misspelling.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Self

from builder.errors import ConfigError
from builder.urls import URL_SCHEMES


def printable(text: str) -> str:
    """``text`` with control characters escaped: a key named ``"lab\\n"`` is shown as
    ``lab\\n``, not as a line break that makes the message name another key."""
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


class YamlReader:
    def __init__(self, file: Path, data: Mapping[str, Any], where: str = "") -> None:
        self.file = file
        self.data = data
        self.where = where
        self._used: set[str] = set()

    def path(self, key: str | None) -> str:
        if not key:
            return self.where
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str | None, problem: str, *, hint: str | None = None) -> ConfigError:
        return ConfigError(f"{self.file}: {printable(self.path(key))}: {problem}", hint=hint)

    def mark_used(self, key: str) -> None:
        self._used.add(key)

    def raw(self, key: str, *, required: bool = True) -> Any:
        self._used.add(key)
        value = self.data.get(key)
        if value is None and required:
            raise self.fail(key, "is required but missing")
        return value

    def text(
        self,
        key: str,
        pattern: re.Pattern[str] | None = None,
        *,
        required: bool = True,
        default: str | None = None,
        explain: str = "",
    ) -> Any:
        """A non-empty string (numbers are taken as their text), matching ``pattern``."""
        value = self.raw(key, required=required and default is None)
        if value is None:
            return default
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"must be a non-empty string, not {value!r}")
        if pattern is not None and not pattern.fullmatch(value):
            raise self.fail(key, f"{value!r} is not valid{': ' + explain if explain else ''}")
        return value

    def url(self, key: str, *, required: bool = True) -> Any:
        value: str | None = self.text(key, required=required)
        if value is not None and not value.startswith(URL_SCHEMES):
            raise self.fail(key, f"{value!r} is not an http://, https:// or file:// URL")
        return value

    def text_list(self, key: str, pattern: re.Pattern[str] | None = None) -> tuple[str, ...]:
        value = self.raw(key, required=False)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list, not {type(value).__name__}")
        items = []
        for index, raw in enumerate(value):
            item = str(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else raw
            if not isinstance(item, str) or not item:
                raise self.fail(f"{key}[{index}]", f"must be a non-empty string, not {item!r}")
            if pattern is not None and not pattern.fullmatch(item):
                raise self.fail(f"{key}[{index}]", f"{item!r} is not valid")
            items.append(item)
        return tuple(items)

    def integer(self, key: str, low: int, high: int, *, default: int | None = None) -> int:
        value = self.raw(key, required=default is None)
        if value is None and default is not None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be a whole number, not {value!r}")
        if not low <= value <= high:
            raise self.fail(key, f"{value} is out of range ({low} to {high})")
        return value

    def choice(self, key: str, choices: Iterable[str], default: str | None = None) -> str:
        options = tuple(choices)
        value = self.raw(key, required=default is None)
        if value is None and default is not None:
            return default
        if not isinstance(value, str) or value not in options:
            raise self.fail(key, f"{value!r} is not one of: {', '.join(options)}")
        return value

    def mapping(self, key: str) -> Self:
        value = self.raw(key)
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a mapping, not {type(value).__name__}")
        return type(self)(self.file, value, self.path(key))

    def done(self) -> None:
        unknown = sorted(str(k) for k in set(self.data) - self._used)
        if unknown:
            raise self.fail(unknown[0], "unknown key (check its spelling)")
