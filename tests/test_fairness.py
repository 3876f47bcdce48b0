"""One producer's backlog does not starve another: each producer has its own queue, and the
worker takes from the queues in turn. Real Redis, a real `casign worker` with two processes."""

from __future__ import annotations

import json
import os
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from core.errors import ConfigurationError
from core.keys import KeyType
from core.messages import SignRequest
from core.queue import consumed_queues, producer_queue
from producers import Producer
from store.results import ResultsStore
from tests.csrs import make_csr
from tests.test_faults import record_numbers
from tests.workers import WorkerProcess, start_worker
from worker.app import WorkerConfig
from worker.cafolder import CAFolder, CAOptions, init_ca
from worker.process import SignerSettings

FLOOD_JOBS = int(os.environ.get("CASIGN_FLOOD_JOBS", "30000"))
STEADY_JOBS = 100
STEADY_BATCH = 20  # five messages, so that they meet the flood's turn by turn
RESULT_TIMEOUT = 120.0


class CountingProducer(Producer):
    """A producer that counts how often it sent each job."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sends: Counter[str] = Counter()

    def _send(self, requests: list[SignRequest]) -> None:
        self.sends.update(request.job_id for request in requests)
        super()._send(requests)


@dataclass
class FairRig:
    folder: CAFolder
    secrets_dir: Path
    broker_url: str
    redis_url: str
    store: ResultsStore
    queue: str

    def producer(self, name: str, **options: Any) -> CountingProducer:
        return CountingProducer(
            self.broker_url,
            self.redis_url,
            store_prefix=self.store.prefix,
            queue=self.queue,
            identity=name,
            secret_source=f"file:{self.secrets_dir / name}",
            **options,
        )


@pytest.fixture(scope="module")
def two_producer_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[CAFolder, Path]:
    directory = tmp_path_factory.mktemp("fair")
    folder = init_ca(directory / "ca", CAOptions(key_type=KeyType.RSA2048))
    secrets_dir = directory / "secrets"
    secrets_dir.mkdir()
    tables = []
    for name in ("flood", "steady"):
        path = secrets_dir / name
        path.write_text(secrets.token_hex(32) + "\n")
        path.chmod(0o400)
        tables.append(f'[producers.{name}]\nsecret = "file:{path}"\nprofiles = ["server_cert"]\n')
    folder.producers_path.write_text("\n".join(tables))
    return folder, secrets_dir


@pytest.fixture
def rig(
    two_producer_ca: tuple[CAFolder, Path],
    broker_url: str,
    redis_url: str,
    store: ResultsStore,
    queue: str,
) -> Iterator[FairRig]:
    folder, secrets_dir = two_producer_ca
    yield FairRig(folder, secrets_dir, broker_url, redis_url, store, queue)
    with redis.Redis.from_url(redis_url) as client:
        client.delete(*consumed_queues(queue, ("flood", "steady")))


def test_each_producer_has_a_queue_of_its_own_and_the_worker_consumes_them_all(
    two_producer_ca: tuple[CAFolder, Path], redis_url: str
) -> None:
    folder, _ = two_producer_ca
    config = WorkerConfig(
        broker_url=redis_url,
        signer=SignerSettings(folder.root, redis_url),
        queue="ca.sign",
        producers=("steady", "flood"),
    )
    assert config.queues == ("ca.sign", "ca.sign:flood", "ca.sign:steady")
    assert producer_queue("ca.sign", None) == "ca.sign"
    assert config.celery_settings()["broker_transport_options"]["queue_order_strategy"] == (
        "round_robin"
    )
    environment = {"CASIGN_CA_DIR": str(folder.root), "CASIGN_QUEUE": "ca.sign"}
    assert WorkerConfig.from_environment(environment).producers == ("flood", "steady")
    # A name that could reach past its own queue (a glob, a `:`, Celery's `,`) names none.
    for name in ("web,hr", "web:x", "web*", "a b"):
        with pytest.raises(ConfigurationError, match="producer name"):
            consumed_queues("ca.sign", [name])


def _p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[max(0, round(0.99 * len(ordered)) - 1)]


def _steady_round(producer: CountingProducer, label: str) -> list[float]:
    """Send STEADY_JOBS jobs, wait for every answer; each job's seconds from send to answer."""
    csr = make_csr(f"{label}.example.com")
    requests = [producer.request(csr, profile="server_cert") for _ in range(STEADY_JOBS)]
    began = time.monotonic()
    job_ids = producer.submit_many(requests)
    latencies = []
    for result in producer.results(job_ids, timeout=RESULT_TIMEOUT):
        assert result.ok, (result.code, result.message)
        latencies.append(time.monotonic() - began)
    assert len(latencies) == STEADY_JOBS
    return latencies


@pytest.mark.slow
def test_a_flood_from_one_producer_does_not_starve_another(rig: FairRig, tmp_path: Path) -> None:
    """`flood` queues FLOOD_JOBS jobs, then `steady` sends 100: they are answered in a time far
    below what the backlog queued ahead of them takes to drain (that backlog over the signing
    rate measured meanwhile, both under the same load; the rest of the flood is then dropped,
    to keep the test short), and none of them is sent twice."""
    worker: WorkerProcess = start_worker(
        rig.folder.root, rig.broker_url, rig.redis_url, rig.store, rig.queue, tmp_path / "w.log"
    )
    broker = redis.Redis.from_url(rig.redis_url)
    try:
        # resend_after is short (default 60 s): a job waiting its turn must still not be resent.
        with (
            rig.producer("flood") as flood,
            rig.producer("steady", batch_size=STEADY_BATCH, resend_after=10.0) as steady,
        ):
            alone = _steady_round(steady, "alone")
            flood_csr = make_csr("flood.example.com")
            flood_began = time.monotonic()
            flood.submit_many(
                flood.request(flood_csr, profile="server_cert") for _ in range(FLOOD_JOBS)
            )
            flood_queued = time.monotonic() - flood_began
            backlog = int(broker.llen(flood.delivery_queue)) * flood.batch_size
            issued_before, steady_began = rig.store.count_issued(), time.monotonic()
            crowded = _steady_round(steady, "crowded")
            steady_took = time.monotonic() - steady_began
            signed_meanwhile = rig.store.count_issued() - issued_before
            flood_left = int(broker.llen(flood.delivery_queue)) * flood.batch_size
            assert set(steady.sends.values()) == {1}, "a steady job was sent twice"
            assert set(flood.sends.values()) == {1}, "a flood job was sent twice"
    finally:
        broker.delete(producer_queue(rig.queue, "flood"))
        worker.stop()
        broker.close()
    rate = signed_meanwhile / steady_took
    backlog_drain = backlog / rate
    figures = {
        "flood_jobs": FLOOD_JOBS,
        "flood_queued_s": round(flood_queued, 2),
        "backlog_ahead_of_steady_jobs": backlog,
        "signing_rate_per_s": round(rate),
        "backlog_drain_s": round(backlog_drain, 1),
        "flood_left_when_steady_done_jobs": flood_left,
        "steady_p99_alone_s": round(_p99(alone), 3),
        "steady_p99_with_flood_s": round(_p99(crowded), 3),
        "steady_sends": sum(steady.sends.values()),
    }
    record_numbers("test_a_flood_from_one_producer_does_not_starve_another", **figures)
    print(json.dumps(figures))  # what RELIABILITY.md records
    assert backlog >= FLOOD_JOBS // 2, (
        f"the flood was not queued ahead of the steady jobs: {figures}"
    )
    assert flood_left > 0, f"the flood drained before the steady jobs were answered: {figures}"
    assert _p99(crowded) < backlog_drain / 3, figures
