"""The DER of an OCSPResponse: a signed BasicOCSPResponse with one SingleResponse per CertID.

cryptography's OCSPResponseBuilder holds one SingleResponse only, and RFC 6960 4.2.1 has a
response cover every certificate of the request, so the ResponseData is built with asn1crypto
and its DER signed with the delegate's key by cryptography (RFC 6960 4.2.1, 4.2.2.3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from asn1crypto import core as asn1_core
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp

from ocsp.identity import ResponderIdentity
from ocsp.request import CertID

# RFC 5280 5.3.1 CRLReason values, as asn1crypto names them.
_REASON_NAMES: dict[x509.ReasonFlags, str] = {
    x509.ReasonFlags.unspecified: "unspecified",
    x509.ReasonFlags.key_compromise: "key_compromise",
    x509.ReasonFlags.ca_compromise: "ca_compromise",
    x509.ReasonFlags.affiliation_changed: "affiliation_changed",
    x509.ReasonFlags.superseded: "superseded",
    x509.ReasonFlags.cessation_of_operation: "cessation_of_operation",
    x509.ReasonFlags.certificate_hold: "certificate_hold",
    x509.ReasonFlags.remove_from_crl: "remove_from_crl",
    x509.ReasonFlags.privilege_withdrawn: "privilege_withdrawn",
    x509.ReasonFlags.aa_compromise: "aa_compromise",
}


class Status(Enum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class CertStatus:
    """What one SingleResponse says of its certificate (RFC 6960 4.2.1 CertStatus)."""

    status: Status
    revoked_at: datetime | None = None
    reason: x509.ReasonFlags | None = None


def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
        serialization.Encoding.DER
    )


# RFC 6960 4.2.1: the unsigned answers, the same bytes every time.
MALFORMED_REQUEST = _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
INTERNAL_ERROR = _unsuccessful(ocsp.OCSPResponseStatus.INTERNAL_ERROR)
TRY_LATER = _unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)
UNAUTHORIZED = _unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)


def _cert_status(status: CertStatus) -> asn1_ocsp.CertStatus:
    if status.status is Status.GOOD:
        return asn1_ocsp.CertStatus(name="good", value=asn1_core.Null())
    if status.status is Status.UNKNOWN:
        return asn1_ocsp.CertStatus(name="unknown", value=asn1_core.Null())
    assert status.revoked_at is not None
    revoked: dict[str, object] = {"revocation_time": status.revoked_at}
    if status.reason is not None:
        revoked["revocation_reason"] = _REASON_NAMES[status.reason]
    return asn1_ocsp.CertStatus(name="revoked", value=revoked)


def _single_response(
    cert_id: CertID, status: CertStatus, this_update: datetime, next_update: datetime
) -> dict[str, object]:
    return {
        "cert_id": {
            "hash_algorithm": {"algorithm": cert_id.algorithm},
            "issuer_name_hash": cert_id.issuer_name_hash,
            "issuer_key_hash": cert_id.issuer_key_hash,
            "serial_number": cert_id.serial,
        },
        "cert_status": _cert_status(status),
        "this_update": this_update,
        "next_update": next_update,
    }


def _signature(identity: ResponderIdentity, tbs: bytes) -> tuple[str, bytes]:
    """The signatureAlgorithm name (asn1crypto's) and the signature over `tbs`."""
    key = identity.key
    if isinstance(key, rsa.RSAPrivateKey):
        return "sha256_rsa", key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "sha256_ecdsa", key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    raise TypeError(f"an OCSP signing key cannot be {type(key).__name__}")


def signed_response(
    identity: ResponderIdentity,
    answers: Sequence[tuple[CertID, CertStatus]],
    this_update: datetime,
    next_update: datetime,
    nonce: bytes | None = None,
) -> bytes:
    """A successful OCSPResponse answering each CertID in order, signed by the delegate.

    The responder is named by key hash (RFC 6960 4.2.2.3) and its certificate is included so
    clients can check the delegation (4.2.2.2); a nonce is echoed as RFC 8954 2.1 asks.
    """
    response_data: dict[str, object] = {
        "responder_id": asn1_ocsp.ResponderId(name="by_key", value=identity.key_hash),
        "produced_at": this_update,
        "responses": [
            _single_response(cert_id, status, this_update, next_update)
            for cert_id, status in answers
        ],
    }
    if nonce is not None:
        response_data["response_extensions"] = [
            {"extn_id": "nonce", "critical": False, "extn_value": nonce}
        ]
    tbs = asn1_ocsp.ResponseData(response_data)
    algorithm, signature = _signature(identity, tbs.dump())
    basic = asn1_ocsp.BasicOCSPResponse(
        {
            "tbs_response_data": tbs,
            "signature_algorithm": {"algorithm": algorithm},
            "signature": signature,
            "certs": [identity.certificate_asn1],
        }
    )
    response = asn1_ocsp.OCSPResponse(
        {
            "response_status": "successful",
            "response_bytes": {"response_type": "basic_ocsp_response", "response": basic},
        }
    )
    return bytes(response.dump())
