"""Jobs and their records: reserved before signing, published with their certificate after.

Every batch is reserved and then published by script calls (`lua/reserve.lua`,
`lua/publish.lua`) of at most PUBLISH_CHUNK jobs each, each call atomic and one round trip; the keys are in `store.keys`. The scripts
name keys from the prefix they are given, so they suit a standalone Redis (or a replicated
one), not Redis Cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import redis
from redis.client import Pipeline

from core.errors import Retryable
from core.messages import JobResult
from store.boundary import optional_text, text, translated
from store.keys import KeySpace
from store.leases import UNLEASED, LeaseTerms
from store.replies import REPLY_TTL_SECONDS, ReplyLists
from store.scripts import Lua, LuaScripts

_CHUNK = 1000  # members per ZADD/ZREM: each Redis call stays short
# Jobs (or replies, refusals, audit lines) per script call when reserving or publishing: a call
# of 100 keeps Redis busy under 10 ms (about 5 here), so a large batch never stalls other clients.
PUBLISH_CHUNK = 100


@dataclass(frozen=True, slots=True)
class Reservation:
    """What `reserve` found for a job: newly reserved, or the job's earlier state."""

    job_id: str
    state: str  # reserved | serial_taken | leased | issued | refused | failed | pending
    fingerprint: str | None = None
    record: str | None = None
    serial: str | None = None
    code: str | None = None
    message: str | None = None
    certificate_pem: str | None = None


@dataclass(frozen=True, slots=True)
class Intent:
    """A job about to be signed: its serial and the record that rebuilds its TBS."""

    job_id: str
    fingerprint: str
    serial: str
    record: str


@dataclass(frozen=True, slots=True)
class Issued:
    """A signed, chain-checked certificate ready to publish."""

    job_id: str
    fingerprint: str
    serial: str
    certificate_pem: str
    index_line: str
    audit_line: str
    owner: str | None = None  # who obtained it: a producer may revoke what it obtained


@dataclass(frozen=True, slots=True)
class Refusal:
    """A job refused for good: recorded under its id so a redelivery gets the same answer."""

    job_id: str
    fingerprint: str
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Failure:
    """A job that failed inside the signer (sign or verify): answered `failed`, never issued."""

    job_id: str
    fingerprint: str
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Closure:
    """A reserved job whose stored record the signer refuses to sign (forged, or no longer
    admissible): refused with `code`, so no later delivery or recovery signs it."""

    job_id: str
    record: str  # the record as it was read ('' when there was none): closed only if unchanged
    code: str
    message: str


class JobRecords:
    """`P:job:{id}`, `P:serials`, `P:pending`, and the publishing of a batch's results."""

    def __init__(
        self, client: redis.Redis, keys: KeySpace, scripts: LuaScripts, replies: ReplyLists
    ) -> None:
        self._client = client
        self._keys = keys
        self._scripts = scripts
        self._replies = replies
        # How long a closed job's record (issued, refused, failed) is kept; 0: for ever. A
        # reserved one is kept until it is closed. Set by the signer from casign.toml.
        self.retention_seconds = 0

    @translated
    def reserve(self, intents: Iterable[Intent], lease: LeaseTerms = UNLEASED) -> list[Reservation]:
        """Record each intent before signing: its serial (never reused), its TBS record and its
        holder (`lease.holder`, whose lease this call renews). A job reserved under another
        process's live lease comes back `leased`, untouched."""
        intents = list(intents)
        keys = self._keys
        replies: list[list[object]] = []
        for first in range(0, len(intents), PUBLISH_CHUNK):  # short calls, as `publish`
            args: list[str | int] = [
                keys.job_stem,
                keys.lease_stem,
                lease.holder,
                lease.milliseconds,
            ]
            for intent in intents[first : first + PUBLISH_CHUNK]:
                args += (intent.job_id, intent.fingerprint, intent.serial, intent.record)
            replies += self._scripts[Lua.RESERVE](
                keys=[keys.serials, keys.pending, keys.certs], args=args
            )
        reservations = []
        for intent, reply in zip(intents, replies, strict=True):
            state = text(reply[0])
            if len(reply) == 1:  # reserved now, its serial found taken, or another's lease
                reservations.append(Reservation(intent.job_id, state))
                continue
            # The job was there already; one still 'reserved' is an earlier delivery's intent.
            fingerprint, record, serial, code, message, pem = (optional_text(v) for v in reply[1:7])
            reservations.append(
                Reservation(
                    intent.job_id,
                    "pending" if state == "reserved" else state,
                    fingerprint or None,
                    record or None,
                    serial or None,
                    code or None,
                    message or None,
                    pem or None,
                )
            )
        return reservations

    @translated
    def publish(
        self,
        issued: Iterable[Issued],
        refusals: Iterable[Refusal],
        other_replies: Iterable[JobResult],
        reply_to: str | None,
        audit_lines: Iterable[str] = (),
        then: Callable[[Pipeline], object] | None = None,
    ) -> None:
        """Publish a batch: certificates, index entries, refusals, replies (`other_replies`
        first) and audit lines, PUBLISH_CHUNK of each to a script call, so that no call holds
        Redis long. Each job is published whole in one call; a batch cut short by an outage is
        finished by its redelivery (a job published before is answered from its record). With
        `then`, the batch goes in one call and the commands `then` queues run in the same
        MULTI/EXEC (the air gap settles a batch with its answers so)."""
        issued, refusals, audit_lines = list(issued), list(refusals), list(audit_lines)
        payloads = (
            [reply.model_dump_json(exclude_none=True) for reply in other_replies]
            if reply_to
            else []
        )
        if then is not None:
            self._publish_part(issued, refusals, payloads, reply_to, audit_lines, then)
            return
        longest = max(len(issued), len(refusals), len(payloads), len(audit_lines))
        for first in range(0, longest, PUBLISH_CHUNK):
            part = slice(first, first + PUBLISH_CHUNK)
            self._publish_part(
                issued[part], refusals[part], payloads[part], reply_to, audit_lines[part]
            )

    def _publish_part(
        self,
        issued: list[Issued],
        refusals: list[Refusal],
        payloads: list[str],
        reply_to: str | None,
        audit_lines: list[str],
        then: Callable[[Pipeline], object] | None = None,
    ) -> None:
        """One call of lua/publish.lua: atomic, and one round trip (with `then`'s commands in
        the same MULTI/EXEC)."""
        keys = self._keys
        if not (issued or refusals or audit_lines or payloads):
            if then is not None:
                with self._client.pipeline(transaction=True) as pipe:
                    then(pipe)
                    pipe.execute()
            return
        script_keys = [
            keys.serials,
            keys.certs,
            keys.index,
            keys.index_order,
            keys.pending,
            keys.audit,
            keys.audit_head,
            keys.owners,
        ]
        if reply_to:
            script_keys.append(keys.reply(reply_to))
        args: list[str | int] = [
            keys.job_stem,
            REPLY_TTL_SECONDS,
            self._replies.max_length,
            self.retention_seconds,
            len(issued),
            len(refusals),
            len(payloads),
            *payloads,
        ]
        for item in issued:
            args += (
                item.job_id,
                item.serial,
                item.certificate_pem,
                item.index_line,
                item.fingerprint,
                item.audit_line,
                item.owner or "",
            )
        for refusal in refusals:
            args += (refusal.job_id, refusal.fingerprint, refusal.code, refusal.message)
        args += audit_lines
        if then is None:
            outcomes = self._scripts[Lua.PUBLISH](keys=script_keys, args=args)
        else:
            with self._client.pipeline(transaction=True) as pipe:
                self._scripts[Lua.PUBLISH](keys=script_keys, args=args, client=pipe)
                then(pipe)
                outcomes = pipe.execute()[0]
        if -1 in outcomes:
            raise Retryable("a serial drawn for a job belongs to another job; not published")

    @translated
    def mark_failed(self, failures: Iterable[Failure]) -> list[bool]:
        """Close each job as `failed` (out of `pending`, record dropped, serial kept) if it is
        reserved under the same fingerprint or unknown; True where this call closed it."""
        failures = list(failures)
        if not failures:
            return []
        args = [self._keys.job_stem, str(self.retention_seconds)]
        for failure in failures:
            args += (failure.job_id, failure.fingerprint, failure.code, failure.message)
        closed = self._scripts[Lua.MARK_FAILED](keys=[self._keys.pending], args=args)
        return [bool(one) for one in closed]

    @translated
    def close_records(self, closures: Iterable[Closure]) -> list[bool]:
        """Refuse each job whose record is still the one read (`lua/close_records.lua`): a
        reserved job becomes `refused` with the code; in any state the record goes and the job
        leaves `pending`. True where this call closed it (False: its record changed meanwhile)."""
        closures = list(closures)
        if not closures:
            return []
        args = [self._keys.job_stem, str(self.retention_seconds)]
        for closure in closures:
            args += (closure.job_id, closure.record, closure.code, closure.message)
        closed = self._scripts[Lua.CLOSE_RECORDS](keys=[self._keys.pending], args=args)
        return [bool(one) for one in closed]

    def wait_replies(self, reply_to: str, timeout: float, limit: int = 1000) -> list[JobResult]:
        """Block up to `timeout` seconds for results pushed to `reply_to`; return all that came."""
        raw = self._replies.pop_all(reply_to, timeout, limit)
        return [JobResult.model_validate_json(item) for item in raw]

    @translated
    def job_results(
        self, job_ids: Iterable[str], fingerprints: Mapping[str, str] | None = None
    ) -> dict[str, JobResult]:
        """The finished results (issued or refused) among `job_ids`, each carrying the stored
        fingerprint of the request it answers.

        With `fingerprints`, a job whose stored request differs (a reused job id) is left out:
        its answer is the refusal the worker sends, not the earlier request's certificate.
        """
        ids = list(job_ids)
        pipe = self._client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self._keys.job(job_id), "state", "serial", "code", "message", "fingerprint")
        rows = pipe.execute()
        finished: dict[str, JobResult] = {}
        issued_serials: dict[str, tuple[str, str | None]] = {}
        for job_id, (state, serial, code, message, fingerprint) in zip(ids, rows, strict=True):
            expected = fingerprints.get(job_id) if fingerprints else None
            if expected is not None and fingerprint != expected:
                continue
            if state == "issued":
                issued_serials[job_id] = (serial, optional_text(fingerprint))
            elif state == "refused":
                finished[job_id] = JobResult(
                    job_id=job_id,
                    status="refused",
                    code=code,
                    message=message,
                    fingerprint=optional_text(fingerprint),
                )
        if issued_serials:
            serials = [serial for serial, _ in issued_serials.values()]
            pems = self._client.hmget(self._keys.certs, serials)
            for (job_id, (serial, fingerprint)), pem in zip(
                issued_serials.items(), pems, strict=True
            ):
                finished[job_id] = JobResult(
                    job_id=job_id,
                    status="issued",
                    serial=serial,
                    certificate_pem=optional_text(pem),
                    fingerprint=fingerprint,
                )
        return finished

    @translated
    def known_jobs(self, job_ids: Iterable[str]) -> set[str]:
        """Which of `job_ids` the store has a record of (reserved, issued or refused)."""
        ids = list(job_ids)
        pipe = self._client.pipeline(transaction=False)
        for job_id in ids:
            pipe.exists(self._keys.job(job_id))
        return {job_id for job_id, found in zip(ids, pipe.execute(), strict=True) if found}

    @translated
    def note_in_hand(self, job_ids: Iterable[str], forget_after: float) -> None:
        """Mark `job_ids` as in a signing process's hands (its task began their message), and
        forget marks older than `forget_after` seconds (their process died long ago)."""
        now = time.time()
        ids = list(job_ids)
        pipe = self._client.pipeline(transaction=False)
        for start in range(0, len(ids), _CHUNK):
            pipe.zadd(self._keys.in_hand, dict.fromkeys(ids[start : start + _CHUNK], now))
        pipe.zremrangebyscore(self._keys.in_hand, "-inf", now - forget_after)
        pipe.execute()

    @translated
    def drop_in_hand(self, job_ids: Iterable[str]) -> None:
        """The task that carried `job_ids` ended: they are in a record now, or answered."""
        ids = list(job_ids)
        pipe = self._client.pipeline(transaction=False)
        for start in range(0, len(ids), _CHUNK):
            pipe.zrem(self._keys.in_hand, *ids[start : start + _CHUNK])
        pipe.execute()

    @translated
    def accounted_jobs(self, job_ids: Iterable[str]) -> set[str]:
        """Which of `job_ids` are somewhere a worker will answer them from: in a record
        (reserved, issued, refused, failed), or in a signing process's hands."""
        ids = list(job_ids)
        pipe = self._client.pipeline(transaction=False)
        for job_id in ids:
            pipe.exists(self._keys.job(job_id))
            pipe.zscore(self._keys.in_hand, job_id)
        found = pipe.execute()
        return {
            job_id for n, job_id in enumerate(ids) if found[2 * n] or found[2 * n + 1] is not None
        }

    @translated
    def job_state(self, job_id: str) -> dict[str, str]:
        """The job's stored fields (state, serial, ...) without its record; {} if unknown."""
        raw = self._client.hgetall(self._keys.job(job_id))
        state = {text(name): text(value) for name, value in raw.items()}
        state.pop("record", None)
        return state

    @translated
    def pending_records(self) -> list[tuple[str, str]]:
        """(job id, record) of every job reserved but never published."""
        ids = sorted(text(member) for member in self._client.smembers(self._keys.pending))
        if not ids:
            return []
        pipe = self._client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(self._keys.job(job_id), "record")
        return [
            (job_id, record) for job_id, record in zip(ids, pipe.execute(), strict=True) if record
        ]

    @translated
    def serial_owner(self, serial: str) -> str | None:
        """The job id `serial` (hex as stored) was drawn for, `adopted`, or None if unused."""
        return optional_text(self._client.hget(self._keys.serials, serial))

    @translated
    def owner_of(self, serial: str) -> str | None:
        """Who obtained the certificate `serial` (hex as stored), if its job recorded one."""
        owner = self._client.hget(self._keys.owners, serial)
        if owner is not None:
            return text(owner)
        # Published before `owners` was kept: the job record names it.
        job_id = self._client.hget(self._keys.serials, serial)
        if job_id is None:
            return None
        return optional_text(self._client.hget(self._keys.job(text(job_id)), "owner")) or None

    @translated
    def count_serials(self) -> int:
        """Serials drawn or adopted so far."""
        return int(self._client.hlen(self._keys.serials))
