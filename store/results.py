"""`ResultsStore`: the one object over Redis that the signer, producers and commands open.

It holds one part per concern, each owning its keys (all named in `store.keys`):
`jobs` (records, reservation, publishing), `index` (certificates, index lines, adoption),
`replies`, `audit`, `ca_chain`, `crls`, `rate_limits`, `locks`, `leases` (who holds a reserved
job), `workers`, `metrics`, `ocsp_figures` and `est_figures` (each OCSP responder's and EST server's), and `health` (eviction policy, persistence, memory). Revocation is `store.revocations.RevocationStore(store)`. The methods
below are the entry points callers have always used; each hands over to its part.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

import redis
from redis.client import Pipeline

from core.index import IndexEntry
from core.messages import JobResult
from store.audit import AuditLog
from store.boundary import translated
from store.chain import ChainRecord
from store.crls import CRLStore
from store.figures_board import FiguresBoard
from store.health import Fitness, MemoryUse, StoreHealth
from store.index import CertificateIndex
from store.jobs import Closure, Failure, Intent, Issued, JobRecords, Refusal, Reservation
from store.keys import KeySpace
from store.leases import UNLEASED, Leases, LeaseTerms
from store.locks import Locks
from store.metrics import MetricsLedger
from store.rate_limits import RateLimits
from store.replies import REPLY_TTL_SECONDS, ReplyLists
from store.scripts import LuaScripts
from store.workers import WorkerBeats

__all__ = [
    "REPLY_TTL_SECONDS",
    "UNLEASED",
    "Closure",
    "Failure",
    "Intent",
    "Issued",
    "LeaseTerms",
    "Refusal",
    "Reservation",
    "ResultsStore",
]


class ResultsStore:
    """One interface over Redis for the signer, the producers and the operator's commands."""

    def __init__(self, client: redis.Redis, prefix: str = "casign") -> None:
        self.client = client
        self.keys = KeySpace(prefix)
        self.prefix = self.keys.prefix
        self.scripts = LuaScripts(client)
        self.replies = ReplyLists(client, self.keys, self.scripts)
        self.jobs = JobRecords(client, self.keys, self.scripts, self.replies)
        self.index = CertificateIndex(client, self.keys)
        self.audit = AuditLog(client, self.keys)
        self.ca_chain = ChainRecord(client, self.keys)
        self.crls = CRLStore(client, self.keys, self.scripts)
        self.rate_limits = RateLimits(client, self.keys, self.scripts)
        self.locks = Locks(client, self.keys, self.scripts)
        self.health = StoreHealth(client)
        self.workers = WorkerBeats(client, self.keys)
        self.metrics = MetricsLedger(client, self.keys)
        self.ocsp_figures = FiguresBoard(client, self.keys.ocsp_responders, self.keys.ocsp_figures)
        self.est_figures = FiguresBoard(client, self.keys.est_servers, self.keys.est_figures)
        self.leases = Leases(client, self.keys, self.scripts)

    @classmethod
    def from_url(cls, url: str, prefix: str = "casign") -> ResultsStore:
        """Connect to `redis://`, `rediss://` (TLS) or `unix://` Redis; the password may be in the URL."""
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            health_check_interval=30,
        )
        return cls(client, prefix)

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()

    def key(self, *parts: str) -> str:
        """The full name of key `parts` (see `store.keys`)."""
        return self.keys.key(*parts)

    def job_key(self, job_id: str) -> str:
        return self.keys.job(job_id)

    def reply_key(self, name: str) -> str:
        return self.keys.reply(name)

    @translated
    def ping(self) -> bool:
        return bool(self.client.ping())

    def reserve(self, intents: Iterable[Intent], lease: LeaseTerms = UNLEASED) -> list[Reservation]:
        """Record each intent before signing: its serial (never reused), its TBS record and
        the lease that covers it (see `store.leases`).

        Refused (Retryable) while the store may evict keys; see `store.health`.
        """
        self.health.guard()
        return self.jobs.reserve(intents, lease)

    def publish(
        self,
        issued: Iterable[Issued],
        refusals: Iterable[Refusal],
        other_replies: Iterable[JobResult],
        reply_to: str | None,
        audit_lines: Iterable[str] = (),
        then: Callable[[Pipeline], object] | None = None,
    ) -> None:
        """Publish a batch in short atomic calls (each job whole in one): certificates, index entries, refusals.

        `other_replies` (refusals, answers found in the store) go to the reply list too; what
        `then` queues on the transaction is done in the same MULTI/EXEC.
        """
        self.jobs.publish(issued, refusals, other_replies, reply_to, audit_lines, then)

    def mark_failed(self, failures: Iterable[Failure]) -> list[bool]:
        """Close each job as `failed` if it is reserved under the same fingerprint or unknown;
        True where this call closed it (see `JobRecords.mark_failed`)."""
        return self.jobs.mark_failed(failures)

    def close_records(self, closures: Iterable[Closure]) -> list[bool]:
        """Refuse each job whose record is still the one read, so nothing signs it; True where
        this call closed it (see `JobRecords.close_records`)."""
        return self.jobs.close_records(closures)

    def wait_replies(self, reply_to: str, timeout: float, limit: int = 1000) -> list[JobResult]:
        """Block up to `timeout` seconds for results pushed to `reply_to`; return all that came."""
        return self.jobs.wait_replies(reply_to, timeout, limit)

    def job_results(
        self, job_ids: Iterable[str], fingerprints: Mapping[str, str] | None = None
    ) -> dict[str, JobResult]:
        """The finished results (issued or refused) among `job_ids` (see `JobRecords`)."""
        return self.jobs.job_results(job_ids, fingerprints)

    def known_jobs(self, job_ids: Iterable[str]) -> set[str]:
        """Which of `job_ids` the store has a record of (reserved, issued or refused)."""
        return self.jobs.known_jobs(job_ids)

    def accounted_jobs(self, job_ids: Iterable[str]) -> set[str]:
        """Which of `job_ids` are in a record or in a signing process's hands (`JobRecords`)."""
        return self.jobs.accounted_jobs(job_ids)

    def job_state(self, job_id: str) -> dict[str, str]:
        return self.jobs.job_state(job_id)

    def pending_records(self) -> list[tuple[str, str]]:
        """(job id, record) of every job reserved but never published."""
        return self.jobs.pending_records()

    def audit_entries(self) -> Iterator[str]:
        """The audit log's stored `HASH JSON` entries, oldest first, read in chunks."""
        return self.audit.entries()

    def audit_head(self) -> str | None:
        return self.audit.head()

    def certificate(self, serial: str) -> str | None:
        return self.index.certificate(serial)

    def index_entry(self, serial: str) -> IndexEntry | None:
        return self.index.entry(serial)

    def index_lines_of(self, serials: Iterable[str]) -> list[str | None]:
        """The index line of each serial (as `format_serial` spells it), None if never issued.

        One HMGET; the OCSP responder reads its answers' statuses with it.
        """
        return self.index.lines_of([serial.upper() for serial in serials])

    def index_lines(self) -> Iterator[str]:
        """Every index line in issuance order, read in chunks."""
        return self.index.lines()

    def count_issued(self) -> int:
        return self.index.count()

    def count_serials(self) -> int:
        return self.jobs.count_serials()

    def serial_owner(self, serial: str) -> str | None:
        """The job id `serial` was issued for (`adopted` before casign), None if never drawn."""
        return self.jobs.serial_owner(serial.upper())

    def owner_of(self, serial: str) -> str | None:
        """Who obtained the certificate `serial` (the requester it was issued to), if recorded."""
        return self.jobs.owner_of(serial.upper())

    def set_chain(self, chain_pem: str) -> None:
        self.ca_chain.set(chain_pem)

    def chain(self) -> str | None:
        return self.ca_chain.get()

    def require_fit(self) -> Fitness | None:
        """A worker's start-up check: StoreUnfit unless maxmemory-policy is noeviction."""
        return self.health.require_fit()

    def note_worker_active(self, queue: str) -> None:
        """Record that a worker serving `queue` is alive now (it started, or took a batch)."""
        self.workers.note_active(queue)

    def workers_last_active(self) -> dict[str, float]:
        """When a worker last started or took a batch (unix time), by the queue it serves."""
        return self.workers.last_active()

    def memory(self) -> MemoryUse:
        """Memory used by Redis and its `maxmemory` headroom."""
        return self.health.memory()
