"""Run the `casign` command as a user would: a separate process with no CASIGN_* variable but those given."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CASIGN = [sys.executable, "-m", "casign"]


def run_casign(
    *args: str | Path, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    """`casign ARGS`, its output captured, never reading standard input."""
    base = {name: value for name, value in os.environ.items() if not name.startswith("CASIGN_")}
    return subprocess.run(
        [*CASIGN, *map(str, args)],
        env=base | (env or {}),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )
