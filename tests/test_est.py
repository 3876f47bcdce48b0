"""EST end to end, with clients nobody here wrote: `curl` enrolls, `openssl` reads and verifies
what comes back, Python's `ssl` does a mutual-TLS handshake with an issued certificate.

One deployment serves the module: a real `casign worker` (its CA's producers.toml lists the
EST front-end's producer), `casign est` started as a process, and its clients added with
`casign est client add`.
"""

from __future__ import annotations

import base64
import email
import http.client
import os
import secrets
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AttributeOID, NameOID

from core.errors import RefusalCode
from core.index import format_serial
from core.revocation import revocation_info
from est.client import build_csr
from est.settings import server_cert_path, server_key_path
from tests.est_service import (
    PRODUCER,
    SERVER_NAME,
    Bootstrap,
    CurlAnswer,
    EstDeployment,
    add_password_client,
    basic,
    csr_der,
    issue_server_certificate,
    make_deployment,
    running,
    write_private,
)

pytestmark = pytest.mark.slow

SETTINGS = """\
default_label = "usr_cert"
labels = ["usr_cert", "server_cert"]
wait_seconds = 60
"""


@pytest.fixture(scope="module")
def est(
    tmp_path_factory: pytest.TempPathFactory, broker_url: str, redis_url: str
) -> Iterator[EstDeployment]:
    deployment = make_deployment(tmp_path_factory.mktemp("est"), broker_url, redis_url, SETTINGS)
    yield from running(_configured(deployment))


def _configured(deployment: EstDeployment) -> EstDeployment:
    issue_server_certificate(deployment)
    add_password_client(deployment, "fleet")
    add_password_client(deployment, "servers-only", "--label", "server_cert")
    add_password_client(deployment, "limited", "--rate", "0.01", "--burst", "1")
    write_private(deployment.directory / "sealed.passphrase", secrets.token_hex(32).encode())
    add_password_client(
        deployment, "sealed", "--key-passphrase", f"file:{deployment.directory}/sealed.passphrase"
    )
    add_password_client(deployment, "bound", "--channel-binding")
    recipient = deployment.directory / "sealing-recipient"
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{recipient}.key",
        "-out", f"{recipient}.pem", "-subj", "/CN=sealing-fleet-keys", "-days", "2",
    )  # fmt: skip
    add_password_client(deployment, "sealing", "--key-recipient", f"{recipient}.pem")
    add_password_client(deployment, "rotating", "--revoke-superseded")
    factory = Bootstrap.make(deployment.directory / "factory", "factory")
    deployment.casign(
        "est", "client", "add", "factory", "--ca", str(deployment.ca),
        "--issuer", str(factory.ca_path), "--producer", PRODUCER,
        "--secret", deployment.env["CASIGN_PRODUCER_SECRET"],
    )  # fmt: skip
    deployment.start_server()
    return deployment


@pytest.fixture(scope="module")
def factory(est: EstDeployment) -> Bootstrap:
    directory = est.directory / "factory"
    return Bootstrap(
        directory / "factory-ca.pem",
        directory / "factory-device.pem",
        directory / "factory-device.key",
    )


# --- openssl, as a device runs it ------------------------------------------------------------


def openssl(*args: str, data: bytes | None = None) -> bytes:
    done = subprocess.run(
        ["openssl", *args], input=data, capture_output=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def openssl_key_and_csr(directory: Path, name: str, subject: str, *extra: str) -> tuple[Path, Path]:
    """`openssl req -new -newkey ec` with a base64 DER CSR, as an EST device sends it."""
    key_path, der_path = directory / f"{name}.key", directory / f"{name}.csr.der"
    openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(key_path), "-subj", subject, "-outform", "DER", "-out", str(der_path),
        *extra,
    )  # fmt: skip
    return key_path, base64_file(der_path)


def csr_from_key(directory: Path, name: str, key_path: Path, subject: str, *extra: str) -> Path:
    der_path = directory / f"{name}.csr.der"
    openssl(
        "req", "-new", "-key", str(key_path), "-subj", subject, "-outform", "DER",
        "-out", str(der_path), *extra,
    )  # fmt: skip
    return base64_file(der_path)


def base64_file(der_path: Path) -> Path:
    b64_path = der_path.with_suffix(".b64")
    b64_path.write_bytes(openssl("base64", "-in", str(der_path)))
    return b64_path


def print_certs(answer: CurlAnswer) -> bytes:
    """`base64 -d | openssl pkcs7 -inform DER -print_certs` on a certs-only answer."""
    assert answer.status == 200, (answer.status, answer.body)
    assert answer.headers["content-type"].startswith("application/pkcs7-mime")
    return openssl("pkcs7", "-inform", "DER", "-print_certs", data=answer.der())


def verify(est: EstDeployment, pem: bytes, directory: Path, name: str) -> x509.Certificate:
    """`openssl verify -CAfile ca-chain.cert.pem` on the issued certificate."""
    path = directory / f"{name}.cert.pem"
    path.write_bytes(pem)
    assert openssl("verify", "-CAfile", str(est.trust_path), str(path)).strip().endswith(b"OK")
    return x509.load_pem_x509_certificates(pem)[0]


def enroll_with_curl(
    est: EstDeployment,
    body_path: Path,
    *auth: str,
    operation: str = "simpleenroll",
    label: str | None = None,
) -> CurlAnswer:
    return est.curl(
        *auth, "-H", "Content-Type: application/pkcs10", "--data-binary", f"@{body_path}",
        est.endpoint(operation, label),
    )  # fmt: skip


# --- the operations --------------------------------------------------------------------------


def test_cacerts_is_the_chain_as_certs_only_pkcs7(est: EstDeployment) -> None:
    answer = est.curl(est.endpoint("cacerts"))
    printed = print_certs(answer)
    served = x509.load_pem_x509_certificates(printed)
    assert sorted(c.subject.rfc4514_string() for c in served) == [
        "CN=Alice Ltd Intermediate CA,O=Alice Ltd,C=GB",
        "CN=Alice Ltd Root CA,O=Alice Ltd,C=GB",
    ]
    assert set(served) == set(x509.load_pem_x509_certificates(est.trust_path.read_bytes()))
    assert print_certs(est.curl(est.endpoint("cacerts", "server_cert"))) == printed


def test_the_server_certificate_is_written_only_once_it_chains_to_the_trust_anchor(
    est: EstDeployment, tmp_path: Path
) -> None:
    """`casign est cert` checks what the store answers as `casign request` does: against a
    root it was not issued under, nothing is written and the refusal names the check."""
    other_root = tmp_path / "other-root"
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{other_root}.key", "-out", f"{other_root}.pem", "-subj", "/CN=Other Root",
        "-days", "30",
    )  # fmt: skip
    cert_path, key_path = server_cert_path(est.ca), server_key_path(est.ca)
    before = cert_path.read_bytes(), key_path.read_bytes()
    done = est.casign(
        "est", "cert", "--ca", str(est.ca), "--cn", SERVER_NAME, "--san", "IP:127.0.0.1",
        "--force", "--trust-anchor", f"{other_root}.pem", check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 3, output
    assert "result.untrusted" in output
    assert (cert_path.read_bytes(), key_path.read_bytes()) == before


def test_simpleenroll_with_curl_and_basic_then_openssl_verify(
    est: EstDeployment, tmp_path: Path
) -> None:
    key_path, body = openssl_key_and_csr(tmp_path, "alice", "/CN=alice@example.com")
    answer = enroll_with_curl(est, body, "--user", basic(est, "fleet"))
    certificate = verify(est, print_certs(answer), tmp_path, "alice")
    assert certificate.subject.rfc4514_string() == "CN=alice@example.com"
    assert openssl(
        "pkey", "-in", str(key_path), "-pubout"
    ) == certificate.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in usage  # usr_cert, the default label
    # The job carries the EST client's name: the audit log and re-enrollment read it back.
    serial = format_serial(certificate.serial_number)
    assert est.store.client.hget(est.store.key("serials"), serial).startswith("est:fleet:")


def test_the_same_request_again_is_the_same_certificate(est: EstDeployment, tmp_path: Path) -> None:
    _, body = openssl_key_and_csr(tmp_path, "twice", "/CN=twice@example.com")
    first = enroll_with_curl(est, body, "--user", basic(est, "fleet"))
    again = enroll_with_curl(est, body, "--user", basic(est, "fleet"))
    assert print_certs(first) == print_certs(again)


def test_a_new_csr_for_the_same_key_is_a_new_enrollment(est: EstDeployment, tmp_path: Path) -> None:
    """ECDSA signatures differ each time: the job covers the whole CSR, never a reused id."""
    key_path, first = openssl_key_and_csr(tmp_path, "k1", "/CN=same-key@example.com")
    second = csr_from_key(tmp_path, "k2", key_path, "/CN=same-key@example.com")
    one = enroll_with_curl(est, first, "--user", basic(est, "fleet"))
    two = enroll_with_curl(est, second, "--user", basic(est, "fleet"))
    assert (one.status, two.status) == (200, 200), two.body
    assert print_certs(one) != print_certs(two)


def test_a_label_picks_the_profile(est: EstDeployment, tmp_path: Path) -> None:
    _, body = openssl_key_and_csr(
        tmp_path, "www", "/CN=www.example.com", "-addext", "subjectAltName=DNS:www.example.com"
    )
    answer = enroll_with_curl(est, body, "--user", basic(est, "fleet"), label="server_cert")
    certificate = verify(est, print_certs(answer), tmp_path, "www")
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]


def test_simpleenroll_with_a_bootstrap_certificate(
    est: EstDeployment, factory: Bootstrap, tmp_path: Path
) -> None:
    _, body = openssl_key_and_csr(tmp_path, "device", "/CN=factory-device-0001")
    answer = enroll_with_curl(
        est, body, "--cert", str(factory.cert_path), "--key", str(factory.key_path)
    )
    certificate = verify(est, print_certs(answer), tmp_path, "device")
    assert certificate.subject.rfc4514_string() == "CN=factory-device-0001"


def test_a_certificate_from_an_unlisted_ca_fails_the_handshake_and_others_go_on(
    est: EstDeployment, tmp_path: Path
) -> None:
    stranger = Bootstrap.make(tmp_path / "stranger", "stranger")
    _, body = openssl_key_and_csr(tmp_path, "stranger", "/CN=stranger-device-0001")
    refused = enroll_with_curl(
        est, body, "--cert", str(stranger.cert_path), "--key", str(stranger.key_path)
    )
    assert refused.exit_code != 0 and refused.status == 0  # TLS alert: unknown CA
    _, body = openssl_key_and_csr(tmp_path, "after", "/CN=after@example.com")
    assert enroll_with_curl(est, body, "--user", basic(est, "fleet")).status == 200


def enroll_key(est: EstDeployment, directory: Path, common_name: str) -> tuple[Path, Path]:
    """Enroll over EST with curl; the key and certificate files (certificate + chain)."""
    key_path, body = openssl_key_and_csr(directory, common_name, f"/CN={common_name}")
    pem = print_certs(enroll_with_curl(est, body, "--user", basic(est, "fleet")))
    cert_path = directory / f"{common_name}.pem"
    cert_path.write_bytes(pem)
    return key_path, cert_path


def test_simplereenroll_with_the_current_certificate(est: EstDeployment, tmp_path: Path) -> None:
    key_path, cert_path = enroll_key(est, tmp_path, "renew@example.com")
    current = x509.load_pem_x509_certificate(cert_path.read_bytes())
    new_key, body = openssl_key_and_csr(tmp_path, "renewed", "/CN=renew@example.com")
    answer = enroll_with_curl(
        est, body, "--cert", str(cert_path), "--key", str(key_path), operation="simplereenroll"
    )
    successor = verify(est, print_certs(answer), tmp_path, "renewed")
    assert successor.subject == current.subject
    assert successor.serial_number != current.serial_number
    assert openssl("pkey", "-in", str(new_key), "-pubout") == successor.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )  # rekeyed: the new CSR's key
    # The same key may be kept (renewal rather than rekey).
    same_key = csr_from_key(tmp_path, "same", key_path, "/CN=renew@example.com")
    kept = enroll_with_curl(
        est, same_key, "--cert", str(cert_path), "--key", str(key_path), operation="simplereenroll"
    )
    assert verify(est, print_certs(kept), tmp_path, "kept").public_key() == current.public_key()


def test_simplereenroll_refusals(est: EstDeployment, factory: Bootstrap, tmp_path: Path) -> None:
    key_path, cert_path = enroll_key(est, tmp_path, "holder@example.com")
    holder = ("--cert", str(cert_path), "--key", str(key_path))
    other = csr_from_key(tmp_path, "other", key_path, "/CN=mallory@example.com")
    named = csr_from_key(
        tmp_path, "named", key_path, "/CN=holder@example.com",
        "-addext", "subjectAltName=email:holder@example.com",
    )  # fmt: skip
    same = csr_from_key(tmp_path, "same", key_path, "/CN=holder@example.com")
    cases = {
        "another subject": (enroll_with_curl(est, other, *holder, operation="simplereenroll"), 400, RefusalCode.EST_SUBJECT_MISMATCH),
        "a name added": (enroll_with_curl(est, named, *holder, operation="simplereenroll"), 400, RefusalCode.EST_SAN_MISMATCH),
        "no certificate": (enroll_with_curl(est, same, "--user", basic(est, "fleet"), operation="simplereenroll"), 403, RefusalCode.EST_CERTIFICATE_REQUIRED),
        "not casign's": (enroll_with_curl(est, same, "--cert", str(factory.cert_path), "--key", str(factory.key_path), operation="simplereenroll"), 403, RefusalCode.EST_CERTIFICATE_REQUIRED),
    }  # fmt: skip
    assert {name: (a.status, a.code) for name, (a, _, _) in cases.items()} == {
        name: (status, code) for name, (_, status, code) in cases.items()
    }


def test_a_revoked_certificate_cannot_reenroll(est: EstDeployment, tmp_path: Path) -> None:
    key_path, cert_path = enroll_key(est, tmp_path, "revoked@example.com")
    serial = format_serial(x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number)
    est.casign("revoke", serial, "--reason", "keyCompromise")
    body = csr_from_key(tmp_path, "again", key_path, "/CN=revoked@example.com")
    answer = enroll_with_curl(
        est, body, "--cert", str(cert_path), "--key", str(key_path), operation="simplereenroll"
    )
    assert (answer.status, answer.code) == (403, RefusalCode.EST_CERTIFICATE_REVOKED)


def test_a_reenrollment_revokes_the_superseded_certificate_when_its_client_says_so(
    est: EstDeployment, tmp_path: Path
) -> None:
    key_path, body = openssl_key_and_csr(tmp_path, "rotating", "/CN=rotating@example.com")
    pem = print_certs(enroll_with_curl(est, body, "--user", basic(est, "rotating")))
    cert_path = tmp_path / "rotating.pem"
    cert_path.write_bytes(pem)
    old = format_serial(x509.load_pem_x509_certificate(pem).serial_number)
    _, renew = openssl_key_and_csr(tmp_path, "rotated", "/CN=rotating@example.com")
    answer = enroll_with_curl(
        est, renew, "--cert", str(cert_path), "--key", str(key_path), operation="simplereenroll"
    )
    successor = verify(est, print_certs(answer), tmp_path, "rotated")
    entry = est.store.index_entry(old)
    assert entry is not None
    revoked = revocation_info(entry)
    assert revoked is not None and revoked.reason == x509.ReasonFlags.superseded
    new_entry = est.store.index_entry(format_serial(successor.serial_number))
    assert new_entry is not None and revocation_info(new_entry) is None
    # The old certificate cannot renew again.
    again = enroll_with_curl(
        est, renew, "--cert", str(cert_path), "--key", str(key_path), operation="simplereenroll"
    )
    assert (again.status, again.code) == (403, RefusalCode.EST_CERTIFICATE_REVOKED)


def test_csrattrs_with_curl_and_openssl_asn1parse(est: EstDeployment) -> None:
    answer = est.curl(est.endpoint("csrattrs", "server_cert"))
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/csrattrs"
    parsed = openssl("asn1parse", "-inform", "DER", data=answer.der()).decode()
    for name in ("commonName", "rsaEncryption", "id-ecPublicKey", "prime256v1", "ED25519"):
        assert name in parsed
    assert "X509v3 Subject Alternative Name" in parsed
    assert est.curl(est.endpoint("csrattrs")).status == 200


def test_serverkeygen_returns_a_key_and_its_certificate_and_keeps_no_key(
    est: EstDeployment, tmp_path: Path
) -> None:
    _, body = openssl_key_and_csr(tmp_path, "keygen", "/CN=keygen@example.com")
    answer = enroll_with_curl(est, body, "--user", basic(est, "fleet"), operation="serverkeygen")
    assert answer.status == 200, answer.body
    message = email.message_from_bytes(
        b"Content-Type: " + answer.headers["content-type"].encode() + b"\r\n\r\n" + answer.body
    )
    parts = message.get_payload()
    assert isinstance(parts, list) and len(parts) == 2
    key_der = parts[0].get_payload(decode=True)
    assert parts[0].get_content_type() == "application/pkcs8"
    key_text = openssl("pkey", "-inform", "DER", "-pubout", data=key_der)
    pem = openssl("pkcs7", "-inform", "DER", "-print_certs", data=parts[1].get_payload(decode=True))
    certificate = verify(est, pem, tmp_path, "keygen")
    assert certificate.subject.rfc4514_string() == "CN=keygen@example.com"
    assert key_text == certificate.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # The key is in no value of the store: not as PEM or base64 DER, not as its scalar in hex.
    scalar = serialization.load_der_private_key(key_der, None).private_numbers().private_value  # type: ignore[union-attr]
    markers = ("PRIVATE KEY", base64.b64encode(key_der[:48]).decode(), f"{scalar:x}")
    for key in est.store.client.scan_iter(match=f"{est.store.prefix}*", count=1000):
        kind = est.store.client.type(key)
        values = (
            est.store.client.hvals(key) if kind == "hash"
            else est.store.client.lrange(key, 0, -1) if kind == "list"
            else [est.store.client.get(key)] if kind == "string" else []
        )  # fmt: skip
        assert not any(marker in str(value) for value in values for marker in markers), key


def serverkeygen_parts(answer: CurlAnswer) -> tuple[bytes, bytes]:
    """(key DER, certs-only DER) of a multipart serverkeygen answer, read by Python's MIME parser."""
    assert answer.status == 200, answer.body
    message = email.message_from_bytes(
        b"Content-Type: " + answer.headers["content-type"].encode() + b"\r\n\r\n" + answer.body
    )
    parts = message.get_payload()
    assert isinstance(parts, list) and len(parts) == 2
    assert parts[0].get_content_type() == "application/pkcs8"
    return parts[0].get_payload(decode=True), parts[1].get_payload(decode=True)


def test_serverkeygen_encrypts_the_key_under_the_clients_passphrase(
    est: EstDeployment, tmp_path: Path
) -> None:
    """RFC 7030 4.4.2: a client with a key passphrase gets an encrypted PKCS#8 (PBES2, AES-256),
    which `openssl pkcs8` opens with that passphrase and nothing else."""
    _, body = openssl_key_and_csr(tmp_path, "sealed", "/CN=sealed@example.com")
    answer = enroll_with_curl(est, body, "--user", basic(est, "sealed"), operation="serverkeygen")
    key_der, certs_der = serverkeygen_parts(answer)
    structure = openssl("asn1parse", "-inform", "DER", data=key_der).decode()
    assert "PBES2" in structure and "aes-256-cbc" in structure and "hmacWithSHA256" in structure
    key_path = tmp_path / "sealed.key.der"
    key_path.write_bytes(key_der)
    passphrase = f"file:{est.directory}/sealed.passphrase"
    opened = openssl(
        "pkcs8", "-inform", "DER", "-in", str(key_path), "-passin", passphrase, "-topk8", "-nocrypt"
    )  # fmt: skip
    public = openssl("pkey", "-pubout", data=opened)
    certificate = verify(
        est, openssl("pkcs7", "-inform", "DER", "-print_certs", data=certs_der), tmp_path, "sealed"
    )
    assert public == certificate.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    wrong = subprocess.run(
        ["openssl", "pkcs8", "-inform", "DER", "-in", str(key_path), "-passin", "pass:" + "0" * 64],
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert wrong.returncode != 0 and b"PRIVATE KEY" not in wrong.stdout


# --- serverkeygen's key sealed to a certificate (RFC 7030 4.4.1.2, 4.4.2) ------------------


def sealing_csr(directory: Path, name: str, recipient_path: Path) -> Path:
    """A base64 CSR whose AsymmetricDecryptKeyIdentifier names the certificate at
    `recipient_path` (openssl req cannot add an OCTET STRING attribute, so Python makes it)."""
    recipient = x509.load_pem_x509_certificates(recipient_path.read_bytes())[0]
    csr = build_csr(ec.generate_private_key(ec.SECP256R1()), name, [], recipient)
    der_path = directory / f"{name}.csr.der"
    der_path.write_bytes(csr.public_bytes(serialization.Encoding.DER))
    return base64_file(der_path)


def open_with_openssl(
    est: EstDeployment, answer: CurlAnswer, directory: Path, *decrypt_with: str
) -> tuple[bytes, x509.Certificate]:
    """`openssl cms -decrypt` the sealed key part with `decrypt_with` (`-recip CERT -inkey KEY`,
    or `-secretkey HEX -secretkeyid HEX`), `openssl cms -verify` the SignedData inside against
    the CA chain; (the key's public PEM, the issued certificate). Also checks that the signer is
    the EST server's own TLS certificate."""
    assert answer.status == 200, answer.body
    message = email.message_from_bytes(
        b"Content-Type: " + answer.headers["content-type"].encode() + b"\r\n\r\n" + answer.body
    )
    parts = message.get_payload()
    assert isinstance(parts, list) and len(parts) == 2
    assert parts[0]["Content-Type"] == "application/pkcs7-mime; smime-type=server-generated-key"
    sealed = directory / "sealed.der"
    sealed.write_bytes(parts[0].get_payload(decode=True))
    signed = directory / "signed.der"
    openssl(
        "cms", "-decrypt", "-inform", "DER", "-in", str(sealed), *decrypt_with,
        "-out", str(signed),
    )  # fmt: skip
    size = signed.stat().st_size  # a ContentInfo around the bare SignedData, for openssl
    wrapped = directory / "signed.p7"
    wrapped.write_bytes(
        bytes.fromhex(f"3082{size + 15:04x}06092a864886f70d010702a082{size:04x}")
        + signed.read_bytes()
    )
    package, signer = directory / "package.der", directory / "signer.pem"
    openssl(
        "cms", "-verify", "-inform", "DER", "-in", str(wrapped), "-CAfile", str(est.trust_path),
        "-purpose", "any", "-signer", str(signer), "-out", str(package),
    )  # fmt: skip
    server = x509.load_pem_x509_certificates(
        (est.ca / "intermediate" / "certs" / "est.cert.pem").read_bytes()
    )[0]
    assert x509.load_pem_x509_certificate(signer.read_bytes()) == server
    parsed = openssl("asn1parse", "-inform", "DER", "-in", str(package)).decode()
    (offset,) = [line.split(":")[0].strip() for line in parsed.splitlines() if "d=1" in line]
    key_der = openssl(
        "asn1parse", "-inform", "DER", "-in", str(package), "-offset", offset, "-noout",
        "-out", "/dev/stdout",
    )  # fmt: skip
    public = openssl("pkey", "-inform", "DER", "-pubout", data=key_der)
    pem = openssl("pkcs7", "-inform", "DER", "-print_certs", data=parts[1].get_payload(decode=True))
    return public, verify(est, pem, directory, "sealed")


def public_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_serverkeygen_seals_the_key_to_the_devices_tls_certificate(
    est: EstDeployment, factory: Bootstrap, tmp_path: Path
) -> None:
    """A device asks, with curl, for its key sealed to the certificate it does TLS with (EC,
    so ECDH); openssl opens it with the device's key and checks the server signed it."""
    body = sealing_csr(tmp_path, "factory-device-0001", factory.cert_path)
    answer = enroll_with_curl(
        est, body, "--cert", str(factory.cert_path), "--key", str(factory.key_path),
        operation="serverkeygen",
    )  # fmt: skip
    public, certificate = open_with_openssl(
        est, answer, tmp_path, "-recip", str(factory.cert_path), "-inkey", str(factory.key_path)
    )
    assert public == public_pem(certificate)
    assert certificate.subject.rfc4514_string() == "CN=factory-device-0001"


def test_serverkeygen_seals_to_a_listed_certificate_and_refuses_any_other(
    est: EstDeployment, tmp_path: Path
) -> None:
    recipient = est.directory / "sealing-recipient"
    body = sealing_csr(tmp_path, "sealed-rsa@example.com", Path(f"{recipient}.pem"))
    answer = enroll_with_curl(est, body, "--user", basic(est, "sealing"), operation="serverkeygen")
    public, certificate = open_with_openssl(
        est, answer, tmp_path, "-recip", f"{recipient}.pem", "-inkey", f"{recipient}.key"
    )
    assert public == public_pem(certificate)
    # Not another client's recipient, nor a certificate nobody listed.
    taken = enroll_with_curl(est, body, "--user", basic(est, "fleet"), operation="serverkeygen")
    assert (taken.status, taken.code) == (403, RefusalCode.EST_KEY_RECIPIENT_UNKNOWN)
    stranger_key, _ = openssl_key_and_csr(tmp_path, "stranger", "/CN=stranger@example.com")
    stranger = tmp_path / "stranger.pem"
    openssl(
        "req", "-x509", "-key", str(stranger_key), "-subj", "/CN=stranger", "-days", "1",
        "-out", str(stranger),
    )  # fmt: skip
    unknown = enroll_with_curl(
        est, sealing_csr(tmp_path, "stranger@example.com", stranger), "--user",
        basic(est, "sealing"), operation="serverkeygen",
    )  # fmt: skip
    assert (unknown.status, unknown.code) == (403, RefusalCode.EST_KEY_RECIPIENT_UNKNOWN)
    # A casign EC usr_cert may sign but not agree keys: TLS with it, and it is named, but unusable.
    key_path, cert_path = enroll_key(est, tmp_path, "signer@example.com")
    unusable = enroll_with_curl(
        est, sealing_csr(tmp_path, "signer@example.com", cert_path), "--user", basic(est, "fleet"),
        "--cert", str(cert_path), "--key", str(key_path), operation="serverkeygen",
    )  # fmt: skip
    assert (unusable.status, unusable.code) == (400, RefusalCode.EST_KEY_RECIPIENT_UNUSABLE)
    assert "keyAgreement" in unusable.body.decode()


# --- channel binding (RFC 7030 3.5) ----------------------------------------------------------


def bound_connection(est: EstDeployment, tls_max: ssl.TLSVersion) -> http.client.HTTPSConnection:
    host, port = est.url.removeprefix("https://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(est.trust_path))
    context.maximum_version = tls_max
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=60)
    connection.connect()
    return connection


def bound_csr(common_name: str, challenge: bytes | None) -> bytes:
    """A base64 CSR whose challengePassword is `challenge` (a base64 tls-unique value)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    if challenge is not None:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge)
    csr = builder.sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    return base64.b64encode(csr.public_bytes(serialization.Encoding.DER))


def post_on(
    connection: http.client.HTTPSConnection, est: EstDeployment, client: str, body: bytes
) -> tuple[int, bytes]:
    credentials = base64.b64encode(basic(est, client).encode()).decode()
    connection.request(
        "POST", "/.well-known/est/simpleenroll", body=body,
        headers={"Content-Type": "application/pkcs10", "Authorization": f"Basic {credentials}"},
    )  # fmt: skip
    response = connection.getresponse()
    return response.status, response.read()


def test_a_bound_client_proves_its_csr_was_made_on_this_tls_session(est: EstDeployment) -> None:
    """The CSR carries base64(tls-unique) of the TLS 1.2 session that sends it (Python's ssl
    computes the value on the client side); another session's value, none, or a TLS 1.3 session
    (which has no tls-unique) are refused with a stable code."""
    connection = bound_connection(est, ssl.TLSVersion.TLSv1_2)
    assert connection.sock.version() == "TLSv1.2"  # type: ignore[union-attr]
    binding = connection.sock.get_channel_binding("tls-unique")  # type: ignore[union-attr]
    assert binding
    status, answer = post_on(
        connection, est, "bound", bound_csr("bound@example.com", base64.b64encode(binding))
    )
    assert status == 200, answer
    # The same session's value on another session: what a relay in the middle would send.
    other = bound_connection(est, ssl.TLSVersion.TLSv1_2)
    status, answer = post_on(
        other, est, "bound", bound_csr("bound@example.com", base64.b64encode(binding))
    )
    assert (status, answer.split(b":")[0]) == (403, RefusalCode.EST_CHANNEL_BINDING.encode())
    status, answer = post_on(other, est, "bound", bound_csr("bound@example.com", None))
    assert (status, answer.split(b":")[0]) == (403, RefusalCode.EST_CHANNEL_BINDING.encode())
    newer = bound_connection(est, ssl.TLSVersion.TLSv1_3)
    assert newer.sock.version() == "TLSv1.3"  # type: ignore[union-attr]
    status, answer = post_on(newer, est, "bound", bound_csr("bound@example.com", b"AAAA"))
    assert status == 403, answer
    assert answer.startswith(RefusalCode.EST_CHANNEL_BINDING_UNAVAILABLE.encode() + b":")
    assert b"TLS 1.2" in answer
    # A client not held to it enrolls over TLS 1.3 without one, as before.
    status, _ = post_on(newer, est, "fleet", bound_csr("free@example.com", None))
    assert status == 200
    for each in (connection, other, newer):
        each.close()


# --- Python's ssl, a mutual-TLS handshake with an issued certificate ------------------------


def test_python_ssl_mutual_tls_with_an_issued_certificate(
    est: EstDeployment, tmp_path: Path
) -> None:
    key_path, cert_path = enroll_key(est, tmp_path, "mtls@example.com")
    context = ssl.create_default_context(cafile=str(est.trust_path))
    context.load_cert_chain(cert_path, key_path)
    host, port = est.url.removeprefix("https://").rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        peer = tls.getpeercert()
        assert ("DNS", SERVER_NAME) in peer["subjectAltName"]
        assert ("IP Address", "127.0.0.1") in peer["subjectAltName"]
        body = base64.b64encode(
            csr_der("mtls@example.com", key=ec.generate_private_key(ec.SECP256R1()))
        )
        tls.sendall(
            b"POST /.well-known/est/simplereenroll HTTP/1.1\r\nHost: " + SERVER_NAME.encode()
            + b"\r\nContent-Type: application/pkcs10\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )  # fmt: skip
        response = http.client.HTTPResponse(tls)  # type: ignore[arg-type]
        response.begin()
        answer = response.read()
    assert response.status == 200, answer  # the server saw and accepted our certificate
    assert response.getheader("Content-Type", "").startswith("application/pkcs7-mime")


def test_tls_below_1_2_is_refused(est: EstDeployment) -> None:
    done = subprocess.run(
        ["curl", "--silent", "--cacert", str(est.trust_path), "--tlsv1.0", "--tls-max", "1.1",
         est.endpoint("cacerts")],
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode != 0


# --- bad input: a 4xx with a stable reason, while others are served -------------------------


def bad_requests(
    est: EstDeployment, directory: Path
) -> dict[str, tuple[Callable[[], CurlAnswer], int, str]]:
    _, good = openssl_key_and_csr(directory, "probe", "/CN=probe@example.com")
    not_base64 = directory / "not-base64"
    not_base64.write_bytes(b"this is not base64 at all!\n")
    not_csr = directory / "not-csr"
    not_csr.write_bytes(base64.b64encode(b"\x30\x03\x02\x01\x01"))
    large = directory / "large"
    large.write_bytes(base64.b64encode(b"\x00" * 100_000))
    weak_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    weak = directory / "weak"
    weak.write_bytes(base64.b64encode(csr_der("weak@example.com", key=weak_key)))  # type: ignore[arg-type]
    fleet = ("--user", basic(est, "fleet"))

    def post(
        path: Path, *args: str, label: str | None = None, content_type: str = "application/pkcs10"
    ) -> Callable[[], CurlAnswer]:
        return lambda: est.curl(
            *args, "-H", f"Content-Type: {content_type}", "--data-binary", f"@{path}",
            est.endpoint("simpleenroll", label),
        )  # fmt: skip

    return {
        "not base64": (post(not_base64, *fleet), 400, RefusalCode.EST_NOT_BASE64),
        "not a CSR": (post(not_csr, *fleet), 400, RefusalCode.CSR_MALFORMED),
        "too large": (post(large, *fleet), 413, RefusalCode.CSR_TOO_LARGE),
        "wrong content type": (post(good, *fleet, content_type="text/plain"), 415, RefusalCode.EST_CONTENT_TYPE),
        "unknown label": (post(good, *fleet, label="nosuch"), 404, RefusalCode.EST_UNKNOWN_LABEL),
        "unknown operation": (lambda: est.curl(est.endpoint("fullcmc")), 404, RefusalCode.EST_UNKNOWN_OPERATION),
        "wrong method": (lambda: est.curl("-X", "POST", est.endpoint("cacerts")), 405, RefusalCode.EST_METHOD_NOT_ALLOWED),
        "unauthenticated": (post(good), 401, RefusalCode.EST_UNAUTHENTICATED),
        "wrong password": (post(good, "--user", "fleet:not-the-password"), 401, RefusalCode.EST_BAD_CREDENTIALS),
        "label not allowed": (post(good, "--user", basic(est, "servers-only")), 403, RefusalCode.AUTH_PROFILE_NOT_ALLOWED),
        "refused by policy": (post(weak, *fleet), 400, RefusalCode.KEY_RSA_TOO_SMALL),
        "name not allowed": (post(base64_file(_der(directory, "evil", "eve@evil.test")), *fleet), 403, RefusalCode.AUTH_NAME_NOT_ALLOWED),
    }  # fmt: skip


def _der(directory: Path, name: str, common_name: str) -> Path:
    path = directory / f"{name}.der"
    path.write_bytes(csr_der(common_name))
    return path


def test_bad_input_gets_a_stable_reason_while_others_enroll(
    est: EstDeployment, tmp_path: Path
) -> None:
    cases = bad_requests(est, tmp_path)
    goods = [
        openssl_key_and_csr(tmp_path, f"good{index}", f"/CN=good{index}@example.com")[1]
        for index in range(6)
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        bad = {name: pool.submit(call) for name, (call, _, _) in cases.items()}
        good = [
            pool.submit(enroll_with_curl, est, body, "--user", basic(est, "fleet"))
            for body in goods
        ]
        answers = {name: future.result() for name, future in bad.items()}
        enrolled = [future.result() for future in good]
    assert {name: (a.status, a.code) for name, a in answers.items()} == {
        name: (status, code) for name, (_, status, code) in cases.items()
    }
    for answer in answers.values():
        assert answer.headers["content-type"].startswith("text/plain")
        assert b"Traceback" not in answer.body
    assert answers["unauthenticated"].headers["www-authenticate"].startswith("Basic realm=")
    assert all(answer.status == 200 for answer in enrolled)
    assert "Traceback" not in est.server_log.read_text()


def test_a_client_over_its_rate_is_told_when_to_retry(est: EstDeployment, tmp_path: Path) -> None:
    _, first = openssl_key_and_csr(tmp_path, "rate1", "/CN=rate1@example.com")
    _, second = openssl_key_and_csr(tmp_path, "rate2", "/CN=rate2@example.com")
    assert enroll_with_curl(est, first, "--user", basic(est, "limited")).status == 200
    limited = enroll_with_curl(est, second, "--user", basic(est, "limited"))
    assert (limited.status, limited.code) == (429, RefusalCode.AUTH_RATE_LIMITED)
    assert int(limited.headers["retry-after"]) >= 1
    assert enroll_with_curl(est, second, "--user", basic(est, "fleet")).status == 200


# --- casign est enroll | reenroll | cacerts ---------------------------------------------------


def test_the_casign_est_client_enrolls_renews_and_fetches_the_chain(
    est: EstDeployment, tmp_path: Path
) -> None:
    server = ("--server", est.url, "--cacert", str(est.trust_path))
    fleet = ("--user", "fleet", "--password-file", str(est.passwords["fleet"]))
    out = tmp_path / "out"
    est.casign("est", "enroll", *server, *fleet, "--cn", "carol@example.com", "--out", str(out))
    key_path, cert_path = out / "carol@example.com.key.pem", out / "carol@example.com.cert.pem"
    chain_path = out / "ca-chain.cert.pem"
    assert key_path.stat().st_mode & 0o777 == 0o400
    assert openssl("verify", "-CAfile", str(chain_path), str(cert_path)).strip().endswith(b"OK")
    chain = x509.load_pem_x509_certificates(chain_path.read_bytes())
    assert [c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value for c in chain] == [
        "Alice Ltd Intermediate CA",
        "Alice Ltd Root CA",
    ]
    renewed = tmp_path / "renewed"
    est.casign(
        "est", "reenroll", *server, "--cert", str(cert_path), "--key", str(key_path),
        "--out", str(renewed),
    )  # fmt: skip
    successor = x509.load_pem_x509_certificate(
        (renewed / "carol@example.com.cert.pem").read_bytes()
    )
    first = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert successor.subject == first.subject and successor.serial_number != first.serial_number
    keygen = tmp_path / "keygen"
    est.casign(
        "est", "enroll", *server, *fleet, "--cn", "dave@example.com", "--serverkeygen",
        "--out", str(keygen),
    )  # fmt: skip
    made = serialization.load_pem_private_key(
        (keygen / "dave@example.com.key.pem").read_bytes(), password=None
    )
    issued = x509.load_pem_x509_certificate((keygen / "dave@example.com.cert.pem").read_bytes())
    assert made.public_key() == issued.public_key()
    printed = est.casign("est", "cacerts", *server).stdout
    assert x509.load_pem_x509_certificates(printed.encode()) == chain
    refused = est.casign(
        "est", "enroll", *server, "--user", "fleet", "--password-file", str(est.passwords["limited"]),
        "--cn", "eve@example.com", "--out", str(tmp_path / "eve"), check=False,
    )  # fmt: skip
    assert refused.returncode == 3
    assert "refused [est.bad_credentials]" in refused.stderr


def test_a_factory_device_enrolls_with_the_casign_client(
    est: EstDeployment, factory: Bootstrap, tmp_path: Path
) -> None:
    done = est.casign(
        "est", "enroll", "--server", est.url, "--cacert", str(est.trust_path),
        "--cert", str(factory.cert_path), "--key", str(factory.key_path),
        "--cn", "factory-device-0001", "--out", str(tmp_path),
    )  # fmt: skip
    assert "certificate:" in done.stdout
    issued = x509.load_pem_x509_certificate(
        (tmp_path / "factory-device-0001.cert.pem").read_bytes()
    )
    assert issued.issuer.rfc4514_string() == "CN=Alice Ltd Intermediate CA,O=Alice Ltd,C=GB"


def test_the_casign_est_client_has_its_key_sealed_and_opens_it(
    est: EstDeployment, factory: Bootstrap, tmp_path: Path
) -> None:
    server = ("--server", est.url, "--cacert", str(est.trust_path))
    done = est.casign(
        "est", "enroll", *server, "--cert", str(factory.cert_path), "--key", str(factory.key_path),
        "--cn", "factory-device-0001", "--serverkeygen", "--seal-key", "--out", str(tmp_path / "tls"),
    )  # fmt: skip
    assert "sealed to its recipient" in done.stdout
    recipient = est.directory / "sealing-recipient"
    sealing = ("--user", "sealing", "--password-file", str(est.passwords["sealing"]))
    est.casign(
        "est", "enroll", *server, *sealing, "--cn", "erin@example.com", "--serverkeygen",
        "--seal-key", "--recipient", f"{recipient}.pem", "--recipient-key", f"{recipient}.key",
        "--out", str(tmp_path / "basic"),
    )  # fmt: skip
    for out, name in (("tls", "factory-device-0001"), ("basic", "erin@example.com")):
        key_path = tmp_path / out / f"{name}.key.pem"
        assert key_path.stat().st_mode & 0o777 == 0o400
        made = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        issued = x509.load_pem_x509_certificate((tmp_path / out / f"{name}.cert.pem").read_bytes())
        assert made.public_key() == issued.public_key()
    fleet = ("--user", "fleet", "--password-file", str(est.passwords["fleet"]))
    refused = est.casign(
        "est", "enroll", *server, *fleet, "--cn", "frank@example.com", "--serverkeygen",
        "--seal-key", "--recipient", f"{recipient}.pem", "--recipient-key", f"{recipient}.key",
        "--out", str(tmp_path / "refused"), check=False,
    )  # fmt: skip
    assert refused.returncode == 3
    assert f"refused [{RefusalCode.EST_KEY_RECIPIENT_UNKNOWN}]" in refused.stderr
    assert not (tmp_path / "refused").exists()


def test_many_concurrent_enrollments_are_all_answered(est: EstDeployment) -> None:
    """32 clients on 32 connections send at the same moment; each gets its certificate."""
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(32)]
    bodies = [
        base64.b64encode(csr_der(f"bulk{index}@example.com", key=key))
        for index, key in enumerate(keys)
    ]
    host, port = est.url.removeprefix("https://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(est.trust_path))
    credentials = base64.b64encode(basic(est, "fleet").encode()).decode()
    barrier = threading.Barrier(len(bodies))

    def enroll(body: bytes) -> int:
        connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=60)
        connection.connect()
        barrier.wait()
        connection.request(
            "POST", "/.well-known/est/simpleenroll", body=body,
            headers={"Content-Type": "application/pkcs10", "Authorization": f"Basic {credentials}"},
        )  # fmt: skip
        status = connection.getresponse().status
        connection.close()
        return status

    before = est.store.count_issued()
    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        statuses = list(pool.map(enroll, bodies))
    assert statuses == [200] * len(bodies)
    assert est.store.count_issued() - before == len(bodies)


# --- what the store answers is checked against the trust anchor -----------------------------


def test_a_planted_certificate_is_never_served(est: EstDeployment, tmp_path: Path) -> None:
    """Whoever writes to the store swaps an issued certificate for one a CA of their own made
    (same subject, key and serial): the client asking again gets 502 result.untrusted, not it."""
    _key_path, body = openssl_key_and_csr(tmp_path, "planted", "/CN=planted@example.com")
    genuine = x509.load_pem_x509_certificate(
        print_certs(enroll_with_curl(est, body, "--user", basic(est, "fleet")))
    )
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    forged = (
        x509.CertificateBuilder()
        .subject_name(genuine.subject)
        .issuer_name(genuine.issuer)  # claims the real intermediate
        .public_key(genuine.public_key())
        .serial_number(genuine.serial_number)
        .not_valid_before(genuine.not_valid_before_utc)
        .not_valid_after(genuine.not_valid_after_utc)
        .sign(rogue_key, hashes.SHA256())
    )
    serial = format_serial(genuine.serial_number)
    forged_pem = forged.public_bytes(serialization.Encoding.PEM).decode()
    est.store.client.hset(est.store.keys.certs, serial, forged_pem)
    answer = enroll_with_curl(est, body, "--user", basic(est, "fleet"))
    assert (answer.status, answer.code) == (502, RefusalCode.RESULT_UNTRUSTED), answer.body
    assert b"BEGIN" not in answer.body and b"trust anchor" in answer.body
    assert base64.b64encode(forged.public_bytes(serialization.Encoding.DER)[:48]) not in answer.body


# --- est.toml read again while serving (kept last: it rewrites the file) ---------------------


def test_est_toml_is_reloaded_when_it_changes_and_a_bad_file_keeps_the_old(
    est: EstDeployment, tmp_path: Path
) -> None:
    _, body = openssl_key_and_csr(tmp_path, "late", "/CN=late@example.com")
    assert enroll_with_curl(est, body, "--user", "late:whatever").status == 401
    add_password_client(est, "late")  # `casign est client add` while the server runs

    def until(done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 15
        while not done():
            assert time.monotonic() < deadline, f"{what}:\n{est.server_log.read_text()[-2000:]}"
            time.sleep(0.2)

    until(lambda: enroll_with_curl(est, body, "--user", basic(est, "late")).status == 200, "reload")
    path = est.ca / "intermediate" / "est.toml"
    good = path.read_text()
    try:
        path.write_text(good + "\n[clients.broken]\nlabels = 7\n")
        until(lambda: "not reloaded" in est.server_log.read_text(), "a bad file named")
        assert "clients.broken" in est.server_log.read_text()
        _, again = openssl_key_and_csr(tmp_path, "late2", "/CN=late@example.com")
        assert enroll_with_curl(est, again, "--user", basic(est, "late")).status == 200
        # SIGHUP reads the file at once, changed or not.
        assert est.server is not None
        os.kill(est.server.pid, signal.SIGHUP)
        until(lambda: est.server_log.read_text().count("not reloaded") >= 2, "SIGHUP")
    finally:
        path.write_text(good)
    until(lambda: est.server_log.read_text().count("est.toml reloaded") >= 2, "restored")
