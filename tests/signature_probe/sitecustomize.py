"""Loaded by every Python started with this folder first on PYTHONPATH (the fault tests' worker
processes): counts each signature of the issuance step, and may slow it down.

CASIGN_TEST_SIGNATURES=FILE appends one line per signature, `PID JOB_ID CERT_SHA256`, with
O_APPEND (one write per line, so lines of several processes never mix); with ECDSA two
signatures of one record are two certificates, so the file tells how often each was signed.
CASIGN_TEST_SIGN_DELAY=SECONDS sleeps that long before each signature (a slow HSM).
"""

from __future__ import annotations

import os

_PATH = os.environ.get("CASIGN_TEST_SIGNATURES")
_DELAY = float(os.environ.get("CASIGN_TEST_SIGN_DELAY") or 0)

if _PATH:
    import time
    from typing import Any

    from cryptography.hazmat.primitives import hashes

    import worker.issuance.batch as _batch
    import worker.issuance.recovery as _recovery
    import worker.issuance.steps as _steps

    _sign = _steps.sign

    def _counted_sign(job: Any, authority: Any) -> Any:
        if _DELAY:
            time.sleep(_DELAY)
        signed = _sign(job, authority)
        digest = signed.certificate.fingerprint(hashes.SHA256()).hex()
        line = f"{os.getpid()} {job.record.job_id} {digest}\n".encode()
        descriptor = os.open(_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(descriptor, line)
        finally:
            os.close(descriptor)
        return signed

    for _module in (_steps, _batch, _recovery):
        _module.sign = _counted_sign  # type: ignore[attr-defined]
