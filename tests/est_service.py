"""A running EST deployment for tests: a CA whose producers.toml lists the EST front-end, a real
`casign worker`, the server's certificate issued with `casign est cert`, clients added with
`casign est client add`, and `casign est` serving on a free port; plus `curl` and `openssl`."""

from __future__ import annotations

import base64
import os
import re
import secrets
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from casign.supervise import stop_process_group
from store.results import ResultsStore
from tests.cas import make_alice_ca
from tests.workers import WorkerProcess, start_worker
from worker.cafolder import CAFolder

PRODUCER = "est-front"
SERVER_NAME = "est.example.com"
START_TIMEOUT = 60.0
CURL_TIMEOUT = 60


def write_private(path: Path, data: bytes) -> None:
    """A file only its owner can read (a secret, a password, a key)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class Bootstrap:
    """A manufacturer CA (not casign's) and a device certificate it issued, as files."""

    ca_path: Path
    cert_path: Path
    key_path: Path

    @classmethod
    def make(cls, directory: Path, name: str) -> Bootstrap:
        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.now(UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} Factory CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        device_key = ec.generate_private_key(ec.SECP256R1())
        device = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name}-device-0001")])
            )
            .issuer_name(ca_name)
            .public_key(device_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        bootstrap = cls(
            directory / f"{name}-ca.pem",
            directory / f"{name}-device.pem",
            directory / f"{name}-device.key",
        )
        bootstrap.ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        bootstrap.cert_path.write_bytes(device.public_bytes(serialization.Encoding.PEM))
        write_private(bootstrap.key_path, key_pem(device_key))
        return bootstrap


@dataclass
class EstDeployment:
    """Everything a test needs to enroll against a real EST server and worker."""

    directory: Path
    folder: CAFolder
    store: ResultsStore
    queue: str
    env: dict[str, str]
    trust_path: Path  # the CA chain: what a client trusts the server by
    passwords: dict[str, Path]
    worker: WorkerProcess | None = None
    server: subprocess.Popen[bytes] | None = None
    url: str = ""
    server_log: Path = field(default_factory=Path)

    @property
    def ca(self) -> Path:
        return self.folder.root

    def casign(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "casign", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"casign {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done

    def endpoint(self, operation: str, label: str | None = None) -> str:
        return f"{self.url}/.well-known/est/{label + '/' if label else ''}{operation}"

    def start_worker(self) -> None:
        self.worker = start_worker(
            self.ca,
            self.env["CASIGN_BROKER_URL"],
            self.env["CASIGN_STORE_URL"],
            self.store,
            self.queue,
            self.directory / "worker.log",
        )

    def start_server(self) -> None:
        """`casign est --port 0`, waiting until it prints the port it listens on."""
        self.server_log = self.directory / f"est-{uuid.uuid4().hex[:6]}.log"
        with self.server_log.open("wb") as log:
            self.server = subprocess.Popen(
                [sys.executable, "-m", "casign", "est", "--ca", str(self.ca), "--port", "0"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            found = re.search(r"EST server on (https://[^/\s]+)", self.server_log.read_text())
            if found:
                self.url = found.group(1)
                return
            if self.server.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"casign est did not start:\n{self.server_log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.server is not None:
            stop_process_group(self.server, timeout=20)
            self.server = None
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def curl(self, *args: str) -> CurlAnswer:
        """`curl` against the server, trusting the CA chain; the status, headers and body."""
        done = subprocess.run(
            ["curl", "--silent", "--show-error", "--cacert", str(self.trust_path),
             "--dump-header", "-", "--max-time", str(CURL_TIMEOUT), *args],
            capture_output=True,
            timeout=CURL_TIMEOUT + 10,
            check=False,
        )  # fmt: skip
        return CurlAnswer.parse(done)


@dataclass
class CurlAnswer:
    """What curl got: the exit code, the last response's status, headers and body."""

    exit_code: int
    status: int
    headers: dict[str, str]
    body: bytes
    stderr: str

    @classmethod
    def parse(cls, done: subprocess.CompletedProcess[bytes]) -> CurlAnswer:
        raw = done.stdout
        status, headers, body = 0, {}, b""
        # With --dump-header -, each response's head precedes the body.
        while raw.startswith(b"HTTP/"):
            head, _, raw = raw.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines[1:])
            }
            body = raw
        return cls(done.returncode, status, headers, body, done.stderr.decode(errors="replace"))

    @property
    def code(self) -> str:
        """The refusal code of a `CODE: sentence` body."""
        return self.body.decode(errors="replace").split(":", 1)[0]

    def der(self) -> bytes:
        return base64.b64decode(b"".join(self.body.split()))


def make_deployment(
    directory: Path,
    broker_url: str,
    redis_url: str,
    server_settings: str = "",
    worker: bool = True,
) -> EstDeployment:
    """The CA, producers.toml, a worker (unless told not to) and the EST server's certificate.

    The EST server itself is started by `start_server` once clients are added.
    """
    directory.mkdir(parents=True, exist_ok=True)
    folder = make_alice_ca(directory / "ca")
    secret_path = directory / "est-front.secret"
    write_private(secret_path, secrets.token_hex(32).encode())
    folder.producers_path.write_text(
        textwrap.dedent(
            f"""\
            [producers.{PRODUCER}]
            secret = "file:{secret_path}"
            profiles = ["usr_cert", "server_cert"]
            names = ["*.example.com", "*@example.com", "127.0.0.1", "factory-device-0001"]
            """
        ),
        encoding="utf-8",
    )
    prefix = f"casign-test:{uuid.uuid4().hex[:12]}"
    queue = f"casign-test-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "CASIGN_BROKER_URL": broker_url,
        "CASIGN_STORE_URL": redis_url,
        "CASIGN_STORE_PREFIX": prefix,
        "CASIGN_QUEUE": queue,
        "CASIGN_PRODUCER_ID": PRODUCER,
        "CASIGN_PRODUCER_SECRET": f"file:{secret_path}",
    }
    deployment = EstDeployment(
        directory,
        folder,
        ResultsStore.from_url(redis_url, prefix),
        queue,
        env,
        Path(folder.chain_path),
        {},
    )
    (folder.root / "intermediate" / "est.toml").write_text(
        "[server]\n" + textwrap.dedent(server_settings), encoding="utf-8"
    )
    if worker:
        deployment.start_worker()
    return deployment


def issue_server_certificate(deployment: EstDeployment) -> None:
    deployment.casign(
        "est", "cert", "--ca", str(deployment.ca), "--cn", SERVER_NAME, "--san", "IP:127.0.0.1"
    )


def add_password_client(deployment: EstDeployment, name: str, *options: str) -> Path:
    """`casign est client add NAME --password-file ...` under the EST front-end's producer."""
    password_path = deployment.directory / f"{name}.password"
    write_private(password_path, secrets.token_urlsafe(18).encode())
    deployment.passwords[name] = password_path
    deployment.casign(
        "est", "client", "add", name, "--ca", str(deployment.ca),
        "--password-file", str(password_path), "--producer", PRODUCER,
        "--secret", deployment.env["CASIGN_PRODUCER_SECRET"], *options,
    )  # fmt: skip
    return password_path


def basic(deployment: EstDeployment, name: str) -> str:
    """curl's `--user NAME:PASSWORD` for a client added with a password."""
    return f"{name}:{deployment.passwords[name].read_text()}"


def drop_keys(store: ResultsStore, queue: str) -> None:
    for pattern in (f"{store.prefix}*", queue, f"_kombu.binding.{queue}"):
        keys = list(store.client.scan_iter(match=pattern, count=1000))
        if keys:
            store.client.delete(*keys)


def csr_der(
    common_name: str,
    key: ec.EllipticCurvePrivateKey | None = None,
    san: list[x509.GeneralName] | None = None,
) -> bytes:
    """A DER CSR, as a device's `openssl req -outform DER` would make."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    signing_key = key or ec.generate_private_key(ec.SECP256R1())
    return builder.sign(signing_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def running(deployment: EstDeployment) -> Iterator[EstDeployment]:
    """Yield the started deployment; stop its processes and drop its keys afterwards."""
    try:
        yield deployment
    finally:
        deployment.stop()
        drop_keys(deployment.store, deployment.queue)
        deployment.store.client.close()
