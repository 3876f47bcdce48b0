"""The delegated OCSP responder certificate (RFC 6960 4.2.2.2), issued and renewed by the worker.

Made with the guide's `[ ocsp ]` section (CA:FALSE, SKI, AKI keyid, keyUsage critical
digitalSignature, extendedKeyUsage critical OCSPSigning) plus id-pkix-ocsp-nocheck (RFC 6960
4.2.2.2.1) so clients do not ask about the responder itself. Its key is a software P-256 key
in the CA folder, because the responder must sign unattended without the intermediate's key;
the certificate is short-lived and renewed when fewer than `RENEW_WITHIN` days are left.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core.audit import audit_line
from core.errors import ConfigurationError, Retryable
from core.files import CERT_MODE, write_file_atomically
from core.index import IndexEntry, format_serial
from core.keys import write_private_key
from core.layout import ocsp_cert_path, ocsp_key_path
from store.results import Issued, ResultsStore
from worker.authority import SigningAuthority
from worker.cafolder import CAFolder
from worker.crl import ca_signature_digest
from worker.issuance import draw_serial

log = logging.getLogger("casign.ocsp")

OCSP_DAYS = 30
RENEW_WITHIN = timedelta(days=7)
_MAX_SERIAL_DRAWS = 5


@dataclass(frozen=True)
class OCSPDelegate:
    """The responder's certificate as it is on disk, and whether this call issued it."""

    certificate: x509.Certificate
    cert_path: Path
    key_path: Path
    issued: bool


def ocsp_subject(intermediate: x509.Certificate) -> x509.Name:
    """The intermediate's subject with the CN made the responder's own (never a CA's CN)."""
    attributes = [
        attribute for attribute in intermediate.subject if attribute.oid != NameOID.COMMON_NAME
    ]
    common_names = intermediate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    base = str(common_names[0].value) if common_names else "casign"
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, f"{base} OCSP Responder"[:64]))
    return x509.Name(attributes)


def _load_or_make_key(path: Path) -> ec.EllipticCurvePrivateKey:
    if not path.exists():
        fresh = ec.generate_private_key(ec.SECP256R1())
        write_private_key(path, fresh, None)  # 0400; the responder must read it unattended
        return fresh
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigurationError(f"{path}: cannot read the OCSP key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigurationError(f"{path}: the OCSP key must be an EC key")
    return key


def needs_renewal(
    certificate: x509.Certificate | None,
    authority: SigningAuthority,
    key: ec.EllipticCurvePrivateKey,
    now: datetime,
) -> bool:
    """True without a certificate, near its end, or when it is not the key's or the CA's."""
    if certificate is None:
        return True
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if certificate.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        return True
    try:
        certificate.verify_directly_issued_by(authority.intermediate)
    except Exception:
        return True
    return (
        not certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc - RENEW_WITHIN
    )


def build_ocsp_certificate(
    authority: SigningAuthority,
    key: ec.EllipticCurvePrivateKey,
    serial: int,
    now: datetime,
    days: int = OCSP_DAYS,
) -> x509.Certificate:
    """Sign the delegate certificate with the guide's `[ ocsp ]` extensions."""
    public_key = key.public_key()
    not_before = now.astimezone(UTC).replace(microsecond=0)
    not_after = min(not_before + timedelta(days=days), authority.intermediate.not_valid_after_utc)
    # `keyid,issuer` adds the issuer name only when no key id can be had; ours always has one.
    aki = x509.AuthorityKeyIdentifier(authority.key_identifier, None, None)
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        x509.CertificateBuilder()
        .issuer_name(authority.intermediate.subject)
        .subject_name(ocsp_subject(authority.intermediate))
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(aki, critical=False)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=True)
        .add_extension(x509.OCSPNoCheck(), critical=False)
        .sign(authority.key, ca_signature_digest(authority.key))
    )


def _claim_serial(store: ResultsStore, job_id: str) -> int:
    """A serial recorded as this certificate's before it is signed (never drawn twice)."""
    for _ in range(_MAX_SERIAL_DRAWS):
        serial = draw_serial()
        if store.client.hsetnx(store.key("serials"), format_serial(serial), job_id):
            return serial
    raise Retryable("could not draw an unused serial for the OCSP certificate")


def _write_certificate(path: Path, certificate: x509.Certificate) -> None:
    # The responder sees the old file or the new one, never half.
    write_file_atomically(path, certificate.public_bytes(serialization.Encoding.PEM), CERT_MODE)


def ensure_ocsp_certificate(
    folder: CAFolder,
    authority: SigningAuthority,
    store: ResultsStore | None,
    now: datetime | None = None,
    force: bool = False,
) -> OCSPDelegate:
    """Issue the delegate certificate if it is missing, ending or stale; else keep it.

    With a store, its serial is claimed first and it is published to the index like every
    certificate the CA signs (the guide issues it with `openssl ca -extensions ocsp`).
    """
    now = now or datetime.now(UTC)
    cert_path, key_path = ocsp_cert_path(folder.root), ocsp_key_path(folder.root)
    key = _load_or_make_key(key_path)
    current: x509.Certificate | None = None
    if cert_path.exists():
        try:
            current = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except ValueError:
            log.warning("%s is unreadable; issuing a new one", cert_path)
    if current is not None and not force and not needs_renewal(current, authority, key, now):
        return OCSPDelegate(current, cert_path, key_path, issued=False)

    job_id = f"ocsp-responder:{now:%Y%m%dT%H%M%S}:{os.getpid()}"
    serial = _claim_serial(store, job_id) if store is not None else draw_serial()
    certificate = build_ocsp_certificate(authority, key, serial, now)
    certificate.verify_directly_issued_by(authority.intermediate)
    if store is not None:
        pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
        line = IndexEntry.for_certificate(certificate).to_openssl_line()
        fingerprint = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER))
        audit = audit_line(
            "issued", job_id=job_id, serial=format_serial(serial), profile="ocsp", when=now
        )
        issued = Issued(job_id, fingerprint.hexdigest(), format_serial(serial), pem, line, audit)
        store.publish([issued], [], [], None)
    _write_certificate(cert_path, certificate)
    log.info("issued OCSP responder certificate %s", format_serial(serial))
    return OCSPDelegate(certificate, cert_path, key_path, issued=True)
