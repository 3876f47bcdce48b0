"""`est.toml` read again while serving: when the file changes (polled), or on SIGHUP.

A new file is validated whole (its TOML, every field, each client's secret sources, issuer
files and labels) before anything of it is used; a file that fails keeps the settings served
so far, and the log says why. `casign est client add|remove` thus apply without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from core.errors import ConfigurationError
from core.files import file_version
from est.settings import EstSettings, load_settings

log = logging.getLogger("casign.est")

POLL_SECONDS = 1.0


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """`file_version`, or None too when the file cannot be looked at (the watcher waits)."""
    try:
        return file_version(path)
    except OSError:
        return None


class SettingsWatcher:
    """Calls `apply` with the file's new settings each time it changes and validates."""

    def __init__(self, path: Path, apply: Callable[[EstSettings], None]) -> None:
        self.path = path
        self.apply = apply
        self._seen = _stamp(path)
        self._woken = asyncio.Event()

    def wake(self) -> None:
        """Read the file now, changed or not (SIGHUP)."""
        self._seen = None
        self._woken.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), POLL_SECONDS)
            self._woken.clear()
            stamp = _stamp(self.path)
            if stamp == self._seen or stamp is None:
                continue
            self._seen = stamp
            await asyncio.to_thread(self.check_and_apply)

    def check_and_apply(self) -> bool:
        """True when the file was valid and is served from now on."""
        try:
            settings = load_settings(self.path)
            self.apply(settings)
        except ConfigurationError as exc:
            log.error("est.toml not reloaded, the previous settings stay in force: %s", exc)
            return False
        log.warning("est.toml reloaded from %s: %d client(s)", self.path, len(settings.clients))
        return True
