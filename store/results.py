"""The results store in Redis: serials, intents, certificates, index entries and job results.

Keys, under a prefix (`casign` unless configured):
  job:{id}      hash: state (reserved|issued|refused), fingerprint, serial, record, code, message
  serials       hash: serial hex -> job id (a serial is never drawn twice: HSETNX)
  pending       set of job ids reserved but not yet published (what recovery signs)
  certs         hash: serial hex -> certificate PEM
  index         hash: serial hex -> index.txt line
  index:order   list of serial hex in issuance order (export keeps the order)
  reply:{name}  list of JobResult JSON a producer waits on
  chain         the CA chain PEM handed out with every certificate
  workers       hash: queue name -> unix time a worker serving it last started or took a batch
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import redis
from redis.commands.core import Script

from core.errors import Retryable
from core.index import IndexEntry
from core.messages import JobResult
from store.boundary import optional_text, text, translated

REPLY_TTL_SECONDS = 24 * 3600
_EXPORT_CHUNK = 5000

# The scripts name keys from the prefix they are given, so they suit a standalone Redis (or a
# replicated one), not Redis Cluster. Each runs a whole batch atomically in one round trip.
_RESERVE_BATCH = """
local prefix = ARGV[1]
local serials, pending, certs = prefix .. 'serials', prefix .. 'pending', prefix .. 'certs'
local out = {}
for i = 2, #ARGV, 4 do
  local job_id, fingerprint, serial, record = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local key = prefix .. 'job:' .. job_id
  local state = redis.call('HGET', key, 'state')
  if state then
    local f = redis.call('HMGET', key, 'fingerprint', 'record', 'serial', 'code', 'message')
    local pem = false
    if state == 'issued' then pem = redis.call('HGET', certs, f[3]) end
    out[#out + 1] = {state, f[1], f[2], f[3], f[4], f[5], pem}
  elseif redis.call('HSETNX', serials, serial, job_id) == 0 then
    out[#out + 1] = {'serial_taken'}
  else
    redis.call('HSET', key, 'state', 'reserved', 'fingerprint', fingerprint, 'serial', serial,
               'record', record)
    redis.call('SADD', pending, job_id)
    out[#out + 1] = {'reserved'}
  end
end
return out
"""

# ARGV: prefix, reply key ('' for none), reply TTL, number of issued jobs, number of refusals,
# then 6 values per issued job (its audit line last), 4 per refusal, then other audit lines.
# Audit lines are chained here (see core.audit), in the same step as what they record. A job already published by an earlier delivery is skipped,
# reply included, so a job signed twice is published and answered once.
_PUBLISH_BATCH = """
local prefix, reply_key, ttl = ARGV[1], ARGV[2], ARGV[3]
local issued_count, refusal_count = tonumber(ARGV[4]), tonumber(ARGV[5])
local serials, certs, index = prefix .. 'serials', prefix .. 'certs', prefix .. 'index'
local order, pending = prefix .. 'index:order', prefix .. 'pending'
local out, audit = {}, {}
local last_issued = 5 + 6 * issued_count
local last_refusal = last_issued + 4 * refusal_count
for i = 6, last_issued, 6 do
  local job_id, serial, pem, line, fingerprint = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local key = prefix .. 'job:' .. job_id
  local owner = redis.call('HGET', serials, serial)
  if redis.call('HGET', key, 'state') == 'issued' then
    out[#out + 1] = 0
  elseif owner and owner ~= job_id then
    out[#out + 1] = -1
  else
    redis.call('HSET', serials, serial, job_id)
    redis.call('HSET', key, 'state', 'issued', 'serial', serial, 'fingerprint', fingerprint)
    redis.call('HDEL', key, 'record')
    redis.call('HSET', certs, serial, pem)
    redis.call('HSET', index, serial, line)
    redis.call('RPUSH', order, serial)
    redis.call('SREM', pending, job_id)
    if reply_key ~= '' then
      redis.call('RPUSH', reply_key, cjson.encode({schema_version = 1, job_id = job_id,
        status = 'issued', serial = serial, certificate_pem = pem, fingerprint = fingerprint}))
    end
    audit[#audit + 1] = ARGV[i + 5]
    out[#out + 1] = 1
  end
end
for i = last_issued + 1, last_refusal, 4 do
  local key = prefix .. 'job:' .. ARGV[i]
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'state', 'refused', 'fingerprint', ARGV[i + 1], 'code', ARGV[i + 2],
               'message', ARGV[i + 3])
  end
end
for i = last_refusal + 1, #ARGV do audit[#audit + 1] = ARGV[i] end
if #audit > 0 then
  local head = redis.call('GET', prefix .. 'audit:head') or string.rep('0', 40)
  for _, entry in ipairs(audit) do
    head = redis.sha1hex(head .. '\\n' .. entry)
    redis.call('RPUSH', prefix .. 'audit', head .. ' ' .. entry)
  end
  redis.call('SET', prefix .. 'audit:head', head)
end
if reply_key ~= '' and redis.call('EXISTS', reply_key) == 1 then
  redis.call('EXPIRE', reply_key, ttl)
end
return out
"""


@dataclass(frozen=True, slots=True)
class Reservation:
    """What `reserve` found for a job: newly reserved, or the job's earlier state."""

    job_id: str
    state: str  # reserved | serial_taken | issued | refused | pending
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


@dataclass(frozen=True, slots=True)
class Refusal:
    job_id: str
    fingerprint: str
    code: str
    message: str


class ResultsStore:
    """One interface over Redis for the signer, the producers and the operator's commands."""

    def __init__(self, client: redis.Redis, prefix: str = "casign") -> None:
        self.client = client
        self.prefix = prefix.rstrip(":") + ":"
        self._reserve = client.register_script(_RESERVE_BATCH)
        self._publish = client.register_script(_PUBLISH_BATCH)
        self._scripts: dict[str, Script] = {}

    @classmethod
    def from_url(cls, url: str, prefix: str = "casign") -> ResultsStore:
        """Connect to `redis://`, `rediss://` (TLS) or `unix://` Redis; the password may be in the URL."""
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            health_check_interval=30,
        )
        return cls(client, prefix)

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def job_key(self, job_id: str) -> str:
        return self.key("job", job_id)

    def reply_key(self, name: str) -> str:
        return self.key("reply", name)

    @translated
    def ping(self) -> bool:
        return bool(self.client.ping())

    @translated
    def reserve(self, intents: Iterable[Intent]) -> list[Reservation]:
        """Record each intent before signing: its serial (never reused) and its TBS record."""
        intents = list(intents)
        if not intents:
            return []
        args: list[str] = [self.prefix]
        for intent in intents:
            args += (intent.job_id, intent.fingerprint, intent.serial, intent.record)
        reservations = []
        for intent, reply in zip(intents, self._reserve(keys=[], args=args), strict=True):
            state = text(reply[0])
            if len(reply) == 1:  # this call reserved the job, or found its serial taken
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
    ) -> None:
        """Publish a batch atomically in one round trip: certificates, index entries, refusals.

        `other_replies` (refusals, answers found in the store) go to the reply list too.
        """
        issued, refusals = list(issued), list(refusals)
        reply_key = self.reply_key(reply_to) if reply_to else ""
        args: list[str | int] = [
            self.prefix,
            reply_key,
            REPLY_TTL_SECONDS,
            len(issued),
            len(refusals),
        ]
        for item in issued:
            args += (
                item.job_id,
                item.serial,
                item.certificate_pem,
                item.index_line,
                item.fingerprint,
                item.audit_line,
            )
        for refusal in refusals:
            args += (refusal.job_id, refusal.fingerprint, refusal.code, refusal.message)
        audit_lines = list(audit_lines)
        args += audit_lines
        payloads = [reply.model_dump_json(exclude_none=True) for reply in other_replies]
        pipe = self.client.pipeline(transaction=True)
        if reply_key and payloads:
            pipe.rpush(reply_key, *payloads)
        publishes = bool(issued or refusals or audit_lines)
        if publishes:
            self._publish(keys=[], args=args, client=pipe)
        outcomes = pipe.execute()
        if publishes and -1 in outcomes[-1]:
            raise Retryable("a serial drawn for a job belongs to another job; not published")

    def script(self, source: str) -> Script:
        """A Lua script registered once per store (for the signer's rate limits and the like)."""
        registered = self._scripts.get(source)
        if registered is None:
            registered = self._scripts[source] = self.client.register_script(source)
        return registered

    @translated
    def audit_entries(self) -> Iterator[str]:
        """The audit log's stored `HASH JSON` entries, oldest first, read in chunks."""
        start = 0
        while True:
            chunk = self.client.lrange(self.key("audit"), start, start + _EXPORT_CHUNK - 1)
            if not chunk:
                return
            yield from (text(entry) for entry in chunk)
            start += len(chunk)

    @translated
    def audit_head(self) -> str | None:
        return optional_text(self.client.get(self.key("audit:head")))

    @translated
    def wait_replies(self, reply_to: str, timeout: float, limit: int = 1000) -> list[JobResult]:
        """Block up to `timeout` seconds for results pushed to `reply_to`; return all that came."""
        key = self.reply_key(reply_to)
        first = self.client.blpop([key], timeout=max(timeout, 0.01))
        if first is None:
            return []
        raw = [text(first[1])]
        more = self.client.lpop(key, limit)
        if isinstance(more, list):
            raw.extend(text(item) for item in more)
        return [JobResult.model_validate_json(item) for item in raw]

    @translated
    def job_results(
        self, job_ids: Iterable[str], fingerprints: Mapping[str, str] | None = None
    ) -> dict[str, JobResult]:
        """The finished results (issued or refused) among `job_ids`.

        With `fingerprints`, a job whose stored request differs (a reused job id) is left out:
        its answer is the refusal the worker sends, not the earlier request's certificate.
        """
        ids = list(job_ids)
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self.job_key(job_id), "state", "serial", "code", "message", "fingerprint")
        rows = pipe.execute()
        finished: dict[str, JobResult] = {}
        issued_serials: dict[str, str] = {}
        for job_id, (state, serial, code, message, fingerprint) in zip(ids, rows, strict=True):
            expected = fingerprints.get(job_id) if fingerprints else None
            if expected is not None and fingerprint != expected:
                continue
            if state == "issued":
                issued_serials[job_id] = serial
            elif state == "refused":
                finished[job_id] = JobResult(
                    job_id=job_id, status="refused", code=code, message=message
                )
        if issued_serials:
            pems = self.client.hmget(self.key("certs"), list(issued_serials.values()))
            for (job_id, serial), pem in zip(issued_serials.items(), pems, strict=True):
                finished[job_id] = JobResult(
                    job_id=job_id,
                    status="issued",
                    serial=serial,
                    certificate_pem=optional_text(pem),
                    fingerprint=(fingerprints or {}).get(job_id),
                )
        return finished

    @translated
    def known_jobs(self, job_ids: Iterable[str]) -> set[str]:
        """Which of `job_ids` the store has a record of (reserved, issued or refused)."""
        ids = list(job_ids)
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.exists(self.job_key(job_id))
        return {job_id for job_id, found in zip(ids, pipe.execute(), strict=True) if found}

    @translated
    def job_state(self, job_id: str) -> dict[str, str]:
        raw = self.client.hgetall(self.job_key(job_id))
        state = {text(name): text(value) for name, value in raw.items()}
        state.pop("record", None)
        return state

    @translated
    def pending_records(self) -> list[tuple[str, str]]:
        """(job id, record) of every job reserved but never published."""
        ids = sorted(text(member) for member in self.client.smembers(self.key("pending")))
        if not ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(self.job_key(job_id), "record")
        return [
            (job_id, record) for job_id, record in zip(ids, pipe.execute(), strict=True) if record
        ]

    @translated
    def certificate(self, serial: str) -> str | None:
        return optional_text(self.client.hget(self.key("certs"), serial.upper()))

    @translated
    def index_entry(self, serial: str) -> IndexEntry | None:
        line = self.client.hget(self.key("index"), serial.upper())
        return IndexEntry.from_openssl_line(text(line)) if line else None

    @translated
    def index_lines(self) -> Iterator[str]:
        """Every index line in issuance order, read in chunks."""
        order_key, index_key = self.key("index:order"), self.key("index")
        start = 0
        while True:
            serials = self.client.lrange(order_key, start, start + _EXPORT_CHUNK - 1)
            if not serials:
                return
            yield from (text(line) for line in self.client.hmget(index_key, serials) if line)
            start += len(serials)

    @translated
    def count_issued(self) -> int:
        return int(self.client.hlen(self.key("index")))

    @translated
    def count_serials(self) -> int:
        return int(self.client.hlen(self.key("serials")))

    @translated
    def set_chain(self, chain_pem: str) -> None:
        self.client.set(self.key("chain"), chain_pem)

    @translated
    def chain(self) -> str | None:
        return optional_text(self.client.get(self.key("chain")))

    @translated
    def note_worker_active(self, queue: str) -> None:
        """Record that a worker serving `queue` is alive now (it started, or took a batch)."""
        self.client.hset(self.key("workers"), queue, f"{time.time():.3f}")

    @translated
    def workers_last_active(self) -> dict[str, float]:
        """When a worker last started or took a batch (unix time), by the queue it serves."""
        raw = self.client.hgetall(self.key("workers"))
        return {text(queue): float(text(when)) for queue, when in raw.items()}

    @translated
    def mark_failed(self, failures: Iterable[Failure]) -> list[bool]:
        """Close each job as `failed` (out of `pending`, record dropped, serial kept) if it is
        reserved under the same fingerprint or unknown; True where this call closed it."""
        failures = list(failures)
        if not failures:
            return []
        args = [self.prefix]
        for failure in failures:
            args += (failure.job_id, failure.fingerprint, failure.code, failure.message)
        return [bool(closed) for closed in self.script(_MARK_FAILED)(keys=[], args=args)]

    @translated
    def index_lines_of(self, serials: Iterable[str]) -> list[str | None]:
        """The index line of each serial (as `format_serial` spells it), None if never issued.

        One HMGET; the OCSP responder reads its answers' statuses with it.
        """
        fields = [serial.upper() for serial in serials]
        if not fields:
            return []
        lines = self.client.hmget(self.key("index"), fields)
        return [optional_text(line) for line in lines]


@dataclass(frozen=True, slots=True)
class Failure:
    """A job that failed inside the signer (sign or verify): answered `failed`, never issued."""

    job_id: str
    fingerprint: str
    code: str
    message: str


# ARGV: prefix, then job id, fingerprint, code and message per job. A job another delivery
# issued or refused, or one reserved for a different request, is left as it is.
_MARK_FAILED = """
local prefix = ARGV[1]
local out = {}
for i = 2, #ARGV, 4 do
  local job_id, fingerprint = ARGV[i], ARGV[i + 1]
  local key = prefix .. 'job:' .. job_id
  local found = redis.call('HMGET', key, 'state', 'fingerprint')
  if not found[1] or (found[1] == 'reserved' and found[2] == fingerprint) then
    redis.call('HSET', key, 'state', 'failed', 'fingerprint', fingerprint, 'code', ARGV[i + 2],
               'message', ARGV[i + 3])
    redis.call('HDEL', key, 'record')
    redis.call('SREM', prefix .. 'pending', job_id)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""
