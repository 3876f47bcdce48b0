"""The signer's Celery app as Celery users expect it: module-level tasks with their wire names,
settings in one place, per-process state usable in-process, `celery -A worker.app` commands."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery.exceptions import Reject

import worker.crl_schedule as crl_schedule
import worker.process as process_module
from core.errors import Retryable
from core.index import Status
from core.queue import CRL_TASK, REVOKE_TASK, SIGN_BATCH_TASK, SIGN_QUEUE
from store.embedded import EmbeddedRedis
from store.results import ResultsStore
from store.revocations import RevocationStore
from tests.cas import make_alice_ca
from tests.csrs import job, make_csr
from tests.faults import OwnedRedis
from tests.workers import start_worker
from worker.app import (
    CA_DIR_SETTING,
    CRL_SCHEDULE_SETTING,
    OPEN_MODE_SETTING,
    STORE_PREFIX_SETTING,
    STORE_URL_SETTING,
    WorkerConfig,
    app,
)
from worker.cafolder import CAFolder
from worker.crl_schedule import CRLSchedule
from worker.lifecycle_tasks import revoke
from worker.process import SignerProcess, SignerSettings, StopNotice, start_signer_process
from worker.signing_task import sign_batch


def test_the_tasks_are_module_level_under_their_wire_names() -> None:
    modules = {SIGN_BATCH_TASK: "worker.signing_task", REVOKE_TASK: "worker.lifecycle_tasks"}
    for task in (sign_batch, revoke):
        registered = app.tasks[task.name]
        assert registered.run.__module__ == modules[task.name]
        assert registered.acks_late
    assert set(app.conf.include) == set(modules.values())
    # A CRL is never made on a queue message: no task answers to casign.crl.
    assert CRL_TASK not in app.tasks


def test_the_config_comes_from_the_casign_variables(tmp_path: Path) -> None:
    config = WorkerConfig.from_environment(
        {
            "CASIGN_CA_DIR": str(tmp_path / "ca"),
            "CASIGN_BROKER_URL": "redis://broker.example:6379/0",
            "CASIGN_STORE_URL": "redis://store.example:6379/1",
            "CASIGN_STORE_PREFIX": "ca-one",
            "CASIGN_QUEUE": "ca-one.sign",
        }
    )
    assert config == WorkerConfig(
        broker_url="redis://broker.example:6379/0",
        signer=SignerSettings(tmp_path / "ca", "redis://store.example:6379/1", "ca-one"),
        queue="ca-one.sign",
    )
    settings = config.celery_settings()
    assert settings["broker_url"] == "redis://broker.example:6379/0"
    assert settings["task_default_queue"] == "ca-one.sign"
    assert settings["accept_content"] == ["json"]
    assert (settings[CA_DIR_SETTING], settings[STORE_URL_SETTING]) == (
        str(tmp_path / "ca"),
        "redis://store.example:6379/1",
    )
    assert settings[STORE_PREFIX_SETTING] == "ca-one"
    assert settings[OPEN_MODE_SETTING] is False and settings[CRL_SCHEDULE_SETTING] is False
    assert "beat_schedule" not in settings


def test_without_urls_the_config_is_the_ca_folders_embedded_redis(tmp_path: Path) -> None:
    config = WorkerConfig.from_environment({"CASIGN_CA_DIR": str(tmp_path / "ca")})
    embedded = EmbeddedRedis(tmp_path / "ca")
    assert (config.broker_url, config.signer.store_url) == (embedded.broker_url, embedded.url)
    assert (config.queue, config.signer.store_prefix) == (SIGN_QUEUE, "casign")


def test_the_module_level_app_reads_the_environment_when_loaded(tmp_path: Path) -> None:
    script = (
        "from worker.app import app\n"
        "print(app.conf.broker_url, app.conf.task_default_queue, app.conf.casign_store_url)\n"
    )
    env = {
        **os.environ,
        "CASIGN_CA_DIR": str(tmp_path),
        "CASIGN_BROKER_URL": "redis://broker.example:6379/0",
        "CASIGN_STORE_URL": "redis://store.example:6379/1",
        "CASIGN_QUEUE": "ca-two.sign",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == [
        "redis://broker.example:6379/0",
        "ca-two.sign",
        "redis://store.example:6379/1",
    ]


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process_module, "retry_delay", lambda attempt: 0.01)


def test_an_outage_is_waited_out_until_the_attempt_succeeds(
    tmp_path: Path, quick_retries: None
) -> None:
    process = SignerProcess(SignerSettings(tmp_path, "redis://unused"), StopNotice())
    tries: list[int] = []

    def attempt() -> str:
        tries.append(len(tries))
        if len(tries) < 4:
            raise Retryable("results store unavailable: ConnectionError (test)")
        return "done"

    assert process.wait_out_outages(attempt, "test batch") == "done"
    assert len(tries) == 4


def test_a_stopping_worker_hands_the_waiting_message_back(tmp_path: Path) -> None:
    stop = StopNotice()
    process = SignerProcess(SignerSettings(tmp_path, "redis://unused"), stop)

    def attempt() -> str:
        raise Retryable("results store unavailable: ConnectionError (test)")

    threading.Timer(0.5, stop.raise_).start()
    began = time.monotonic()
    with pytest.raises(Reject) as rejected:
        process.wait_out_outages(attempt, "test batch")
    assert rejected.value.requeue is True
    assert time.monotonic() - began < 5  # not the 30 s a retry may wait


@pytest.fixture
def in_process(
    tmp_path: Path, redis_url: str, store: ResultsStore, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SignerProcess]:
    """This test process as a signing worker process with a CA of its own (no Celery worker)."""
    folder = make_alice_ca(tmp_path / "ca")
    monkeypatch.setattr(process_module, "_by_pid", {})
    yield start_signer_process(
        SignerSettings(folder.root, redis_url, store.prefix.rstrip(":"), open_mode=True),
        StopNotice(),
    )


def test_the_tasks_run_in_process(in_process: SignerProcess, store: ResultsStore) -> None:
    batch = {"reply_to": "in-process", "jobs": [job("in-process-1", make_csr("a.example.com"))]}
    assert sign_batch(batch) == 1
    serial = store.job_state("in-process-1")["serial"]
    request = {"request_id": "r-1", "serial": serial, "reason": "superseded"}
    assert revoke(request) == "revoked"
    entry = store.index_entry(serial)
    assert entry is not None and entry.status is Status.REVOKED
    published = CRLSchedule(in_process).make_if_due()
    assert published is not None
    number = published[0].number
    assert CRLSchedule(in_process).make_if_due() is None  # one scheduled CRL per interval
    latest = RevocationStore(store).latest_crl()
    assert latest is not None and [e.serial_number for e in latest] == [int(serial, 16)]
    assert (in_process.folder.root / "intermediate" / "crlnumber").read_text().strip() == (
        f"{number + 1:02X}"
    )


def test_a_scheduled_crl_that_meets_an_outage_gives_its_turn_back(
    in_process: SignerProcess, store: ResultsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interval's turn goes back to the store, so the CRL is tried again at the next check
    (by this process or another), not a whole interval later."""
    real_refresh = crl_schedule.refresh_crl
    tries: list[int] = []

    def store_down(*args: object, **kwargs: object) -> None:
        tries.append(len(tries))
        raise Retryable("results store unavailable: ConnectionError (test)")

    monkeypatch.setattr(crl_schedule, "refresh_crl", store_down)
    schedule = CRLSchedule(in_process)
    assert schedule.make_if_due() is None and tries == [0]
    monkeypatch.setattr(crl_schedule, "refresh_crl", real_refresh)
    published = schedule.make_if_due()
    assert published is not None and RevocationStore(store).latest_crl() is not None


@pytest.mark.slow
def test_celery_inspect_reaches_a_running_worker(
    ca_folder: CAFolder,
    redis_url: str,
    store: ResultsStore,
    queue: str,
    tmp_path: Path,
) -> None:
    """`celery -A worker.app inspect ping` (and `registered`) answered by a `casign worker`."""
    broker = OwnedRedis(tmp_path / "broker")  # its own: other tests' workers answer nothing here
    broker.start()
    worker = start_worker(
        ca_folder.root, broker.url, redis_url, store, queue, tmp_path / "worker.log"
    )
    env = {**os.environ, "CASIGN_BROKER_URL": broker.url}
    # Naming the worker (Celery's default node name) ends each command at its answer.
    node = f"celery@{socket.gethostname()}"
    celery = [sys.executable, "-m", "celery", "-A", "worker.app", "inspect", "-d", node]
    try:
        ping = subprocess.run(
            [*celery, "ping", "--timeout", "10"],
            check=False,
            env=env,
            capture_output=True,
            text=True,
        )
        registered = subprocess.run(
            [*celery, "registered", "--timeout", "10"],
            check=False,
            env=env,
            capture_output=True,
            text=True,
        )
    finally:
        worker.stop()
        broker.stop()
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert "pong" in ping.stdout
    assert registered.returncode == 0, registered.stdout + registered.stderr
    for name in (SIGN_BATCH_TASK, REVOKE_TASK):
        assert name in registered.stdout
    assert CRL_TASK not in registered.stdout
