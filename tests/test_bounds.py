"""Bounds everywhere: message ceilings answered, short Redis calls, bounded reply lists, a
producer that stays small, and job records that expire (real Redis)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from cryptography import x509

from core.errors import ConfigurationError, RefusalCode
from core.messages import JobResult, RevocationResult
from core.queue import MAX_BATCH_BYTES, MAX_BATCH_JOBS, SIGN_BATCH_TASK, batch_bytes
from producers import Producer
from producers.producer import cut_batches
from store.embedded import EmbeddedRedis
from store.jobs import PUBLISH_CHUNK
from store.replies import REPLY_LIST_MAX, REPLY_TTL_SECONDS
from store.results import Failure, Intent, Issued, ResultsStore
from store.revocations import RevocationStore
from tests.csrs import job, make_csr
from tests.workers import WorkerProcess
from worker.authority import SigningAuthority
from worker.cafolder import CAFolder
from worker.issuance import BatchSigner
from worker.policy import MAX_CSR_BYTES
from worker.retention import DEFAULT_JOB_RETENTION_DAYS, SECONDS_PER_DAY, job_retention_days

PRIVATE_OID = x509.ObjectIdentifier("1.3.6.1.4.1.55555.1")


def replies_on(store: ResultsStore, name: str) -> list[JobResult]:
    raw = store.client.lrange(store.reply_key(name), 0, -1)
    return [JobResult.model_validate_json(item) for item in raw]


def cheap_jobs(count: int, csr_pem: str = "x") -> list[dict[str, object]]:
    """Jobs a ceiling refuses before anything parses their CSRs."""
    return [job(f"cheap-{n}", csr_pem) for n in range(count)]


# -- the ceilings of one message ------------------------------------------------------------


def test_an_over_long_batch_is_answered_job_by_job_and_nothing_is_recorded(
    signer: BatchSigner, store: ResultsStore
) -> None:
    jobs = cheap_jobs(MAX_BATCH_JOBS + 1)
    results = signer.sign_batch(jobs, reply_to="long")
    assert len(results) == MAX_BATCH_JOBS + 1
    assert {(r.status, r.code) for r in results} == {("refused", RefusalCode.BATCH_TOO_MANY)}
    assert f"at most {MAX_BATCH_JOBS}" in (results[0].message or "")
    pushed = replies_on(store, "long")
    assert sorted(r.job_id for r in pushed) == sorted(str(j["job_id"]) for j in jobs)
    # Nothing under the job ids: the same job in a batch under the ceiling is signed.
    assert store.known_jobs(str(j["job_id"]) for j in jobs) == set()
    entries = [json.loads(line.split(" ", 1)[1]) for line in store.audit_entries()]
    assert entries == [entries[0]] and entries[0]["reason"] == "batch.too_many"
    (again,) = signer.sign_batch([job("cheap-0", make_csr("again.example.com"))])
    assert again.ok


def test_an_oversized_batch_is_answered_job_by_job(
    signer: BatchSigner, store: ResultsStore
) -> None:
    big = "A" * (MAX_BATCH_BYTES // 4)
    jobs = cheap_jobs(5, big)
    assert batch_bytes(jobs) > MAX_BATCH_BYTES
    results = signer.sign_batch(jobs, reply_to="large")
    assert {(r.status, r.code) for r in results} == {("refused", RefusalCode.BATCH_TOO_LARGE)}
    assert len(replies_on(store, "large")) == 5


def test_the_producer_cuts_its_messages_under_both_ceilings() -> None:
    small = cheap_jobs(MAX_BATCH_JOBS * 2 + 1)
    cuts = list(cut_batches(small, MAX_BATCH_JOBS, MAX_BATCH_BYTES))
    assert [last - first for first, last in cuts] == [MAX_BATCH_JOBS, MAX_BATCH_JOBS, 1]
    large = cheap_jobs(9, "A" * (MAX_BATCH_BYTES // 4))
    cuts = list(cut_batches(large, MAX_BATCH_JOBS, MAX_BATCH_BYTES))
    assert all(batch_bytes(large[first:last]) <= MAX_BATCH_BYTES for first, last in cuts)
    assert cuts[0] == (0, 3) and cuts[-1][1] == 9
    alone = cheap_jobs(2, "A" * (MAX_BATCH_BYTES + 1))  # one job over the ceiling goes alone
    assert list(cut_batches(alone, MAX_BATCH_JOBS, MAX_BATCH_BYTES)) == [(0, 1), (1, 2)]


@pytest.fixture
def worker_processes() -> int:
    """The `worker` fixture (tests/conftest.py) here starts one pool process."""
    return 1


@pytest.mark.slow
def test_a_real_worker_answers_messages_over_its_ceilings_and_the_producer_never_sends_one(
    worker: WorkerProcess, broker_url: str, redis_url: str, store: ResultsStore, queue: str
) -> None:
    with Producer(broker_url, redis_url, store_prefix=store.prefix, queue=queue) as producer:
        # A message no honest producer sends, straight onto the queue: 3 x the job ceiling.
        jobs = [job(f"flood-{n}", "x") for n in range(MAX_BATCH_JOBS * 3)]
        producer._celery.send_task(
            SIGN_BATCH_TASK,
            args=[{"schema_version": 2, "reply_to": producer.reply_to, "jobs": jobs}],
            queue=queue,
            declare=[],
        )
        answers: list[JobResult] = []
        for _ in range(60):
            answers += store.wait_replies(producer.reply_to, 1.0, limit=MAX_BATCH_JOBS * 3)
            if len(answers) >= len(jobs):
                break
        assert len(answers) == len(jobs)
        assert {a.code for a in answers} == {RefusalCode.BATCH_TOO_MANY}
        # The same jobs through submit_many, as one "batch" of 3 x the ceiling: all issued.
        requests = [
            producer.request(make_csr(f"cut{n}.example.com"), job_id=f"cut-{n}") for n in range(5)
        ]
        job_ids = producer.submit_many(requests, batch_size=MAX_BATCH_JOBS * 3)
        assert all(r.ok for r in producer.results(job_ids, timeout=120))
    assert "refused a batch of 6000 job(s)" in worker.log()


# -- a CSR at the policy limit ----------------------------------------------------------------


def csr_of_size(target: int) -> str:
    """A real CSR of exactly `target` bytes of PEM or a few under (padded by an extension)."""
    pad = max(0, target * 3 // 4 - 2000)
    while True:
        bulk = x509.UnrecognizedExtension(PRIVATE_OID, bytes(pad))
        csr = make_csr("big.example.com", extensions=[(bulk, False)])
        if len(csr) > target - 80:
            return csr
        pad += max(1, (target - len(csr)) * 3 // 4 - 8)


def test_a_csr_just_under_the_limit_is_issued_and_one_just_over_is_refused(
    signer: BatchSigner,
) -> None:
    under = csr_of_size(MAX_CSR_BYTES - 100)
    over = csr_of_size(MAX_CSR_BYTES + 200)
    assert MAX_CSR_BYTES - 200 < len(under) <= MAX_CSR_BYTES < len(over)
    issued, refused = signer.sign_batch([job("under", under), job("over", over)], "edge")
    assert issued.ok, issued
    assert (refused.status, refused.code) == ("refused", RefusalCode.CSR_TOO_LARGE)
    assert f"at most {MAX_CSR_BYTES}" in (refused.message or "")


# -- short Redis calls ---------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    """A redis-server of this test's own, so its command counts and slow log are ours."""
    server = EmbeddedRedis(Path(tmp_path_factory.mktemp("own")) / "ca")
    with server.running():
        client = redis.Redis.from_url(server.url, decode_responses=True)
        yield client
        client.close()


def fake_issued(count: int) -> list[Issued]:
    pem = "-----BEGIN CERTIFICATE-----\n" + ("A" * 64 + "\n") * 18 + "-----END CERTIFICATE-----\n"
    return [
        Issued(f"job{n}", "f" * 64, f"{n:032X}", pem, f"V\t300101000000Z\t\t{n:032X}\tunknown\t/CN=x",
               "{}", "owner")
        for n in range(count)
    ]  # fmt: skip


def test_a_large_batch_is_reserved_and_published_in_short_calls(own_redis: redis.Redis) -> None:
    store = ResultsStore(own_redis, "casign-chunks")
    count = 4 * PUBLISH_CHUNK + 1
    issued = fake_issued(count + 1)
    # Each script's first run loads it (NOSCRIPT, then EVALSHA again): done once beforehand.
    store.reserve([Intent("job0", "f" * 64, f"{0:032X}", "{}")])
    store.publish(issued[:1], [], [], "chunks")

    def calls() -> int:
        return int(own_redis.info("commandstats")["cmdstat_evalsha"]["calls"])

    before = calls()
    store.reserve(Intent(f"job{n}", "f" * 64, f"{n:032X}", "{}") for n in range(1, count + 1))
    store.publish(issued[1:], [], [], "chunks")
    assert calls() - before == 2 * 5  # 5 calls each way
    assert store.count_issued() == count + 1 and own_redis.scard(store.keys.pending) == 0
    assert own_redis.llen(store.reply_key("chunks")) == count + 1


# -- reply lists -----------------------------------------------------------------------------


def test_a_reply_list_is_capped_oldest_first_and_the_job_still_answerable(
    signer: BatchSigner, store: ResultsStore
) -> None:
    store.replies.max_length = 3
    results = signer.sign_batch(
        [job(f"cap-{n}", make_csr(f"cap{n}.example.com")) for n in range(5)], "capped"
    )
    assert [r.job_id for r in replies_on(store, "capped")] == ["cap-2", "cap-3", "cap-4"]
    dropped = store.job_results(["cap-0"])["cap-0"]
    assert dropped.serial == results[0].serial and dropped.ok
    for n in range(4):
        store.replies.push(
            "capped", JobResult(job_id=f"more-{n}", status="failed").model_dump_json()
        )
    assert [r.job_id for r in replies_on(store, "capped")] == ["more-1", "more-2", "more-3"]
    assert REPLY_LIST_MAX >= MAX_BATCH_JOBS  # a whole message's answers fit


def test_every_reply_push_path_sets_a_ttl_once_and_never_extends_it(
    signer: BatchSigner, store: ResultsStore
) -> None:
    client = store.client

    def ttl(name: str) -> int:
        return int(client.ttl(store.reply_key(name)))

    # Issued certificates (publish), refusals and answers from the store (other replies),
    # a failed batch, a message over the ceilings, a revocation's answer.
    signer.sign_batch([job("ttl-1", make_csr("ttl1.example.com"))], "issued")
    signer.sign_batch([job("ttl-2", make_csr("not a host name"))], "refused")
    signer.report_failure([job("ttl-3", make_csr("ttl3.example.com"))], "failed", OSError("x"))
    signer.sign_batch(cheap_jobs(MAX_BATCH_JOBS + 1), "ceiling")
    RevocationStore(store).push_result(
        "revocation", RevocationResult(request_id="r1", status="failed")
    )
    paths = ("issued", "refused", "failed", "ceiling", "revocation")
    assert all(0 < ttl(name) <= REPLY_TTL_SECONDS for name in paths), [ttl(n) for n in paths]
    # Fixed: a push to a list that has a TTL leaves it alone (no sliding).
    for name in paths:
        client.expire(store.reply_key(name), 100)
    signer.sign_batch([job("ttl-1", make_csr("ttl1.example.com"))], "issued")  # answered again
    signer.sign_batch([job("ttl-4", make_csr("ttl4.example.com"))], "issued")
    signer.sign_batch([job("ttl-5", make_csr("not a host name"))], "refused")
    signer.report_failure([job("ttl-6", make_csr("ttl6.example.com"))], "failed", OSError("x"))
    signer.sign_batch(cheap_jobs(MAX_BATCH_JOBS + 1), "ceiling")
    RevocationStore(store).push_result(
        "revocation", RevocationResult(request_id="r2", status="failed")
    )
    assert all(0 < ttl(name) <= 100 for name in paths), [ttl(n) for n in paths]


# -- the producer's memory -------------------------------------------------------------------


@pytest.fixture
def quiet_producer(
    broker_url: str, redis_url: str, store: ResultsStore, queue: str
) -> Iterator[Producer]:
    """A producer on a queue no worker serves (its messages are read back by the test)."""
    producer = Producer(broker_url, redis_url, store_prefix=store.prefix, queue=queue)
    producer.max_waiting = 10
    yield producer
    producer.close()
    store.client.delete(queue)


def test_the_producer_holds_at_most_max_waiting_requests(
    quiet_producer: Producer, signer: BatchSigner
) -> None:
    requests = [
        quiet_producer.request(make_csr(f"mem{n}.example.com"), job_id=f"mem-{n}")
        for n in range(15)
    ]
    quiet_producer.submit_many(requests)
    assert quiet_producer.waiting_count() == 10
    with pytest.raises(ValueError, match="neither sent"):
        next(quiet_producer.results(["mem-0"], timeout=1))
    # A forgotten job is still answered from the store, checked against the trust anchor only.
    signer.sign_batch([requests[0].model_dump(exclude_none=True)])
    forgotten = quiet_producer.status("mem-0")
    assert forgotten is not None and forgotten.ok


def test_status_forgets_what_it_answered(quiet_producer: Producer, signer: BatchSigner) -> None:
    requests = [
        quiet_producer.request(make_csr(f"st{n}.example.com"), job_id=f"st-{n}") for n in range(3)
    ]
    quiet_producer.submit_many(requests)
    assert quiet_producer.status(requests[0]) is None  # not signed yet: still held
    assert quiet_producer.waiting_count() == 3
    signer.sign_batch([r.model_dump(exclude_none=True) for r in requests[:2]])
    first, second = quiet_producer.status(requests[0]), quiet_producer.status("st-1")
    assert first is not None and first.ok and second is not None and second.ok
    assert quiet_producer.waiting_count() == 1


# -- retention of job records ----------------------------------------------------------------


def test_closed_job_records_expire_after_the_retention_and_certificates_stay(
    authority: SigningAuthority, store: ResultsStore
) -> None:
    signer = BatchSigner(replace(authority, job_retention_days=2), store)
    retention = 2 * SECONDS_PER_DAY
    issued, refused = signer.sign_batch(
        [
            job("kept-issued", make_csr("kept.example.com"), requester="web"),
            job("kept-refused", make_csr("not a host name")),
        ]
    )
    store.reserve([Intent("kept-reserved", "0" * 64, "1A2B3C4D5E6F", "{}")])
    store.mark_failed([Failure("kept-failed", "1" * 64, "internal.error", "x")])

    def ttl(job_id: str) -> int:
        return int(store.client.ttl(store.job_key(job_id)))

    assert retention - 60 < ttl("kept-issued") <= retention
    assert retention - 60 < ttl("kept-refused") <= retention
    assert retention - 60 < ttl("kept-failed") <= retention
    assert ttl("kept-reserved") == -1  # reserved: kept until it is published
    for key in (store.keys.certs, store.keys.index, store.keys.serials, store.keys.audit):
        assert store.client.ttl(key) == -1
    # The record expires (here: now); the certificate, its index line and its owner stay.
    store.client.delete(store.job_key("kept-issued"))
    assert issued.serial is not None and store.certificate(issued.serial) is not None
    assert store.index_entry(issued.serial) is not None
    assert store.owner_of(issued.serial) == "web"
    assert refused.code is not None


def test_job_retention_days_is_read_from_casign_toml(tmp_path: Path) -> None:
    folder = CAFolder(tmp_path)
    folder.settings_path.parent.mkdir(parents=True)
    assert job_retention_days(folder) == DEFAULT_JOB_RETENTION_DAYS == 30
    folder.settings_path.write_text("job_retention_days = 0\n")
    assert job_retention_days(folder) == 0
    for bad in ("-1", '"30"', "true"):
        folder.settings_path.write_text(f"job_retention_days = {bad}\n")
        with pytest.raises(ConfigurationError, match="job_retention_days"):
            job_retention_days(folder)


def test_a_signer_with_retention_0_keeps_job_records(
    authority: SigningAuthority, store: ResultsStore
) -> None:
    signer = BatchSigner(replace(authority, job_retention_days=0), store)
    (issued,) = signer.sign_batch([job("forever", make_csr("forever.example.com"))])
    assert issued.ok and store.client.ttl(store.job_key("forever")) == -1
