"""Who may ask: HMAC-signed batches, per-producer profile and name limits, a token-bucket rate.

In process (a BatchSigner with an AccessPolicy, real Redis) and end to end (a real `casign
worker` on a CA folder whose intermediate/producers.toml lists the producers, and `Producer`s
that sign their batches), including Redis with a password, and with TLS (`rediss://`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import textwrap
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from core.auth import MessageKind, ca_identity, read_secret, seal
from core.errors import ConfigurationError, RefusalCode
from core.keys import KeyType
from core.messages import Envelope, JobResult
from core.queue import SIGN_QUEUE, celery_settings
from producers import Producer
from store.envelopes import EnvelopeLedger
from store.results import ResultsStore
from tests.csrs import job, make_csr
from tests.workers import WorkerProcess, start_worker
from worker.access import AccessPolicy
from worker.authority import SigningAuthority, load_authority
from worker.cafolder import CAFolder, CAOptions, init_ca
from worker.issuance import BatchSigner

BULK_SECRET_ENV = "CASIGN_TEST_BULK_SECRET"
BULK_RATE = 2.0  # tokens per second
BULK_BURST = 5
RESULT_TIMEOUT = 90.0


# --- producers.toml and the secrets it names -------------------------------------------------


def write_secret(path: Path, value: str) -> None:
    """A secret file as an operator keeps one: created 0400, never readable by others."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")


@dataclass(frozen=True)
class Credentials:
    """Three listed producers (two secrets in files, one in an environment variable)."""

    directory: Path
    values: dict[str, str]

    @classmethod
    def make(cls, directory: Path) -> Credentials:
        directory.mkdir(parents=True)
        values = {name: secrets.token_hex(32) for name in ("web-frontend", "hr-portal", "bulk")}
        for name in ("web-frontend", "hr-portal"):
            write_secret(directory / name, values[name])
        return cls(directory, values)

    def source(self, producer: str) -> str:
        """Where `producer` reads its secret: `file:PATH`, or `env:VAR` for bulk."""
        if producer == "bulk":
            return f"env:{BULK_SECRET_ENV}"
        return f"file:{self.directory / producer}"

    def secret(self, producer: str) -> bytes:
        return self.values[producer].encode()

    @property
    def env(self) -> dict[str, str]:
        return {BULK_SECRET_ENV: self.values["bulk"]}

    def producers_toml(self) -> str:
        return textwrap.dedent(
            f"""\
            [producers.web-frontend]
            secret = {json.dumps(self.source("web-frontend"))}
            profiles = ["server_cert"]

            [producers.hr-portal]
            secret = {json.dumps(self.source("hr-portal"))}
            profiles = ["usr_cert"]
            names = ["*@example.com"]

            [producers.bulk]
            secret = {json.dumps(self.source("bulk"))}
            rate_per_second = {BULK_RATE}
            burst = {BULK_BURST}
            """
        )


def new_id(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"


def by_id(results: Iterable[JobResult]) -> dict[str, JobResult]:
    return {result.job_id: result for result in results}


def codes(results: dict[str, JobResult]) -> dict[str, str | None]:
    return {
        job_id: (result.code if result.status != "issued" else "issued")
        for job_id, result in results.items()
    }


def assert_nothing_recorded(store: ResultsStore, job_ids: Iterable[str]) -> None:
    """No state under the job ids, no serial drawn, nothing pending, nothing issued."""
    for job_id in job_ids:
        assert store.job_state(job_id) == {}, job_id
    assert store.count_issued() == 0
    assert store.count_serials() == 0
    assert store.pending_records() == []


# --- in process ------------------------------------------------------------------------------


@pytest.fixture
def credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Credentials:
    made = Credentials.make(tmp_path / "secrets")
    for name, value in made.env.items():
        monkeypatch.setenv(name, value)
    return made


@pytest.fixture
def guarded(
    authority: SigningAuthority, store: ResultsStore, credentials: Credentials, tmp_path: Path
) -> BatchSigner:
    """A signer that serves only the producers in a producers.toml."""
    path = tmp_path / "producers.toml"
    path.write_text(credentials.producers_toml(), encoding="utf-8")
    policy = AccessPolicy.load(path, ca_identity(authority.intermediate), SIGN_QUEUE)
    assert policy is not None
    assert sorted(policy.producers) == ["bulk", "hr-portal", "web-frontend"]
    return BatchSigner(authority, store, policy)


def sealed(
    signer: BatchSigner,
    jobs: list[dict[str, Any]],
    producer: str,
    secret: bytes,
    reply_to: str | None,
) -> Envelope:
    """`jobs` sealed by `producer` for the signer's CA and queue."""
    assert signer.access is not None
    return seal(
        secret,
        MessageKind.SIGN,
        producer=producer,
        ca=signer.access.ca,
        queue=signer.access.queue,
        reply_to=reply_to,
        payload=jobs,
    )


def submit(
    signer: BatchSigner,
    jobs: list[dict[str, object]],
    producer: str | None = None,
    secret: bytes | None = None,
    reply_to: str | None = None,
) -> dict[str, JobResult]:
    """Seal `jobs` as `producer` with `secret` (unsealed without one) and hand them over."""
    envelope = sealed(signer, jobs, producer or "", secret, reply_to) if secret else None
    return by_id(signer.sign_batch(jobs, reply_to, envelope))


def test_missing_producers_file_means_an_open_signer(tmp_path: Path) -> None:
    assert AccessPolicy.load(tmp_path / "producers.toml", "a" * 64, SIGN_QUEUE) is None


def test_signed_batch_is_issued(
    guarded: BatchSigner, credentials: Credentials, store: ResultsStore
) -> None:
    jobs = [job(new_id("web"), make_csr(f"www{index}.example.com")) for index in range(3)]
    results = submit(guarded, jobs, "web-frontend", credentials.secret("web-frontend"))
    assert [result.status for result in results.values()] == ["issued"] * 3
    assert store.count_issued() == 3


def test_unsigned_batch_is_refused_and_the_job_ids_stay_free(
    guarded: BatchSigner, credentials: Credentials, store: ResultsStore
) -> None:
    jobs = [
        job(new_id("unsigned"), make_csr("www.example.com")),
        job(new_id("unsigned"), make_csr("api.example.com")),
    ]
    reply_to = uuid.uuid4().hex
    refused = submit(guarded, jobs, reply_to=reply_to)
    assert set(codes(refused).values()) == {RefusalCode.AUTH_UNSIGNED}
    # A producer's name on an envelope without its seal is a bad signature.
    unsealed = sealed(guarded, jobs, "web-frontend", b"x" * 32, reply_to).model_copy(
        update={"signature": ""}
    )
    named_only = by_id(guarded.sign_batch(jobs, reply_to, unsealed))
    assert set(codes(named_only).values()) == {RefusalCode.AUTH_BAD_SIGNATURE}
    job_ids = [str(item["job_id"]) for item in jobs]
    assert_nothing_recorded(store, job_ids)
    # Nothing was pushed to the reply list; its owner finds one short note instead.
    assert store.wait_replies(reply_to, timeout=0.2) == []
    assert EnvelopeLedger(store).refusal_note(reply_to) is not None

    issued = submit(guarded, jobs, "web-frontend", credentials.secret("web-frontend"))
    assert set(codes(issued).values()) == {"issued"}
    assert store.count_issued() == 2


def test_unknown_producer_is_refused(guarded: BatchSigner, store: ResultsStore) -> None:
    jobs = [job(new_id("intruder"), make_csr("www.example.com"))]
    results = submit(guarded, jobs, "intruder", secrets.token_bytes(32))
    assert codes(results) == {jobs[0]["job_id"]: RefusalCode.AUTH_UNKNOWN_PRODUCER}
    assert "intruder" in (results[str(jobs[0]["job_id"])].message or "")
    assert_nothing_recorded(store, [str(jobs[0]["job_id"])])


def test_wrong_secret_is_a_bad_signature(
    guarded: BatchSigner, credentials: Credentials, store: ResultsStore
) -> None:
    jobs = [job(new_id("wrong"), make_csr("alice@example.com"), "usr_cert")]
    results = submit(guarded, jobs, "hr-portal", credentials.secret("web-frontend"))
    assert codes(results) == {jobs[0]["job_id"]: RefusalCode.AUTH_BAD_SIGNATURE}
    assert_nothing_recorded(store, [str(jobs[0]["job_id"])])


def _swap_csr(jobs: list[dict[str, Any]]) -> None:
    jobs[0]["csr_pem"] = make_csr("mallory.example.com")


def _add_san(jobs: list[dict[str, Any]]) -> None:
    jobs[0]["san"] = ["DNS:evil.test"]


def _change_days(jobs: list[dict[str, Any]]) -> None:
    jobs[0]["days"] = 800


def _append_job(jobs: list[dict[str, Any]]) -> None:
    jobs.append(job(new_id("smuggled"), make_csr("smuggled.example.com")))


def _drop_job(jobs: list[dict[str, Any]]) -> None:
    del jobs[1]


@pytest.mark.parametrize(
    "tamper", [_swap_csr, _add_san, _change_days, _append_job, _drop_job], ids=lambda f: f.__name__
)
def test_job_changed_after_signing_is_a_bad_signature(
    guarded: BatchSigner, credentials: Credentials, store: ResultsStore, tamper: Any
) -> None:
    reply_to = f"web-frontend:{uuid.uuid4().hex}"
    jobs = [
        job(new_id("t"), make_csr("www.example.com")),
        job(new_id("t"), make_csr("api.example.com")),
    ]
    envelope = sealed(guarded, jobs, "web-frontend", credentials.secret("web-frontend"), reply_to)
    tamper(jobs)
    results = by_id(guarded.sign_batch(jobs, reply_to, envelope))
    assert set(codes(results).values()) == {RefusalCode.AUTH_BAD_SIGNATURE}
    assert_nothing_recorded(store, results)


def test_signature_covers_the_reply_list_and_the_producer_name(
    guarded: BatchSigner, credentials: Credentials, store: ResultsStore
) -> None:
    jobs = [job(new_id("t"), make_csr("www.example.com"))]
    envelope = sealed(
        guarded, jobs, "web-frontend", credentials.secret("web-frontend"), "web-frontend:mine"
    )
    redirected = by_id(guarded.sign_batch(jobs, "web-frontend:theirs", envelope))
    # hr-portal's name on web-frontend's seal: hr-portal's secret does not verify it.
    renamed = by_id(
        guarded.sign_batch(jobs, "mine", envelope.model_copy(update={"producer": "hr-portal"}))
    )
    for results in (redirected, renamed):
        assert set(codes(results).values()) == {RefusalCode.AUTH_BAD_SIGNATURE}
    assert_nothing_recorded(store, redirected)


def test_hr_portal_gets_only_usr_cert_for_example_com(
    guarded: BatchSigner, credentials: Credentials, store: ResultsStore
) -> None:
    alice = new_id("alice")
    upper = new_id("upper")
    server = new_id("server")
    mallory = new_id("mallory")
    mallory_job_san = new_id("mallory-job-san")
    mallory_csr_san = new_id("mallory-csr-san")
    jobs = [
        job(alice, make_csr("alice@example.com"), "usr_cert", san=["email:alice@example.com"]),
        job(upper, make_csr("Bob@EXAMPLE.com"), "usr_cert"),
        job(server, make_csr("www.example.com"), "server_cert"),
        job(mallory, make_csr("mallory@evil.test"), "usr_cert"),
        job(
            mallory_job_san,
            make_csr("alice@example.com"),
            "usr_cert",
            san=["email:mallory@evil.test"],
        ),
        job(
            mallory_csr_san,
            make_csr("alice@example.com", san=[x509.RFC822Name("mallory@evil.test")]),
            "usr_cert",
        ),
    ]
    results = submit(guarded, jobs, "hr-portal", credentials.secret("hr-portal"))
    assert codes(results) == {
        alice: "issued",
        upper: "issued",
        server: RefusalCode.AUTH_PROFILE_NOT_ALLOWED,
        mallory: RefusalCode.AUTH_NAME_NOT_ALLOWED,
        mallory_job_san: RefusalCode.AUTH_NAME_NOT_ALLOWED,
        mallory_csr_san: RefusalCode.AUTH_NAME_NOT_ALLOWED,
    }
    assert "'server_cert'" in (results[server].message or "")
    for refused in (mallory, mallory_job_san, mallory_csr_san):
        assert "mallory@evil.test" in (results[refused].message or "")
    certificate = x509.load_pem_x509_certificate((results[alice].certificate_pem or "").encode())
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == ["alice@example.com"]
    # Refusals of an authenticated producer are kept under the job id, like any refusal.
    assert store.job_state(server)["state"] == "refused"
    assert store.count_issued() == 2


def test_email_address_in_the_subject_is_a_name_too(
    guarded: BatchSigner, credentials: Credentials, store: ResultsStore
) -> None:
    """S/MIME clients still read a legacy subject emailAddress (RFC 5280 4.1.2.6)."""
    sneaky = new_id("sneaky")
    csr = make_csr(
        "alice@example.com",
        extra_attributes=[x509.NameAttribute(NameOID.EMAIL_ADDRESS, "mallory@evil.test")],
    )
    results = submit(
        guarded, [job(sneaky, csr, "usr_cert")], "hr-portal", credentials.secret("hr-portal")
    )
    assert codes(results) == {sneaky: RefusalCode.AUTH_NAME_NOT_ALLOWED}
    assert store.count_issued() == 0


def test_web_frontend_may_not_ask_for_usr_cert(
    guarded: BatchSigner, credentials: Credentials
) -> None:
    client = new_id("client")
    results = submit(
        guarded,
        [job(client, make_csr("alice@example.com"), "usr_cert")],
        "web-frontend",
        credentials.secret("web-frontend"),
    )
    assert codes(results) == {client: RefusalCode.AUTH_PROFILE_NOT_ALLOWED}


def test_rate_limit_refuses_beyond_the_burst_then_refills(
    guarded: BatchSigner, credentials: Credentials, store: ResultsStore
) -> None:
    secret = credentials.secret("bulk")
    jobs = [job(new_id(f"bulk{index}"), make_csr(f"bulk{index}.example.com")) for index in range(8)]
    job_ids = [str(item["job_id"]) for item in jobs]
    started = time.monotonic()
    first = submit(guarded, jobs, "bulk", secret)
    assert codes(first) == {
        **{job_id: "issued" for job_id in job_ids[:BULK_BURST]},
        **{job_id: RefusalCode.AUTH_RATE_LIMITED for job_id in job_ids[BULK_BURST:]},
    }
    limited = jobs[BULK_BURST:]
    for job_id in job_ids[BULK_BURST:]:
        assert store.job_state(job_id) == {}  # refused for now, not for ever

    # The bucket is kept in Redis between batches: straight away there is almost nothing.
    again = submit(guarded, limited, "bulk", secret)
    refilled = int((time.monotonic() - started) * BULK_RATE)
    issued_again = [job_id for job_id, code in codes(again).items() if code == "issued"]
    assert len(issued_again) <= refilled
    assert all(code in ("issued", RefusalCode.AUTH_RATE_LIMITED) for code in codes(again).values())

    time.sleep(len(limited) / BULK_RATE + 0.3)
    later = submit(guarded, limited, "bulk", secret)
    assert set(codes(later).values()) == {"issued"}
    assert store.count_issued() == len(jobs)


def test_rate_is_per_producer(guarded: BatchSigner, credentials: Credentials) -> None:
    """bulk using up its bucket leaves web-frontend (no rate) untouched."""
    bulk_jobs = [
        job(new_id("b"), make_csr(f"b{index}.example.com")) for index in range(BULK_BURST + 2)
    ]
    submit(guarded, bulk_jobs, "bulk", credentials.secret("bulk"))
    web_jobs = [
        job(new_id("w"), make_csr(f"w{index}.example.com")) for index in range(BULK_BURST + 2)
    ]
    results = submit(guarded, web_jobs, "web-frontend", credentials.secret("web-frontend"))
    assert set(codes(results).values()) == {"issued"}


def test_producers_file_problems_are_named_without_the_secret(
    tmp_path: Path, credentials: Credentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "producers.toml"
    short = tmp_path / "short"
    write_secret(short, "tooshort")
    in_place = secrets.token_hex(24)  # a secret written into producers.toml itself
    cases = {
        '[producers.a]\nsecret = "file:%s"\nburst = 0\n'
        % (credentials.directory / "hr-portal"): "producer 'a', burst",
        '[producers.a]\nsecret = "file:%s"\nlimits = 3\n'
        % (credentials.directory / "hr-portal"): "producer 'a', limits",
        f'[producers.a]\nsecret = "file:{short}"\n': "shorter than 16 bytes",
        f'[producers.a]\nsecret = "file:{tmp_path / "absent"}"\n': "cannot read the producer secret file",
        '[producers.a]\nsecret = "env:CASIGN_TEST_UNSET_SECRET"\n': "CASIGN_TEST_UNSET_SECRET",
        f'[producers.a]\nsecret = "{in_place}"\n': "file:PATH or env:VARIABLE",
        f'[producers.a]\nsecret = "hmac:{in_place}"\n': "file:PATH or env:VARIABLE",
    }
    monkeypatch.delenv("CASIGN_TEST_UNSET_SECRET", raising=False)
    for text, expected in cases.items():
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigurationError) as caught:
            AccessPolicy.load(path, "a" * 64, SIGN_QUEUE)
        assert expected in str(caught.value)
        for value in (*credentials.values.values(), "tooshort", in_place):
            assert value not in str(caught.value)


def test_read_secret_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    value = secrets.token_hex(24)
    write_secret(tmp_path / "s", value)
    monkeypatch.setenv("CASIGN_TEST_SECRET", value)
    assert read_secret(f"file:{tmp_path / 's'}") == value.encode()
    assert read_secret("env:CASIGN_TEST_SECRET") == value.encode()


# --- end to end: a real worker on a CA folder with producers.toml ----------------------------


@dataclass
class GuardedWorker:
    """A running `casign worker` whose CA folder lists the producers of `credentials`."""

    folder: CAFolder
    credentials: Credentials
    broker_url: str
    store_url: str
    store: ResultsStore
    queue: str
    process: WorkerProcess

    def producer(self, identity: str | None = None, secret_source: str | None = None) -> Producer:
        if identity is not None and secret_source is None:
            secret_source = self.credentials.source(identity)
        return Producer(
            self.broker_url,
            self.store_url,
            store_prefix=self.store.prefix,
            queue=self.queue,
            identity=identity,
            secret_source=secret_source,
        )


def make_guarded_ca(directory: Path) -> tuple[CAFolder, Credentials]:
    folder = init_ca(directory / "ca", CAOptions(key_type=KeyType.RSA2048))
    credentials = Credentials.make(directory / "secrets")
    folder.producers_path.write_text(credentials.producers_toml(), encoding="utf-8")
    return folder, credentials


def drop_keys(store: ResultsStore) -> None:
    keys = list(store.client.scan_iter(match=f"{store.prefix}*", count=1000))
    for start in range(0, len(keys), 1000):
        store.client.delete(*keys[start : start + 1000])


@pytest.fixture(scope="module")
def guarded_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[CAFolder, Credentials]:
    return make_guarded_ca(tmp_path_factory.mktemp("guarded"))


@pytest.fixture(scope="module")
def guarded_worker(
    guarded_ca: tuple[CAFolder, Credentials],
    broker_url: str,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GuardedWorker]:
    folder, credentials = guarded_ca
    store = ResultsStore.from_url(redis_url, f"casign-test:{uuid.uuid4().hex[:12]}")
    queue = f"casign-test-{uuid.uuid4().hex[:8]}"
    log_path = tmp_path_factory.mktemp("guarded-worker") / "worker.log"
    process = start_worker(
        folder.root, broker_url, redis_url, store, queue, log_path, extra_env=credentials.env
    )
    try:
        yield GuardedWorker(folder, credentials, broker_url, redis_url, store, queue, process)
    finally:
        process.stop()
        drop_keys(store)
        store.client.close()


def wait_results(producer: Producer, job_ids: Iterable[str]) -> dict[str, JobResult]:
    return by_id(producer.results(list(job_ids), timeout=RESULT_TIMEOUT))


@pytest.mark.slow
def test_worker_refuses_unsigned_then_issues_the_same_job_signed(
    guarded_worker: GuardedWorker,
) -> None:
    store = guarded_worker.store
    issued_before = store.count_issued()
    csr = make_csr("www.example.com")
    with guarded_worker.producer() as anonymous:
        job_id = anonymous.submit(csr, job_id=new_id("e2e-unsigned"))
        refused = wait_results(anonymous, [job_id])
    assert codes(refused) == {job_id: RefusalCode.AUTH_UNSIGNED}
    assert store.job_state(job_id) == {}
    assert store.count_issued() == issued_before

    with guarded_worker.producer("web-frontend") as web:
        web.submit(csr, job_id=job_id)
        issued = wait_results(web, [job_id])
    assert codes(issued) == {job_id: "issued"}
    assert store.job_state(job_id)["state"] == "issued"
    assert store.count_issued() == issued_before + 1


@pytest.mark.slow
def test_worker_refuses_wrong_secrets_and_never_reads_unknown_producers(
    guarded_worker: GuardedWorker, tmp_path: Path
) -> None:
    """A listed name with the wrong secret is refused; an unlisted producer publishes to a queue
    of its own that no worker takes from (and on a Redis with users it has no user at all)."""
    stranger_secret = tmp_path / "stranger"
    write_secret(stranger_secret, secrets.token_hex(32))
    wrong = guarded_worker.credentials.source("web-frontend")  # not hr-portal's
    with (
        guarded_worker.producer("intruder", f"file:{stranger_secret}") as intruder,
        guarded_worker.producer("hr-portal", wrong) as impostor,
    ):
        unknown = intruder.submit(make_csr("www.example.com"), job_id=new_id("e2e-unknown"))
        forged = impostor.submit(
            make_csr("alice@example.com"), profile="usr_cert", job_id=new_id("e2e-forged")
        )
        results = wait_results(impostor, [forged])
        try:
            with pytest.raises(TimeoutError):
                list(intruder.results([unknown], timeout=1.0))
            assert intruder.delivery_queue == f"{guarded_worker.queue}:intruder"
            assert intruder.queued_messages() == 1
        finally:
            guarded_worker.store.client.delete(intruder.delivery_queue)
    assert codes(results) == {forged: RefusalCode.AUTH_BAD_SIGNATURE}
    for job_id in (unknown, forged):
        assert guarded_worker.store.job_state(job_id) == {}


@pytest.mark.slow
def test_worker_refuses_a_batch_changed_on_the_way(
    guarded_worker: GuardedWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone with broker access swaps the CSR in a signed message: the HMAC no longer holds."""
    original = Celery.send_task

    def swap_csr(self: Celery, name: str, args: Any = None, **options: Any) -> Any:
        args[0]["jobs"][0]["csr_pem"] = make_csr("mallory.example.com")
        return original(self, name, args=args, **options)

    monkeypatch.setattr(Celery, "send_task", swap_csr)
    with guarded_worker.producer("web-frontend") as web:
        job_id = web.submit(make_csr("www.example.com"), job_id=new_id("e2e-tampered"))
        results = wait_results(web, [job_id])
    assert codes(results) == {job_id: RefusalCode.AUTH_BAD_SIGNATURE}
    assert guarded_worker.store.job_state(job_id) == {}


@pytest.mark.slow
def test_worker_holds_hr_portal_to_its_profiles_and_names(guarded_worker: GuardedWorker) -> None:
    with guarded_worker.producer("hr-portal") as hr:
        submitted = {
            "issued": hr.submit(
                make_csr("alice@example.com"), profile="usr_cert", san=["email:alice@example.com"]
            ),
            RefusalCode.AUTH_PROFILE_NOT_ALLOWED: hr.submit(make_csr("www.example.com")),
            RefusalCode.AUTH_NAME_NOT_ALLOWED: hr.submit(
                make_csr("mallory@evil.test"), profile="usr_cert"
            ),
            "san": hr.submit(
                make_csr("alice@example.com"), profile="usr_cert", san=["email:mallory@evil.test"]
            ),
        }
        results = wait_results(hr, submitted.values())
    assert codes(results) == {
        submitted["issued"]: "issued",
        submitted[RefusalCode.AUTH_PROFILE_NOT_ALLOWED]: RefusalCode.AUTH_PROFILE_NOT_ALLOWED,
        submitted[RefusalCode.AUTH_NAME_NOT_ALLOWED]: RefusalCode.AUTH_NAME_NOT_ALLOWED,
        submitted["san"]: RefusalCode.AUTH_NAME_NOT_ALLOWED,
    }
    for job_id, result in results.items():
        if result.status == "refused":
            assert result.message, job_id


@pytest.mark.slow
def test_worker_rate_limits_a_burst_and_later_takes_the_same_jobs(
    guarded_worker: GuardedWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in guarded_worker.credentials.env.items():
        monkeypatch.setenv(name, value)  # bulk reads its secret from the environment
    with guarded_worker.producer("bulk") as bulk:
        requests = [
            bulk.request(make_csr(f"bulk{index}.example.com"), job_id=new_id(f"e2e-bulk{index}"))
            for index in range(8)
        ]
        job_ids = bulk.submit_many(requests)  # one queue message: one take from the bucket
        first = wait_results(bulk, job_ids)
        issued = [job_id for job_id in job_ids if first[job_id].ok]
        limited = [job_id for job_id in job_ids if not first[job_id].ok]
        assert len(issued) == BULK_BURST
        assert {first[job_id].code for job_id in limited} == {RefusalCode.AUTH_RATE_LIMITED}
        assert len(limited) == len(job_ids) - BULK_BURST
        for job_id in limited:
            assert guarded_worker.store.job_state(job_id) == {}

        time.sleep(len(limited) / BULK_RATE + 0.5)
        retried = bulk.submit_many(request for request in requests if request.job_id in limited)
        later = wait_results(bulk, retried)
    assert codes(later) == {job_id: "issued" for job_id in limited}


@pytest.mark.slow
def test_worker_log_names_no_producer_secret(guarded_worker: GuardedWorker) -> None:
    with guarded_worker.producer("web-frontend") as web:
        job_id = web.submit(make_csr("log.example.com"))
        assert wait_results(web, [job_id])[job_id].ok
    log = guarded_worker.process.log()
    for value in guarded_worker.credentials.values.values():
        assert value not in log
    assert "accepts batches from any producer" not in log


@pytest.mark.slow
def test_worker_without_producers_file_warns_it_is_open(
    ca_folder: CAFolder, broker_url: str, redis_url: str, store: ResultsStore, tmp_path: Path
) -> None:
    assert not ca_folder.producers_path.exists()
    queue = f"casign-test-{uuid.uuid4().hex[:8]}"
    process = start_worker(ca_folder.root, broker_url, redis_url, store, queue, tmp_path / "w.log")
    try:
        with Producer(broker_url, redis_url, store_prefix=store.prefix, queue=queue) as anonymous:
            job_id = anonymous.submit(make_csr("open.example.com"))
            assert wait_results(anonymous, [job_id])[job_id].ok
    finally:
        process.stop()
    assert f"{ca_folder.producers_path} is absent" in process.log()
    assert "accepts batches from any producer" in process.log()


# --- Redis with a password, and with TLS -------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    """A server certificate for 127.0.0.1 and a client certificate, both issued by casign."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @property
    def query(self) -> str:
        """The URL query redis-py and kombu both read: verify the server, present our client."""
        return (
            f"ssl_cert_reqs=required&ssl_ca_certs={self.ca_file}"
            f"&ssl_certfile={self.client_cert}&ssl_keyfile={self.client_key}"
        )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o400)


def issue_tls_files(folder: CAFolder, signer: BatchSigner, directory: Path) -> TlsFiles:
    """Certificates for the Redis server and its client, signed by this CA through casign."""
    directory.mkdir()
    server_key, client_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    jobs = [
        job(
            "redis-server",
            make_csr(
                "127.0.0.1", key=server_key, san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
        ),
        job("redis-client", make_csr("casign-worker@example.com", key=client_key), "usr_cert"),
    ]
    server, client = signer.sign_batch(jobs)
    assert server.certificate_pem and client.certificate_pem, (server, client)
    files = TlsFiles(
        folder.chain_path,
        directory / "server.pem",
        directory / "server.key",
        directory / "client.pem",
        directory / "client.key",
    )
    files.server_cert.write_text(server.certificate_pem)
    files.client_cert.write_text(client.certificate_pem)
    _write_key(files.server_key, server_key)
    _write_key(files.client_key, client_key)
    return files


@dataclass
class RedisServer:
    process: subprocess.Popen[bytes]
    url: str
    password: str


@contextlib.contextmanager
def redis_server(
    binary: str, directory: Path, tls: TlsFiles | None = None
) -> Iterator[RedisServer]:
    """A private redis-server with a random password (set in a 0600 config file, not argv)."""
    directory.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)
    port = free_port()
    settings = [
        "bind 127.0.0.1",
        f"dir {directory}",
        'save ""',
        "appendonly no",
        f"requirepass {password}",
        f"logfile {directory / 'redis.log'}",
    ]
    if tls is None:
        settings.append(f"port {port}")
        url = f"redis://:{password}@127.0.0.1:{port}/0"
    else:
        settings += [
            "port 0",
            f"tls-port {port}",
            f"tls-cert-file {tls.server_cert}",
            f"tls-key-file {tls.server_key}",
            f"tls-ca-cert-file {tls.ca_file}",
            "tls-auth-clients yes",
        ]
        url = f"rediss://:{password}@127.0.0.1:{port}/0?{tls.query}"
    conf = directory / "redis.conf"
    descriptor = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write("\n".join(settings) + "\n")
    process = subprocess.Popen(
        [binary, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with redis.Redis.from_url(url, socket_connect_timeout=1) as client:
                    client.ping()
                break
            except redis.RedisError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = (directory / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{binary} did not start:\n{log}") from None
                time.sleep(0.1)
        yield RedisServer(process, url, password)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _supports_tls(binary: str, directory: Path) -> bool:
    """Whether this redis-server was built with TLS (BUILD_TLS=yes): it knows `tls-port`."""
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "probe.conf"
    # A TLS build exits at once on the missing certificate; any other build on the directive.
    conf.write_text(
        f"port 0\ntls-port {free_port()}\ntls-cert-file {directory / 'absent.pem'}\n"
        f"tls-key-file {directory / 'absent.key'}\n",
        encoding="utf-8",
    )
    try:
        done = subprocess.run(
            [binary, str(conf)], capture_output=True, text=True, timeout=10, check=False
        )
    except subprocess.TimeoutExpired:
        return False
    return "Bad directive" not in done.stdout + done.stderr


def tls_redis_binary(directory: Path) -> str | None:
    candidates = dict.fromkeys(
        path
        for path in (
            shutil.which("redis-server"),
            "/usr/bin/redis-server",
            "/usr/local/bin/redis-server",
        )
        if path and os.access(path, os.X_OK)
    )
    return next((path for path in candidates if _supports_tls(path, directory)), None)


def run_guarded_round_trip(
    folder: CAFolder, credentials: Credentials, url: str, tmp_path: Path
) -> WorkerProcess:
    """A worker and producers on `url` (broker and store alike); returns the stopped worker."""
    store = ResultsStore.from_url(url, f"casign-test:{uuid.uuid4().hex[:12]}")
    queue = f"casign-test-{uuid.uuid4().hex[:8]}"
    process = start_worker(
        folder.root, url, url, store, queue, tmp_path / "worker.log", extra_env=credentials.env
    )
    try:
        common: dict[str, Any] = {"store_prefix": store.prefix, "queue": queue}
        with (
            Producer(
                url,
                url,
                identity="web-frontend",
                secret_source=credentials.source("web-frontend"),
                **common,
            ) as web,
            Producer(url, url, **common) as anonymous,
        ):
            good = web.request(make_csr("secure.example.com"))
            web.submit_many([good])
            refused = anonymous.submit(make_csr("www.example.com"))
            results = wait_results(web, [good.job_id]) | wait_results(anonymous, [refused])
        assert codes(results) == {good.job_id: "issued", refused: RefusalCode.AUTH_UNSIGNED}
        assert store.job_state(good.job_id)["state"] == "issued"
    finally:
        process.stop()
        drop_keys(store)
        store.client.close()
    return process


@pytest.mark.slow
def test_redis_with_a_password_end_to_end(
    guarded_ca: tuple[CAFolder, Credentials], tmp_path: Path
) -> None:
    folder, credentials = guarded_ca
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server on PATH")
    with redis_server(binary, tmp_path / "redis") as server:
        with (
            pytest.raises(redis.AuthenticationError),
            redis.Redis.from_url(
                server.url.replace(f":{server.password}@", "")
            ) as without_password,
        ):
            without_password.ping()
        process = run_guarded_round_trip(folder, credentials, server.url, tmp_path)
    log = process.log()
    assert server.password not in log
    assert "redis://:**@127.0.0.1" in log  # Celery's banner masks it


@pytest.mark.slow
def test_redis_over_tls_with_a_password_end_to_end(
    guarded_ca: tuple[CAFolder, Credentials], store: ResultsStore, tmp_path: Path
) -> None:
    binary = tls_redis_binary(tmp_path / "probe")
    if binary is None:
        pytest.skip("no redis-server built with TLS here (the one on PATH rejects `tls-port`)")
    folder, credentials = guarded_ca
    tls = issue_tls_files(folder, BatchSigner(load_authority(folder.root), store), tmp_path / "tls")
    with redis_server(binary, tmp_path / "redis", tls) as server:
        plain = server.url.replace("rediss://", "redis://").partition("?")[0]
        with (
            pytest.raises(redis.ConnectionError),
            redis.Redis.from_url(plain, socket_connect_timeout=2, socket_timeout=2) as cleartext,
        ):
            cleartext.ping()
        process = run_guarded_round_trip(folder, credentials, server.url, tmp_path)
    log = process.log()
    assert server.password not in log
    assert "rediss://:**@127.0.0.1" in log
    assert "insecure" not in log.lower()


@pytest.mark.parametrize(
    ("query", "verify"),
    [
        ("", ssl.CERT_REQUIRED),
        ("?ssl_cert_reqs=required&ssl_ca_certs=/etc/casign/ca.pem", ssl.CERT_REQUIRED),
        ("?ssl_cert_reqs=none", ssl.CERT_NONE),  # the operator's explicit choice stands
    ],
)
def test_rediss_broker_verifies_the_server_unless_told_not_to(query: str, verify: int) -> None:
    """kombu alone falls back to CERT_NONE for a bare rediss:// URL; casign must not."""
    app = Celery("probe", set_as_current=False)
    app.conf.update(celery_settings("rediss://:pw@127.0.0.1:6380/0" + query))
    with app.connection_for_write() as connection:
        assert connection.ssl
        assert connection.ssl.get("ssl_cert_reqs") == verify


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        ("alice@example.com", True),
        ("Alice.Smith@Example.COM", True),
        ("mallory@evil.test@example.com", False),
        ("mallory@evil.test, alice@example.com", False),
        ("https://evil.test/#@example.com", False),
        ("alice@example.com.evil.test", False),
    ],
)
def test_a_name_pattern_star_stays_inside_one_name(value: str, allowed: bool) -> None:
    from worker.access import name_matches

    assert name_matches(value, "*@example.com") is allowed


def test_a_redelivered_batch_costs_no_rate_tokens(
    guarded: BatchSigner, credentials: Credentials
) -> None:
    """Jobs the store already knows are answered from it, not refused for the rate."""
    secret = credentials.secret("bulk")
    jobs = [job(new_id(f"again{i}"), make_csr(f"again{i}.example.com")) for i in range(BULK_BURST)]
    first = submit(guarded, jobs, "bulk", secret)
    again = submit(guarded, jobs, "bulk", secret)
    assert set(codes(first).values()) == {"issued"}
    assert {job_id: r.certificate_pem for job_id, r in again.items()} == {
        job_id: r.certificate_pem for job_id, r in first.items()
    }


# --- subject and names: per-producer rights that hold (issue 10 item 5) ----------------------

SMUGGLED = {
    "DC": (NameOID.DOMAIN_COMPONENT, "corp"),
    "UID": (NameOID.USER_ID, "root"),
    "OU": (NameOID.ORGANIZATIONAL_UNIT_NAME, "Domain Admins"),
    "O": (NameOID.ORGANIZATION_NAME, "system:masters"),
}


def wide_usr_cert(authority: SigningAuthority) -> SigningAuthority:
    """The session authority with a usr_cert that allows every subject attribute casign knows,
    so that only the producer's rights stand between hr-portal and DC, UID, OU and O."""
    from worker.profiles import SUBJECT_ATTRIBUTE_OIDS, ProfileSet

    usr_cert = authority.profiles.get("usr_cert")
    assert usr_cert is not None
    wide = usr_cert.model_copy(update={"subject_attributes": list(SUBJECT_ATTRIBUTE_OIDS)})
    return dataclasses.replace(authority, profiles=ProfileSet({"usr_cert": wide}), _extensions={})


def smuggling_csr(*labels: str) -> str:
    return make_csr(
        "alice@example.com",
        extra_attributes=[x509.NameAttribute(*SMUGGLED[label]) for label in labels],
    )


@pytest.mark.parametrize("label", [*SMUGGLED, "all"])
def test_hr_portal_cannot_put_dc_uid_ou_or_o_in_its_subject(
    authority: SigningAuthority,
    store: ResultsStore,
    credentials: Credentials,
    tmp_path: Path,
    label: str,
) -> None:
    """The issue's attack: DC=corp, UID=root, OU=Domain Admins, O=system:masters with
    CN=alice@example.com (Kubernetes reads O as a group). hr-portal is restricted by names, so
    it may send CN and emailAddress only: refused even where the profile allows the attribute."""
    path = tmp_path / "producers.toml"
    path.write_text(credentials.producers_toml(), encoding="utf-8")
    policy = AccessPolicy.load(path, ca_identity(authority.intermediate), SIGN_QUEUE)
    signer = BatchSigner(wide_usr_cert(authority), store, policy)
    labels = list(SMUGGLED) if label == "all" else [label]
    job_id = new_id(f"smuggle-{label}")
    results = submit(
        signer,
        [job(job_id, smuggling_csr(*labels), "usr_cert")],
        "hr-portal",
        credentials.secret("hr-portal"),
    )
    assert codes(results) == {job_id: RefusalCode.AUTH_SUBJECT_NOT_ALLOWED}
    assert "hr-portal" in (results[job_id].message or "")
    assert store.count_issued() == 0 and store.count_serials() == 0


def test_the_guide_usr_cert_refuses_dc_and_uid_for_everyone(
    guarded: BatchSigner, credentials: Credentials
) -> None:
    """usr_cert lists the guide's policy_loose attributes; DC and UID are not among them."""
    for label in ("DC", "UID"):
        job_id = new_id(label)
        results = submit(
            guarded,
            [job(job_id, smuggling_csr(label), "usr_cert")],
            "bulk",
            credentials.secret("bulk"),
        )
        assert codes(results) == {job_id: RefusalCode.SUBJECT_ATTRIBUTE_NOT_ALLOWED}
        assert f"subject {label} " in (results[job_id].message or "")


def eng_portal(
    authority: SigningAuthority, store: ResultsStore, tmp_path: Path, extra: str = ""
) -> tuple[BatchSigner, bytes]:
    """A producer held to *.example.com names, with O and OU values allowed by its entry."""
    secret = secrets.token_hex(32)
    write_secret(tmp_path / "eng-portal", secret)
    path = tmp_path / "eng-producers.toml"
    path.write_text(
        textwrap.dedent(
            f"""\
            [producers.eng-portal]
            secret = "file:{tmp_path / "eng-portal"}"
            names = ["*.example.com", "*@example.com"]
            subject = {{ O = ["Example Ltd"], OU = ["eng-*"] }}
            """
        )
        + extra,
        encoding="utf-8",
    )
    return BatchSigner(
        authority, store, AccessPolicy.load(path, ca_identity(authority.intermediate), SIGN_QUEUE)
    ), secret.encode()


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({"O": "Example Ltd", "OU": "eng-payments"}, "issued"),
        ({"O": "Example Ltd"}, "issued"),
        ({"O": "Evil Ltd"}, RefusalCode.AUTH_SUBJECT_NOT_ALLOWED),
        ({"OU": "sales"}, RefusalCode.AUTH_SUBJECT_NOT_ALLOWED),
        ({"OU": "Eng-payments"}, RefusalCode.AUTH_SUBJECT_NOT_ALLOWED),  # values are exact
        ({"L": "London"}, RefusalCode.AUTH_SUBJECT_NOT_ALLOWED),
    ],
)
def test_a_producer_entry_allows_subject_values_per_attribute(
    authority: SigningAuthority,
    store: ResultsStore,
    tmp_path: Path,
    attributes: dict[str, str],
    expected: str,
) -> None:
    signer, secret = eng_portal(authority, store, tmp_path)
    oids = {"O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME}
    oids["L"] = NameOID.LOCALITY_NAME
    csr = make_csr(
        "api.example.com",
        extra_attributes=[
            x509.NameAttribute(oids[key], value) for key, value in attributes.items()
        ],
    )
    job_id = new_id("eng")
    results = submit(signer, [job(job_id, csr, "server_cert")], "eng-portal", secret)
    assert codes(results) == {job_id: expected}, results[job_id].message


def test_the_subject_is_built_from_the_checked_values(
    authority: SigningAuthority, store: ResultsStore, tmp_path: Path
) -> None:
    """Not the CSR's subject copied: each attribute in its own RDN, in the profile's order,
    a T61String O written as UTF8String, the CN lower-cased like the SAN."""
    from tests import hostile_csrs as hostile

    signer, secret = eng_portal(authority, store, tmp_path)
    csr = hostile.request_with_subject(
        rsa.generate_private_key(65537, 2048),
        [
            (hostile.OID_COMMON_NAME, hostile.tlv(hostile.TAG_UTF8_STRING, b"API.Example.com")),
            ("2.5.4.11", hostile.tlv(0x0C, b"eng-core")),
            ("2.5.4.10", hostile.tlv(0x14, b"Example Ltd")),  # T61String
        ],
    )
    job_id = new_id("built")
    results = submit(signer, [job(job_id, csr, "server_cert")], "eng-portal", secret)
    assert codes(results) == {job_id: "issued"}, results[job_id].message
    certificate = x509.load_pem_x509_certificate((results[job_id].certificate_pem or "").encode())
    assert certificate.subject.rfc4514_string() == "CN=api.example.com,OU=eng-core,O=Example Ltd"
    assert [len(rdn) for rdn in certificate.subject.rdns] == [1, 1, 1]
    organization = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0]
    assert organization._type.name == "UTF8String"


@pytest.mark.parametrize(
    ("name", "wildcards", "expected"),
    [
        ("api.example.com", False, "issued"),
        ("*.example.com", False, RefusalCode.AUTH_NAME_NOT_ALLOWED),
        ("*.example.com", True, "issued"),
        ("a.b.example.com", False, RefusalCode.AUTH_NAME_NOT_ALLOWED),
        ("a.b.example.com", True, RefusalCode.AUTH_NAME_NOT_ALLOWED),
        ("example.com", False, RefusalCode.AUTH_NAME_NOT_ALLOWED),
    ],
)
def test_a_star_is_one_label_and_a_wildcard_certificate_needs_wildcards_true(
    authority: SigningAuthority,
    store: ResultsStore,
    tmp_path: Path,
    name: str,
    wildcards: bool,
    expected: str,
) -> None:
    extra = "wildcards = true\n" if wildcards else ""
    signer, secret = eng_portal(authority, store, tmp_path, extra)
    csr = make_csr(name, san=[x509.DNSName(name)])
    job_id = new_id("star")
    results = submit(signer, [job(job_id, csr, "server_cert")], "eng-portal", secret)
    assert codes(results) == {job_id: expected}, results[job_id].message


def test_the_kelvin_sign_cannot_fold_into_k(
    guarded: BatchSigner, credentials: Credentials, store: ResultsStore
) -> None:
    """U+212A KELVIN SIGN lower-cases to an ASCII 'k' in Python; names are compared as ASCII,
    so a CN that looks like kate@example.com but is not ASCII matches no pattern."""
    job_id = new_id("kelvin")
    results = submit(
        guarded,
        [job(job_id, make_csr("\u212aate@example.com"), "usr_cert")],
        "hr-portal",
        credentials.secret("hr-portal"),
    )
    assert codes(results) == {job_id: RefusalCode.AUTH_NAME_NOT_ALLOWED}
    assert store.count_issued() == 0


@pytest.mark.parametrize(
    ("value", "pattern", "wildcards", "allowed"),
    [
        ("www.example.com", "*.example.com", False, True),
        ("WWW.Example.COM", "*.example.com", False, True),
        ("*.example.com", "*.example.com", False, False),
        ("*.example.com", "*.example.com", True, True),
        ("*.example.com", "www.example.com", True, False),
        ("a.b.example.com", "*.example.com", True, False),
        ("example.com", "*.example.com", False, False),
        ("www.example.com.", "*.example.com", False, False),
        ("a.*.example.com", "*.*.example.com", True, False),
        ("\u212a.example.com", "k.example.com", False, False),
        ("k.example.com", "K.example.com", False, True),
        ("alice@\u212aexample.com", "*@kexample.com", False, False),
        ("10.1.2.3", "10.0.0.0/8", False, True),
        ("11.1.2.3", "10.0.0.0/8", False, False),
        ("10.1.2.3", "*.example.com", False, False),
        ("https://api.example.com/path", "https://*.example.com", False, True),
        ("https://evil.test/#@example.com", "https://*.example.com", False, False),
        ("https://api.example.com@evil.test/", "https://*.example.com", False, False),
        ("http://api.example.com/", "https://*.example.com", False, False),
    ],
)
def test_name_patterns_match_label_by_label_on_ascii(
    value: str, pattern: str, wildcards: bool, allowed: bool
) -> None:
    from worker.access import name_matches

    assert name_matches(value, pattern, wildcards) is allowed


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("www*.example.com", "whole '*'"),
        ("\u212aelvin.example.com", "not ASCII"),
        ("*@", "LOCAL@DOMAIN"),
        ("https://", "SCHEME://DOMAIN"),
    ],
)
def test_a_pattern_that_cannot_match_label_by_label_is_a_configuration_error(
    tmp_path: Path, credentials: Credentials, pattern: str, problem: str
) -> None:
    path = tmp_path / "producers.toml"
    path.write_text(
        f'[producers.a]\nsecret = "file:{credentials.directory / "hr-portal"}"\n'
        f"names = [{json.dumps(pattern)}]\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigurationError) as caught:
        AccessPolicy.load(path, "a" * 64, SIGN_QUEUE)
    assert problem in str(caught.value)


def test_a_subject_entry_names_attributes_casign_knows(
    tmp_path: Path, credentials: Credentials
) -> None:
    path = tmp_path / "producers.toml"
    for table, problem in [
        ('{ CN = ["x"] }', "list its patterns under `names`"),
        ('{ shoeSize = ["42"] }', "'shoeSize' is not one of"),
    ]:
        path.write_text(
            f'[producers.a]\nsecret = "file:{credentials.directory / "hr-portal"}"\n'
            f"subject = {table}\n",
            encoding="utf-8",
        )
        with pytest.raises(ConfigurationError) as caught:
            AccessPolicy.load(path, "a" * 64, SIGN_QUEUE)
        assert problem in str(caught.value)
