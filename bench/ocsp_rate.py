"""OCSP answers a second from `casign ocsp` as users run it, asked over keep-alive connections.

Two rows on the same responder: GETs without a nonce for certificates asked for once before
(each answer comes from the pre-signed cache), and POSTs with a fresh nonce (each answer is
signed for its request, RFC 8954). The client is asyncio on raw sockets in this process, light
enough that the responder's process is what is measured.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from bench.cpu import CpuMeter
from bench.rows import BenchError, Rate
from bench.service import preload_index
from ocsp.identity import ResponderIdentity
from store.results import ResultsStore
from worker.authority import load_authority
from worker.cafolder import CAFolder
from worker.ocsp_delegate import ensure_ocsp_certificate

CONNECTIONS = 16
CERTIFICATES = 1000  # distinct serials asked about
MIN_ANSWERS = 1000
START_TIMEOUT = 60.0
VERIFY_SAMPLE = 20


@dataclass
class RunningOCSP:
    """A `casign ocsp` process answering for a CA, and the requests to ask it."""

    process: subprocess.Popen[bytes]
    port: int
    issuer: x509.Certificate
    serials: list[int]
    name_hash: bytes
    key_hash: bytes

    def request(self, serial: int, nonce: bytes | None = None) -> bytes:
        builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
            self.name_hash,
            self.key_hash,
            serial,
            hashes.SHA1(),  # noqa: S303 (as clients send CertIDs)
        )
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        return builder.build().public_bytes(serialization.Encoding.DER)

    def get(self, serial: int) -> bytes:
        encoded = urllib.parse.quote(base64.b64encode(self.request(serial)).decode(), safe="")
        return f"GET /ocsp/{encoded} HTTP/1.1\r\nHost: ocsp.bench\r\n\r\n".encode()

    def post(self, serial: int) -> bytes:
        body = self.request(serial, os.urandom(32))
        head = (
            "POST /ocsp HTTP/1.1\r\nHost: ocsp.bench\r\n"
            f"Content-Type: application/ocsp-request\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body


def _wait_for_port(process: subprocess.Popen[bytes], log_path: Path) -> int:
    """The port `casign ocsp --port 0` says it listens on (its first line on stderr)."""
    deadline = time.monotonic() + START_TIMEOUT
    marker = "OCSP responder on http://"
    while time.monotonic() < deadline:
        text = log_path.read_text(encoding="utf-8", errors="replace")
        if marker in text:
            return int(text.split(marker, 1)[1].split(":", 1)[1].split()[0])
        if process.poll() is not None:
            raise BenchError(f"casign ocsp exited with {process.returncode}: {text[-2000:]}")
        time.sleep(0.05)
    raise BenchError(f"casign ocsp did not start within {START_TIMEOUT:g} s")


@contextlib.contextmanager
def running_ocsp(
    folder: CAFolder, redis_url: str, prefix: str, log_path: Path
) -> Iterator[RunningOCSP]:
    """`casign ocsp` for `folder` on a store holding CERTIFICATES issued certificates."""
    store = ResultsStore.from_url(redis_url, prefix)
    try:
        preload_index(store, CERTIFICATES)
        ensure_ocsp_certificate(folder, load_authority(folder.root), store)
    finally:
        store.client.close()
    identity = ResponderIdentity.load(folder.root)
    name_hash, key_hash = identity.issuer_hashes["sha1"]
    serials = [int(f"7F{index:038X}", 16) for index in range(CERTIFICATES)]  # preload_index's
    env = {**os.environ, "CASIGN_STORE_PREFIX": prefix}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "casign", "ocsp", "--ca", str(folder.root), "--store",
             redis_url, "--port", "0"],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        port = _wait_for_port(process, log_path)
        yield RunningOCSP(process, port, identity.issuer, serials, name_hash, key_hash)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _exchange(port: int, requests: list[bytes], answers: list[bytes]) -> None:
    """Send each request on one keep-alive connection and keep each answer's body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for request in requests:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise BenchError(f"the responder answered {head.splitlines()[0]!r}")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.lower().split(b"\r\n")
                if line.startswith(b"content-length:")
            )
            answers.append(await reader.readexactly(length))
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _ask_all(port: int, requests: list[bytes]) -> list[bytes]:
    shares = [requests[start::CONNECTIONS] for start in range(CONNECTIONS)]
    answers: list[list[bytes]] = [[] for _ in shares]
    await asyncio.gather(
        *(_exchange(port, share, kept) for share, kept in zip(shares, answers, strict=True))
    )
    return [answer for kept in answers for answer in kept]


def _check(answers: list[bytes], expected: int, nonce: bool) -> None:
    if len(answers) != expected:
        raise BenchError(f"{len(answers)} OCSP answers for {expected} requests")
    for der in random.sample(answers, min(VERIFY_SAMPLE, len(answers))):
        response = ocsp.load_der_ocsp_response(der)
        if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
            raise BenchError(f"an OCSP answer was {response.response_status.name}")
        if response.certificate_status is not ocsp.OCSPCertStatus.GOOD:
            raise BenchError(f"an OCSP answer said {response.certificate_status.name}")
        has_nonce = any(isinstance(e.value, x509.OCSPNonce) for e in response.extensions)
        if has_nonce != nonce:
            raise BenchError("an OCSP answer's nonce is not as asked")


def measure_ocsp(server: RunningOCSP, answers: int, nonce: bool) -> Rate:
    """`answers` requests spread over CONNECTIONS connections, cached (GET) or with a nonce."""
    answers = max(answers, MIN_ANSWERS)
    serials = [server.serials[index % len(server.serials)] for index in range(answers)]
    if nonce:
        requests = [server.post(serial) for serial in serials]
    else:
        asyncio.run(_ask_all(server.port, [server.get(serial) for serial in server.serials]))
        requests = [server.get(serial) for serial in serials]
    cpu = CpuMeter([server.process.pid])
    start = time.perf_counter()
    received = asyncio.run(_ask_all(server.port, requests))
    elapsed = time.perf_counter() - start
    cpu_seconds = cpu.seconds()
    _check(received, answers, nonce)
    how = (
        f"POST with a 32-octet nonce, each answer signed (P-256 delegate), {CONNECTIONS} "
        f"keep-alive connections, {CERTIFICATES:,} certificates"
        if nonce
        else f"GET /ocsp/<base64>, answers pre-signed (each certificate asked once before), "
        f"{CONNECTIONS} keep-alive connections, {CERTIFICATES:,} certificates"
    )
    return Rate(answers, elapsed, f"casign ocsp (1 process): {how}", cpu_seconds)
