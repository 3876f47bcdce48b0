"""Revocation: the store's atomic index update, refusals with codes, the audit log, expiry,
and a revocation through a real worker process and the producer side."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509

from casign.cli import main as casign_main
from casign.cli_lifecycle import parse_duration
from core.audit import verify_chain
from core.errors import RefusalCode, Rejected
from core.index import IndexEntry, Status, format_serial, openssl_oneline
from core.keys import KeyType
from core.messages import RevokeRequest
from core.revocation import canonical_serial
from producers import Producer
from store.results import ResultsStore
from store.revocations import RevocationStore
from tests.csrs import job, make_csr
from tests.workers import WorkerProcess, start_worker
from worker.access import AccessPolicy, AllowedProducer, ProducerPolicy
from worker.cafolder import CAFolder, CAOptions, init_ca
from worker.issuance import BatchSigner
from worker.lifecycle_tasks import handle_revoke


def issue(signer: BatchSigner, count: int) -> list[str]:
    """Issue `count` server certificates in-process; their serials."""
    results = signer.sign_batch(
        [job(f"job-{index}", make_csr(f"host{index}.example.com")) for index in range(count)]
    )
    assert all(result.ok for result in results), results
    return [result.serial for result in results if result.serial]


def cli_env(store: ResultsStore, queue: str | None = None) -> dict[str, str]:
    env = {"CASIGN_STORE_PREFIX": store.prefix.rstrip(":")}
    return env | ({"CASIGN_QUEUE": queue} if queue else {})


# -- the store ---------------------------------------------------------------------------------


def test_revoke_marks_the_index_line_and_the_revoked_list(
    signer: BatchSigner, store: ResultsStore
) -> None:
    serial, other = issue(signer, 2)
    revocations = RevocationStore(store)
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    entry = revocations.revoke(serial, "keyCompromise", when, requester="alice")

    assert entry.status is Status.REVOKED
    line = next(line for line in store.index_lines() if f"\t{serial}\t" in line)
    fields = line.split("\t")
    assert fields[0] == "R"
    assert fields[2] == "260102030405Z,keyCompromise"
    assert store.index_entry(serial) == entry
    assert list(revocations.revoked_lines()) == [line]
    assert revocations.count_revoked() == 1
    assert store.index_entry(other).status is Status.VALID  # type: ignore[union-attr]


def test_revocation_is_audited_in_the_hash_chain(signer: BatchSigner, store: ResultsStore) -> None:
    (serial,) = issue(signer, 1)
    RevocationStore(store).revoke(serial, "superseded", requester="ops", request_id="rq-1")

    entries = list(store.audit_entries())
    assert '"event":"revoked"' in entries[-1]
    assert f'"serial":"{serial}"' in entries[-1]
    assert '"requester":"ops"' in entries[-1] and '"reason":"superseded"' in entries[-1]
    assert verify_chain(entries, store.audit_head()).ok


@pytest.mark.parametrize(
    ("serial", "reason", "code"),
    [
        ("0123ABCD", "keyCompromise", RefusalCode.REVOKE_UNKNOWN_SERIAL),
        ("not-hex", "keyCompromise", RefusalCode.REVOKE_UNKNOWN_SERIAL),
        (None, "stolen", RefusalCode.REVOKE_BAD_REASON),
        (None, "removeFromCRL", RefusalCode.REVOKE_BAD_REASON),  # delta CRLs only
    ],
)
def test_refusals_have_stable_codes(
    signer: BatchSigner, store: ResultsStore, serial: str | None, reason: str, code: str
) -> None:
    (issued,) = issue(signer, 1)
    with pytest.raises(Rejected) as refused:
        RevocationStore(store).revoke(serial or issued, reason)
    assert refused.value.code == code
    assert store.index_entry(issued).status is Status.VALID  # type: ignore[union-attr]


def test_revoking_twice_is_refused_and_changes_nothing(
    signer: BatchSigner, store: ResultsStore
) -> None:
    (serial,) = issue(signer, 1)
    revocations = RevocationStore(store)
    revocations.revoke(serial, "keyCompromise")
    (line,) = store.index_lines()
    audit_length = len(list(store.audit_entries()))

    with pytest.raises(Rejected) as refused:
        revocations.revoke(serial.lower(), "superseded")

    assert refused.value.code == RefusalCode.REVOKE_ALREADY_REVOKED
    assert "keyCompromise" in refused.value.message
    assert list(store.index_lines()) == [line]
    assert len(list(store.audit_entries())) == audit_length


def test_a_redelivered_request_is_answered_not_refused(
    signer: BatchSigner, store: ResultsStore
) -> None:
    (serial,) = issue(signer, 1)
    revocations = RevocationStore(store)
    first = revocations.revoke(serial, "superseded", request_id="req-42")
    again = revocations.revoke(serial, "superseded", request_id="req-42")
    assert again == first
    with pytest.raises(Rejected):
        revocations.revoke(serial, "superseded", request_id="req-43")


def test_concurrent_revocations_of_one_serial_succeed_once(
    signer: BatchSigner, store: ResultsStore
) -> None:
    (serial,) = issue(signer, 1)
    revocations = RevocationStore(store)
    outcomes: list[str] = []

    def attempt(reason: str) -> None:
        try:
            revocations.revoke(serial, reason)
            outcomes.append("revoked")
        except Rejected as exc:
            outcomes.append(exc.code)

    threads = [
        threading.Thread(target=attempt, args=(reason,))
        for reason in ["keyCompromise", "superseded", "cessationOfOperation"] * 4
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("revoked") == 1
    assert outcomes.count(RefusalCode.REVOKE_ALREADY_REVOKED) == len(threads) - 1


def test_reason_names_are_read_as_openssl_reads_them(
    signer: BatchSigner, store: ResultsStore
) -> None:
    serial, unspecified = issue(signer, 2)
    revocations = RevocationStore(store)
    assert revocations.revoke(serial, "KEYCOMPROMISE").revocation_reason == "keyCompromise"
    # RFC 5280 5.3.1: unspecified is left out, as `openssl ca -revoke` without a reason does.
    revocations.revoke(unspecified, "unspecified")
    assert store.index_entry(unspecified).to_openssl_line().split("\t")[2].isalnum()  # type: ignore[union-attr]
    assert canonical_serial("0x00:ab:cd") == "ABCD"


# -- the worker's handler ------------------------------------------------------------------------


def test_the_handler_answers_on_the_reply_list(signer: BatchSigner, store: ResultsStore) -> None:
    (serial,) = issue(signer, 1)
    revocations = RevocationStore(store)
    request = RevokeRequest(request_id="r1", serial=serial, reason="superseded", reply_to="me")

    result = handle_revoke(request.model_dump(), revocations)

    assert result is not None and result.ok
    assert revocations.wait_result("me", "r1", timeout=1) == result
    assert result.reason == "superseded" and result.serial == serial

    refused = handle_revoke(
        request.model_copy(update={"request_id": "r2"}).model_dump(), revocations
    )
    assert refused is not None and refused.code == RefusalCode.REVOKE_ALREADY_REVOKED

    bad = handle_revoke({"request_id": "r3", "reply_to": "me", "serial": 5}, revocations)
    assert bad is not None and bad.code == RefusalCode.REVOKE_MALFORMED
    assert handle_revoke({"nonsense": True}, revocations) is None


def test_with_listed_producers_only_a_sealed_request_is_heard(
    signer: BatchSigner, store: ResultsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.auth import MessageKind, seal
    from store.envelopes import EnvelopeLedger

    serial, other = issue(signer, 2)
    secret = b"s" * 32
    monkeypatch.setenv("TEST_REVOKER_SECRET", secret.decode())
    # "ops" revokes what others obtained (tests/test_trust_boundary.py: the rights themselves).
    policy = ProducerPolicy(secret="env:TEST_REVOKER_SECRET", revoke="any")
    access = AccessPolicy({"ops": AllowedProducer("ops", secret, policy)}, "c" * 64, "casign.sign")
    revocations = RevocationStore(store)
    ledger = EnvelopeLedger(store)

    # Unsealed: no answer on the reply list, one note for its owner, nothing revoked.
    unsigned = RevokeRequest(request_id="u1", serial=serial, reply_to="ops:me")
    assert handle_revoke(unsigned.model_dump(), revocations, access) is None
    assert ledger.refusal_note("ops:me") == (
        RefusalCode.AUTH_UNSIGNED,
        ledger.refusal_note("ops:me")[1],
    )  # type: ignore[index]
    assert store.index_entry(serial).status is Status.VALID  # type: ignore[union-attr]

    request = RevokeRequest(request_id="s1", serial=serial, reply_to="ops:me")

    def sealed(update: dict[str, object]) -> RevokeRequest:
        payload_of = request.model_copy(update=update)
        envelope = seal(
            secret,
            MessageKind.REVOKE,
            producer="ops",
            ca="c" * 64,
            queue="casign.sign",
            reply_to="ops:me",
            payload=payload_of.sealed_payload(),
        )
        return payload_of.model_copy(update={"envelope": envelope})

    signed = sealed({})
    result = handle_revoke(signed.model_dump(), revocations, access)
    assert result is not None and result.ok
    assert '"requester":"ops"' in list(store.audit_entries())[-1]

    # The same sealed message again is a replay: no answer, no note (its answer was given and
    # a note would refuse the producer's other waits), one audit line.
    lines = len(list(store.audit_entries()))
    assert handle_revoke(signed.model_dump(), revocations, access) is None
    note = ledger.refusal_note("ops:me")  # the unsigned message's note above, not a new one
    assert note is None or note[0] != RefusalCode.AUTH_REPLAYED
    assert len(list(store.audit_entries())) == lines + 1

    # The seal covers the serial: moved to another serial, it no longer verifies.
    forged = sealed({}).model_copy(update={"serial": other})
    assert handle_revoke(forged.model_dump(), revocations, access) is None
    assert ledger.refusal_note("ops:me")[0] == RefusalCode.AUTH_BAD_SIGNATURE  # type: ignore[index]
    assert store.index_entry(other).status is Status.VALID  # type: ignore[union-attr]

    # A sealed signing batch does not open as a revocation (the kind is inside the seal).
    as_batch = seal(
        secret,
        MessageKind.SIGN,
        producer="ops",
        ca="c" * 64,
        queue="casign.sign",
        reply_to="ops:me",
        payload=request.model_copy(update={"serial": other}).sealed_payload(),
    )
    crossed = request.model_copy(update={"serial": other, "envelope": as_batch})
    assert handle_revoke(crossed.model_dump(), revocations, access) is None
    assert store.index_entry(other).status is Status.VALID  # type: ignore[union-attr]


# -- expiry --------------------------------------------------------------------------------------


def put_entry(store: ResultsStore, serial: int, expires: datetime, cn: str) -> None:
    subject = openssl_oneline(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)]))
    line = IndexEntry(
        Status.VALID, expires.replace(microsecond=0), serial, subject
    ).to_openssl_line()
    store.client.hset(store.key("index"), format_serial(serial), line)
    store.client.rpush(store.key("index:order"), format_serial(serial))


def test_expired_entries_export_as_e_and_expiring_ones_are_listed(
    store: ResultsStore, redis_url: str
) -> None:
    now = datetime.now(UTC)
    put_entry(store, 0x1000, now - timedelta(days=1), "gone.example.com")
    put_entry(store, 0x1001, now + timedelta(days=10), "soon.example.com")
    put_entry(store, 0x1002, now + timedelta(days=100), "later.example.com")
    put_entry(store, 0x1003, now + timedelta(days=3), "revoked.example.com")
    RevocationStore(store).revoke("1003", "superseded")

    soon = RevocationStore(store).expiring(parse_duration("30d"), now)
    assert [entry.serial for entry in soon] == [0x1001]

    runner = CliRunner()
    env = cli_env(store)
    exported = runner.invoke(casign_main, ["index", "export", "--store", redis_url], env=env)
    assert exported.exit_code == 0, exported.output
    assert [line[0] for line in exported.output.splitlines()] == ["E", "V", "V", "R"]

    listed = runner.invoke(
        casign_main, ["list", "--expiring", "30d", "--store", redis_url], env=env
    )
    assert listed.exit_code == 0, listed.output
    assert "1001\tV\t" in listed.output and "soon.example.com" in listed.output
    assert "1002" not in listed.output and "1000\t" not in listed.output

    revoked = runner.invoke(casign_main, ["list", "--revoked", "--store", redis_url], env=env)
    assert "1003\tR\t" in revoked.output and ",superseded" in revoked.output


def test_durations() -> None:
    assert parse_duration("30d") == timedelta(days=30)
    assert parse_duration("2w") == timedelta(days=14)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("7") == timedelta(days=7)
    with pytest.raises(ValueError):
        parse_duration("soon")


# -- through the queue, with a real worker ------------------------------------------------------


@pytest.fixture(scope="module")
def worker_ca(tmp_path_factory: pytest.TempPathFactory) -> CAFolder:
    return init_ca(
        tmp_path_factory.mktemp("revocation") / "ca",
        CAOptions(intermediate_cn="Revocation Test Intermediate", key_type=KeyType.P256),
    )


@pytest.fixture
def worker(
    worker_ca: CAFolder,
    broker_url: str,
    redis_url: str,
    store: ResultsStore,
    queue: str,
    tmp_path: Path,
) -> Iterator[WorkerProcess]:
    process = start_worker(
        worker_ca.root, broker_url, redis_url, store, queue, tmp_path / "worker.log"
    )
    yield process
    process.stop()


@pytest.mark.slow
def test_revocation_through_a_real_worker(
    worker: WorkerProcess,
    worker_ca: CAFolder,
    broker_url: str,
    redis_url: str,
    store: ResultsStore,
    queue: str,
) -> None:
    prefix = store.prefix
    with Producer(broker_url, redis_url, store_prefix=prefix, queue=queue) as producer:
        job_ids = [producer.submit(make_csr(f"q{index}.example.com")) for index in range(3)]
        serials = [result.serial for result in producer.results(job_ids, timeout=60)]
    first, second, third = (serial for serial in serials if serial)

    with Producer(
        broker_url, redis_url, store_prefix=prefix, queue=queue, requester="test"
    ) as client:
        revoked = client.revoke(first, "keyCompromise", timeout=60)
        assert revoked.ok, revoked
        assert revoked.serial == first and revoked.reason == "keyCompromise"
        again = client.revoke(first, "superseded", timeout=60)
        assert again.code == RefusalCode.REVOKE_ALREADY_REVOKED
        unknown = client.revoke("0BADC0DE", "superseded", timeout=60)
        assert unknown.code == RefusalCode.REVOKE_UNKNOWN_SERIAL
        with pytest.raises(Rejected):  # refused before it is sent
            client.revoke(second, "because")

    entry = store.index_entry(first)
    assert entry is not None and entry.status is Status.REVOKED
    assert entry.revocation_reason == "keyCompromise"

    # The operator's command goes the same way.
    runner = CliRunner()
    env = cli_env(store, queue)
    args = ["revoke", second, "--reason", "cessationOfOperation", "--broker", broker_url]
    done = runner.invoke(casign_main, [*args, "--store", redis_url], env=env)
    assert done.exit_code == 0, done.output
    assert f"revoked {second}" in done.output
    refused = runner.invoke(casign_main, [*args, "--store", redis_url], env=env)
    assert refused.exit_code == 3 and "revoke.already_revoked" in refused.output

    # And the CRL lists both, signed by the intermediate (the operator's, made in process: the
    # worker makes CRLs only on its own schedule, never on a queue message).
    made = runner.invoke(
        casign_main, ["crl", "--ca", str(worker_ca.root), "--store", redis_url], env=env
    )
    assert made.exit_code == 0, made.output
    crl = RevocationStore(store).latest_crl()
    assert crl is not None, worker.log()[-2000:]
    assert {entry.serial_number for entry in crl} == {int(first, 16), int(second, 16)}
    assert crl.is_signature_valid(worker_ca.intermediate_certificate().public_key())  # type: ignore[arg-type]
    assert store.index_entry(third).status is Status.VALID  # type: ignore[union-attr]
