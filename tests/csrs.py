"""Making keys and CSRs for tests."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

_SHARED_KEY = ec.generate_private_key(ec.SECP256R1())


def make_csr(
    common_name: str | None = "www.example.com",
    *,
    key: CertificateIssuerPrivateKeyTypes | None = None,
    san: Sequence[x509.GeneralName] = (),
    extra_attributes: Sequence[x509.NameAttribute] = (),
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> str:
    """A PEM CSR signed by `key` (a shared P-256 key unless given)."""
    attributes = list(extra_attributes)
    if common_name is not None:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    signing_key = key or _SHARED_KEY
    csr = builder.sign(signing_key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def job(
    job_id: str, csr_pem: str, profile: str = "server_cert", **fields: object
) -> dict[str, object]:
    """A job as it travels on the queue."""
    return {"job_id": job_id, "csr_pem": csr_pem, "profile": profile, **fields}
