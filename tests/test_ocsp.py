"""The OCSP responder, asked by the real `openssl ocsp` client, and its delegated certificate."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core.index import format_serial
from ocsp.responder import OCSPServer, make_server, ocsp_cert_path, ocsp_key_path
from store.results import ResultsStore
from store.revocations import RevocationStore
from tests.cas import make_alice_ca
from tests.csrs import job, make_csr
from worker.authority import SigningAuthority, load_authority
from worker.cafolder import CAFolder
from worker.issuance import BatchSigner
from worker.ocsp_delegate import RENEW_WITHIN, ensure_ocsp_certificate

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


@pytest.fixture(scope="module")
def ocsp_ca(tmp_path_factory: pytest.TempPathFactory) -> CAFolder:
    """A CA of its own: the delegate's key and certificate are written into it."""
    return make_alice_ca(tmp_path_factory.mktemp("ocsp") / "ca")


@pytest.fixture(scope="module")
def ocsp_authority(ocsp_ca: CAFolder) -> SigningAuthority:
    return load_authority(ocsp_ca.root)


@pytest.fixture
def responder(
    ocsp_ca: CAFolder, ocsp_authority: SigningAuthority, store: ResultsStore
) -> Iterator[OCSPServer]:
    ensure_ocsp_certificate(ocsp_ca, ocsp_authority, store)
    server = make_server(ocsp_ca.root, store, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def url(server: OCSPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}"


def issue_pem(authority: SigningAuthority, store: ResultsStore, name: str) -> tuple[str, str]:
    (result,) = BatchSigner(authority, store).sign_batch([job(name, make_csr(name))])
    assert result.ok and result.serial and result.certificate_pem
    return result.serial, result.certificate_pem


def never_recorded(authority: SigningAuthority) -> str:
    """A certificate signed by the intermediate but absent from the store."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ghost.example.com")]))
        .issuer_name(authority.intermediate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(authority.key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def ask_openssl(
    ca: CAFolder, server: OCSPServer, pem: str, tmp_path: Path, *options: str
) -> subprocess.CompletedProcess[str]:
    leaf = tmp_path / f"leaf-{time.monotonic_ns()}.pem"
    leaf.write_text(pem)
    command = ["openssl", "ocsp", "-issuer", str(ca.intermediate_cert_path), "-cert", str(leaf),
               "-url", url(server), "-CAfile", str(ca.chain_path), *options]  # fmt: skip
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
        check=False,
    )


def test_openssl_says_good_revoked_and_unknown(
    ocsp_ca: CAFolder,
    ocsp_authority: SigningAuthority,
    store: ResultsStore,
    responder: OCSPServer,
    tmp_path: Path,
) -> None:
    _, good = issue_pem(ocsp_authority, store, "good.example.com")
    revoked_serial, revoked = issue_pem(ocsp_authority, store, "revoked.example.com")
    RevocationStore(store).revoke(revoked_serial, "keyCompromise")

    answers = {
        "good": ask_openssl(ocsp_ca, responder, good, tmp_path),
        "revoked": ask_openssl(ocsp_ca, responder, revoked, tmp_path),
        "unknown": ask_openssl(ocsp_ca, responder, never_recorded(ocsp_authority), tmp_path),
    }

    for status, answer in answers.items():
        assert answer.returncode == 0, answer.stderr
        assert "Response verify OK" in answer.stderr + answer.stdout, answer.stderr
        assert f".pem: {status}\n" in answer.stdout, answer.stdout
        assert "WARNING" not in answer.stdout + answer.stderr  # openssl sends a nonce by default
    assert "Reason: keyCompromise" in answers["revoked"].stdout
    assert "Revocation Time:" in answers["revoked"].stdout


def test_nonce_is_echoed_and_optional(
    ocsp_ca: CAFolder,
    ocsp_authority: SigningAuthority,
    store: ResultsStore,
    responder: OCSPServer,
    tmp_path: Path,
) -> None:
    _, pem = issue_pem(ocsp_authority, store, "nonce.example.com")
    with_nonce = ask_openssl(ocsp_ca, responder, pem, tmp_path, "-nonce", "-resp_text")
    without = ask_openssl(ocsp_ca, responder, pem, tmp_path, "-no_nonce", "-resp_text")
    assert with_nonce.returncode == 0 and without.returncode == 0, with_nonce.stderr
    assert "OCSP Nonce" in with_nonce.stdout and "OCSP Nonce" not in without.stdout
    assert ": good" in with_nonce.stdout and ": good" in without.stdout
    assert "nonce" not in (with_nonce.stderr + without.stderr).lower()


def post(server: OCSPServer, body: bytes, content_type: str = "application/ocsp-request") -> bytes:
    request = urllib.request.Request(
        url(server) + "/", data=body, headers={"Content-Type": content_type}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/ocsp-response"
        return bytes(response.read())


def get(server: OCSPServer, path: str) -> bytes:
    with urllib.request.urlopen(url(server) + "/" + path, timeout=10) as response:
        return bytes(response.read())


@pytest.mark.parametrize(
    "body",
    [b"\x30\x03\x02\x01\x01", b"not DER at all", b"\x30" * 4000, b"\x30\x80" + b"\x00" * 10],
)
def test_malformed_posts_get_malformed_request(responder: OCSPServer, body: bytes) -> None:
    answer = ocsp.load_der_ocsp_response(post(responder, body))
    assert answer.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_openssl_reads_the_malformed_request_answer(
    ocsp_ca: CAFolder, responder: OCSPServer, tmp_path: Path
) -> None:
    # openssl's client will not send garbage, so it reads the answer to garbage sent by hand.
    answer_path = tmp_path / "answer.der"
    answer_path.write_bytes(post(responder, b"\x30\x03\x02\x01\x01"))
    shown = subprocess.run(
        ["openssl", "ocsp", "-respin", str(answer_path), "-resp_text", "-noverify"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30, check=False,
    )  # fmt: skip
    assert "Responder Error: malformedrequest (1)" in shown.stdout, shown.stdout


def test_get_with_a_base64_request_and_garbage_paths(
    ocsp_ca: CAFolder,
    ocsp_authority: SigningAuthority,
    store: ResultsStore,
    responder: OCSPServer,
) -> None:
    _, pem = issue_pem(ocsp_authority, store, "get.example.com")
    certificate = x509.load_pem_x509_certificate(pem.encode())
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(certificate, ocsp_authority.intermediate, hashes.SHA256())
        .add_extension(x509.OCSPNonce(b"0123456789abcdef"), critical=False)
        .build()
    )
    encoded = base64.b64encode(request.public_bytes(serialization.Encoding.DER)).decode()

    answer = ocsp.load_der_ocsp_response(get(responder, urllib.parse.quote(encoded, safe="")))

    assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert answer.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert answer.serial_number == certificate.serial_number
    assert answer.hash_algorithm.name == "sha256"
    nonce = answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    assert nonce == b"0123456789abcdef"
    delegate = x509.load_pem_x509_certificate(ocsp_cert_path(ocsp_ca.root).read_bytes())
    assert answer.certificates == [delegate]
    delegate_key = delegate.public_key()
    assert isinstance(delegate_key, ec.EllipticCurvePublicKey)
    delegate_key.verify(answer.signature, answer.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))
    for path in ("", "%%%", "AAAA", "bm90IGFuIE9DU1AgcmVxdWVzdA=="):
        garbage = ocsp.load_der_ocsp_response(get(responder, path))
        assert garbage.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_the_server_survives_abuse(
    ocsp_ca: CAFolder, responder: OCSPServer, tmp_path: Path, store: ResultsStore
) -> None:
    host, port = responder.server_address[:2]
    for raw in (
        b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort",
    ):
        with socket.create_connection((str(host), port), timeout=5) as connection:
            connection.sendall(raw)
            connection.shutdown(socket.SHUT_WR)
            connection.settimeout(15)
            with contextlib.suppress(TimeoutError):
                connection.recv(4096)
    answer = ocsp.load_der_ocsp_response(post(responder, b"junk"))
    assert answer.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_another_issuers_certificate_is_unknown(
    ocsp_ca: CAFolder, responder: OCSPServer, tmp_path: Path
) -> None:
    answer = subprocess.run(
        ["openssl", "ocsp", "-issuer", str(ocsp_ca.root_cert_path),
         "-cert", str(ocsp_ca.intermediate_cert_path), "-url", url(responder),
         "-CAfile", str(ocsp_ca.chain_path)],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30, check=False,
    )  # fmt: skip
    assert ": unknown" in answer.stdout, answer.stdout + answer.stderr


def test_the_delegate_certificate_has_the_guides_ocsp_profile(
    ocsp_ca: CAFolder, ocsp_authority: SigningAuthority, store: ResultsStore
) -> None:
    delegate = ensure_ocsp_certificate(ocsp_ca, ocsp_authority, store, force=True)
    certificate = delegate.certificate
    extensions = certificate.extensions

    assert extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    eku = extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert eku.critical and list(eku.value) == [ExtendedKeyUsageOID.OCSP_SIGNING]
    extensions.get_extension_for_class(x509.OCSPNoCheck)
    extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    aki = extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ocsp_authority.key_identifier
    assert certificate.not_valid_after_utc - certificate.not_valid_before_utc == timedelta(days=30)
    common_name = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert common_name == "Alice Ltd Intermediate CA OCSP Responder"
    key_path = ocsp_key_path(ocsp_ca.root)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o400
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    # Recorded like every certificate the CA signs: its serial is never drawn again.
    serial = format_serial(certificate.serial_number)
    assert store.certificate(serial) is not None
    assert store.client.hexists(store.key("serials"), serial)
    checked = subprocess.run(
        ["openssl", "verify", "-purpose", "ocsphelper", "-CAfile", str(ocsp_ca.chain_path),
         str(delegate.cert_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_renewal_near_the_end_and_the_responder_picks_it_up(
    ocsp_ca: CAFolder,
    ocsp_authority: SigningAuthority,
    store: ResultsStore,
    responder: OCSPServer,
    tmp_path: Path,
) -> None:
    current = ensure_ocsp_certificate(ocsp_ca, ocsp_authority, store)
    assert not ensure_ocsp_certificate(ocsp_ca, ocsp_authority, store).issued
    later = current.certificate.not_valid_after_utc - RENEW_WITHIN + timedelta(hours=1)
    time.sleep(0.01)  # a new mtime for the renewed file
    renewed = ensure_ocsp_certificate(ocsp_ca, ocsp_authority, store, now=later)
    assert renewed.issued
    assert renewed.certificate.serial_number != current.certificate.serial_number
    os.utime(renewed.cert_path)

    _, pem = issue_pem(ocsp_authority, store, "renewed.example.com")
    certificate = x509.load_pem_x509_certificate(pem.encode())
    request = ocsp.OCSPRequestBuilder().add_certificate(
        certificate, ocsp_authority.intermediate, hashes.SHA1()
    )
    answer = ocsp.load_der_ocsp_response(
        post(responder, request.build().public_bytes(serialization.Encoding.DER))
    )
    assert answer.certificates == [renewed.certificate]
    # Put a current certificate back for the other tests of the module.
    ensure_ocsp_certificate(ocsp_ca, ocsp_authority, store, force=True)


def test_the_responder_never_loads_the_keystore_or_the_worker() -> None:
    probe = (
        "import sys, casign.cli, ocsp.responder\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('keystore', 'worker', 'pkcs11')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)


def test_casign_ocsp_command(
    ocsp_ca: CAFolder,
    ocsp_authority: SigningAuthority,
    store: ResultsStore,
    redis_url: str,
    tmp_path: Path,
) -> None:
    ensure_ocsp_certificate(ocsp_ca, ocsp_authority, store)
    serial, pem = issue_pem(ocsp_authority, store, "cli.example.com")
    RevocationStore(store).revoke(serial, "superseded")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "CASIGN_STORE_PREFIX": store.prefix.rstrip(":")}
    process = subprocess.Popen(
        [sys.executable, "-m", "casign", "ocsp", "--ca", str(ocsp_ca.root), "--store", redis_url,
         "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "did not start"
                time.sleep(0.1)
        leaf = tmp_path / "cli.pem"
        leaf.write_text(pem)
        answer = subprocess.run(
            ["openssl", "ocsp", "-issuer", str(ocsp_ca.intermediate_cert_path), "-cert", str(leaf),
             "-url", f"http://127.0.0.1:{port}", "-CAfile", str(ocsp_ca.chain_path), "-nonce"],
            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30, check=False,
        )  # fmt: skip
        assert "cli.pem: revoked" in answer.stdout, answer.stdout + answer.stderr
        assert "Reason: superseded" in answer.stdout
    finally:
        process.terminate()
        process.wait(timeout=10)
