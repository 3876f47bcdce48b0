"""Fault injection with real processes and a Redis each test owns: kills, restarts, HSM loss.

A run ends with `assert_exactly_once`: every job answered once with one certificate, the one
the store holds; one serial per job; index entries == certificates == serials == jobs; one
"issued" audit decision per job; nothing left pending. CASIGN_FAULTS_REPORT=FILE appends each
test's numbers to FILE as JSON lines (RELIABILITY.md quotes them).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from core.auth import read_secret
from core.errors import Retryable
from core.index import Status
from core.keys import KeyType
from core.messages import JobResult, SignRequest
from core.queue import celery_settings, producer_queue
from producers import Producer
from producers.revocation import send_revocation
from store.acl import KeyScope, Role, reply_list_name
from store.results import Issued, ResultsStore
from store.revocations import RevocationStore
from tests.csrs import job, make_csr
from tests.faults import (
    Collector,
    OwnedRedis,
    SealedCA,
    assert_exactly_once,
    assert_none_half_recorded,
    busy_pool_process,
    child_pids,
    kill_whole_worker_when,
    locate_jobs,
    pending_count,
    pending_jobs,
    pool_processes,
    pool_settled,
    queued_job_ids,
    replaced,
    resume,
    seal_ca,
    unacked_job_ids,
    wait_until,
)
from tests.softhsm_token import SoftHsmToken
from tests.workers import WorkerProcess, launch_worker, wait_until_started
from worker.authority import SigningAuthority
from worker.cafolder import CAFolder, CAOptions, init_ca
from worker.issuance import BatchSigner

# Fault injection races real processes on a shared 2-core machine: a test that fails is run
# once more (and reported as rerun), a test that fails twice fails the suite.
pytestmark = [pytest.mark.slow, pytest.mark.flaky(reruns=1)]

BATCH_SIZE = 100
CONCURRENCY = 2
# Seconds for a run to finish once the last fault is over (5,000 jobs take ~20 s here).
SETTLE_SECONDS = 150.0
# Short enough for a test to wait for (the product's default is 300 s), far longer than a batch.
VISIBILITY_TIMEOUT_ENV = "CASIGN_VISIBILITY_TIMEOUT"
SHORT_VISIBILITY_TIMEOUT = 8
# After the last Redis restart: Celery reconnects within ~6 s and 2,000 jobs sign in ~8 s.
RESTART_SETTLE_SECONDS = 45.0
REPORT_ENV = "CASIGN_FAULTS_REPORT"


def record_numbers(test: str, **numbers: object) -> None:
    """Append this run's numbers as one JSON line to $CASIGN_FAULTS_REPORT, if set."""
    path = os.environ.get(REPORT_ENV)
    if path:
        with Path(path).open("a", encoding="utf-8") as report:
            report.write(json.dumps({"test": test, **numbers}) + "\n")


@pytest.fixture
def owned_redis(tmp_path: Path) -> Iterator[OwnedRedis]:
    """A redis-server for this test alone (broker and store), AOF fsynced on every write, its
    default user off: every role connects as its own user."""
    server = OwnedRedis(tmp_path / "redis", admin_password=secrets.token_hex(16))
    server.start()
    yield server
    server.stop()


@dataclass
class FaultRig:
    """What a fault test breaks: its own Redis (broker, and store unless `store_redis`), queue
    and key prefix.

    Authentication and ACLs are on: the worker runs on a copy of the test's CA folder that
    lists one producer (`casign producer add`), and the worker and the producer each connect
    as their own Redis user (`casign acl add signer`); the producer seals every message.
    """

    redis: OwnedRedis
    store: ResultsStore
    queue: str
    folder: Path
    store_redis: OwnedRedis | None = None
    sealed: SealedCA | None = None
    sealed_from: Path | None = None

    @property
    def store_url(self) -> str:
        return (self.store_redis or self.redis).url

    @property
    def delivery_queue(self) -> str:
        """Where the listed producer's messages wait: its own queue (`QUEUE:NAME`)."""
        assert self.sealed is not None
        return producer_queue(self.queue, self.sealed.producer)

    @property
    def scope(self) -> KeyScope:
        return KeyScope(self.store.prefix.rstrip(":"), self.queue)

    def seal(self, ca_dir: Path) -> SealedCA:
        """The sealed copy of `ca_dir`, made on first use (one CA per test)."""
        if self.sealed is None:
            self.sealed = seal_ca(
                ca_dir, self.folder / "sealed-ca", self.redis, self.store_redis or self.redis,
                self.scope,
            )  # fmt: skip
            self.sealed_from = ca_dir
        assert self.sealed_from == ca_dir, "a fault rig serves one CA"
        return self.sealed

    def role_urls(self, role: Role) -> tuple[str, str]:
        """The broker and store URLs of `role`, as its own user."""
        assert self.sealed is not None, "start a worker first: it makes the CA's users"
        return (
            self.sealed.url(self.redis, role),
            self.sealed.url(self.store_redis or self.redis, role),
        )

    def launch(
        self,
        ca_dir: Path,
        log_name: str,
        extra_env: Mapping[str, str] | None = None,
        restart: bool = False,
        pool: str = "prefork",
        flags: Sequence[str] = (),
    ) -> WorkerProcess:
        """Start `casign worker` without waiting for it (it may refuse to start)."""
        sealed = self.seal(ca_dir)
        broker_url, store_url = self.role_urls(Role.SIGNER)
        return launch_worker(
            sealed.root,
            broker_url,
            store_url,
            self.store,
            self.queue,
            self.folder / log_name,
            concurrency=CONCURRENCY,
            extra_env=extra_env,
            restart=restart,
            pool=pool,
            flags=flags,
        )

    def worker(
        self,
        ca_dir: Path,
        log_name: str,
        extra_env: Mapping[str, str] | None = None,
        restart: bool = False,
        pool: str = "prefork",
        flags: Sequence[str] = (),
    ) -> WorkerProcess:
        """Start `casign worker` and wait until it has opened the key."""
        return wait_until_started(
            self.launch(ca_dir, log_name, extra_env, restart, pool, flags), self.store
        )

    def assert_no_denials(self) -> None:
        """Each role did its job within its user's rights: Redis refused it nothing (but the
        CONFIG GET that the store's health check tries before INFO)."""
        for server in {id(s): s for s in (self.redis, self.store_redis or self.redis)}.values():
            if server.process is not None and server.process.poll() is None:
                assert server.acl_denials(ignore={"config|get"}) == []

    def producer(self, resend_after: float = 60.0) -> Producer:
        """The listed producer, sealing its messages, on its own Redis user."""
        assert self.sealed is not None
        broker_url, store_url = self.role_urls(Role.PRODUCER)
        return Producer(
            broker_url,
            store_url,
            store_prefix=self.store.prefix,
            queue=self.queue,
            resend_after=resend_after,
            identity=self.sealed.producer,
            secret_source=self.sealed.secret_source,
        )


@pytest.fixture
def rig(owned_redis: OwnedRedis, tmp_path: Path) -> Iterator[FaultRig]:
    store = ResultsStore.from_url(owned_redis.url, f"casign-faults:{uuid.uuid4().hex[:8]}")
    rig = FaultRig(owned_redis, store, f"casign-faults-{uuid.uuid4().hex[:8]}", tmp_path)
    yield rig
    store.client.close()
    rig.assert_no_denials()


@pytest.fixture
def split_rig(owned_redis: OwnedRedis, tmp_path: Path) -> Iterator[FaultRig]:
    """A rig whose store is a second redis-server of its own, to fail while the broker works."""
    store_redis = OwnedRedis(tmp_path / "store-redis", admin_password=secrets.token_hex(16))
    store_redis.start()
    store = ResultsStore.from_url(store_redis.url, f"casign-faults:{uuid.uuid4().hex[:8]}")
    rig = FaultRig(
        owned_redis, store, f"casign-faults-{uuid.uuid4().hex[:8]}", tmp_path, store_redis
    )
    yield rig
    store.client.close()
    try:
        rig.assert_no_denials()
    finally:
        store_redis.stop()


class Submitted(dict[str, str]):
    """Job id -> common name of the jobs a test sent, and the requests themselves."""

    requests: dict[str, SignRequest]


def make_jobs(producer: Producer, count: int, tag: str) -> Submitted:
    """`count` jobs with distinct subjects, not yet sent."""
    names = [f"{tag}-{index}.example.com" for index in range(count)]
    requests = [producer.request(make_csr(name)) for name in names]
    submitted = Submitted((r.job_id, name) for r, name in zip(requests, names, strict=True))
    submitted.requests = {r.job_id: r for r in requests}
    return submitted


def submit_jobs(producer: Producer, count: int, tag: str) -> Submitted:
    """Enqueue `count` jobs with distinct subjects, `BATCH_SIZE` to a message."""
    submitted = make_jobs(producer, count, tag)
    producer.submit_many(submitted.requests.values(), batch_size=BATCH_SIZE)
    return submitted


def wait_issued(store: ResultsStore, count: float, timeout: float = 60) -> None:
    wait_until(lambda: store.count_issued() >= count, timeout, f"{count:g} jobs issued")


def lines_with(log: str, text: str) -> list[str]:
    return [line for line in log.splitlines() if text in line]


# 1. kill -9 of pool processes, and of the whole worker ------------------------------------


def test_pool_processes_killed_mid_run(
    ca_folder: CAFolder,
    rig: FaultRig,
) -> None:
    """kill -9 of a pool process, 4 times over a 5,000-job run: every job one certificate.

    The jobs go out in five waves of 1,000 and each of the first four waves has a pool process
    killed while it signs: 5,000 jobs sign in about five seconds here, less than Celery takes to
    notice four dead processes, so a run sent at once could end before the last kill.
    """
    jobs, kills = 5000, 4
    worker = rig.worker(ca_folder.root, "worker.log")
    killed: list[tuple[int, int]] = []  # (pid, jobs pending when it died)
    try:
        with rig.producer() as producer:
            names = make_jobs(producer, jobs, "pool")
            requests = list(names.requests.values())
            wave = jobs // (kills + 1)
            collector = Collector(producer, names, SETTLE_SECONDS + 60)
            collector.start()
            for start in range(0, jobs, wave):
                pool_settled(worker, CONCURRENCY)  # a victim must be signing, not starting
                producer.submit_many(requests[start : start + wave], batch_size=BATCH_SIZE)
                if len(killed) == kills:
                    continue
                # Kill while a batch is reserved and being signed, not between batches.
                wait_until(lambda: pending_count(rig.store) > 0, 30, "a batch being signed")
                victim = busy_pool_process(worker, CONCURRENCY)
                pending = pending_count(rig.store)
                os.kill(victim, signal.SIGKILL)
                killed.append((victim, pending))
                # The main process replaces the lost one before the next wave.
                wait_until(partial(replaced, worker, victim, CONCURRENCY), 30, "a new pool")
            results = collector.finish()
        counts = assert_exactly_once(
            rig.store, results, names, ca_folder.intermediate_certificate()
        )
        assert worker.process.poll() is None, "the main worker process died"
        log = worker.log()
    finally:
        worker.stop()
    interrupted = lines_with(log, "Task handler raised error: WorkerLostError")
    recovered = lines_with(log, "reserved before a crash")
    record_numbers(
        "test_pool_processes_killed_mid_run",
        jobs=counts.jobs,
        pool_kills=len(killed),
        pending_at_kills=[pending for _, pending in killed],
        tasks_interrupted=len(interrupted),
        recovery_log=recovered,
        certificates=counts.certificates,
        serials=counts.serials,
        index_entries=counts.index_entries,
        certificates_lost=jobs - counts.certificates,
        producer_errors=collector.errors,
    )
    assert len(killed) == kills
    assert interrupted, "no kill interrupted a task: the test tested nothing"


def test_whole_worker_killed_then_replaced(
    ca_folder: CAFolder,
    rig: FaultRig,
) -> None:
    """kill -9 of the main worker and its pool mid-run, then a new worker: nothing lost."""
    jobs = 5000
    first = rig.worker(ca_folder.root, "worker-1.log")
    second: WorkerProcess | None = None
    broker = rig.redis.client()
    try:
        with rig.producer() as producer:
            names = submit_jobs(producer, jobs, "whole")
            collector = Collector(producer, names, SETTLE_SECONDS)
            collector.start()
            wait_issued(rig.store, 0.4 * jobs)

            # Kill when each pool process is signing a reserved batch. Then the main process
            # is not between BRPOP and recording a message as unacknowledged (kombu's Redis
            # transport loses a message killed there: test_main_worker_killed_after_fetch),
            # and no message waits unreserved, which would come back only after the broker's
            # visibility timeout plus kombu's restore sweep (~100 s): see RELIABILITY.md.
            def both_signing() -> bool:
                if broker.hlen("unacked") != CONCURRENCY:
                    return False
                return unacked_job_ids(broker) <= pending_jobs(rig.store)

            kill_whole_worker_when(first, both_signing, 20, "both pool processes signing")
            pending_at_kill = pending_jobs(rig.store)
            tally = assert_none_half_recorded(rig.store, names)
            issued = {j for j in names if rig.store.job_state(j).get("state") == "issued"}
            queued = queued_job_ids(broker, rig.delivery_queue)
            held = unacked_job_ids(broker)
            nowhere = set(names) - issued - pending_at_kill - queued - held
            assert nowhere == set(), f"{len(nowhere)} job(s) lost by the crash"
            stranded = held - issued - pending_at_kill  # delivered, never reserved
            assert stranded == set(), "killed while a message waited unreserved"

            rig.store.client.delete(rig.store.key("chain"))  # so the new start is awaited
            second = rig.worker(ca_folder.root, "worker-2.log")
            results = collector.finish()
        counts = assert_exactly_once(
            rig.store, results, names, ca_folder.intermediate_certificate()
        )

        # The dead worker's messages come back once their visibility timeout passes; a late
        # redelivery of the jobs it had reserved must answer with the same certificates.
        by_job = {result.job_id: result for result in results}
        again = sorted(pending_at_kill)
        with rig.producer() as producer:
            producer.submit_many(
                [names.requests[job_id] for job_id in again], batch_size=BATCH_SIZE
            )
            replayed = list(producer.results(again, timeout=60))
        for result in replayed:
            assert result.certificate_pem == by_job[result.job_id].certificate_pem, result
        assert rig.store.count_issued() == jobs == rig.store.count_serials()
        assert pending_count(rig.store) == 0
        assert second.process.poll() is None
        recovered = lines_with(second.log(), "reserved before a crash")
    finally:
        if second is not None:
            second.stop()
        first.stop()
        broker.close()
    record_numbers(
        "test_whole_worker_killed_then_replaced",
        jobs=counts.jobs,
        whole_worker_kills=1,
        at_kill=tally,
        in_dead_workers_messages=len(held),
        recovery_log=recovered,
        replayed=len(replayed),
        certificates=counts.certificates,
        certificates_lost=jobs - counts.certificates,
    )
    assert pending_at_kill, "the crash hit no reserved job: recovery was not exercised"


def test_dead_workers_unreserved_batch_comes_back(
    ca_folder: CAFolder,
    rig: FaultRig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch handed to a pool process that died before reserving it is redelivered.

    Only the broker's visibility timeout brings it back: the worker is killed while its pool
    processes are frozen (the batch sits in their pipe), and a new worker started once the
    timeout has passed restores it at start-up and signs it.
    """
    monkeypatch.setenv(VISIBILITY_TIMEOUT_ENV, str(SHORT_VISIBILITY_TIMEOUT))
    first = rig.worker(ca_folder.root, "worker-1.log")
    second: WorkerProcess | None = None
    broker = rig.redis.client()
    pool: list[int] = []
    try:
        pool = pool_processes(first, CONCURRENCY)
        for pid in pool:
            os.kill(pid, signal.SIGSTOP)
        with rig.producer() as producer:
            names = submit_jobs(producer, BATCH_SIZE, "unreserved")
            wait_until(lambda: broker.hlen("unacked") == 1, 10, "the batch handed out")
            os.killpg(first.process.pid, signal.SIGKILL)
            first.process.wait(timeout=30)
            killed_at = time.monotonic()
            assert unacked_job_ids(broker) == set(names)
            assert assert_none_half_recorded(rig.store, names)["absent"] == len(names)

            time.sleep(max(0.0, killed_at + SHORT_VISIBILITY_TIMEOUT + 1 - time.monotonic()))
            rig.store.client.delete(rig.store.key("chain"))
            second = rig.worker(ca_folder.root, "worker-2.log")
            results = list(producer.results(list(names), timeout=30))
        counts = assert_exactly_once(
            rig.store, results, names, ca_folder.intermediate_certificate()
        )
        waited = time.monotonic() - killed_at
    finally:
        for pid in pool:
            resume(pid)
        if second is not None:
            second.stop()
        first.stop()
        broker.close()
    record_numbers(
        "test_dead_workers_unreserved_batch_comes_back",
        jobs=counts.jobs,
        whole_worker_kills=1,
        visibility_timeout=SHORT_VISIBILITY_TIMEOUT,
        seconds_from_kill_to_last_result=round(waited, 1),
        certificates_lost=len(names) - counts.certificates,
    )


def test_main_worker_killed_after_fetch(
    ca_folder: CAFolder,
    rig: FaultRig,
) -> None:
    """A message the main process has taken from Redis but not yet recorded survives a kill."""
    worker = rig.worker(ca_folder.root, "worker.log")
    broker = rig.redis.client()
    main = worker.process.pid
    try:
        with rig.producer(resend_after=3) as producer:
            for attempt in range(5):
                names = {f"fetched-{attempt}-{n}": f"f{attempt}-{n}.example.com" for n in range(10)}
                requests = [
                    producer.request(make_csr(name), job_id=job_id)
                    for job_id, name in names.items()
                ]
                # Freeze the idle main process while its BRPOP waits in Redis, then send a
                # batch: Redis pops it for the frozen client, which never gets to record it.
                wait_until(lambda: frozen_in_brpop(main, broker), 10, "the worker in BRPOP")
                producer.submit_many(requests)
                with contextlib.suppress(TimeoutError):
                    wait_until(
                        lambda: broker.llen(rig.delivery_queue) == 0, 0.5, "the batch popped"
                    )
                    break
                resume(main)  # the BRPOP timed out first: let this batch through, try again
            else:
                pytest.skip("could not catch the worker waiting in BRPOP")
            os.killpg(main, signal.SIGKILL)
            worker.process.wait(timeout=30)
            # Redis gave the batch to the killed consumer, which never marked it in flight: the
            # message is gone from the broker (celery/celery#7950). The producer notices that no
            # worker recorded its jobs and sends them again under the same job ids.
            where = locate_jobs(rig.store, broker, rig.delivery_queue, names)
            replacement = rig.worker(ca_folder.root, "worker2.log")
            try:
                results = list(producer.results(list(names), timeout=60))
            finally:
                replacement.stop()
        record_numbers("test_main_worker_killed_after_fetch", jobs=len(names), where=where)
        assert sorted(result.job_id for result in results) == sorted(names)
        assert all(result.ok for result in results)
        assert all(rig.store.job_state(job_id)["state"] == "issued" for job_id in names)
    finally:
        resume(main)
        worker.stop()
        broker.close()


def frozen_in_brpop(main: int, broker: redis.Redis) -> bool:
    """SIGSTOP `main`; True if it is left frozen while Redis holds its BRPOP blocked."""
    os.kill(main, signal.SIGSTOP)
    if any(c["cmd"] == "brpop" and "b" in c["flags"] for c in broker.client_list()):
        return True
    os.kill(main, signal.SIGCONT)
    return False


# 2. Redis restarted mid-run ------------------------------------------------------------


def test_redis_restarted_mid_run(
    ca_folder: CAFolder,
    rig: FaultRig,
) -> None:
    """Redis stopped (SIGTERM, then kill -9) and started again on its AOF, twice in a run."""
    jobs = 2000
    # `casign worker` as users run it, which starts the Celery worker again if it dies: on a
    # lost connection kombu's Redis transport can crash Celery's consumer ("'NoneType' object
    # has no attribute 'hostname'"), which casign cannot catch.
    worker = rig.worker(ca_folder.root, "worker.log", restart=True)
    broker = rig.redis.client()
    restarts: list[dict[str, Any]] = []
    numbers: dict[str, Any] = {"jobs": jobs, "redis_restarts": restarts}
    collector: Collector | None = None
    try:
        # A message Redis handed out as it was killed is lost to kombu (see
        # test_main_worker_killed_after_fetch); the producer sends its jobs again after 10 s of
        # silence, within RESTART_SETTLE_SECONDS.
        with rig.producer(resend_after=10) as producer:
            names = submit_jobs(producer, jobs, "restart")
            collector = Collector(
                producer,
                names,
                RESTART_SETTLE_SECONDS,
                lambda ids: locate_jobs(rig.store, broker, rig.delivery_queue, ids),
            )
            collector.start()
            for fraction, how in ((0.25, signal.SIGTERM), (0.6, signal.SIGKILL)):
                wait_issued(rig.store, fraction * jobs, timeout=30)
                wait_until(lambda: pending_count(rig.store) > 0, 10, "a batch being signed")
                before = rig.store.count_issued()
                rig.redis.restart(how, down_seconds=2.0)
                after = rig.store.count_issued()
                # With appendfsync always, nothing acknowledged before the stop is lost.
                assert after >= before, f"{before - after} issued certificate(s) lost"
                restarts.append({"signal": how.name, "issued_before": before, "after": after})
            results = collector.finish()
        counts = assert_exactly_once(
            rig.store, results, names, ca_folder.intermediate_certificate()
        )
        numbers.update(certificates=counts.certificates, certificates_lost=0)
    finally:
        worker.stop()
        log = worker.log()
        if collector is not None:
            numbers.update(
                jobs_without_result=len(collector.remaining),
                where_they_are=locate_jobs(
                    rig.store, broker, rig.delivery_queue, collector.remaining
                ),
                producer_errors=len(collector.errors),
            )
        numbers.update(
            batches_rejected=len(lines_with(log, "reject requeue=False")),
            worker_crashed=lines_with(log, "Unrecoverable error"),
            worker_stuck_and_exited=len(lines_with(log, "not shut down within")),
            worker_restarts=len(lines_with(log, "starting it again")),
        )
        record_numbers("test_redis_restarted_mid_run", **numbers)
        broker.close()


def test_celery_worker_killed_is_started_again(
    ca_folder: CAFolder,
    rig: FaultRig,
) -> None:
    """kill -9 of the Celery worker under `casign worker`: it is started again and signs on."""
    worker = rig.worker(ca_folder.root, "worker.log", restart=True)
    try:
        with rig.producer() as producer:
            first = submit_jobs(producer, BATCH_SIZE, "before")
            assert {r.status for r in producer.results(first, timeout=60)} == {"issued"}
            [celery_main] = child_pids(worker.process.pid)
            os.kill(celery_main, signal.SIGKILL)
            wait_until(
                lambda: (
                    celery_main not in child_pids(worker.process.pid)
                    and len(child_pids(worker.process.pid)) == 1
                ),
                30,
                "a new Celery worker",
            )
            second = submit_jobs(producer, BATCH_SIZE, "after")
            results = list(producer.results(second, timeout=90))
        assert {r.status for r in results} == {"issued"}
        assert worker.process.poll() is None, "casign worker itself exited"
    finally:
        worker.stop()
    assert worker.process.returncode == 0, "casign worker did not stop cleanly on SIGTERM"
    [restarted] = lines_with(worker.log(), "starting it again")
    assert "signal SIGKILL" in restarted


def celery_worker_pid(worker: WorkerProcess, timeout: float = 30.0) -> int:
    """The Celery worker `casign worker` (the supervisor) runs now."""
    deadline = time.monotonic() + timeout
    while not (children := child_pids(worker.process.pid)):
        if worker.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"no Celery worker under casign worker; log:\n{worker.log()[-3000:]}"
            )
        time.sleep(0.05)
    [celery_main] = children
    return celery_main


def test_out_of_memory_ends_the_worker_nonzero_and_it_is_started_again(
    ca_folder: CAFolder,
    split_rig: FaultRig,
) -> None:
    """Broker Redis out of memory: Celery gives up ("Unrecoverable error"), exits non-zero, and
    `casign worker` starts it again; once memory is back every job is issued exactly once."""
    rig = split_rig
    worker = rig.worker(ca_folder.root, "worker.log", restart=True)
    broker = rig.redis.client()
    numbers: dict[str, Any] = {}
    try:
        # kombu pops a message and then fails to record it in flight (OOM): the producer
        # sends it again after 5 s of silence.
        with rig.producer(resend_after=5) as producer:
            first = submit_jobs(producer, BATCH_SIZE, "before-oom")
            before = list(producer.results(first, timeout=60))
            celery_main = celery_worker_pid(worker)
            os.kill(celery_main, signal.SIGSTOP)  # so the jobs wait in the queue for the OOM
            try:
                names = submit_jobs(producer, 3 * BATCH_SIZE, "oom")
                broker.config_set("maxmemory-policy", "noeviction")
                broker.config_set("maxmemory", "1")
                out_of_memory_at = time.monotonic()
            finally:
                os.kill(celery_main, signal.SIGCONT)
            wait_until(
                lambda: bool(lines_with(worker.log(), "starting it again")),
                30,
                "the Celery worker to exit and be started again",
            )
            broker.config_set("maxmemory", "0")
            numbers["out_of_memory_seconds"] = round(time.monotonic() - out_of_memory_at, 1)
            collector = Collector(
                producer,
                names,
                90,
                lambda ids: locate_jobs(rig.store, broker, rig.delivery_queue, ids),
            )
            collector.start()
            results = collector.finish()
        counts = assert_exactly_once(
            rig.store, before + results, {**first, **names}, ca_folder.intermediate_certificate()
        )
        assert worker.process.poll() is None, "casign worker itself exited"
    finally:
        broker.config_set("maxmemory", "0")
        worker.stop()
        broker.close()
    log = worker.log()
    crashes = lines_with(log, "Unrecoverable error")
    restarts = lines_with(log, "starting it again")
    numbers.update(
        jobs=counts.jobs,
        unrecoverable_errors=crashes,
        restarts=restarts,
        certificates_lost=counts.jobs - counts.certificates,
    )
    record_numbers("test_out_of_memory_ends_the_worker_nonzero_and_it_is_started_again", **numbers)
    assert crashes, "Celery never gave up: the test tested nothing"
    assert "exit code 0" not in restarts[0], restarts[0]


# How long the revocation's task meets the store refusing writes.
OUTAGE_SECONDS = 3.0
# Seconds a worker may take to stop on SIGTERM while the store is down: a store call in
# progress gives up within a few seconds, a wait between tries at once.
STOP_DURING_OUTAGE_SECONDS = 20.0


@pytest.mark.parametrize(
    ("restart", "pool"),
    [(True, "prefork"), (False, "prefork"), (False, "solo")],
    ids=["casign-worker", "no-restart", "solo-pool"],
)
def test_sigterm_during_a_store_outage_ends_the_worker(
    ca_folder: CAFolder,
    split_rig: FaultRig,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    restart: bool,
    pool: str,
) -> None:
    """SIGTERM to the worker's main process alone while a batch waits out a store outage: the
    worker ends within STOP_DURING_OUTAGE_SECONDS, cleanly, and the batch is not lost. Pool
    processes get no signal (as under tini or systemd's KillMode=mixed): they must be told."""
    monkeypatch.setenv(VISIBILITY_TIMEOUT_ENV, str(SHORT_VISIBILITY_TIMEOUT))
    rig = split_rig
    assert rig.store_redis is not None
    worker = rig.worker(ca_folder.root, "worker-1.log", restart=restart, pool=pool)
    second: WorkerProcess | None = None
    broker = rig.redis.client()
    try:
        with rig.producer() as producer:
            warm = submit_jobs(producer, BATCH_SIZE, "warm")
            before = list(producer.results(warm, timeout=60))
            rig.store_redis.stop(signal.SIGKILL)
            names = submit_jobs(producer, BATCH_SIZE, "outage")
            wait_until(
                lambda: bool(lines_with(worker.log(), "waits")),
                30,
                "the batch to wait out the store outage",
            )
            asked = time.monotonic()
            worker.process.send_signal(signal.SIGTERM)  # the main process only, as tini does
            try:
                code = worker.process.wait(timeout=STOP_DURING_OUTAGE_SECONDS)
            except subprocess.TimeoutExpired:
                pytest.fail(
                    f"still running {STOP_DURING_OUTAGE_SECONDS:g} s after SIGTERM; log:\n"
                    + worker.log()[-3000:]
                )
            took = time.monotonic() - asked
            assert code == 0, f"exit code {code}; log:\n{worker.log()[-3000:]}"
            held = queued_job_ids(broker, rig.delivery_queue) | unacked_job_ids(broker)
            where = {
                "queued": len(queued_job_ids(broker, rig.delivery_queue) & set(names)),
                "unacked": len(unacked_job_ids(broker) & set(names)),
            }
            assert set(names) <= held, f"the batch is in no queue: {where}"

            rig.store_redis.start()
            rig.store.client.delete(rig.store.key("chain"))
            second = rig.worker(ca_folder.root, "worker-2.log")
            results = list(producer.results(list(names), timeout=60))
        counts = assert_exactly_once(
            rig.store, before + results, {**warm, **names}, ca_folder.intermediate_certificate()
        )
    finally:
        if second is not None:
            second.stop()
        worker.stop()
        broker.close()
    record_numbers(
        request.node.name,
        jobs=counts.jobs,
        seconds_from_sigterm_to_exit=round(took, 1),
        batch_after_exit=where,
        certificates_lost=counts.jobs - counts.certificates,
    )


def test_revoke_during_a_store_outage_is_done_once_the_store_is_back(
    ca_folder: CAFolder,
    rig: FaultRig,
) -> None:
    """A revocation that meets the store refusing writes (Redis, broker and store, out of
    memory) is not dropped: the task waits with its message unacknowledged and revokes once
    Redis takes writes again. Celery's autoretry had to publish a retry message to that same
    Redis, failed, and rejected the revocation without requeue."""
    # At INFO, each pool process says once it has opened the key and whom it serves.
    worker = rig.worker(ca_folder.root, "worker.log", restart=True, flags=("--loglevel", "INFO"))
    broker = rig.redis.client()
    # The revocation is sent as the producer sends it: sealed, on the producer's Redis user.
    sender = Celery("test-revoke", set_as_current=False)
    sender.conf.update(celery_settings(rig.role_urls(Role.PRODUCER)[0], rig.queue))
    assert rig.sealed is not None
    reply_to = reply_list_name(rig.sealed.producer)
    pool: list[int] = []
    try:
        with rig.producer() as producer:
            issued = list(producer.results(submit_jobs(producer, 1, "revoke-me"), timeout=60))
            ca = producer.ca_identity()
        serial = issued[0].serial
        assert serial is not None
        # Both pool processes past their start (each has opened the key), the batch acknowledged.
        wait_until(
            lambda: len(lines_with(worker.log(), "accepts batches")) >= CONCURRENCY,
            30,
            "both pool processes ready",
        )
        wait_until(lambda: broker.hlen("unacked") == 0, 10, "the batch acknowledged")
        pool = child_pids(celery_worker_pid(worker))
        for pid in pool:
            os.kill(pid, signal.SIGSTOP)  # the task is handed out, not run, until the outage
        request = send_revocation(
            sender, rig.queue, reply_to, serial, "keyCompromise",
            identity=rig.sealed.producer, secret=read_secret(rig.sealed.secret_source), ca=ca,
        )  # fmt: skip
        wait_until(lambda: broker.hlen("unacked") == 1, 10, "the revocation handed out")
        broker.config_set("maxmemory-policy", "noeviction")
        broker.config_set("maxmemory", "1")
        for pid in pool:
            resume(pid)
        time.sleep(OUTAGE_SECONDS)  # the task meets the outage
        broker.config_set("maxmemory", "0")
        back = time.monotonic()
        answer = RevocationStore(rig.store).wait_result(reply_to, request.request_id, 30)
        answered_after = time.monotonic() - back
        entry = rig.store.index_entry(serial)
        assert answer.status == "revoked", answer
        assert entry is not None and entry.status is Status.REVOKED
        assert entry.revocation_reason == "keyCompromise"
        wait_until(lambda: broker.hlen("unacked") == 0, 10, "the revocation acknowledged")
        assert worker.process.poll() is None
    finally:
        broker.config_set("maxmemory", "0")
        for pid in pool:
            resume(pid)
        sender.close()
        worker.stop()
        broker.close()
    log = worker.log()
    record_numbers(
        "test_revoke_during_a_store_outage_is_done_once_the_store_is_back",
        store_refusing_writes_seconds=OUTAGE_SECONDS,
        seconds_from_store_back_to_answer=round(answered_after, 1),
        waits=len(lines_with(log, "revocation request waits")),
        rejected_without_requeue=len(lines_with(log, "reject requeue=False")),
        worker_restarts=len(lines_with(log, "starting it again")),
    )


# 3. The key backend fails ----------------------------------------------------------------


@pytest.fixture
def hsm_ca(softhsm_token: SoftHsmToken, tmp_path: Path) -> CAFolder:
    return init_ca(
        tmp_path / "hsm-ca",
        CAOptions(
            key_type=KeyType.RSA2048, intermediate_key_uri=softhsm_token.key_uri("intermediate")
        ),
    )


class TokenOutage:
    """Makes a SoftHSM token unavailable: its directory moved away and its PIN file wrong."""

    def __init__(self, token: SoftHsmToken) -> None:
        self.token = token
        self.tokens_dir = token.conf_path.parent / "tokens"
        self.moved_dir = token.conf_path.parent / "tokens-away"
        self.pin = token.pin_file.read_text(encoding="utf-8")

    def remove_token(self) -> None:
        self.tokens_dir.rename(self.moved_dir)

    def return_token(self) -> None:
        self.moved_dir.rename(self.tokens_dir)

    def break_pin(self) -> None:
        self._write_pin("0" * (len(self.pin.strip())) + "\n")

    def restore_pin(self) -> None:
        self._write_pin(self.pin)

    def _write_pin(self, text: str) -> None:
        self.token.pin_file.chmod(0o600)
        self.token.pin_file.write_text(text, encoding="utf-8")
        self.token.pin_file.chmod(0o400)


def test_token_lost_mid_run_then_back(
    softhsm_token: SoftHsmToken,
    hsm_ca: CAFolder,
    rig: FaultRig,
) -> None:
    """Token removed, then back with a wrong PIN, then the right one: retried, none half-done.

    The worker is restarted once the token is back, because a worker whose PKCS#11 module
    lost the token never sees it again (see test_worker_signs_again_once_the_token_returns).
    """
    jobs = 1000
    outage = TokenOutage(softhsm_token)
    workers = [
        rig.worker(
            hsm_ca.root,
            "worker-1.log",
            extra_env=softhsm_token.env,
        )
    ]
    phases: dict[str, Any] = {}
    try:
        with rig.producer() as producer:
            names = submit_jobs(producer, jobs, "hsm")
            collector = Collector(producer, names, SETTLE_SECONDS)
            collector.start()
            wait_issued(rig.store, 0.3 * jobs)
            pool_before = pool_processes(workers[0], CONCURRENCY)
            outage.remove_token()
            outage.break_pin()
            time.sleep(1.0)  # batches in flight fail and go back to the queue for a retry
            stalled = rig.store.count_issued()
            time.sleep(4.0)
            phases["token_removed"] = {
                "issued": rig.store.count_issued(),
                **assert_none_half_recorded(rig.store, names),
            }
            assert rig.store.count_issued() == stalled, "signed without the token"
            assert workers[0].process.poll() is None, "the worker died with the token"
            assert pool_processes(workers[0], CONCURRENCY) == pool_before, "pool restarted"

            # The worker is restarted by hand: its PKCS#11 module never sees the token again.
            outage.return_token()
            workers[0].stop()
            refused = rig.launch(hsm_ca.root, "worker-2.log", softhsm_token.env)
            # A wrong PIN: the worker refuses to start, saying why, and signs nothing.
            exit_code = refused.process.wait(timeout=60)
            refusal = refused.log()
            assert exit_code != 0
            assert "login to token 'casign-test' failed (PinIncorrect)" in refusal
            phases["wrong_pin"] = {
                "worker_exit_code": exit_code,
                "issued": rig.store.count_issued(),
                **assert_none_half_recorded(rig.store, names),
            }
            assert rig.store.count_issued() == stalled, "signed with a wrong PIN"

            outage.restore_pin()
            rig.store.client.delete(rig.store.key("chain"))  # so the start is awaited
            workers.append(
                rig.worker(
                    hsm_ca.root,
                    "worker-3.log",
                    extra_env=softhsm_token.env,
                )
            )
            results = collector.finish()
        counts = assert_exactly_once(rig.store, results, names, hsm_ca.intermediate_certificate())
        assert workers[-1].process.poll() is None
        logs = "\n".join(worker.log() for worker in workers) + refusal
    finally:
        for worker in workers:
            worker.stop()
    assert outage.pin.strip() not in logs, "the PIN is in a worker log"
    record_numbers(
        "test_token_lost_mid_run_then_back",
        jobs=counts.jobs,
        issued_before_outage=stalled,
        phases=phases,
        refusal=lines_with(refusal, "PinIncorrect"),
        certificates=counts.certificates,
        certificates_lost=jobs - counts.certificates,
    )


def test_worker_signs_again_once_the_token_returns(
    softhsm_token: SoftHsmToken,
    hsm_ca: CAFolder,
    rig: FaultRig,
) -> None:
    """The token goes away for 3 s and comes back: the same worker finishes the run."""
    jobs = 400
    outage = TokenOutage(softhsm_token)
    worker = rig.worker(
        hsm_ca.root,
        "worker.log",
        extra_env=softhsm_token.env,
    )
    try:
        with rig.producer() as producer:
            names = submit_jobs(producer, jobs, "hsm-back")
            # Retries back off (worker/app.py) for a few seconds at most after a 3 s outage.
            collector = Collector(producer, names, 30)
            collector.start()
            wait_issued(rig.store, 0.25 * jobs)
            outage.remove_token()
            time.sleep(3.0)
            outage.return_token()
            try:
                results = collector.finish()
            finally:
                record_numbers(
                    "test_worker_signs_again_once_the_token_returns",
                    jobs=jobs,
                    jobs_without_result=len(collector.remaining),
                    worker_alive=worker.process.poll() is None,
                )
        assert_exactly_once(rig.store, results, names, hsm_ca.intermediate_certificate())
        assert worker.process.poll() is None
    finally:
        if outage.moved_dir.exists():
            outage.return_token()
        worker.stop()


# 4. The store fails at publish time (in process) --------------------------------------------


class PublishFails(ResultsStore):
    """A results store whose next publish fails; remembers the certificates it was given."""

    def __init__(self, client: redis.Redis, prefix: str, *, after_write: bool) -> None:
        super().__init__(client, prefix)
        self.failures_left = 1
        self.after_write = after_write
        self.attempted: dict[str, Issued] = {}

    def publish(self, issued: Any, *args: Any, **kwargs: Any) -> None:
        issued = list(issued)
        if self.failures_left == 0:
            return super().publish(issued, *args, **kwargs)
        self.failures_left -= 1
        self.attempted = {item.job_id: item for item in issued}
        if self.after_write:
            # The script ran and was fsynced, but the reply never came back.
            super().publish(issued, *args, **kwargs)
            raise Retryable("results store unavailable: ConnectionError: reply lost (injected)")
        raise Retryable("results store unavailable: ConnectionError: refused (injected)")


def batch_of(count: int, tag: str) -> list[dict[str, object]]:
    return [job(f"{tag}-{n}", make_csr(f"{tag}-{n}.example.com")) for n in range(count)]


@pytest.mark.parametrize("after_write", [False, True], ids=["before-write", "reply-lost"])
def test_publish_fails_then_batch_redelivered(
    authority: SigningAuthority, owned_redis: OwnedRedis, after_write: bool
) -> None:
    """Publish fails once; the same batch again publishes the same certificates, byte for byte."""
    store = PublishFails(
        redis.Redis.from_url(owned_redis.url, decode_responses=True),
        "publish-fails",
        after_write=after_write,
    )
    signer = BatchSigner(authority, store)
    jobs = batch_of(50, "publish")
    with pytest.raises(Retryable):
        signer.sign_batch(jobs, reply_to="producer-1")
    attempted = store.attempted
    assert len(attempted) == len(jobs)
    assert pending_count(store) == (0 if after_write else len(jobs))
    assert store.count_issued() == (len(jobs) if after_write else 0)

    results = BatchSigner(authority, store).sign_batch(jobs, reply_to="producer-1")
    assert [r.status for r in results] == ["issued"] * len(jobs)
    for result in results:
        first = attempted[result.job_id]
        assert result.serial == first.serial
        assert result.certificate_pem == first.certificate_pem == store.certificate(first.serial)
    replies = collect_replies(store, "producer-1", len(jobs))
    assert {r.job_id: r.certificate_pem for r in replies} == {
        r.job_id: r.certificate_pem for r in results
    }
    assert store.count_issued() == store.count_serials() == len(jobs)
    assert pending_count(store) == 0


def test_recovery_publishes_a_reserved_job_to_the_same_certificate(
    authority: SigningAuthority, owned_redis: OwnedRedis
) -> None:
    """Reserved, signed, never published: recover_pending publishes the very same certificate."""
    store = PublishFails(
        redis.Redis.from_url(owned_redis.url, decode_responses=True),
        "recover",
        after_write=False,
    )
    jobs = batch_of(20, "recover")
    with pytest.raises(Retryable):
        BatchSigner(authority, store).sign_batch(jobs, reply_to="producer-2")
    assert pending_count(store) == len(jobs)

    recovered = BatchSigner(authority, store).recover_pending()  # as a new worker process does
    assert sorted(r.job_id for r in recovered) == sorted(store.attempted)
    for result in recovered:
        assert result.certificate_pem == store.attempted[result.job_id].certificate_pem
    assert pending_count(store) == 0
    assert len(collect_replies(store, "producer-2", len(jobs))) == len(jobs)

    # The batch delivered once more (the broker's redelivery) changes nothing.
    again = BatchSigner(authority, store).sign_batch(jobs, reply_to="producer-2")
    assert {r.job_id: r.certificate_pem for r in again} == {
        r.job_id: r.certificate_pem for r in recovered
    }
    assert store.count_issued() == store.count_serials() == len(jobs)


def collect_replies(store: ResultsStore, reply_to: str, count: int) -> list[JobResult]:
    replies: list[JobResult] = []
    while len(replies) < count:
        batch = store.wait_replies(reply_to, timeout=2)
        assert batch, f"only {len(replies)} of {count} replies arrived"
        replies.extend(batch)
    return replies
