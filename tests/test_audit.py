"""The audit log: a hash-chained line per decision, and `casign audit verify|show` over it.

Decisions are made by a real BatchSigner on real Redis (the publish script appends and chains
the lines); tampering is done the way someone with Redis access would do it (LSET, LREM, RPOP).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from core.audit import GENESIS, chain_hash, verify_chain
from core.auth import MessageKind, ca_identity, seal
from core.errors import RefusalCode
from core.queue import SIGN_QUEUE
from producers import Producer
from store.results import ResultsStore
from tests.csrs import job, make_csr
from tests.workers import start_worker
from worker.access import AccessPolicy
from worker.authority import SigningAuthority
from worker.cafolder import CAFolder
from worker.issuance import BatchSigner

HR_SECRET = secrets.token_hex(32)


def audit_lines(store: ResultsStore) -> list[dict[str, Any]]:
    return [json.loads(entry.partition(" ")[2]) for entry in store.audit_entries()]


def recent(moment: str) -> bool:
    """An audit time: ISO 8601 UTC with microseconds, within the last few minutes."""
    when = datetime.strptime(moment, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return timedelta(0) <= datetime.now(UTC) - when < timedelta(minutes=5)


def casign(*args: str, prefix: str) -> subprocess.CompletedProcess[str]:
    """Run the `casign` command as an operator would, with the test's key prefix."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("CASIGN_")}
    env["CASIGN_STORE_PREFIX"] = prefix
    return subprocess.run(
        [sys.executable, "-m", "casign", *args],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


@pytest.fixture
def guarded(authority: SigningAuthority, store: ResultsStore, tmp_path: Path) -> BatchSigner:
    """A signer serving one producer, hr-portal: usr_cert for *@example.com, burst of 2."""
    secret_file = tmp_path / "hr-portal.secret"
    secret_file.write_text(HR_SECRET)
    secret_file.chmod(0o400)
    producers = tmp_path / "producers.toml"
    producers.write_text(
        "[producers.hr-portal]\n"
        f'secret = "file:{secret_file}"\n'
        'profiles = ["usr_cert"]\n'
        'names = ["*@example.com"]\n'
        "rate_per_second = 0.01\n"
        "burst = 2\n",
        encoding="utf-8",
    )
    policy = AccessPolicy.load(producers, ca_identity(authority.intermediate), SIGN_QUEUE)
    assert policy is not None
    return BatchSigner(authority, store, policy)


def as_hr_portal(signer: BatchSigner, jobs: list[dict[str, object]]) -> None:
    assert signer.access is not None
    envelope = seal(
        HR_SECRET.encode(),
        MessageKind.SIGN,
        producer="hr-portal",
        ca=signer.access.ca,
        queue=signer.access.queue,
        reply_to=None,
        payload=jobs,
    )
    signer.sign_batch(jobs, None, envelope)


def test_issued_and_refused_decisions_are_audited_with_their_details(
    signer: BatchSigner, store: ResultsStore
) -> None:
    results = signer.sign_batch(
        [
            job("ok-1", make_csr("www.example.com"), requester="payroll"),
            job("bad-cn", make_csr("not_a_host"), requester="payroll"),
            job("no-profile", make_csr("www.example.com"), "gold_cert", requester="payroll"),
            job("client", make_csr("alice@example.com"), "usr_cert", requester="hr"),
        ]
    )
    serials = {result.job_id: result.serial for result in results}
    lines = {line["job_id"]: line for line in audit_lines(store) if "job_id" in line}
    assert sorted(lines) == ["bad-cn", "client", "no-profile", "ok-1"]
    for line in lines.values():
        assert recent(line.pop("time"))
    assert lines["ok-1"] == {
        "event": "issued",
        "job_id": "ok-1",
        "requester": "payroll",
        "serial": serials["ok-1"],
        "profile": "server_cert",
    }
    assert lines["client"]["serial"] == serials["client"]
    assert lines["client"]["profile"] == "usr_cert"
    assert lines["bad-cn"] == {
        "event": "refused",
        "job_id": "bad-cn",
        "requester": "payroll",
        "profile": "server_cert",
        "reason": RefusalCode.SUBJECT_CN_NOT_FQDN,
    }
    assert lines["no-profile"]["reason"] == RefusalCode.PROFILE_UNKNOWN
    assert lines["no-profile"]["profile"] == "gold_cert"
    assert verify_chain(store.audit_entries(), store.audit_head()).ok


def test_malformed_job_is_audited(signer: BatchSigner, store: ResultsStore) -> None:
    signer.sign_batch([{"job_id": "broken", "csr_pem": 42}])
    (line,) = audit_lines(store)
    assert line["job_id"] == "broken"
    assert line["event"] == "refused"
    assert line["reason"] == RefusalCode.JOB_MALFORMED


def test_access_refusals_are_audited_with_the_producer(
    guarded: BatchSigner, store: ResultsStore
) -> None:
    unsigned = [job("unsigned-1", make_csr("alice@example.com"), "usr_cert")]
    guarded.sign_batch(unsigned, None, None)
    # A flood of forged jobs costs one audit line for the whole batch, naming no job id.
    forged = [job(f"forged-{n}", make_csr("alice@example.com"), "usr_cert") for n in range(50)]
    assert guarded.access is not None
    forged_seal = seal(
        b"x" * 32,
        MessageKind.SIGN,
        producer="hr-portal",
        ca=guarded.access.ca,
        queue=guarded.access.queue,
        reply_to=None,
        payload=forged,
    )
    guarded.sign_batch(forged, None, forged_seal)
    refused_batches = [line for line in audit_lines(store) if "job_id" not in line]
    assert [(line["reason"], line["jobs"]) for line in refused_batches] == [
        (RefusalCode.AUTH_UNSIGNED, 1),
        (RefusalCode.AUTH_BAD_SIGNATURE, 50),
    ]
    assert refused_batches[1]["claimed_by"] == "hr-portal"
    as_hr_portal(
        guarded,
        [
            job("alice", make_csr("alice@example.com"), "usr_cert", requester="spoofed"),
            job("server", make_csr("www.example.com"), "server_cert"),
            job("mallory", make_csr("mallory@evil.test"), "usr_cert"),
            job("bob", make_csr("bob@example.com"), "usr_cert"),
            job("carol", make_csr("carol@example.com"), "usr_cert"),  # over the burst of 2
        ],
    )
    lines = {line["job_id"]: line for line in audit_lines(store) if "job_id" in line}
    assert {job_id: (line["event"], line.get("reason")) for job_id, line in lines.items()} == {
        "alice": ("issued", None),
        "server": ("refused", RefusalCode.AUTH_PROFILE_NOT_ALLOWED),
        "mallory": ("refused", RefusalCode.AUTH_NAME_NOT_ALLOWED),
        "bob": ("issued", None),
        "carol": ("refused", RefusalCode.AUTH_RATE_LIMITED),
    }
    # An authenticated producer is the requester, whatever the job claims.
    assert {lines[job_id]["requester"] for job_id in ("alice", "server", "bob", "carol")} == {
        "hr-portal"
    }
    assert lines["server"]["profile"] == "server_cert"
    assert lines["alice"]["serial"] and lines["alice"]["profile"] == "usr_cert"
    assert all(recent(line["time"]) for line in lines.values())
    assert verify_chain(store.audit_entries(), store.audit_head()).ok


def test_redelivered_job_is_issued_and_audited_once(
    signer: BatchSigner, store: ResultsStore
) -> None:
    """A redelivery answers from the store: no second certificate, no second `issued` line.

    A refused request is checked again on redelivery, and that refusal is recorded again.
    """
    batch = [job("once", make_csr("once.example.com")), job("no", make_csr("bad_name"))]
    first = signer.sign_batch(batch)
    again = signer.sign_batch(batch)
    assert [result.serial for result in first] == [result.serial for result in again]
    events = [(line["job_id"], line["event"]) for line in audit_lines(store)]
    assert events == [("once", "issued"), ("no", "refused"), ("no", "refused")]


def test_requester_text_cannot_forge_a_line(signer: BatchSigner, store: ResultsStore) -> None:
    forged = 'x"}\n0000 {"event":"issued","job_id":"ghost'
    signer.sign_batch([job("inject", make_csr("www.example.com"), requester=forged)])
    entries = list(store.audit_entries())
    assert len(entries) == 1
    assert json.loads(entries[0].partition(" ")[2])["requester"] == forged
    assert verify_chain(entries, store.audit_head()).ok


def test_concurrent_signers_keep_one_unbroken_chain(
    authority: SigningAuthority, store: ResultsStore
) -> None:
    def sign_some(worker: int) -> None:
        own = BatchSigner(authority, store)
        for batch in range(5):
            own.sign_batch(
                [
                    job(f"w{worker}-b{batch}-{index}", make_csr(f"h{worker}-{index}.example.com"))
                    for index in range(4)
                ]
                + [job(f"w{worker}-b{batch}-bad", make_csr("bad_name"))]
            )

    threads = [threading.Thread(target=sign_some, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    check = verify_chain(store.audit_entries(), store.audit_head())
    assert check.ok and check.lines == 4 * 5 * 5


def test_verify_chain_by_itself() -> None:
    lines = ['{"event":"issued","job_id":"a"}', '{"event":"refused","job_id":"b"}']
    first = chain_hash(GENESIS, lines[0])
    second = chain_hash(first, lines[1])
    stored = [f"{first} {lines[0]}", f"{second} {lines[1]}"]
    assert verify_chain(stored, second).ok
    assert verify_chain([], None).ok
    assert verify_chain(stored[:1], second).first_bad == 2
    assert verify_chain(stored[::-1], second).first_bad == 1
    assert verify_chain([], second).first_bad == 1


# --- `casign audit verify` and `casign audit show` against tampering ---------------------------


@pytest.fixture
def decided(signer: BatchSigner, store: ResultsStore) -> int:
    """Eight decisions in the log: five issued, three refused."""
    signer.sign_batch(
        [job(f"issued-{index}", make_csr(f"h{index}.example.com")) for index in range(5)]
    )
    signer.sign_batch(
        [
            job("refused-cn", make_csr("no_host")),
            job("refused-profile", make_csr("www.example.com"), "gold_cert"),
            job("refused-days", make_csr("www.example.com"), days=9999),
        ]
    )
    return 8


def verify(store: ResultsStore, redis_url: str) -> subprocess.CompletedProcess[str]:
    return casign("audit", "verify", "--store", redis_url, prefix=store.prefix.rstrip(":"))


def assert_broken_at(done: subprocess.CompletedProcess[str], line: int) -> None:
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"audit log broken at line {line}:" in done.stderr
    assert "Traceback" not in done.stderr


def test_verify_passes_an_intact_log(store: ResultsStore, redis_url: str, decided: int) -> None:
    done = verify(store, redis_url)
    assert done.returncode == 0, done.stderr
    assert f"audit log intact: {decided} lines" in done.stdout


def test_verify_passes_an_empty_log(store: ResultsStore, redis_url: str) -> None:
    done = verify(store, redis_url)
    assert done.returncode == 0, done.stderr
    assert "audit log intact: 0 lines" in done.stdout


def test_verify_detects_an_altered_line(store: ResultsStore, redis_url: str, decided: int) -> None:
    key = store.key("audit")
    recorded, _, line = store.client.lindex(key, 2).partition(" ")
    store.client.lset(key, 2, recorded + " " + line.replace('"issued"', '"refused"'))
    assert_broken_at(verify(store, redis_url), 3)


def test_verify_detects_an_altered_line_with_a_recomputed_hash(
    store: ResultsStore, redis_url: str, decided: int
) -> None:
    """Rehashing the altered line itself is not enough: the next line's hash no longer holds."""
    key = store.key("audit")
    entries = list(store.audit_entries())
    previous = entries[3].partition(" ")[0]
    altered = entries[4].partition(" ")[2].replace("issued-4", "issued-9")
    store.client.lset(key, 4, f"{chain_hash(previous, altered)} {altered}")
    assert_broken_at(verify(store, redis_url), 6)


def test_verify_detects_a_deleted_line(store: ResultsStore, redis_url: str, decided: int) -> None:
    key = store.key("audit")
    assert store.client.lrem(key, 1, store.client.lindex(key, 5)) == 1
    assert_broken_at(verify(store, redis_url), 6)


def test_verify_detects_a_deleted_first_line(
    store: ResultsStore, redis_url: str, decided: int
) -> None:
    store.client.lpop(store.key("audit"))
    assert_broken_at(verify(store, redis_url), 1)


def test_verify_detects_the_last_line_removed(
    store: ResultsStore, redis_url: str, decided: int
) -> None:
    store.client.rpop(store.key("audit"))
    done = verify(store, redis_url)
    assert_broken_at(done, decided)
    assert "removed at the end" in done.stderr


def test_verify_detects_the_whole_log_removed(
    store: ResultsStore, redis_url: str, decided: int
) -> None:
    store.client.delete(store.key("audit"))
    assert_broken_at(verify(store, redis_url), 1)


def test_verify_detects_reordered_and_inserted_lines(
    store: ResultsStore, redis_url: str, decided: int
) -> None:
    key = store.key("audit")
    entries = list(store.audit_entries())
    store.client.lset(key, 6, entries[7])
    store.client.lset(key, 7, entries[6])
    assert_broken_at(verify(store, redis_url), 7)

    store.client.lset(key, 6, entries[6])
    store.client.lset(key, 7, entries[7])
    assert verify(store, redis_url).returncode == 0
    ghost = '{"event":"issued","job_id":"ghost"}'
    store.client.linsert(key, "BEFORE", entries[1], f"{chain_hash(entries[0][:40], ghost)} {ghost}")
    assert_broken_at(verify(store, redis_url), 3)


def test_show_prints_json_lines_newest_last(
    store: ResultsStore, redis_url: str, decided: int
) -> None:
    prefix = store.prefix.rstrip(":")
    done = casign("audit", "show", "--store", redis_url, prefix=prefix)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(text) for text in done.stdout.splitlines()]
    assert len(lines) == decided
    assert lines == audit_lines(store)
    assert [line["job_id"] for line in lines[:5]] == [f"issued-{index}" for index in range(5)]
    assert lines[-1]["reason"] == RefusalCode.VALIDITY_TOO_LONG

    last_two = casign("audit", "show", "--store", redis_url, "--last", "2", prefix=prefix)
    assert [json.loads(text)["job_id"] for text in last_two.stdout.splitlines()] == [
        "refused-profile",
        "refused-days",
    ]


# --- end to end: what a real worker decides is in the log ---------------------------------------


@pytest.mark.slow
def test_worker_decisions_reach_the_audit_log(
    ca_folder: CAFolder,
    broker_url: str,
    redis_url: str,
    store: ResultsStore,
    tmp_path: Path,
) -> None:
    queue = f"casign-test-{uuid.uuid4().hex[:8]}"
    process = start_worker(ca_folder.root, broker_url, redis_url, store, queue, tmp_path / "w.log")
    try:
        with Producer(
            broker_url, redis_url, store_prefix=store.prefix, queue=queue, requester="web"
        ) as producer:
            good = producer.submit(make_csr("audited.example.com"))
            bad = producer.submit(make_csr("audited.example.com"), profile="gold_cert")
            results = {result.job_id: result for result in producer.results([good, bad], 90)}
    finally:
        process.stop()
    lines = {line["job_id"]: line for line in audit_lines(store) if "job_id" in line}
    assert lines[good]["event"] == "issued"
    assert lines[good]["serial"] == results[good].serial
    assert lines[good]["requester"] == "web"
    assert lines[bad]["reason"] == RefusalCode.PROFILE_UNKNOWN
    done = verify(store, redis_url)
    assert done.returncode == 0, done.stderr


def test_deleting_the_recorded_head_with_the_last_line_is_detected() -> None:
    from core.audit import GENESIS, audit_line, chain_hash, verify_chain

    lines = [audit_line("issued", job_id=f"j{i}") for i in range(3)]
    stored, head = [], GENESIS
    for line in lines:
        head = chain_hash(head, line)
        stored.append(f"{head} {line}")
    assert verify_chain(stored, head).ok
    assert not verify_chain(stored[:-1], None).ok
    assert verify_chain([], None).ok
