"""One way to write a file casign hands out: atomically, never through a planted symlink."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

CERT_MODE = 0o444
KEY_MODE = 0o400
PUBLIC_MODE = 0o644


def file_version(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime in ns) of `path`: what changes when the file is written again (an
    atomic write replaces the inode); None when it is absent."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return (status.st_ino, status.st_size, status.st_mtime_ns)


def write_file_atomically(
    path: Path, data: bytes | str, mode: int, *, replace: bool = True
) -> None:
    """Write `data` to `path` with `mode`, all or nothing.

    The bytes go to a fresh temporary file in the same folder (O_EXCL|O_NOFOLLOW, mode set on
    the descriptor), then take the name with `os.replace`, which swaps a symlink at `path` for
    the file rather than writing through it. With `replace=False` an existing `path` is left
    alone and FileExistsError raised.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    descriptor = os.open(temporary, flags, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path, follow_symlinks=False)  # fails when `path` exists
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()  # gone already after os.replace
