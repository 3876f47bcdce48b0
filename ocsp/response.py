"""The DER of an OCSPResponse: a signed BasicOCSPResponse with one SingleResponse per CertID.

cryptography's OCSPResponseBuilder holds one SingleResponse only, and RFC 6960 4.2.1 has a
response cover every certificate of the request, so the structures of RFC 6960 4.2.1 are
written here with `ocsp.der` and the ResponseData is signed by cryptography with the
delegate's key (4.2.2.2). The constants are encoded once by asn1crypto.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from asn1crypto import algos as asn1_algos
from asn1crypto import core as asn1_core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp

from ocsp import der
from ocsp.identity import ResponderIdentity
from ocsp.request import CertID

# RFC 5280 5.3.1 CRLReason values.
_REASON_CODES: dict[x509.ReasonFlags, int] = {
    x509.ReasonFlags.unspecified: 0,
    x509.ReasonFlags.key_compromise: 1,
    x509.ReasonFlags.ca_compromise: 2,
    x509.ReasonFlags.affiliation_changed: 3,
    x509.ReasonFlags.superseded: 4,
    x509.ReasonFlags.cessation_of_operation: 5,
    x509.ReasonFlags.certificate_hold: 6,
    x509.ReasonFlags.remove_from_crl: 8,
    x509.ReasonFlags.privilege_withdrawn: 9,
    x509.ReasonFlags.aa_compromise: 10,
}
# CertID hashAlgorithm, with NULL parameters as OpenSSL and cryptography write them.
_HASH_ALGORITHMS = {
    name: asn1_algos.DigestAlgorithm({"algorithm": name, "parameters": asn1_core.Null()}).dump()
    for name in ("sha1", "sha224", "sha256", "sha384", "sha512")
}
_SIGNATURE_ALGORITHMS = {
    name: asn1_algos.SignedDigestAlgorithm({"algorithm": name}).dump()
    for name in ("sha256_rsa", "sha256_ecdsa")
}
_NONCE_OID = asn1_core.ObjectIdentifier("1.3.6.1.5.5.7.48.1.2").dump()  # id-pkix-ocsp-nonce
_BASIC_OID = asn1_core.ObjectIdentifier("1.3.6.1.5.5.7.48.1.1").dump()  # id-pkix-ocsp-basic
_SUCCESSFUL = der.enumerated(0)  # OCSPResponseStatus successful
_GOOD = bytes((0x80, 0x00))  # [0] IMPLICIT NULL
_UNKNOWN = bytes((0x82, 0x00))  # [2] IMPLICIT NULL
_REVOKED_TAG = 0xA1  # [1] IMPLICIT RevokedInfo (constructed)


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


def _cert_status(status: CertStatus) -> bytes:
    if status.status is Status.GOOD:
        return _GOOD
    if status.status is Status.UNKNOWN:
        return _UNKNOWN
    assert status.revoked_at is not None
    revoked = der.generalized_time(status.revoked_at)
    if status.reason is not None:
        revoked += der.explicit(0, der.enumerated(_REASON_CODES[status.reason]))
    return der.tlv(_REVOKED_TAG, revoked)


def _single_response(
    cert_id: CertID, status: CertStatus, this_update: bytes, next_update: bytes
) -> bytes:
    return der.sequence(
        der.sequence(
            _HASH_ALGORITHMS[cert_id.algorithm],
            der.octet_string(cert_id.issuer_name_hash),
            der.octet_string(cert_id.issuer_key_hash),
            der.integer(cert_id.serial),
        ),
        _cert_status(status),
        this_update,
        der.explicit(0, next_update),
    )


def response_data(
    identity: ResponderIdentity,
    answers: Sequence[tuple[CertID, CertStatus]],
    this_update: datetime,
    next_update: datetime,
    nonce: bytes | None = None,
) -> bytes:
    """The DER ResponseData (v1, the default, is left out as DER requires)."""
    this, following = der.generalized_time(this_update), der.generalized_time(next_update)
    fields = [
        der.explicit(2, der.octet_string(identity.key_hash)),  # responderID byKey
        this,  # producedAt
        der.sequence(
            *(_single_response(cert_id, status, this, following) for cert_id, status in answers)
        ),
    ]
    if nonce is not None:  # RFC 8954 2.1: the nonce is an OCTET STRING inside extnValue
        extension = der.sequence(_NONCE_OID, der.octet_string(der.octet_string(nonce)))
        fields.append(der.explicit(1, der.sequence(extension)))
    return der.sequence(*fields)


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
    tbs = response_data(identity, answers, this_update, next_update, nonce)
    algorithm, signature = _signature(identity, tbs)
    basic = der.sequence(
        tbs,
        _SIGNATURE_ALGORITHMS[algorithm],
        der.bit_string(signature),
        der.explicit(0, der.sequence(identity.certificate_der)),
    )
    response_bytes = der.sequence(_BASIC_OID, der.octet_string(basic))
    return der.sequence(_SUCCESSFUL, der.explicit(0, response_bytes))
