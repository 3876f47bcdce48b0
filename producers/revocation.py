"""Asking the signing worker to revoke a certificate, through the same queue as the CSRs
(the producer's own, `core.queue.producer_queue`).

Imports the message schema and the store only; never the keystore or the worker.
"""

from __future__ import annotations

import uuid

from celery import Celery

from core.auth import DEFAULT_ENVELOPE_SECONDS, MessageKind, seal
from core.messages import RevokeRequest
from core.queue import REVOKE_TASK, producer_queue
from core.revocation import canonical_reason, canonical_serial

DEFAULT_TIMEOUT = 60.0


def send_revocation(
    celery: Celery,
    queue: str,
    reply_to: str,
    serial: str,
    reason: str,
    *,
    requester: str | None = None,
    identity: str | None = None,
    secret: bytes | None = None,
    ca: str = "",
    envelope_seconds: int = DEFAULT_ENVELOPE_SECONDS,
) -> RevokeRequest:
    """Enqueue one revocation for the CA of `queue`, on `identity`'s own queue (Q itself without
    one); serial and reason are checked here first (Rejected)."""
    request = RevokeRequest(
        request_id=uuid.uuid4().hex,
        serial=canonical_serial(serial),
        reason=canonical_reason(reason),
        requester=requester,
        reply_to=reply_to,
    )
    if identity is not None and secret is not None:
        envelope = seal(
            secret,
            MessageKind.REVOKE,
            producer=identity,
            ca=ca,
            queue=queue,
            reply_to=reply_to,
            payload=request.sealed_payload(),
            lifetime_seconds=envelope_seconds,
        )
        request = request.model_copy(update={"envelope": envelope})
    # Publish only, as Producer does: the signer declares its queue.
    celery.send_task(
        REVOKE_TASK,
        args=[request.model_dump()],
        queue=producer_queue(queue, identity),
        ignore_result=True,
        declare=[],
    )
    return request
