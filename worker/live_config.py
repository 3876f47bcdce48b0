"""`producers.toml` and `profiles.toml` read again while the worker runs, never half-applied.

Each signing process checks both files before a batch or a revocation, at most once a second
(`CHECK_SECONDS`), by inode, size and modification time, and at once after a SIGHUP
(`ReloadNotice`, a counter the worker's main process raises and its pool processes read). A
changed file is loaded and checked whole (every producer's secret read, every profile valid,
the CRL shard URLs usable) before it replaces the one in use; a file that fails keeps the
previous one and logs one line naming the file and the reason (once per version of the file).

A `producers.toml` that appears under a worker started with `--open` closes it: from then on
only the listed producers are served. A `producers.toml` that disappears never opens a worker:
the producers last read stay in force until the file is back (or the worker is restarted).
"""

from __future__ import annotations

import logging
import mmap
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from core import files
from core.errors import ConfigurationError
from worker.access import AccessPolicy
from worker.crlsettings import check_shard_urls
from worker.profiles import ProfileSet

log = logging.getLogger("casign.worker")

CHECK_SECONDS = 1.0
T = TypeVar("T")
_MISSING = (0, 0, 0)


class ReloadNotice:
    """A counter in an anonymous shared page: SIGHUP in the main process raises it, and every
    pool process forked from it sees the new value (safe to raise inside a signal handler)."""

    def __init__(self) -> None:
        self._page = mmap.mmap(-1, 8)

    def raise_(self) -> None:
        (count,) = struct.unpack_from("Q", self._page)
        struct.pack_into("Q", self._page, 0, count + 1)

    @property
    def count(self) -> int:
        return int(struct.unpack_from("Q", self._page)[0])


def file_version(path: Path) -> tuple[int, int, int]:
    """(inode, size, mtime in ns) of `path`, or zeros when it is absent: what tells a change."""
    return files.file_version(path) or _MISSING


@dataclass(frozen=True)
class Configuration:
    """What a signer takes from the two files: the producers (None: open) and the profiles."""

    access: AccessPolicy | None
    profiles: ProfileSet


class LiveConfiguration:
    """The producers and profiles one signing process uses, kept current with the files."""

    def __init__(
        self,
        producers_path: Path,
        profiles_path: Path,
        load_access: Callable[[Path], AccessPolicy | None],
        crl_shards: int | None,
        current: Configuration,
        notice: ReloadNotice | None = None,
        check_seconds: float = CHECK_SECONDS,
    ) -> None:
        self.producers_path = producers_path
        self.profiles_path = profiles_path
        self._load_access = load_access
        self._crl_shards = crl_shards
        self.current = current
        self._notice = notice
        self._check_seconds = check_seconds
        self._seen_notice = notice.count if notice is not None else 0
        self._checked_at = time.monotonic()
        # The version of each file in force, and the last version refused (logged once).
        self._versions = {
            producers_path: file_version(producers_path),
            profiles_path: file_version(profiles_path),
        }
        self._refused: dict[Path, tuple[int, int, int]] = {}

    def refresh(self, now: float | None = None) -> Configuration:
        """The configuration to sign the next batch with, the files read again if they changed."""
        now = time.monotonic() if now is None else now
        hangup = self._notice is not None and self._notice.count != self._seen_notice
        if not hangup and now - self._checked_at < self._check_seconds:
            return self.current
        self._checked_at = now
        if self._notice is not None:
            self._seen_notice = self._notice.count
        access, profiles = self.current.access, self.current.profiles
        if hangup or self._changed(self.producers_path):
            access = self._reload_producers(file_version(self.producers_path), forced=hangup)
        if hangup or self._changed(self.profiles_path):
            profiles = self._reload_profiles(file_version(self.profiles_path), forced=hangup)
        if access is not self.current.access or profiles is not self.current.profiles:
            self.current = Configuration(access, profiles)
        return self.current

    def _changed(self, path: Path) -> bool:
        """Whether `path` is neither the version in force nor the last one refused."""
        version = file_version(path)
        return version != self._versions[path] and version != self._refused.get(path)

    def _reload_producers(self, version: tuple[int, int, int], forced: bool) -> AccessPolicy | None:
        path, current = self.producers_path, self.current.access
        if version == _MISSING:
            if current is not None and self._refused.get(path) != version:
                log.error(
                    "%s was removed; the %d producer(s) read before are still served (a "
                    "missing producers.toml never opens a signer: restart it with --open for "
                    "that)",
                    path,
                    len(current.producers),
                )
            self._refused[path] = version
            return current
        try:
            loaded = self._load_access(path)
        except ConfigurationError as exc:
            return self._keep(path, version, exc, current)
        if loaded is None:  # removed between the stat and the read: looked at again next time
            return current
        self._accept(path, version)
        log.warning(
            "%s %s: %d producer(s) served from now on%s",
            path,
            "read again" if forced else "changed",
            len(loaded.producers),
            " (the worker was open until now: unsealed batches are refused from now on)"
            if current is None
            else "",
        )
        return loaded

    def _reload_profiles(self, version: tuple[int, int, int], forced: bool) -> ProfileSet:
        path, current = self.profiles_path, self.current.profiles
        try:
            profiles = ProfileSet.load(path)
            check_shard_urls(profiles, self._crl_shards, str(path))
        except ConfigurationError as exc:
            return self._keep(path, version, exc, current)
        self._accept(path, version)
        log.warning(
            "%s %s: profiles %s offered from now on",
            path,
            "read again" if forced else "changed",
            ", ".join(profiles.names),
        )
        return profiles

    def _accept(self, path: Path, version: tuple[int, int, int]) -> None:
        self._versions[path] = version
        self._refused.pop(path, None)

    def _keep(
        self, path: Path, version: tuple[int, int, int], error: ConfigurationError, current: T
    ) -> T:
        """Keep `current` for a file that does not load; say why once per version of it."""
        if self._refused.get(path) != version:
            log.error("%s not applied, the previous version stays in force: %s", path, error)
        self._refused[path] = version
        return current
