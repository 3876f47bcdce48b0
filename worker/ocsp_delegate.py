"""The delegated OCSP responder certificate (RFC 6960 4.2.2.2), issued and renewed by the worker.

Issued through the same steps as every certificate (`worker/issuance`), under the built-in
profile `worker.profiles.ocsp_responder_profile`: the guide's `[ ocsp ]` section (CA:FALSE, SKI,
AKI keyid, keyUsage critical digitalSignature, extendedKeyUsage critical OCSPSigning) plus
id-pkix-ocsp-nocheck (RFC 6960 4.2.2.2.1) so clients do not ask about the responder itself,
30 days cut to the intermediate's notAfter. Its key is a software P-256 key in the CA folder,
because the responder must sign unattended without the intermediate's key; the certificate is
renewed when fewer than `RENEW_WITHIN` days are left.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core.errors import ConfigurationError
from core.files import CERT_MODE, write_file_atomically
from core.index import format_serial
from core.keys import write_private_key
from core.layout import ocsp_cert_path, ocsp_key_path
from store.results import ResultsStore
from worker.authority import SigningAuthority
from worker.cafolder import CAFolder
from worker.crl import ca_signature_digest
from worker.issuance import BatchSigner
from worker.profiles import Profile, ocsp_responder_profile

log = logging.getLogger("casign.ocsp")

RENEW_WITHIN = timedelta(days=7)


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


def delegate_profile(authority: SigningAuthority) -> Profile:
    """The built-in `[ ocsp ]` profile, signed with the hash the CA certificates use."""
    digest = ca_signature_digest(authority.key)
    return ocsp_responder_profile("sha384" if isinstance(digest, hashes.SHA384) else "sha256")


def delegate_csr(authority: SigningAuthority, key: ec.EllipticCurvePrivateKey) -> str:
    """A CSR of the delegate's key, so its certificate passes the same steps as any other."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(ocsp_subject(authority.intermediate))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def issue_ocsp_certificate(
    authority: SigningAuthority,
    store: ResultsStore,
    key: ec.EllipticCurvePrivateKey,
    now: datetime,
) -> x509.Certificate:
    """Issue the delegate's certificate through the issuance steps under the built-in profile:
    reserved serial, record, index line, audit line, published like any certificate."""
    profile = delegate_profile(authority)
    job: dict[str, object] = {
        "job_id": f"ocsp-responder:{now:%Y%m%dT%H%M%SZ}:{secrets.token_hex(4)}",
        "csr_pem": delegate_csr(authority, key),
        "profile": profile.name,
    }
    result = BatchSigner(authority, store).sign_builtin(job, profile, now)
    if not result.ok or result.certificate_pem is None:
        raise ConfigurationError(
            f"the OCSP responder certificate was not issued: {result.code}: {result.message}"
        )
    return x509.load_pem_x509_certificate(result.certificate_pem.encode("ascii"))


def _write_certificate(path: Path, certificate: x509.Certificate) -> None:
    # The responder sees the old file or the new one, never half.
    write_file_atomically(path, certificate.public_bytes(serialization.Encoding.PEM), CERT_MODE)


def ensure_ocsp_certificate(
    folder: CAFolder,
    authority: SigningAuthority,
    store: ResultsStore,
    now: datetime | None = None,
    force: bool = False,
) -> OCSPDelegate:
    """Issue the delegate certificate if it is missing, ending or stale; else keep it.

    It is issued as the guide does with `openssl ca -extensions ocsp`: through the issuance
    steps, so its serial is reserved and it is in the index and the audit log.
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

    certificate = issue_ocsp_certificate(authority, store, key, now)
    _write_certificate(cert_path, certificate)
    log.info("issued OCSP responder certificate %s", format_serial(certificate.serial_number))
    return OCSPDelegate(certificate, cert_path, key_path, issued=True)
