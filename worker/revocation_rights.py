"""Who may revoke what through the queue.

A listed producer revokes only the serials issued to it (`revoke = "own"`, the default), any
serial (`"any"`) or none (`"none"`), and only with the reasons of its `revoke_reasons`. The OCSP
responder's delegated certificate (extended key usage OCSPSigning) is never revoked on a queue
message, whoever sends it: only the operator revokes it, in process with the CA folder
(`casign revoke --in-process`), since a revoked delegate silences every OCSP answer.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from core.errors import RefusalCode, Rejected
from core.messages import RevokeRequest
from core.revocation import canonical_serial
from store.results import ResultsStore
from worker.access import AllowedProducer


def check_revocation_allowed(
    request: RevokeRequest, producer: AllowedProducer | None, store: ResultsStore
) -> None:
    """Refuse (`revoke.not_allowed`) what the sender of `request` may not revoke.

    `producer` is the listed producer that sealed it; None on an open signer, where only the
    OCSP delegate's certificate is held back.
    """
    serial = canonical_serial(request.serial)
    if producer is not None:
        policy = producer.policy
        if policy.revoke == "none":
            raise Rejected(
                RefusalCode.REVOKE_NOT_ALLOWED,
                f'producer {producer.name!r} may not revoke certificates (revoke = "none")',
            )
        if request.reason not in policy.revoke_reasons:
            raise Rejected(
                RefusalCode.REVOKE_NOT_ALLOWED,
                f"producer {producer.name!r} may not revoke with reason {request.reason!r}; its "
                f"revoke_reasons are {', '.join(policy.revoke_reasons) or 'none'}",
            )
        if policy.revoke == "own" and store.owner_of(serial) != producer.name:
            raise Rejected(
                RefusalCode.REVOKE_NOT_ALLOWED,
                f"producer {producer.name!r} may revoke only the certificates issued to it; "
                f"serial {serial} is not one of them",
            )
    if is_ocsp_delegate(store.certificate(serial)):
        raise Rejected(
            RefusalCode.REVOKE_NOT_ALLOWED,
            f"serial {serial} is the OCSP responder's delegated certificate; only the "
            "operator revokes it (`casign revoke --in-process` with the CA folder)",
        )


def is_ocsp_delegate(certificate_pem: str | None) -> bool:
    """True for a certificate that may sign OCSP answers (extended key usage OCSPSigning)."""
    if not certificate_pem:
        return False
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem.encode("ascii"))
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, UnicodeEncodeError, x509.ExtensionNotFound):
        return False
    return ExtendedKeyUsageOID.OCSP_SIGNING in usages
