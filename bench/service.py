"""casign as users run it: 2 worker processes on Redis, fed and drained by `producers`."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
from cryptography import x509

from bench.authorities import BenchAuthority
from bench.cpu import CpuMeter
from bench.rows import BenchError, Latency, Rate
from bench.workload import PROFILE, Workload
from casign.cli_producers_admin import url_with_user
from casign.safe_path import python_command
from core.messages import JobResult
from producers import Producer
from store.acl import AclAdmin, KeyScope, Role, role_user
from store.results import ResultsStore
from tests.workers import WorkerProcess, start_worker

WORKER_PROCESSES = 2
WARMUP_BATCH = 50
VERIFY_SAMPLE = 50
# A synthetic index entry: valid, expiring 2027-12-31, `openssl ca`'s six fields.
PRELOAD_LINE = "V\t271231235959Z\t\t{serial}\tunknown\t/CN=preload{index:07d}.bench.example"
PRELOAD_CHUNK = 2000
# The producer of the sealed row: listed in its CA's producers.toml, every batch sealed.
SEALED_PRODUCER = "bench"


def broker_url_for(redis_url: str) -> str:
    """The same Redis as a Celery broker URL (kombu spells a unix socket redis+socket://)."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url.removeprefix("unix://")
    return redis_url


def delete_keys(client: redis.Redis, pattern: str) -> int:
    """UNLINK every key matching `pattern` (a SCAN glob); returns how many went."""
    removed = 0
    batch: list[str] = []
    for key in client.scan_iter(match=pattern, count=5000):
        batch.append(key)
        if len(batch) >= 1000:
            removed += int(client.unlink(*batch))
            batch = []
    if batch:
        removed += int(client.unlink(*batch))
    return removed


def _status_field(pid: int, name: str) -> str | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return None


def children_of(parent: int) -> list[int]:
    """Pids whose parent is `parent`, read from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _status_field(int(entry.name), "PPid") == str(parent):
            children.append(int(entry.name))
    return sorted(children)


def rss_kib(pid: int) -> int:
    """VmRSS of `pid` in KiB (0 once it has gone)."""
    value = _status_field(pid, "VmRSS")
    return int(value.split()[0]) if value else 0


@dataclass(frozen=True)
class Sealed:
    """A CA folder copy that lists one producer, and each role's Redis URL as its own user."""

    folder: Path
    producer: str
    secret_source: str
    signer_url: str
    producer_url: str
    users: tuple[str, ...]


def seal_authority(
    authority: BenchAuthority, directory: Path, redis_url: str, prefix: str, queue: str
) -> Sealed:
    """Copy the CA folder to `directory`, then run `casign producer add` and `casign acl add
    signer` on it through `redis_url` as its admin: producers.toml, the secret, the users."""
    shutil.copytree(authority.folder.root, directory, symlinks=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CASIGN_")},
        "CASIGN_REDIS_ADMIN_URL": redis_url,
        "CASIGN_STORE_PREFIX": prefix,
        "CASIGN_QUEUE": queue,
    }
    where = ["--ca", str(directory), "--store", redis_url, "--broker", broker_url_for(redis_url)]
    for command in (["producer", "add", SEALED_PRODUCER], ["acl", "add", "signer"]):
        done = subprocess.run(
            [*python_command(), "-m", "casign", *command, *where],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise BenchError(f"casign {' '.join(command)}: {done.stderr.strip()}")
    private = directory / "intermediate" / "private"
    scope = KeyScope(prefix, queue)
    signer = role_user(scope, Role.SIGNER)
    producer = role_user(scope, Role.PRODUCER, SEALED_PRODUCER)
    signer_password = (private / "redis" / "signer.redis-password").read_text().strip()
    producer_password = (
        (private / "producers" / f"{SEALED_PRODUCER}.redis-password").read_text().strip()
    )
    secret = private / "producers" / f"{SEALED_PRODUCER}.secret"
    return Sealed(
        directory,
        SEALED_PRODUCER,
        f"file:{secret}",
        url_with_user(redis_url, signer.name, Path(), signer_password),
        url_with_user(redis_url, producer.name, Path(), producer_password),
        (signer.name, producer.name),
    )


@dataclass
class CasignService:
    """A running `casign worker` with its own store prefix and queue in the shared Redis;
    `sealed`: serving one listed producer, worker and producer on their own Redis users."""

    authority: BenchAuthority
    redis_url: str
    prefix: str
    queue: str
    worker: WorkerProcess
    store: ResultsStore
    intermediate: x509.Certificate
    sealed: Sealed | None = None

    def producer(self, batch_size: int) -> Producer:
        if self.sealed is None:
            return Producer(
                broker_url_for(self.redis_url),
                self.redis_url,
                store_prefix=self.prefix,
                queue=self.queue,
                batch_size=batch_size,
            )
        return Producer(
            broker_url_for(self.sealed.producer_url),
            self.sealed.producer_url,
            store_prefix=self.prefix,
            queue=self.queue,
            batch_size=batch_size,
            identity=self.sealed.producer,
            secret_source=self.sealed.secret_source,
        )

    @property
    def main_pid(self) -> int:
        return self.worker.process.pid

    def pool_pids(self) -> list[int]:
        return children_of(self.main_pid)

    def pool_rss_kib(self) -> dict[int, int]:
        return {pid: rss_kib(pid) for pid in self.pool_pids()}


@contextlib.contextmanager
def running_service(
    authority: BenchAuthority,
    redis_url: str,
    prefix: str,
    queue: str,
    log_path: Path,
    workload: Workload,
    concurrency: int = WORKER_PROCESSES,
    sealed_in: Path | None = None,
) -> Iterator[CasignService]:
    """Start a worker of `concurrency` processes, warm them up, stop it and drop its keys.

    With `sealed_in`, on a copy of the CA folder made there that lists one producer, the worker
    and the producer each on their own Redis user (deleted afterwards).
    """
    store = ResultsStore.from_url(redis_url, prefix)
    sealed = None
    if sealed_in is not None:
        sealed = seal_authority(authority, sealed_in, redis_url, prefix, queue)
    try:
        worker = start_worker(
            sealed.folder if sealed else authority.folder.root,
            broker_url_for(sealed.signer_url if sealed else redis_url),
            sealed.signer_url if sealed else redis_url,
            store,
            queue,
            log_path,
            concurrency=concurrency,
            extra_env=authority.worker_env,
        )
    except BaseException:
        _delete_users(redis_url, sealed)
        raise
    try:
        service = CasignService(
            authority,
            redis_url,
            prefix,
            queue,
            worker,
            store,
            authority.folder.intermediate_certificate(),
            sealed,
        )
        # Two batches at once, so that each pool process signs one before timing starts.
        measure_throughput(service, workload.head(2 * WARMUP_BATCH), "warmup", WARMUP_BATCH)
        yield service
    finally:
        worker.stop()
        delete_keys(store.client, f"{prefix}:*")
        delete_keys(store.client, queue)
        delete_keys(store.client, f"_kombu.binding.{queue}")
        store.client.close()
        _delete_users(redis_url, sealed)


def _delete_users(redis_url: str, sealed: Sealed | None) -> None:
    if sealed is None:
        return
    admin = AclAdmin.from_url(redis_url, "the bench Redis")
    try:
        for user in sealed.users:
            admin.delete(user)
    finally:
        admin.close()


def check_results(
    results: list[JobResult], expected: int, intermediate: x509.Certificate, what: str
) -> None:
    """Every job issued, and a sample of the certificates verifies against the intermediate."""
    refused = [result for result in results if not result.ok or not result.certificate_pem]
    if refused:
        first = refused[0]
        raise BenchError(
            f"{what}: {len(refused)} job(s) not issued, first {first.job_id}: "
            f"{first.status} [{first.code}] {first.message}"
        )
    if len(results) != expected:
        raise BenchError(f"{what}: {len(results)} results for {expected} jobs")
    for result in random.sample(results, min(VERIFY_SAMPLE, len(results))):
        assert result.certificate_pem is not None
        certificate = x509.load_pem_x509_certificate(result.certificate_pem.encode("ascii"))
        certificate.verify_directly_issued_by(intermediate)


def measure_throughput(
    service: CasignService, workload: Workload, tag: str, batch_size: int
) -> Rate:
    """Submit every CSR through `producers` and wait until every certificate is back."""
    before = service.store.count_issued()
    timeout = max(120.0, len(workload) / 20)
    with service.producer(batch_size) as producer:
        cpu = CpuMeter([service.main_pid, *service.pool_pids()])
        start = time.perf_counter()
        requests = [
            producer.request(pem, profile=PROFILE, job_id=f"{tag}-{index:07d}")
            for index, pem in enumerate(workload.csr_pems)
        ]
        job_ids = producer.submit_many(requests)
        results = list(producer.results(job_ids, timeout=timeout))
        elapsed = time.perf_counter() - start
        cpu_seconds = cpu.seconds()
    check_results(results, len(job_ids), service.intermediate, f"casign {tag}")
    recorded = service.store.count_issued() - before
    if recorded != len(job_ids):
        raise BenchError(f"casign {tag}: {recorded} index entries for {len(job_ids)} jobs")
    return Rate(
        len(job_ids),
        elapsed,
        f"Producer.submit_many + results, {WORKER_PROCESSES} worker processes, "
        f"batches of {batch_size}, Redis broker and store",
        cpu_seconds,
    )


def measure_latency(service: CasignService, workload: Workload, jobs: int, tag: str) -> Latency:
    """`jobs` single-job round trips (submit, then wait for its result), one after another."""
    samples: list[float] = []
    with service.producer(batch_size=1) as producer:
        for index in range(-1, jobs):  # the first round trip opens connections; not counted
            pem = workload.csr_pems[index % len(workload)]
            start = time.perf_counter()
            job_id = producer.submit(pem, profile=PROFILE, job_id=f"{tag}-{index + 1:07d}")
            results = list(producer.results([job_id], timeout=30))
            elapsed_ms = (time.perf_counter() - start) * 1000
            check_results(results, 1, service.intermediate, f"latency job {job_id}")
            if index >= 0:
                samples.append(elapsed_ms)
    return Latency(
        tuple(samples), f"{jobs} x Producer.submit + results, one at a time, idle service"
    )


def preload_index(store: ResultsStore, count: int) -> float:
    """Add `count` synthetic issued certificates to the store's index; returns the seconds taken.

    Fills what publishing a certificate writes to: `index`, `index:order`, `serials` and
    `certs` (a short placeholder in place of the PEM), pipelined in chunks.
    """
    client = store.client
    index_key, order_key = store.key("index"), store.key("index:order")
    serials_key, certs_key = store.key("serials"), store.key("certs")
    start = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for first in range(0, count, PRELOAD_CHUNK):
        indices = range(first, min(first + PRELOAD_CHUNK, count))
        # 0x7F00...: a 159-bit serial casign draws lands on one with odds of count / 2**152.
        serials = [f"7F{index:038X}" for index in indices]
        pipe.hset(
            index_key,
            mapping={
                serial: PRELOAD_LINE.format(serial=serial, index=index)
                for serial, index in zip(serials, indices, strict=True)
            },
        )
        pipe.rpush(order_key, *serials)
        pipe.hset(serials_key, mapping={serial: f"preload-{serial}" for serial in serials})
        pipe.hset(certs_key, mapping=dict.fromkeys(serials, "synthetic"))
        if len(pipe) >= 40:
            pipe.execute()
    pipe.execute()
    return time.perf_counter() - start
