"""Reading a secret from where configuration says it is: `file:PATH` or `env:VARIABLE`."""

from __future__ import annotations

import os
from pathlib import Path

from core.errors import ConfigurationError


def read_secret_source(source: str, what: str) -> str:
    """The text at `source`; errors name `what` and where, never the secret or the source text
    when it is neither form (it may be the secret itself, written in place of its source)."""
    kind, _, where = source.partition(":")
    if kind == "file":
        try:
            return Path(where).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the {what} file {where!r} ({exc.strerror})"
            ) from None
    if kind == "env":
        value = os.environ.get(where)
        if value is None:
            raise ConfigurationError(f"environment variable {where} (the {what}) is not set")
        return value
    raise ConfigurationError(f"{what} must be file:PATH or env:VARIABLE")
