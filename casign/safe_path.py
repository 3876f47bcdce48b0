"""Keep the working directory's folders from standing in for casign's own packages.

`python -m casign` puts the working directory first on `sys.path`, so a folder there named
`store`, `core`, `worker` or `producers` (a CA operator's home holds such names) would be
imported in place of casign's packages, in the process that holds the CA key. Unless casign
itself was imported from that directory (a source checkout run in place), `python -m casign`
takes it off the path before importing anything else, as `python -P` (Python 3.11) does, and
the processes casign starts run with `-P`. Standard library only: it runs before the rest.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The folder that holds the `casign` package this process runs.
_CODE_ROOT = Path(__file__).resolve().parent.parent


def _runs_from_working_directory() -> bool:
    return Path.cwd().resolve() == _CODE_ROOT


def drop_working_directory() -> None:
    """Take the working directory off the front of `sys.path` unless casign's code is there."""
    if sys.flags.safe_path or not sys.path or _runs_from_working_directory():
        return
    if Path(sys.path[0] or os.curdir).resolve() == Path.cwd().resolve():
        del sys.path[0]


def python_command() -> list[str]:
    """The interpreter to start another casign process with (`python -m ...`): with `-P`, so
    the working directory is not searched first, unless casign's code is there."""
    if _runs_from_working_directory():
        return [sys.executable]
    return [sys.executable, "-P"]
