"""The OCSP responder (RFC 6960): answers from pre-signed answers, kept current from the store.

An answer without a nonce is signed once and then served from `AnswerCache` at no signature.
A poller, every `poll_interval` seconds, reads two counters of the store (certificates issued,
certificates revoked): when one moves, it rereads the index lines of the answers it could
change and signs again those whose line changed, so a revocation reaches the answers within
one interval without waiting for a request. It also signs again each answer asked for since
its signing when its renewal time comes (ocsp.lifetime), drops those nobody asked for, and
reloads the delegate when a worker has renewed it (and warns, hourly, of one near its end that
no worker renewed: the responder holds no CA key to renew it itself). A request with a nonce is signed for
itself (the nonce is inside the signed data, RFC 8954 2.1), from the store's current line.

Store reads and signatures run in threads; the cache is touched only by the event loop. What it
answers from the cache and signs, and what it renews, is counted for its figures (`ocsp.figures`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from core.errors import ConfigurationError, Retryable
from core.index import IndexEntry, format_serial
from core.revocation import revocation_info
from ocsp.cache import AnswerCache, AnswerKey, CachedAnswer
from ocsp.figures import AnswerCounts, ResponderFigures
from ocsp.identity import DelegateFiles, ResponderIdentity
from ocsp.lifetime import ResponseLifetime, renew_at
from ocsp.request import CertID, MalformedRequest, StatusRequest, parse_request
from ocsp.response import (
    INTERNAL_ERROR,
    MALFORMED_REQUEST,
    TRY_LATER,
    UNAUTHORIZED,
    CertStatus,
    Status,
    signed_response,
)
from store.results import ResultsStore
from store.revocations import RevocationStore

log = logging.getLogger("casign.ocsp")

DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
DEFAULT_POLL_SECONDS = 1.0
ANSWER_THREADS = 2  # store reads and signatures for requests the cache does not hold
RENEWALS_PER_POLL = 500  # spreads a burst of renewals over polls (RENEWAL_LEAD leaves time)
LINES_PER_READ = 2000  # index lines per HMGET when rechecking answers
# Workers renew the delegate 7 days before its end (worker/ocsp_delegate.py RENEW_WITHIN): one
# that has less than this left has not been renewed, so the responder says so, once an hour.
DELEGATE_WARN_WITHIN = timedelta(days=6)
DELEGATE_WARN_EVERY_SECONDS = 3600.0
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Generation:
    """The store's two counters: a change of either may change some answers."""

    issued: int
    revoked: int


@dataclass(frozen=True, slots=True)
class Answer:
    """The DER to send, and how long an HTTP cache may keep it (None: not at all)."""

    body: bytes
    max_age: int | None = None


def answer_key(request: StatusRequest) -> AnswerKey:
    return tuple((cert_id.algorithm, cert_id.serial) for cert_id in request.cert_ids)


def index_serial(serial: int) -> str | None:
    """The serial as the index spells it; None for one no certificate can have (RFC 5280 4.1.2.2)."""
    return format_serial(serial) if serial > 0 else None


def status_of(line: str | None) -> CertStatus:
    """RFC 6960 2.2: good for a known certificate (expired too), revoked, or unknown."""
    if line is None:
        return CertStatus(Status.UNKNOWN)
    revocation = revocation_info(IndexEntry.from_openssl_line(line))
    if revocation is None:
        return CertStatus(Status.GOOD)
    return CertStatus(Status.REVOKED, revocation.revoked_at, revocation.reason)


class OCSPResponder:
    """Turns a DER OCSPRequest into an `Answer`; never raises. Use inside `running()`."""

    def __init__(
        self,
        ca_root: Path,
        store: ResultsStore,
        lifetime: ResponseLifetime | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        poll_interval: float = DEFAULT_POLL_SECONDS,
    ) -> None:
        self.ca_root = ca_root.absolute()
        self.store = store
        self.revocations = RevocationStore(store)
        self.lifetime = lifetime or ResponseLifetime()
        self.poll_interval = poll_interval
        self.cache = AnswerCache(cache_bytes)
        self.signatures = 0  # every signature this responder made, for the logs and tests
        self.counts = AnswerCounts()
        self.identity = ResponderIdentity.load(self.ca_root)
        self._files = DelegateFiles(self.ca_root)
        self._generation = Generation(-1, -1)
        self._unchecked: set[AnswerKey] = set()
        self._filling: dict[AnswerKey, asyncio.Future[CachedAnswer]] = {}
        self._answer_pool: ThreadPoolExecutor | None = None
        self._poll_pool: ThreadPoolExecutor | None = None
        self._delegate_warned_at: float | None = None
        self.warn_if_delegate_ending()

    def warn_if_delegate_ending(self, now: datetime | None = None) -> bool:
        """Log (at most once an hour) that the delegate's certificate nears its end unrenewed:
        the responder holds no CA key, a worker renews it. True when it warned now."""
        now = now or datetime.now(UTC)
        ends = self.identity.certificate.not_valid_after_utc
        if ends - now > DELEGATE_WARN_WITHIN:
            return False
        warned = self._delegate_warned_at
        if warned is not None and time.monotonic() - warned < DELEGATE_WARN_EVERY_SECONDS:
            return False
        self._delegate_warned_at = time.monotonic()
        log.warning(
            "the OCSP responder certificate %x ends %s and has not been renewed: is a "
            "`casign worker --ca %s` running? It renews it (or run `casign ocsp-cert --ca %s`); "
            "answers never outlive it",
            self.identity.certificate.serial_number,
            f"{ends:%Y-%m-%d %H:%M} UTC",
            self.ca_root,
            self.ca_root,
        )
        return True

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[OCSPResponder]:
        """The threads and the poller, for the block; the first poll is done before it starts."""
        self._answer_pool = ThreadPoolExecutor(ANSWER_THREADS, thread_name_prefix="ocsp-answer")
        # The poller has a thread of its own, so a flood of requests never delays a revocation.
        self._poll_pool = ThreadPoolExecutor(1, thread_name_prefix="ocsp-poll")
        poller: asyncio.Task[None] | None = None
        try:
            await self._poll_once()
            poller = asyncio.create_task(self._poll_forever(), name="ocsp-poller")
            yield self
        finally:
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            self._answer_pool.shutdown(wait=True, cancel_futures=True)
            self._poll_pool.shutdown(wait=True, cancel_futures=True)

    async def answer(self, request_der: bytes) -> Answer:
        """The answer to `request_der`: signed, or an unsuccessful status (RFC 6960 2.3)."""
        try:
            request = parse_request(request_der)
        except MalformedRequest as exc:
            log.info("malformed OCSP request: %s", exc)
            return Answer(MALFORMED_REQUEST)
        identity = self.identity
        if not all(identity.answers_for(cert_id) for cert_id in request.cert_ids):
            # RFC 6960 2.3: this responder cannot answer authoritatively for another issuer.
            return Answer(UNAUTHORIZED)
        try:
            if request.nonce is not None:
                der = await self._signed_for_nonce(request, identity)
                self.counts.signed += 1
                return Answer(der)
            entry, signed_for_it = await self._cached(request)
            if signed_for_it:
                self.counts.signed += 1
            else:
                self.counts.from_cache += 1
            return Answer(entry.der, max(0, int(entry.renew_at - time.time())))
        except Retryable as exc:
            log.warning("store unavailable, answered tryLater: %s", exc)
            return Answer(TRY_LATER)
        except Exception:
            log.exception("OCSP request failed")
            return Answer(INTERNAL_ERROR)

    def figures(self) -> ResponderFigures:
        """The cache and the counts of this moment (on the event loop, which owns the cache)."""
        cache = self.cache
        return ResponderFigures.of(len(cache), cache.bytes, cache.oldest_this_update(), self.counts)

    async def _cached(self, request: StatusRequest) -> tuple[CachedAnswer, bool]:
        """The answer, and whether it was signed for this request (not held or being signed)."""
        key = answer_key(request)
        entry = self.cache.get(key, time.time())
        if entry is not None:
            return entry, False
        filling = self._filling.get(key)
        signs_it = filling is None
        if filling is None:  # one signature for every request that waits on the same answer
            filling = asyncio.ensure_future(self._fill(key, request.cert_ids))
            self._filling[key] = filling
            filling.add_done_callback(lambda _: self._filling.pop(key, None))
        return await asyncio.shield(filling), signs_it

    async def _fill(self, key: AnswerKey, cert_ids: tuple[CertID, ...]) -> CachedAnswer:
        seen, identity = self._generation, self.identity  # taken before the lines are read
        entry = await self._in(self._answer_pool, self._sign_from_store, identity, cert_ids)
        self.signatures += 1
        self._keep(key, entry, seen)
        return entry

    def _keep(self, key: AnswerKey, entry: CachedAnswer, seen: Generation) -> None:
        if entry.identity is not self.identity:
            return  # signed by a delegate replaced meanwhile
        self.cache.put(key, entry)
        if seen != self._generation:  # the store moved after the lines were read
            self._unchecked.add(key)

    async def _signed_for_nonce(self, request: StatusRequest, identity: ResponderIdentity) -> bytes:
        entry = await self._in(
            self._answer_pool, self._sign_from_store, identity, request.cert_ids, request.nonce
        )
        self.signatures += 1
        return entry.der

    def _sign_from_store(
        self,
        identity: ResponderIdentity,
        cert_ids: Sequence[CertID],
        nonce: bytes | None = None,
    ) -> CachedAnswer:
        """Read the certificates' index lines and sign an answer (in a thread)."""
        (lines,) = self._read_lines([tuple((c.algorithm, c.serial) for c in cert_ids)])
        return self._sign(identity, cert_ids, lines, nonce)

    def _read_lines(self, keys: Sequence[AnswerKey]) -> list[tuple[str | None, ...]]:
        """The index lines of each key's serials, with one store read for all (in a thread)."""
        serials = {serial: index_serial(serial) for key in keys for _, serial in key}
        wanted = sorted({text for text in serials.values() if text is not None})
        found = dict(zip(wanted, self.store.index_lines_of(wanted), strict=True))
        return [
            tuple(found.get(text) if (text := serials[serial]) else None for _, serial in key)
            for key in keys
        ]

    def _sign(
        self,
        identity: ResponderIdentity,
        cert_ids: Sequence[CertID],
        lines: tuple[str | None, ...],
        nonce: bytes | None = None,
    ) -> CachedAnswer:
        this_update = datetime.now(UTC).replace(microsecond=0)
        next_update = self.lifetime.next_update(
            this_update, identity.certificate.not_valid_after_utc
        )
        answers = [
            (cert_id, status_of(line)) for cert_id, line in zip(cert_ids, lines, strict=True)
        ]
        der = signed_response(identity, answers, this_update, next_update, nonce)
        return CachedAnswer(
            der,
            lines,
            this_update.timestamp(),
            next_update.timestamp(),
            renew_at(this_update, next_update).timestamp(),
            identity,
        )

    async def _in(
        self, pool: ThreadPoolExecutor | None, function: Callable[..., _T], *args: object
    ) -> _T:
        if pool is None:
            raise RuntimeError("the OCSP responder is used outside `running()`")
        return await asyncio.get_running_loop().run_in_executor(pool, function, *args)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            await self._poll_once()

    async def _poll_once(self) -> None:
        """`poll`, with a failure logged (answers stay as they are until a poll succeeds)."""
        try:
            await self.poll()
        except Retryable as exc:
            log.warning("OCSP poll: %s; answers kept as they are", exc)
        except Exception:
            log.exception("OCSP poll failed; trying again in %s s", self.poll_interval)

    async def poll(self) -> None:
        """One look at the store and the delegate's files; sign again what changed or is due."""
        if self._files.changed():
            await self._reload_identity()
        self.warn_if_delegate_ending()
        generation = await self._in(self._poll_pool, self._read_generation)
        previous, self._generation = self._generation, generation
        suspects, self._unchecked = self._unchecked, set()
        if generation.revoked != previous.revoked:
            suspects.update(key for key, entry in self.cache.items() if entry.says_good)
        if generation.issued != previous.issued:
            suspects.update(key for key, entry in self.cache.items() if entry.says_unknown)
        try:
            await self._recheck(suspects)
        except BaseException:
            self._unchecked.update(suspects)  # the counters have moved on: look again next time
            raise
        await self._renew_due()

    def _read_generation(self) -> Generation:
        return Generation(self.store.count_issued(), self.revocations.count_revoked())

    async def _reload_identity(self) -> None:
        try:
            identity = await self._in(self._poll_pool, ResponderIdentity.load, self.ca_root)
        except ConfigurationError as exc:  # half-renewed: keep the previous one
            log.warning("keeping the previous OCSP certificate: %s", exc)
            return
        self.identity = identity
        self.cache.clear()  # answers are signed again, by the new delegate, when asked for
        log.info("OCSP certificate %x loaded", identity.certificate.serial_number)

    async def _recheck(self, keys: set[AnswerKey]) -> None:
        """Sign again each answer among `keys` whose index lines changed."""
        entries = [(key, entry) for key in keys if (entry := self.cache.peek(key)) is not None]
        for start in range(0, len(entries), LINES_PER_READ):
            chunk = entries[start : start + LINES_PER_READ]
            seen, identity = self._generation, self.identity
            changed = await self._in(self._poll_pool, self._resign_changed, identity, chunk)
            for key, entry in changed:
                self.signatures += 1
                self.counts.renewed_changed += 1
                self._keep(key, entry, seen)

    def _resign_changed(
        self, identity: ResponderIdentity, chunk: list[tuple[AnswerKey, CachedAnswer]]
    ) -> list[tuple[AnswerKey, CachedAnswer]]:
        """Reread the lines of `chunk`'s answers; sign again those that changed (in a thread)."""
        changed = []
        fresh = self._read_lines([key for key, _ in chunk])
        for (key, entry), lines in zip(chunk, fresh, strict=True):
            if lines != entry.lines:
                renewed = self._sign(identity, _cert_ids_of(identity, key), lines)
                renewed.asked = entry.asked
                changed.append((key, renewed))
        return changed

    async def _renew_due(self) -> None:
        """Sign again the due answers that were asked for since their signing; drop the rest."""
        due = self.cache.due(time.time(), RENEWALS_PER_POLL)
        for key, entry in due:
            if not entry.asked:
                self.cache.discard(key)
        wanted = [(key, entry) for key, entry in due if entry.asked]
        if not wanted:
            return
        seen, identity = self._generation, self.identity
        try:
            renewed = await self._in(self._poll_pool, self._renew, identity, wanted)
        except Exception:
            for key, _ in wanted:
                self.cache.requeue(key)
            raise
        for key, entry in renewed:
            self.signatures += 1
            self.counts.renewed_due += 1
            self._keep(key, entry, seen)

    def _renew(
        self, identity: ResponderIdentity, wanted: list[tuple[AnswerKey, CachedAnswer]]
    ) -> list[tuple[AnswerKey, CachedAnswer]]:
        """Sign each answer of `wanted` again from the store's current lines (in a thread)."""
        fresh = self._read_lines([key for key, _ in wanted])
        return [
            (key, self._sign(identity, _cert_ids_of(identity, key), lines))
            for (key, _), lines in zip(wanted, fresh, strict=True)
        ]


def _cert_ids_of(identity: ResponderIdentity, key: AnswerKey) -> list[CertID]:
    """The CertIDs an answer key stands for (the issuer is ours: only such answers are kept)."""
    cert_ids = []
    for algorithm, serial in key:
        name_hash, key_hash = identity.issuer_hashes[algorithm]
        cert_ids.append(CertID(algorithm, name_hash, key_hash, serial))
    return cert_ids
