"""Asking the signing worker to revoke a certificate, through the same queue as the CSRs.

Imports the message schema and the store only; never the keystore or the worker.
"""

from __future__ import annotations

import uuid
from types import TracebackType

from celery import Celery

from casign.auth import read_secret, sign_batch
from casign.queue import SIGN_QUEUE, celery_settings
from casign.revocations import (
    REVOKE_TASK,
    RevocationResult,
    RevocationStore,
    RevokeRequest,
    canonical_reason,
    canonical_serial,
)
from casign.store import ResultsStore

DEFAULT_TIMEOUT = 60.0


class RevocationClient:
    """Sends `casign.revoke` tasks and waits for the worker's answers on a reply list."""

    def __init__(
        self,
        broker_url: str,
        store_url: str,
        *,
        store_prefix: str = "casign",
        queue: str = SIGN_QUEUE,
        requester: str | None = None,
        identity: str | None = None,
        secret_source: str | None = None,
    ) -> None:
        """`identity` and `secret_source` (`file:PATH` or `env:VAR`) sign every request (HMAC)."""
        if (identity is None) != (secret_source is None):
            raise ValueError("a producer identity and its secret_source go together")
        self.identity = identity
        self._secret = read_secret(secret_source) if secret_source else None
        self.queue = queue
        self.requester = requester
        self.store = ResultsStore.from_url(store_url, store_prefix)
        self.revocations = RevocationStore(self.store)
        self.reply_to = uuid.uuid4().hex
        self._celery = Celery("casign-revoker", set_as_current=False)
        self._celery.conf.update(celery_settings(broker_url, queue))

    def __enter__(self) -> RevocationClient:
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
        self.store.client.close()

    def submit(self, serial: str, reason: str = "unspecified") -> RevokeRequest:
        """Enqueue a revocation; the serial and reason are checked here first (RevocationRefused)."""
        request = RevokeRequest(
            request_id=uuid.uuid4().hex,
            serial=canonical_serial(serial),
            reason=canonical_reason(reason),
            requester=self.requester,
            reply_to=self.reply_to,
            producer=self.identity,
        )
        if self.identity is not None and self._secret is not None:
            signature = sign_batch(
                self._secret, self.identity, self.reply_to, request.signed_content()
            )
            request = request.model_copy(update={"signature": signature})
        self._celery.send_task(
            REVOKE_TASK, args=[request.model_dump()], queue=self.queue, ignore_result=True
        )
        return request

    def revoke(
        self, serial: str, reason: str = "unspecified", timeout: float = DEFAULT_TIMEOUT
    ) -> RevocationResult:
        """Revoke `serial` and wait for the worker's answer (revoked, or refused with a code)."""
        request = self.submit(serial, reason)
        return self.revocations.wait_result(self.reply_to, request.request_id, timeout)


def revoke(
    broker_url: str,
    store_url: str,
    serial: str,
    reason: str = "unspecified",
    *,
    store_prefix: str = "casign",
    queue: str = SIGN_QUEUE,
    requester: str | None = None,
    identity: str | None = None,
    secret_source: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> RevocationResult:
    """One revocation through the queue, as `casign revoke` does it."""
    with RevocationClient(
        broker_url,
        store_url,
        store_prefix=store_prefix,
        queue=queue,
        requester=requester,
        identity=identity,
        secret_source=secret_source,
    ) as client:
        return client.revoke(serial, reason, timeout)
