"""EST when the signer is slow or the server is full: `202 Accepted` with `Retry-After`, the
retry answered from the store (the job sent once), and a bound on open connections."""

from __future__ import annotations

import base64
import email
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from core.errors import RefusalCode
from core.queue import producer_queue
from tests.est_service import (
    PRODUCER,
    SERVER_NAME,
    CurlAnswer,
    EstDeployment,
    add_password_client,
    basic,
    csr_der,
    issue_server_certificate,
    make_deployment,
    running,
)

pytestmark = pytest.mark.slow

SETTINGS = """\
wait_seconds = 1
retry_after_seconds = 1
max_connections = 3
idle_timeout_seconds = 3
"""
RETRY_FOR = 60.0


@pytest.fixture(scope="module")
def est(
    tmp_path_factory: pytest.TempPathFactory, broker_url: str, redis_url: str
) -> Iterator[EstDeployment]:
    deployment = make_deployment(
        tmp_path_factory.mktemp("est-pending"), broker_url, redis_url, SETTINGS
    )
    issue_server_certificate(deployment)  # through the worker, which then stops
    assert deployment.worker is not None
    deployment.worker.stop()
    deployment.worker = None
    add_password_client(deployment, "fleet")
    deployment.start_server()
    yield from running(deployment)


def post(est: EstDeployment, operation: str, body: Path) -> CurlAnswer:
    return est.curl(
        "--user", basic(est, "fleet"), "-H", "Content-Type: application/pkcs10",
        "--data-binary", f"@{body}", est.endpoint(operation),
    )  # fmt: skip


def until_issued(ask: Callable[[], CurlAnswer]) -> CurlAnswer:
    """Ask again, as Retry-After says, until the answer is not 202."""
    deadline = time.monotonic() + RETRY_FOR
    while True:
        answer = ask()
        if answer.status != 202 or time.monotonic() > deadline:
            return answer
        time.sleep(int(answer.headers["retry-after"]))


def queued_messages(est: EstDeployment) -> int:
    """Messages waiting in the EST front-end's own queue (it publishes as producer PRODUCER)."""
    return int(est.store.client.llen(producer_queue(est.queue, PRODUCER)))


def test_a_job_not_signed_in_time_is_202_and_its_retry_is_answered_from_the_store(
    est: EstDeployment, tmp_path: Path
) -> None:
    enroll_body = tmp_path / "enroll.b64"
    enroll_body.write_bytes(base64.b64encode(csr_der("later@example.com")))
    keygen_body = tmp_path / "keygen.b64"
    keygen_body.write_bytes(base64.b64encode(csr_der("keygen-later@example.com")))
    issued_before = est.store.count_issued()

    first = post(est, "simpleenroll", enroll_body)
    assert (first.status, first.headers["retry-after"]) == (202, "1")
    keygen = post(est, "serverkeygen", keygen_body)
    assert keygen.status == 202
    again = post(est, "simpleenroll", enroll_body)
    assert again.status == 202
    assert queued_messages(est) == 2  # the retry is watched, not sent again

    est.start_worker()
    answer = until_issued(lambda: post(est, "simpleenroll", enroll_body))
    assert answer.status == 200, answer.body
    certificate = pkcs7_certificate(answer.der())
    assert certificate.subject.rfc4514_string() == "CN=later@example.com"

    # serverkeygen kept its key in memory while the client waited, and hands it over now.
    made = until_issued(lambda: post(est, "serverkeygen", keygen_body))
    assert made.status == 200, made.body
    message = email.message_from_bytes(
        b"Content-Type: " + made.headers["content-type"].encode() + b"\r\n\r\n" + made.body
    )
    key_part, cert_part = message.get_payload()  # type: ignore[misc]
    key = serialization.load_der_private_key(key_part.get_payload(decode=True), None)
    assert key.public_key() == pkcs7_certificate(cert_part.get_payload(decode=True)).public_key()
    assert est.store.count_issued() - issued_before == 2  # one certificate per request

    repeat = post(est, "simpleenroll", enroll_body)  # later still: straight from the store
    assert repeat.status == 200 and pkcs7_certificate(repeat.der()) == certificate


def pkcs7_certificate(der: bytes) -> x509.Certificate:
    from cryptography.hazmat.primitives.serialization import pkcs7

    (certificate,) = pkcs7.load_der_pkcs7_certificates(der)
    return certificate


def open_tls(est: EstDeployment) -> ssl.SSLSocket:
    host, port = est.url.removeprefix("https://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(est.trust_path))
    raw = socket.create_connection((host, int(port)), timeout=30)
    return context.wrap_socket(raw, server_hostname=SERVER_NAME)


def test_a_connection_over_the_limit_is_told_to_come_back(est: EstDeployment) -> None:
    held = [open_tls(est) for _ in range(3)]
    try:
        time.sleep(0.2)  # the server has counted them
        extra = open_tls(est)
        answer = b""
        while chunk := extra.recv(4096):
            answer += chunk
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503")
        assert f"{RefusalCode.EST_UNAVAILABLE}: ".encode() in answer
        assert b"Retry-After: 1" in answer
    finally:
        for connection in held:
            connection.close()
    time.sleep(0.2)
    assert est.curl(est.endpoint("cacerts")).status == 200


def test_an_idle_connection_is_closed(est: EstDeployment) -> None:
    """A client that connects and sends nothing (or half a request head) is dropped after
    idle_timeout_seconds (3 s here)."""
    silent, slow = open_tls(est), open_tls(est)
    slow.sendall(b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    for connection in (silent, slow):
        connection.settimeout(30)
        assert connection.recv(1) == b""
        connection.close()
    assert 2 < time.monotonic() - started < 10
