"""End to end through the queue: real worker processes, real Redis (and RabbitMQ where present)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis
from cryptography import x509

from core.index import format_serial
from core.keys import KeyType
from core.messages import JobResult
from producers import Producer
from store.results import ResultsStore
from tests.csrs import make_csr
from tests.softhsm_token import SoftHsmToken
from tests.workers import WorkerProcess, start_worker
from worker.cafolder import CAFolder, CAOptions, init_ca

pytestmark = pytest.mark.slow

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"


def producer_for(broker_url: str, store: ResultsStore, queue: str, redis_url: str) -> Producer:
    """A producer on the test's queue and key prefix."""
    return Producer(broker_url, redis_url, store_prefix=store.prefix, queue=queue, batch_size=100)


def issue_many(producer: Producer, count: int, timeout: float = 180) -> list[JobResult]:
    requests = [
        producer.request(make_csr(f"host{index}.example.com"), profile="server_cert")
        for index in range(count)
    ]
    job_ids = producer.submit_many(requests)
    results = list(producer.results(job_ids, timeout=timeout))
    assert sorted(result.job_id for result in results) == sorted(job_ids)
    return results


def check_issued(
    results: list[JobResult], store: ResultsStore, chain_path: Path, tmp_path: Path
) -> None:
    """Every result issued, verified by openssl, and recorded once in the index."""
    assert [result.status for result in results if not result.ok] == []
    bundle = tmp_path / "issued"
    bundle.mkdir()
    paths = []
    for result in results:
        assert result.certificate_pem is not None
        path = bundle / f"{result.job_id}.pem"
        path.write_text(result.certificate_pem)
        paths.append(str(path))
    for start in range(0, len(paths), 250):
        done = subprocess.run(
            ["openssl", "verify", "-CAfile", str(chain_path), *paths[start : start + 250]],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.count(": OK") == len(paths[start : start + 250])
    serials = {result.serial for result in results}
    assert len(serials) == len(results)
    lines = list(store.index_lines())
    assert len(lines) == len(results)
    assert {line.split("\t")[3] for line in lines} == serials
    assert store.count_serials() == len(results)
    assert serials == {
        format_serial(x509.load_pem_x509_certificate(r.certificate_pem.encode()).serial_number)
        for r in results
        if r.certificate_pem
    }


def test_thousand_csrs_through_a_real_worker(
    worker: WorkerProcess,
    broker_url: str,
    redis_url: str,
    store: ResultsStore,
    queue: str,
    chain_path: Path,
    tmp_path: Path,
) -> None:
    with producer_for(broker_url, store, queue, redis_url) as producer:
        results = issue_many(producer, 1000)
    check_issued(results, store, chain_path, tmp_path)


def test_a_message_body_travels_as_json_text_not_base64(
    broker_url: str, redis_url: str, store: ResultsStore, queue: str
) -> None:
    """No worker here: the message stays in the broker's list to be read as kombu wrote it."""
    with producer_for(broker_url, store, queue, redis_url) as producer:
        producer.submit(make_csr("plain.example.com"), job_id="plain-body")
    client = redis.Redis.from_url(redis_url)
    try:
        (raw,) = client.lrange(queue, 0, -1)
    finally:
        client.delete(queue)
        client.close()
    message = json.loads(raw)
    assert message["properties"]["body_encoding"] == "utf-8"
    args, _, _ = json.loads(message["body"])
    assert [job["job_id"] for job in args[0]["jobs"]] == ["plain-body"]


def test_a_base64_message_of_an_older_producer_is_still_signed(
    worker: WorkerProcess, broker_url: str, redis_url: str, store: ResultsStore, queue: str
) -> None:
    with producer_for(broker_url, store, queue, redis_url) as producer:
        producer._celery.conf.broker_transport_options["body_encoding"] = "base64"
        job_id = producer.submit(make_csr("older.example.com"))
        (result,) = producer.results([job_id], timeout=60)
    assert result.ok, result.message


def test_same_job_id_twice_gives_one_certificate(
    worker: WorkerProcess, broker_url: str, redis_url: str, store: ResultsStore, queue: str
) -> None:
    csr = make_csr("twice.example.com")
    with producer_for(broker_url, store, queue, redis_url) as producer:
        first = producer.submit(csr, job_id="order-42")
        (result_one,) = producer.results([first], timeout=60)
        second = producer.submit(csr, job_id="order-42")
        (result_two,) = producer.results([second], timeout=60)
        other = producer.submit(make_csr("other.example.com"), job_id="order-42")
        (reused,) = producer.results([other], timeout=60)
    assert result_one.ok and result_one.certificate_pem == result_two.certificate_pem
    assert result_one.serial == result_two.serial
    assert reused.status == "refused" and reused.code == "request.job_id_reused"
    assert store.count_issued() == 1


def test_refusal_reaches_the_producer_and_worker_stays_up(
    worker: WorkerProcess, broker_url: str, redis_url: str, store: ResultsStore, queue: str
) -> None:
    with producer_for(broker_url, store, queue, redis_url) as producer:
        bad = producer.submit(make_csr("not_a_hostname"), profile="server_cert")
        unknown = producer.submit(make_csr("ok.example.com"), profile="no_such_profile")
        good = producer.submit(make_csr("ok.example.com"))
        results = {r.job_id: r for r in producer.results([bad, unknown, good], timeout=60)}
    assert results[bad].code == "subject.cn_not_fqdn"
    assert results[unknown].code == "request.unknown_profile"
    assert results[good].ok
    assert worker.process.poll() is None


def test_producers_import_without_keystore_pkcs11_or_worker(
    broker_url: str, redis_url: str, store: ResultsStore, queue: str, tmp_path: Path
) -> None:
    """A producer service has neither the keystore, python-pkcs11 nor key files."""
    script = textwrap.dedent(
        f"""
        import sys

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {{"keystore", "worker", "pkcs11"}}:
                    raise ImportError("blocked for the isolation test: " + name)
                return None

        sys.meta_path.insert(0, Refuse())
        from producers import Producer
        with Producer({broker_url!r}, {redis_url!r}, store_prefix={store.prefix!r}, queue={queue!r}) as p:
            job_id = p.submit("-----BEGIN CERTIFICATE REQUEST-----\\n", job_id="iso-1")
        assert not any(m.split(".")[0] in {{"keystore", "worker", "pkcs11"}} for m in sys.modules)
        print("submitted", job_id)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "submitted iso-1" in done.stdout


def _rabbitmq_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.skipif(
    not _rabbitmq_reachable(), reason="no RabbitMQ on 127.0.0.1:5672 on this machine"
)
def test_rabbitmq_as_the_broker(
    ca_folder: CAFolder,
    store: ResultsStore,
    redis_url: str,
    queue: str,
    chain_path: Path,
    tmp_path: Path,
) -> None:
    process = start_worker(
        ca_folder.root, RABBITMQ_URL, redis_url, store, queue, tmp_path / "worker.log"
    )
    try:
        with producer_for(RABBITMQ_URL, store, queue, redis_url) as producer:
            results = issue_many(producer, 200)
    finally:
        process.stop()
    check_issued(results, store, chain_path, tmp_path)


def test_thousand_csrs_with_the_intermediate_key_in_softhsm(
    softhsm_token: SoftHsmToken,
    broker_url: str,
    redis_url: str,
    store: ResultsStore,
    queue: str,
    tmp_path: Path,
) -> None:
    folder = init_ca(
        tmp_path / "hsm-ca",
        CAOptions(
            key_type=KeyType.RSA2048, intermediate_key_uri=softhsm_token.key_uri("intermediate")
        ),
    )
    assert not folder.intermediate_key_path.exists()
    process = start_worker(
        folder.root,
        broker_url,
        redis_url,
        store,
        queue,
        tmp_path / "worker.log",
        extra_env=softhsm_token.env,
    )
    try:
        with producer_for(broker_url, store, queue, redis_url) as producer:
            results = issue_many(producer, 1000)
    finally:
        process.stop()
    check_issued(results, store, folder.chain_path, tmp_path)
    assert softhsm_token.pin_file.read_text().strip() not in process.log()
