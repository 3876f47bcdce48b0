"""Leases: a reserved job names the worker process holding it, and only a job whose holder's
lease is gone is signed by anyone else (recovery, or a delivery of its batch again).

The first tests run the store's scripts and the signer in process against the test Redis; the
last two race real `casign worker` processes on a Redis of their own (tests/test_faults.py's
rig) and count every signature the workers make (tests/signature_probe/sitecustomize.py).
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.auth import ca_identity
from core.errors import Retryable
from core.keys import KeyType
from core.queue import celery_settings
from store.identity import CAIdentityRecord
from store.leases import LeaseTerms
from store.results import Intent, ResultsStore
from tests.cas import make_alice_ca
from tests.csrs import job, make_csr
from tests.faults import (
    Collector,
    OwnedRedis,
    assert_exactly_once,
    kill_whole_worker_when,
    pending_count,
    pending_jobs,
    wait_until,
)
from tests.test_faults import FaultRig, make_jobs, record_numbers
from worker.authority import SigningAuthority
from worker.issuance import BatchSigner
from worker.issuance.pace import FIRST_CHUNK_JOBS, SigningPace
from worker.lease import WorkerLease, gone

PROBE = Path(__file__).resolve().parent / "signature_probe"


def intent(job_id: str, serial: str) -> Intent:
    return Intent(job_id, "f" * 64, serial, "{}")


# The store: reservations under leases ---------------------------------------------------------


def test_a_job_under_a_live_lease_is_left_and_taken_once_the_lease_is_gone(
    store: ResultsStore,
) -> None:
    a, b = LeaseTerms("host:1:aaaa", 30), LeaseTerms("host:2:bbbb", 30)
    (first,) = store.reserve([intent("held", "0A01")], a)
    assert first.state == "reserved"
    assert store.leases.holder_of("held") == "host:1:aaaa" and store.leases.alive(a.holder)

    (again,) = store.reserve([intent("held", "0A02")], b)
    assert again.state == "leased"  # a's lease is alive: b leaves the job to it
    assert store.leases.claim_expired(b, 100) == []
    (own,) = store.reserve([intent("held", "0A03")], a)
    assert own.state == "pending"  # a's own record, tried again by a: signed by a

    store.client.delete(store.keys.lease(a.holder))  # a died: its lease expired
    (taken,) = store.reserve([intent("held", "0A04")], b)
    assert (taken.state, taken.serial) == ("pending", "0A01")  # the stored record, now b's
    assert store.leases.holder_of("held") == b.holder


def test_recovery_claims_only_jobs_whose_holder_is_gone_and_never_its_own(
    store: ResultsStore,
) -> None:
    live, dead, me = (LeaseTerms(f"host:{n}:{n}", 30) for n in (1, 2, 3))
    store.reserve([intent("live-job", "0B01")], live)
    store.reserve([intent("dead-job", "0B02")], dead)
    store.reserve([intent("mine", "0B03")], me)
    store.reserve([intent("nobodys", "0B04")])  # an unleased caller's
    store.client.delete(store.keys.lease(dead.holder))

    claimed = dict(store.leases.claim_expired(me, 100))
    assert sorted(claimed) == ["dead-job", "nobodys"]
    assert store.leases.holder_of("dead-job") == me.holder
    assert store.leases.claim_expired(LeaseTerms("host:4:4", 30), 100) == []  # now mine, live
    assert store.leases.release(me.holder, ["dead-job", "live-job"]) == 1
    assert store.leases.holder_of("dead-job") is None
    assert [job_id for job_id, _ in store.leases.claim_expired(live, 100)] == ["dead-job"]


def test_a_lease_is_renewed_in_one_call_and_expires_with_its_process(store: ResultsStore) -> None:
    lease = WorkerLease(store, seconds=1.0)
    assert not lease.held()
    lease.renew()
    assert lease.held() and store.leases.alive(lease.holder)
    ttl = store.client.pttl(store.keys.lease(lease.holder))
    assert 0 < ttl <= 1000
    time.sleep(1.1)
    assert not lease.held() and not store.leases.alive(lease.holder)


def test_the_lease_of_a_process_of_this_host_that_died_ends_at_once(store: ResultsStore) -> None:
    """A pool process killed, or a worker killed and started again on the same host: its
    leases end as soon as a neighbour looks, not after they expire."""
    child = subprocess.Popen(["sleep", "30"])
    try:
        ticks = Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[19]
        me = WorkerLease(store)
        place = me.holder.rsplit(":", 1)[1]
        neighbour = f"host:{child.pid}:{ticks}:abcd:{place}"
        elsewhere = f"host:{child.pid}:{ticks}:abcd:000000000000"  # another kernel or pid namespace
        for holder in (neighbour, elsewhere):
            store.leases.renew(LeaseTerms(holder, 30))
        assert not gone(neighbour) and me.end_gone_neighbours() == 0
    finally:
        child.kill()
        child.wait()
    assert gone(neighbour) and not gone(elsewhere)
    assert gone(f"host:{os.getpid()}:1:abcd:{place}")  # this pid, but an earlier process
    assert me.end_gone_neighbours() == 1
    assert not store.leases.alive(neighbour) and store.leases.alive(elsewhere)


# The signer in process ------------------------------------------------------------------------


def jobs_of(tag: str, count: int) -> list[dict[str, object]]:
    return [job(f"{tag}-{n}", make_csr(f"{tag}-{n}.example.com")) for n in range(count)]


def test_a_batch_held_by_another_live_worker_is_left_to_it(
    authority: SigningAuthority, store: ResultsStore
) -> None:
    first = BatchSigner(authority, store, lease=WorkerLease(store))
    second = BatchSigner(authority, store, lease=WorkerLease(store))
    jobs = jobs_of("held", 3)
    # The first worker reserved the batch and is still signing it (its lease alive).
    assert first.lease is not None
    first.lease.renew()
    store.reserve([intent("held-0", "0C01")], first.lease_terms)
    results = second.sign_batch(jobs, reply_to="held-replies")
    assert sorted(r.job_id for r in results) == ["held-1", "held-2"]
    assert store.job_state("held-0")["state"] == "reserved"  # left to the first
    assert second.recover_pending() == []  # and recovery leaves it too


def test_a_signer_whose_lease_lapsed_signs_nothing_more_and_gives_the_rest_up(
    authority: SigningAuthority, store: ResultsStore
) -> None:
    lease = WorkerLease(store, seconds=30)
    signer = BatchSigner(authority, store, lease=lease)
    lease.held = lambda: False  # type: ignore[method-assign]  # e.g. the store unreachable
    jobs = jobs_of("lapsed", 3)
    with pytest.raises(Retryable, match="lease lapsed"):
        signer.sign_batch(jobs)
    assert store.count_issued() == 0
    assert {store.leases.holder_of(f"lapsed-{n}") for n in range(3)} == {None}
    results = BatchSigner(authority, store).recover_pending()
    assert sorted(r.job_id for r in results) == ["lapsed-0", "lapsed-1", "lapsed-2"]


def test_a_long_message_is_signed_in_chunks_that_fit_the_visibility_timeout(
    authority: SigningAuthority, store: ResultsStore
) -> None:
    pace = SigningPace(visibility_timeout=300, most=500)
    assert pace.chunk_jobs() == FIRST_CHUNK_JOBS
    pace.note(jobs=50, seconds=10)  # 5 jobs/s: a tenth of 300 s holds 150 jobs
    assert pace.chunk_jobs() == 150
    pace.note(jobs=10_000, seconds=1)
    assert pace.chunk_jobs() == 500  # never more than the ceiling

    chunks: list[int] = []
    signer = BatchSigner(authority, store, pace=SigningPace(visibility_timeout=300, most=4))
    original = signer._issue
    signer._issue = lambda batch, profiles: (
        chunks.append(len(batch.jobs))
        or original(  # type: ignore[method-assign]
            batch, profiles
        )
    )
    results = signer.sign_batch(jobs_of("chunked", 10), reply_to="chunked-replies")
    assert [r.status for r in results] == ["issued"] * 10
    assert chunks == [4, 4, 2]
    assert len(store.wait_replies("chunked-replies", timeout=2)) == 10


def test_kombu_looks_for_stranded_messages_every_tenth_of_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CASIGN_VISIBILITY_TIMEOUT", "300")
    options = celery_settings("redis://127.0.0.1:6379/0")["broker_transport_options"]
    assert options == {
        "visibility_timeout": 300,
        "unacked_restore_interval": 10,
        "unacked_restore_throttle": 1,
        "queue_order_strategy": "round_robin",
        "body_encoding": "utf-8",
    }
    monkeypatch.setenv("CASIGN_VISIBILITY_TIMEOUT", "6")
    assert celery_settings("redis://x")["broker_transport_options"]["unacked_restore_interval"] == 1


# Real workers on a Redis of their own -------------------------------------------------------

VISIBILITY_SECONDS = 6
LEASE_SECONDS = 2


def probed_env(rig: FaultRig, delay: float) -> dict[str, str]:
    """Worker environment: signatures counted into the rig's folder, each `delay` s slower."""
    return {
        "PYTHONPATH": os.pathsep.join([str(PROBE), os.environ.get("PYTHONPATH", "")]),
        "CASIGN_TEST_SIGNATURES": str(rig.folder / "signatures.txt"),
        "CASIGN_TEST_SIGN_DELAY": str(delay),
        "CASIGN_VISIBILITY_TIMEOUT": str(VISIBILITY_SECONDS),
        "CASIGN_LEASE_SECONDS": str(LEASE_SECONDS),
    }


def signatures(rig: FaultRig) -> list[tuple[int, str, str]]:
    """(pid, job id, certificate SHA-256) of every signature the workers made."""
    path = rig.folder / "signatures.txt"
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(int(pid), job_id, digest) for pid, job_id, digest in rows]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[FaultRig]:
    """A redis-server of the test's own (broker and store), as tests/test_faults.py's rig."""
    server = OwnedRedis(tmp_path / "redis")
    server.start()
    store = ResultsStore.from_url(server.url, f"casign-leases:{uuid.uuid4().hex[:8]}")
    yield FaultRig(server, store, f"casign-leases-{uuid.uuid4().hex[:8]}", tmp_path)
    store.client.close()
    server.stop()


@pytest.fixture
def ecdsa_ca(tmp_path: Path) -> Path:
    """A P-256 CA: signing one record twice gives two certificates with one serial."""
    return make_alice_ca(tmp_path / "p256-ca", key_type=KeyType.P256).root


@pytest.mark.slow
@pytest.mark.flaky(reruns=1)
def test_a_worker_starting_while_another_signs_a_long_batch_signs_nothing_twice(
    ecdsa_ca: Path, rig: FaultRig
) -> None:
    """One 1,500-job message signed slowly by worker A outlives the visibility timeout; it is
    handed out again (A's own restore sweep, and worker B restores it when it starts): every
    job is signed exactly once, all published."""
    jobs = 1500
    env = probed_env(rig, delay=0.006)
    first = rig.worker(ecdsa_ca, "worker-a.log", extra_env=env)
    second = None
    try:
        with rig.producer() as producer:
            names = make_jobs(producer, jobs, "long")
            sent = time.monotonic()
            producer.submit_many(names.requests.values(), batch_size=jobs)  # one message
            collector = Collector(producer, names, 150)
            collector.start()
            wait_until(lambda: pending_count(rig.store) > 0, 30, "A signing")
            # The message is now older than the visibility timeout and A is still signing it.
            time.sleep(max(0.0, sent + VISIBILITY_SECONDS + 1 - time.monotonic()))
            issued_when_b_started = rig.store.count_issued()
            assert issued_when_b_started < jobs, "A finished before the timeout: nothing tested"
            second = rig.worker(ecdsa_ca, "worker-b.log", extra_env=env)
            results = collector.finish()
        counts = assert_exactly_once(rig.store, results, names, _intermediate(ecdsa_ca))
        logs = first.log() + second.log()
    finally:
        if second is not None:
            second.stop()
        first.stop()
    made = signatures(rig)
    per_job = Counter(job_id for _, job_id, _ in made)
    twice = {job_id: n for job_id, n in per_job.items() if n != 1}
    assert twice == {}, f"{len(twice)} job(s) signed more than once, e.g. {next(iter(twice))}"
    assert set(per_job) == set(names)
    by_process = Counter(pid for pid, _, _ in made)
    left = [line for line in logs.splitlines() if "left to it" in line]
    record_numbers(
        "test_a_worker_starting_while_another_signs_a_long_batch_signs_nothing_twice",
        jobs=counts.jobs,
        visibility_timeout=VISIBILITY_SECONDS,
        issued_when_b_started=issued_when_b_started,
        signatures=len(made),
        signatures_by_process=sorted(by_process.values(), reverse=True),
        chunks_left_to_their_holder=len(left),
        seconds=round(time.monotonic() - sent, 1),
    )
    assert len(by_process) >= 2, "the message was never handed out again: nothing tested"
    assert left, "no delivery met a chunk under another worker's lease: nothing tested"


@pytest.mark.slow
@pytest.mark.flaky(reruns=1)
def test_a_worker_killed_mid_batch_has_its_reserved_jobs_signed_once_by_another(
    ecdsa_ca: Path, rig: FaultRig
) -> None:
    """Worker A killed (-9) while it holds reserved jobs; once its lease expires, worker B
    recovers them, and the message comes back after the visibility timeout: every job is
    published once, and B signs each job once (A's unpublished signatures died with it)."""
    jobs = 1000
    env = probed_env(rig, delay=0.006)
    first = rig.worker(ecdsa_ca, "worker-a.log", extra_env=env)
    second = None
    try:
        with rig.producer() as producer:
            names = make_jobs(producer, jobs, "killed")
            sent = time.monotonic()
            producer.submit_many(names.requests.values(), batch_size=jobs)
            collector = Collector(producer, names, 150)
            collector.start()
            wait_until(lambda: rig.store.count_issued() >= 200, 30, "A under way")
            pids = kill_whole_worker_when(
                first, lambda: pending_count(rig.store) > 0, 20, "A holding reserved jobs"
            )
            held_at_kill = pending_jobs(rig.store)
            issued_at_kill = rig.store.count_issued()
            signed_by_a = Counter(job_id for _, job_id, _ in signatures(rig))
            # B starts once the message is past its visibility timeout (so B's first look
            # hands it out again) and A's lease has expired (so B's recovery takes its jobs).
            time.sleep(max(0.0, sent + VISIBILITY_SECONDS + 1 - time.monotonic()))
            second = rig.worker(ecdsa_ca, "worker-b.log", extra_env=env)
            killed_at = time.monotonic()
            results = collector.finish()
            recovered_after = time.monotonic() - killed_at
        counts = assert_exactly_once(rig.store, results, names, _intermediate(ecdsa_ca))
        recovery_log = [line for line in second.log().splitlines() if "before a crash" in line]
    finally:
        if second is not None:
            second.stop()
        first.stop()
    made = signatures(rig)
    by_b = Counter(job_id for pid, job_id, _ in made if pid not in pids)
    assert [job_id for job_id, n in by_b.items() if n > 1] == [], "B signed a job twice"
    per_job = Counter(job_id for _, job_id, _ in made)
    again = {job_id for job_id, n in per_job.items() if n > 1}
    # Only jobs A held when it died, signed by A but never published, are signed once more.
    assert again <= held_at_kill
    assert all(signed_by_a[job_id] == 1 and by_b[job_id] == 1 for job_id in again)
    assert set(per_job) == set(names)
    record_numbers(
        "test_a_worker_killed_mid_batch_has_its_reserved_jobs_signed_once_by_another",
        jobs=counts.jobs,
        lease_seconds=LEASE_SECONDS,
        visibility_timeout=VISIBILITY_SECONDS,
        issued_at_kill=issued_at_kill,
        reserved_at_kill=len(held_at_kill),
        signed_by_a_unpublished=len(again),
        signed_by_b=sum(by_b.values()),
        recovery_log=recovery_log,
        seconds_from_b_start_to_last_answer=round(recovered_after, 1),
    )
    assert held_at_kill, "A held no reserved job when killed: nothing tested"
    assert recovery_log, "B's recovery took none of A's jobs"


def test_a_job_in_a_workers_hands_is_accounted_for(store: ResultsStore) -> None:
    """In a record, or marked in a signing process's hands: not lost; a stale mark is forgotten."""
    store.reserve([intent("recorded", "0D01")])
    store.jobs.note_in_hand(["in-hand", "in-hand-2"], forget_after=60)
    assert store.accounted_jobs(["recorded", "in-hand", "nowhere"]) == {"recorded", "in-hand"}
    store.jobs.drop_in_hand(["in-hand"])
    assert store.accounted_jobs(["in-hand", "in-hand-2"]) == {"in-hand-2"}
    time.sleep(0.05)
    store.jobs.note_in_hand(["fresh"], forget_after=0.01)  # forgets marks older than that
    assert store.accounted_jobs(["in-hand-2", "fresh"]) == {"fresh"}


@pytest.mark.slow
@pytest.mark.flaky(reruns=1)
def test_a_message_lost_between_pop_and_record_is_sent_again_within_seconds(
    ecdsa_ca: Path, rig: FaultRig
) -> None:
    """A message taken from the queue and never recorded (as kombu loses it when Redis is out
    of memory, or its consumer dies between BRPOP and `unacked`): its jobs are in no queue, no
    record and no worker's hands, and the producer (resend_after left at 60 s) sends them again
    at its first quiet spell; nothing is signed twice."""
    broker = rig.redis.client()
    env = probed_env(rig, delay=0)
    rig.seal(ecdsa_ca)  # the listed producer and the users, before any worker starts
    intermediate = _intermediate(ecdsa_ca)  # the CA the producer seals for, as a signer records it
    CAIdentityRecord(rig.store).claim(
        ca_identity(intermediate), intermediate.subject.rfc4514_string()
    )
    worker = None
    try:
        with rig.producer() as producer:
            lost = make_jobs(producer, 20, "lost")
            kept = make_jobs(producer, 20, "kept")
            producer.submit_many(lost.requests.values(), batch_size=20)
            producer.submit_many(kept.requests.values(), batch_size=20)
            assert broker.llen(rig.delivery_queue) == 2
            # the oldest message, lost in transit
            assert broker.rpop(rig.delivery_queue) is not None
            worker = rig.worker(ecdsa_ca, "worker.log", extra_env=env)
            started = time.monotonic()
            results = list(producer.results([*lost, *kept], timeout=45))
            answered_after = time.monotonic() - started
        names = {**lost, **kept}
        counts = assert_exactly_once(rig.store, results, names, _intermediate(ecdsa_ca))
    finally:
        if worker is not None:
            worker.stop()
        broker.close()
    per_job = Counter(job_id for _, job_id, _ in signatures(rig))
    assert per_job == dict.fromkeys(names, 1), "a job was signed other than once"
    record_numbers(
        "test_a_message_lost_between_pop_and_record_is_sent_again_within_seconds",
        jobs=counts.jobs,
        lost=len(lost),
        resend_after=producer.resend_after,
        seconds_from_worker_start_to_last_answer=round(answered_after, 1),
    )
    assert answered_after < 20, "the lost message waited for a blind resend"


def _intermediate(ca_dir: Path):  # type: ignore[no-untyped-def]
    from worker.cafolder import CAFolder

    return CAFolder(ca_dir).intermediate_certificate()
