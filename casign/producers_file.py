"""Editing `intermediate/producers.toml` by hand's rules: one table added or cut, the rest kept.

The file is the operator's (comments, other producers, settings this command knows nothing of),
so an entry is added by appending its `[producers.NAME]` table and removed by cutting that table
and its sub-tables; what is written must read back as the signer reads it (`worker.access`).
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core.errors import ConfigurationError
from core.files import write_file_atomically
from core.messages import describe_validation_error

PRODUCERS_MODE = 0o600
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")  # TOML's bare keys; any other name is quoted


@dataclass(frozen=True)
class ProducerEntry:
    """What `casign producer add` writes for one producer."""

    name: str
    secret: str  # file:PATH or env:VAR
    profiles: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    rate_per_second: float | None = None
    burst: int | None = None

    def table(self) -> str:
        """The entry as a TOML table, with the settings given (none means unrestricted)."""
        key = self.name if _BARE_KEY.fullmatch(self.name) else json.dumps(self.name)
        lines = [f"[producers.{key}]", f"secret = {json.dumps(self.secret)}"]
        if self.profiles:
            lines.append(f"profiles = {json.dumps(list(self.profiles))}")
        if self.names:
            lines.append(f"names = {json.dumps(list(self.names))}")
        if self.rate_per_second is not None:
            lines.append(f"rate_per_second = {self.rate_per_second!r}")
        if self.burst is not None:
            lines.append(f"burst = {self.burst}")
        return "\n".join(lines) + "\n"


def read_producers(path: Path) -> dict[str, dict[str, Any]]:
    """The `[producers.*]` tables of `path` as parsed; empty when there is no file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read ({exc.strerror})") from None
    return _producers_of(text, path)


def add_producer(path: Path, entry: ProducerEntry) -> None:
    """Append `entry` to `path` (made if missing); refuse a name already listed."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if entry.name in _producers_of(text, path):
        raise ConfigurationError(f"producer {entry.name!r} is already listed in {path}")
    separator = (
        "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
    )
    updated = text + separator + entry.table()
    table = _producers_of(updated, path).get(entry.name)
    if table is None:
        raise ConfigurationError(f"{path}: the entry for {entry.name!r} did not read back")
    _check_table(entry.name, table)
    _write(path, updated)


def check_entry(entry: ProducerEntry) -> None:
    """Refuse (ConfigurationError, one sentence) an entry the signer would not load: a bad name
    pattern, rate or burst; `casign producer add` asks before it writes anything."""
    _check_table(entry.name, _producers_of(entry.table(), Path("entry"))[entry.name])


def _check_table(name: str, table: dict[str, Any]) -> None:
    from worker.access import ProducerPolicy  # only `producer add` checks; readers need no worker

    try:
        ProducerPolicy.model_validate(table)
    except ValidationError as exc:
        raise ConfigurationError(
            f"producer {name!r}: {describe_validation_error(exc, 'entry')}"
        ) from None


def remove_producer(path: Path, name: str) -> bool:
    """Cut the `[producers.NAME]` table and its sub-tables from `path`; False if not listed."""
    if name not in read_producers(path):
        return False
    text = path.read_text(encoding="utf-8")
    kept: list[str] = []
    inside = False
    for line in text.splitlines(keepends=True):
        header = _table_path(line)
        if header is not None:
            inside = header[:2] == ("producers", name)
        if not inside:
            kept.append(line)
    updated = "".join(kept)
    if name in _producers_of(updated, path):
        raise ConfigurationError(
            f"{path}: producer {name!r} is not written as a [producers.{name}] table; "
            "remove it by hand"
        )
    _write(path, updated)
    return True


def _write(path: Path, text: str) -> None:
    mode = path.stat().st_mode & 0o777 if path.exists() else PRODUCERS_MODE
    write_file_atomically(path, text, mode)


def _producers_of(text: str, path: Path) -> dict[str, dict[str, Any]]:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: {exc}") from None
    producers = document.get("producers", {})
    if not isinstance(producers, dict):
        raise ConfigurationError(f"{path}: `producers` is not a table")
    return {str(name): table for name, table in producers.items() if isinstance(table, dict)}


def _table_path(line: str) -> tuple[str, ...] | None:
    """The key path of a table header line (`[a."b.c"]` -> ("a", "b.c")), else None."""
    stripped = line.strip()
    if not stripped.startswith("["):
        return None
    try:
        document: Any = tomllib.loads(stripped)
    except tomllib.TOMLDecodeError:
        return None  # an array value continued on this line, not a header
    keys: list[str] = []
    while isinstance(document, dict) and len(document) == 1:
        key, document = next(iter(document.items()))
        keys.append(key)
        if isinstance(document, list):  # an array of tables, [[a.b]]
            document = document[0] if document else {}
    return tuple(keys)
