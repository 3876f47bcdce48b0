"""producers.toml and profiles.toml read again while the worker runs (worker/live_config.py).

In process: a changed file is applied, a broken one keeps the previous version and is logged
once, a removed producers.toml never opens the signer, SIGHUP reads both again. End to end: a
real `casign worker` started open closes when producers.toml appears, serves a producer added
to it, keeps the old list over a broken edit, applies a profile change and, after SIGHUP, a
rotated secret; none of it restarted.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import time
import uuid
from pathlib import Path

import pytest
from cryptography import x509

from core.auth import ca_identity
from core.errors import RefusalCode
from core.messages import JobResult
from core.queue import SIGN_QUEUE
from producers import Producer
from store.results import ResultsStore
from tests.cas import make_alice_ca
from tests.csrs import make_csr
from tests.workers import start_worker
from worker.access import AccessPolicy
from worker.cafolder import CAFolder
from worker.live_config import CHECK_SECONDS, Configuration, LiveConfiguration, ReloadNotice
from worker.profiles import ProfileSet

RESULT_TIMEOUT = 60.0


def write_secret(path: Path, value: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")


def producer_table(name: str, secret_path: Path) -> str:
    return f"[producers.{name}]\nsecret = {json.dumps(f'file:{secret_path}')}\n\n"


def replace_file(path: Path, text: str) -> None:
    """Write `path` as an editor does: a new file renamed over the old one."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


@pytest.fixture
def folder(tmp_path: Path) -> CAFolder:
    return make_alice_ca(tmp_path / "ca")


def live(folder: CAFolder, notice: ReloadNotice | None = None) -> LiveConfiguration:
    identity = ca_identity(folder.intermediate_certificate())

    def load(path: Path) -> AccessPolicy | None:
        return AccessPolicy.load(path, identity, SIGN_QUEUE)

    return LiveConfiguration(
        folder.producers_path,
        folder.profiles_path,
        load,
        None,
        Configuration(load(folder.producers_path), ProfileSet.load(folder.profiles_path)),
        notice,
        check_seconds=0.0,
    )


def test_a_new_producers_file_closes_an_open_signer_and_a_new_entry_is_served(
    folder: CAFolder, tmp_path: Path
) -> None:
    config = live(folder)
    assert config.refresh().access is None
    write_secret(tmp_path / "a", secrets.token_hex(32))
    folder.producers_path.write_text(producer_table("a", tmp_path / "a"), encoding="utf-8")
    access = config.refresh().access
    assert access is not None and set(access.producers) == {"a"}
    write_secret(tmp_path / "b", secrets.token_hex(32))
    replace_file(
        folder.producers_path,
        producer_table("a", tmp_path / "a") + producer_table("b", tmp_path / "b"),
    )
    access = config.refresh().access
    assert access is not None and set(access.producers) == {"a", "b"}


def test_a_broken_file_keeps_the_previous_one_and_says_why_once(
    folder: CAFolder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_secret(tmp_path / "a", secrets.token_hex(32))
    folder.producers_path.write_text(producer_table("a", tmp_path / "a"), encoding="utf-8")
    config = live(folder)
    before = config.refresh()
    caplog.set_level(logging.ERROR, "casign.worker")
    replace_file(folder.producers_path, "[producers.a\nsecret = 1\n")
    replace_file(folder.profiles_path, "[profiles.server_cert]\ndefault_days = 'many'\n")
    for _ in range(3):
        assert config.refresh() is before
    refused = [record.getMessage() for record in caplog.records]
    assert len(refused) == 2, refused
    assert refused[0].startswith(f"{folder.producers_path} not applied, the previous version")
    assert "profile 'server_cert'" in refused[1] and "default_days" in refused[1]

    missing_secret = producer_table("c", tmp_path / "nowhere")
    replace_file(folder.producers_path, producer_table("a", tmp_path / "a") + missing_secret)
    assert config.refresh().access is before.access
    assert "nowhere" in caplog.records[-1].getMessage()


def test_a_removed_producers_file_never_opens_the_signer(
    folder: CAFolder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_secret(tmp_path / "a", secrets.token_hex(32))
    folder.producers_path.write_text(producer_table("a", tmp_path / "a"), encoding="utf-8")
    config = live(folder)
    folder.producers_path.unlink()
    access = config.refresh().access
    assert access is not None and set(access.producers) == {"a"}
    assert "was removed" in caplog.text


def test_sighup_reads_the_files_again_even_unchanged(
    folder: CAFolder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_secret(tmp_path / "a", "first-" + secrets.token_hex(16))
    folder.producers_path.write_text(producer_table("a", tmp_path / "a"), encoding="utf-8")
    notice = ReloadNotice()
    config = live(folder, notice)
    config._check_seconds = 3600.0  # only the notice can make it look
    before = config.refresh()
    write_secret(tmp_path / "a", "second-" + secrets.token_hex(16))  # a rotated secret
    assert config.refresh() is before
    notice.raise_()
    access = config.refresh().access
    assert access is not None and access.producers["a"].secret.startswith(b"second-")
    assert "read again" in caplog.text


# --- end to end: a real worker ----------------------------------------------------------------


@pytest.mark.slow
def test_a_running_worker_applies_producers_and_profiles_without_a_restart(
    broker_url: str, redis_url: str, store: ResultsStore, queue: str, tmp_path: Path
) -> None:
    folder = make_alice_ca(tmp_path / "ca")
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    for name in ("first", "late"):
        write_secret(secrets_dir / name, secrets.token_hex(32))
    log_path = tmp_path / "worker.log"
    worker = start_worker(folder.root, broker_url, redis_url, store, queue, log_path, restart=True)

    def producer(name: str | None = None) -> Producer:
        source = None if name is None else f"file:{secrets_dir / name}"
        return Producer(
            broker_url,
            redis_url,
            store_prefix=store.prefix,
            queue=queue,
            identity=name,
            secret_source=source,
        )

    def sign(name: str | None, common_name: str) -> JobResult:
        with producer(name) as each:
            job_id = each.submit(make_csr(common_name), job_id=f"live-{uuid.uuid4().hex[:12]}")
            return next(iter(each.results([job_id], timeout=RESULT_TIMEOUT)))

    try:
        assert sign(None, "open.example.com").ok  # started --open, no producers.toml

        folder.producers_path.write_text(
            producer_table("first", secrets_dir / "first"), encoding="utf-8"
        )
        time.sleep(CHECK_SECONDS + 0.1)  # each process looks at most once a second
        assert sign(None, "unsealed.example.com").code == RefusalCode.AUTH_UNSIGNED
        assert "1 producer(s) served from now on (the worker was open" in worker.log()
        assert sign("first", "first.example.com").ok

        replace_file(
            folder.producers_path,
            producer_table("first", secrets_dir / "first")
            + producer_table("late", secrets_dir / "late"),
        )
        time.sleep(CHECK_SECONDS + 0.1)
        assert sign("late", "late.example.com").ok
        assert "2 producer(s) served from now on" in worker.log()

        replace_file(folder.producers_path, "[producers.first\n")  # a broken edit
        time.sleep(CHECK_SECONDS + 0.1)
        assert sign("late", "still.example.com").ok
        refused = [line for line in worker.log().splitlines() if "not applied" in line]
        assert refused and f"{folder.producers_path} not applied" in refused[0]

        profiles = folder.profiles_path.read_text(encoding="utf-8")
        assert profiles.count("default_days = 375") >= 1
        shorter = profiles.replace("default_days = 375", "default_days = 30")
        replace_file(folder.profiles_path, shorter)
        time.sleep(CHECK_SECONDS + 0.1)
        short = sign("late", "short.example.com")
        assert "offered from now on" in worker.log()
        assert short.ok and short.certificate_pem is not None
        certificate = x509.load_pem_x509_certificate(short.certificate_pem.encode())
        lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
        assert lifetime.days == 30

        # A rotated secret changes no producers.toml: SIGHUP (to the supervisor) reads it.
        replace_file(
            folder.producers_path,
            producer_table("first", secrets_dir / "first")
            + producer_table("late", secrets_dir / "late"),
        )
        time.sleep(CHECK_SECONDS + 0.1)
        assert sign("late", "fixed.example.com").ok
        (secrets_dir / "late").unlink()
        write_secret(secrets_dir / "late", secrets.token_hex(32))
        time.sleep(CHECK_SECONDS + 0.1)
        with producer("late") as rotated:  # its secret is not the one the worker holds
            job_id = rotated.submit(make_csr("rotated.example.com"))
            assert next(iter(rotated.results([job_id], timeout=RESULT_TIMEOUT))).code == (
                RefusalCode.AUTH_BAD_SIGNATURE
            )
        os.kill(worker.process.pid, signal.SIGHUP)
        time.sleep(0.5)
        assert sign("late", "rotated.example.com").ok
        assert "read again" in worker.log()
        assert worker.process.poll() is None
        assert "starting it again" not in worker.log()  # never restarted
    finally:
        worker.stop()
        shutil.rmtree(secrets_dir, ignore_errors=True)
