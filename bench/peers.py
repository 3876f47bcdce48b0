"""What users pick instead: the guide's `openssl ca` once per CSR, and CFSSL's `cfssl serve`."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bench.cpu import CpuMeter
from bench.rows import BenchError, Rate
from bench.workload import Workload
from casign.supervise import stop_process_group
from worker.cafolder import CAFolder

VERIFY_SAMPLE = 50
CFSSL_THREADS = 16
CFSSL_SIGN_PATH = "/api/v1/cfssl/sign"
CFSSL_START_TIMEOUT = 20.0
CFSSL_WARMUP = 20
# The guide's server_cert for 375 days; cfssl writes the usages, SAN and key ids itself.
CFSSL_CONFIG = {
    "signing": {
        "default": {
            "expiry": f"{375 * 24}h",
            "usages": ["digital signature", "key encipherment", "server auth"],
        }
    }
}


def openssl_missing() -> str | None:
    return None if shutil.which("openssl") else "openssl is not on PATH (apt install openssl)"


def cfssl_missing() -> str | None:
    if shutil.which("cfssl"):
        return None
    return "cfssl is not on PATH (Debian: apt install golang-cfssl)"


def _verify_sample(pems: list[bytes], intermediate: x509.Certificate, what: str) -> None:
    for pem in random.sample(pems, min(VERIFY_SAMPLE, len(pems))):
        try:
            x509.load_pem_x509_certificate(pem).verify_directly_issued_by(intermediate)
        except (ValueError, TypeError) as exc:
            raise BenchError(f"{what}: a certificate does not verify ({exc})") from exc


def _index_lines(folder: CAFolder) -> int:
    return len(folder.index_path.read_text(encoding="utf-8").splitlines())


def measure_openssl_ca(folder: CAFolder, workload: Workload, work_dir: Path) -> Rate:
    """The guide's `openssl ca -batch` once per CSR, in turn, on the CA folder's openssl.cnf."""
    csr_dir, cert_dir = work_dir / "csr", work_dir / "certs"
    csr_dir.mkdir(parents=True)
    cert_dir.mkdir()
    paths = []
    for name, pem in zip(workload.common_names, workload.csr_pems, strict=True):
        csr_path = csr_dir / f"{name}.csr.pem"
        csr_path.write_text(pem, encoding="ascii")
        paths.append((csr_path, cert_dir / f"{name}.cert.pem"))
    base = [
        "openssl",
        "ca",
        "-config",
        str(folder.openssl_cnf_path),
        "-batch",
        "-notext",
        "-md",
        "sha256",
        "-extensions",
        "server_cert",
        "-days",
        "375",
    ]
    before = _index_lines(folder)
    cpu = CpuMeter(children=True)
    start = time.perf_counter()
    for csr_path, cert_path in paths:
        done = subprocess.run(
            [*base, "-in", str(csr_path), "-out", str(cert_path)],
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"openssl ca failed on {csr_path.name}: {done.stderr.decode()[-500:]}")
    elapsed = time.perf_counter() - start
    cpu_seconds = cpu.seconds()
    recorded = _index_lines(folder) - before
    if recorded != len(paths):
        raise BenchError(f"openssl ca: {recorded} index.txt lines for {len(paths)} CSRs")
    _verify_sample(
        [cert_path.read_bytes() for _, cert_path in paths],
        folder.intermediate_certificate(),
        "openssl ca",
    )
    return Rate(
        len(paths),
        elapsed,
        "`openssl ca -batch -notext -md sha256 -extensions server_cert -days 375` per CSR",
        cpu_seconds,
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _write_cfssl_ca(folder: CAFolder, directory: Path) -> tuple[Path, Path, Path]:
    """The intermediate's certificate and key as cfssl reads them (PEM, key unencrypted)."""
    directory.mkdir(parents=True)
    cert_path, key_path, config_path = (
        directory / "ca.pem",
        directory / "ca-key.pem",
        directory / "config.json",
    )
    cert_path.write_bytes(folder.intermediate_cert_path.read_bytes())
    key = serialization.load_pem_private_key(folder.intermediate_key_path.read_bytes(), None)
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    config_path.write_text(json.dumps(CFSSL_CONFIG), encoding="utf-8")
    return cert_path, key_path, config_path


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + CFSSL_START_TIMEOUT
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace")[-1500:]
            raise BenchError(f"cfssl serve did not start on port {port}; its log ends:\n{tail}")
        time.sleep(0.1)


@dataclass(frozen=True)
class CfsslServer:
    port: int
    pid: int


@contextlib.contextmanager
def cfssl_server(folder: CAFolder, work_dir: Path) -> Iterator[CfsslServer]:
    """`cfssl serve` on a free local port with the folder's intermediate."""
    cert_path, key_path, config_path = _write_cfssl_ca(folder, work_dir)
    port = _free_port()
    log_path = work_dir / "cfssl.log"
    command = [
        "cfssl",
        "serve",
        "-ca",
        str(cert_path),
        "-ca-key",
        str(key_path),
        "-config",
        str(config_path),
        "-address",
        "127.0.0.1",
        "-port",
        str(port),
        "-loglevel",
        "2",  # warnings only: INFO logs four lines per certificate
    ]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_for_port(port, process, log_path)
        yield CfsslServer(port, process.pid)
    finally:
        stop_process_group(process, timeout=10)


class _CfsslClient:
    """Signs CSRs over one keep-alive HTTP connection to `cfssl serve`."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def sign(self, csr_pem: str, host: str) -> bytes:
        body = json.dumps({"certificate_request": csr_pem, "hosts": [host]})
        self.connection.request(
            "POST", CFSSL_SIGN_PATH, body=body, headers={"Content-Type": "application/json"}
        )
        response = self.connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise BenchError(f"cfssl answered {response.status}: {payload[:300]!r}")
        reply = json.loads(payload)
        if not reply.get("success"):
            raise BenchError(f"cfssl refused {host}: {reply.get('errors')}")
        certificate: str = reply["result"]["certificate"]
        return certificate.encode("ascii")

    def close(self) -> None:
        self.connection.close()


def measure_cfssl(
    server: CfsslServer,
    workload: Workload,
    intermediate: x509.Certificate,
    threads: int = CFSSL_THREADS,
) -> Rate:
    """`threads` client threads, one keep-alive connection each, share the CSRs between them."""
    port = server.port
    warm = _CfsslClient(port)
    for pem, name in zip(
        workload.csr_pems[:CFSSL_WARMUP], workload.common_names[:CFSSL_WARMUP], strict=True
    ):
        warm.sign(pem, name)
    warm.close()
    certificates: list[bytes] = [b""] * len(workload)
    next_index = iter(range(len(workload)))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def sign_some() -> None:
        client = _CfsslClient(port)
        try:
            while not errors:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                certificates[index] = client.sign(
                    workload.csr_pems[index], workload.common_names[index]
                )
        except (OSError, BenchError, ValueError) as exc:
            errors.append(exc)
        finally:
            client.close()

    clients = [threading.Thread(target=sign_some, name=f"cfssl-{n}") for n in range(threads)]
    cpu = CpuMeter([server.pid])
    start = time.perf_counter()
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    elapsed = time.perf_counter() - start
    cpu_seconds = cpu.seconds()
    if errors:
        raise BenchError(f"cfssl serve: {errors[0]}")
    _verify_sample(certificates, intermediate, "cfssl serve")
    return Rate(
        len(certificates),
        elapsed,
        f"HTTP {CFSSL_SIGN_PATH}, {threads} client threads with keep-alive, no cert database",
        cpu_seconds,
    )
