"""Secrets kept: a PIN or passphrase is read from where pin-source says and shows up nowhere else.

Every test collects what casign printed, logged, raised or stored and greps it for the secret
values; key files readable by others stop `casign worker` and `casign sign` before they start.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
import traceback
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from core.errors import ConfigurationError
from core.keys import KeyType
from keystore import load_signing_key, parse_key_uri
from producers import Producer
from store.results import ResultsStore
from tests.casign_cli import run_casign
from tests.csrs import make_csr
from tests.softhsm_token import SoftHsmToken
from tests.workers import WorkerProcess, start_worker
from worker.cafolder import CAFolder, CAOptions, init_ca


def write_secret(path: Path, value: str) -> None:
    """(Re)write a secret file, leaving it 0400 as an operator keeps it."""
    if path.exists():
        path.chmod(0o600)
    path.write_text(value + "\n", encoding="utf-8")
    path.chmod(0o400)


def output(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


def assert_no_secret(texts: Iterable[str], *values: str) -> None:
    for value in values:
        assert len(value) >= 8  # a value short enough to turn up by chance proves nothing
        for text in texts:
            assert value not in text, f"a secret value was found in:\n{text[-3000:]}"


def exception_text(exc: BaseException) -> str:
    """The exception as a traceback shows it, chained causes included."""
    return "".join(traceback.format_exception(exc))


def stored_text(store: ResultsStore) -> list[str]:
    """Everything kept under the store's prefix, as text."""
    client = store.client
    texts: list[str] = []
    for key in client.scan_iter(match=f"{store.prefix}*", count=1000):
        kind = client.type(key)
        if kind == "string":
            texts.append(str(client.get(key)))
        elif kind == "hash":
            texts.extend(f"{name}={value}" for name, value in client.hgetall(key).items())
        elif kind == "list":
            texts.extend(client.lrange(key, 0, -1))
        elif kind == "set":
            texts.extend(client.smembers(key))
    return texts


def child_pids(pid: int) -> set[int]:
    """The processes whose parent is `pid` (a Celery worker's pool processes)."""
    children: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            children.add(int(stat.parent.name))
    return children


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


# --- a passphrase-protected file key: casign init, casign sign, a worker -----------------------


@pytest.fixture
def passphrase_ca(tmp_path: Path) -> tuple[Path, Path, str, list[str]]:
    """`casign init --passphrase-file`: (CA dir, passphrase file, passphrase, outputs so far)."""
    passphrase = secrets.token_urlsafe(24)
    passphrase_file = tmp_path / "passphrase"
    write_secret(passphrase_file, passphrase)
    directory = tmp_path / "ca"
    done = run_casign(
        "init", directory, "--key-type", "rsa2048", "--passphrase-file", passphrase_file
    )
    assert done.returncode == 0, output(done)
    return directory, passphrase_file, passphrase, [output(done)]


def test_init_and_sign_with_a_passphrase_never_show_it(
    passphrase_ca: tuple[Path, Path, str, list[str]],
    redis_url: str,
    store: ResultsStore,
    tmp_path: Path,
) -> None:
    directory, passphrase_file, passphrase, outputs = passphrase_ca
    folder = CAFolder(directory)
    for key_path in (folder.root_key_path, folder.intermediate_key_path):
        assert key_path.stat().st_mode & 0o777 == 0o400
        assert b"ENCRYPTED" in key_path.read_bytes()
    settings = folder.settings_path.read_text()
    assert f"pin-source=file:{passphrase_file}" in settings
    # No file of the CA folder holds the passphrase: only the file it was read from does.
    files = [path for path in directory.rglob("*") if path.is_file()]
    assert_no_secret((path.read_bytes().decode("latin-1") for path in files), passphrase)

    csr = tmp_path / "www.csr.pem"
    csr.write_text(make_csr("www.example.com"))
    env = {"CASIGN_STORE_PREFIX": store.prefix.rstrip(":")}
    signed = run_casign(
        "sign", "--ca", directory, "--store", redis_url, csr, "-o", tmp_path / "www.pem", env=env
    )
    assert signed.returncode == 0, output(signed)
    assert (tmp_path / "www.pem").exists()
    outputs.append(output(signed))

    wrong = "wrong-" + secrets.token_urlsafe(16)
    write_secret(passphrase_file, wrong)
    refused = run_casign(
        "sign", "--ca", directory, "--store", redis_url, csr, "-o", tmp_path / "x.pem", env=env
    )
    assert refused.returncode == 2, output(refused)
    assert "cannot decrypt or parse the key (wrong passphrase?)" in refused.stderr
    assert str(folder.intermediate_key_path) in refused.stderr
    assert "Traceback" not in output(refused)
    outputs.append(output(refused))

    assert_no_secret([*outputs, *stored_text(store)], passphrase, wrong)


def test_wrong_passphrase_is_not_in_the_exception(tmp_path: Path) -> None:
    passphrase, wrong = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    right_file, wrong_file = tmp_path / "right", tmp_path / "wrong"
    write_secret(right_file, passphrase)
    write_secret(wrong_file, wrong)
    init_ca(tmp_path / "ca", CAOptions(key_type=KeyType.RSA2048, passphrase_file=right_file))
    key_path = CAFolder(tmp_path / "ca").intermediate_key_path
    with pytest.raises(ConfigurationError) as caught:
        load_signing_key(f"file:{key_path}?pin-source=file:{wrong_file}")
    assert "wrong passphrase?" in str(caught.value)
    assert_no_secret([exception_text(caught.value), repr(caught.value)], passphrase, wrong)
    assert load_signing_key(f"file:{key_path}?pin-source=file:{right_file}") is not None


@pytest.mark.slow
def test_worker_with_a_passphrase_key_never_logs_it(
    passphrase_ca: tuple[Path, Path, str, list[str]],
    broker_url: str,
    redis_url: str,
    store: ResultsStore,
    tmp_path: Path,
) -> None:
    directory, _, passphrase, outputs = passphrase_ca
    queue = f"casign-test-{uuid.uuid4().hex[:8]}"
    process = start_worker(directory, broker_url, redis_url, store, queue, tmp_path / "w.log")
    try:
        with Producer(broker_url, redis_url, store_prefix=store.prefix, queue=queue) as producer:
            job_id = producer.submit(make_csr("worker.example.com"))
            (result,) = producer.results([job_id], timeout=90)
        assert result.ok, result
    finally:
        process.stop()
    assert_no_secret([*outputs, process.log(), *stored_text(store)], passphrase)


# --- the intermediate key in SoftHSM: right PIN, wrong PIN at start, wrong PIN mid-run ----------


@pytest.mark.slow
def test_softhsm_worker_keeps_its_pin_and_outlives_a_wrong_one(
    softhsm_token: SoftHsmToken,
    broker_url: str,
    redis_url: str,
    store: ResultsStore,
    tmp_path: Path,
) -> None:
    right_pin = softhsm_token.pin_file.read_text().strip()
    wrong_pin = "wrong-" + secrets.token_hex(8)
    key_uri = softhsm_token.key_uri("intermediate")
    folder = init_ca(
        tmp_path / "hsm-ca", CAOptions(key_type=KeyType.RSA2048, intermediate_key_uri=key_uri)
    )
    queue = f"casign-test-{uuid.uuid4().hex[:8]}"
    captured: list[str] = []

    # A wrong PIN at start: `casign worker` refuses to start, once, naming the key URI.
    write_secret(softhsm_token.pin_file, wrong_pin)
    refused = run_casign(
        "worker",
        "--ca",
        folder.root,
        "--broker",
        broker_url,
        "--store",
        redis_url,
        "--concurrency",
        "1",
        "--open",
        "--allow-root-key",
        env=softhsm_token.env | {"CASIGN_QUEUE": queue},
    )
    captured.append(output(refused))
    assert refused.returncode == 2, output(refused)
    assert key_uri in refused.stderr
    assert "login to token 'casign-test' failed" in refused.stderr
    assert "Traceback" not in output(refused)

    # The right PIN: the worker signs.
    write_secret(softhsm_token.pin_file, right_pin)
    process = start_worker(
        folder.root,
        broker_url,
        redis_url,
        store,
        queue,
        tmp_path / "worker.log",
        concurrency=1,
        extra_env=softhsm_token.env,
    )
    try:
        with Producer(broker_url, redis_url, store_prefix=store.prefix, queue=queue) as producer:
            first = producer.submit(make_csr("hsm1.example.com"))
            (result,) = producer.results([first], timeout=90)
            assert result.ok, result

            # The PIN changes under a running worker and its pool process is replaced.
            write_secret(softhsm_token.pin_file, wrong_pin)
            (pool,) = child_pids(process.process.pid)
            os.kill(pool, signal.SIGKILL)
            wait_for(
                lambda: "worker process cannot sign" in process.log(),
                60,
                "the new pool process to report the failed login",
            )
            second = producer.submit(make_csr("hsm2.example.com"))
            time.sleep(4)
            check_survives_a_wrong_pin(process, store, second)

            write_secret(softhsm_token.pin_file, right_pin)
            (later,) = producer.results([second], timeout=120)
            assert later.ok, later
    finally:
        process.stop()
    log = process.log()
    assert f"worker process cannot sign: {key_uri}: login to token 'casign-test' failed" in log
    assert_no_secret([*captured, log, *stored_text(store)], right_pin, wrong_pin)


def check_survives_a_wrong_pin(process: WorkerProcess, store: ResultsStore, job_id: str) -> None:
    """Main process up, one steady pool process, and the waiting job not half-recorded."""
    assert process.process.poll() is None
    pools = child_pids(process.process.pid)
    assert len(pools) == 1
    time.sleep(2)
    assert child_pids(process.process.pid) == pools, "the pool process is being restarted"
    assert process.process.poll() is None
    assert store.job_state(job_id) == {}
    assert store.pending_records() == []


# --- pin-value is refused without being echoed -------------------------------------------------


PIN_VALUE = "pin-" + secrets.token_hex(8)


@pytest.mark.parametrize(
    "uri",
    [
        f"pkcs11:token=ca;object=intermediate?pin-value={PIN_VALUE}",
        f"pkcs11:token=ca;object=intermediate?module-path=/x.so&pin-value={PIN_VALUE}",
        f"pkcs11:token=ca;object=intermediate?pin%2Dvalue={PIN_VALUE}",
        f"pkcs11:token=ca;object=intermediate?PIN-VALUE={PIN_VALUE}",
        f"pkcs11:token=ca;object=intermediate;pin-value={PIN_VALUE}",
        f"file:/etc/casign/intermediate.key.pem?pin-value={PIN_VALUE}",
    ],
)
def test_pin_value_in_a_key_uri_is_refused_without_echo(uri: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_key_uri(uri)
    assert "pin-source=file:PATH or pin-source=env:VARIABLE" in str(caught.value)
    assert_no_secret([exception_text(caught.value), repr(caught.value)], PIN_VALUE)


@pytest.mark.parametrize(
    "uri",
    [
        f"pkcs11:token=ca;object=intermediate?pin-source={PIN_VALUE}",
        f"pkcs11:token=ca;object=intermediate?pin-source=pin:{PIN_VALUE}",
        f"file:/etc/casign/intermediate.key.pem?pin-source={PIN_VALUE}",
    ],
)
def test_pin_written_in_place_of_a_pin_source_is_not_echoed(uri: str) -> None:
    """`pin-source=1234` is a PIN typed where its source belongs: refuse it, quietly."""
    with pytest.raises(ConfigurationError) as caught:
        parse_key_uri(uri).read_pin()
    assert "pin-source must be file:PATH or env:VARIABLE" in str(caught.value)
    assert_no_secret([exception_text(caught.value), repr(caught.value)], PIN_VALUE)


def test_pin_value_refused_by_the_commands_without_echo(tmp_path: Path, redis_url: str) -> None:
    uri = f"pkcs11:token=ca;object=intermediate?pin-value={PIN_VALUE}"
    init = run_casign("init", tmp_path / "new-ca", "--intermediate-key-uri", uri)
    assert init.returncode == 2, output(init)
    assert "pin-value" in init.stderr

    folder = init_ca(tmp_path / "ca", CAOptions(key_type=KeyType.RSA2048))
    folder.settings_path.chmod(0o644)
    folder.settings_path.write_text(f'intermediate_key = "{uri}"\n', encoding="utf-8")
    csr = tmp_path / "www.csr.pem"
    csr.write_text(make_csr("www.example.com"))
    sign = run_casign("sign", "--ca", folder.root, "--store", redis_url, csr, "-o", tmp_path / "c")
    worker = run_casign(
        "worker", "--ca", folder.root, "--broker", redis_url, "--store", redis_url,
        "--open", "--allow-root-key",
    )  # fmt: skip
    for done in (sign, worker):
        assert done.returncode == 2, output(done)
        assert "carries pin-value" in done.stderr
    assert_no_secret([output(init), output(sign), output(worker)], PIN_VALUE)


# --- key files readable by others --------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604], ids=lambda mode: f"{mode:04o}")
def test_key_file_readable_by_others_stops_worker_and_sign(
    mode: int, tmp_path: Path, redis_url: str
) -> None:
    folder = init_ca(tmp_path / "ca", CAOptions(key_type=KeyType.RSA2048))
    key_path = folder.intermediate_key_path
    assert key_path.stat().st_mode & 0o777 == 0o400
    key_path.chmod(mode)
    csr = tmp_path / "www.csr.pem"
    csr.write_text(make_csr("www.example.com"))
    worker = run_casign(
        "worker", "--ca", folder.root, "--broker", redis_url, "--store", redis_url,
        "--open", "--allow-root-key", timeout=60,
    )  # fmt: skip
    sign = run_casign("sign", "--ca", folder.root, "--store", redis_url, csr, "-o", tmp_path / "c")
    for done in (worker, sign):
        assert done.returncode == 2, output(done)
        assert f"key file mode is {mode:04o}" in done.stderr
        assert f"chmod 400 {key_path}" in done.stderr
        assert "Traceback" not in output(done)
        assert "celery@" not in output(done)  # refused before the worker started
    assert not (tmp_path / "c").exists()


# --- what a producer puts on the queue ----------------------------------------------------------


def test_job_messages_carry_no_secret(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch a producer sends holds its name and an HMAC, never the secret or a PIN."""
    producer_secret = secrets.token_hex(32)
    write_secret(tmp_path / "producer.secret", producer_secret)
    env_secret = secrets.token_hex(32)
    monkeypatch.setenv("CASIGN_TEST_PRODUCER_SECRET", env_secret)
    sent: list[dict[str, Any]] = []

    def capture(self: Celery, name: str, args: Any = None, **options: Any) -> None:
        sent.append({"name": name, "args": args, "options": options})

    monkeypatch.setattr(Celery, "send_task", capture)
    for identity, source in (
        ("hr-portal", f"file:{tmp_path / 'producer.secret'}"),
        ("payroll", "env:CASIGN_TEST_PRODUCER_SECRET"),
    ):
        with Producer(
            redis_url,
            redis_url,
            queue="casign-test",
            identity=identity,
            secret_source=source,
            ca_identity="c" * 64,
        ) as producer:
            producer.submit(make_csr("alice@example.com"), profile="usr_cert")
            producer.submit_many(
                producer.request(make_csr(f"h{index}.example.com")) for index in range(3)
            )
    assert len(sent) == 4
    wire = [json.dumps(message["args"]) for message in sent]  # Celery's serializer is JSON
    for message in sent:
        (batch,) = message["args"]
        assert set(batch) == {"schema_version", "reply_to", "envelope", "jobs"}
        assert batch["envelope"]["signature"].startswith("hmac-sha256:")
        for item in batch["jobs"]:
            assert set(item) <= {
                "schema_version",
                "job_id",
                "csr_pem",
                "profile",
                "san",
                "days",
                "requester",
            }
    assert_no_secret(wire, producer_secret, env_secret)


def test_producer_secret_problems_are_not_echoed(tmp_path: Path) -> None:
    short = secrets.token_hex(4)  # 8 characters, below the 16-byte minimum
    csr = tmp_path / "www.csr.pem"
    csr.write_text(make_csr("www.example.com"))
    done = run_casign(
        "submit",
        csr,
        "--broker",
        "redis://127.0.0.1:1/0",
        "--store",
        "redis://127.0.0.1:1/0",
        "--out",
        tmp_path / "out",
        env={
            "CASIGN_PRODUCER_ID": "hr-portal",
            "CASIGN_PRODUCER_SECRET": "env:HR_SECRET",
            "HR_SECRET": short,
        },
    )
    assert done.returncode == 2, output(done)
    assert "env:HR_SECRET is shorter than 16 bytes" in done.stderr
    assert_no_secret([output(done)], short)
