"""The Celery task of the certificate life cycle: `casign.revoke` a serial.

It runs in the signing worker, the only side holding the intermediate key: a revocation is
signed off there, and lands in the next CRL it signs. CRLs are not a task: a queue message is
something any producer can send, so a CRL is made only on the worker's own schedule
(`worker.crl_schedule`, `casign worker --beat`) or by the operator (`casign crl`). A
`casign.crl` message is no task of this worker's: Celery drops it as unregistered.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from core.audit import audit_line
from core.auth import MessageKind
from core.errors import RefusalCode, Rejected, Retryable
from core.messages import RevocationResult, RevokeRequest, describe_validation_error
from core.queue import REVOKE_TASK
from store.envelopes import EnvelopeLedger
from store.revocations import RevocationStore
from worker.access import AccessPolicy, AllowedProducer, notes_refusal
from worker.app import app, signer_process
from worker.revocation_rights import check_revocation_allowed

log = logging.getLogger("casign.lifecycle")


def _field(raw: object, name: str) -> str | None:
    value = raw.get(name) if isinstance(raw, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= 128 else None


def handle_revoke(
    raw: object,
    revocations: RevocationStore,
    access: AccessPolicy | None = None,
    judged_at: float | None = None,
) -> RevocationResult | None:
    """Record one revocation request and answer it on its reply list; Retryable propagates.

    With an access policy (producers.toml), only a listed producer's signed request is heard,
    and only for what its rights allow (`worker.revocation_rights`); its envelope is judged at
    `judged_at` when given (an air-gap bundle's export time), else now.
    """
    try:
        request = RevokeRequest.model_validate(raw)
    except ValidationError as exc:
        request_id, reply_to = _field(raw, "request_id"), _field(raw, "reply_to")
        log.error("refused a malformed revocation message: %s", describe_validation_error(exc))
        if request_id is None or reply_to is None:
            return None
        if access is not None:  # an unauthenticated message writes no reply (a forger's could)
            ledger = EnvelopeLedger(revocations.store)
            ledger.note_refusal(
                reply_to, RefusalCode.REVOKE_MALFORMED, describe_validation_error(exc)
            )
            return None
        result = RevocationResult(
            request_id=request_id,
            status="refused",
            code=RefusalCode.REVOKE_MALFORMED,
            message=describe_validation_error(exc),
        )
        revocations.push_result(reply_to, result)
        return result
    requester = request.requester
    producer: AllowedProducer | None = None
    ledger = EnvelopeLedger(revocations.store)
    if access is not None:
        try:
            producer = access.authenticate(
                request.envelope,
                MessageKind.REVOKE,
                request.reply_to,
                request.sealed_payload(),
                judged_at,
            )
            assert request.envelope is not None
            if ledger.seen(producer.name, request.envelope.nonce):
                raise Rejected(
                    RefusalCode.AUTH_REPLAYED,
                    f"producer {producer.name!r}'s revocation request was done before",
                )
        except Rejected as refusal:
            _refuse_unauthenticated(request, refusal, revocations, ledger)
            return None
        requester = producer.name
    try:
        _check_rights(request, producer, revocations, requester)
        entry = revocations.revoke(
            request.serial,
            request.reason,
            requester=requester,
            request_id=request.request_id,
        )
    except Rejected as refusal:
        result = RevocationResult(
            request_id=request.request_id,
            status="refused",
            serial=request.serial,
            code=refusal.code,
            message=refusal.message,
        )
    except Retryable:
        raise
    except Exception as exc:  # answer rather than leave the requester waiting
        log.exception("revocation request %s failed", request.request_id)
        result = RevocationResult(
            request_id=request.request_id,
            status="failed",
            serial=request.serial,
            code="internal.error",
            message=f"the signer failed: {type(exc).__name__}: {exc}",
        )
    else:
        fields = entry.to_openssl_line().split("\t")
        log.warning(
            "revoked serial %s (%s) for %s",
            fields[3],
            entry.revocation_reason or "unspecified",
            requester or "an unnamed requester",
        )
        result = RevocationResult(
            request_id=request.request_id,
            status="revoked",
            serial=fields[3],
            revoked_at=fields[2].partition(",")[0],
            reason=entry.revocation_reason or "unspecified",
        )
    if request.reply_to:
        revocations.push_result(request.reply_to, result)
    if access is not None and request.envelope is not None:
        ledger.remember(
            request.envelope.producer, request.envelope.nonce, request.envelope.expires_at
        )
    return result


def _check_rights(
    request: RevokeRequest,
    producer: AllowedProducer | None,
    revocations: RevocationStore,
    requester: str | None,
) -> None:
    """Refuse what the sender may not revoke, with one audit line (an attempt worth seeing)."""
    try:
        check_revocation_allowed(request, producer, revocations.store)
    except Rejected as refusal:
        log.warning("refused revocation request %s: %s", request.request_id, refusal)
        line = audit_line(
            "refused",
            job_id=request.request_id,
            requester=requester,
            serial=request.serial,
            reason=refusal.code,
        )
        revocations.store.publish([], [], [], None, [line])
        raise


def _refuse_unauthenticated(
    request: RevokeRequest, refusal: Rejected, revocations: RevocationStore, ledger: EnvelopeLedger
) -> None:
    """One audit line and a short note for the reply list's owner; no reply, no revocation."""
    claimed = request.envelope.producer if request.envelope is not None else None
    log.warning("refused a revocation request from %s: %s", claimed, refusal)
    line = audit_line("refused", reason=refusal.code, serial=request.serial, claimed_by=claimed)
    revocations.store.publish([], [], [], None, [line])
    if request.reply_to and notes_refusal(refusal.code):
        ledger.note_refusal(request.reply_to, refusal.code, refusal.message)


@app.task(name=REVOKE_TASK, acks_late=True)
def revoke(message: object) -> str:
    """Revoke one serial; the answer goes to the request's reply list.

    A store outage is waited out with the message unacknowledged, as a signing batch's is:
    a revocation is never dropped because a retry message could not be published.
    """
    process = signer_process()

    def attempt() -> str:
        batch_signer = process.task_signer()
        result = handle_revoke(message, RevocationStore(batch_signer.store), batch_signer.access)
        return result.status if result else "dropped"

    return process.wait_out_outages(attempt, "revocation request")
