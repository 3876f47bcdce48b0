"""Leases: a reserved job names the worker process holding it, and only a job whose holder's
lease is gone is signed by anyone else (recovery, or a delivery of its batch again).

The first tests run the store's scripts and the signer in process against the test Redis; the
last two race real `casign worker` processes on a Redis of their own (tests/test_faults.py's
rig) and count every signature the workers make (tests/signature_probe/sitecustomize.py).
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from core.errors import Retryable
from core.keys import KeyType
from core.queue import celery_settings
from store.leases import LeaseTerms
from store.results import Intent, ResultsStore
from tests.cas import make_alice_ca
from tests.csrs import job, make_csr
from tests.faults import (
    Collector,
    assert_exactly_once,
    kill_whole_worker_when,
    pending_count,
    pending_jobs,
    wait_until,
)
from tests.test_faults import (  # noqa: F401  (fixtures)
    FaultRig,
    make_jobs,
    owned_redis,
    record_numbers,
    rig,
)
from worker.authority import SigningAuthority
from worker.issuance import BatchSigner
from worker.issuance.pace import FIRST_CHUNK_JOBS, SigningPace
from worker.lease import WorkerLease

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
    signer._issue = lambda batch, profiles: chunks.append(len(batch.jobs)) or original(  # type: ignore[method-assign]
        batch, profiles
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
    }
    monkeypatch.setenv("CASIGN_VISIBILITY_TIMEOUT", "6")
    assert celery_settings("redis://x")["broker_transport_options"]["unacked_restore_interval"] == 1
