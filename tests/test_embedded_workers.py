"""Workers sharing one CA folder's embedded Redis (issue 16 item 2), as real `casign worker`s.

Each worker is started as a user starts it (no CASIGN_* variable, no URL: the CA folder's
embedded Redis), in a process group of its own; jobs go through `casign submit`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from casign.supervise import stop_process_group
from store.embedded import EmbeddedRedis
from tests.cas import make_alice_ca
from tests.test_cli import casign, clean_env, openssl_csr, verify
from tests.test_embedded_redis import (
    _gone,
    _server_pid,
    _servers_on,
    _wait_gone,
    needs_proc,
    reapers_of,
)

pytestmark = needs_proc
START_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CA folder for the module; each test leaves its embedded Redis stopped."""
    return make_alice_ca(tmp_path_factory.mktemp("shared") / "ca").root


@pytest.fixture
def workers(ca_dir: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The workers a test starts; killed after it, with any server left on the socket."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        stop_process_group(process, timeout=30)
    embedded = EmbeddedRedis(ca_dir)
    for pid in _servers_on(embedded.socket_path):
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid)


def start_worker(
    ca_dir: Path, log: Path, started: list[subprocess.Popen[bytes]], *flags: str
) -> subprocess.Popen[bytes]:
    """`casign worker --ca DIR` on the embedded Redis, once it takes jobs (it says ready)."""
    command = [
        sys.executable, "-m", "casign", "worker", "--ca", str(ca_dir), "--open",
        "--allow-root-key", "--pool", "solo", "--loglevel", "INFO", *flags,
    ]  # fmt: skip
    with log.open("ab") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=clean_env(),
            start_new_session=True,
        )  # fmt: skip
    started.append(process)
    deadline = time.monotonic() + START_TIMEOUT
    while log.read_text(errors="replace").count(" ready.") < 1:
        text = log.read_text(errors="replace")
        assert process.poll() is None, f"worker exited {process.returncode}:\n{text[-3000:]}"
        assert time.monotonic() < deadline, f"worker not ready:\n{text[-3000:]}"
        time.sleep(0.1)
    return process


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def signed_by_a_worker(ca_dir: Path, tmp_path: Path, name: str) -> None:
    """`casign submit` of one CSR comes back with a certificate that openssl verifies."""
    csr = openssl_csr(tmp_path, name, f"/CN={name}.example.com")
    out = tmp_path / f"out-{name}"
    casign("submit", "--ca", ca_dir, "--timeout", "60", csr, "--out", out, cwd=tmp_path)
    verify(out / "ca-chain.cert.pem", out / f"{name}.cert.pem")


def test_the_second_worker_keeps_serving_when_the_first_stops(
    ca_dir: Path, tmp_path: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    embedded = EmbeddedRedis(ca_dir)
    first = start_worker(ca_dir, tmp_path / "first.log", workers)
    server = _server_pid(embedded)
    second = start_worker(ca_dir, tmp_path / "second.log", workers, "--no-restart")
    assert _servers_on(embedded.socket_path) == [server]

    stop_process_group(first, timeout=30)  # SIGTERM: the worker that started the server
    assert first.returncode == 0, _tail(tmp_path / "first.log")
    assert _servers_on(embedded.socket_path) == [server], "the first worker took Redis with it"
    signed_by_a_worker(ca_dir, tmp_path, "after-first")
    assert "Cannot connect" not in (tmp_path / "second.log").read_text(errors="replace")

    stop_process_group(second, timeout=30)  # the last user: the server goes with it
    assert second.returncode == 0, _tail(tmp_path / "second.log")
    _wait_gone(server)
    assert _servers_on(embedded.socket_path) == []


def test_a_killed_workers_server_is_stopped_and_the_next_worker_serves(
    ca_dir: Path, tmp_path: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    embedded = EmbeddedRedis(ca_dir)
    owner = start_worker(ca_dir, tmp_path / "owner.log", workers)
    server = _server_pid(embedded)
    os.killpg(owner.pid, signal.SIGKILL)  # supervisor, worker and pool: no chance to clean up
    owner.wait()
    _wait_gone(server, timeout=15)  # the folder's reaper: no user is left
    assert _servers_on(embedded.socket_path) == []

    successor = start_worker(ca_dir, tmp_path / "successor.log", workers)
    (replacement,) = _servers_on(embedded.socket_path)
    signed_by_a_worker(ca_dir, tmp_path, "after-kill")
    stop_process_group(successor, timeout=30)
    _wait_gone(replacement)  # as the other tests wait: the pool's exit may trail the worker's
    assert _servers_on(embedded.socket_path) == []


def test_when_everything_was_killed_the_next_worker_adopts_the_server(
    ca_dir: Path, tmp_path: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    embedded = EmbeddedRedis(ca_dir)
    owner = start_worker(ca_dir, tmp_path / "owner.log", workers)
    server = _server_pid(embedded)
    for reaper in reapers_of(ca_dir):  # as a host's OOM killer or `kill -9 -1` could
        os.kill(reaper, signal.SIGKILL)
    os.killpg(owner.pid, signal.SIGKILL)
    owner.wait()
    assert _servers_on(embedded.socket_path) == [server]  # an orphan, until the next start

    successor = start_worker(ca_dir, tmp_path / "successor.log", workers)
    assert _servers_on(embedded.socket_path) == [server], "not adopted: a second server runs"
    signed_by_a_worker(ca_dir, tmp_path, "adopted")
    stop_process_group(successor, timeout=30)
    _wait_gone(server)
    assert _servers_on(embedded.socket_path) == []


def test_a_cli_command_joins_a_workers_server_and_leaves_it_up(
    ca_dir: Path, tmp_path: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    embedded = EmbeddedRedis(ca_dir)
    worker = start_worker(ca_dir, tmp_path / "worker.log", workers, "--no-restart")
    server = _server_pid(embedded)
    casign("audit", "verify", "--ca", ca_dir, cwd=tmp_path)  # joins, then leaves
    assert not _gone(server)
    signed_by_a_worker(ca_dir, tmp_path, "after-cli")
    stop_process_group(worker, timeout=30)
    _wait_gone(server)
