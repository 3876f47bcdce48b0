"""Celery tasks of the certificate life cycle: revoke a serial, make and publish the CRL.

Both run in the signing worker, the only side holding the intermediate key: a revocation is
signed off there (and lands in the next CRL it signs), the CRL is signed there.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from celery import Celery
from pydantic import ValidationError

from core.errors import RefusalCode, Rejected, Retryable, SigningError
from core.layout import ocsp_key_path
from core.messages import RevocationResult, RevokeRequest, describe_validation_error
from core.queue import CRL_TASK, REVOKE_TASK
from store.revocations import RevocationStore
from worker.access import AccessPolicy
from worker.authority import SigningAuthority
from worker.cafolder import CAFolder
from worker.crl import (
    PublishedCRL,
    RevokedEntryCache,
    crl_days,
    make_crl,
    seed_crl_number,
    write_crl_files,
)
from worker.ocsp_delegate import ensure_ocsp_certificate

log = logging.getLogger("casign.lifecycle")

CRL_INTERVAL_SECONDS = 3600.0
# Merge into `app.conf.beat_schedule` where a beat runs (`celery beat` or `worker --beat`):
# a fresh CRL every hour, long before the 30-day nextUpdate of the last one.
CRL_SCHEDULE: dict[str, dict[str, Any]] = {
    "casign-crl-hourly": {"task": CRL_TASK, "schedule": CRL_INTERVAL_SECONDS},
}

# RevokedCertificate objects built by this process, reused by its next CRL.
_entry_cache = RevokedEntryCache()


def _field(raw: object, name: str) -> str | None:
    value = raw.get(name) if isinstance(raw, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= 128 else None


def handle_revoke(
    raw: object, revocations: RevocationStore, access: AccessPolicy | None = None
) -> RevocationResult | None:
    """Record one revocation request and answer it on its reply list; Retryable propagates.

    With an access policy (producers.toml), only a listed producer's signed request is heard.
    """
    try:
        request = RevokeRequest.model_validate(raw)
    except ValidationError as exc:
        request_id, reply_to = _field(raw, "request_id"), _field(raw, "reply_to")
        log.error("refused a malformed revocation message: %s", describe_validation_error(exc))
        if request_id is None or reply_to is None:
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
    try:
        if access is not None:
            producer = access.authenticate(
                request.producer, request.signature, request.reply_to, request.signed_content()
            )
            requester = producer.name
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
    return result


def refresh_crl(
    folder: CAFolder,
    authority: SigningAuthority,
    revocations: RevocationStore,
    cache: RevokedEntryCache | None = None,
) -> PublishedCRL:
    """Make, publish and write the CRL; renew the OCSP delegate when one is set up."""
    seed_crl_number(folder, revocations)
    published = make_crl(authority, revocations, crl_days(folder), cache=cache)
    try:
        write_crl_files(folder, published)
    except OSError as exc:  # a read-only CA folder: the store still has the CRL
        log.warning("CRL %d published to the store, not written to disk: %s", published.number, exc)
    if ocsp_key_path(folder.root).exists():
        delegate = ensure_ocsp_certificate(folder, authority, revocations.store)
        if delegate.issued:
            log.warning("renewed the OCSP responder certificate (%s)", delegate.cert_path)
    return published


def register_lifecycle_tasks(app: Celery) -> None:
    """Add `casign.revoke` and `casign.crl` to the signing app."""

    @app.task(
        name=REVOKE_TASK,
        bind=True,
        autoretry_for=(Retryable,),
        retry_backoff=True,
        retry_backoff_max=30,
        retry_jitter=True,
        max_retries=None,
        acks_late=True,
    )
    def revoke(self: Any, message: object) -> str:
        """Revoke one serial; the answer goes to the request's reply list."""
        from worker.process import signer

        try:
            batch_signer = signer()
        except SigningError as exc:
            raise Retryable(str(exc)) from exc
        revocations = RevocationStore(batch_signer.store)
        result = handle_revoke(message, revocations, batch_signer.access)
        return result.status if result else "dropped"

    @app.task(
        name=CRL_TASK,
        bind=True,
        autoretry_for=(Retryable,),
        retry_backoff=True,
        retry_backoff_max=60,
        max_retries=10,
        acks_late=True,
    )
    def crl(self: Any) -> int:
        """Make and publish a new CRL; returns its number."""
        from worker.process import ENV_CA_DIR, signer

        try:
            batch_signer = signer()
        except SigningError as exc:
            raise Retryable(str(exc)) from exc
        folder = CAFolder(Path(os.environ[ENV_CA_DIR]))
        revocations = RevocationStore(batch_signer.store)
        return refresh_crl(folder, batch_signer.authority, revocations, _entry_cache).number
