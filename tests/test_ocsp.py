"""The OCSP responder over HTTP, asked by the real `openssl ocsp` client, and its delegate."""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core.errors import Retryable
from core.index import format_serial
from core.layout import ocsp_key_path
from ocsp.lifetime import MAX_VALIDITY, MIN_VALIDITY, ResponseLifetime
from ocsp.server import ServerLimits
from store.results import ResultsStore
from store.revocations import RevocationStore
from tests.cas import make_alice_ca
from tests.csrs import job, make_csr
from tests.ocsp_responder import RunningResponder, running_responder
from tests.openssl_cli import openssl
from worker.authority import SigningAuthority, load_authority
from worker.cafolder import CAFolder
from worker.issuance import BatchSigner
from worker.ocsp_delegate import RENEW_WITHIN, ensure_ocsp_certificate

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")

REQUEST_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def ocsp_ca(tmp_path_factory: pytest.TempPathFactory) -> CAFolder:
    """A CA of its own: the delegate's key and certificate are written into it."""
    return make_alice_ca(tmp_path_factory.mktemp("ocsp") / "ca")


@pytest.fixture(scope="module")
def ocsp_authority(ocsp_ca: CAFolder) -> SigningAuthority:
    return load_authority(ocsp_ca.root)


def running(
    ca: CAFolder,
    store: ResultsStore,
    lifetime: ResponseLifetime | None = None,
    limits: ServerLimits | None = None,
) -> RunningResponder:
    return running_responder(
        ca.root, store, lifetime, limits or ServerLimits(request_timeout=REQUEST_TIMEOUT)
    )


@pytest.fixture
def responder(
    ocsp_ca: CAFolder, ocsp_authority: SigningAuthority, store: ResultsStore
) -> Iterator[RunningResponder]:
    ensure_ocsp_certificate(ocsp_ca, ocsp_authority, store)
    with running(ocsp_ca, store) as server:
        yield server


def issue_pem(authority: SigningAuthority, store: ResultsStore, name: str) -> tuple[str, str]:
    (result,) = BatchSigner(authority, store).sign_batch([job(name, make_csr(name))])
    assert result.ok and result.serial and result.certificate_pem
    return result.serial, result.certificate_pem


def never_recorded(authority: SigningAuthority) -> x509.Certificate:
    """A certificate signed by the intermediate but absent from the store."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ghost.example.com")]))
        .issuer_name(authority.intermediate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(authority.key, hashes.SHA256())
    )


def pem_of(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def ask_openssl(
    ca: CAFolder, server: RunningResponder, pems: list[str], tmp_path: Path, *options: str
) -> subprocess.CompletedProcess[str]:
    """`openssl ocsp` with one `-cert` per PEM, files named leaf0.pem, leaf1.pem, ..."""
    folder = tmp_path / f"ask-{time.monotonic_ns()}"
    folder.mkdir()
    cert_options: list[str] = []
    for number, pem in enumerate(pems):
        leaf = folder / f"leaf{number}.pem"
        leaf.write_text(pem)
        cert_options += ["-cert", str(leaf)]
    return openssl(
        "ocsp", "-issuer", ca.intermediate_cert_path, *cert_options, "-url", server.url,
        "-CAfile", ca.chain_path, *options, check=False, timeout=30,
    )  # fmt: skip


def request_der(
    certificate: x509.Certificate,
    issuer: x509.Certificate,
    nonce: bytes | None = None,
    algorithm: hashes.HashAlgorithm | None = None,
) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(
        certificate, issuer, algorithm or hashes.SHA1()
    )
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def several_request_der(
    certificates: list[x509.Certificate], issuer: x509.Certificate, nonce: bytes | None = None
) -> bytes:
    """One OCSPRequest naming every certificate (cryptography builds one CertID only)."""
    items = []
    for certificate in certificates:
        one = ocsp.load_der_ocsp_request(request_der(certificate, issuer))
        items.append(
            {
                "req_cert": {
                    "hash_algorithm": {"algorithm": "sha1"},
                    "issuer_name_hash": one.issuer_name_hash,
                    "issuer_key_hash": one.issuer_key_hash,
                    "serial_number": one.serial_number,
                }
            }
        )
    tbs: dict[str, object] = {"request_list": items}
    if nonce is not None:
        tbs["request_extensions"] = [{"extn_id": "nonce", "critical": False, "extn_value": nonce}]
    return bytes(asn1_ocsp.OCSPRequest({"tbs_request": tbs}).dump())


def post(server: RunningResponder, body: bytes, path: str = "/") -> bytes:
    request = urllib.request.Request(
        server.url + path,
        data=body,
        headers={"Content-Type": "application/ocsp-request"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/ocsp-response"
        return bytes(response.read())


def get(server: RunningResponder, path: str) -> tuple[bytes, str | None]:
    with urllib.request.urlopen(server.url + path, timeout=10) as response:
        assert response.headers["Content-Type"] == "application/ocsp-response"
        return bytes(response.read()), response.headers["Cache-Control"]


def read_response(der: bytes) -> ocsp.OCSPResponse:
    return ocsp.load_der_ocsp_response(der)


def wait_for(condition: Any, what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.05)


def test_openssl_says_good_revoked_and_unknown(
    ocsp_ca: CAFolder,
    ocsp_authority: SigningAuthority,
    store: ResultsStore,
    responder: RunningResponder,
    tmp_path: Path,
) -> None:
    _, good = issue_pem(ocsp_authority, store, "good.example.com")
    revoked_serial, revoked = issue_pem(ocsp_authority, store, "revoked.example.com")
    RevocationStore(store).revoke(revoked_serial, "keyCompromise")
    ghost = pem_of(never_recorded(ocsp_authority))

    answers = {
        status: ask_openssl(ocsp_ca, responder, [pem], tmp_path)
        for status, pem in (("good", good), ("revoked", revoked), ("unknown", ghost))
    }

    for status, answer in answers.items():
        assert answer.returncode == 0, answer.stderr
        assert "Response verify OK" in answer.stderr + answer.stdout, answer.stderr
        assert f"leaf0.pem: {status}\n" in answer.stdout, answer.stdout
        assert "WARNING" not in answer.stdout + answer.stderr  # openssl sends a nonce by default
    assert "Reason: keyCompromise" in answers["revoked"].stdout
    assert "Revocation Time:" in answers["revoked"].stdout


def test_openssl_asking_about_several_certificates_gets_each_answer(
    ocsp_ca: CAFolder,
    ocsp_authority: SigningAuthority,
    store: ResultsStore,
    responder: RunningResponder,
    tmp_path: Path,
) -> None:
    _, first = issue_pem(ocsp_authority, store, "one.example.com")
    revoked_serial, revoked = issue_pem(ocsp_authority, store, "two.example.com")
    _, third = issue_pem(ocsp_authority, store, "three.example.com")
    RevocationStore(store).revoke(revoked_serial, "superseded")
    ghost = pem_of(never_recorded(ocsp_authority))

    for options in ((), ("-no_nonce",)):  # signed for its nonce, then from the cache
        answer = ask_openssl(
            ocsp_ca, responder, [first, revoked, third, ghost], tmp_path, "-resp_text", *options
        )

        assert answer.returncode == 0, answer.stderr
        assert "Response verify OK" in answer.stderr, answer.stderr
        lines = answer.stdout
        assert "leaf0.pem: good\n" in lines, lines
        assert "leaf1.pem: revoked\n" in lines and "Reason: superseded" in lines, lines
        assert "leaf2.pem: good\n" in lines, lines
        assert "leaf3.pem: unknown\n" in lines, lines
        assert lines.count("Certificate ID:") == 4  # one SingleResponse each, in one response
        assert "WARNING" not in lines + answer.stderr


def test_several_certificates_in_one_response_in_request_order(
    ocsp_authority: SigningAuthority,
    store: ResultsStore,
    responder: RunningResponder,
    tmp_path: Path,
) -> None:
    certificates = [
        x509.load_pem_x509_certificate(issue_pem(ocsp_authority, store, name)[1].encode())
        for name in ("a.example.com", "b.example.com")
    ]
    ghost = never_recorded(ocsp_authority)
    nonce = os.urandom(32)
    body = post(
        responder, several_request_der([ghost, *certificates], ocsp_authority.intermediate, nonce)
    )

    answer = read_response(body)
    assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    singles = list(answer.responses)
    assert [single.serial_number for single in singles] == [
        c.serial_number for c in [ghost, *certificates]
    ]
    assert [single.certificate_status for single in singles] == [
        ocsp.OCSPCertStatus.UNKNOWN,
        ocsp.OCSPCertStatus.GOOD,
        ocsp.OCSPCertStatus.GOOD,
    ]
    assert answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    delegate_key = answer.certificates[0].public_key()
    assert isinstance(delegate_key, ec.EllipticCurvePublicKey)
    delegate_key.verify(answer.signature, answer.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))
    # pkilint's RFC 6960 response linter finds nothing wrong with it.
    path = tmp_path / "several.der"
    path.write_bytes(body)
    linted = subprocess.run(
        [sys.executable, "-m", "pkilint.bin.lint_ocsp_response", "lint", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_openssl_nonce_round_trip_and_without(
    ocsp_ca: CAFolder,
    ocsp_authority: SigningAuthority,
    store: ResultsStore,
    responder: RunningResponder,
    tmp_path: Path,
) -> None:
    _, pem = issue_pem(ocsp_authority, store, "nonce.example.com")
    with_nonce = ask_openssl(ocsp_ca, responder, [pem], tmp_path, "-nonce", "-resp_text")
    without = ask_openssl(ocsp_ca, responder, [pem], tmp_path, "-no_nonce", "-resp_text")
    assert with_nonce.returncode == 0 and without.returncode == 0, with_nonce.stderr
    # openssl says "WARNING: no nonce in response" or "nonce verify error" when it is not echoed.
    assert "OCSP Nonce" in with_nonce.stdout and "OCSP Nonce" not in without.stdout
    assert ": good" in with_nonce.stdout and ": good" in without.stdout
    assert "nonce" not in (with_nonce.stderr + without.stderr).lower()
    assert "WARNING" not in with_nonce.stdout + with_nonce.stderr


@pytest.mark.parametrize("length", [1, 16, 32])
def test_nonces_of_1_to_32_octets_are_echoed(
    ocsp_authority: SigningAuthority,
    store: ResultsStore,
    responder: RunningResponder,
    length: int,
) -> None:
    _, pem = issue_pem(ocsp_authority, store, f"n{length}.example.com")
    nonce = os.urandom(length)
    certificate = x509.load_pem_x509_certificate(pem.encode())
    answer = read_response(
        post(responder, request_der(certificate, ocsp_authority.intermediate, nonce))
    )
    assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce


@pytest.mark.parametrize("length", [0, 33, 8000])
def test_an_empty_or_over_long_nonce_is_malformed(
    ocsp_authority: SigningAuthority, responder: RunningResponder, length: int
) -> None:
    """RFC 8954 2.1: MUST reject a nonce of 0 or more than 32 octets with malformedRequest."""
    certificate = never_recorded(ocsp_authority)
    single = request_der(certificate, ocsp_authority.intermediate, b"\x01" * length)
    several = several_request_der(
        [certificate, certificate], ocsp_authority.intermediate, b"\x01" * length
    )
    for body in (single, several):
        answer = read_response(post(responder, body))
        assert answer.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


@pytest.mark.parametrize("validity", [MIN_VALIDITY, timedelta(days=4), MAX_VALIDITY])
def test_the_validity_interval_is_within_the_baseline_requirements(
    ocsp_ca: CAFolder,
    ocsp_authority: SigningAuthority,
    store: ResultsStore,
    tmp_path: Path,
    validity: timedelta,
) -> None:
    ensure_ocsp_certificate(ocsp_ca, ocsp_authority, store)
    _, pem = issue_pem(ocsp_authority, store, "window.example.com")
    with running(ocsp_ca, store, ResponseLifetime(validity)) as server:
        body = post(
            server,
            request_der(x509.load_pem_x509_certificate(pem.encode()), ocsp_authority.intermediate),
        )
        shown = ask_openssl(ocsp_ca, server, [pem], tmp_path, "-no_nonce", "-resp_text")

    answer = read_response(body)
    assert answer.next_update_utc is not None
    # BR 4.9.10 counts thisUpdate through nextUpdate inclusive: the interval is one second more.
    interval = answer.next_update_utc - answer.this_update_utc + timedelta(seconds=1)
    assert interval == validity
    assert MIN_VALIDITY <= interval <= MAX_VALIDITY
    assert abs(answer.this_update_utc - datetime.now(UTC)) < timedelta(minutes=1)
    assert shown.returncode == 0 and "leaf0.pem: good" in shown.stdout, shown.stderr
    assert "Next Update:" in shown.stdout


def test_get_under_any_path_prefix(
    ocsp_authority: SigningAuthority,
    store: ResultsStore,
    responder: RunningResponder,
) -> None:
    _, pem = issue_pem(ocsp_authority, store, "get.example.com")
    certificate = x509.load_pem_x509_certificate(pem.encode())
    # SHA-256 CertIDs, sized so that the base64 holds a `/`, sent bare by some clients.
    for _ in range(200):
        der = request_der(certificate, ocsp_authority.intermediate, os.urandom(16), hashes.SHA256())
        encoded = base64.b64encode(der).decode()
        if "/" in encoded:
            break
    assert "/" in encoded
    quoted = urllib.parse.quote(encoded, safe="")

    for path in (f"/ocsp/{quoted}", f"/{quoted}", f"/a/b/ocsp/{encoded}", f"/{encoded}?x=1"):
        body, _ = get(responder, path)
        answer = read_response(body)
        assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL, path
        assert answer.certificate_status is ocsp.OCSPCertStatus.GOOD
        assert answer.serial_number == certificate.serial_number
        assert answer.hash_algorithm.name == "sha256"

    plain = base64.b64encode(request_der(certificate, ocsp_authority.intermediate)).decode()
    body, cache_control = get(responder, "/ocsp/" + urllib.parse.quote(plain, safe=""))
    answer = read_response(body)
    assert answer.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert answer.next_update_utc is not None
    # RFC 5019 6.2: HTTP caches may keep a cached answer until it is renewed, no longer.
    assert cache_control is not None and "public" in cache_control
    max_age = int(cache_control.split("max-age=")[1].split(",")[0])
    assert 0 < max_age <= (answer.next_update_utc - datetime.now(UTC)).total_seconds()

    for path in ("/", "/%%%", "/AAAA", "/ocsp/bm90IGFuIE9DU1AgcmVxdWVzdA==", "/ocsp/MEIw"):
        garbage = read_response(get(responder, path)[0])
        assert garbage.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST, path


def test_another_issuers_certificate_is_unauthorized(
    ocsp_ca: CAFolder, ocsp_authority: SigningAuthority, responder: RunningResponder
) -> None:
    answer = openssl(
        "ocsp", "-issuer", ocsp_ca.root_cert_path, "-cert", ocsp_ca.intermediate_cert_path,
        "-url", responder.url, "-CAfile", ocsp_ca.chain_path, check=False, timeout=30,
    )  # fmt: skip
    assert "Responder Error: unauthorized (6)" in answer.stdout + answer.stderr, answer.stdout

    # One foreign CertID among ours is enough: the responder is not authoritative for it.
    ours = never_recorded(ocsp_authority)
    foreign = ocsp.load_der_ocsp_request(
        request_der(ocsp_authority.intermediate, ocsp_ca.root_certificate())
    )
    mixed = asn1_ocsp.OCSPRequest.load(
        several_request_der([ours, ours], ocsp_authority.intermediate)
    )
    mixed["tbs_request"]["request_list"][1]["req_cert"]["issuer_key_hash"] = foreign.issuer_key_hash
    answer_to_mixed = read_response(post(responder, mixed.dump(force=True)))
    assert answer_to_mixed.response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED


@pytest.mark.parametrize(
    "body",
    [b"\x30\x03\x02\x01\x01", b"not DER at all", b"\x30" * 4000, b"\x30\x80" + b"\x00" * 10],
)
def test_malformed_posts_get_malformed_request(responder: RunningResponder, body: bytes) -> None:
    answer = read_response(post(responder, body))
    assert answer.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_openssl_reads_the_malformed_request_answer(
    responder: RunningResponder, tmp_path: Path
) -> None:
    # openssl's client will not send garbage, so it reads the answer to garbage sent by hand.
    answer_path = tmp_path / "answer.der"
    answer_path.write_bytes(post(responder, b"\x30\x03\x02\x01\x01"))
    shown = openssl("ocsp", "-respin", answer_path, "-resp_text", "-noverify", check=False)
    assert "Responder Error: malformedrequest (1)" in shown.stdout, shown.stdout


def raw_exchange(server: RunningResponder, raw: bytes, wait: float = 15) -> bytes:
    """Send `raw` on a fresh connection, then read until the server closes it."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as connection:
        connection.sendall(raw)
        connection.settimeout(wait)
        received = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := connection.recv(65536):
                received += chunk
        return received


def test_the_server_survives_abuse(
    responder: RunningResponder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for raw in (
        b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort",
        b"GET /" + b"M" * 20000 + b" HTTP/1.1\r\n\r\n",
        b"PUT / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4001\r\n" + b"0" * 0x4001,
    ):
        raw_exchange(responder, raw)
    answer = read_response(post(responder, b"junk"))
    assert answer.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    too_big = raw_exchange(
        responder, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n" + b"0" * 9
    )
    assert too_big.startswith(b"HTTP/1.1 200") and b"application/ocsp-response" in too_big
    # Bad HTTP is a line in the log, never a traceback.
    assert any("bad HTTP request" in record.getMessage() for record in caplog.records)
    assert not [record for record in caplog.records if record.exc_info], caplog.text


def test_slow_clients_do_not_block_other_answers(
    ocsp_authority: SigningAuthority, store: ResultsStore, responder: RunningResponder
) -> None:
    """Connections that send one byte a second hold nothing up, and are closed at the timeout."""
    _, pem = issue_pem(ocsp_authority, store, "busy.example.com")
    body = request_der(x509.load_pem_x509_certificate(pem.encode()), ocsp_authority.intermediate)
    header = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request\r\n"
    slow_requests = [  # (sent at once, then sent a byte a second)
        (b"", header + b"Content-Length: 200\r\nX-Slow: " + b"a" * 100),  # headers never end
        (header + f"Content-Length: {len(body)}\r\n\r\n".encode(), body),  # a slow body
    ]
    closed_after: list[float] = []
    answers_to_slow: list[bytes] = []

    def trickle(at_once: bytes, slowly: bytes) -> None:
        with socket.create_connection(("127.0.0.1", responder.port), timeout=5) as connection:
            started = time.monotonic()
            try:
                connection.sendall(at_once)
                for byte in slowly:
                    connection.sendall(bytes([byte]))
                    time.sleep(1.0)
            except (BrokenPipeError, ConnectionResetError):
                pass
            connection.settimeout(REQUEST_TIMEOUT + 10)
            received = b""
            with contextlib.suppress(ConnectionResetError, TimeoutError):
                while chunk := connection.recv(65536):
                    received += chunk
            closed_after.append(time.monotonic() - started)
            answers_to_slow.append(received)

    slow = [threading.Thread(target=trickle, args=parts) for parts in slow_requests * 4]
    for thread in slow:
        thread.start()
    time.sleep(1.5)  # every slow client is connected and has sent a byte or two
    timings = []
    for _ in range(20):
        started = time.monotonic()
        answer = read_response(post(responder, body))
        timings.append(time.monotonic() - started)
        assert answer.certificate_status is ocsp.OCSPCertStatus.GOOD
    for thread in slow:
        thread.join(timeout=REQUEST_TIMEOUT + 30)

    assert max(timings) < 1.0, timings
    # Each slow connection was closed by the server at its request timeout (plus 1 s of lingering
    # after an answer, plus up to 2 s for the client to notice between its bytes), not let run
    # for the 100 s its bytes would take.
    assert len(closed_after) == len(slow)
    assert max(closed_after) < REQUEST_TIMEOUT + 5, closed_after
    # A body cut short by the timeout is answered malformedRequest before the connection closes.
    cut_short = [answer for answer in answers_to_slow if answer]
    assert len(cut_short) == 4 and all(b"HTTP/1.1 200 OK" in answer for answer in cut_short)


def test_connections_past_the_limit_are_refused_and_the_rest_go_on(
    ocsp_ca: CAFolder, ocsp_authority: SigningAuthority, store: ResultsStore
) -> None:
    ensure_ocsp_certificate(ocsp_ca, ocsp_authority, store)
    body = request_der(never_recorded(ocsp_authority), ocsp_authority.intermediate)
    limits = ServerLimits(max_connections=4, request_timeout=REQUEST_TIMEOUT)
    with running(ocsp_ca, store, limits=limits) as server, contextlib.ExitStack() as stack:
        idle = [
            stack.enter_context(socket.create_connection(("127.0.0.1", server.port), timeout=5))
            for _ in range(4)
        ]
        time.sleep(0.3)
        started = time.monotonic()
        assert raw_exchange(server, b"", wait=5) == b""  # closed at once, not held open
        assert time.monotonic() - started < 2
        for connection in idle:
            connection.close()
        time.sleep(0.3)
        answer = read_response(post(server, body))
        assert answer.certificate_status is ocsp.OCSPCertStatus.UNKNOWN


def test_an_answer_from_the_cache_costs_no_signature(
    ocsp_authority: SigningAuthority,
    store: ResultsStore,
    responder: RunningResponder,
) -> None:
    certificates = [
        x509.load_pem_x509_certificate(issue_pem(ocsp_authority, store, name)[1].encode())
        for name in ("c1.example.com", "c2.example.com")
    ]
    issuer = ocsp_authority.intermediate
    single, several = (
        request_der(certificates[0], issuer),
        several_request_der(certificates, issuer),
    )
    counter = responder.responder
    counts = counter.counts
    before, from_cache, signed = counter.signatures, counts.from_cache, counts.signed
    first = post(responder, single)
    assert counter.signatures == before + 1
    again = [post(responder, single) for _ in range(5)]
    fetched, _ = get(responder, "/ocsp/" + urllib.parse.quote(base64.b64encode(single), safe=""))
    assert counter.signatures == before + 1
    assert set(again) == {first} and fetched == first

    post(responder, several)
    post(responder, several)
    assert counter.signatures == before + 2

    # A nonce is inside the signed data, so each such request is signed for itself.
    for _ in range(3):
        post(responder, request_der(certificates[0], issuer, os.urandom(16)))
    assert counter.signatures == before + 5
    # Its figures: 5 + 1 + 1 answers from the cache; 1 + 1 first asks and 3 nonces signed.
    assert (counts.from_cache - from_cache, counts.signed - signed) == (7, 5)


def test_simultaneous_first_asks_share_one_signature(
    ocsp_authority: SigningAuthority, store: ResultsStore, responder: RunningResponder
) -> None:
    _, pem = issue_pem(ocsp_authority, store, "crowd.example.com")
    body = request_der(x509.load_pem_x509_certificate(pem.encode()), ocsp_authority.intermediate)
    counts = responder.responder.counts
    before, from_cache, signed = responder.responder.signatures, counts.from_cache, counts.signed
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: post(responder, body), range(32)))
    assert len(set(answers)) == 1
    assert responder.responder.signatures == before + 1
    # One answer counts as signed; the 31 that waited on its signature, as from the cache.
    assert (counts.from_cache - from_cache, counts.signed - signed) == (31, 1)


def test_a_revocation_is_signed_before_the_next_answer(
    ocsp_authority: SigningAuthority, store: ResultsStore, responder: RunningResponder
) -> None:
    serial, pem = issue_pem(ocsp_authority, store, "soon-revoked.example.com")
    body = request_der(x509.load_pem_x509_certificate(pem.encode()), ocsp_authority.intermediate)
    assert read_response(post(responder, body)).certificate_status is ocsp.OCSPCertStatus.GOOD
    signed = responder.responder.signatures
    changed = responder.responder.counts.renewed_changed

    RevocationStore(store).revoke(serial, "keyCompromise")
    wait_for(lambda: responder.responder.signatures > signed, "the poller to sign again")
    assert responder.responder.counts.renewed_changed == changed + 1

    answer = read_response(post(responder, body))
    assert answer.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert answer.revocation_reason is x509.ReasonFlags.key_compromise
    assert responder.responder.signatures == signed + 1  # signed at revocation, not on request


def test_a_recheck_cut_short_by_the_store_is_done_again(
    ocsp_authority: SigningAuthority,
    store: ResultsStore,
    responder: RunningResponder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    serial, pem = issue_pem(ocsp_authority, store, "flaky.example.com")
    body = request_der(x509.load_pem_x509_certificate(pem.encode()), ocsp_authority.intermediate)
    assert read_response(post(responder, body)).certificate_status is ocsp.OCSPCertStatus.GOOD
    signed = responder.responder.signatures
    read_lines, failures = store.index_lines_of, [Retryable("the store blinked")]

    def blinking(serials: Any) -> list[str | None]:
        if failures:
            raise failures.pop()
        return read_lines(serials)

    monkeypatch.setattr(store, "index_lines_of", blinking)
    RevocationStore(store).revoke(serial, "keyCompromise")
    wait_for(lambda: responder.responder.signatures > signed, "the poller to sign again")

    assert not failures  # the first recheck failed; a later poll did it again
    assert read_response(post(responder, body)).certificate_status is ocsp.OCSPCertStatus.REVOKED


def test_an_unknown_answer_turns_good_once_the_certificate_is_published(
    ocsp_authority: SigningAuthority, store: ResultsStore, responder: RunningResponder
) -> None:
    """BR 4.9.10: no "unknown" for a published certificate (casign: within one poll)."""
    ghost = never_recorded(ocsp_authority)
    body = request_der(ghost, ocsp_authority.intermediate)
    assert read_response(post(responder, body)).certificate_status is ocsp.OCSPCertStatus.UNKNOWN
    signed = responder.responder.signatures

    serial = format_serial(ghost.serial_number)
    line = f"V\t271231235959Z\t\t{serial}\tunknown\t/CN=ghost.example.com"
    store.client.hset(store.key("index"), serial, line)  # as adoption or publishing writes it
    wait_for(lambda: responder.responder.signatures > signed, "the poller to sign again")

    assert read_response(post(responder, body)).certificate_status is ocsp.OCSPCertStatus.GOOD


def test_answers_due_are_renewed_if_asked_for_and_dropped_if_not(
    ocsp_authority: SigningAuthority,
    store: ResultsStore,
    responder: RunningResponder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked, idle = (
        x509.load_pem_x509_certificate(issue_pem(ocsp_authority, store, name)[1].encode())
        for name in ("asked.example.com", "idle.example.com")
    )
    issuer = ocsp_authority.intermediate
    # Every answer signed from now on is due for renewal one second after its thisUpdate.
    monkeypatch.setattr("ocsp.responder.renew_at", lambda this, _: this + timedelta(seconds=1))
    first = read_response(post(responder, request_der(asked, issuer)))
    post(responder, request_der(idle, issuer))
    post(responder, request_der(asked, issuer))  # asked again since it was signed
    signed = responder.responder.signatures
    due = responder.responder.counts.renewed_due
    cached = len(responder.responder.cache)
    wait_for(lambda: responder.responder.signatures > signed, "a renewal", seconds=15)

    assert len(responder.responder.cache) == cached - 1  # the idle answer was dropped
    assert responder.responder.counts.renewed_due >= due + 1
    renewed = read_response(post(responder, request_der(asked, issuer)))
    assert renewed.this_update_utc > first.this_update_utc


def test_a_store_that_does_not_answer_gives_try_later(
    ocsp_ca: CAFolder, ocsp_authority: SigningAuthority, store: ResultsStore
) -> None:
    ensure_ocsp_certificate(ocsp_ca, ocsp_authority, store)
    body = request_der(never_recorded(ocsp_authority), ocsp_authority.intermediate)
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        dead = ResultsStore.from_url(f"redis://127.0.0.1:{unused.getsockname()[1]}/0")
        with running(ocsp_ca, dead) as server:  # it starts all the same, and says so
            answer = read_response(post(server, body))
    assert answer.response_status is ocsp.OCSPResponseStatus.TRY_LATER


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
    checked = openssl(
        "verify", "-purpose", "ocsphelper", "-CAfile", ocsp_ca.chain_path, delegate.cert_path,
        check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_renewal_near_the_end_and_the_responder_picks_it_up(
    ocsp_ca: CAFolder,
    ocsp_authority: SigningAuthority,
    store: ResultsStore,
    responder: RunningResponder,
) -> None:
    current = ensure_ocsp_certificate(ocsp_ca, ocsp_authority, store)
    assert not ensure_ocsp_certificate(ocsp_ca, ocsp_authority, store).issued
    _, pem = issue_pem(ocsp_authority, store, "renewed.example.com")
    body = request_der(x509.load_pem_x509_certificate(pem.encode()), ocsp_authority.intermediate)
    assert read_response(post(responder, body)).certificates == [current.certificate]

    later = current.certificate.not_valid_after_utc - RENEW_WITHIN + timedelta(hours=1)
    time.sleep(0.01)  # a new mtime for the renewed file
    renewed = ensure_ocsp_certificate(ocsp_ca, ocsp_authority, store, now=later)
    assert renewed.issued
    assert renewed.certificate.serial_number != current.certificate.serial_number
    os.utime(renewed.cert_path)

    # The cached answer, signed by the previous delegate, is replaced within a poll.
    wait_for(
        lambda: read_response(post(responder, body)).certificates == [renewed.certificate],
        "the responder to load the renewed delegate",
    )
    # Put a current certificate back for the other tests of the module.
    ensure_ocsp_certificate(ocsp_ca, ocsp_authority, store, force=True)


def test_the_responder_never_loads_the_keystore_or_the_worker() -> None:
    probe = (
        "import sys, casign.cli, ocsp.server\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('keystore', 'worker', 'pkcs11')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-m", "casign", "--help"], check=True, capture_output=True)
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def casign_ocsp(
    ca: CAFolder, store: ResultsStore, redis_url: str, *options: str
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CASIGN_STORE_PREFIX": store.prefix.rstrip(":")}
    return subprocess.Popen(
        [sys.executable, "-m", "casign", "ocsp", "--ca", str(ca.root), "--store", redis_url,
         *options],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


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
    port = free_port()
    process = casign_ocsp(ocsp_ca, store, redis_url, "--port", str(port), "--validity", "12h")
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
        answer = openssl(
            "ocsp", "-issuer", ocsp_ca.intermediate_cert_path, "-cert", leaf,
            "-url", f"http://127.0.0.1:{port}/ocsp", "-CAfile", ocsp_ca.chain_path, "-nonce",
            "-resp_text", check=False, timeout=30,
        )  # fmt: skip
        assert "cli.pem: revoked" in answer.stdout, answer.stdout + answer.stderr
        assert "Reason: superseded" in answer.stdout

        # A second responder on the same port ends in one sentence and exit code 2.
        clash = casign_ocsp(ocsp_ca, store, redis_url, "--port", str(port))
        output, _ = clash.communicate(timeout=60)
        assert clash.returncode == 2, output
        assert output.decode().strip() == (
            f"casign: port {port} on 127.0.0.1 is in use by another program; choose another --port"
        )
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
    assert b"Traceback" not in (process.stdout.read() if process.stdout else b"")


@pytest.mark.parametrize("validity", ["7h", "11d", "0"])
def test_casign_ocsp_refuses_a_validity_outside_the_window(
    ocsp_ca: CAFolder, store: ResultsStore, redis_url: str, validity: str
) -> None:
    process = casign_ocsp(ocsp_ca, store, redis_url, "--port", "0", "--validity", validity)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2, output
    text = output.decode().strip()
    assert "\n" not in text and "Traceback" not in text
    assert "outside the Baseline Requirements' window of 8h to 10d" in text


def test_casign_ocsp_refuses_a_bad_validity_value(
    ocsp_ca: CAFolder, store: ResultsStore, redis_url: str
) -> None:
    process = casign_ocsp(ocsp_ca, store, redis_url, "--port", "0", "--validity", "soon")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2 and b"--validity" in output and b"Traceback" not in output


def test_urlopen_of_an_unknown_method_is_405(responder: RunningResponder) -> None:
    request = urllib.request.Request(responder.url + "/", data=b"x", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 405
