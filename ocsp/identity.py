"""Who answers: the issuer answered for, and the delegate certificate and key that sign.

The worker side keeps them in the CA folder (`intermediate/certs/ocsp.cert.pem`,
`intermediate/private/ocsp.key.pem`, see core/layout.py); the responder never opens the
intermediate's key. `DelegateFiles` notices when the worker has renewed them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from core.errors import ConfigurationError
from core.layout import intermediate_cert_path, ocsp_cert_path, ocsp_key_path
from ocsp.request import CertID

# CertID hash algorithms a request may use (RFC 6960 4.1.1; SHA-1 is what most clients send).
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class ResponderIdentity:
    """The issuer answered for, and the delegate that signs the answers."""

    issuer: x509.Certificate
    certificate: x509.Certificate
    key: SigningKey
    issuer_hashes: dict[str, tuple[bytes, bytes]]  # hash name -> (issuerNameHash, issuerKeyHash)
    key_hash: bytes  # RFC 6960 4.2.2.3 KeyHash: SHA-1 of the delegate's subjectPublicKey
    certificate_der: bytes = field(repr=False)

    @classmethod
    def load(cls, ca_root: Path) -> ResponderIdentity:
        """Read and check the intermediate certificate and the delegate's certificate and key."""
        cert_path, key_path = ocsp_cert_path(ca_root), ocsp_key_path(ca_root)
        try:
            issuer = x509.load_pem_x509_certificate(intermediate_cert_path(ca_root).read_bytes())
            certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except FileNotFoundError as exc:
            raise ConfigurationError(
                f"{exc.filename} is missing; make the OCSP responder's certificate with "
                f"`casign ocsp-cert --ca {ca_root}` on the signing side"
            ) from None
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigurationError(f"cannot read the OCSP responder's files: {exc}") from None
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ConfigurationError(f"{key_path}: an OCSP signing key must be RSA or ECDSA")
        _check_delegate(issuer, certificate, key, cert_path)
        hashes_by_name = {
            name: _issuer_hashes(issuer, certificate, algorithm())
            for name, algorithm in _HASHES.items()
        }
        key_hash = x509.SubjectKeyIdentifier.from_public_key(certificate.public_key()).digest
        der = certificate.public_bytes(serialization.Encoding.DER)
        return cls(issuer, certificate, key, hashes_by_name, key_hash, der)

    def answers_for(self, cert_id: CertID) -> bool:
        """Whether `cert_id` names the issuer this responder answers for (RFC 6960 4.1.1)."""
        return self.issuer_hashes.get(cert_id.algorithm) == (
            cert_id.issuer_name_hash,
            cert_id.issuer_key_hash,
        )


def _check_delegate(
    issuer: x509.Certificate,
    certificate: x509.Certificate,
    key: SigningKey,
    cert_path: Path,
) -> None:
    """RFC 6960 4.2.2.2: the delegate is issued by the CA and carries id-kp-OCSPSigning."""
    try:
        certificate.verify_directly_issued_by(issuer)
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except Exception as exc:
        raise ConfigurationError(
            f"{cert_path} is not an OCSP certificate issued by the intermediate ({exc})"
        ) from None
    if ExtendedKeyUsageOID.OCSP_SIGNING not in usage:
        raise ConfigurationError(f"{cert_path} lacks the OCSPSigning extended key usage")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ) != certificate.public_key().public_bytes(serialization.Encoding.DER, spki):
        raise ConfigurationError(f"{cert_path} does not match the OCSP key file")


def _issuer_hashes(
    issuer: x509.Certificate, issued: x509.Certificate, algorithm: hashes.HashAlgorithm
) -> tuple[bytes, bytes]:
    """The CertID hashes (RFC 6960 4.1.1) of `issuer`, as every client computes them.

    issuerKeyHash is over the BIT STRING of the issuer's key, which cryptography does not
    expose for every key type; a request for a certificate it issued computes it exactly.
    """
    request = ocsp.OCSPRequestBuilder().add_certificate(issued, issuer, algorithm).build()
    return request.issuer_name_hash, request.issuer_key_hash


class DelegateFiles:
    """The delegate's two files in a CA folder, and whether they changed since last looked at."""

    def __init__(self, ca_root: Path) -> None:
        self.ca_root = ca_root
        self._seen = self._stamp()

    def _stamp(self) -> tuple[float, float]:
        try:
            return (
                ocsp_cert_path(self.ca_root).stat().st_mtime,
                ocsp_key_path(self.ca_root).stat().st_mtime,
            )
        except OSError:
            return (0.0, 0.0)

    def changed(self) -> bool:
        """True once after each change of either file's modification time."""
        stamp = self._stamp()
        if stamp == self._seen:
            return False
        self._seen = stamp
        return True
