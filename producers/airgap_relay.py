"""The online relay of an air-gapped signer: the queue out to files, and the answers back in.

`export_bundles` takes every waiting message off the signing queue as a worker takes one
(kombu's `basic_get`, acknowledged only once recorded), records the batches in the store
(`store.airgap`) and only then writes the request bundles, each sealed with the relay's MAC.
`import_results` checks a results bundle against the CA certificate this side already holds
(never against anything in the bundle), then publishes what it carries exactly as the queue
worker publishes a batch, and answers the producers waiting. Neither needs the CA key: the
relay runs with the signer's Redis user (the queue's consumer side and the store), no key.

Each batch's answers are published and the batch taken out of the exported records in one
MULTI/EXEC, so an import stopped halfway, then made again, publishes each batch once. A
revocation is applied first (its script answers a request it did once with the same entry) and
then settled.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from pydantic import ValidationError

from core.audit import audit_line
from core.bundle import (
    CA_SIGNATURE,
    RELAY_MAC,
    REQUESTS_FORMAT,
    RESULTS_FORMAT,
    Bundle,
    BundleRefused,
    append_log,
    ca_signature_check,
    make_relay_key,
    manifest_bytes,
    open_bundle,
    relay_mac,
    with_digests,
    write_bundle,
)
from core.errors import RefusalCode, Rejected
from core.messages import JobResult, RevocationResult, describe_validation_error
from core.queue import REVOKE_TASK, SIGN_BATCH_TASK, celery_settings, consumed_queues
from store.airgap import AirgapRecords, ExportedBatch, RequestBundle, Settle
from store.envelopes import EnvelopeLedger
from store.identity import CAIdentityRecord
from store.results import Issued, Refusal, ResultsStore
from store.revocations import RevocationStore

log = logging.getLogger("casign.airgap")

DEFAULT_MAX_BUNDLE_BYTES = 64 * 2**20
_PART_OVERHEAD_BYTES = 1536  # a tar header and padding per part, and the manifest's line
# Refusals the queue worker answers without keeping them under the job id (a later delivery may
# succeed): the import does the same.
_UNRECORDED_CODES = frozenset({RefusalCode.AUTH_RATE_LIMITED, RefusalCode.JOB_ID_REUSED})
_CONNECT_SECONDS = 5.0


@dataclass(frozen=True)
class Relay:
    """What the online relay works with: the broker and queue, the store, the CA's identity,
    the relay key and the bundle log (both in the CA folder's `airgap/`)."""

    broker_url: str
    queue: str
    store: ResultsStore
    ca_identity: str
    airgap_dir: Path
    max_bundle_bytes: int = DEFAULT_MAX_BUNDLE_BYTES
    chain_pem: str | None = None  # the CA folder's chain, handed to producers with each answer
    ca_name: str = "the air-gapped CA"  # the intermediate's subject, recorded with its identity
    producers: tuple[str, ...] = ()  # those listed: each publishes to its own queue

    @property
    def queues(self) -> tuple[str, ...]:
        """The CA's queue and each listed producer's own, as a worker consumes them."""
        return consumed_queues(self.queue, self.producers)

    @property
    def records(self) -> AirgapRecords:
        return AirgapRecords(self.store)

    @property
    def relay_key_path(self) -> Path:
        return self.airgap_dir / "relay.key"

    @property
    def log_path(self) -> Path:
        return self.airgap_dir / "bundles.log"


@dataclass
class ImportReport:
    """What an import did: batches answered, skipped (answered before), and counts."""

    bundle_id: str
    already: bool = False
    batches: int = 0
    skipped: int = 0
    issued: int = 0
    refused: int = 0
    revoked: int = 0
    serials: list[str] = field(default_factory=list)


# -- export ------------------------------------------------------------------------------------


def export_bundles(relay: Relay, out: Path) -> list[Path]:
    """Take every waiting message off the queue, record it, write the request bundle(s).

    One bundle per `max_bundle_bytes` of batches: `out`, then `out` named `-2`, `-3`...
    Returns the files written (none when the queue was empty).
    """
    key = make_relay_key(relay.relay_key_path)
    # Producers read the identity they seal for from the store, as a worker records it there.
    CAIdentityRecord(relay.store).claim(relay.ca_identity, relay.ca_name)
    with _queue_channel(relay) as channel:
        taken: list[tuple[Any, ExportedBatch]] = []
        for queue in relay.queues:
            while True:
                message = channel.basic_get(queue, no_ack=False)
                if message is None:
                    break
                batch = _exported_batch(message)
                if batch is None:
                    message.ack()  # not ours to carry (malformed, unknown task): as a worker
                    continue
                taken.append((message, batch))
        groups = _split([batch for _, batch in taken], relay.max_bundle_bytes)
        exported_at = int(time.time())
        bundles = relay.records.record_export(
            groups, [uuid.uuid4().hex for _ in groups], exported_at
        )
        for message, _ in taken:
            message.ack()  # recorded in the store: the file can now be written, and again
    written = []
    for number, bundle in enumerate(bundles, start=1):
        path = out if number == 1 else out.with_name(f"{out.stem}-{number}{out.suffix}")
        _write_request_bundle(relay, bundle, path, key)
        written.append(path)
    return written


def export_again(relay: Relay, sequence: int, out: Path) -> Path:
    """Make request bundle `sequence` again, for the batches of it still unanswered."""
    bundle = relay.records.request_bundle(sequence)
    if bundle is None:
        raise Rejected(
            RefusalCode.BUNDLE_CONFLICT, f"request bundle {sequence} was never made here"
        )
    key = make_relay_key(relay.relay_key_path)
    if _write_request_bundle(relay, bundle, out, key) == 0:
        raise Rejected(
            RefusalCode.BUNDLE_CONFLICT,
            f"every batch of request bundle {sequence} is answered; nothing to carry again",
        )
    return out


def unanswered_bundles(relay: Relay) -> list[int]:
    """The request bundles with a batch still unanswered, by number."""
    records = relay.records
    waiting = []
    for sequence in range(1, records.last_sequence() + 1):
        bundle = records.request_bundle(sequence)
        if bundle is not None and records.known_batches(bundle.batch_ids):
            waiting.append(sequence)
    return waiting


def _write_request_bundle(relay: Relay, bundle: RequestBundle, path: Path, key: bytes) -> int:
    """Write `bundle`'s still unanswered batches to `path`; how many batches it holds."""
    batches = relay.records.exported(bundle.batch_ids)
    if not batches:
        return 0
    parts = {
        f"batches/{number:06d}.json": (batch.to_json() + "\n").encode()
        for number, batch in enumerate(batches, start=1)
    }
    manifest = with_digests(
        {
            "format": REQUESTS_FORMAT,
            "bundle_id": bundle.bundle_id,
            "sequence": bundle.sequence,
            "ca": relay.ca_identity,
            "queue": relay.queue,
            "exported_at": bundle.exported_at,
            "counts": {
                "batches": len(batches),
                "sign_jobs": sum(len(batch.job_ids) for batch in batches),
                "revocations": sum(batch.task == "revoke" for batch in batches),
            },
        },
        parts,
    )
    write_bundle(path, manifest, parts, RELAY_MAC, relay_mac(key, manifest_bytes(manifest)))
    append_log(
        relay.log_path,
        f"made request bundle {bundle.sequence} ({bundle.bundle_id}): {len(batches)} batch(es), "
        f"{manifest['counts']['sign_jobs']} job(s), {path.stat().st_size} bytes -> {path}",
    )
    log.info("request bundle %d written to %s", bundle.sequence, path)
    return len(batches)


def _exported_batch(message: Any) -> ExportedBatch | None:
    """The batch a Celery message carries (protocol 2: headers name the task), or None."""
    headers = message.headers or {}
    task = headers.get("task")
    try:
        body = message.decode()
        payload = body[0][0]
    except (ValueError, TypeError, IndexError, KeyError):
        log.error("dropped a queue message that is not a Celery task")
        return None
    if not isinstance(payload, dict):
        return None
    envelope = payload.get("envelope")
    sealed = isinstance(envelope, dict) and isinstance(envelope.get("nonce"), str)
    if task == SIGN_BATCH_TASK:
        jobs = payload.get("jobs")
        job_ids = tuple(
            job["job_id"]
            for job in (jobs if isinstance(jobs, list) else [])
            if isinstance(job, dict) and isinstance(job.get("job_id"), str)
        )
        kind = "sign"
    elif task == REVOKE_TASK:
        job_ids, kind = (), "revoke"
    else:
        log.error("dropped a queue message for task %r, which no signer runs", task)
        return None
    # A sealed message is named by its producer and nonce: the same message exported twice
    # (a broker delivering it again) is one batch, and an offline signer answers it once.
    if sealed:
        assert isinstance(envelope, dict)
        batch_id = f"{kind}:{envelope.get('producer')}:{envelope['nonce']}"
    else:
        batch_id = f"{kind}:{headers.get('id') or uuid.uuid4().hex}"
    return ExportedBatch(batch_id, kind, payload, job_ids)


def _split(batches: Sequence[ExportedBatch], max_bytes: int) -> list[list[ExportedBatch]]:
    """Batches in groups of at most `max_bytes` each (a batch larger than that goes alone)."""
    groups: list[list[ExportedBatch]] = []
    size = 0
    for batch in batches:
        cost = len(batch.to_json()) + _PART_OVERHEAD_BYTES
        if not groups or size + cost > max_bytes:
            groups.append([])
            size = _PART_OVERHEAD_BYTES * 2
        groups[-1].append(batch)
        size += cost
    return groups


class _queue_channel:
    """A kombu channel on the broker, as a worker opens one."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self._connection: Any = None

    def __enter__(self) -> Any:
        from kombu import Connection

        settings = celery_settings(self._relay.broker_url, self._relay.queue)
        self._connection = Connection(
            self._relay.broker_url,
            transport_options=settings.get("broker_transport_options", {}),
            ssl=settings.get("broker_use_ssl", False),
            connect_timeout=_CONNECT_SECONDS,
        )
        self._connection.ensure_connection(max_retries=1)
        return self._connection.default_channel

    def __exit__(self, *_: object) -> None:
        self._connection.release()


# -- import ------------------------------------------------------------------------------------


def import_results(relay: Relay, path: Path, intermediate: x509.Certificate) -> ImportReport:
    """Check a results bundle against `intermediate` (this side's own copy), then publish it.

    A bundle imported before changes nothing; a tampered one is refused whole (BundleRefused
    naming the part), before anything is written.
    """
    bundle = open_bundle(path, RESULTS_FORMAT, CA_SIGNATURE, ca_signature_check(intermediate))
    if bundle.manifest.get("ca") != relay.ca_identity:
        raise BundleRefused(
            RefusalCode.BUNDLE_WRONG_CA, "manifest.json", "the bundle is another CA's answers"
        )
    answers, certificates, index_lines = _read_results(bundle)
    CAIdentityRecord(relay.store).claim(relay.ca_identity, relay.ca_name)
    if relay.chain_pem is not None:
        relay.store.set_chain(relay.chain_pem)  # as a worker does before it signs
    records = relay.records
    report = ImportReport(bundle.bundle_id)
    if records.imported(bundle.bundle_id):
        report.already = True
        append_log(relay.log_path, f"took results bundle {bundle.bundle_id} again: no change")
        return report
    for answer in answers:
        found = records.exported([answer["batch_id"]])
        if not found:
            report.skipped += 1  # answered by an earlier bundle (a bundle made again)
            continue
        settle = records.settling(found[0])
        if answer["task"] == "revoke":
            _import_revocation(relay.store, answer, report)
            relay.store.publish([], [], [], None, (), then=settle)
        else:
            _import_sign_answers(relay.store, answer, certificates, index_lines, report, settle)
        report.batches += 1
    crl_pem = bundle.parts.get("crl.pem")
    if crl_pem is not None:
        _import_crl(relay.store, crl_pem)
    records.mark_imported(bundle.bundle_id)
    append_log(
        relay.log_path,
        f"took results bundle {bundle.bundle_id} (answers {bundle.manifest.get('answers')}, "
        f"part {bundle.manifest.get('part')}): {report.batches} batch(es) answered, "
        f"{report.skipped} answered before, {report.issued} issued, {report.refused} refused, "
        f"{report.revoked} revoked",
    )
    return report


def _read_results(
    bundle: Bundle,
) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, str]]:
    """The answers (in order), certificate PEM by serial and index line by serial; every part
    is read before anything is written, so a malformed one refuses the bundle whole."""
    answers: list[dict[str, Any]] = []
    certificates: dict[str, str] = {}
    for name, data in sorted(bundle.parts.items()):
        try:
            if name.startswith("answers/"):
                answer = json.loads(data)
                if answer.get("task") not in ("sign", "revoke") or not isinstance(
                    answer.get("batch_id"), str
                ):
                    raise ValueError("not a batch's answers")
                answers.append(answer)
            elif name.startswith("certs/"):
                certificate = x509.load_pem_x509_certificate(data)
                serial = name.removeprefix("certs/").removesuffix(".pem")
                if format(certificate.serial_number, "X") != serial.lstrip("0") or not serial:
                    raise ValueError("its serial is not the one its name says")
                certificates[serial] = data.decode("ascii")
        except (ValueError, UnicodeDecodeError) as exc:
            raise BundleRefused(RefusalCode.BUNDLE_MALFORMED, name, str(exc)) from None
    index_lines: dict[str, str] = {}
    for line in bundle.parts.get("index.txt", b"").decode("utf-8").splitlines():
        fields = line.split("\t")
        if len(fields) != 6:
            raise BundleRefused(RefusalCode.BUNDLE_MALFORMED, "index.txt", "not an index line")
        index_lines[fields[3]] = line
    for position, answer in enumerate(answers, start=1):
        for raw in answer.get("results", []):
            try:
                result = JobResult.model_validate(raw)
            except ValidationError as exc:
                raise BundleRefused(
                    RefusalCode.BUNDLE_MALFORMED,
                    f"answers/{position:06d}.json",
                    describe_validation_error(exc),
                ) from None
            if result.status != "issued":
                continue
            if result.serial not in certificates:
                raise BundleRefused(
                    RefusalCode.BUNDLE_MALFORMED,
                    f"certs/{result.serial}.pem",
                    f"job {result.job_id} is issued but its certificate is missing",
                )
            if result.serial not in index_lines:
                raise BundleRefused(
                    RefusalCode.BUNDLE_MALFORMED,
                    "index.txt",
                    f"serial {result.serial} is issued but has no index line",
                )
    return answers, certificates, index_lines


def _import_sign_answers(
    store: ResultsStore,
    answer: dict[str, Any],
    certificates: dict[str, str],
    index_lines: dict[str, str],
    report: ImportReport,
    settle: Settle,
) -> None:
    """Publish one batch's answers as the queue worker would have, and settle the batch, in one
    atomic call."""
    reply_to = answer.get("reply_to")
    note = answer.get("note")
    audit = [line for line in answer.get("audit", []) if isinstance(line, str)]
    issued_lines: dict[str, tuple[str, str | None]] = {}
    other_lines = []
    for line in audit:
        entry = json.loads(line)
        if entry.get("event") == "issued" and entry.get("job_id"):
            issued_lines[entry["job_id"]] = (line, entry.get("requester"))
        else:
            other_lines.append(line)
    if note is not None:
        # An unauthenticated batch: one note for its reply list's owner, no reply (as online).
        if reply_to:
            EnvelopeLedger(store).note_refusal(reply_to, note["code"], note["message"])
        store.publish([], [], [], None, other_lines, then=settle)
        report.refused += len(answer.get("results", []))
        return
    issued: list[Issued] = []
    refusals: list[Refusal] = []
    replies: list[JobResult] = []
    for raw in answer.get("results", []):
        result = JobResult.model_validate(raw)
        if result.status == "issued" and result.serial is not None:
            pem, index_line = certificates[result.serial], index_lines[result.serial]
            event, owner = issued_lines.get(
                result.job_id,
                (audit_line("issued", job_id=result.job_id, serial=result.serial), None),
            )
            issued.append(
                Issued(
                    result.job_id,
                    result.fingerprint or "",
                    result.serial,
                    pem,
                    index_line,
                    event,
                    owner=owner,
                )
            )
            report.serials.append(result.serial)
            continue
        replies.append(result)
        report.refused += 1
        if (
            result.status == "refused"
            and result.fingerprint
            and result.code
            and result.code not in _UNRECORDED_CODES
        ):
            refusals.append(
                Refusal(result.job_id, result.fingerprint, result.code, result.message or "")
            )
    store.publish(issued, refusals, replies, reply_to, other_lines, then=settle)
    report.issued += len(issued)


def _import_revocation(store: ResultsStore, answer: dict[str, Any], report: ImportReport) -> None:
    """Revoke online what the signer revoked (at its time), and answer the requester."""
    revocations = RevocationStore(store)
    reply_to = answer.get("reply_to")
    note = answer.get("note")
    if note is not None:
        if reply_to:
            EnvelopeLedger(store).note_refusal(reply_to, note["code"], note["message"])
        return
    raw = answer.get("revocation")
    if raw is None:
        return
    result = RevocationResult.model_validate(raw)
    if result.ok and result.serial and result.revoked_at:
        when = datetime.strptime(result.revoked_at, "%y%m%d%H%M%SZ").replace(tzinfo=UTC)
        try:
            revocations.revoke(
                result.serial,
                result.reason or "unspecified",
                when,
                requester=answer.get("requester"),
                request_id=result.request_id,
            )
        except Rejected as refusal:  # revoked here before: the signer's answer stands
            log.warning("revocation of %s not applied online: %s", result.serial, refusal)
        report.revoked += 1
    if reply_to:
        revocations.push_result(reply_to, result)


def _import_crl(store: ResultsStore, pem: bytes) -> None:
    crl = x509.load_pem_x509_crl(pem)
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    RevocationStore(store).publish_crl(crl, number)


def exported_jobs(store: ResultsStore, job_ids: Sequence[str]) -> dict[str, str]:
    """job id -> batch id of those exported to the air-gapped signer and not yet answered."""
    return AirgapRecords(store).exported_jobs(job_ids)
