"""Whether the Redis behind the store may hold a CA, and how much memory it has left.

A CA's records must never be evicted: an evicted serial is drawn again, an evicted job is
signed again under a new serial, an evicted audit line breaks the chain. So the store has to
run with `maxmemory-policy noeviction` (a full Redis then refuses writes, which the signer
waits out), and should persist its data (AOF, or at least RDB snapshots).

`require_fit` is the worker's start-up check: it refuses an evicting store and warns when
persistence is off or the settings cannot be read (CONFIG GET not permitted). `guard` runs the
check again before a write the CA cannot lose, at most every RECHECK_SECONDS: while the policy
is not `noeviction` it logs an error and raises `Retryable`, so the worker stops signing,
keeps its batches unacknowledged, and goes on by itself once the policy is fixed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import ResponseError

from core.errors import ConfigurationError, Retryable
from store.boundary import text, translated

log = logging.getLogger("casign.store")

REQUIRED_POLICY = "noeviction"
RECHECK_SECONDS = 60.0
_LOSS = "a Redis restart loses every serial, certificate and audit line"


class StoreUnfit(ConfigurationError):
    """The store may evict keys; a worker refuses to start against it."""


@dataclass(frozen=True, slots=True)
class MemoryUse:
    """Redis memory now, from INFO memory: bytes used, and the `maxmemory` limit if one is set."""

    used_bytes: int
    max_bytes: int | None  # None: no limit (maxmemory 0), the machine's memory is the bound
    policy: str | None

    @property
    def headroom_bytes(self) -> int | None:
        """Bytes left before `maxmemory`; None without a limit."""
        return None if self.max_bytes is None else max(self.max_bytes - self.used_bytes, 0)

    @property
    def used_fraction(self) -> float | None:
        """used / maxmemory; None without a limit."""
        return None if self.max_bytes is None else self.used_bytes / self.max_bytes


@dataclass(frozen=True, slots=True)
class Fitness:
    """The settings that decide whether the store may hold a CA; None where unreadable."""

    eviction_policy: str | None
    append_only: bool | None
    snapshots: bool | None
    config_readable: bool

    @property
    def problem(self) -> str | None:
        """Why the store may not hold a CA's records, or None."""
        policy = self.eviction_policy
        if policy is None or policy == REQUIRED_POLICY:
            return None
        return (
            f"the store's maxmemory-policy is {policy}, so Redis may evict casign's serials, "
            "certificates and audit log when it runs short of memory; set it to noeviction "
            "(`redis-cli CONFIG SET maxmemory-policy noeviction`, and `maxmemory-policy "
            "noeviction` in redis.conf to keep it)"
        )

    @property
    def warnings(self) -> list[str]:
        """What an operator should know but that does not stop a worker."""
        if not self.config_readable:
            return [self._unreadable_config()]
        if not self.append_only and not self.snapshots:
            return [
                'the store keeps nothing on disk (appendonly no, save ""): '
                f"{_LOSS}; set appendonly yes and appendfsync always in its redis.conf"
            ]
        return []

    def _unreadable_config(self) -> str:
        if self.eviction_policy is None:
            policy = (
                "nor INFO, so casign cannot check that its maxmemory-policy is noeviction: make "
                "sure it is, or Redis may evict casign's records"
            )
        else:
            policy = f"its maxmemory-policy ({self.eviction_policy}) was read from INFO"
        if self.append_only:
            persistence = "AOF is on"
        else:
            persistence = (
                "casign cannot tell whether it saves RDB snapshots and AOF is off or unknown: "
                f"without persistence {_LOSS}"
            )
        return f"CONFIG GET is not permitted on the store; {policy}; {persistence}; going on"


class StoreHealth:
    """Checks of the server's settings and memory, over the store's client."""

    def __init__(
        self,
        client: redis.Redis,
        recheck_seconds: float = RECHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self.recheck_seconds = recheck_seconds
        self._clock = clock
        self._fit_at: float | None = None
        self._stopped = False

    @translated
    def memory(self) -> MemoryUse:
        """Memory used and the limit (INFO memory), for start-up logs and metrics."""
        info = self._client.info("memory")
        limit = int(info.get("maxmemory", 0))
        policy = info.get("maxmemory_policy")
        return MemoryUse(
            int(info["used_memory"]), limit or None, None if policy is None else text(policy)
        )

    @translated
    def fitness(self) -> Fitness:
        """Read the eviction policy and persistence settings (CONFIG GET, else INFO)."""
        policy = self._config("maxmemory-policy")
        if policy is not None:
            save = self._config("save")
            return Fitness(
                policy,
                self._config("appendonly") == "yes",
                None if save is None else bool(save.strip()),
                config_readable=True,
            )
        memory = self._info("memory")
        persistence = self._info("persistence")
        policy = None if memory is None else memory.get("maxmemory_policy")
        return Fitness(
            None if policy is None else text(policy),
            None if persistence is None else bool(int(persistence.get("aof_enabled", 0))),
            None,
            config_readable=False,
        )

    def require_fit(self) -> Fitness | None:
        """At a worker's start: raise StoreUnfit for an evicting store, log what else is amiss.

        A store that cannot be reached now is no reason to refuse: the worker waits it out, and
        `guard` checks it before the first batch. None then.
        """
        try:
            fitness = self.fitness()
        except Retryable as exc:
            log.warning("%s; the store is checked again before the first batch", exc)
            return None
        if fitness.problem is not None:
            raise StoreUnfit(f"{fitness.problem}; then start the worker again")
        for warning in fitness.warnings:
            log.warning("%s", warning)
        self._fit_at = self._clock()
        return fitness

    def guard(self) -> None:
        """Before a write the CA cannot lose: Retryable while the store may evict it.

        Reads the settings again when the last good reading is RECHECK_SECONDS old.
        """
        now = self._clock()
        if self._fit_at is not None and now - self._fit_at < self.recheck_seconds:
            return
        problem = self.fitness().problem
        if problem is not None:
            log.error("signing stopped until the store is fixed: %s", problem)
            self._stopped = True
            raise Retryable(f"signing stopped: {problem}")
        if self._stopped:
            log.warning(
                "the store's maxmemory-policy is %s again; signing goes on", REQUIRED_POLICY
            )
            self._stopped = False
        self._fit_at = now

    def _config(self, name: str) -> str | None:
        """CONFIG GET `name`; None when not permitted (an ACL, or CONFIG renamed away)."""
        try:
            reply = self._client.config_get(name)
        except ResponseError:
            return None
        value = reply.get(name)
        return None if value is None else text(value)

    def _info(self, section: str) -> dict[str, Any] | None:
        """INFO `section`; None when not permitted."""
        try:
            return dict(self._client.info(section))
        except ResponseError:
            return None
