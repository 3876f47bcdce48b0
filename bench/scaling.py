"""Scaling out: one `casign worker` of one process, then a second one on the same queue (as a
second machine would join), on a Redis of the row's own, so that its command and CPU counters
are casign's alone: from them, what one Redis store can serve."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.authorities import BenchAuthority
from bench.rows import BenchError, Rate
from bench.service import (
    CasignService,
    broker_url_for,
    children_of,
    measure_throughput,
    running_service,
)
from bench.workload import Workload
from tests.workers import start_worker

SOCKET_WAIT_SECONDS = 10.0
START_SECONDS = 60.0
KEY_OPEN_SECONDS = 3.0


@dataclass(frozen=True)
class RedisLoad:
    """What Redis did for a number of certificates: commands run and CPU seconds spent."""

    certificates: int
    commands: int
    cpu_seconds: float

    @property
    def commands_per_1000(self) -> float:
        return 1000 * self.commands / self.certificates

    @property
    def cpu_ms_per_1000(self) -> float:
        return 1e6 * self.cpu_seconds / self.certificates


def redis_counters(client: redis.Redis) -> tuple[int, float]:
    """(commands run, CPU seconds used) since the server started."""
    commands = sum(int(stats["calls"]) for stats in client.info("commandstats").values())
    cpu = client.info("cpu")
    return commands, float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


@contextlib.contextmanager
def own_redis(directory: Path) -> Iterator[str]:
    """A redis-server on a unix socket in `directory`, no persistence, noeviction; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is not on PATH (apt install redis-server)")
    directory.mkdir(parents=True, exist_ok=True)
    socket = directory / "redis.sock"
    process = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(socket), "--unixsocketperm", "700",
         "--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction",
         "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"unix://{socket}"
    try:
        deadline = time.monotonic() + SOCKET_WAIT_SECONDS
        while True:
            with contextlib.suppress(redis.RedisError, OSError):
                if redis.Redis.from_url(url).ping():
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise BenchError("the scaling row's redis-server did not start")
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def measured(
    service: CasignService, workload: Workload, tag: str, batch_size: int, how: str
) -> tuple[Rate, RedisLoad]:
    """The throughput of `service` over `workload`, and what Redis did meanwhile."""
    client = service.store.client
    commands, cpu = redis_counters(client)
    rate = measure_throughput(service, workload, tag, batch_size)
    commands_after, cpu_after = redis_counters(client)
    load = RedisLoad(rate.jobs, commands_after - commands, cpu_after - cpu)
    return dataclasses.replace(rate, how=how), load


@contextlib.contextmanager
def one_worker(
    authority: BenchAuthority, redis_url: str, run_id: str, workload: Workload, work_dir: Path
) -> Iterator[CasignService]:
    """A `casign worker` of one process on the row's own Redis."""
    with running_service(
        authority,
        redis_url,
        f"{run_id}:scale",
        f"{run_id}.queue.scale",
        work_dir / "worker-scale-1.log",
        workload,
        concurrency=1,
    ) as service:
        yield service


@contextlib.contextmanager
def second_worker(service: CasignService, work_dir: Path) -> Iterator[None]:
    """Another `casign worker` of one process on the same queue and store."""
    worker = start_worker(
        service.authority.folder.root,
        broker_url_for(service.redis_url),
        service.redis_url,
        service.store,
        service.queue,
        work_dir / "worker-scale-2.log",
        concurrency=1,
        extra_env=service.authority.worker_env,
    )
    try:
        deadline = time.monotonic() + START_SECONDS
        while not children_of(worker.process.pid):  # its pool process forked ...
            if worker.process.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the second worker did not start: {worker.log()[-500:]}")
            time.sleep(0.1)
        time.sleep(KEY_OPEN_SECONDS)  # ... and opened the key (a file key: well under this)
        yield
    finally:
        worker.stop()


def store_capacity_lines(one: Rate, two: Rate, load: RedisLoad) -> list[str]:
    """What the figures say about one Redis store serving many signers, arithmetic shown."""
    if load.cpu_seconds <= 0:
        return ["Redis used no measurable CPU: no capacity can be derived from this run."]
    per_certificate_ms = load.cpu_ms_per_1000 / 1000
    certificates_per_redis_core = 1000 / per_certificate_ms
    signer_core_rate = one.per_second  # one worker process is one signer core
    cores = certificates_per_redis_core / signer_core_rate
    return [
        f"1 worker of 1 process: {one.per_second:,.0f}/s; 2 workers of 1 process on one queue: "
        f"{two.per_second:,.0f}/s ({two.per_second / one.per_second:.2f} x).",
        f"Redis per 1,000 certificates (broker and store, this run): "
        f"{load.commands_per_1000:,.0f} commands, {load.cpu_ms_per_1000:,.1f} ms of Redis CPU.",
        f"One Redis core (Redis runs commands on one thread) then serves at most "
        f"1000 / {per_certificate_ms:.3f} ms = {certificates_per_redis_core:,.0f} certificates/s;"
        f" at {signer_core_rate:,.0f}/s per signer core that is {cores:,.1f} signer cores.",
    ]
