"""A role's latest figures, one key per process that lapses when it stops writing.

The OCSP responders (`P:ocsp:responders`, `P:ocsp:figures:{responder}`) and the EST servers
(`P:est:servers`, `P:est:figures:{server}`) count in memory and publish the same way: each
process writes, at most once a second (`FiguresPublisher`), its figures under a key of its own
(JSON, set with an expiry) and its member of the board's index (a sorted set scored with the
unix time that key expires), and drops the members whose figures lapsed more than a minute ago;
a reader takes the members not yet lapsed and reads their keys in one round trip, so a process
that died leaves no figures once its expiry passes. What the JSON holds is the role's business
(`ocsp.figures`, `est.figures`); a reader parses it as hostile input, and reads at most
MAX_FIGURES_BYTES of each key (GETRANGE), whatever a writer put there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import redis

from core.errors import ConfigurationError
from store.boundary import text, translated

log = logging.getLogger("casign.figures")

# Members of an index kept this long past their key's expiry, so that a reader whose clock is
# behind the writer's still finds them (the key itself is gone with its expiry).
LAPSED_MEMBER_GRACE_SECONDS = 60.0
MAX_MEMBERS_READ = 1000
MAX_FIGURES_BYTES = 64 * 1024  # one process's figures are a few hundred bytes
FLUSH_SECONDS = 1.0
DEFAULT_TTL_SECONDS = 10.0
# A TTL of at least two writes, so that one late write does not blank a live process.
MIN_TTL_SECONDS = 2 * FLUSH_SECONDS
MAX_COUNT = 2**63 - 1  # what Prometheus and a JSON reader take as an exact integer


class FiguresBoard:
    """An index sorted set and one figures key per member (`key_of(member)`): written by each
    process under its own member, read by `casign metrics` and `casign top`."""

    def __init__(self, client: redis.Redis, index: str, key_of: Callable[[str], str]) -> None:
        self._client = client
        self._index = index
        self._key_of = key_of

    @translated
    def publish(self, member: str, figures_json: str, ttl_seconds: float) -> None:
        """Replace `member`'s figures, to lapse `ttl_seconds` from now: one round trip."""
        now = time.time()
        pipeline = self._client.pipeline(transaction=False)
        pipeline.set(self._key_of(member), figures_json, px=int(ttl_seconds * 1000))
        pipeline.zadd(self._index, {member: now + ttl_seconds})
        pipeline.zremrangebyscore(self._index, "-inf", now - LAPSED_MEMBER_GRACE_SECONDS)
        pipeline.execute()

    @translated
    def read(self) -> dict[str, str]:
        """The JSON figures of each member whose figures have not lapsed, by its name; a key
        over MAX_FIGURES_BYTES, or not a string, is left out."""
        names = [
            text(name)
            for name in self._client.zrangebyscore(
                self._index,
                time.time() - LAPSED_MEMBER_GRACE_SECONDS,
                "+inf",
                start=0,
                num=MAX_MEMBERS_READ,
            )
        ]
        if not names:
            return {}
        pipeline = self._client.pipeline(transaction=False)
        for name in names:
            pipeline.getrange(self._key_of(name), 0, MAX_FIGURES_BYTES)  # one byte over: too big
        found = pipeline.execute(raise_on_error=False)
        return {
            name: text(value)
            for name, value in zip(names, found, strict=True)
            if isinstance(value, bytes | str) and 0 < len(value) <= MAX_FIGURES_BYTES
        }


def as_count(value: object) -> int | None:
    """`value` if it is a count (an int from 0 to MAX_COUNT), else None."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_COUNT:
        return None
    return value


def figure_count(document: Mapping[str, object], name: str) -> int:
    """`document[name]` if it is a count (`as_count`); ValueError otherwise."""
    value = as_count(document.get(name))
    if value is None:
        raise ValueError(f"{name} is not a count")
    return value


def check_ttl(ttl_seconds: float) -> float:
    """`ttl_seconds`, refused below MIN_TTL_SECONDS (the figures would blink out between writes)."""
    if ttl_seconds < MIN_TTL_SECONDS:
        raise ConfigurationError(
            f"a figures TTL of {ttl_seconds:g} s is shorter than two writes of the figures "
            f"({MIN_TTL_SECONDS:g} s); give at least {MIN_TTL_SECONDS:g}"
        )
    return ttl_seconds


def host_port_name(port: int) -> str:
    """`host:port`: one listening process among those of a CA, stable across its restarts."""
    return f"{socket.gethostname()}:{port}"


class FiguresPublisher:
    """Writes `snapshot()` (JSON) under `name` every FLUSH_SECONDS while `running()`."""

    def __init__(
        self,
        board: FiguresBoard,
        name: str,
        snapshot: Callable[[], str],
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        *,
        whose: str,
    ) -> None:
        self.board = board
        self.name = name
        self.snapshot = snapshot
        self.ttl_seconds = check_ttl(ttl_seconds)
        self.whose = whose  # "the OCSP responder's", for the log
        self._failing = False

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FiguresPublisher]:
        """A thread for the writes (a slow store never holds up answers), for the block."""
        pool = ThreadPoolExecutor(1, thread_name_prefix="figures")
        writer = asyncio.create_task(self._write_forever(pool), name="figures")
        try:
            yield self
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            pool.shutdown(wait=True, cancel_futures=True)

    async def write_now(self, pool: ThreadPoolExecutor | None = None) -> None:
        """Write the figures of this moment; a failure is logged once per outage, never raised."""
        figures_json = self.snapshot()  # taken on the event loop, which owns what it counts
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                pool, self.board.publish, self.name, figures_json, self.ttl_seconds
            )
        except Exception as exc:  # figures never stop answers; the next write tries again
            if not self._failing:
                log.warning("could not write %s figures to the store: %s", self.whose, exc)
            self._failing = True
        else:
            self._failing = False

    async def _write_forever(self, pool: ThreadPoolExecutor) -> None:
        while True:
            await self.write_now(pool)
            await asyncio.sleep(FLUSH_SECONDS)
