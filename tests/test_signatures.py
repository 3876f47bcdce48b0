"""Signatures checked with a key parsed once (core.signatures) and the subject key identifier
read from the key's DER (worker.key_identifier) agree with cryptography's own checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from core.signatures import IssuerKey, csr_signature_valid
from worker.key_identifier import subject_key_identifier

KEYS: dict[str, CertificateIssuerPrivateKeyTypes] = {
    "rsa": rsa.generate_private_key(65537, 2048),
    "p256": ec.generate_private_key(ec.SECP256R1()),
    "p384": ec.generate_private_key(ec.SECP384R1()),
    "ed25519": ed25519.Ed25519PrivateKey.generate(),
}


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _digest(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _issuer(key: CertificateIssuerPrivateKeyTypes, name: str) -> x509.Certificate:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder(
            issuer_name=_name(name),
            subject_name=_name(name),
            public_key=key.public_key(),
            serial_number=x509.random_serial_number(),
            not_valid_before=now,
            not_valid_after=now + timedelta(days=1),
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, _digest(key))
    )


def _leaf(
    issuer: x509.Certificate,
    key: CertificateIssuerPrivateKeyTypes,
    rsa_padding: padding.PSS | None = None,
) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = x509.CertificateBuilder(
        issuer_name=issuer.subject,
        subject_name=_name("leaf.example.com"),
        public_key=KEYS["p256"].public_key(),
        serial_number=x509.random_serial_number(),
        not_valid_before=now,
        not_valid_after=now + timedelta(days=1),
    )
    return builder.sign(key, _digest(key), rsa_padding=rsa_padding)


@pytest.mark.parametrize("kind", KEYS)
def test_a_certificate_the_issuer_signed_passes(kind: str) -> None:
    key = KEYS[kind]
    issuer = _issuer(key, f"{kind} CA")
    leaf = _leaf(issuer, key)
    IssuerKey(issuer).check(leaf, leaf.tbs_certificate_bytes)


@pytest.mark.parametrize("kind", KEYS)
def test_a_certificate_signed_by_another_key_of_the_same_name_fails(kind: str) -> None:
    issuer = _issuer(KEYS[kind], "one CA")
    impostor = rsa.generate_private_key(65537, 2048) if kind != "rsa" else KEYS["p256"]
    leaf = _leaf(_issuer(impostor, "one CA"), impostor)
    with pytest.raises(InvalidSignature):
        IssuerKey(issuer).check(leaf, leaf.tbs_certificate_bytes)
    with pytest.raises((InvalidSignature, TypeError, ValueError)):
        leaf.verify_directly_issued_by(issuer)  # cryptography's own check agrees


def test_a_certificate_naming_another_issuer_fails_even_with_the_right_signature() -> None:
    key = KEYS["p256"]
    issuer = _issuer(key, "real CA")
    leaf = _leaf(_issuer(key, "other name"), key)
    with pytest.raises(InvalidSignature, match="issuer"):
        IssuerKey(issuer).check(leaf, leaf.tbs_certificate_bytes)


def test_a_tbs_other_than_the_signed_one_fails() -> None:
    key = KEYS["p256"]
    issuer = _issuer(key, "CA")
    leaf, other = _leaf(issuer, key), _leaf(issuer, key)
    with pytest.raises(InvalidSignature):
        IssuerKey(issuer).check(leaf, other.tbs_certificate_bytes)


def test_an_rsa_pss_signature_goes_to_cryptographys_check() -> None:
    key = KEYS["rsa"]
    issuer = _issuer(key, "PSS CA")
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
    leaf = _leaf(issuer, key, rsa_padding=pss)
    IssuerKey(issuer).check(leaf, leaf.tbs_certificate_bytes)
    other = rsa.generate_private_key(65537, 2048)
    foreign = _leaf(issuer, other, rsa_padding=pss)
    with pytest.raises(InvalidSignature):
        IssuerKey(issuer).check(foreign, foreign.tbs_certificate_bytes)


def _csr(key: CertificateIssuerPrivateKeyTypes) -> x509.CertificateSigningRequest:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name("csr.example.com"))
        .sign(key, _digest(key))
    )


@pytest.mark.parametrize("kind", KEYS)
def test_a_csr_signed_by_its_own_key_passes_and_another_key_fails(kind: str) -> None:
    csr = _csr(KEYS[kind])
    assert csr_signature_valid(csr, csr.public_key()) is True
    other = KEYS["rsa"] if kind != "rsa" else rsa.generate_private_key(65537, 2048)
    assert csr_signature_valid(csr, other.public_key()) is False


def test_a_csr_with_a_flipped_signature_bit_fails_as_cryptography_says() -> None:
    der = bytearray(_csr(KEYS["p256"]).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01
    broken = x509.load_der_x509_csr(bytes(der))
    assert csr_signature_valid(broken, broken.public_key()) is broken.is_signature_valid is False


@pytest.mark.parametrize("kind", KEYS)
def test_the_key_identifier_from_the_der_is_cryptographys(kind: str) -> None:
    public = KEYS[kind].public_key()
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert subject_key_identifier(der) == x509.SubjectKeyIdentifier.from_public_key(public)


def test_a_der_that_is_not_a_key_is_refused() -> None:
    with pytest.raises(ValueError):
        subject_key_identifier(bytes.fromhex("3003020101"))
