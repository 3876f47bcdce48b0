"""The air-gapped signer: a request bundle in, signed through the queue worker's steps, results out.

`sign_bundle` checks the bundle (every part's digest, the relay's MAC, the CA it is for, its
number against the bundles answered before), recovers what a crash left reserved, then signs
each batch with the same `BatchSigner` as the queue worker, into the offline store: producer
authentication (each envelope judged at the time the relay exported it, with the producer's
`airgap_envelope_seconds`), policy, record before sign, sign, verify, publish. Each batch's
answers are kept under its id (`store.airgap`), so a bundle signed again is answered from them,
certificate for certificate, and never signed twice. The results bundle carries the answers,
certificates, index lines, audit lines and a fresh CRL, its manifest signed by the CA key (a
detached CMS signature, `core.cms`), split at `max_bundle_bytes`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core.auth import ca_identity
from core.bundle import (
    CA_SIGNATURE,
    RELAY_MAC,
    REQUESTS_FORMAT,
    RESULTS_FORMAT,
    BundleRefused,
    append_log,
    manifest_bytes,
    open_bundle,
    read_relay_key,
    relay_mac_check,
    with_digests,
    write_bundle,
)
from core.cms import sign_detached
from core.errors import RefusalCode, Retryable
from core.messages import JobResult, SignBatch, describe_validation_error
from store.airgap import AirgapRecords, ExportedBatch
from store.envelopes import EnvelopeLedger
from store.revocations import RevocationStore
from worker.crl import make_crls
from worker.issuance import BatchSigner

log = logging.getLogger("casign.airgap")

DEFAULT_MAX_BUNDLE_BYTES = 64 * 2**20
_PART_OVERHEAD_BYTES = 1536
# Step 1's refusals: a batch refused whole, for which the queue worker leaves a note, no reply.
_WHOLE_BATCH_CODES = frozenset(
    {
        RefusalCode.AUTH_UNSIGNED,
        RefusalCode.AUTH_UNKNOWN_PRODUCER,
        RefusalCode.AUTH_BAD_SIGNATURE,
        RefusalCode.AUTH_EXPIRED,
        RefusalCode.AUTH_REPLAYED,
        RefusalCode.AUTH_WRONG_AUDIENCE,
    }
)


@dataclass
class SignReport:
    """What one `airgap sign` did, for the operator and the log."""

    sequence: int
    bundle_id: str
    answered_before: bool = False
    gap: list[int] = field(default_factory=list)  # request bundles never seen here, before it
    recovered: int = 0
    batches: int = 0
    issued: int = 0
    refused: int = 0
    results: list[Path] = field(default_factory=list)


def sign_bundle(
    signer: BatchSigner,
    bundle_path: Path,
    out: Path,
    airgap_dir: Path,
    max_bundle_bytes: int = DEFAULT_MAX_BUNDLE_BYTES,
) -> SignReport:
    """Sign (or answer again) the request bundle at `bundle_path`; write the results at `out`
    (and `out` named `-2`, `-3`... when split). BundleRefused names a part that failed."""
    authority, store = signer.authority, signer.store
    records = AirgapRecords(store)
    log_path = airgap_dir / "bundles.log"
    relay_key = read_relay_key(airgap_dir / "relay.key")
    bundle = open_bundle(bundle_path, REQUESTS_FORMAT, RELAY_MAC, relay_mac_check(relay_key))
    manifest = bundle.manifest
    if manifest.get("ca") != ca_identity(authority.intermediate):
        raise BundleRefused(
            RefusalCode.BUNDLE_WRONG_CA, "manifest.json", "the bundle is meant for another CA"
        )
    sequence, exported_at = int(manifest["sequence"]), int(manifest["exported_at"])
    seen = records.seen_bundles()
    if sequence in seen and seen[sequence] != bundle.bundle_id:
        raise BundleRefused(
            RefusalCode.BUNDLE_CONFLICT,
            "manifest.json",
            f"request bundle {sequence} was answered here as {seen[sequence]}, "
            f"not {bundle.bundle_id}",
        )
    report = SignReport(sequence, bundle.bundle_id, answered_before=sequence in seen)
    report.gap = [number for number in range(1, sequence) if number not in seen]
    if report.gap:
        log.warning("request bundle(s) %s were never signed here", report.gap)
    batches = [_parsed_batch(name, data) for name, data in sorted(bundle.parts.items())]
    append_log(
        log_path,
        f"took request bundle {sequence} ({bundle.bundle_id}): {len(batches)} batch(es)"
        + (f"; never seen: {report.gap}" if report.gap else "")
        + ("; answered before" if report.answered_before else ""),
    )
    audit_start = records.audit_length()
    report.recovered = len(signer.recover_pending())
    recovered_audit = records.audit_lines_from(audit_start)
    judged_at = datetime.fromtimestamp(exported_at, UTC)
    kept = records.answers(batch.batch_id for batch in batches)
    answers: list[dict[str, Any]] = []
    for batch in batches:
        if batch.batch_id in kept:
            answers.append(json.loads(kept[batch.batch_id]))
            continue
        answer = _answer(signer, batch, judged_at, recovered_audit)
        envelope = batch.message.get("envelope")
        done = None
        if isinstance(envelope, dict) and answer.get("note") is None:
            done = (str(envelope.get("producer")), str(envelope.get("nonce")))
        records.keep_answers(batch.batch_id, json.dumps(answer, separators=(",", ":")), done)
        answers.append(answer)
    records.mark_seen(sequence, bundle.bundle_id)
    report.batches = len(answers)
    for answer in answers:
        for result in answer.get("results", []):
            if result["status"] == "issued":
                report.issued += 1
            else:
                report.refused += 1
    report.results = _write_results(
        signer, bundle.bundle_id, sequence, answers, out, max_bundle_bytes
    )
    append_log(
        log_path,
        f"made results for request bundle {sequence}: {report.issued} issued, "
        f"{report.refused} refused, {report.recovered} recovered -> "
        + ", ".join(str(path) for path in report.results),
    )
    return report


def _parsed_batch(name: str, data: bytes) -> ExportedBatch:
    try:
        batch = ExportedBatch.from_json(data.decode("utf-8"))
        if batch.task not in ("sign", "revoke") or not isinstance(batch.message, dict):
            raise ValueError("not a sign or revoke batch")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise BundleRefused(RefusalCode.BUNDLE_MALFORMED, name, str(exc)) from None
    return batch


def _answer(
    signer: BatchSigner,
    batch: ExportedBatch,
    judged_at: datetime,
    recovered_audit: Sequence[str],
) -> dict[str, Any]:
    """Run one batch through the queue worker's steps; its answers, as kept and carried back."""
    records = AirgapRecords(signer.store)
    start = records.audit_length()
    if batch.task == "revoke":
        answer = _revoke(signer, batch, judged_at)
    else:
        answer = _sign(signer, batch, judged_at)
    ours = set(batch.job_ids)
    answer["audit"] = [
        line for line in recovered_audit if json.loads(line).get("job_id") in ours
    ] + records.audit_lines_from(start)
    return answer


def _sign(signer: BatchSigner, batch: ExportedBatch, judged_at: datetime) -> dict[str, Any]:
    answer: dict[str, Any] = {"batch_id": batch.batch_id, "task": "sign", "note": None}
    try:
        parsed = SignBatch.model_validate(batch.message)
    except ValidationError as exc:
        log.error("refused a malformed batch message: %s", describe_validation_error(exc))
        return answer | {"reply_to": None, "results": []}
    answer["reply_to"] = parsed.reply_to
    try:
        results = signer.sign_batch(
            parsed.jobs,
            parsed.reply_to,
            parsed.envelope,
            judged_at=judged_at,
            remember_envelope=False,
        )
    except Retryable:
        raise
    except Exception as exc:
        log.exception("batch %s failed", batch.batch_id)
        signer.report_failure(parsed.jobs, parsed.reply_to, exc)
        results = [
            JobResult(job_id=job_id, status="failed", code="internal.error", message=str(exc))
            for job_id in batch.job_ids
        ]
    if results and all(
        result.status == "refused" and result.code in _WHOLE_BATCH_CODES for result in results
    ):
        first = results[0]
        answer["note"] = {"code": first.code, "message": first.message}
    answer["results"] = [
        result.model_dump(exclude_none=True, exclude={"certificate_pem"}) for result in results
    ]
    return answer


def _revoke(signer: BatchSigner, batch: ExportedBatch, judged_at: datetime) -> dict[str, Any]:
    from worker.lifecycle_tasks import handle_revoke

    store = signer.store
    message = batch.message
    raw_reply_to = message.get("reply_to")
    reply_to = raw_reply_to if isinstance(raw_reply_to, str) else None
    answer: dict[str, Any] = {
        "batch_id": batch.batch_id,
        "task": "revoke",
        "reply_to": reply_to,
        "note": None,
        "revocation": None,
    }
    envelope = message.get("envelope")
    if isinstance(envelope, dict):
        answer["requester"] = envelope.get("producer")
    elif isinstance(message.get("requester"), str):
        answer["requester"] = message["requester"]
    result = handle_revoke(message, RevocationStore(store), signer.access, judged_at.timestamp())
    if result is not None:
        answer["revocation"] = result.model_dump(exclude_none=True)
    elif reply_to:
        note = EnvelopeLedger(store).refusal_note(reply_to)
        if note is not None:
            answer["note"] = {"code": note[0], "message": note[1]}
    return answer


def _write_results(
    signer: BatchSigner,
    request_bundle_id: str,
    sequence: int,
    answers: Sequence[dict[str, Any]],
    out: Path,
    max_bundle_bytes: int,
) -> list[Path]:
    """The results bundle(s): answers, certificates, index lines and the CRL, CA-signed."""
    authority, store = signer.authority, signer.store
    records = AirgapRecords(store)
    crl_part = _current_crl(signer)
    groups: list[list[tuple[dict[str, Any], dict[str, bytes]]]] = [[]]
    size = len(crl_part) + 4 * _PART_OVERHEAD_BYTES
    for answer in answers:
        serials = [
            result["serial"] for result in answer.get("results", []) if result["status"] == "issued"
        ]
        answer_parts = {
            f"certs/{serial}.pem": (pem or "").encode("ascii")
            for serial, pem in zip(serials, records.certificates(serials), strict=True)
        }
        lines = [line or "" for line in records.index_lines(serials)]
        answer_parts["index"] = "".join(line + "\n" for line in lines).encode()
        cost = sum(len(data) + _PART_OVERHEAD_BYTES for data in answer_parts.values())
        cost += len(json.dumps(answer)) + _PART_OVERHEAD_BYTES
        if groups[-1] and size + cost > max_bundle_bytes:
            groups.append([])
            size = len(crl_part) + 4 * _PART_OVERHEAD_BYTES
        groups[-1].append((answer, answer_parts))
        size += cost
    written: list[Path] = []
    for number, group in enumerate(groups, start=1):
        parts: dict[str, bytes] = {"crl.pem": crl_part} if crl_part else {}
        index = b""
        for position, (answer, its_parts) in enumerate(group, start=1):
            parts[f"answers/{position:06d}.json"] = (
                json.dumps(answer, sort_keys=True, indent=1) + "\n"
            ).encode()
            index += its_parts["index"]
            parts.update((name, data) for name, data in its_parts.items() if name != "index")
        parts["index.txt"] = index
        results = [r for answer, _ in group for r in answer.get("results", [])]
        manifest = with_digests(
            {
                "format": RESULTS_FORMAT,
                "bundle_id": str(
                    uuid.uuid5(uuid.NAMESPACE_URL, f"casign-airgap:{request_bundle_id}:{number}")
                ),
                "answers": request_bundle_id,
                "sequence": sequence,
                "part": number,
                "parts_total": len(groups),
                "ca": ca_identity(authority.intermediate),
                "signed_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "counts": {
                    "batches": len(group),
                    "issued": sum(r["status"] == "issued" for r in results),
                    "refused": sum(r["status"] == "refused" for r in results),
                    "failed": sum(r["status"] == "failed" for r in results),
                    "revocations": sum(answer["task"] == "revoke" for answer, _ in group),
                },
            },
            parts,
        )
        signature = sign_detached(manifest_bytes(manifest), authority.intermediate, authority.key)
        path = out if number == 1 else out.with_name(f"{out.stem}-{number}{out.suffix}")
        write_bundle(path, manifest, parts, CA_SIGNATURE, signature)
        written.append(path)
    return written


def _current_crl(signer: BatchSigner) -> bytes:
    """A CRL made now, with every revocation so far (the online side cannot make one)."""
    authority = signer.authority
    if authority.crl_shards is not None:
        log.warning("this CA shards its CRL: the results carry no CRL; make them with casign crl")
        return b""
    [published] = make_crls(authority, RevocationStore(signer.store))
    return published.pem
