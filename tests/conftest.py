"""Shared fixtures: a real Redis with a fresh key prefix per test, and CA folders."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from store.embedded import EmbeddedRedis
from store.results import ResultsStore
from tests.cas import make_alice_ca
from tests.softhsm_token import SOFTHSM_SKIP_REASON, softhsm_token  # noqa: F401  (a fixture)
from tests.workers import WorkerProcess, start_worker
from worker.authority import SigningAuthority, load_authority
from worker.cafolder import CAFolder
from worker.issuance import BatchSigner

REDIS_URL = os.environ.get("CASIGN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Redis at CASIGN_TEST_REDIS_URL (127.0.0.1:6379), else a real embedded one."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError:
        embedded = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
        with embedded.running():
            yield embedded.url
        return
    yield REDIS_URL


@pytest.fixture(scope="session")
def broker_url(redis_url: str) -> str:
    """The same Redis as a Celery broker URL (kombu spells a unix socket redis+socket://)."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url.removeprefix("unix://")
    return redis_url


@pytest.fixture
def store_prefix() -> str:
    return f"casign-test:{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(redis_url: str, store_prefix: str) -> Iterator[ResultsStore]:
    results_store = ResultsStore.from_url(redis_url, store_prefix)
    yield results_store
    keys = list(results_store.client.scan_iter(match=f"{store_prefix}:*", count=1000))
    for start in range(0, len(keys), 1000):
        results_store.client.delete(*keys[start : start + 1000])
    results_store.client.close()


@pytest.fixture(scope="session")
def ca_folder(tmp_path_factory: pytest.TempPathFactory) -> CAFolder:
    """One RSA-2048 CA for the whole run (tests that change a CA make their own)."""
    return make_alice_ca(tmp_path_factory.mktemp("ca") / "ca")


@pytest.fixture(scope="session")
def authority(ca_folder: CAFolder) -> SigningAuthority:
    return load_authority(ca_folder.root)


@pytest.fixture
def signer(authority: SigningAuthority, store: ResultsStore) -> BatchSigner:
    return BatchSigner(authority, store)


@pytest.fixture
def chain_path(ca_folder: CAFolder) -> Path:
    return Path(ca_folder.chain_path)


@pytest.fixture
def queue() -> str:
    """A queue of this test's own, so no other test's worker takes its batches."""
    return f"casign-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def worker_processes() -> int:
    """How many pool processes the `worker` fixture starts; a test module may override it."""
    return 2


@pytest.fixture
def worker(
    ca_folder: CAFolder,
    broker_url: str,
    redis_url: str,
    store: ResultsStore,
    queue: str,
    tmp_path: Path,
    worker_processes: int,
) -> Iterator[WorkerProcess]:
    """A real `casign worker` on the shared CA, the test's queue and key prefix."""
    process = start_worker(
        ca_folder.root,
        broker_url,
        redis_url,
        store,
        queue,
        tmp_path / "worker.log",
        worker_processes,
    )
    yield process
    process.stop()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Say, last of all, how many PKCS#11 tests did not run and the command that runs them."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    skipped = [
        report
        for report in reporter.stats.get("skipped", [])
        if SOFTHSM_SKIP_REASON in str(report.longrepr)
    ]
    if skipped:
        reporter.write_line(
            f"casign: {len(skipped)} PKCS#11 test(s) skipped because SoftHSM is not installed; "
            "run them with: sudo apt-get install -y softhsm2 opensc && python -m pytest",
            yellow=True,
            bold=True,
        )
