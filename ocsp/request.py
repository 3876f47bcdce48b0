"""An OCSPRequest (RFC 6960 4.1.1) read into what the responder needs: CertIDs and the nonce.

cryptography reads a one-certificate request (the common case) quickly but refuses several
CertIDs and unknown hash algorithms; asn1crypto reads those. Whatever either parser raises on
hostile input becomes `MalformedRequest`, so bad input is answered, never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509 import ocsp

# RFC 8954 2.1: a nonce is 1 to 32 octets; a server MUST reject 0 or more than 32 octets
# with malformedRequest.
MIN_NONCE_OCTETS = 1
MAX_NONCE_OCTETS = 32


class MalformedRequest(ValueError):
    """The bytes are not an OCSPRequest this responder accepts (answered malformedRequest)."""


@dataclass(frozen=True, slots=True)
class CertID:
    """One certificate asked about: the hash algorithm's name, the issuer's hashes, the serial."""

    algorithm: str  # "sha1", "sha256", ...; a dotted OID when the algorithm is not known
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial: int


@dataclass(frozen=True, slots=True)
class StatusRequest:
    """The CertIDs of one request, in order, and its nonce when it carries one."""

    cert_ids: tuple[CertID, ...]
    nonce: bytes | None


def parse_request(der: bytes) -> StatusRequest:
    """Read a DER OCSPRequest; MalformedRequest for anything else, or for a bad nonce."""
    try:
        parsed = _parse_single(der)
    except _NeedsGeneralParser:
        parsed = _parse_general(der)
    if parsed.nonce is not None and not (MIN_NONCE_OCTETS <= len(parsed.nonce) <= MAX_NONCE_OCTETS):
        raise MalformedRequest(
            f"the nonce is {len(parsed.nonce)} octets; RFC 8954 2.1 allows "
            f"{MIN_NONCE_OCTETS} to {MAX_NONCE_OCTETS}"
        )
    return parsed


class _NeedsGeneralParser(Exception):
    """cryptography cannot read this request (several CertIDs, an unknown hash)."""


def _parse_single(der: bytes) -> StatusRequest:
    try:
        request = ocsp.load_der_ocsp_request(der)
    except NotImplementedError:  # more than one CertID
        raise _NeedsGeneralParser from None
    except Exception as exc:  # ValueError and whatever else the parser raises on bad DER
        raise MalformedRequest(f"not a DER OCSPRequest ({exc})") from None
    try:
        algorithm = request.hash_algorithm.name
    except UnsupportedAlgorithm:
        raise _NeedsGeneralParser from None
    cert_id = CertID(
        algorithm, request.issuer_name_hash, request.issuer_key_hash, request.serial_number
    )
    try:
        nonce: bytes | None = request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        nonce = None
    except Exception as exc:  # duplicate or unreadable extensions
        raise MalformedRequest(f"unreadable OCSPRequest extensions ({exc})") from None
    return StatusRequest((cert_id,), nonce)


def _parse_general(der: bytes) -> StatusRequest:
    # asn1crypto parses lazily: every field access below may raise on bad input.
    try:
        request = asn1_ocsp.OCSPRequest.load(der, strict=True)
        tbs = request["tbs_request"]
        cert_ids = tuple(_cert_id(item["req_cert"]) for item in tbs["request_list"])
        nonce = None
        for extension in tbs["request_extensions"] or ():
            if extension["extn_id"].native == "nonce":
                if nonce is not None:
                    raise MalformedRequest("the nonce extension appears twice")
                nonce = bytes(extension["extn_value"].parsed.native)
    except MalformedRequest:
        raise
    except Exception as exc:
        raise MalformedRequest(f"not a DER OCSPRequest ({exc})") from None
    if not cert_ids:
        raise MalformedRequest("the request lists no certificate")
    return StatusRequest(cert_ids, nonce)


def _cert_id(value: asn1_ocsp.CertId) -> CertID:
    serial = value["serial_number"].native
    name_hash = value["issuer_name_hash"].native
    key_hash = value["issuer_key_hash"].native
    algorithm = value["hash_algorithm"]["algorithm"].native
    if not (
        isinstance(serial, int)
        and isinstance(name_hash, bytes)
        and isinstance(key_hash, bytes)
        and isinstance(algorithm, str)
    ):
        raise MalformedRequest("a CertID field has the wrong type")
    return CertID(algorithm, name_hash, key_hash, serial)
