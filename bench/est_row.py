"""The EST rows: concurrent EST clients (keep-alive, HTTP Basic) enrolling the workload's CSRs
through `casign est` against the casign service's worker, and one client's latency.

The front-end is started as users start it: its certificate issued with `casign est cert`
through the running worker, its clients written to `est.toml`, `casign est` as a process. Each
round enrolls as a client of its own, so its jobs are new (a job id covers the client) and no
round is answered from the store with an earlier round's certificates.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import re
import secrets
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from bench.cpu import process_cpu_seconds
from bench.rows import BenchError, Latency, Rate
from bench.service import VERIFY_SAMPLE, WORKER_PROCESSES, CasignService, broker_url_for
from bench.workload import PROFILE, Workload
from casign.supervise import stop_process_group
from est.passwords import hash_password
from est.settings import ClientEntry, EstSettings, ServerSettings, save_settings, settings_path
from est.wire import PKCS10_TYPE, wrap_base64

DEFAULT_CLIENTS = 64
SERVER_NAME = "est.bench.example"
START_TIMEOUT = 60.0


@dataclass
class EstFrontEnd:
    """A running `casign est` for a casign service, and what a client needs to reach it."""

    url: str
    process: subprocess.Popen[bytes]
    trust_path: Path
    password: str

    def authorization(self, client: str) -> str:
        token = base64.b64encode(f"{client}:{self.password}".encode()).decode()
        return f"Basic {token}"


def client_name(tag: str) -> str:
    return f"bench-{tag}"


@contextlib.contextmanager
def running_est(
    service: CasignService, work_dir: Path, tags: list[str], clients: int
) -> Iterator[EstFrontEnd]:
    """`casign est` on a free port for `service`, with one client per tag in `tags`."""
    ca = service.authority.folder.root
    env = {
        **os.environ,
        **service.authority.worker_env,
        "CASIGN_BROKER_URL": broker_url_for(service.redis_url),
        "CASIGN_STORE_URL": service.redis_url,
        "CASIGN_STORE_PREFIX": service.prefix,
        "CASIGN_QUEUE": service.queue,
    }
    issued = subprocess.run(
        [sys.executable, "-m", "casign", "est", "cert", "--ca", str(ca), "--cn", SERVER_NAME,
         "--san", "IP:127.0.0.1", "--force"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if issued.returncode != 0:
        raise BenchError(f"casign est cert failed: {issued.stderr.strip()[-500:]}")
    password = secrets.token_urlsafe(18)
    stored = hash_password(password.encode())
    save_settings(
        settings_path(ca),
        EstSettings(
            server=ServerSettings(
                default_label=PROFILE,
                labels=[PROFILE],
                wait_seconds=120,
                max_connections=2 * clients,
                # One queue message in flight per worker process: each message twice the size
                # it would be with the default 4 lanes, and a worker's cost per certificate
                # falls with the size of its batch.
                lanes=WORKER_PROCESSES,
            ),
            clients={client_name(tag): ClientEntry(password=stored) for tag in tags},
        ),
    )
    log_path = work_dir / "est.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "casign", "est", "--ca", str(ca), "--port", "0"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = _wait_for_url(process, log_path)
        yield EstFrontEnd(url, process, service.authority.folder.chain_path, password)
    finally:
        stop_process_group(process, timeout=20)


def _wait_for_url(process: subprocess.Popen[bytes], log_path: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        found = re.search(r"EST server on (https://[^/\s]+)", log_path.read_text(errors="replace"))
        if found:
            return found.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise BenchError(f"casign est did not start: {log_path.read_text(errors='replace')[-800:]}")


def est_bodies(workload: Workload) -> list[bytes]:
    """Each CSR as an EST client sends it: base64 DER."""
    return [
        wrap_base64(x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER))
        for pem in workload.csr_pems
    ]


def _tls_context(front: EstFrontEnd) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(front.trust_path))


async def _enroll(
    session: aiohttp.ClientSession, url: str, body: bytes, authorization: str
) -> bytes:
    headers = {"Content-Type": PKCS10_TYPE, "Authorization": authorization}
    async with session.post(url, data=body, headers=headers) as response:
        answer = await response.read()
        if response.status != 200:
            raise BenchError(f"EST answered {response.status}: {answer[:200]!r}")
        return answer


async def _enroll_all(
    front: EstFrontEnd, bodies: list[bytes], clients: int, authorization: str
) -> list[bytes]:
    """`clients` keep-alive connections, each enrolling the next CSR as soon as it has its last."""
    url = f"{front.url}/.well-known/est/simpleenroll"
    answers: list[bytes] = [b""] * len(bodies)
    pending = iter(range(len(bodies)))
    connector = aiohttp.TCPConnector(limit=clients, ssl=_tls_context(front))
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client() -> None:
            for index in pending:
                answers[index] = await _enroll(session, url, bodies[index], authorization)

        await asyncio.gather(*(client() for _ in range(clients)))
    return answers


def _check_answers(answers: list[bytes], service: CasignService, what: str) -> None:
    for answer in random.sample(answers, min(VERIFY_SAMPLE, len(answers))):
        der = base64.b64decode(b"".join(answer.split()))
        (certificate,) = pkcs7.load_der_pkcs7_certificates(der)
        certificate.verify_directly_issued_by(service.intermediate)
    if len(answers) != len({answer for answer in answers}):
        raise BenchError(f"{what}: two enrollments were answered with the same certificate")


def measure_est(
    front: EstFrontEnd, service: CasignService, workload: Workload, clients: int, tag: str
) -> Rate:
    """Every CSR of the workload enrolled by `clients` concurrent EST clients."""
    bodies = est_bodies(workload)
    before = service.store.count_issued()
    pids = [service.main_pid, *service.pool_pids(), front.process.pid]
    cpu_before = sum(process_cpu_seconds(pid) for pid in pids)
    start = time.perf_counter()
    answers = asyncio.run(
        _enroll_all(front, bodies, clients, front.authorization(client_name(tag)))
    )
    elapsed = time.perf_counter() - start
    cpu_seconds = sum(process_cpu_seconds(pid) for pid in pids) - cpu_before
    _check_answers(answers, service, f"EST {tag}")
    recorded = service.store.count_issued() - before
    if recorded != len(bodies):
        raise BenchError(f"EST {tag}: {recorded} index entries for {len(bodies)} enrollments")
    return Rate(
        len(bodies),
        elapsed,
        f"{clients} EST clients (keep-alive, HTTP Basic, aiohttp) -> casign est -> "
        "2 worker processes; CPU: front-end and worker, not the clients",
        cpu_seconds,
    )


def measure_est_latency(
    front: EstFrontEnd, service: CasignService, workload: Workload, jobs: int, tag: str
) -> Latency:
    """`jobs` enrollments one after another on one keep-alive connection, on an idle service."""
    bodies = est_bodies(workload)
    jobs = min(jobs, len(bodies) - 1)  # each a CSR of its own, so each a new job
    authorization = front.authorization(client_name(tag))

    async def run() -> list[float]:
        url = f"{front.url}/.well-known/est/simpleenroll"
        connector = aiohttp.TCPConnector(limit=1, ssl=_tls_context(front))
        samples: list[float] = []
        async with aiohttp.ClientSession(connector=connector) as session:
            for index in range(-1, jobs):  # the first opens the connection; not counted
                started = time.perf_counter()
                answer = await _enroll(
                    session, url, bodies[(index + 1) % len(bodies)], authorization
                )
                if index >= 0:
                    samples.append((time.perf_counter() - started) * 1000)
                _check_answers([answer], service, f"EST latency job {index}")
        return samples

    return Latency(
        tuple(asyncio.run(run())),
        f"{jobs} x simpleenroll, one at a time on one keep-alive connection, idle service",
    )
