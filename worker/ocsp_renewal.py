"""The OCSP delegate's certificate kept current by every worker, `--beat` or not.

The responder (`casign ocsp`) holds the delegate's key only, never the CA's, so it cannot renew
its own certificate: each worker process that signs keeps a `DelegateRenewal` thread that looks
at the certificate at start and then every `CHECK_SECONDS`, and renews it through the issuance
steps when fewer than `RENEW_WITHIN` days are left (`worker.ocsp_delegate`). The store's
`ocsp-delegate` lock lets one process at a time renew, so several workers issue one
certificate. Nothing happens in a CA folder without the delegate's key (no responder was set up
with `casign ocsp-cert`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from datetime import datetime

from core.errors import SigningError
from core.layout import ocsp_key_path
from worker.ocsp_delegate import OCSPDelegate, ensure_ocsp_certificate
from worker.process import SignerProcess

log = logging.getLogger("casign.ocsp")

# The certificate is renewed 7 days before its end (RENEW_WITHIN): looking once an hour leaves
# every worker ample time, even across a store outage of days.
CHECK_SECONDS = 3600.0
RENEWAL_LOCK = "ocsp-delegate"
# Longer than one issuance takes; the lock is released as soon as the renewal is done.
RENEWAL_LOCK_SECONDS = 300


def renew_delegate_if_due(
    process: SignerProcess, now: datetime | None = None
) -> OCSPDelegate | None:
    """Renew the delegate's certificate if it is due and no other process is at it.

    The delegate as it now is, or None when the folder has no delegate key, another process
    holds the turn, or the key or store cannot be reached (logged; tried again later).
    """
    if not ocsp_key_path(process.folder.root).exists():
        return None
    try:
        batch_signer = process.signer()
        turn = batch_signer.store.locks.acquire(RENEWAL_LOCK, RENEWAL_LOCK_SECONDS)
        if turn is None:
            return None
        try:
            delegate = ensure_ocsp_certificate(
                process.folder, batch_signer.authority, batch_signer.store, now
            )
        finally:
            with contextlib.suppress(SigningError):
                turn.release()
    except (SigningError, OSError) as exc:
        log.warning("the OCSP responder certificate was not checked for renewal: %s", exc)
        return None
    if delegate.issued:
        log.warning(
            "renewed the OCSP responder certificate (%s), valid until %s",
            delegate.cert_path,
            f"{delegate.certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
        )
    return delegate


class DelegateRenewal(threading.Thread):
    """Checks the delegate's certificate at start and every `check_seconds` until the stop."""

    def __init__(self, process: SignerProcess, check_seconds: float = CHECK_SECONDS) -> None:
        super().__init__(name="casign-ocsp-renewal", daemon=True)
        self.process = process
        self.check_seconds = check_seconds

    def run(self) -> None:
        while True:
            renew_delegate_if_due(self.process)
            if self.process.stop.wait(self.check_seconds):
                return
