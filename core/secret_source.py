"""Reading a secret from where configuration says it is: `file:PATH` or `env:VARIABLE`.

A secret file must be private to its owner, as ssh demands of a private key: one that its
group or others may read (or write) is refused, naming the path; where the caller asks, one that
another user owns is refused too (that user could open it to anyone). An empty secret is refused
too: an empty passphrase would otherwise leave a key unencrypted, an empty PIN log nobody in.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from core.errors import ConfigurationError

# Permission bits a secret file must not have: any access by its group or by others.
_SHARED_BITS = stat.S_IRWXG | stat.S_IRWXO


def read_secret_file(path: Path, what: str, *, owned: bool = False) -> str:
    """The text of a secret file private to its owner; its trailing line break removed.

    Refused, naming the path: a file its group or others may access, an unreadable one, an
    empty one; with `owned`, one this process's user does not own.
    """
    try:
        status = os.stat(path)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the {what} file {str(path)!r} ({exc.strerror})"
        ) from None
    mode = status.st_mode
    if owned and status.st_uid != os.geteuid():
        raise ConfigurationError(
            f"the {what} file {str(path)!r} is owned by uid {status.st_uid}, not by this "
            f"process's user (uid {os.geteuid()}); chown it to the user that runs casign"
        )
    if mode & _SHARED_BITS:
        raise ConfigurationError(
            f"the {what} file {str(path)!r} is mode {stat.S_IMODE(mode):04o}, open to its group "
            f"or others; make it private (chmod 600 {path}) and use it again"
        )
    try:
        value = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the {what} file {str(path)!r} ({exc.strerror})"
        ) from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"the {what} file {str(path)!r} is not UTF-8 text") from None
    value = value.rstrip("\r\n")
    if not value:
        raise ConfigurationError(f"the {what} file {str(path)!r} is empty")
    return value


def read_secret_source(source: str, what: str) -> str:
    """The secret at `source`, its trailing line break removed; errors name `what` and where,
    never the secret, nor the source text when it is neither form (it may be the secret itself,
    written in place of its source)."""
    kind, _, where = source.partition(":")
    if kind == "file":
        return read_secret_file(Path(where), what)
    if kind == "env":
        value = os.environ.get(where)
        if value is None:
            raise ConfigurationError(f"environment variable {where} (the {what}) is not set")
        if not value.rstrip("\r\n"):
            raise ConfigurationError(f"environment variable {where} (the {what}) is empty")
        return value.rstrip("\r\n")
    raise ConfigurationError(f"{what} must be file:PATH or env:VARIABLE")
