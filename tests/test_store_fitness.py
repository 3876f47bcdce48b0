"""A store fit to hold a CA: a worker refuses an evicting Redis at start, stops signing when one
turns evicting later, warns when nothing is persisted, and memory use is reported."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from core.errors import Retryable
from store.embedded import redis_server_binary
from store.health import StoreHealth, StoreUnfit
from store.results import ResultsStore
from store.revocations import RevocationStore
from tests.csrs import job, make_csr
from tests.faults import free_tcp_port
from tests.workers import start_worker
from worker.authority import SigningAuthority
from worker.cafolder import CAFolder
from worker.issuance import BatchSigner

REFUSED_TO_START = 2


@dataclass
class OwnServer:
    """A redis-server this test started on a free port, its files in the test's folder."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def admin(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)


StartServer = Callable[..., OwnServer]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    started: list[OwnServer] = []

    def start(*settings: str) -> OwnServer:
        folder = tmp_path / f"redis-{len(started)}"
        folder.mkdir()
        port = free_tcp_port()
        command = [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port)]
        command += ["--dir", str(folder), "--logfile", str(folder / "redis.log"), *settings]
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        server = OwnServer(process, port)
        started.append(server)
        deadline = time.monotonic() + 20
        while True:
            try:
                if server.admin().ping():
                    return server
            except redis.RedisError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "redis-server died"
            time.sleep(0.05)

    yield start
    for server in started:
        server.process.terminate()
        server.process.wait(timeout=20)


NO_PERSISTENCE = ("--save", "", "--appendonly", "no")


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def store_on(server: OwnServer, clock: Clock | None = None, url: str | None = None) -> ResultsStore:
    results_store = ResultsStore.from_url(url or server.url, f"fit-{uuid.uuid4().hex[:8]}")
    if clock is not None:
        results_store.health = StoreHealth(results_store.client, clock=clock)
    return results_store


def run_worker(
    ca_folder: CAFolder, server: OwnServer, *flags: str
) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("CASIGN_")}
    env |= {"CASIGN_STORE_PREFIX": "fit-refused", "CASIGN_QUEUE": f"fit-{uuid.uuid4().hex[:8]}"}
    return subprocess.run(
        [sys.executable, "-m", "casign", "worker", "--ca", str(ca_folder.root),
         "--broker", server.url, "--store", server.url, "--open", "--allow-root-key", *flags],
        env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
        check=False,
    )  # fmt: skip


@pytest.mark.parametrize("supervised", [False, True], ids=["no-restart", "supervised"])
def test_the_worker_refuses_to_start_on_an_evicting_store(
    start_server: StartServer, ca_folder: CAFolder, supervised: bool
) -> None:
    server = start_server("--maxmemory-policy", "allkeys-lru", *NO_PERSISTENCE)
    done = run_worker(ca_folder, server, "--restart" if supervised else "--no-restart")
    assert done.returncode == REFUSED_TO_START, done.stderr
    assert "maxmemory-policy is allkeys-lru" in done.stderr
    assert "CONFIG SET maxmemory-policy noeviction" in done.stderr
    assert "start the worker again" in done.stderr
    assert "Traceback" not in done.stderr
    assert server.admin().keys("*") == []  # no pool process ran: nothing written


def test_a_worker_on_a_store_without_persistence_starts_and_says_so(
    start_server: StartServer, ca_folder: CAFolder, tmp_path: Path
) -> None:
    server = start_server(*NO_PERSISTENCE)  # noeviction: Redis's default
    results_store = store_on(server)
    worker = start_worker(
        ca_folder.root, server.url, server.url, results_store, "fit-queue", tmp_path / "w.log", 1
    )
    try:
        assert "the store keeps nothing on disk" in worker.log()
    finally:
        worker.stop()
        results_store.close()


def test_persistence_on_gives_no_warning(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server("--appendonly", "yes", "--save", "")
    with caplog.at_level(logging.WARNING, logger="casign.store"):
        fitness = store_on(server).require_fit()
    assert fitness is not None and fitness.append_only and fitness.eviction_policy == "noeviction"
    assert caplog.records == []


def test_without_config_get_the_policy_is_read_from_info_and_a_warning_says_so(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server(*NO_PERSISTENCE)
    server.admin().acl_setuser(
        "signer", enabled=True, passwords=["+signer-pw"], keys=["*"], commands=["+@all", "-config"]
    )
    limited = f"redis://signer:signer-pw@127.0.0.1:{server.port}/0"
    with caplog.at_level(logging.WARNING, logger="casign.store"):
        fitness = store_on(server, url=limited).require_fit()
    assert fitness is not None and fitness.eviction_policy == "noeviction"
    assert not fitness.config_readable
    (warning,) = [record.getMessage() for record in caplog.records]
    assert warning.startswith("CONFIG GET is not permitted on the store")
    assert "read from INFO" in warning and "going on" in warning

    server.admin().config_set("maxmemory-policy", "volatile-lru")
    with pytest.raises(StoreUnfit, match="maxmemory-policy is volatile-lru"):
        store_on(server, url=limited).require_fit()


def test_with_neither_config_nor_info_the_worker_goes_on_with_a_warning(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server("--maxmemory-policy", "allkeys-lru", *NO_PERSISTENCE)
    server.admin().acl_setuser(
        "signer",
        enabled=True,
        passwords=["+signer-pw"],
        keys=["*"],
        commands=["+@all", "-config", "-info"],
    )
    limited = f"redis://signer:signer-pw@127.0.0.1:{server.port}/0"
    with caplog.at_level(logging.WARNING, logger="casign.store"):
        fitness = store_on(server, url=limited).require_fit()
    assert fitness is not None and fitness.eviction_policy is None
    (warning,) = [record.getMessage() for record in caplog.records]
    assert "CONFIG GET is not permitted" in warning
    assert "cannot check that its maxmemory-policy is noeviction" in warning


def test_signing_stops_while_the_store_may_evict_and_goes_on_after(
    start_server: StartServer, authority: SigningAuthority, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server(*NO_PERSISTENCE)
    clock = Clock()
    results_store = store_on(server, clock)
    signer = BatchSigner(authority, results_store)
    assert signer.sign_batch([job("fit-1", make_csr("fit1.example.com"))])[0].ok

    server.admin().config_set("maxmemory-policy", "allkeys-lru")
    # Within the recheck period the last good reading stands ...
    clock.now += 30
    assert signer.sign_batch([job("fit-2", make_csr("fit2.example.com"))])[0].ok
    # ... after it, nothing more is reserved or signed, and the error is logged.
    clock.now += 31
    with (
        caplog.at_level(logging.ERROR, logger="casign.store"),
        pytest.raises(Retryable, match="maxmemory-policy is allkeys-lru"),
    ):
        signer.sign_batch([job("fit-3", make_csr("fit3.example.com"))])
    assert "signing stopped until the store is fixed" in caplog.text
    assert results_store.count_serials() == 2
    assert results_store.job_state("fit-3") == {}
    serial = results_store.job_state("fit-1")["serial"]
    with pytest.raises(Retryable, match="maxmemory-policy"):
        RevocationStore(results_store).revoke(serial)

    server.admin().config_set("maxmemory-policy", "noeviction")
    (result,) = signer.sign_batch([job("fit-3", make_csr("fit3.example.com"))])
    assert result.ok
    assert RevocationStore(results_store).revoke(serial).status.value == "R"
    results_store.close()


def test_memory_use_and_headroom_are_reported(start_server: StartServer) -> None:
    server = start_server(*NO_PERSISTENCE)
    results_store = store_on(server)
    unlimited = results_store.memory()
    assert unlimited.used_bytes > 0
    assert unlimited.max_bytes is None and unlimited.headroom_bytes is None
    assert unlimited.policy == "noeviction"

    server.admin().config_set("maxmemory", str(64 * 1024 * 1024))
    results_store.client.set(results_store.key("chain"), "x" * 1_000_000)
    limited = results_store.memory()
    assert limited.max_bytes == 64 * 1024 * 1024
    assert limited.used_bytes >= unlimited.used_bytes + 1_000_000
    assert limited.headroom_bytes == limited.max_bytes - limited.used_bytes
    assert limited.used_fraction is not None and 0 < limited.used_fraction < 1
    results_store.close()


def test_an_unreachable_store_at_start_is_no_refusal(caplog: pytest.LogCaptureFixture) -> None:
    """A store down at start is waited out (the worker retries), not a reason to stay down."""
    gone = ResultsStore.from_url(f"redis://127.0.0.1:{free_tcp_port()}/0", "fit-gone")
    with caplog.at_level(logging.WARNING, logger="casign.store"):
        assert gone.require_fit() is None
    assert "checked again before the first batch" in caplog.text
