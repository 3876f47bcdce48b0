"""The producer API: enqueue CSR jobs in batches and collect their results as they arrive.

Imports the message schema and the store only; never the keystore or the worker.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType

from celery import Celery

from core.auth import DEFAULT_ENVELOPE_SECONDS, MessageKind, read_secret, seal
from core.errors import ConfigurationError
from core.messages import JobResult, RevocationResult, SignBatch, SignRequest
from core.queue import (
    DEFAULT_BATCH_SIZE,
    LEGACY_NAMES,
    MAX_BATCH_BYTES,
    MAX_BATCH_JOBS,
    SIGN_BATCH_TASK,
    celery_settings,
    job_bytes,
    names_for_ca,
    producer_queue,
)
from producers.delivery import SentMessages, queue_depth
from producers.revocation import DEFAULT_TIMEOUT, send_revocation
from producers.trust import AnchorSpec, ResultCheck, TrustAnchor
from store.acl import reply_list_name
from store.airgap import AirgapRecords
from store.envelopes import EnvelopeLedger
from store.identity import CAIdentityRecord
from store.results import ResultsStore
from store.revocations import RevocationStore

log = logging.getLogger("casign.producer")

DEFAULT_RESEND_SECONDS = 60.0
# Each resend check after a silence doubles the wait before the next, up to this; an answer
# starts it over at `resend_after`.
MAX_RESEND_SECONDS = 600.0
# The most requests a producer keeps to check answers against; past it the oldest are
# forgotten (their answers stay in the store: `status(job_id)` reads them).
DEFAULT_MAX_WAITING = 100_000
_REPLY_WAIT_SECONDS = 1.0
# A job found nowhere is looked for once more after this long before it is sent again.
_LOST_GRACE_SECONDS = 0.5
# After this long without a reply the store is asked directly; the spell doubles each time.
_RECHECK_SECONDS = 2.0
_MAX_RECHECK_SECONDS = 30.0


class Producer:
    """Submits jobs to the signing queue and reads results from the results store."""

    def __init__(
        self,
        broker_url: str,
        store_url: str,
        *,
        store_prefix: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        requester: str | None = None,
        queue: str | None = None,
        identity: str | None = None,
        secret_source: str | None = None,
        resend_after: float = DEFAULT_RESEND_SECONDS,
        ca_identity: str | None = None,
        envelope_seconds: int = DEFAULT_ENVELOPE_SECONDS,
        trust_anchor: AnchorSpec | TrustAnchor | None = None,
        max_waiting: int = DEFAULT_MAX_WAITING,
    ) -> None:
        """`identity` and `secret_source` (`file:PATH` or `env:VAR`) seal every message (HMAC).

        `queue` and `store_prefix` are the CA's (`casign inspect DIR` prints them): unless
        given, the names `casign init` derives from `ca_identity` (core.queue.names_for_ca),
        and without that the names of a CA folder made before casign derived them
        (`casign.sign`, `casign`).

        `trust_anchor` is the root certificate this producer trusts (PEM, the path of a PEM
        file, or its SHA-256 fingerprint): a certificate is reported issued only once it chains
        to it for its profile's usage, and `chain_pem` is the chain that showed it. Without
        one, certificates are still checked against their CSR's key and their serial, and a warning
        is logged once, when the first certificate or chain is taken without it.

        A sealed message names the CA it is for (`ca_identity`, `casign ca-id` prints it;
        by default the identity the CA's signer recorded in the store) and expires after
        `envelope_seconds` (at most the producer's `envelope_seconds` in producers.toml).

        A producer with an identity publishes to its own queue (`core.queue.producer_queue`:
        `QUEUE:IDENTITY`), which the signer consumes in turn with every other producer's; the
        envelope still names `queue`, the CA's. After `resend_after` seconds without any answer,
        the jobs that no worker has recorded and whose message can no longer be in that queue
        are sent again (same job id, so never signed twice); each silent round doubles the wait
        for the next, up to MAX_RESEND_SECONDS, and an answer starts it over.

        At most `max_waiting` requests are held to check their answers: past it the oldest are
        forgotten, with a warning (`results` no longer waits for them; `status(job_id)` still
        reads their answers from the store, checked against the trust anchor only).
        """
        self.resend_after = resend_after
        self.max_waiting = max_waiting
        if (identity is None) != (secret_source is None):
            raise ValueError("a producer identity and its secret_source go together")
        self.identity = identity
        self._secret = read_secret(secret_source) if secret_source else None
        self._ca_identity = ca_identity
        self.envelope_seconds = envelope_seconds
        self.batch_size = batch_size
        names = names_for_ca(ca_identity) if ca_identity is not None else LEGACY_NAMES
        self.queue = queue or names.queue
        self.delivery_queue = producer_queue(self.queue, identity)
        self.requester = requester
        self.store = ResultsStore.from_url(store_url, store_prefix or names.store_prefix)
        self._ledger = EnvelopeLedger(self.store)
        if trust_anchor is not None and not isinstance(trust_anchor, TrustAnchor):
            trust_anchor = TrustAnchor.parse(trust_anchor)
        self._check = ResultCheck(trust_anchor, self.store.chain)
        # Named after the identity, so that its Redis user may pop this list and no other's.
        self.reply_to = reply_list_name(identity)
        # Every request whose answer this producer waits for (sent, or handed to `expect`):
        # an answer is taken only with its request's fingerprint, and checked against it.
        self._requests: dict[str, SignRequest] = {}
        self._unanswered: dict[str, SignRequest] = {}  # of those, the ones sent from here
        # When this producer last heard an answer, or began waiting for one; kept across
        # `results` calls, so a caller that polls in short rounds still gets lost jobs resent.
        self._last_reply = time.monotonic()
        self._resend_wait = resend_after
        self._sent = SentMessages()
        self.messages_sent = 0  # queue messages this producer published, resends included
        self._celery = Celery("casign-producer", set_as_current=False)
        self._celery.conf.update(celery_settings(broker_url, self.delivery_queue))

    def __enter__(self) -> Producer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._celery.close()
        self.store.close()

    def request(
        self,
        csr_pem: str,
        *,
        profile: str = "server_cert",
        san: Sequence[str] = (),
        days: int | None = None,
        job_id: str | None = None,
    ) -> SignRequest:
        """A validated job; a new random job id unless the caller gives its idempotency key."""
        return SignRequest(
            job_id=job_id or uuid.uuid4().hex,
            csr_pem=csr_pem,
            profile=profile,
            san=list(san),
            days=days,
            requester=self.requester,
        )

    def submit(
        self,
        csr_pem: str,
        *,
        profile: str = "server_cert",
        san: Sequence[str] = (),
        days: int | None = None,
        job_id: str | None = None,
    ) -> str:
        """Enqueue one CSR; returns its job id. The same job id twice yields one certificate."""
        request = self.request(csr_pem, profile=profile, san=san, days=days, job_id=job_id)
        self._send([request])
        return request.job_id

    def submit_many(
        self, requests: Iterable[SignRequest], batch_size: int | None = None
    ) -> list[str]:
        """Enqueue many jobs, `batch_size` to a queue message; returns their job ids in order.

        A message is cut sooner when it would pass the signer's ceilings (core.queue
        MAX_BATCH_JOBS and MAX_BATCH_BYTES), so a large `batch_size` is never refused.
        """
        size = min(batch_size or self.batch_size, MAX_BATCH_JOBS)
        job_ids: list[str] = []
        batch: list[SignRequest] = []
        for request in requests:
            batch.append(request)
            job_ids.append(request.job_id)
            if len(batch) >= size:
                self._send(batch)
                batch = []
        if batch:
            self._send(batch)
        return job_ids

    def _remember(self, requests: Iterable[SignRequest], sent: bool = True) -> None:
        """Hold `requests` until answered (sent: and resend them if lost), within max_waiting."""
        if sent and not self._unanswered:
            self._last_reply = time.monotonic()  # the silence starts with the first job out
        for request in requests:
            self._requests[request.job_id] = request
            if sent:
                self._unanswered[request.job_id] = request
        over = len(self._requests) - self.max_waiting
        if over > 0:
            # Dicts keep insertion order: the oldest requests go first.
            for job_id in list(itertools.islice(self._requests, over)):
                del self._requests[job_id]
                self._unanswered.pop(job_id, None)
            log.warning(
                "forgot the %d oldest unanswered request(s): over max_waiting (%d); "
                "`status(job_id)` still reads their answers",
                over,
                self.max_waiting,
            )

    def waiting_count(self) -> int:
        """How many requests this producer holds to check their answers against."""
        return len(self._requests)

    def _send(self, requests: list[SignRequest]) -> None:
        """Send `requests` in as many messages as the signer's ceilings need (usually one)."""
        self._remember(requests)
        jobs = [request.model_dump(exclude_none=True) for request in requests]
        for first, last in cut_batches(jobs, MAX_BATCH_JOBS, MAX_BATCH_BYTES):
            self._send_message(jobs[first:last])

    def _send_message(self, jobs: list[dict[str, object]]) -> None:
        envelope = None
        if self.identity is not None and self._secret is not None:
            envelope = seal(
                self._secret,
                MessageKind.SIGN,
                producer=self.identity,
                ca=self.ca_identity(),
                queue=self.queue,
                reply_to=self.reply_to,
                payload=jobs,
                lifetime_seconds=self.envelope_seconds,
            )
        batch = SignBatch(reply_to=self.reply_to, envelope=envelope, jobs=jobs)
        self._sent.note(str(job["job_id"]) for job in jobs)
        # declare=[]: publish only. The signer declares its queue; a broker user allowed to
        # declare it could read it too (store.acl). A batch sent before any signer ever started
        # waits in its list on Redis; RabbitMQ drops it unrouted, and then, its queue being
        # absent (no message in it), `results` sends it again once nothing has answered.
        self._celery.send_task(
            SIGN_BATCH_TASK,
            args=[batch.model_dump()],
            queue=self.delivery_queue,
            ignore_result=True,
            declare=[],
        )
        self.messages_sent += 1

    def queued_messages(self) -> int | None:
        """How many messages wait in this producer's queue (`delivery_queue`); None when the
        broker cannot be asked."""
        return queue_depth(self._celery, self.delivery_queue)

    def ca_identity(self) -> str:
        """The identity of the CA this producer's sealed messages are for."""
        if self._ca_identity is None:
            self._ca_identity = CAIdentityRecord(self.store).recorded()
        if self._ca_identity is None:
            raise ConfigurationError(
                "no signer has recorded its CA in this store yet, so a sealed message cannot "
                "name it: start `casign worker` once, or give the producer ca_identity "
                "(`casign ca-id --ca DIR` prints it)"
            )
        return self._ca_identity

    def expect(self, requests: Iterable[SignRequest]) -> None:
        """Wait for these requests too (sent before, by this or another producer): `results`
        then takes their answers, checked against them, without sending them again."""
        self._remember(requests, sent=False)

    def answers_in_store(self, requests: Iterable[SignRequest]) -> dict[str, JobResult]:
        """The finished answers the store holds for `requests`, each checked (by job id)."""
        requests = list(requests)
        self.expect(requests)
        waiting = {request.job_id for request in requests}
        return {result.job_id: result for result in self._collect_finished(waiting, waiting)}

    def results(self, job_ids: Iterable[str], timeout: float) -> Iterator[JobResult]:
        """Yield each job's result as it arrives; TimeoutError names how many are still out.

        Only jobs this producer sent, or was given with `expect`, can be waited for: an answer
        counts only with its request's fingerprint, and an issued one only once its certificate
        is checked (else it is reported failed, `result.untrusted`). Jobs sent from here are
        answered on this producer's reply list; the store is asked directly for the others, and
        for everyone after a quiet spell (answers pushed elsewhere, say after this producer
        restarted), less often the longer it stays quiet.
        """
        waiting = set(job_ids)
        unknown = waiting - self._requests.keys()
        if unknown:
            raise ValueError(
                f"{len(unknown)} job(s) were neither sent by this producer nor given to "
                f"expect() (first: {sorted(unknown)[0]}); an answer cannot be checked without "
                "its request"
            )
        deadline = time.monotonic() + timeout
        yield from self._collect_finished(waiting - self._unanswered.keys(), waiting)
        quiet, recheck_after = 0.0, _RECHECK_SECONDS
        checked_at = time.monotonic()
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{len(waiting)} job(s) have no result after {timeout:g} s "
                    f"(first: {sorted(waiting)[0]}); `casign status JOB_ID` tells where they are"
                )
            wait = min(remaining, _REPLY_WAIT_SECONDS)
            replies = self.store.wait_replies(self.reply_to, wait)
            if not replies:
                quiet += wait
                if quiet >= recheck_after:
                    yield from self._collect_finished(set(waiting), waiting)
                    yield from self._collect_refused_unheard(waiting)
                    # Only what is provably nowhere (looked at twice): safe this soon.
                    self._resend_lost(waiting, _LOST_GRACE_SECONDS)
                    quiet, recheck_after = 0.0, min(recheck_after * 2, _MAX_RECHECK_SECONDS)
                    checked_at = time.monotonic()
                if waiting and time.monotonic() - self._last_reply >= self._resend_wait:
                    self._resend_lost(waiting)
                    self._last_reply = time.monotonic()
                    self._resend_wait = min(self._resend_wait * 2, MAX_RESEND_SECONDS)
                continue
            quiet, self._last_reply = 0.0, time.monotonic()
            self._resend_wait = self.resend_after
            for reply in replies:
                if reply.job_id in waiting and self._answers_request(reply):
                    waiting.discard(reply.job_id)
                    yield self._checked(reply)
            if waiting and time.monotonic() - checked_at >= _MAX_RECHECK_SECONDS:
                # A full reply list drops its oldest answers (store.replies): while answers
                # keep coming, the store is still asked now and then for the rest.
                yield from self._collect_finished(set(waiting), waiting)
                checked_at = time.monotonic()

    def _answers_request(self, result: JobResult) -> bool:
        """True when `result` carries the fingerprint of the request this producer waits on."""
        request = self._requests.get(result.job_id)
        return request is not None and result.fingerprint == request.fingerprint()

    def _checked(self, result: JobResult) -> JobResult:
        """`result` checked against its request (which is then forgotten)."""
        request = self._requests.pop(result.job_id)
        self._unanswered.pop(result.job_id, None)
        self._sent.forget(result.job_id)
        return self._check.check(result, request)

    def _collect_refused_unheard(self, waiting: set[str]) -> Iterator[JobResult]:
        """Refuse our waiting jobs when the signer left a note that it could not authenticate us.

        A message the signer cannot authenticate gets no reply (a forger could otherwise write
        to any reply list); it leaves one short note under this producer's reply list instead.
        """
        note = self._ledger.refusal_note(self.reply_to)
        if note is None:
            return
        code, message = note
        for job_id in sorted(job_id for job_id in waiting if job_id in self._unanswered):
            waiting.discard(job_id)
            self._requests.pop(job_id, None)
            self._unanswered.pop(job_id, None)
            self._sent.forget(job_id)
            yield JobResult(job_id=job_id, status="refused", code=code, message=message)

    def _resend_lost(self, waiting: set[str], grace: float = 0.0) -> None:
        """Send again the jobs of ours that no worker has recorded, no worker holds and no
        queue holds: provably nowhere.

        A Redis broker can lose a message its consumer was killed holding, or failed to mark in
        flight (Redis out of memory): taken from the queue, never marked; the job id makes
        sending it again safe. A job whose message may still wait in our queue
        (`producers.delivery`), or that a signing process has in hand, is never sent again.
        Called at each quiet spell (2 s, doubling to 30 s; an answer starts it over), looking
        twice `grace` seconds apart, so a lost message is sent again within seconds; and after
        `resend_after` seconds of silence, doubling.
        """
        depth = self.queued_messages()
        if depth is None:
            return
        ours = [job_id for job_id in waiting if job_id in self._unanswered]
        gone = [job_id for job_id in ours if self._sent.left_the_queue(job_id, depth)]
        # Not in a record, not in a worker's hands (P:inhand) and not carried to an air-gapped
        # signer; looked at twice, so that a message a worker has just taken (popped, about to
        # be marked) is not taken for lost.
        airgap = AirgapRecords(self.store)
        unaccounted = (
            set(gone) - self.store.accounted_jobs(gone) - airgap.exported_jobs(gone).keys()
        )
        if unaccounted and grace:
            time.sleep(grace)
            unaccounted -= self.store.accounted_jobs(unaccounted)
        lost = [self._unanswered[job_id] for job_id in gone if job_id in unaccounted]
        if lost:
            log.warning(
                "sending %d job(s) again: no worker recorded them and queue %s (%d message(s)) "
                "can no longer hold them",
                len(lost),
                self.delivery_queue,
                depth,
            )
            for start in range(0, len(lost), self.batch_size):
                self._send(lost[start : start + self.batch_size])

    def _collect_finished(self, asked: set[str], waiting: set[str]) -> Iterator[JobResult]:
        """Yield the results the store already has for `asked`, striking them from `waiting`."""
        if not asked:
            return
        fingerprints = {job_id: self._requests[job_id].fingerprint() for job_id in asked}
        for job_id, result in self.store.job_results(sorted(asked), fingerprints).items():
            if job_id in waiting and self._answers_request(result):
                waiting.discard(job_id)
                yield self._checked(result)

    def revoke(
        self, serial: str, reason: str = "unspecified", timeout: float = DEFAULT_TIMEOUT
    ) -> RevocationResult:
        """Have the signer revoke `serial` (an RFC 5280 reason name) and wait for its answer."""
        request = send_revocation(
            self._celery,
            self.queue,
            self.reply_to,
            serial,
            reason,
            requester=self.requester,
            identity=self.identity,
            secret=self._secret,
            ca=self.ca_identity() if self._secret is not None else "",
            envelope_seconds=self.envelope_seconds,
        )
        revocations = RevocationStore(self.store)
        deadline = time.monotonic() + timeout
        while True:
            spell = max(0.01, min(deadline - time.monotonic(), _REPLY_WAIT_SECONDS * 2))
            try:
                return revocations.wait_result(self.reply_to, request.request_id, spell)
            except TimeoutError as silence:
                note = self._ledger.refusal_note(self.reply_to)
                if note is not None:
                    code, message = note
                    return RevocationResult(
                        request_id=request.request_id,
                        status="refused",
                        serial=request.serial,
                        code=code,
                        message=message,
                    )
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        str(silence).replace(f"after {spell:g} s", f"after {timeout:g} s")
                    ) from None

    def status(self, request: SignRequest | str) -> JobResult | None:
        """The request's checked result if the store has one, else None (queued, signing, or
        exported to an air-gapped signer: `waiting_offline` tells).

        A request answered here is forgotten (`results` no longer waits for it).

        Given a job id whose request this producer still holds, the answer is checked against
        that request; for any other job id, its certificate is checked against the trust anchor
        only (pass the SignRequest to have its key checked too).
        """
        if isinstance(request, str):
            known = self._requests.get(request)
            if known is None:
                found = self.store.job_results([request]).get(request)
                return None if found is None else self._check.check_unrequested(found)
            request = known
        fingerprint = request.fingerprint()
        result = self.store.job_results([request.job_id], {request.job_id: fingerprint})
        found = result.get(request.job_id)
        if found is None or found.fingerprint != fingerprint:
            return None
        checked = self._check.check(found, request)
        # Answered: no longer held, so a producer that polls `status` stays small too.
        if self._requests.get(request.job_id) == request:
            del self._requests[request.job_id]
            self._unanswered.pop(request.job_id, None)
        return checked

    def waiting_offline(self, job_id: str) -> bool:
        """True when the job was exported to an air-gapped signer and is not answered yet
        ("exported, waiting for the signer"; `casign airgap`)."""
        return bool(AirgapRecords(self.store).exported_jobs([job_id]))

    def chain_pem(self) -> str | None:
        """The CA chain (`ca-chain.cert.pem`) that goes with every certificate: with a trust
        anchor, the chain that last took a certificate to it (None before one did)."""
        return self._check.chain_pem()


def cut_batches(jobs: Sequence[object], max_jobs: int, max_bytes: int) -> Iterator[tuple[int, int]]:
    """(first, last) slices of `jobs`, each at most `max_jobs` long and `max_bytes` as
    core.queue.batch_bytes counts them (a single job over `max_bytes` goes alone)."""
    first, size = 0, 2  # the brackets of the JSON list
    for n, job in enumerate(jobs):
        grown = job_bytes(job)
        if n > first and (n - first >= max_jobs or size + grown > max_bytes):
            yield first, n
            first, size = n, 2
        size += grown
    if first < len(jobs):
        yield first, len(jobs)
