"""Sealed serverkeygen keys (RFC 7030 4.4.1.2, 4.4.2) on their own: `openssl cms` opens and
verifies what the server seals, the client opens it only when the server signed it, and the
server seals only to a certificate it may."""

from __future__ import annotations

import email
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from core.errors import ConfigurationError, RefusalCode
from est.admission import EstClient
from est.client import build_csr
from est.key_envelope import KeySigner, SealedKeyError, can_seal_to, open_sealed_key, seal_key
from est.key_recipients import (
    ASYMMETRIC_DECRYPT_KEY_ID,
    KeyRecipients,
    key_identifier,
    requested_key_identifier,
)
from est.refusals import EstRefusal
from est.settings import ClientEntry, EstSettings
from est.wire import (
    SERVER_GENERATED_KEY_TYPE,
    parse_csr,
    private_key_pkcs8,
    serverkeygen_body,
    split_serverkeygen,
)
from tests.openssl_cli import openssl

RecipientKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
_ROOT_KEY = ec.generate_private_key(ec.SECP256R1())
_ROOT_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Sealing Test Root")])


def issued(
    common_name: str,
    key: RecipientKey | ed25519.Ed25519PrivateKey,
    usage: x509.KeyUsage | None = None,
    *,
    with_key_identifier: bool = True,
    not_after: timedelta = timedelta(days=1),
) -> x509.Certificate:
    """A certificate for `key` from the test root."""
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(_ROOT_NAME)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=2))
        .not_valid_after(now + not_after)
    )
    if usage is not None:
        builder = builder.add_extension(usage, critical=True)
    if with_key_identifier:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    return builder.sign(_ROOT_KEY, hashes.SHA256())


def root_certificate() -> x509.Certificate:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_ROOT_NAME)
        .issuer_name(_ROOT_NAME)
        .public_key(_ROOT_KEY.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=2))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(_ROOT_KEY, hashes.SHA256())
    )


def usage(*, encipher: bool = False, agree: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=encipher,
        data_encipherment=False, key_agreement=agree, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def write_key(path: Path, key: RecipientKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def server_signer(kind: str) -> KeySigner:
    key: RecipientKey = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    # A TLS server certificate, as `casign est cert` issues: serverAuth only.
    certificate = issued("est.example.com", key, usage(encipher=kind == "rsa"))
    return KeySigner(certificate, key)


def openssl_signed_key_package(directory: Path) -> tuple[KeySigner, bytes]:
    """A server-made P-256 key in an AsymmetricKeyPackage that `openssl cms -sign` signed, as
    another EST server would (DIRECTORY/signed.p7), with its signer and the key's PKCS#8."""
    signer = server_signer("ec")
    (directory / "server.pem").write_bytes(pem(signer.certificate))
    write_key(directory / "server.key", signer.key)
    made = private_key_pkcs8(ec.generate_private_key(ec.SECP256R1()))
    (directory / "package.der").write_bytes(b"\x30\x81" + bytes([len(made)]) + made)  # < 256
    openssl(
        "cms", "-sign", "-binary", "-nodetach", "-md", "sha256", "-econtent_type",
        "2.16.840.1.101.2.1.2.78.5", "-signer", directory / "server.pem", "-inkey",
        directory / "server.key", "-outform", "DER", "-in", directory / "package.der",
        "-out", directory / "signed.p7",
    )  # fmt: skip
    return signer, made


def openssl_verified_key(directory: Path) -> bytes:
    """The public key (PEM) of the key in DIRECTORY/signed.der, a decrypted SignedData, once
    `openssl cms -verify` has checked its signature against the test root."""
    signed = directory / "signed.p7"
    signed.write_bytes(wrap_signed_data((directory / "signed.der").read_bytes()))
    (directory / "root.pem").write_bytes(pem(root_certificate()))
    verified = openssl(
        "cms", "-verify", "-inform", "DER", "-in", signed, "-CAfile", directory / "root.pem",
        "-purpose", "any", "-out", directory / "package.der",
    )  # fmt: skip
    assert "Verification successful" in verified.stderr
    # The AsymmetricKeyPackage holds one OneAsymmetricKey (at depth 1): the key the server made.
    parsed = openssl("asn1parse", "-inform", "DER", "-in", directory / "package.der").stdout
    inner = [line for line in parsed.splitlines() if "d=1" in line]
    assert len(inner) == 1
    openssl(
        "asn1parse", "-inform", "DER", "-in", directory / "package.der",
        "-offset", inner[0].split(":")[0].strip(), "-noout", "-out", directory / "key.der",
    )  # fmt: skip
    return openssl(
        "pkey", "-inform", "DER", "-in", directory / "key.der", "-pubout"
    ).stdout.encode()


RECIPIENTS = {
    "rsa-2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "p521": lambda: ec.generate_private_key(ec.SECP521R1()),
}
# What `openssl cms -cmsout -print` names the key's way to the recipient.
KEY_TRANSPORT = {
    "rsa-2048": "rsaesOaep",
    "p256": "dhSinglePass-stdDH-sha256kdf-scheme",
    "p384": "dhSinglePass-stdDH-sha384kdf-scheme",
    "p521": "dhSinglePass-stdDH-sha512kdf-scheme",
}


def wrap_signed_data(signed_der: bytes) -> bytes:
    """A ContentInfo around a bare SignedData (RFC 5652 3), which `openssl cms -verify` reads:
    the same bytes as the README's `printf ... | xxd -r -p`."""
    size = len(signed_der)
    return bytes.fromhex(f"3082{size + 15:04x}06092a864886f70d010702a082{size:04x}") + signed_der


@pytest.mark.parametrize("signer_kind", ["ec", "rsa"])
@pytest.mark.parametrize("recipient_kind", sorted(RECIPIENTS))
def test_openssl_opens_a_sealed_key_and_verifies_the_servers_signature(
    tmp_path: Path, recipient_kind: str, signer_kind: str
) -> None:
    recipient_key = RECIPIENTS[recipient_kind]()
    recipient = issued("device-0001", recipient_key)
    made = ec.generate_private_key(ec.SECP256R1())
    signer = server_signer(signer_kind)
    sealed = tmp_path / "sealed.der"
    sealed.write_bytes(seal_key(private_key_pkcs8(made), recipient, signer))
    printed = openssl("cms", "-cmsout", "-print", "-inform", "DER", "-in", sealed).stdout
    assert KEY_TRANSPORT[recipient_kind] in printed and "aes-256-cbc" in printed
    assert "pkcs7-signedData" in printed  # the SignedData is inside the encryption
    (tmp_path / "device.pem").write_bytes(pem(recipient))
    write_key(tmp_path / "device.key", recipient_key)
    openssl(
        "cms", "-decrypt", "-inform", "DER", "-in", sealed, "-recip", tmp_path / "device.pem",
        "-inkey", tmp_path / "device.key", "-out", tmp_path / "signed.der",
    )  # fmt: skip
    assert openssl_verified_key(tmp_path) == made.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signed = tmp_path / "signed.p7"
    # Another root does not vouch for the signature.
    other = tmp_path / "other.pem"
    other.write_bytes(pem(issued("stranger", ec.generate_private_key(ec.SECP256R1()))))
    refused = openssl(
        "cms", "-verify", "-inform", "DER", "-in", signed, "-CAfile", other, "-purpose", "any",
        check=False,
    )  # fmt: skip
    assert refused.returncode != 0


def test_the_client_opens_only_what_the_server_signed_for_its_key() -> None:
    recipient_key = ec.generate_private_key(ec.SECP256R1())
    recipient = issued("device-0001", recipient_key)
    signer = server_signer("ec")
    made = private_key_pkcs8(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    sealed = seal_key(made, recipient, signer)
    assert open_sealed_key(sealed, recipient, recipient_key, signer.certificate) == made
    impostor = server_signer("ec").certificate
    with pytest.raises(SealedKeyError, match="not signed by the EST server"):
        open_sealed_key(sealed, recipient, recipient_key, impostor)
    someone_key = ec.generate_private_key(ec.SECP256R1())
    someone = issued("device-0002", someone_key)
    with pytest.raises(SealedKeyError, match="not for this certificate"):
        open_sealed_key(sealed, someone, someone_key, signer.certificate)
    tampered = bytearray(sealed)
    tampered[-20] ^= 0x01  # in the encrypted content's last block
    with pytest.raises(SealedKeyError):
        open_sealed_key(bytes(tampered), recipient, recipient_key, signer.certificate)


@pytest.mark.parametrize("recipient_kind", ["rsa-2048", "p256"])
def test_the_client_opens_a_key_openssl_signed_and_sealed(
    tmp_path: Path, recipient_kind: str
) -> None:
    """Another implementation's answer: `openssl cms -sign` (a ContentInfo) then `openssl cms
    -encrypt` with its defaults (RSA PKCS#1 v1.5; ECDH with the SHA-1 KDF, content type data)."""
    recipient_key = RECIPIENTS[recipient_kind]()
    recipient = issued("device-0001", recipient_key)
    (tmp_path / "device.pem").write_bytes(pem(recipient))
    signer, made = openssl_signed_key_package(tmp_path)
    openssl(
        "cms", "-encrypt", "-binary", "-aes256", "-outform", "DER", "-in", tmp_path / "signed.p7",
        "-out", tmp_path / "sealed.der", tmp_path / "device.pem",
    )  # fmt: skip
    sealed = (tmp_path / "sealed.der").read_bytes()
    assert open_sealed_key(sealed, recipient, recipient_key, signer.certificate) == made
    with pytest.raises(SealedKeyError, match="not signed by the EST server"):
        open_sealed_key(sealed, recipient, recipient_key, server_signer("ec").certificate)


def test_a_sealed_answer_is_told_apart_from_a_pkcs8_one() -> None:
    recipient_key = ec.generate_private_key(ec.SECP256R1())
    recipient = issued("device-0001", recipient_key)
    sealed = seal_key(
        private_key_pkcs8(ec.generate_private_key(ec.SECP256R1())), recipient, server_signer("ec")
    )
    certificate_der = recipient.public_bytes(serialization.Encoding.DER)
    body, content_type = serverkeygen_body(sealed, certificate_der, SERVER_GENERATED_KEY_TYPE)
    message = email.message_from_bytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    parts = message.get_payload()
    assert isinstance(parts, list)
    assert parts[0]["Content-Type"] == SERVER_GENERATED_KEY_TYPE
    answer = split_serverkeygen(body, content_type)
    assert answer.sealed and answer.key_der == sealed and answer.certificates == [recipient]


@pytest.mark.parametrize(
    ("key", "key_usage", "reason"),
    [
        (ed25519.Ed25519PrivateKey.generate, None, "RSA or EC only"),
        (lambda: ec.generate_private_key(ec.SECP256K1()), None, "secp256k1 is not P-256"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), usage(), "lacks keyAgreement"),
        (
            lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
            usage(agree=True),
            "lacks keyEncipherment",
        ),
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024), None, "1024"),
    ],
)
def test_a_key_that_cannot_receive_one_is_named(
    key: object, key_usage: x509.KeyUsage | None, reason: str
) -> None:
    assert callable(key)
    reason_given = can_seal_to(issued("device", key(), key_usage))
    assert reason_given is not None and reason in reason_given


def test_a_key_that_can_receive_one_passes() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert can_seal_to(issued("device", rsa_key, usage(encipher=True))) is None
    assert can_seal_to(issued("device", ec.generate_private_key(ec.SECP384R1()))) is None


def test_the_csr_names_its_recipient_by_an_octet_string() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    recipient = issued("device", key, with_key_identifier=False)
    csr = parse_csr(
        build_csr(key, "device", [], recipient).public_bytes(serialization.Encoding.DER)
    )
    assert requested_key_identifier(csr) == key_identifier(recipient)
    assert (
        key_identifier(recipient)
        == x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest
    )
    assert requested_key_identifier(build_csr(key, "device", [])) is None
    as_text = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")]))
        .add_attribute(ASYMMETRIC_DECRYPT_KEY_ID, b"0123", _tag=_ASN1Type.UTF8String)
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(EstRefusal) as caught:
        requested_key_identifier(as_text)
    assert caught.value.code == RefusalCode.CSR_MALFORMED


def client_named(name: str, entry: ClientEntry) -> EstClient:
    return EstClient(name, entry, "password")


def test_only_the_connections_certificate_or_a_listed_one_is_a_recipient(tmp_path: Path) -> None:
    listed_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    listed = issued("fleet-keys", listed_key, usage(encipher=True))
    expired = issued(
        "old-keys", ec.generate_private_key(ec.SECP256R1()), not_after=timedelta(days=-1)
    )
    (tmp_path / "recipients.pem").write_bytes(pem(listed) + pem(expired))
    entry = ClientEntry(password="x", key_recipients=[str(tmp_path / "recipients.pem")])
    other = ClientEntry(password="y")
    recipients = KeyRecipients(EstSettings(clients={"fleet": entry, "other": other}))
    fleet = client_named("fleet", entry)
    assert recipients.choose(fleet, key_identifier(listed), None) == listed
    peer = issued("device", ec.generate_private_key(ec.SECP256R1()))
    assert recipients.choose(client_named("other", other), key_identifier(peer), peer) == peer

    def refused(client: EstClient, identifier: bytes, peer: x509.Certificate | None) -> EstRefusal:
        with pytest.raises(EstRefusal) as caught:
            recipients.choose(client, identifier, peer)
        return caught.value

    # Another client's listed certificate is not this one's; nor a peer it did not present.
    unknown = refused(client_named("other", other), key_identifier(listed), peer)
    assert (unknown.code, unknown.status) == (RefusalCode.EST_KEY_RECIPIENT_UNKNOWN, 403)
    assert key_identifier(listed).hex() in unknown.message
    unknown = refused(fleet, key_identifier(peer), None)
    assert unknown.code == RefusalCode.EST_KEY_RECIPIENT_UNKNOWN
    lapsed = refused(fleet, key_identifier(expired), None)
    assert (lapsed.code, lapsed.status) == (RefusalCode.EST_KEY_RECIPIENT_UNUSABLE, 400)
    signing_only = issued("device", ec.generate_private_key(ec.SECP256R1()), usage())
    unusable = refused(fleet, key_identifier(signing_only), signing_only)
    assert unusable.code == RefusalCode.EST_KEY_RECIPIENT_UNUSABLE
    assert "keyAgreement" in unusable.message


def test_a_listed_recipient_that_cannot_receive_a_key_fails_the_settings(tmp_path: Path) -> None:
    path = tmp_path / "recipients.pem"
    path.write_bytes(pem(issued("signing-only", ec.generate_private_key(ec.SECP256R1()), usage())))
    entry = ClientEntry(password="x", key_recipients=[str(path)])
    with pytest.raises(ConfigurationError, match="lacks keyAgreement"):
        KeyRecipients(EstSettings(clients={"fleet": entry}))
    missing = ClientEntry(password="x", key_recipients=[str(tmp_path / "missing.pem")])
    with pytest.raises(ConfigurationError, match="cannot read key recipient"):
        KeyRecipients(EstSettings(clients={"fleet": missing}))
