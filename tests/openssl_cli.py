"""Running the real `openssl` binary from the tests, with what it said shown when it fails."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


def openssl(
    *args: str | Path,
    check: bool = True,
    cwd: Path | None = None,
    new_session: bool = False,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run openssl with `args`; with `check`, a non-zero exit fails the test with its stderr."""
    completed = subprocess.run(
        ["openssl", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        # A new session has no controlling terminal, so openssl cannot prompt for a passphrase.
        start_new_session=new_session,
        timeout=timeout,
        check=False,
    )
    if check and completed.returncode != 0:
        pytest.fail(f"openssl {' '.join(map(str, args))} failed:\n{completed.stderr}")
    return completed
