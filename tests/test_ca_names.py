"""One CA per queue and key space by construction: `casign init` derives the queue, the key
prefix and the intermediate's name from the CA's key, and every side reads the same names."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from casign.config import ca_names, resolve_endpoints
from core.auth import ca_identity
from core.keys import KeyType
from core.layout import folder_names
from core.queue import LEGACY_NAMES, names_for_ca
from producers import Producer
from store.results import ResultsStore
from tests.csrs import make_csr
from tests.workers import WorkerProcess, wait_until_started
from worker.app import WorkerConfig
from worker.cafolder import CAFolder, CAOptions, init_ca

DEFAULTS = CAOptions(key_type=KeyType.P256, base_url="http://pki.example.com")


def intermediate_of(folder: CAFolder) -> x509.Certificate:
    return x509.load_pem_x509_certificate(folder.intermediate_cert_path.read_bytes())


def common_name(certificate: x509.Certificate) -> str:
    return str(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


@pytest.fixture(scope="module")
def two_cas(tmp_path_factory: pytest.TempPathFactory) -> tuple[CAFolder, CAFolder]:
    """Two CA folders made with every default (as `casign init DIR` makes them)."""
    base = tmp_path_factory.mktemp("two")
    return init_ca(base / "one", DEFAULTS), init_ca(base / "two", DEFAULTS)


def test_two_cas_made_with_the_defaults_share_no_name(two_cas: tuple[CAFolder, CAFolder]) -> None:
    one, two = (folder_names(folder.root) for folder in two_cas)
    assert one.queue != two.queue and one.store_prefix != two.store_prefix
    assert LEGACY_NAMES.queue not in (one.queue, two.queue)
    cn_one, cn_two = (common_name(intermediate_of(folder)) for folder in two_cas)
    assert cn_one != cn_two and cn_one.startswith("casign Intermediate CA ")
    for folder, names, cn in zip(two_cas, (one, two), (cn_one, cn_two), strict=True):
        identity = ca_identity(intermediate_of(folder))
        # Derived from the CA's key: a producer holding only its certificate finds them too.
        assert names == names_for_ca(identity)
        assert cn.endswith(identity[:12]) and identity[:12] in names.queue


def test_a_named_intermediate_keeps_its_name(tmp_path: Path) -> None:
    folder = init_ca(tmp_path / "ca", CAOptions(intermediate_cn="Ops Intermediate CA"))
    assert common_name(intermediate_of(folder)) == "Ops Intermediate CA"
    assert folder_names(folder.root).queue.startswith("casign-")


def test_every_side_reads_the_folders_names_and_an_explicit_name_wins(
    two_cas: tuple[CAFolder, CAFolder], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = two_cas[0]
    recorded = folder_names(folder.root)
    for variable in ("CASIGN_QUEUE", "CASIGN_STORE_PREFIX", "CASIGN_BROKER_URL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("CASIGN_STORE_URL", "redis://store.example:6379/0")
    # The commands (submit, request, status, est, ocsp: casign.config) and the worker.
    endpoints = resolve_endpoints(None, None, folder.root)
    assert (endpoints.queue, endpoints.store_prefix) == (recorded.queue, recorded.store_prefix)
    config = WorkerConfig.from_environment({"CASIGN_CA_DIR": str(folder.root)})
    assert (config.queue, config.signer.store_prefix) == (recorded.queue, recorded.store_prefix)
    monkeypatch.setenv("CASIGN_QUEUE", "ops.sign")
    monkeypatch.setenv("CASIGN_STORE_PREFIX", "ops")
    named = ca_names(folder.root)
    assert (named.queue, named.store_prefix) == ("ops.sign", "ops")
    config = WorkerConfig.from_environment(
        {"CASIGN_CA_DIR": str(folder.root), "CASIGN_QUEUE": "ops.sign"}
    )
    assert (config.queue, config.signer.store_prefix) == ("ops.sign", recorded.store_prefix)
    # A folder made before names were derived keeps the old ones.
    settings = folder.settings_path.read_text()
    try:
        folder.settings_path.write_text(
            "\n".join(line for line in settings.splitlines() if "queue" not in line)
        )
        assert folder_names(folder.root).queue == LEGACY_NAMES.queue
    finally:
        folder.settings_path.write_text(settings)


def test_a_producer_derives_the_names_from_the_cas_identity(
    two_cas: tuple[CAFolder, CAFolder], redis_url: str
) -> None:
    identity = ca_identity(intermediate_of(two_cas[1]))
    with Producer(redis_url, redis_url, ca_identity=identity) as producer:
        assert producer.queue == folder_names(two_cas[1].root).queue
        assert producer.store.prefix == folder_names(two_cas[1].root).store_prefix + ":"
    with Producer(redis_url, redis_url, ca_identity=identity, queue="q", store_prefix="p") as named:
        assert (named.queue, named.store.prefix) == ("q", "p:")


@pytest.fixture
def default_workers(
    two_cas: tuple[CAFolder, CAFolder], broker_url: str, redis_url: str, tmp_path: Path
) -> Iterator[list[tuple[WorkerProcess, ResultsStore]]]:
    """`casign worker --ca DIR` for each CA on the one Redis, told no queue and no prefix."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("CASIGN_QUEUE", "CASIGN_STORE_PREFIX")
    }
    env |= {"CASIGN_BROKER_URL": broker_url, "CASIGN_STORE_URL": redis_url}
    started: list[tuple[WorkerProcess, ResultsStore]] = []
    try:
        for n, folder in enumerate(two_cas):
            store = ResultsStore.from_url(redis_url, folder_names(folder.root).store_prefix)
            log_path = tmp_path / f"worker-{n}.log"
            with log_path.open("ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "casign", "worker", "--ca", str(folder.root),
                     "--concurrency", "1", "--loglevel", "WARNING", "--no-restart", "--open",
                     "--allow-root-key"],
                    stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                )  # fmt: skip
            started.append((wait_until_started(WorkerProcess(process, log_path), store), store))
        yield started
    finally:
        for worker, store in started:
            worker.stop()
            keys = list(store.client.scan_iter(match=f"{store.prefix}*", count=1000))
            if keys:
                store.client.delete(*keys)
            store.close()


@pytest.mark.slow
def test_workers_of_two_default_cas_on_one_redis_do_not_mix(
    two_cas: tuple[CAFolder, CAFolder],
    default_workers: list[tuple[WorkerProcess, ResultsStore]],
    broker_url: str,
    redis_url: str,
) -> None:
    issued: dict[int, list[x509.Certificate]] = {}
    for n, folder in enumerate(two_cas):
        intermediate = intermediate_of(folder)
        with Producer(
            broker_url,
            redis_url,
            ca_identity=ca_identity(intermediate),
            trust_anchor=folder.root_cert_path,
        ) as producer:
            requests = [
                producer.request(make_csr(f"h{k}.ca{n}.example.com"), job_id=f"mix-{k}")
                for k in range(20)
            ]  # the same job ids at both CAs: each CA answers its own
            job_ids = producer.submit_many(requests, batch_size=5)
            results = list(producer.results(job_ids, timeout=120))
        assert [r.status for r in results if not r.ok] == []
        issued[n] = [
            x509.load_pem_x509_certificate(str(r.certificate_pem).encode()) for r in results
        ]
        for certificate in issued[n]:
            assert certificate.issuer == intermediate.subject
            certificate.verify_directly_issued_by(intermediate)
    for (worker, store), folder in zip(default_workers, two_cas, strict=True):
        assert store.count_issued() == 20 and store.chain() == folder.chain_pem()
        assert "belongs to" not in worker.log()
